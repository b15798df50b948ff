//! The exposition and the admin server against a fake engine: `promtool check metrics` on both
//! formats, the per-process series cap, and the server's behaviour with bad clients.
//!
//! Needs `promtool` (Debian's `prometheus` package, installed by `cargo xtask setup`); set
//! `PROMTOOL` to use another binary. Without it the promtool tests fail, they do not skip.
//! The slowloris test runs the real `tracer` daemon (root, real BPF).
//!
//! Tier: root

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use common::promtool::{check_metrics, missing, promtool};
use tracer::event::{Comm, TcpState};
use tracer::metrics::{
    self, Format, HistogramSnapshot, MetricsSnapshot, OwnerCloseWait, SnapshotSource,
};
use tracer::record::CloseKind;
use tracer::server::{self, ServerConfig, ServerError};

/// "1-2-5" bounds from 1 µs to 3600 s, as the engine keeps them.
fn bounds() -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    let mut decade = 1e-6;
    while decade < 3600.0 {
        for m in [1.0, 2.0, 5.0] {
            if m * decade < 3600.0 {
                out.push(m * decade);
            }
        }
        decade *= 10.0;
    }
    out.push(3600.0);
    out
}

fn histogram(seed: u64) -> HistogramSnapshot {
    let mut cum = 0;
    let buckets = bounds()
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            cum += (i as u64 * seed) % 7;
            (b, cum)
        })
        .collect();
    HistogramSnapshot {
        buckets,
        count: cum + seed,
        sum_seconds: 1.25 * seed as f64,
    }
}

fn owner(pid: u32, comm: &str, sockets: u64, leaking: u64) -> OwnerCloseWait {
    OwnerCloseWait {
        pid: Some(pid),
        comm: Some(Comm::new(comm)),
        container: None,
        sockets,
        leaking,
    }
}

/// A snapshot that exercises every family, odd process names included.
fn rich_snapshot() -> MetricsSnapshot {
    let mut transitions = [[0u64; 12]; 12];
    let mut sockets = [0u64; 12];
    for (i, from) in TcpState::ALL.into_iter().enumerate() {
        sockets[from.index()] = i as u64 * 3;
        for to in TcpState::ALL {
            if from != to && (from as usize + to as usize).is_multiple_of(3) {
                transitions[from.index()][to.index()] = (from as u64) * 100 + to as u64;
            }
        }
    }
    MetricsSnapshot {
        transitions,
        dwell: TcpState::ALL
            .into_iter()
            .map(|s| (s, histogram(s as u64)))
            .collect(),
        closes: CloseKind::ALL
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, i as u64 * 11))
            .collect(),
        sockets,
        close_wait: vec![
            owner(1234, "nginx", 40, 12),
            owner(99, "my \"app\"\\x", 3, 0),
            owner(7, "py\nthon", 1, 1),
            owner(8, "", 2, 0),
            OwnerCloseWait {
                pid: None,
                comm: None,
                container: None,
                sockets: 5,
                leaking: 2,
            },
        ],
        close_wait_oldest_seconds: Some(1234.5),
        leak_threshold_seconds: Some(300.0),
        leaks_detected_total: 15,
        events_total: 123_456,
        events_lost_total: 7,
        events_malformed_total: 1,
        tracked_sockets: 4096,
        evictions_total: 2,
        bpf_transitions_seen_total: Some(130_000),
        bpf_filtered_total: Some(6_000),
        bpf_run_time_ns: Some(987_654_321),
        bpf_run_count: Some(130_000),
        ..Default::default()
    }
}

fn source(snapshot: MetricsSnapshot) -> Arc<dyn SnapshotSource> {
    Arc::new(move || snapshot.clone())
}

fn exposition(snapshot: MetricsSnapshot, cap: usize, format: Format) -> String {
    let registry = metrics::registry(source(snapshot), cap);
    metrics::encode(&registry, format).expect("encode")
}

