//! Why each connection ended (issue 22), on real loopback connections, checked against the
//! kernel's own record of every reset it sent: a raw read of the tracepoint
//! `tcp:tcp_send_reset` in a private tracefs instance, in the same test. Never a guessed name.
//!
//! - close() with unread data, SO_LINGER 0, and a listener closed with connections it never
//!   accepted: each `abort` (reset by local) with the `rst_reason` the kernel gave (6.10+;
//!   older kernels give none, and the record then has none), and the (reason, kind) pair is one
//!   docs/close-kinds.md lists;
//! - 50 connects to a closed port (from 127.0.0.2) and 20 ACK segments of a connection the
//!   host does not have (raw socket, from 127.0.0.3): `tracer_tcp_resets_sent_total` per remote
//!   matches what tracefs recorded for each remote (on kernels that trace resets without a
//!   socket: 6.10+; elsewhere both are 0);
//! - a connection idle for 3 s, then reset by its peer: `idle_before_close_ns` is the measured
//!   interval within a few ticks, and the `kind="reset"` histogram has it between 2 and 5 s;
//! - a live recording (`--json`) replayed gives the same close records: reasons (from its
//!   `reset_sent` lines) and idle times (from its closing transitions).
//!
//! Needs root; fails, never skips, without it.
//!
//! Tier: root

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::Traced;
use common::sockets::set_linger_zero;
use serde_json::Value;

/// A private tracefs instance recording `tcp:tcp_send_reset` while it lives.
struct RawResets {
    dir: PathBuf,
}

impl RawResets {
    fn start() -> RawResets {
        let root = PathBuf::from("/sys/kernel/tracing");
        if !root.join("instances").is_dir() {
            let st = std::process::Command::new("mount")
                .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
                .status()
                .expect("running mount");
            assert!(st.success(), "mounting tracefs failed");
        }
        let dir = root.join(format!("instances/tracer-reasons-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).expect("creating a tracefs instance (root needed)");
        std::fs::write(dir.join("events/tcp/tcp_send_reset/enable"), "1")
            .expect("enabling tcp:tcp_send_reset in the instance");
        RawResets { dir }
    }

    /// Every reset recorded so far: (source endpoint, destination endpoint, reason if the
    /// kernel prints one).
    fn read(&self) -> Vec<(String, String, Option<String>)> {
        let text = std::fs::read_to_string(self.dir.join("trace")).expect("reading trace");
        text.lines()
            .filter(|l| l.contains("tcp_send_reset:"))
            .filter_map(parse_raw)
            .collect()
    }
}

impl Drop for RawResets {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("events/tcp/tcp_send_reset/enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One trace line: `src=A:P dest=B:Q … reason=R` (6.10+) or `sport=P dport=Q saddr=A daddr=B …`
/// (older kernels, no reason).
fn parse_raw(line: &str) -> Option<(String, String, Option<String>)> {
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).map(str::to_owned))
    };
    let reason = field("reason=");
    if let (Some(s), Some(d)) = (field("src="), field("dest=")) {
        return Some((s, d, reason));
    }
    let (sp, dp, sa, da) = (
        field("sport=")?,
        field("dport=")?,
        field("saddr=")?,
        field("daddr=")?,
    );
    Some((format!("{sa}:{sp}"), format!("{da}:{dp}"), reason))
}

fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

fn port(s: &TcpStream) -> u16 {
    s.local_addr().unwrap().port()
}

fn close_of(t: &mut Traced, local: u16, remote: u16) -> Value {
    t.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "close" && v["sport"] == local && v["dport"] == remote
    })
    .unwrap_or_else(|| {
        panic!(
            "no close record for {local}->{remote}; stderr:\n{}",
            t.stderr()
        )
    })
}

/// The reason tracefs recorded for the RST from 127.0.0.1:`local` to 127.0.0.1:`remote`.
fn raw_reason(raw: &RawResets, local: u16, remote: u16) -> Option<String> {
    let (src, dst) = (format!("127.0.0.1:{local}"), format!("127.0.0.1:{remote}"));
    let all = raw.read();
    let found = all
        .iter()
        .find(|(s, d, _)| *s == src && *d == dst)
        .unwrap_or_else(|| panic!("tracefs recorded no RST {src} -> {dst}: {all:?}"));
    found.2.clone()
}

/// The (reason, kind) pairs docs/close-kinds.md lists in its reasons table.
fn documented_pairs() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/close-kinds.md"
    ))
    .expect("reading docs/close-kinds.md");
    let section = doc
        .split("## Why this host sent a reset")
        .nth(1)
        .expect("docs/close-kinds.md has a section on reset reasons");
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let cells: Vec<&str> = l.strip_prefix('|')?.split('|').map(str::trim).collect();
            let reason = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((reason.to_owned(), kind.to_owned()))
        })
        .collect()
}

