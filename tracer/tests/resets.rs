//! Who sent the RST (issue 11), on real loopback connections, with each kernel program
//! (`TRACER_ATTACH=tp_btf` and `tracepoint`): the socket's pending error (`sk_err`) at its
//! X→CLOSE, as the kernel program reads it, and the `kind`/`reset_by` the engine derives.
//!
//! - SO_LINGER {1,0} close: the closer `abort` (local, sk_err 0), the peer `reset` (peer,
//!   ECONNRESET);
//! - a CLOSE_WAIT socket closed with unread data: `abort` (local); its peer, in FIN_WAIT2,
//!   `reset` (peer, ECONNRESET);
//! - a CLOSE_WAIT socket whose peer then resets: `reset` (peer, EPIPE);
//! - a refused connect: `connect_failed`, reset by the peer (ECONNREFUSED);
//! - a listener closed with connections it never accepted: `abort` for each child, owned by
//!   the listener's owner; their clients `reset` (peer).
//!
//! Needs root; fails, never skips, without it.
//!
//! Tier: root

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::Traced;
use common::sockets::set_linger_zero;
use serde_json::Value;

fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

fn port(s: &TcpStream) -> u16 {
    s.local_addr().unwrap().port()
}

/// Waits until `s` reads as readable (the peer's FIN or data has arrived), with a deadline.
fn wait_readable(s: &TcpStream) {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 5000) };
    assert_eq!(n, 1, "socket not readable within 5 s");
}

/// The close record of the socket whose local port is `local` and remote port `remote`.
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

/// The X→CLOSE transition of the same socket.
fn closing_transition(t: &mut Traced, local: u16, remote: u16) -> Value {
    t.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "transition"
            && v["new"] == "CLOSE"
            && v["sport"] == local
            && v["dport"] == remote
    })
    .unwrap_or_else(|| panic!("no X->CLOSE transition for {local}->{remote}"))
}

#[track_caller]
fn expect(t: &mut Traced, local: u16, remote: u16, kind: &str, by: Option<&str>, err: u64) {
    let tr = closing_transition(t, local, remote);
    assert_eq!(tr["sk_err"], err, "sk_err of {tr}");
    assert_ne!(tr["netns"], 0, "namespace read, so sk_err is known: {tr}");
    let c = close_of(t, local, remote);
    assert_eq!(c["kind"], kind, "{c}");
    match by {
        Some(b) => assert_eq!(c["reset_by"], b, "{c}"),
        None => assert!(c["reset_by"].is_null(), "{c}"),
    }
    assert_eq!(c["sk_err"], err, "{c}");
    assert_eq!(c["time_wait"], false, "{c}");
}

fn resets_with(mode: &str) {
    let mut t = Traced::start_env(
        &["--json", "--show", "transitions,closes"],
        &[("TRACER_ATTACH", mode)],
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = l.local_addr().unwrap().port();
    let me = std::process::id();

    // SO_LINGER {1,0}: the client sends RST.
    let (c, mut s) = pair(&l);
    let cp = port(&c);
    set_linger_zero(&c);
    drop(c);
    wait_readable(&s);
    let _ = s.read(&mut [0u8; 4]);
    expect(&mut t, cp, lport, "abort", Some("local"), 0);
    expect(&mut t, lport, cp, "reset", Some("peer"), 104);
    drop(s);

    // The server closes a CLOSE_WAIT socket with unread data: RST instead of FIN.
    let (mut c, s) = pair(&l);
    let cp = port(&c);
    c.write_all(b"unread").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    wait_readable(&s);
    drop(s);
    expect(&mut t, lport, cp, "abort", Some("local"), 0);
    // The client is in FIN_WAIT2 if the server's ACK of its FIN came before the RST, else
    // still in FIN_WAIT1, where ECONNRESET does not say whose RST it was (an orphaned socket
    // that receives data resets the connection itself, with the same error).
    let tr = closing_transition(&mut t, cp, lport);
    let by = if tr["old"] == "FIN_WAIT2" {
        Some("peer")
    } else {
        assert_eq!(tr["old"], "FIN_WAIT1", "{tr}");
        None
    };
    expect(&mut t, cp, lport, "reset", by, 104);
    drop(c);

    // A CLOSE_WAIT socket (nothing unread) whose peer then resets.
    let (c, s) = pair(&l);
    let cp = port(&c);
    c.shutdown(Shutdown::Write).unwrap();
    wait_readable(&s);
    set_linger_zero(&c);
    drop(c);
    expect(&mut t, lport, cp, "reset", Some("peer"), 32);
    drop(s);

    // A refused connect.
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = gone.local_addr().unwrap().port();
    drop(gone);
    TcpStream::connect(("127.0.0.1", refused)).unwrap_err();
    let c = t
        .wait_for(Duration::from_secs(10), |v| {
            v["type"] == "close" && v["dport"] == refused
        })
        .expect("refused connect's close");
    assert_eq!(
        (&c["kind"], &c["reset_by"], &c["sk_err"]),
        (&"connect_failed".into(), &"peer".into(), &111.into()),
        "{c}"
    );

    // A listener closed with three connections it never accepted.
    let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l2port = l2.local_addr().unwrap().port();
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", l2port)).unwrap())
        .collect();
    let ports: Vec<u16> = clients.iter().map(port).collect();
    // The children exist (ESTABLISHED) before the listener goes.
    let n = t.wait_for_n(Duration::from_secs(10), 3, |v| {
        v["type"] == "transition"
            && v["new"] == "ESTABLISHED"
            && v["sport"] == l2port
            && ports.iter().any(|p| v["dport"] == *p)
    });
    assert_eq!(n, 3);
    drop(l2);
    for &p in &ports {
        let child = close_of(&mut t, l2port, p);
        assert_eq!(
            (&child["kind"], &child["reset_by"], &child["sk_err"]),
            (&"abort".into(), &"local".into(), &0.into()),
            "{child}"
        );
        assert_eq!(child["pid"], me, "owned by the listener's owner: {child}");
        assert_eq!(child["owner_source"], "listener", "{child}");
        expect(&mut t, p, l2port, "reset", Some("peer"), 104);
    }
    drop(clients);
    let (code, _, stderr) = t.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn resets_by_side_tp_btf() {
    resets_with("tp_btf");
}

#[test]
fn resets_by_side_classic_tracepoint() {
    resets_with("tracepoint");
}