#[test]
fn promtool_accepts_text_format() {
    let text = exposition(rich_snapshot(), 100, Format::Text);
    check_metrics(&text, "0.0.4 text");
    let empty = exposition(MetricsSnapshot::default(), 100, Format::Text);
    check_metrics(&empty, "empty 0.0.4 text");
}

/// Parses `text` with Prometheus' own OpenMetrics parser, the one used when scraping: promtool's
/// `check metrics` reads only the 0.0.4 format (prometheus/prometheus#8932), but
/// `promtool tsdb create-blocks-from openmetrics` imports an OpenMetrics file. The importer
/// needs a timestamp on every sample, so one is appended to each sample line.
fn promtool_parse_openmetrics(text: &str, what: &str) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tracer-om-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut stamped = String::new();
    for line in text.lines() {
        stamped.push_str(line);
        if !line.starts_with('#') {
            stamped.push_str(" 1700000000");
        }
        stamped.push('\n');
    }
    let input = dir.join("exposition.om");
    std::fs::write(&input, stamped).expect("write exposition");
    let out = Command::new(promtool())
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(dir.join("blocks"))
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => missing(&e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "Prometheus' OpenMetrics parser rejected the {what} exposition ({}):\n{}{}\n--- exposition ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One sample line: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses `name{a="x",b="y\"z"} value`, unescaping label values.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find("=\"").ok_or("label without =\"")?;
            let key = &r[..eq];
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            let mut value = String::new();
            let mut chars = r[eq + 2..].char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '\n') => return Err("raw newline in label value".into()),
                    (_, c) => value.push(c),
                }
            };
            if labels.iter().any(|(k, _)| k == key) {
                return Err(format!("label {key} twice"));
            }
            labels.push((key.to_owned(), value));
            r = &r[eq + 2 + end + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok((name.to_owned(), labels, value))
}

/// Checks what the OpenMetrics 1.0 specification requires beyond syntax: one block per
/// family, `# TYPE` before samples, `# UNIT` as the name's suffix, the sample names each type
/// allows, no duplicate series, cumulative histograms whose `+Inf` bucket equals `_count`,
/// non-negative counters, and `# EOF` last.
fn check_openmetrics_semantics(text: &str) -> Result<(), String> {
    use std::collections::{BTreeMap, HashSet};
    let lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") || !text.ends_with('\n') {
        return Err("does not end with `# EOF\\n`".into());
    }
    let mut families: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    let mut current: Option<(String, String)> = None;
    // Histogram series key (labels without le) -> (buckets, count).
    type Hist = (Vec<(f64, f64)>, Option<f64>);
    let mut hists: BTreeMap<String, Hist> = BTreeMap::new();
    for (n, line) in lines[..lines.len() - 1].iter().enumerate() {
        let at = |msg: String| format!("line {}: {msg}: {line}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (parts.next(), parts.next(), parts.next());
            let name = name.ok_or_else(|| at("metadata without a name".into()))?;
            let same = current.as_ref().is_some_and(|(f, _)| f == name);
            match kw {
                Some("HELP" | "TYPE") if !same => {
                    if !families.insert(name.to_owned()) {
                        return Err(at(format!("family {name} appears twice")));
                    }
                    current = Some((name.to_owned(), "unknown".to_owned()));
                }
                Some("HELP" | "UNIT" | "TYPE") if same => {}
                _ => return Err(at("unexpected metadata".into())),
            }
            let arg = arg.unwrap_or("");
            match kw {
                Some("TYPE") => {
                    if !["counter", "gauge", "histogram", "info", "unknown"].contains(&arg) {
                        return Err(at(format!("type {arg:?}")));
                    }
                    current.as_mut().expect("family").1 = arg.to_owned();
                }
                Some("UNIT") if !name.ends_with(&format!("_{arg}")) => {
                    return Err(at("name does not end with its unit".into()));
                }
                _ => {}
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line).map_err(at)?;
        let (family, kind) = current
            .as_ref()
            .ok_or_else(|| at("sample before any family".into()))?;
        let suffix = name
            .strip_prefix(family.as_str())
            .ok_or_else(|| at(format!("sample outside its family {family}")))?;
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_count", "_sum"],
            "info" => &["_info"],
            _ => &[],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("suffix {suffix:?} not allowed for a {kind}")));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative counter".into()));
        }
        let mut key_labels: Vec<_> = labels.iter().filter(|(k, _)| k != "le").collect();
        key_labels.sort();
        let key = format!("{family}{key_labels:?}");
        let le = labels
            .iter()
            .find(|(k, _)| k == "le")
            .map(|(_, v)| v.clone());
        if !series.insert(format!("{name}{key_labels:?}{le:?}")) {
            return Err(at("duplicate series".into()));
        }
        if kind == "histogram" {
            let h = hists.entry(key).or_default();
            match suffix {
                "_bucket" => {
                    let le = le.ok_or_else(|| at("bucket without le".into()))?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().map_err(|_| at("bad le".into()))?
                    };
                    h.0.push((le, value));
                }
                "_count" => h.1 = Some(value),
                _ => {}
            }
        }
    }
    for (key, (buckets, count)) in hists {
        let mut sorted = buckets.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        if sorted
            .windows(2)
            .any(|w| w[0].0 == w[1].0 || w[0].1 > w[1].1)
        {
            return Err(format!("{key}: buckets not cumulative: {buckets:?}"));
        }
        match sorted.last() {
            Some(&(le, v)) if le == f64::INFINITY && Some(v) == count => {}
            _ => {
                return Err(format!(
                    "{key}: +Inf bucket missing or != count: {buckets:?}"
                ));
            }
        }
    }
    Ok(())
}

