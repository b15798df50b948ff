//! Who holds a leaking socket (issue 4): `--pid`, owners of CLOSE_WAIT leaks with and without
//! it, sockets already stuck at startup, the end of the followed process, the text leak line,
//! and the close records of leaked sockets.
//!
//! The leaking servers are `tests/fixtures/leaky.py` processes with their own comm; their
//! clients are this test process or another fixture. Records are matched by the fixtures' ports
//! and pids only: other traffic on the machine is ignored.
//!
//! Tier: root

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Fixture, Traced, WAIT, connect_clients, of_type, run_tracer};

const SECOND_NS: u64 = 1_000_000_000;

fn port_of(v: &Value, key: &str) -> u16 {
    v[key].as_u64().unwrap_or(0) as u16
}

fn local_ports(clients: &[std::net::TcpStream]) -> HashSet<u16> {
    clients
        .iter()
        .map(|c| c.local_addr().unwrap().port())
        .collect()
}

/// Leak records of sockets whose local port is `port` (the accepted ends of its listener).
fn leaks_on(values: &[Value], port: u16) -> Vec<&Value> {
    of_type(values, "close_wait_leak")
        .filter(|v| port_of(v, "sport") == port)
        .collect()
}

fn is_leak_on(v: &Value, port: u16) -> bool {
    v["type"] == "close_wait_leak" && port_of(v, "sport") == port
}

/// Asserts a leak record names `server` (pid and comm) as the holder, with its command line.
fn assert_owner(v: &Value, server: &Fixture, comm: &str) {
    assert_eq!(v["pid"], server.pid, "owner pid: {v}");
    assert_eq!(v["comm"], comm, "owner comm: {v}");
    let cmdline = v["cmdline"]
        .as_str()
        .unwrap_or_else(|| panic!("cmdline: {v}"));
    assert!(
        cmdline.contains("leaky.py serve") && cmdline.contains(comm),
        "cmdline {cmdline:?}: {v}"
    );
    let source = v["owner_source"].as_str().unwrap_or_default();
    assert!(
        ["inode", "context", "listener", "shared"].contains(&source),
        "owner_source: {v}"
    );
}

/// Test 1: `--pid` keeps exactly the followed server's leaks, one per socket, and nothing of a
/// decoy leaking at the same time.
#[test]
fn pid_follows_only_the_leaking_server() {
    const N: usize = 5;
    let mut server = Fixture::serve("leaky-srv1", &[]);
    let mut decoy = Fixture::serve("decoy-srv1", &[]);
    let mut t = Traced::start(&[
        "--pid",
        &server.pid.to_string(),
        "--json",
        "--close-wait-threshold",
        "1s",
    ]);

    // At the same time: this process connects N clients to the server and 3 to the decoy, and
    // the decoy leaks 3 connections of its own.
    let clients = connect_clients(server.port, N);
    let decoy_clients = connect_clients(decoy.port, 3);
    decoy.send("self 3");
    server.send(&format!("wait {N}"));
    server.expect(&format!("have {N}"), WAIT);
    decoy.send("wait 6");
    decoy.expect("have 6", WAIT);
    decoy.expect("self-closed 3", WAIT);
    let client_ports = local_ports(&clients);
    drop(clients);
    drop(decoy_clients);

    let got = t.wait_for_n(WAIT, N, |v| is_leak_on(v, server.port));
    assert_eq!(got, N, "server leaks; stderr:\n{}", t.stderr());
    // The decoy's sockets crossed the threshold at the same time: give a wrongly kept record
    // time to show.
    std::thread::sleep(Duration::from_millis(700));
    let (code, values, stderr) = t.terminate();
    assert_eq!(code, 0, "stderr:\n{stderr}");

    let leaks = leaks_on(&values, server.port);
    assert_eq!(leaks.len(), N, "one leak record per socket: {leaks:#?}");
    let sks: HashSet<&str> = leaks.iter().map(|v| v["sk"].as_str().unwrap()).collect();
    assert_eq!(sks.len(), N, "distinct sockets: {leaks:#?}");
    let peers: HashSet<u16> = leaks.iter().map(|v| port_of(v, "dport")).collect();
    assert_eq!(peers, client_ports, "the leaks are the N accepted sockets");
    for v in &leaks {
        assert_owner(v, &server, "leaky-srv1");
        assert_eq!(v["age_source"], "traced", "{v}");
        assert!(v["age_ns"].as_u64().unwrap() >= SECOND_NS, "{v}");
        assert_eq!(v["close_wait_held"], N, "{v}");
    }
    for v in of_type(&values, "close_wait_leak") {
        assert_eq!(
            v["pid"], server.pid,
            "--pid keeps only the server's leaks: {v}"
        );
        assert_eq!(v["comm"], "leaky-srv1", "{v}");
    }
    for v in values.iter().filter(|v| v["type"] != "summary") {
        assert_eq!(
            v["pid"], server.pid,
            "--pid keeps only records the server owns: {v}"
        );
        assert_ne!(v["task_pid"], decoy.pid, "decoy task in a record: {v}");
        // Every connection of the decoy has its listener's port at one end.
        assert!(
            port_of(v, "sport") != decoy.port && port_of(v, "dport") != decoy.port,
            "a record of the decoy's connections: {v}"
        );
    }
    assert!(
        values.last().is_some_and(|v| v["type"] == "summary"),
        "summary last"
    );
}

