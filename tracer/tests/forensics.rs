//! Tier: root
//!
//! Leak forensics on real sockets: a leak record names the fd `ss -p` shows for the socket and
//! the bytes the client sent that the server never read; a socket that was never accepted is
//! reported as such (`accepted: false`, no owner) with its listener's queue against its backlog.

mod common;

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::time::Duration;

use common::{Traced, WAIT};
use serde_json::Value;

/// `users:(("comm",pid=N,fd=M))` of the CLOSE_WAIT socket from local port `port` to `peer`.
fn ss_fd(port: u16, peer: u16) -> Option<(u32, u32)> {
    let out = Command::new("ss")
        .args([
            "-Htnp",
            "state",
            "close-wait",
            "sport",
            "=",
            &format!(":{port}"),
            "dport",
            "=",
            &format!(":{peer}"),
        ])
        .output()
        .expect("running ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let users = text.split("users:((").nth(1)?;
    let field = |k: &str| {
        users
            .split(k)
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<u32>()
            .ok()
    };
    Some((field("pid=")?, field("fd=")?))
}

/// The tests of this binary hold CLOSE_WAIT sockets of this process, which the per-process
/// gauge counts: they run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn leak_for(t: &mut Traced, port: u16, peer: u16) -> Value {
    t.wait_for(WAIT, |v| {
        v["type"] == "close_wait_leak"
            && v["sport"].as_u64() == Some(u64::from(port))
            && v["dport"].as_u64() == Some(u64::from(peer))
    })
    .unwrap_or_else(|| panic!("no leak record for :{port} ← :{peer}\n{}", t.stderr()))
}

#[test]
fn a_leak_names_its_fd_and_the_bytes_never_read() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut t = Traced::start(&["--json", "--show", "leaks", "--close-wait-threshold", "2s"]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let peer = c.local_addr().unwrap().port();
    let (s, _) = l.accept().unwrap();
    let request = b"GET /never-read HTTP/1.1\r\n\r\n";
    c.write_all(request).unwrap();
    drop(c);
    let v = leak_for(&mut t, port, peer);
    let (pid, fd) = ss_fd(port, peer).expect("ss shows the socket's holder");
    assert_eq!(pid, std::process::id());
    assert_eq!(fd, s.as_raw_fd() as u32, "ss and this process agree");
    assert_eq!(v["pid"].as_u64(), Some(u64::from(pid)), "{v}");
    assert_eq!(v["fds"], serde_json::json!([fd]), "{v}");
    assert_eq!(
        v["unread_bytes"].as_u64(),
        Some(request.len() as u64),
        "{v}"
    );
    assert_eq!(v["unsent_bytes"].as_u64(), Some(0), "{v}");
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!(v["listener"], Value::Null, "{v}");
    drop(s);
    let (code, _, stderr) = t.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_socket_never_accepted_is_reported_with_its_listener() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut t = Traced::start(&[
        "--json",
        "--show",
        "leaks",
        "--close-wait-threshold",
        "2s",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let addr = t.metrics_addr();
    // A listener whose process never calls accept(): its backlog is 7.
    let l = socket2_listener(7);
    let port = l.local_addr().unwrap().port();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"hello").unwrap();
        clients.push(c.local_addr().unwrap().port());
        drop(c);
    }
    for &peer in &clients {
        let v = leak_for(&mut t, port, peer);
        assert_eq!(v["accepted"], false, "{v}");
        assert_eq!(v["pid"], Value::Null, "nobody holds it: {v}");
        assert_eq!(v["fds"], serde_json::json!([]), "{v}");
        assert_eq!(v["unread_bytes"].as_u64(), Some(5), "{v}");
        let li = &v["listener"];
        assert_eq!(
            li["pid"].as_u64(),
            Some(u64::from(std::process::id())),
            "{v}"
        );
        assert_eq!(li["local"], format!("127.0.0.1:{port}"), "{v}");
        assert_eq!(li["backlog"].as_u64(), Some(7), "{v}");
        assert_eq!(li["accept_queue"].as_u64(), Some(3), "{v}");
        assert!(ss_fd(port, peer).is_none(), "ss shows no holder either");
    }
    // No process is named for them.
    let text = common::http_request(addr, "GET", "/metrics", &[], WAIT)
        .expect("scrape")
        .body;
    let me = format!(
        "tracer_tcp_close_wait_sockets{{pid=\"{}\"",
        std::process::id()
    );
    assert!(
        !text.lines().any(|l| l.starts_with(&me)),
        "never-accepted sockets given to the listener's process:\n{text}"
    );
    // Accepted now, and kept: ordinary sockets of this process.
    let kept: Vec<TcpStream> = (0..3).map(|_| l.accept().unwrap().0).collect();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = common::http_request(addr, "GET", "/metrics", &[], WAIT)
            .expect("scrape")
            .body;
        let n: f64 = text
            .lines()
            .filter(|l| l.starts_with(&me))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        if n as usize == kept.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "accepted sockets never given to this process"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(kept);
    let (code, _, stderr) = t.stop();
    assert_eq!(code, 0, "{stderr}");
}

/// A listening socket with backlog `n` (std's `TcpListener::bind` uses 128).
fn socket2_listener(n: i32) -> TcpListener {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket(2)/bind(2)/listen(2) on a new fd that the TcpListener then owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let rc = libc::bind(
            fd,
            (&raw const sa).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(
            libc::listen(fd, n),
            0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
        TcpListener::from_raw_fd(fd)
    }
}