fn check_openmetrics(text: &str, what: &str) {
    if let Err(e) = check_openmetrics_semantics(text) {
        panic!("invalid OpenMetrics ({what}): {e}\n--- exposition ---\n{text}");
    }
    promtool_parse_openmetrics(text, what);
}

#[test]
fn openmetrics_checker_rejects_broken_expositions() {
    let good = exposition(rich_snapshot(), 100, Format::OpenMetrics);
    check_openmetrics_semantics(&good).expect("valid");
    for (what, broken) in [
        ("no EOF", good.replace("# EOF\n", "")),
        (
            "counter without _total",
            good.replace("tracer_events_total 123456", "tracer_events 123456"),
        ),
        (
            "lost +Inf",
            good.replace(
                "le=\"+Inf\",state=\"LISTEN\"",
                "le=\"7200.0\",state=\"LISTEN\"",
            ),
        ),
        (
            "raw quote",
            good.replace("comm=\"nginx\"", "comm=\"ngi\"nx\""),
        ),
        (
            "duplicate",
            good.replace("# EOF\n", "") + "tracer_tracked_sockets 1\n# EOF\n",
        ),
    ] {
        assert_ne!(broken, good, "{what}: replacement did not apply");
        assert!(
            check_openmetrics_semantics(&broken).is_err(),
            "{what} accepted"
        );
    }
}

#[test]
fn openmetrics_is_valid() {
    let om = exposition(rich_snapshot(), 100, Format::OpenMetrics);
    check_openmetrics(&om, "OpenMetrics");
    let empty = exposition(MetricsSnapshot::default(), 100, Format::OpenMetrics);
    check_openmetrics(&empty, "empty OpenMetrics");
}

/// `(pid, comm, value)` of every sample of a per-process family.
fn process_samples(text: &str, family: &str) -> Vec<(String, String, u64)> {
    let prefix = format!("{family}{{pid=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let (pid, rest) = rest.split_once("\",comm=\"").expect("comm label");
            let (labels, value) = rest.rsplit_once("\"} ").expect("value");
            let (comm, _container) = labels
                .rsplit_once("\",container=\"")
                .expect("container label");
            (
                pid.to_owned(),
                comm.to_owned(),
                value.parse().expect("integer"),
            )
        })
        .collect()
}