/// The record's reason is the kernel's, and the pair is documented.
#[track_caller]
fn check_reason(what: &str, c: &Value, kernel: Option<String>, documented: &[(String, String)]) {
    eprintln!(
        "{what}: kind {}, rst_reason {}, tracefs {kernel:?}",
        c["kind"], c["rst_reason"]
    );
    assert_eq!(c["kind"], "abort", "{c}");
    assert_eq!(c["reset_by"], "local", "{c}");
    match kernel {
        Some(r) => {
            assert_eq!(c["rst_reason"], r.as_str(), "tracefs said {r}: {c}");
            let pair = (r.clone(), "abort".to_owned());
            assert!(
                documented.contains(&pair),
                "docs/close-kinds.md does not list ({r}, abort): {documented:?}"
            );
        }
        None => assert!(c["rst_reason"].is_null(), "no reason on this kernel: {c}"),
    }
}

#[test]
fn closes_carry_the_reason_the_kernel_gave() {
    let documented = documented_pairs();
    assert!(
        !documented.is_empty(),
        "no reasons table in docs/close-kinds.md"
    );
    let raw = RawResets::start();
    let mut t = Traced::start(&["--json", "--show", "closes"]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = l.local_addr().unwrap().port();

    // close() with unread data.
    let (mut c, s) = pair(&l);
    let cp = port(&c);
    c.write_all(b"never read").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(s);
    let rec = close_of(&mut t, lport, cp);
    check_reason(
        "unread data",
        &rec,
        raw_reason(&raw, lport, cp),
        &documented,
    );
    drop(c);

    // SO_LINGER 0.
    let (c, mut s) = pair(&l);
    let cp = port(&c);
    set_linger_zero(&c);
    drop(c);
    let rec = close_of(&mut t, cp, lport);
    check_reason(
        "SO_LINGER 0",
        &rec,
        raw_reason(&raw, cp, lport),
        &documented,
    );
    let _ = s.read(&mut [0u8; 4]);

    // A listener closed with connections it never accepted.
    let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l2port = l2.local_addr().unwrap().port();
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", l2port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    drop(l2);
    for c in &clients {
        let cp = port(c);
        let rec = close_of(&mut t, l2port, cp);
        check_reason(
            "un-accepted child",
            &rec,
            raw_reason(&raw, l2port, cp),
            &documented,
        );
    }
    let (code, _, err) = t.stop();
    assert_eq!(code, 0, "{err}");
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `n` bare ACK segments from `src` to `dst` with a raw socket: segments of a
/// connection neither end has, which the kernel answers with a RST.
fn send_stray_acks(src: SocketAddrV4, dst: SocketAddrV4, n: usize) {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let sin = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let from = sin(src);
        let len = size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(libc::bind(fd, (&raw const from).cast(), len), 0, "bind raw");
        for i in 0..n {
            let mut tcp = [0u8; 20];
            tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
            tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
            tcp[4..8].copy_from_slice(&(1_000_000u32 + i as u32 * 1000).to_be_bytes());
            tcp[8..12].copy_from_slice(&7_000_000u32.to_be_bytes());
            tcp[12] = 5 << 4; // header length: 5 words
            tcp[13] = 0x10; // ACK
            tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
            let mut pseudo = Vec::with_capacity(32);
            pseudo.extend_from_slice(&src.ip().octets());
            pseudo.extend_from_slice(&dst.ip().octets());
            pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
            pseudo.extend_from_slice(&tcp);
            let sum = checksum(&pseudo);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let to = sin(dst);
            let sent = libc::sendto(
                fd,
                tcp.as_ptr().cast(),
                tcp.len(),
                0,
                (&raw const to).cast(),
                len,
            );
            assert_eq!(sent, 20, "sendto: {}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
}

/// A port on 127.0.0.1 nobody listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn resets_without_a_socket_are_counted_per_remote() {
    let raw = RawResets::start();
    let t = Traced::start(&["--json", "--metrics-addr", "127.0.0.1:0", "--show", "none"]);
    let addr = t.metrics_addr();
    let dead = closed_port();
    for _ in 0..50 {
        let s = socket2_connect_from(Ipv4Addr::new(127, 0, 0, 2), dead);
        assert!(s.is_err(), "connect to a closed port succeeded");
    }
    let stray_port = closed_port();
    send_stray_acks(
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 40_999),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, stray_port),
        20,
    );
    std::thread::sleep(Duration::from_millis(500));

    // What tracefs recorded, per remote address and reason.
    let mut want: HashMap<(String, String), u64> = HashMap::new();
    for (_, dst, reason) in raw.read() {
        let ip = dst
            .rsplit_once(':')
            .map_or(dst.clone(), |(a, _)| a.to_owned());
        if ip == "127.0.0.2" || ip == "127.0.0.3" {
            *want
                .entry((ip, reason.unwrap_or_else(|| "unknown".into())))
                .or_default() += 1;
        }
    }
    let (major, minor) = common::kernel_version();
    if (major, minor) >= (6, 10) {
        assert_eq!(
            want.get(&("127.0.0.2".into(), "NO_SOCKET".into())),
            Some(&50),
            "tracefs: {want:?}"
        );
        assert_eq!(
            want.get(&("127.0.0.3".into(), "NO_SOCKET".into())),
            Some(&20),
            "tracefs: {want:?}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = common::scrape(addr);
        let got = |ip: &str, reason: &str| {
            common::sample_of(
                &text,
                &format!("tracer_tcp_resets_sent_total{{reason=\"{reason}\",remote=\"{ip}\"}}"),
            )
        };
        let all_match = want.iter().all(|((ip, r), n)| got(ip, r) == *n)
            && ["127.0.0.2", "127.0.0.3"].iter().all(|ip| {
                let ours: u64 = want
                    .iter()
                    .filter(|((i, _), _)| i == ip)
                    .map(|(_, n)| n)
                    .sum();
                let theirs: u64 = text
                    .lines()
                    .filter(|l| {
                        l.starts_with("tracer_tcp_resets_sent_total{")
                            && l.contains(&format!("remote=\"{ip}\""))
                    })
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .map(|v| v as u64)
                    .sum();
                ours == theirs
            });
        if all_match {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "per-remote reset counters differ from tracefs {want:?}:\n{}",
            text.lines()
                .filter(|l| l.contains("resets_sent"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, err) = t.stop();
    assert_eq!(code, 0, "{err}");
}

/// `connect()` from `src` to 127.0.0.1:`port` (std cannot bind before connecting).
fn socket2_connect_from(src: Ipv4Addr, port: u16) -> std::io::Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sin = |a: Ipv4Addr, p: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: p.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.octets()),
            },
            sin_zero: [0; 8],
        };
        let len = size_of::<libc::sockaddr_in>() as u32;
        let from = sin(src, 0);
        let to = sin(Ipv4Addr::LOCALHOST, port);
        let r = if libc::bind(fd, (&raw const from).cast(), len) != 0
            || libc::connect(fd, (&raw const to).cast(), len) != 0
        {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(fd);
        r
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn idle_before_close_is_the_silence_before_the_reset() {
    let mut t = Traced::start(&[
        "--json",
        "--show",
        "closes",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let addr = t.metrics_addr();
    let bucket = |text: &str, le: &str| {
        common::sample_of(
            text,
            &format!("tracer_tcp_idle_before_close_seconds_bucket{{le=\"{le}\",kind=\"reset\"}}"),
        )
    };
    let before = common::scrape(addr);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = l.local_addr().unwrap().port();
    let (mut c, mut s) = pair(&l);
    let cp = port(&c);
    c.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    s.write_all(b"y").unwrap();
    c.read_exact(&mut one).unwrap();
    // The server has the byte (and its ACK went out and came back on loopback at once): the
    // last segment either end received is older than this.
    std::thread::sleep(Duration::from_millis(20));
    let quiet_from = monotonic_ns();
    std::thread::sleep(Duration::from_secs(3));
    set_linger_zero(&c);
    drop(c);
    let rec = close_of(&mut t, lport, cp);
    assert_eq!(rec["kind"], "reset", "{rec}");
    let idle = rec["idle_before_close_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no idle_before_close_ns: {rec}"));
    let quiet = rec["ts_ns"].as_u64().unwrap() - quiet_from;
    // At most two ticks (10 ms each at 100 Hz) of stamp resolution, plus the 20 ms settle.
    assert!(
        idle + 20_000_000 >= quiet && idle <= quiet + 60_000_000,
        "idle {idle} ns, silence measured {quiet} ns: {rec}"
    );
    assert!(rec["last_send_before_close_ns"].as_u64().is_some(), "{rec}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = common::scrape(addr);
        let in_2_to_5 = |text: &str| bucket(text, "5.0") - bucket(text, "2.0");
        if in_2_to_5(&now) > in_2_to_5(&before) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the 3 s idle is not in the (2, 5] s bucket of kind=\"reset\":\n{}",
            now.lines()
                .filter(|l| l.contains("idle_before_close"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(s);
    let (code, _, err) = t.stop();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_recording_replays_with_its_reasons_and_idle_times() {
    let mut t = Traced::start(&["--json"]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = l.local_addr().unwrap().port();
    let (mut c, s) = pair(&l);
    let cp = port(&c);
    c.write_all(b"never read").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let live = close_of(&mut t, lport, cp);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let (code, values, err) = t.stop();
    assert_eq!(code, 0, "{err}");
    let recording: String = values.iter().map(|v| format!("{v}\n")).collect();
    assert!(
        recording.contains("\"type\":\"reset_sent\""),
        "the recording has no reset_sent line"
    );
    let path = std::env::temp_dir().join(format!("tracer-reasons-{}.jsonl", std::process::id()));
    std::fs::write(&path, &recording).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["replay", "--json"])
        .arg(&path)
        .output()
        .expect("running tracer replay");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{out:?}");
    let replayed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let again = replayed
        .iter()
        .find(|v| v["type"] == "close" && v["sport"] == lport && v["dport"] == cp)
        .unwrap_or_else(|| panic!("replay has no close record for {lport}->{cp}"));
    for field in [
        "kind",
        "reset_by",
        "rst_reason",
        "idle_before_close_ns",
        "last_send_before_close_ns",
        "lifetime_ns",
    ] {
        assert_eq!(
            again[field], live[field],
            "{field}: live {live}\nreplayed {again}"
        );
    }
    assert!(live["idle_before_close_ns"].as_u64().is_some(), "{live}");
}