/// Test 2: sockets already in CLOSE_WAIT when the tracer starts are reported from the startup
/// baseline, with their holder and an estimated age.
#[test]
fn pre_existing_close_wait_sockets_are_reported_with_estimated_age() {
    const N: usize = 5;
    let mut server = Fixture::serve("leaky-pre2", &[]);
    let clients = connect_clients(server.port, N);
    server.send(&format!("wait {N}"));
    server.expect(&format!("have {N}"), WAIT);
    let client_ports = local_ports(&clients);
    drop(clients);
    let closed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));

    // Two tracers, one following the server, one the whole host.
    let waited = closed_at.elapsed();
    let pid = server.pid.to_string();
    let followed = Traced::start(&["--pid", &pid, "--json", "--close-wait-threshold", "1s"]);
    let host = Traced::start(&["--json", "--close-wait-threshold", "1s", "--show", "leaks"]);
    for (what, mut t) in [("--pid", followed), ("host-wide", host)] {
        let got = t.wait_for_n(WAIT, N, |v| is_leak_on(v, server.port));
        let read_at = closed_at.elapsed();
        assert_eq!(
            got,
            N,
            "{what}: pre-existing leaks; stderr:\n{}",
            t.stderr()
        );
        let (code, values, stderr) = t.terminate();
        assert_eq!(code, 0, "{what}: stderr:\n{stderr}");

        let leaks = leaks_on(&values, server.port);
        assert_eq!(leaks.len(), N, "{what}: {leaks:#?}");
        let peers: HashSet<u16> = leaks.iter().map(|v| port_of(v, "dport")).collect();
        assert_eq!(peers, client_ports, "{what}");
        // The estimate comes from the kernel's ms clock of the last ACK received (jiffies).
        let tolerance = Duration::from_millis(250);
        for v in &leaks {
            assert_owner(v, &server, "leaky-pre2");
            assert_eq!(v["age_source"], "estimate", "{what}: {v}");
            let age = Duration::from_nanos(v["age_ns"].as_u64().unwrap());
            assert!(
                age + tolerance >= waited,
                "{what}: age {age:?} < the {waited:?} the socket had waited before the tracer started: {v}"
            );
            assert!(
                age <= read_at + tolerance,
                "{what}: age {age:?} > the {read_at:?} since the peers closed: {v}"
            );
            assert_eq!(v["close_wait_held"], N, "{what}: {v}");
        }
    }
}