#[test]
fn per_process_series_are_capped() {
    // 300 leaking processes: pid p holds p + 5 sockets of which p leak; plus unattributed ones.
    let mut close_wait: Vec<_> = (1..=300u32)
        .map(|p| owner(p, &format!("proc{p}"), u64::from(p) + 5, u64::from(p)))
        .collect();
    close_wait.push(OwnerCloseWait {
        pid: None,
        comm: None,
        container: None,
        sockets: 9,
        leaking: 4,
    });
    let snapshot = MetricsSnapshot {
        close_wait,
        ..Default::default()
    };
    for cap in [0usize, 1, 100, 299, 300, 500] {
        for format in [Format::Text, Format::OpenMetrics] {
            let text = exposition(snapshot.clone(), cap, format);
            let kept = cap.min(300);
            assert!(
                text.contains("\ntracer_tcp_close_wait_processes 300\n"),
                "{text}"
            );
            for (family, value_of) in [
                (
                    "tracer_tcp_close_wait_sockets",
                    (|p: u64| p + 5) as fn(u64) -> u64,
                ),
                ("tracer_tcp_close_wait_leaks", |p: u64| p),
            ] {
                let samples = process_samples(&text, family);
                let other_expected = usize::from(kept < 300);
                assert_eq!(
                    samples.len(),
                    kept + other_expected + 1,
                    "{family} cap {cap}: {samples:?}"
                );
                assert!(samples.len() <= cap + 2);
                // The top `kept` by leaking sockets, i.e. the highest pids.
                let named: Vec<u64> = samples
                    .iter()
                    .filter_map(|(pid, _, _)| pid.parse().ok())
                    .collect();
                let want: Vec<u64> = (1..=300u64).rev().take(kept).collect();
                assert_eq!(named, want, "{family} cap {cap}");
                for (pid, comm, v) in &samples {
                    if let Ok(p) = pid.parse::<u64>() {
                        assert_eq!(*v, value_of(p));
                        assert_eq!(comm, &format!("proc{p}"));
                    }
                }
                let find = |label: &str| {
                    samples
                        .iter()
                        .find(|(pid, comm, _)| pid == label && comm == label)
                        .map(|s| s.2)
                };
                let dropped: u64 = (1..=(300 - kept as u64)).map(value_of).sum();
                if kept < 300 {
                    assert_eq!(find("other"), Some(dropped), "{family} cap {cap}");
                } else {
                    assert_eq!(find("other"), None, "{family} cap {cap}");
                }
                let unknown = if family.ends_with("sockets") { 9 } else { 4 };
                assert_eq!(find("unknown"), Some(unknown), "{family} cap {cap}");
                let total: u64 = samples.iter().map(|s| s.2).sum();
                assert_eq!(total, (1..=300u64).map(value_of).sum::<u64>() + unknown);
            }
        }
    }
    // The capped exposition is still valid.
    check_metrics(
        &exposition(snapshot.clone(), 100, Format::Text),
        "capped 0.0.4 text",
    );
    check_openmetrics(
        &exposition(snapshot, 100, Format::OpenMetrics),
        "capped OpenMetrics",
    );
}

// ---- HTTP ----

