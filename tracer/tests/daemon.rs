//! The daemon (issue 5): the live `/metrics` of a real tracer checked by `promtool` and scraped
//! by a real Prometheus server, the per-process series cap under 300 leaking processes, the
//! admin server against bad clients, a taken or invalid address, and SIGTERM.
//!
//! Needs `promtool` and `prometheus` (Debian's `prometheus` package, installed by
//! `cargo xtask setup`; `PROMTOOL` and `PROMETHEUS` override the binaries). Without them the
//! tests fail, they do not skip. Leaking processes are `tests/fixtures/leaky.py`; only their
//! pids, comms and ports are looked at.
//!
//! Tier: root

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::prometheus::Prometheus;
use common::promtool::check_metrics;
use common::{Fixture, HttpReply, Traced, WAIT, connect_clients, http_request, run_tracer};

// ---------------------------------------------------------------------------------------------
// Exposition parsing

/// One sample of the text exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the sample lines of a 0.0.4 or OpenMetrics exposition (label values unescaped).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
        let name = line[..name_end].to_owned();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                r = r.trim_start_matches(',');
                if let Some(after) = r.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = r
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => panic!("bad escape in {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value in {line:?}"),
                    }
                };
                labels.push((key.to_owned(), value));
                r = &after[end + 1..];
            }
        }
        let value_str = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value = match value_str {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value {v:?} in {line:?}: {e}")),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn samples_of<'a>(samples: &'a [Sample], name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| s.name == name)
}

fn single(samples: &[Sample], name: &str) -> Option<f64> {
    samples_of(samples, name)
        .find(|s| s.labels.is_empty())
        .map(|s| s.value)
}

/// The value of `name{pid=PID,comm=COMM}`, if present.
fn process_value(samples: &[Sample], name: &str, pid: u32, comm: &str) -> Option<f64> {
    let pid = pid.to_string();
    samples_of(samples, name)
        .find(|s| s.label("pid") == Some(pid.as_str()) && s.label("comm") == Some(comm))
        .map(|s| s.value)
}

// ---------------------------------------------------------------------------------------------
// HTTP against the tracer

fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> HttpReply {
    http_request(addr, "GET", path, headers, WAIT)
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// A normal scrape: 200 and the exposition. (How long it takes depends on the machine; that
/// a slow client does not delay it is checked by causality in bad_clients_do_not_block_scrapes.)
fn scrape_ok(addr: SocketAddr, after: &str) -> HttpReply {
    let r = http_request(addr, "GET", "/metrics", &[], WAIT)
        .unwrap_or_else(|e| panic!("scrape after {after}: {e}"));
    assert_eq!(r.status, 200, "scrape after {after}: {r:?}");
    assert!(
        r.body.contains("tracer_events_total"),
        "scrape after {after}: {}",
        r.body
    );
    r
}

/// Whether the server still holds `silent` open (it closes a connection that sent no request
/// head within its 5 s header timeout): a non-blocking peek sees no data and no end.
fn still_open(silent: &TcpStream) -> bool {
    silent.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let open = matches!(silent.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    silent.set_nonblocking(false).unwrap();
    open
}

/// Starts a daemon on an ephemeral loopback port; returns it and its metrics address.
fn daemon(extra: &[&str]) -> (Traced, SocketAddr) {
    let mut args = vec!["--metrics-addr", "127.0.0.1:0", "--json"];
    args.extend_from_slice(extra);
    let t = Traced::start(&args);
    let addr = t.metrics_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    (t, addr)
}

/// Polls `/metrics` until `pred` holds for its samples; returns the body.
fn scrape_until(
    addr: SocketAddr,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&[Sample]) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(addr, "/metrics", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        if pred(&parse_exposition(&r.body)) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {timeout:?}); last exposition:\n{}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `leaky.py` server named `comm` holding `n` sockets in CLOSE_WAIT (its clients, from this
/// process, closed).
fn leaking_server(comm: &str, n: usize) -> Fixture {
    let mut server = Fixture::serve(comm, &[]);
    let clients = connect_clients(server.port, n);
    server.send(&format!("wait {n}"));
    server.expect(&format!("have {n}"), WAIT);
    drop(clients);
    server
}

// ---------------------------------------------------------------------------------------------
// External tools

// ---------------------------------------------------------------------------------------------
// Tests

/// Test 1: after real traffic and a leak, the live 0.0.4 exposition passes `promtool check
/// metrics`, and an OpenMetrics request gets the OpenMetrics content type and `# EOF`.
#[test]
fn live_exposition_passes_promtool() {
    let (t, addr) = daemon(&["--close-wait-threshold", "1s"]);
    // Some ordinary traffic: a full open and close.
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
    let server = leaking_server("leaky-prom1", 2);
    // The gauge counts at scrape time, the counter when the leak record is made (at most
    // --drain-interval later): wait for both.
    let body = scrape_until(addr, WAIT, "the leak", |s| {
        process_value(s, "tracer_tcp_close_wait_leaks", server.pid, "leaky-prom1") == Some(2.0)
            && single(s, "tracer_tcp_close_wait_leaks_detected_total").is_some_and(|n| n >= 2.0)
    });
    let samples = parse_exposition(&body);
    assert_eq!(
        process_value(
            &samples,
            "tracer_tcp_close_wait_sockets",
            server.pid,
            "leaky-prom1"
        ),
        Some(2.0),
        "{body}"
    );
    assert!(single(&samples, "tracer_tcp_close_wait_leaks_detected_total").unwrap() >= 2.0);
    assert!(single(&samples, "tracer_events_total").unwrap() > 0.0);
    check_metrics(&body, "live");

    let plain = get(addr, "/metrics", &[]);
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{plain:?}"
    );
    check_metrics(&plain.body, "live");

    let om = get(
        addr,
        "/metrics",
        &["Accept: application/openmetrics-text; version=1.0.0"],
    );
    assert_eq!(om.status, 200);
    assert_eq!(
        om.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{om:?}"
    );
    assert!(
        om.body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF:\n{}",
        om.body
    );
    assert_eq!(om.body.matches("# EOF").count(), 1);
    let om_samples = parse_exposition(&om.body);
    assert_eq!(
        process_value(
            &om_samples,
            "tracer_tcp_close_wait_leaks",
            server.pid,
            "leaky-prom1"
        ),
        Some(2.0),
        "{}",
        om.body
    );
    drop(server);
    let (code, _, stderr) = t.terminate();
    assert_eq!(code, 0, "{stderr}");
}

/// Test 2: a real Prometheus server scraping the daemon every second sees the leaking process,
/// with its pid and comm, holding 3 leaked sockets.
#[test]
fn prometheus_scrapes_the_leak() {
    let (t, addr) = daemon(&["--close-wait-threshold", "1s"]);
    let prom = Prometheus::scraping(addr);
    let server = leaking_server("leaky-prom2", 3);
    let pid = server.pid.to_string();
    // Prometheus starts, scrapes every second and answers queries: bounded only against a hang
    // (under emulation its start alone takes many seconds).
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    let found = loop {
        match prom.api("query?query=tracer_tcp_close_wait_leaks") {
            Ok(v) => {
                let hit = v["data"]["result"].as_array().and_then(|rs| {
                    rs.iter()
                        .find(|r| {
                            r["metric"]["pid"] == pid.as_str()
                                && r["metric"]["comm"] == "leaky-prom2"
                        })
                        .cloned()
                });
                if let Some(r) = hit
                    && r["value"][1] == "3"
                {
                    break Some(r);
                }
                last = v.to_string();
            }
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let Some(series) = found else {
        panic!(
            "Prometheus never had tracer_tcp_close_wait_leaks{{pid=\"{pid}\",comm=\"leaky-prom2\"}} = 3; \
             last answer: {last}\ntargets: {:?}\nprometheus log:\n{}\ntracer stderr:\n{}",
            prom.api("targets"),
            prom.log(),
            t.stderr()
        );
    };
    assert_eq!(series["metric"]["job"], "tracer", "{series}");
    assert_eq!(series["metric"]["instance"], addr.to_string(), "{series}");
    // The target is healthy: every scrape parsed.
    let up = prom.api("query?query=up").unwrap();
    assert!(
        up["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["metric"]["job"] == "tracer" && r["value"][1] == "1"),
        "{up}"
    );
    drop(prom);
    drop(server);
    let (code, _, stderr) = t.terminate();
    assert_eq!(code, 0, "{stderr}");
}

/// The per-process series of one family: (pid label, comm label) → value.
fn process_series(samples: &[Sample], family: &str) -> Vec<(String, String, f64)> {
    samples_of(samples, family)
        .map(|s| {
            (
                s.label("pid")
                    .unwrap_or_else(|| panic!("no pid label: {s:?}"))
                    .to_owned(),
                s.label("comm")
                    .unwrap_or_else(|| panic!("no comm label: {s:?}"))
                    .to_owned(),
                s.value,
            )
        })
        .collect()
}

/// Checks the documented cardinality rule (docs/metrics.md, "Per-process series") on one
/// scrape; returns (processes, whether `other` was present).
fn check_series_rule(body: &str, cap: usize) -> (usize, bool) {
    let samples = parse_exposition(body);
    let sockets = process_series(&samples, "tracer_tcp_close_wait_sockets");
    let leaks = process_series(&samples, "tracer_tcp_close_wait_leaks");
    let ctx = || format!("--- exposition ---\n{body}");
    for (family, series) in [("sockets", &sockets), ("leaks", &leaks)] {
        assert!(
            series.len() <= cap + 2,
            "{} {family} series > cap {cap} + 2\n{}",
            series.len(),
            ctx()
        );
        let keys: HashSet<(&str, &str)> = series
            .iter()
            .map(|(p, c, _)| (p.as_str(), c.as_str()))
            .collect();
        assert_eq!(
            keys.len(),
            series.len(),
            "duplicate {family} series\n{}",
            ctx()
        );
        for (p, c, _) in series.iter() {
            let numeric = p.parse::<u32>().is_ok();
            assert!(
                numeric || (p == "other" && c == "other") || (p == "unknown" && c == "unknown"),
                "bad labels pid={p:?} comm={c:?}\n{}",
                ctx()
            );
        }
    }
    let keys = |s: &[(String, String, f64)]| -> BTreeSet<(String, String)> {
        s.iter().map(|(p, c, _)| (p.clone(), c.clone())).collect()
    };
    assert_eq!(
        keys(&sockets),
        keys(&leaks),
        "both families carry the same series\n{}",
        ctx()
    );
    let value = |s: &[(String, String, f64)], pid: &str, comm: &str| {
        s.iter()
            .find(|(p, c, _)| p == pid && c == comm)
            .map(|(_, _, v)| *v)
    };
    for (p, c, n) in &sockets {
        let l = value(&leaks, p, c).unwrap();
        assert!(
            l <= *n && *n >= 1.0,
            "{p}/{c}: {l} leaks of {n} sockets\n{}",
            ctx()
        );
    }
    let processes = single(&samples, "tracer_tcp_close_wait_processes")
        .unwrap_or_else(|| panic!("no tracer_tcp_close_wait_processes\n{}", ctx()))
        as usize;
    let kept: Vec<_> = sockets
        .iter()
        .filter(|(p, _, _)| p.parse::<u32>().is_ok())
        .collect();
    assert_eq!(
        kept.len(),
        processes.min(cap),
        "{processes} processes, cap {cap}: pid series\n{}",
        ctx()
    );
    let other = value(&sockets, "other", "other");
    assert_eq!(
        other.is_some(),
        processes > cap,
        "`other` present exactly when a process is left out ({processes} > {cap})\n{}",
        ctx()
    );
    // Kept: the most leaking first; so no left-out process leaks more than the least leaking
    // kept one.
    if let Some(other_leaks) = value(&leaks, "other", "other") {
        let min_kept = kept
            .iter()
            .map(|(p, c, _)| value(&leaks, p, c).unwrap())
            .fold(f64::INFINITY, f64::min);
        let hidden = (processes - cap) as f64;
        assert!(
            other_leaks <= hidden * min_kept,
            "other has {other_leaks} leaks over {hidden} processes, but a kept process has only {min_kept}\n{}",
            ctx()
        );
        assert!(
            other.unwrap() >= hidden,
            "each left-out process holds ≥ 1 socket\n{}",
            ctx()
        );
    }
    // The family sums to the CLOSE_WAIT total.
    let total: f64 = sockets.iter().map(|(_, _, v)| v).sum();
    let state = samples_of(&samples, "tracer_tcp_sockets")
        .find(|s| s.label("state") == Some("CLOSE_WAIT"))
        .map(|s| s.value)
        .unwrap();
    assert_eq!(
        total,
        state,
        "sum of tracer_tcp_close_wait_sockets\n{}",
        ctx()
    );
    (processes, other.is_some())
}

/// Test 3: 300 short-lived processes, each leaking one socket then exiting, 30 at a time,
/// against `--max-process-series 20`: every scrape keeps the documented series rule, and once
/// they are gone so are their series.
#[test]
fn per_process_series_stay_capped_under_300_leakers() {
    const CAP: usize = 20;
    const COUNT: usize = 300;
    const PREFIX: &str = "lk9-";
    let (t, addr) = daemon(&[
        "--close-wait-threshold",
        "400ms",
        "--max-process-series",
        &CAP.to_string(),
    ]);
    let mut swarm = Fixture::spawn(&["swarm", PREFIX, &COUNT.to_string(), "30", "0.9"]);
    let start = Instant::now();
    let (mut scrapes, mut max_processes, mut saw_other, mut saw_leaking) = (0, 0, false, false);
    // The swarm's work is COUNT children; it must keep making progress (a child's line), not
    // finish by a fixed time: under emulation it takes minutes instead of ~10 s.
    let (mut lines_seen, mut progress_at) = (0, Instant::now());
    loop {
        let lines = swarm.drain_lines();
        let done = lines.iter().any(|l| l == "done");
        if lines.len() > lines_seen {
            (lines_seen, progress_at) = (lines.len(), Instant::now());
        }
        let r = scrape_ok(addr, "a scrape during the run");
        let (processes, other) = check_series_rule(&r.body, CAP);
        scrapes += 1;
        max_processes = max_processes.max(processes);
        saw_other |= other;
        let samples = parse_exposition(&r.body);
        saw_leaking |= samples_of(&samples, "tracer_tcp_close_wait_leaks")
            .any(|s| s.label("comm").is_some_and(|c| c.starts_with(PREFIX)) && s.value >= 1.0);
        if done {
            break;
        }
        assert!(
            progress_at.elapsed() < WAIT,
            "the swarm made no progress for {WAIT:?}; it printed {lines_seen} lines"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(swarm.wait_exit(WAIT), Some(0));
    let children: HashSet<String> = swarm
        .drain_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("leak "))
        .map(|r| r.split_whitespace().next().unwrap().to_owned())
        .collect();
    eprintln!(
        "{scrapes} scrapes in {:?}; at most {max_processes} processes holding CLOSE_WAIT",
        start.elapsed()
    );
    assert_eq!(children.len(), COUNT, "every child leaked one socket");
    assert!(
        max_processes > CAP,
        "the cap was exercised: at most {max_processes} processes seen"
    );
    assert!(saw_other, "`other` was never exported ({scrapes} scrapes)");
    assert!(
        saw_leaking,
        "no child's leak was ever exported ({scrapes} scrapes)"
    );

    // After they exited: none of their series is left.
    let body = scrape_until(addr, WAIT, "the children's series gone", |s| {
        !samples_of(s, "tracer_tcp_close_wait_sockets")
            .chain(samples_of(s, "tracer_tcp_close_wait_leaks"))
            .any(|x| {
                x.label("comm").is_some_and(|c| c.starts_with(PREFIX))
                    || x.label("pid").is_some_and(|p| children.contains(p))
            })
    });
    check_series_rule(&body, CAP);
    let samples = parse_exposition(&body);
    assert!(
        single(&samples, "tracer_tcp_close_wait_leaks_detected_total").unwrap() >= COUNT as f64,
        "{body}"
    );
    let (code, _, stderr) = t.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("tracer: lost"), "{stderr}");
}

/// Test 4: bad clients do not stop scrapes: a silent connection, a 1 MiB header, a wrong path,
/// a wrong method.
#[test]
fn bad_clients_do_not_block_scrapes() {
    let (t, addr) = daemon(&[]);
    scrape_ok(addr, "start");
    assert_eq!(get(addr, "/live", &[]).status, 200);
    assert_eq!(get(addr, "/ready", &[]).status, 200);

    // Connected, sends nothing, kept open for the rest of the test. A server that handled
    // connections one at a time would answer the scrape only after dropping the silent
    // client at its header timeout; answered while the silent client is still open, the
    // scrape did not wait for it, however slow the machine.
    let silent = TcpStream::connect(addr).unwrap();
    scrape_ok(addr, "a silent client connected");
    assert!(
        still_open(&silent),
        "the scrape was answered only after the server dropped the silent client"
    );

    // A request head of 1 MiB: refused with 431 (or the connection closed); the write may
    // fail once the server has closed.
    {
        let mut s = TcpStream::connect(addr).unwrap();
        // Failure bounds only: a server that held the head would hit them.
        s.set_write_timeout(Some(WAIT)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.resize(req.len() + (1 << 20), b'a');
        req.extend_from_slice(b"\r\n\r\n");
        let started = Instant::now();
        let _ = s.write_all(&req);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert!(started.elapsed() < WAIT, "the server held a 1 MiB head");
        eprintln!("1 MiB head: {} bytes back", raw.len());
        if let Some(r) = common::parse_http_reply(&raw) {
            assert_eq!(r.status, 431, "{r:?}");
        }
    }
    scrape_ok(addr, "a 1 MiB header");

    let r = get(addr, "/no-such-path", &[]);
    assert_eq!(r.status, 404, "{r:?}");
    scrape_ok(addr, "a wrong path");

    for method in ["POST", "DELETE", "PUT"] {
        let r = http_request(addr, method, "/metrics", &[], WAIT).unwrap();
        assert_eq!(r.status, 405, "{method}: {r:?}");
        let allow = r.header("allow").unwrap_or_default();
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "{method}: {r:?}"
        );
        scrape_ok(addr, &format!("a {method}"));
    }
    drop(silent);
    let (code, _, stderr) = t.terminate();
    assert_eq!(code, 0, "{stderr}");
}

/// Test 5: a taken port stops the tracer at once with one line naming the address, before
/// anything is traced; an address that is not this host's likewise; a malformed one is a usage
/// error (2).
#[test]
fn taken_or_invalid_address_fails_before_tracing() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (addr, why) in [
        (addr.as_str(), "address already in use"),
        ("192.0.2.1:9977", "no local interface has this address"),
    ] {
        // "At once": before anything is traced (no "tracing" line), not within a time that
        // depends on the machine.
        let (code, stdout, stderr, _) = run_tracer(&["--metrics-addr", addr], WAIT);
        assert_ne!(code, 0, "{addr}: {stderr}");
        assert_ne!(code, 2, "{addr}: not a usage error: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{addr}: one line: {stderr:?}");
        assert!(
            lines[0].contains(addr),
            "{addr}: names the address: {stderr:?}"
        );
        assert!(lines[0].contains(why), "{addr}: {stderr:?}");
        assert!(!stderr.contains("tracing TCP state changes"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stdout.is_empty(), "{addr}: {stdout:?}");
    }
    drop(taken);

    for bad in [
        "nonsense",
        "127.0.0.1:99999",
        "localhost:9977",
        "1.2.3.4.5:80",
        "127.0.0.1:",
        "",
    ] {
        let (code, _, stderr, _) = run_tracer(&["--metrics-addr", bad], WAIT);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(stderr.contains("--metrics-addr"), "{bad:?}: {stderr}");
        assert!(!stderr.contains("tracing TCP state changes"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Test 6: SIGTERM ends the daemon cleanly: exit 0, its summary, and /metrics closed.
#[test]
fn sigterm_stops_the_daemon() {
    let t = Traced::start_env(
        &["--metrics-addr", "127.0.0.1:0", "--json"],
        &[("TRACER_LOG", "tracer::server=debug")],
    );
    let addr = t.metrics_addr();
    scrape_ok(addr, "start");
    // Open connections do not hold the exit up: one silent, one kept alive after a request.
    let _silent = TcpStream::connect(addr).unwrap();
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(format!("GET /live HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let sent = Instant::now();
    let (code, lines, stderr) = t.signal_and_finish_raw(libc::SIGTERM);
    eprintln!("SIGTERM to exit: {:?}", sent.elapsed());
    assert_eq!(code, 0, "{stderr}");
    // Not a time bound (a slow machine makes any exit slow): the server says that no
    // connection was left running when its grace ran out, i.e. none held the exit up.
    let stopped = stderr
        .lines()
        .find(|l| l.contains("metrics server stopped"))
        .unwrap_or_else(|| panic!("no 'metrics server stopped' line: {stderr}"));
    assert!(stopped.contains("abandoned=0"), "{stopped}");
    assert!(stderr.contains("stopping: terminated"), "{stderr}");
    let summary: Value = serde_json::from_str(lines.last().expect("a summary line"))
        .unwrap_or_else(|e| panic!("{e}: {lines:?}"));
    assert_eq!(summary["type"], "summary", "{summary}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("{\"type\":\"summary\""))
            .count(),
        1,
        "{lines:?}"
    );
    match http_request(addr, "GET", "/metrics", &[], Duration::from_secs(2)) {
        Err(_) => {}
        Ok(r) => panic!("/metrics still answers after exit: {r:?}"),
    }
}

/// A daemon logs each new leak on stderr (for journald or a log file: plain text, no terminal
/// colour codes), one line naming the holder's pid and comm, the endpoints and the age.
#[test]
fn daemon_logs_each_leak_as_plain_text() {
    let (t, addr) = daemon(&["--close-wait-threshold", "500ms"]);
    let server = leaking_server("leaky-log12", 2);
    scrape_until(addr, WAIT, "the leak", |s| {
        process_value(s, "tracer_tcp_close_wait_leaks", server.pid, "leaky-log12") == Some(2.0)
    });
    // The gauge counts at scrape time; the log line is written when the leak record is.
    let is_log = |l: &str| l.contains("CLOSE_WAIT leak") && l.contains("comm=leaky-log12");
    assert!(
        t.wait_stderr(WAIT, |e| e.lines().filter(|l| is_log(l)).count() >= 2),
        "two leak lines; stderr:\n{}",
        t.stderr()
    );
    let pid = server.pid;
    drop(server);
    let (code, lines, stderr) = t.signal_and_finish_raw(libc::SIGTERM);
    assert_eq!(code, 0, "{stderr}");
    // Nothing but the run's settings and the summary on stdout.
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("{\"type\":\"meta\""), "{lines:?}");
    assert!(
        !stderr.contains('\x1b'),
        "terminal escape codes in the daemon's log (stderr is not a terminal):\n{stderr:?}"
    );
    let logged: Vec<&str> = stderr.lines().filter(|l| is_log(l)).collect();
    assert_eq!(logged.len(), 2, "{stderr}");
    for l in logged {
        assert!(l.contains("WARN"), "{l}");
        assert!(l.contains(&format!("pid={pid}")), "{l}");
        assert!(l.contains("local=127.0.0.1:"), "{l}");
        assert!(l.contains("peer=127.0.0.1:"), "{l}");
        assert!(l.contains("age="), "{l}");
    }
}

/// Busy loopback traffic until the returned flag is set: a few threads opening and closing
/// connections as fast as they can.
fn busy_traffic(
    threads: usize,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let a = l.local_addr().unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(c) = TcpStream::connect(a) else {
                        continue;
                    };
                    if let Ok((s, _)) = l.accept() {
                        drop(c);
                        drop(s);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        })
        .collect();
    (stop, handles)
}

/// SIGINT (Ctrl-C) and SIGTERM each stop a tracer that is busy draining events, every time,
/// with exit code 0 (and its summary): a signal must not be lost when it arrives while the
/// reader is handling a batch, nor kill the tracer (default action) once it says it is tracing.
#[test]
fn signals_stop_a_busy_tracer_every_time() {
    const ROUNDS: u64 = 8;
    let (stop, handles) = busy_traffic(1);
    let mut report = Vec::new();
    for (name, sig) in [("SIGTERM", libc::SIGTERM), ("SIGINT", libc::SIGINT)] {
        let (mut lost, mut died) = (0, Vec::new());
        for round in 0..ROUNDS {
            // Draining often keeps the reader busy, as a loaded host does.
            let mut t = Traced::start(&["--show", "none", "--json", "--drain-interval", "1ms"]);
            std::thread::sleep(Duration::from_millis(37 * round % 250));
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(t.pid() as i32, sig) };
            // A lost signal never ends it; a slow machine only delays the end.
            let deadline = Instant::now() + WAIT;
            while !t.has_exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.has_exited() {
                let (code, lines, stderr) = t.finish_raw();
                let summary = lines
                    .last()
                    .is_some_and(|l| l.starts_with("{\"type\":\"summary\""));
                if code != 0 || !summary {
                    died.push(format!("exit {code}, summary {summary}: {stderr:?}"));
                }
            } else {
                lost += 1;
                drop(t); // killed
            }
        }
        report.push(format!(
            "{name}: ignored for {WAIT:?} {lost} of {ROUNDS} times; ended without exit 0 and summary {} times {died:?}",
            died.len()
        ));
        if lost > 0 || !died.is_empty() {
            report.push("FAILED".into());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert!(
        !report.iter().any(|l| l == "FAILED"),
        "stop signals to a busy tracer: {report:#?}"
    );
}