/// Connections that were ESTABLISHED before the tracer started and reach CLOSE_WAIT after it
/// did (the peer closes later): `--pid` still follows them, on the accepting side and on the
/// connecting side, and names the process from the startup baseline.
#[test]
fn pre_existing_established_connections_that_leak_later() {
    let mut proc = Fixture::serve("leaky-est9", &[]);
    // Accepted by the fixture: this process is the client.
    let inbound = connect_clients(proc.port, 2);
    proc.send("wait 2");
    proc.expect("have 2", WAIT);
    let inbound_ports = local_ports(&inbound);
    // Connected by the fixture: this process is the server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    proc.send(&format!("connect {lport} 2"));
    let outbound_ports: HashSet<u16> = proc
        .expect("connected", WAIT)
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let accepted: Vec<_> = (0..2).map(|_| listener.accept().unwrap().0).collect();

    let mut t = Traced::start(&[
        "--pid",
        &proc.pid.to_string(),
        "--json",
        "--close-wait-threshold",
        "1s",
    ]);
    // Now the peers close.
    drop(inbound);
    drop(accepted);
    let mine = |v: &Value| {
        v["type"] == "close_wait_leak"
            && (port_of(v, "sport") == proc.port || port_of(v, "dport") == lport)
    };
    let got = t.wait_for_n(WAIT, 4, mine);
    assert_eq!(got, 4, "stderr:\n{}", t.stderr());
    let (code, values, stderr) = t.terminate();
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let leaks: Vec<_> = values.iter().filter(|v| mine(v)).collect();
    assert_eq!(leaks.len(), 4, "{leaks:#?}");
    let inbound_seen: HashSet<u16> = leaks
        .iter()
        .filter(|v| port_of(v, "sport") == proc.port)
        .map(|v| port_of(v, "dport"))
        .collect();
    assert_eq!(inbound_seen, inbound_ports);
    let outbound_seen: HashSet<u16> = leaks
        .iter()
        .filter(|v| port_of(v, "dport") == lport)
        .map(|v| port_of(v, "sport"))
        .collect();
    assert_eq!(outbound_seen, outbound_ports);
    for v in &leaks {
        assert_owner(v, &proc, "leaky-est9");
        // The ESTABLISHED→CLOSE_WAIT transition was traced: the age is measured.
        assert_eq!(v["age_source"], "traced", "{v}");
        assert_eq!(v["close_wait_held"], 4, "{v}");
    }
    // Their transitions to CLOSE_WAIT were kept (owner known from the baseline).
    let to_close_wait = of_type(&values, "transition")
        .filter(|v| {
            v["old"] == "ESTABLISHED"
                && v["new"] == "CLOSE_WAIT"
                && (port_of(v, "sport") == proc.port || port_of(v, "dport") == lport)
        })
        .count();
    assert_eq!(to_close_wait, 4);
}

/// Test 3: without `--pid`, each leak names its own holder: not the peer that closed, not this
/// test process, not a softirq or idle task.
#[test]
fn each_leak_names_its_holder_without_pid() {
    const N: usize = 3;
    let mut server = Fixture::serve("leaky-srv3", &[]);
    let mut decoy = Fixture::serve("decoy-srv3", &[]);
    // The decoy's clients belong to a third process.
    let mut peer = Fixture::serve("peer-cli3", &[]);
    let mut t = Traced::start(&["--json", "--close-wait-threshold", "1s", "--show", "leaks"]);

    let clients = connect_clients(server.port, N);
    peer.send(&format!("connect {} {N}", decoy.port));
    let connected = peer.expect("connected", WAIT);
    let peer_ports: HashSet<u16> = connected
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    server.send(&format!("wait {N}"));
    server.expect(&format!("have {N}"), WAIT);
    decoy.send(&format!("wait {N}"));
    decoy.expect(&format!("have {N}"), WAIT);
    let client_ports = local_ports(&clients);
    drop(clients);
    peer.send("drop");
    peer.expect("dropped", WAIT);

    let got = t.wait_for_n(WAIT, 2 * N, |v| {
        is_leak_on(v, server.port) || is_leak_on(v, decoy.port)
    });
    assert_eq!(got, 2 * N, "leaks of both; stderr:\n{}", t.stderr());
    let (code, values, stderr) = t.terminate();
    assert_eq!(code, 0, "stderr:\n{stderr}");

    let me = std::process::id();
    for (holder, comm, peers) in [
        (&server, "leaky-srv3", &client_ports),
        (&decoy, "decoy-srv3", &peer_ports),
    ] {
        let leaks = leaks_on(&values, holder.port);
        assert_eq!(leaks.len(), N, "{comm}: {leaks:#?}");
        let got_peers: HashSet<u16> = leaks.iter().map(|v| port_of(v, "dport")).collect();
        assert_eq!(&got_peers, peers, "{comm}");
        for v in leaks {
            assert_owner(v, holder, comm);
            assert_ne!(
                v["pid"], me,
                "the test process is the peer, not the holder: {v}"
            );
            assert_ne!(v["pid"], peer.pid, "the peer is not the holder: {v}");
            assert_ne!(v["pid"], 0, "{v}");
            assert_eq!(v["close_wait_held"], N, "{v}");
        }
    }
    // The clients' ends never leak (they closed): no leak record on the clients' side of our
    // listeners.
    for v in of_type(&values, "close_wait_leak") {
        let dp = port_of(v, "dport");
        assert!(
            dp != server.port && dp != decoy.port && dp != peer.port,
            "a client end reported as a leak: {v}"
        );
    }
}