struct Server {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

async fn start(config: ServerConfig) -> Server {
    let bound = server::bind_with(config).await.expect("bind");
    let addr = bound.local_addr();
    let registry = Arc::new(metrics::registry(source(rich_snapshot()), 100));
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(bound.serve(registry, Arc::clone(&ready), async {
        let _ = rx.await;
    }));
    Server {
        addr,
        ready,
        stop: Some(tx),
        task,
    }
}

fn localhost() -> ServerConfig {
    ServerConfig::new("127.0.0.1:0".parse().unwrap())
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Sends `request` on a new connection and reads the reply until the server closes it.
async fn exchange(addr: SocketAddr, request: &str) -> io::Result<Reply> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

async fn request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n");
    exchange(addr, &req).await.expect("request")
}

/// A normal scrape, answered with 200 and the metrics. How long it takes depends on the machine
/// (under emulation, seconds); that a bad client does not delay it is checked by causality
/// (see [`still_open`]). The bound only catches a hang.
async fn scrape_ok(addr: SocketAddr, after: &str) {
    let reply = tokio::time::timeout(
        Duration::from_secs(300),
        request(addr, "GET", "/metrics", ""),
    )
    .await
    .unwrap_or_else(|_| panic!("scrape not answered within 300 s after {after}"));
    assert_eq!(reply.status, 200, "after {after}: {}", reply.head);
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        reply.head
    );
    assert!(
        reply
            .body
            .contains("tracer_tcp_closes_total{kind=\"passive\"} 11"),
        "after {after}: {}",
        reply.body
    );
}

/// Whether the server still holds `s` open: no data and no end yet. A scrape answered while a
/// silent client is still open was not queued behind it (the server drops a silent client only
/// at its header timeout).
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_scrapes_despite_bad_clients() {
    let srv = start(localhost()).await;
    let addr = srv.addr;
    scrape_ok(addr, "nothing").await;

    // A client that connects and sends nothing stays connected for the rest of the test.
    let idle = TcpStream::connect(addr).await.unwrap();
    scrape_ok(addr, "an idle client connected").await;
    assert!(
        still_open(&idle),
        "the scrape was answered only after the idle client was dropped"
    );

    // A half-sent request head.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    scrape_ok(addr, "a half-sent request").await;

    // A 1 MiB header: refused (431) or the connection is closed, never served.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    match tokio::time::timeout(common::WAIT, exchange(addr, &big)).await {
        Ok(Ok(reply)) => assert!(
            reply.status == 431 || reply.status == 0,
            "1 MiB header answered {}",
            reply.head
        ),
        Ok(Err(e)) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
        Err(_) => panic!("1 MiB header: connection neither answered nor closed in 5 s"),
    }
    scrape_ok(addr, "a 1 MiB header").await;

    let r = request(addr, "GET", "/nope", "").await;
    assert_eq!(r.status, 404, "{}", r.head);
    scrape_ok(addr, "a 404").await;

    let r = request(addr, "POST", "/metrics", "Content-Length: 0\r\n").await;
    assert_eq!(r.status, 405, "{}", r.head);
    assert!(
        r.head.to_ascii_lowercase().contains("allow: get, head"),
        "{}",
        r.head
    );
    scrape_ok(addr, "a 405").await;

    // Garbage instead of HTTP.
    let r = exchange(addr, "\x16\x03\x01 not http at all\r\n\r\n").await;
    if let Ok(r) = r {
        assert_ne!(r.status, 200);
    }
    scrape_ok(addr, "garbage").await;

    // OpenMetrics on request.
    let r = request(
        addr,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        r.head
    );
    assert!(r.body.ends_with("# EOF\n"));

    // Keep-alive: two scrapes on one connection.
    let mut ka = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        ka.write_all(b"GET /live HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(1), ka.read(&mut buf))
            .await
            .expect("keep-alive reply")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    }

    drop((idle, slow));
    shutdown(srv).await;
}

