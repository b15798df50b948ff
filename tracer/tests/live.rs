//! Live tracing of real loopback connections (issue 2): exact transition sequences of the
//! client socket and of the accepted server socket, matched by this test's own ports.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{Traced, of_type, on_ports, states};

/// The transitions of one socket life: the kernel recycles socket addresses, so take the
/// events of `sk` from the birth at or before the anchor event (index into `values`) to the
/// first CLOSE after it.
fn life_of(values: &[serde_json::Value], sk: &str, anchor: usize) -> Vec<(String, String)> {
    let same = |v: &serde_json::Value| v["type"] == "transition" && v["sk"] == sk;
    let birth = |v: &serde_json::Value| {
        (v["old"] == "CLOSE" && v["new"] != "CLOSE")
            || (v["old"] == "LISTEN" && v["new"] == "SYN_RECV")
    };
    let start = (0..=anchor)
        .rev()
        .find(|&i| same(&values[i]) && birth(&values[i]))
        .expect("birth of the socket");
    let mut life = Vec::new();
    for v in values[start..].iter().filter(|v| same(v)) {
        life.push(states(v));
        if v["new"] == "CLOSE" {
            break;
        }
    }
    life
}

fn one_connection(bind: &str) -> (u16, u16, u16) {
    let listener = TcpListener::bind(bind).unwrap();
    let lport = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let cport = client.local_addr().unwrap().port();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Active close on the client, passive on the server. (shutdown() before close() would add
    // a FIN_WAIT1→FIN_WAIT1 self-transition when close() runs before the ACK arrives.)
    drop(client);
    assert_eq!(server.read(&mut buf).unwrap(), 0);
    drop(server);
    drop(listener);
    (lport, cport, lport)
}

fn check_family(bind: &str, family: u64) {
    let mut t = Traced::start(&["--json", "--show", "transitions"]);
    let (lport, cport, _) = one_connection(bind);
    // The listener's LISTEN→CLOSE is the last event of the scenario.
    let done = t.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "transition"
            && v["sport"] == lport
            && v["old"] == "LISTEN"
            && v["new"] == "CLOSE"
    });
    assert!(
        done.is_some(),
        "listener close not seen; stderr:\n{}",
        t.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (code, values, stderr) = t.stop();
    assert_eq!(code, 0, "stderr:\n{stderr}");

    let mine: Vec<_> = of_type(&values, "transition")
        .filter(|v| on_ports(v, lport, cport))
        .cloned()
        .collect();
    let client_at = values
        .iter()
        .position(|v| {
            v["type"] == "transition"
                && v["sport"] == cport
                && v["dport"] == lport
                && v["new"] == "ESTABLISHED"
        })
        .expect("client ESTABLISHED");
    let server_at = values
        .iter()
        .position(|v| {
            v["type"] == "transition"
                && v["sport"] == lport
                && v["dport"] == cport
                && v["old"] == "LISTEN"
                && v["new"] == "SYN_RECV"
        })
        .expect("server child LISTEN→SYN_RECV");
    let client_sk = values[client_at]["sk"].as_str().unwrap().to_owned();
    let server_sk = values[server_at]["sk"].as_str().unwrap().to_owned();
    let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    // The client's CLOSE→SYN_SENT has sport 0: it is matched by socket address, not by port.
    let client_all = life_of(&values, &client_sk, client_at);
    assert_eq!(
        client_all,
        vec![
            s("CLOSE", "SYN_SENT"),
            s("SYN_SENT", "ESTABLISHED"),
            s("ESTABLISHED", "FIN_WAIT1"),
            s("FIN_WAIT1", "FIN_WAIT2"),
            s("FIN_WAIT2", "CLOSE"),
        ],
        "client sequence"
    );
    assert_eq!(
        life_of(&values, &server_sk, server_at),
        vec![
            s("LISTEN", "SYN_RECV"),
            s("SYN_RECV", "ESTABLISHED"),
            s("ESTABLISHED", "CLOSE_WAIT"),
            s("CLOSE_WAIT", "LAST_ACK"),
            s("LAST_ACK", "CLOSE"),
        ],
        "server sequence"
    );
    // Every event on this connection's ports (the client's CLOSE→SYN_SENT has port 0).
    for v in &mine {
        assert_eq!(v["family"], family, "{v}");
        let first = v["old"] == "CLOSE" || v["old"] == "LISTEN";
        if first {
            assert!(
                v["dwell_ns"].is_null(),
                "first transition has no dwell: {v}"
            );
        } else {
            let d = v["dwell_ns"]
                .as_u64()
                .unwrap_or_else(|| panic!("dwell missing: {v}"));
            assert!(d > 0 && d < 5_000_000_000, "implausible dwell {d}: {v}");
        }
        assert!(
            v["task_pid"].as_u64().unwrap() > 0
                || v["task_comm"] == "swapper/0"
                || v["task_comm"].as_str().unwrap().starts_with("swapper")
        );
    }
    // The connection lived ≥20 ms in ESTABLISHED on the client.
    let est = mine
        .iter()
        .find(|v| v["sport"] == cport && v["old"] == "ESTABLISHED")
        .unwrap();
    assert!(est["dwell_ns"].as_u64().unwrap() >= 20_000_000, "{est}");
    // Addresses: loopback in the family's own form.
    let addr = mine[0]["saddr"].as_str().unwrap();
    let parsed: std::net::IpAddr = addr.parse().unwrap();
    assert!(parsed.is_loopback(), "{addr}");
    assert!(!stderr.contains("tracer: lost"), "events lost: {stderr}");
    assert!(stderr.contains(", 0 lost,"), "exit summary: {stderr}");
}

#[test]
fn traces_ipv4_connection_exactly() {
    check_family("127.0.0.1:0", 4);
}

#[test]
fn traces_ipv6_connection_exactly() {
    check_family("[::1]:0", 6);
}

#[test]
fn duration_stops_by_itself() {
    let t = Traced::start(&["--duration", "1s", "--json"]);
    let (code, _, stderr) = t.finish();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn text_mode_prints_a_readable_line() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["--duration", "2s", "--show", "transitions"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Ready when it says it is tracing (startup reads every namespace's sockets first).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("tracing TCP state changes") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("tracer did not start tracing within 30 s");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap());
    drop(l);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out.starts_with("TIME"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port}")) && l.contains("CLOSE -> LISTEN"))
        .unwrap_or_else(|| panic!("no listener line for port {port} in:\n{out}"));
    assert!(line.contains("CLOSE -> LISTEN"));
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        vec!["--duration", "ten"],
        vec!["--show", "bogus"],
        vec!["--metrics-addr", "nonsense"],
        vec!["--no-such-flag"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