/// Test 4a: the followed process exits (and is reaped): the tracer prints its summary and exits
/// 0 by itself. What the process held is closed by the kernel and reported as its own.
#[test]
fn tracer_exits_when_the_followed_process_exits() {
    let mut server = Fixture::serve("leaky-exit4", &[]);
    let mut t = Traced::start(&[
        "--pid",
        &server.pid.to_string(),
        "--json",
        "--close-wait-threshold",
        "300ms",
    ]);
    let clients = connect_clients(server.port, 2);
    server.send("wait 2");
    server.expect("have 2", WAIT);
    drop(clients);
    assert_eq!(
        t.wait_for_n(WAIT, 2, |v| is_leak_on(v, server.port)),
        2,
        "stderr:\n{}",
        t.stderr()
    );

    server.close_stdin();
    assert_eq!(server.wait_exit(WAIT), Some(0));
    let exited = Instant::now();
    // It ends on its own (finish() fails at WAIT), and says why: the followed process exited.
    let (code, values, stderr) = t.finish();
    eprintln!("the tracer ended {:?} after the process", exited.elapsed());
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("process {} exited", server.pid)),
        "{stderr}"
    );
    let last = values.last().expect("output");
    assert_eq!(last["type"], "summary", "summary last: {last}");
    assert_eq!(of_type(&values, "summary").count(), 1);
    // The kernel closed the two CLOSE_WAIT sockets for the exiting server.
    let closes: Vec<_> = of_type(&values, "close")
        .filter(|v| port_of(v, "sport") == server.port && v["role"] == "server")
        .collect();
    assert_eq!(closes.len(), 2, "closes at exit: {closes:#?}");
    for c in closes {
        assert_eq!(c["kind"], "passive", "{c}");
        assert_eq!(c["leaked"], true, "{c}");
        assert_eq!(c["pid"], server.pid, "{c}");
    }
}

/// Test 4b: the followed process exits but its parent has not reaped it yet (a zombie holds no
/// sockets and runs no code): the tracer must still end.
#[test]
fn tracer_exits_when_the_followed_process_is_a_zombie() {
    let mut server = Fixture::serve("leaky-zomb4", &[]);
    let t = Traced::start(&["--pid", &server.pid.to_string(), "--json"]);
    server.close_stdin();
    let deadline = Instant::now() + WAIT;
    while !server.has_ended() {
        assert!(Instant::now() < deadline, "the fixture did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Not reaped: /proc/PID stays until the test reaps it (when `server` is dropped).
    let mut t = t;
    let deadline = Instant::now() + WAIT;
    while !t.has_exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ended = t.has_exited();
    let (code, values, stderr) = if ended { t.finish() } else { t.terminate() };
    assert!(
        ended,
        "tracer --pid {} still running 5 s after the process exited (zombie, not yet reaped); \
         stderr:\n{stderr}",
        server.pid
    );
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert!(values.last().is_some_and(|v| v["type"] == "summary"));
}

/// Test 4c: a pid that does not exist is a one-line error naming it, not a panic.
#[test]
fn missing_pid_is_a_one_line_error() {
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} was reused"
    );
    // Refused before anything is loaded: one line, no "tracing" line (how long that takes
    // depends on the machine, so it is not timed).
    let (code, stdout, stderr, _) = run_tracer(&["--pid", &pid.to_string(), "--json"], WAIT);
    assert_ne!(code, 0, "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(
        lines[0].contains(&pid.to_string()),
        "names the pid: {stderr:?}"
    );
    assert!(lines[0].starts_with("tracer: error:"), "{stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("tracing TCP state changes"),
        "checked before tracing: {stderr}"
    );
    assert!(stdout.is_empty(), "{stdout:?}");
}

/// Parses a `Dur` as printed in the table (`1.00s`, `950.3ms`, `12.5µs`, `2m03s`…) into
/// seconds; `None` if it is not one.
fn parse_text_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some((m, rest)) = s.split_once('m')
        && let Some(sec) = rest.strip_suffix('s')
        && !rest.is_empty()
        && !rest.starts_with('s')
    {
        return Some(m.parse::<f64>().ok()? * 60.0 + sec.parse::<f64>().ok()?);
    }
    for (unit, scale) in [
        ("ns", 1e-9),
        ("µs", 1e-6),
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
    ] {
        if let Some(n) = s.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|v| v * scale);
        }
    }
    None
}