async fn shutdown(mut srv: Server) {
    srv.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(common::WAIT, srv.task)
        .await
        .expect("server stops within its grace period")
        .expect("server task")
        .expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_flag() {
    let srv = start(localhost()).await;
    let r = request(srv.addr, "GET", "/ready", "").await;
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(request(srv.addr, "GET", "/live", "").await.status, 200);
    srv.ready.store(true, Ordering::Release);
    let r = request(srv.addr, "GET", "/ready", "").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(request(srv.addr, "HEAD", "/ready", "").await.status, 200);
    shutdown(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_time_out_and_free_their_slot() {
    let mut config = localhost();
    config.header_read_timeout = Duration::from_millis(300);
    config.max_connections = 2;
    let srv = start(config).await;
    // Two idle clients fill every slot; the header timeout frees them.
    let mut idle1 = TcpStream::connect(srv.addr).await.unwrap();
    let mut idle2 = TcpStream::connect(srv.addr).await.unwrap();
    scrape_ok(srv.addr, "every slot held by idle clients").await;
    let mut buf = [0u8; 256];
    for idle in [&mut idle1, &mut idle2] {
        let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
            .await
            .expect("idle client dropped after the header timeout");
        // Closed (0) or reset; a 408 reply would also do.
        if let Ok(n) = n {
            assert!(
                n == 0 || buf.starts_with(b"HTTP/1.1 408"),
                "{:?}",
                &buf[..n]
            );
        }
    }

    // A kept-alive connection that goes quiet is closed too.
    let mut ka = TcpStream::connect(srv.addr).await.unwrap();
    ka.write_all(b"GET /live HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let n = ka.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Closed by the server's idle timeout (300 ms here); the bound only catches a hang.
    let n = tokio::time::timeout(Duration::from_secs(300), ka.read(&mut buf))
        .await
        .expect("quiet kept-alive connection closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    shutdown(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_even_with_clients_connected() {
    let srv = start(localhost()).await;
    let addr = srv.addr;
    let _idle = TcpStream::connect(addr).await.unwrap();
    scrape_ok(addr, "an idle client connected").await;
    let start = Instant::now();
    shutdown(srv).await;
    assert!(start.elapsed() < Duration::from_secs(4));
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn address_in_use_is_a_clear_error() {
    let first = server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let addr = first.local_addr();
    let err = server::bind(addr).await.expect_err("second bind");
    let msg = err.to_string();
    assert!(matches!(err, ServerError::AddrInUse { .. }), "{err:?}");
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("already in use"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_evicts_the_oldest_waiting_connection() {
    let mut config = localhost();
    config.max_connections = 8;
    // Long enough that only eviction, not the deadline, can free a slot during the test.
    config.header_read_timeout = Duration::from_secs(30);
    let srv = start(config).await;
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    for i in 0..5 {
        scrape_ok(
            srv.addr,
            &format!("40 slow clients on 8 slots (scrape {i})"),
        )
        .await;
    }
    // All but the newest few slow clients were evicted: closed, never answered.
    let mut closed = 0;
    let mut buf = [0u8; 64];
    for s in &mut slow {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => closed += 1,
            Ok(Ok(n)) => panic!("a slow client got an answer: {:?}", &buf[..n]),
            Err(_) => {}
        }
    }
    assert!(
        (32..=40).contains(&closed),
        "{closed} of 40 slow clients evicted with 8 slots"
    );
    shutdown(srv).await;
}

/// The soft RLIMIT_NOFILE of this process, raised to the hard limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with pointers to a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim), 0);
    }
    lim.rlim_cur
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What an attack added to a scrape that took `took`: its time less the slower of the control
/// scrapes made right before and right after it on a daemon nobody attacks (what the host's
/// own load did to a scrape at that moment).
fn added_by_attack(took: Duration, control: (Duration, Duration)) -> Duration {
    took.saturating_sub(control.0.max(control.1))
}

/// The control makes the slowloris bound fail a stalled server and never a busy host.
#[test]
fn the_slowloris_bound_counts_only_what_the_attack_adds() {
    let ms = Duration::from_millis;
    let bound = Duration::from_secs(1);
    // A server whose slots are held by slow clients answers at the 2 s header deadline; the
    // unattacked daemon alongside answers at once.
    assert!(added_by_attack(ms(2_050), (ms(2), ms(3))) >= bound);
    // So does one that stalls only now and then, between two fast controls.
    assert!(added_by_attack(ms(1_200), (ms(1), ms(150))) >= bound);
    // A host busy with other work slows both daemons alike: a scrape like the one that failed
    // once in an emulated VM (1.166 s against a bound of 1.150 s taken at the start) passes
    // when the control scrapes at that moment are slow too.
    assert!(added_by_attack(ms(1_166), (ms(1_020), ms(640))) < bound);
    // A control slower than the scrape adds nothing.
    assert_eq!(added_by_attack(ms(5), (ms(9), ms(2))), Duration::ZERO);
}

/// `GET path` on `addr`; returns the reply and how long it took.
fn timed_get(addr: SocketAddr, path: &str) -> std::io::Result<(common::HttpReply, Duration)> {
    let t = Instant::now();
    let reply = common::http_request(addr, "GET", path, &[], common::WAIT)?;
    Ok((reply, t.elapsed()))
}

/// 500 slowloris connections (a partial request head, then nothing), each re-opened as soon as
/// the daemon drops it, while a scraper asks for /metrics and /live every 250 ms for 20 s:
/// no answer takes 1 s (scaled on a slower machine, see below) longer than the same request to
/// a control daemon nobody attacks, asked right before and right after it, and the daemon's
/// memory stays bounded.
#[test]
fn slowloris_never_delays_a_scrape() {
    const SLOW: usize = 500;
    const SCRAPE_FOR: Duration = Duration::from_secs(20);
    // Measured: 29 MiB idle, 41 MiB under this attack; the connection cap (1024) bounds the
    // server's share to about 20 MiB whatever the clients do.
    const RSS_LIMIT_KIB: u64 = 64 * 1024;
    assert!(raise_nofile() >= 2 * SLOW as u64, "RLIMIT_NOFILE too low");
    let tracer = common::Traced::start(&["--metrics-addr", "127.0.0.1:0", "--show", "none"]);
    let addr = tracer.metrics_addr();
    // The control: the same daemon, tracing the same host (the attack's connections too), with
    // nobody attacking its server. Scraped alongside each attacked scrape, it measures what
    // the host's load does to a scrape at that moment, so that only what the attack adds is
    // bounded: other work on the host (a VM's emulator on a shared machine) slows both alike.
    let control = common::Traced::start(&["--metrics-addr", "127.0.0.1:0", "--show", "none"]);
    let control_addr = control.metrics_addr();
    let pid = tracer.pid();
    let (rss_idle, _) = rss_kib(pid);
    // The bound, on what the attack adds to a scrape, is the 1 s on a machine where an
    // unloaded scrape takes up to 10 ms (this host: about 1 ms); a slower one (a VM under
    // software emulation, where the attack also takes most of the CPU) gets it scaled by its
    // own unloaded scrape time, measured here. Slots held by slow clients would delay a scrape
    // by up to the 2 s header deadline on any machine while the control answers at once, so
    // the host's 1 s still catches that (`the_slowloris_bound_counts_only_what_the_attack_adds`).
    let unloaded = (0..5)
        .map(|_| {
            let t = Instant::now();
            let r = common::http_request(addr, "GET", "/metrics", &[], common::WAIT).unwrap();
            assert_eq!(r.status, 200);
            t.elapsed()
        })
        .min()
        .unwrap();
    let bound = Duration::from_secs(1).mul_f64((unloaded.as_secs_f64() / 0.010).max(1.0));
    eprintln!("unloaded scrape {unloaded:?}: bound {bound:?}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let attackers: Vec<_> = (0..SLOW)
        .map(|_| {
            let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
            rt.spawn(async move {
                // Bounded: at most 1000 re-openings each, and the stop flag after the scrapes.
                for _ in 0..1000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(Ok(mut s)) =
                        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
                            .await
                    else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                        .await
                        .is_err()
                    {
                        continue;
                    }
                    // Wait until the daemon drops us (deadline or eviction), then re-open.
                    let mut buf = [0u8; 256];
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if let Ok(Ok(0) | Err(_)) =
                            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    // Let the attack reach full strength first.
    let ramp = Instant::now();
    while opened.load(Ordering::Relaxed) < SLOW as u64 && ramp.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        opened.load(Ordering::Relaxed) >= SLOW as u64,
        "only {} slowloris connections opened in 10 s",
        opened.load(Ordering::Relaxed)
    );

    let mut worst = Duration::ZERO;
    let mut worst_added = Duration::ZERO;
    let mut worst_control = Duration::ZERO;
    let mut rss_max = 0;
    let mut scrapes = 0;
    let start = Instant::now();
    while start.elapsed() < SCRAPE_FOR {
        let tick = Instant::now();
        for path in ["/metrics", "/live"] {
            let control_get = || {
                let (reply, took) = timed_get(control_addr, path)
                    .unwrap_or_else(|e| panic!("GET {path} on the control daemon failed: {e}"));
                assert_eq!(reply.status, 200, "GET {path} on the control daemon");
                took
            };
            let before = control_get();
            let (reply, took) = timed_get(addr, path).unwrap_or_else(|e| {
                panic!(
                    "GET {path} failed under slowloris after {:?}: {e}",
                    start.elapsed()
                )
            });
            let after = control_get();
            assert_eq!(reply.status, 200, "GET {path}");
            if path == "/metrics" {
                assert!(
                    reply.body.contains("tracer_tcp_closes_total"),
                    "{}",
                    reply.body
                );
            }
            let added = added_by_attack(took, (before, after));
            assert!(
                added < bound,
                "GET {path} took {took:?} under slowloris, {added:?} more than the control \
                 daemon's {before:?} before and {after:?} after it ({:?} into the test; \
                 unloaded {unloaded:?}, bound {bound:?})",
                start.elapsed()
            );
            worst = worst.max(took);
            worst_added = worst_added.max(added);
            worst_control = worst_control.max(before.max(after));
            scrapes += 1;
        }
        rss_max = rss_max.max(rss_kib(pid).0);
        if let Some(left) = Duration::from_millis(250).checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reopened = opened.load(Ordering::Relaxed);
    rt.block_on(async {
        for a in attackers {
            let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
        }
    });
    let (_, hwm) = rss_kib(pid);
    eprintln!(
        "slowloris: {scrapes} requests, slowest {worst:?} (at most {worst_added:?} more than \
         the control, slowest control {worst_control:?}); {reopened} slow connections opened; \
         daemon RSS idle {rss_idle} KiB, max {rss_max} KiB, peak (VmHWM) {hwm} KiB"
    );
    // Every tick asks twice and lasts at most 250 ms plus its two answers (each under `bound`
    // more than its control, checked above) and their four control requests: 160 requests on
    // a fast machine, fewer where answers are slower.
    let per_tick =
        0.25 + 2.0 * (bound + worst_control).as_secs_f64() + 4.0 * worst_control.as_secs_f64();
    let min_requests = 2 * (SCRAPE_FOR.as_secs_f64() / per_tick) as usize;
    assert!(
        scrapes >= min_requests,
        "only {scrapes} requests in {SCRAPE_FOR:?} (at least {min_requests} expected)"
    );
    assert!(
        reopened > SLOW as u64,
        "slow connections were never dropped and re-opened ({reopened})"
    );
    assert!(
        hwm < RSS_LIMIT_KIB,
        "daemon peak RSS {hwm} KiB under slowloris (limit {RSS_LIMIT_KIB} KiB)"
    );
    let (code, _, stderr) = tracer.signal_and_finish_raw(libc::SIGINT);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = control.signal_and_finish_raw(libc::SIGINT);
    assert_eq!(code, 0, "control daemon: {stderr}");
}
