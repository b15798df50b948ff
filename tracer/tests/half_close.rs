//! Leak precision (issue 11): a CLOSE_WAIT socket whose owner keeps sending is not a leak.
//!
//! The client calls shutdown(SHUT_WR) and keeps reading; the server streams its answer for
//! longer than the threshold (1 s), then closes: no leak record, a passive close with
//! `leaked: false` and the whole CLOSE_WAIT dwell. The same server that stops sending but keeps
//! the socket open is reported once it has been idle for the threshold, with the idle time.
//! Needs root; fails, never skips, without it.
//!
//! Tier: root

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::Traced;

const THRESHOLD: Duration = Duration::from_secs(1);

/// A client that half-closes and reads until EOF, on its own thread; returns its local port.
fn half_closing_client(addr: std::net::SocketAddr) -> (u16, thread::JoinHandle<usize>) {
    let mut c = TcpStream::connect(addr).unwrap();
    let port = c.local_addr().unwrap().port();
    c.shutdown(Shutdown::Write).unwrap();
    let h = thread::spawn(move || {
        let mut total = 0;
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    (port, h)
}

/// Writes a chunk every 100 ms for `d`; returns when the last one was written.
fn stream_for(s: &mut TcpStream, d: Duration) -> Instant {
    let until = Instant::now() + d;
    let mut last = Instant::now();
    while Instant::now() < until {
        s.write_all(&[b'x'; 512]).unwrap();
        last = Instant::now();
        thread::sleep(Duration::from_millis(100));
    }
    last
}

/// Waits until the server end has seen the client's FIN (it is in CLOSE_WAIT).
fn wait_fin(s: &TcpStream) {
    s.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + common::WAIT;
    let mut b = [0u8; 1];
    loop {
        match (&*s).read(&mut b) {
            Ok(0) => break,
            Ok(_) => panic!("unexpected data"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "no FIN within 5 s");
        thread::sleep(Duration::from_millis(5));
    }
    s.set_nonblocking(false).unwrap();
}

#[test]
fn a_socket_its_owner_keeps_writing_to_is_not_a_leak() {
    let threshold = format!("{}ms", THRESHOLD.as_millis());
    let mut t = Traced::start(&[
        "--json",
        "--show",
        "closes,leaks",
        "--close-wait-threshold",
        &threshold,
    ]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = l.local_addr().unwrap().port();

    // 1. Streams for 2.5 thresholds after the client's FIN, then closes.
    let (cp, reader) = half_closing_client(l.local_addr().unwrap());
    let (mut s, _) = l.accept().unwrap();
    wait_fin(&s);
    let streaming = THRESHOLD * 5 / 2;
    stream_for(&mut s, streaming);
    drop(s);
    assert!(reader.join().unwrap() > 0);
    let close = t
        .wait_for(Duration::from_secs(10), |v| {
            v["type"] == "close" && v["sport"] == lport && v["dport"] == cp
        })
        .unwrap_or_else(|| panic!("no close record; stderr:\n{}", t.stderr()));
    assert_eq!(close["kind"], "passive", "{close}");
    assert_eq!(close["leaked"], false, "{close}");
    let cw = close["dwell_ns"]["CLOSE_WAIT"].as_u64().unwrap();
    assert!(
        cw >= streaming.as_nanos() as u64 && cw < (streaming + THRESHOLD).as_nanos() as u64,
        "CLOSE_WAIT dwell {cw} ns should be the streaming time {streaming:?}: {close}"
    );

    // 2. Streams for 1.5 thresholds, then keeps the socket open and silent: a leak once idle
    // for the threshold.
    let (cp2, reader2) = half_closing_client(l.local_addr().unwrap());
    let (mut s2, _) = l.accept().unwrap();
    wait_fin(&s2);
    let entered = Instant::now();
    let stopped = stream_for(&mut s2, THRESHOLD * 3 / 2);
    let leak = t
        .wait_for(THRESHOLD * 10, |v| {
            v["type"] == "close_wait_leak" && v["sport"] == lport && v["dport"] == cp2
        })
        .unwrap_or_else(|| panic!("no leak once idle; stderr:\n{}", t.stderr()));
    let reported = Instant::now();
    let idle = u128::from(leak["idle_ns"].as_u64().expect("idle_ns"));
    assert!(
        // tcp_info's stamps have one-jiffy resolution (the tracer allows 10 ms).
        idle + 10_000_000 >= THRESHOLD.as_nanos()
            && idle <= (reported - stopped).as_nanos() + 20_000_000,
        "idle {idle} ns: {leak}"
    );
    let age = u128::from(leak["age_ns"].as_u64().unwrap());
    assert!(
        age >= (stopped - entered + THRESHOLD).as_nanos() - 20_000_000,
        "the leak comes a threshold after the last send, not at the CLOSE_WAIT threshold: {leak}"
    );
    drop(s2);
    reader2.join().unwrap();
    let close2 = t
        .wait_for(Duration::from_secs(10), |v| {
            v["type"] == "close" && v["sport"] == lport && v["dport"] == cp2
        })
        .expect("close after the leak");
    assert_eq!(close2["leaked"], true, "{close2}");

    let (code, values, stderr) = t.stop();
    assert_eq!(code, 0, "{stderr}");
    let leaks_on_first = values
        .iter()
        .filter(|v| v["type"] == "close_wait_leak" && v["dport"] == cp && v["sport"] == lport)
        .count();
    assert_eq!(leaks_on_first, 0, "the streaming socket was reported");
    let leaks_on_second = values
        .iter()
        .filter(|v| v["type"] == "close_wait_leak" && v["dport"] == cp2 && v["sport"] == lport)
        .count();
    assert_eq!(leaks_on_second, 1);
}