/// Test 5: the text leak line says who (pid, comm, command line), which socket (local and
/// remote end), for how long, and how many CLOSE_WAIT sockets the holder has.
#[test]
fn text_leak_line_names_everything() {
    let mut server = Fixture::serve("leaky-txt5", &[]);
    let mut t = Traced::start(&[
        "--pid",
        &server.pid.to_string(),
        "--close-wait-threshold",
        "1s",
    ]);
    let clients = connect_clients(server.port, 2);
    server.send("wait 2");
    server.expect("have 2", WAIT);
    let client_ports = local_ports(&clients);
    drop(clients);
    let local = format!("127.0.0.1:{}", server.port);
    let line = t
        .wait_for_line(WAIT, |l| l.contains("LEAK") && l.contains(&local))
        .unwrap_or_else(|| panic!("no LEAK line; stderr:\n{}", t.stderr()));
    let (code, lines, stderr) = t.signal_and_finish_raw(libc::SIGTERM);
    assert_eq!(code, 0, "stderr:\n{stderr}");

    assert!(line.contains(&format!("pid {}", server.pid)), "pid: {line}");
    assert!(line.contains("(leaky-txt5)"), "comm: {line}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid)).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        line.contains(cmdline.trim()),
        "command line {cmdline:?}: {line}"
    );
    assert!(
        line.contains(&format!("local {local}")),
        "local end: {line}"
    );
    let peer = client_ports
        .iter()
        .find(|p| line.contains(&format!("peer 127.0.0.1:{p}")));
    assert!(
        peer.is_some(),
        "remote end (one of {client_ports:?}): {line}"
    );
    let age = line
        .split_once("CLOSE_WAIT for ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(parse_text_duration)
        .unwrap_or_else(|| panic!("age: {line}"));
    assert!((1.0..10.0).contains(&age), "age {age} s: {line}");
    assert!(
        line.contains("holds 2 CLOSE_WAIT sockets"),
        "held count: {line}"
    );
    // Both leaks, one line each.
    let leak_lines = lines
        .iter()
        .filter(|l| l.contains("LEAK") && l.contains(&local))
        .count();
    assert_eq!(leak_lines, 2, "{lines:#?}");
}

/// Test 6: when the server finally closes its leaked sockets, their close records say how
/// (`passive` after FIN, `abort` when the peer's data was never read), that they leaked, the
/// whole time in CLOSE_WAIT, and the server as owner.
#[test]
fn close_records_of_leaked_sockets() {
    let mut server = Fixture::serve("leaky-cls6", &[]);
    let mut t = Traced::start(&[
        "--pid",
        &server.pid.to_string(),
        "--json",
        "--close-wait-threshold",
        "1s",
    ]);
    let silent = connect_clients(server.port, 2);
    let mut talkers = connect_clients(server.port, 2);
    for c in &mut talkers {
        c.write_all(b"never read").unwrap();
    }
    server.send("wait 4");
    server.expect("have 4", WAIT);
    let silent_ports = local_ports(&silent);
    let talker_ports = local_ports(&talkers);
    drop(silent);
    drop(talkers);
    assert_eq!(
        t.wait_for_n(WAIT, 4, |v| is_leak_on(v, server.port)),
        4,
        "stderr:\n{}",
        t.stderr()
    );
    server.send("close");
    server.expect("closed 4", WAIT);
    let got = t.wait_for_n(WAIT, 4, |v| {
        v["type"] == "close" && port_of(v, "sport") == server.port && v["role"] == "server"
    });
    assert_eq!(got, 4, "stderr:\n{}", t.stderr());
    let (code, values, stderr) = t.terminate();
    assert_eq!(code, 0, "stderr:\n{stderr}");

    let leak_age = |sk: &str| {
        leaks_on(&values, server.port)
            .into_iter()
            .find(|v| v["sk"] == sk)
            .and_then(|v| v["age_ns"].as_u64())
            .unwrap_or_else(|| panic!("no leak record for {sk}"))
    };
    let closes: Vec<_> = of_type(&values, "close")
        .filter(|v| port_of(v, "sport") == server.port && v["role"] == "server")
        .collect();
    assert_eq!(closes.len(), 4, "{closes:#?}");
    for c in closes {
        let peer = port_of(c, "dport");
        let expected = if silent_ports.contains(&peer) {
            "passive"
        } else {
            assert!(talker_ports.contains(&peer), "{c}");
            "abort"
        };
        assert_eq!(c["kind"], expected, "{c}");
        assert_eq!(c["leaked"], true, "{c}");
        assert_eq!(c["pid"], server.pid, "{c}");
        assert_eq!(c["comm"], "leaky-cls6", "{c}");
        let dwell = c["dwell_ns"]["CLOSE_WAIT"]
            .as_u64()
            .unwrap_or_else(|| panic!("CLOSE_WAIT dwell: {c}"));
        assert!(dwell >= SECOND_NS, "CLOSE_WAIT {dwell} ns < threshold: {c}");
        let age = leak_age(c["sk"].as_str().unwrap());
        assert!(
            dwell >= age,
            "whole CLOSE_WAIT {dwell} < age at the leak {age}: {c}"
        );
        let states: Vec<&str> = c["states"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let tail: &[&str] = if expected == "passive" {
            &["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]
        } else {
            &["ESTABLISHED", "CLOSE_WAIT", "CLOSE"]
        };
        assert!(states.ends_with(tail), "states {states:?}: {c}");
    }
}

/// `--pid` also follows a listener the process opens after the tracer started, and the
/// connections it accepts there.
#[test]
fn pid_follows_a_listener_opened_after_start() {
    const N: usize = 3;
    let mut server = Fixture::serve("leaky-late7", &[]);
    let mut t = Traced::start(&[
        "--pid",
        &server.pid.to_string(),
        "--json",
        "--close-wait-threshold",
        "1s",
    ]);
    server.send("listen");
    let late: u16 = server
        .expect("listening ", WAIT)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let clients = connect_clients(late, N);
    server.send(&format!("wait {N}"));
    server.expect(&format!("have {N}"), WAIT);
    let client_ports = local_ports(&clients);
    drop(clients);
    let got = t.wait_for_n(WAIT, N, |v| is_leak_on(v, late));
    assert_eq!(
        got,
        N,
        "leaks on the late listener; stderr:\n{}",
        t.stderr()
    );
    let (code, values, stderr) = t.terminate();
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let leaks = leaks_on(&values, late);
    assert_eq!(leaks.len(), N, "{leaks:#?}");
    let peers: HashSet<u16> = leaks.iter().map(|v| port_of(v, "dport")).collect();
    assert_eq!(peers, client_ports);
    for v in leaks {
        assert_owner(v, &server, "leaky-late7");
    }
    // The listener itself was seen being opened, in the server's own context.
    assert!(
        of_type(&values, "transition").any(|v| port_of(v, "sport") == late
            && v["old"] == "CLOSE"
            && v["new"] == "LISTEN"
            && v["pid"] == server.pid),
        "CLOSE→LISTEN of the late listener"
    );
}

/// `--pid` follows the process's outgoing connections too: when the remote server closes them
/// and the process does not, the leak is the process's (not the closing server's, which is
/// this test).
#[test]
fn pid_follows_outgoing_connections_the_peer_closed() {
    const N: usize = 2;
    let mut client = Fixture::serve("leaky-out8", &[]);
    let mut t = Traced::start(&[
        "--pid",
        &client.pid.to_string(),
        "--json",
        "--close-wait-threshold",
        "1s",
    ]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    client.send(&format!("connect {lport} {N}"));
    let out_ports: HashSet<u16> = client
        .expect("connected", WAIT)
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(out_ports.len(), N);
    for _ in 0..N {
        let (accepted, _) = listener.accept().unwrap();
        drop(accepted); // this side closes first: the fixture's end goes to CLOSE_WAIT
    }
    let got = t.wait_for_n(WAIT, N, |v| {
        v["type"] == "close_wait_leak" && port_of(v, "dport") == lport
    });
    assert_eq!(got, N, "outgoing leaks; stderr:\n{}", t.stderr());
    let (code, values, stderr) = t.terminate();
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let leaks: Vec<_> = of_type(&values, "close_wait_leak")
        .filter(|v| port_of(v, "dport") == lport)
        .collect();
    assert_eq!(leaks.len(), N, "{leaks:#?}");
    let local: HashSet<u16> = leaks.iter().map(|v| port_of(v, "sport")).collect();
    assert_eq!(local, out_ports);
    for v in leaks {
        assert_owner(v, &client, "leaky-out8");
        assert_ne!(v["pid"], std::process::id(), "{v}");
    }
    // The test's own (server) sockets are not the followed process's.
    for v in values.iter().filter(|v| v["type"] != "summary") {
        assert_eq!(v["pid"], client.pid, "{v}");
    }
}

/// A fork-per-connection server: the parent accepts, a forked child inherits the connections
/// and the parent closes its copies. The leak names the child that holds the sockets (found
/// through their inode), not the listener's owner.
#[test]
fn leak_names_the_forked_child_that_holds_it() {
    for keep in [false, true] {
        let (parent_comm, kid_comm) = if keep {
            ("leaky-par11", "leaky-kid11")
        } else {
            ("leaky-par10", "leaky-kid10")
        };
        let mut server = Fixture::serve(parent_comm, &[]);
        let mut t = Traced::start(&["--json", "--close-wait-threshold", "1s", "--show", "leaks"]);
        let clients = connect_clients(server.port, 2);
        server.send("wait 2");
        server.expect("have 2", WAIT);
        server.send(&format!(
            "fork {kid_comm}{}",
            if keep { " keep" } else { "" }
        ));
        let kid: u32 = server
            .expect("forked ", WAIT)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        drop(clients);
        let got = t.wait_for_n(WAIT, 2, |v| is_leak_on(v, server.port));
        assert_eq!(got, 2, "keep={keep}: stderr:\n{}", t.stderr());
        let (code, values, stderr) = t.terminate();
        assert_eq!(code, 0, "stderr:\n{stderr}");
        for v in leaks_on(&values, server.port) {
            if keep {
                // Both hold them: the lowest pid is named, and the record says so.
                let (pid, comm) = if server.pid < kid {
                    (server.pid, parent_comm)
                } else {
                    (kid, kid_comm)
                };
                assert_eq!(v["pid"], pid, "shared: {v}");
                assert_eq!(v["comm"], comm, "shared: {v}");
                assert_eq!(v["owner_source"], "shared", "{v}");
            } else {
                assert_eq!(v["pid"], kid, "the child holds it: {v}");
                assert_eq!(v["comm"], kid_comm, "{v}");
                assert_eq!(v["owner_source"], "inode", "{v}");
            }
            // The named owner holds both CLOSE_WAIT sockets.
            assert_eq!(v["close_wait_held"], 2, "keep={keep}: {v}");
        }
    }
}

/// `--pid` given a thread id follows the thread's whole process.
#[test]
fn pid_of_a_thread_follows_its_process() {
    let mut server = Fixture::serve("leaky-thr13", &[]);
    let tid: u32 = std::fs::read_dir(format!("/proc/{}/task", server.pid))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .find(|&t| t != server.pid)
        .expect("the fixture runs threads");
    let mut t = Traced::start(&[
        "--pid",
        &tid.to_string(),
        "--json",
        "--close-wait-threshold",
        "500ms",
    ]);
    let clients = connect_clients(server.port, 2);
    server.send("wait 2");
    server.expect("have 2", WAIT);
    drop(clients);
    let got = t.wait_for_n(WAIT, 2, |v| is_leak_on(v, server.port));
    assert_eq!(got, 2, "stderr:\n{}", t.stderr());
    let (code, values, stderr) = t.terminate();
    assert_eq!(code, 0, "stderr:\n{stderr}");
    for v in leaks_on(&values, server.port) {
        assert_owner(v, &server, "leaky-thr13");
    }
    assert!(
        stderr.contains(&format!("following process {}", server.pid)),
        "{stderr}"
    );
}

/// `--pid` values that are not a process id are usage errors.
#[test]
fn malformed_pid_is_a_usage_error() {
    for bad in ["0", "-1", "abc", "", "4294967296"] {
        let arg = format!("--pid={bad}");
        let (code, stdout, stderr, _) = run_tracer(&[&arg], WAIT);
        assert_eq!(code, 2, "--pid {bad:?}: {stderr}");
        assert!(stderr.contains("--pid"), "--pid {bad:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("tracing TCP state changes"), "{stderr}");
        assert!(stdout.is_empty());
    }
}
