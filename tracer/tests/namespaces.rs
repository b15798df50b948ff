//! Right on a container host (issue 9): every record names its socket's network namespace;
//! owners are confirmed only inside that namespace; the startup baseline covers every
//! namespace; listeners are owned by (namespace, port); `--pid` follows a process in another
//! namespace; records and metrics name the owner's cgroup and container.
//!
//! Real BPF, real namespaces (`unshare --net`, made per test), real cgroups (a directory in the
//! cgroup v2 hierarchy named like Docker's). Records are matched by the fixtures' ports and
//! pids only.
//!
//! Tier: root

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use serde_json::Value;

use common::{Fixture, Traced, http_request, of_type, own_netns};

/// The network namespace inode of a process (`readlink /proc/PID/ns/net` = `net:[N]`).
fn netns_of(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/net: {e}"))
        .ino()
}

/// Two ports that are free in this namespace now.
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn port(v: &Value, key: &str) -> u16 {
    v[key].as_u64().unwrap_or(0) as u16
}

fn is_leak_of(v: &Value, pid: u32) -> bool {
    v["type"] == "close_wait_leak" && v["pid"] == pid
}

/// The same 4-tuple 127.0.0.1:P ← 127.0.0.1:Q leaks in two namespaces: each leak and each
/// close record names its own process and namespace, confirmed through its own namespace.
#[test]
fn twin_four_tuples_in_two_namespaces_are_told_apart() {
    let (p, q) = free_ports();
    let mut t = Traced::start(&["--json", "--close-wait-threshold", "1s"]);
    let (ps, qs) = (p.to_string(), q.to_string());
    let args = ["--port", ps.as_str(), "--from", qs.as_str(), "--self", "1"];
    let mut root = Fixture::serve("twin-root", &args);
    let mut inner = Fixture::spawn_in_new_netns(&[&["serve", "twin-netns"], &args[..]].concat());
    root.expect("self-closed 1", common::WAIT);
    inner.expect("self-closed 1", common::WAIT);
    let (root_ns, inner_ns) = (netns_of(root.pid), netns_of(inner.pid));
    assert_eq!(root_ns, own_netns());
    assert_ne!(root_ns, inner_ns, "the fixture has a namespace of its own");

    for f in [&root, &inner] {
        let got = t.wait_for(common::WAIT, |v| is_leak_of(v, f.pid));
        assert!(
            got.is_some(),
            "no leak for {}; stderr:\n{}",
            f.pid,
            t.stderr()
        );
    }
    root.send("close");
    inner.send("close");
    root.expect("closed 1", common::WAIT);
    inner.expect("closed 1", common::WAIT);
    for f in [&root, &inner] {
        let pid = f.pid;
        let got = t.wait_for(common::WAIT, |v| {
            v["type"] == "close" && v["pid"] == pid && port(v, "sport") == p
        });
        assert!(got.is_some(), "no close for {pid}; stderr:\n{}", t.stderr());
    }
    let (code, values, stderr) = t.stop();
    assert_eq!(code, 0, "{stderr}");

    let on_tuple = |v: &&Value| port(v, "sport") == p && port(v, "dport") == q;
    let leaks: Vec<&Value> = of_type(&values, "close_wait_leak")
        .filter(on_tuple)
        .collect();
    assert_eq!(leaks.len(), 2, "one leak per namespace: {leaks:#?}");
    for (f, ns, comm) in [
        (&root, root_ns, "twin-root"),
        (&inner, inner_ns, "twin-netns"),
    ] {
        let mine: Vec<&&Value> = leaks.iter().filter(|v| v["netns"] == ns).collect();
        assert_eq!(mine.len(), 1, "leak in netns {ns}: {leaks:#?}");
        let v = mine[0];
        assert_eq!(v["pid"], f.pid, "{v}");
        assert_eq!(v["comm"], comm, "{v}");
        assert_eq!(
            v["owner_source"], "inode",
            "confirmed in its own namespace: {v}"
        );
        assert_eq!(v["age_source"], "traced", "{v}");
        let closes: Vec<&Value> = of_type(&values, "close")
            .filter(on_tuple)
            .filter(|v| v["netns"] == ns)
            .collect();
        assert_eq!(closes.len(), 1, "close in netns {ns}: {closes:#?}");
        assert_eq!(closes[0]["pid"], f.pid, "{}", closes[0]);
        assert_eq!(closes[0]["leaked"], true, "{}", closes[0]);
        assert_eq!(closes[0]["kind"], "passive", "{}", closes[0]);
    }
    // Transition lines carry the namespace too.
    let inner_transitions = of_type(&values, "transition")
        .filter(|v| v["netns"] == inner_ns)
        .count();
    assert!(inner_transitions >= 5, "transitions in the inner namespace");
}

/// A CLOSE_WAIT socket held in another namespace before the tracer starts is reported with its
/// owner, its namespace and an estimated age; so are the leaks of a listener made there before
/// the tracer started, whose accepted sockets take its owner.
#[test]
fn baseline_covers_other_namespaces_and_their_listeners() {
    let mut f = Fixture::spawn_in_new_netns(&["serve", "pre-netns", "--self", "2"]);
    f.expect("self-closed 2", common::WAIT);
    let ns = netns_of(f.pid);
    assert_ne!(ns, own_netns());
    // Old enough to be over the threshold at once.
    std::thread::sleep(Duration::from_millis(1200));
    let mut t = Traced::start(&["--json", "--close-wait-threshold", "1s"]);
    let n = t.wait_for_n(common::WAIT, 2, |v| is_leak_of(v, f.pid));
    assert_eq!(n, 2, "pre-existing leaks; stderr:\n{}", t.stderr());

    // New connections to the listener that existed before the tracer (its owner comes from
    // the baseline, keyed by namespace and port).
    f.send("self 3");
    f.expect("self-closed 3", common::WAIT);
    let n = t.wait_for_n(common::WAIT, 5, |v| is_leak_of(v, f.pid));
    assert_eq!(
        n,
        5,
        "leaks of the pre-existing listener; stderr:\n{}",
        t.stderr()
    );
    let (code, values, stderr) = t.stop();
    assert_eq!(code, 0, "{stderr}");

    let leaks: Vec<&Value> = of_type(&values, "close_wait_leak")
        .filter(|v| port(v, "sport") == f.port && v["netns"] == ns)
        .collect();
    assert_eq!(leaks.len(), 5, "{leaks:#?}");
    let estimated = leaks
        .iter()
        .filter(|v| v["age_source"] == "estimate")
        .count();
    assert_eq!(estimated, 2, "the two pre-existing ones: {leaks:#?}");
    for v in &leaks {
        assert_eq!(v["pid"], f.pid, "{v}");
        assert_eq!(v["comm"], "pre-netns", "{v}");
        if v["age_source"] == "estimate" {
            assert!(v["age_ns"].as_u64().unwrap() >= 1_000_000_000, "{v}");
        }
    }
}

/// `--pid` of a process in another namespace follows it (its sockets and listener) and exits
/// with it.
#[test]
fn pid_follows_a_process_in_another_namespace() {
    let mut f = Fixture::spawn_in_new_netns(&["serve", "pid-netns"]);
    let ns = netns_of(f.pid);
    let mut t = Traced::start(&[
        "--pid",
        &f.pid.to_string(),
        "--json",
        "--close-wait-threshold",
        "1s",
    ]);
    f.send("self 2");
    f.expect("self-closed 2", common::WAIT);
    let n = t.wait_for_n(common::WAIT, 2, |v| is_leak_of(v, f.pid));
    assert_eq!(n, 2, "stderr:\n{}", t.stderr());
    f.close_stdin();
    let (code, values, stderr) = t.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("process {} exited", f.pid)),
        "{stderr}"
    );
    for v in values
        .iter()
        .filter(|v| v["type"] != "summary" && v["type"] != "meta")
    {
        assert_eq!(v["pid"], f.pid, "only its records: {v}");
        assert_eq!(v["netns"], ns, "{v}");
    }
    assert_eq!(of_type(&values, "close_wait_leak").count(), 2);
}

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
fn cgroup2_root() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
        })
        .expect("a cgroup2 mount (needed for container identity)")
}

/// A cgroup named like Docker's (`<root>/docker/<64 hex>`), removed when dropped.
struct DockerLikeCgroup {
    dir: std::path::PathBuf,
    id: String,
}

impl DockerLikeCgroup {
    /// `salt` keeps the tests of one process apart.
    fn new(salt: u64) -> Self {
        let seed = (u64::from(std::process::id()) << 8 | salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let id = format!("{seed:016x}").repeat(4);
        let dir = std::path::Path::new(&cgroup2_root())
            .join("docker")
            .join(&id);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        DockerLikeCgroup { dir, id }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for DockerLikeCgroup {
    fn drop(&mut self) {
        // Its processes are gone by now (fixtures are killed first); retry briefly while the
        // kernel finishes their exit.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(self.dir.parent().unwrap());
    }
}

/// A process moved into a cgroup named like a container runtime's gets `container_id` and
/// `cgroup` on its records, the short id in the text leak line, and the `container` label on
/// the per-process metrics.
#[test]
fn container_identity_on_records_and_metrics() {
    let cg = DockerLikeCgroup::new(1);
    let mut f = Fixture::serve("in-container", &[]);
    cg.add(f.pid);
    let mut t = Traced::start(&[
        "--json",
        "--show",
        "closes,leaks",
        "--close-wait-threshold",
        "1s",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    f.send("self 2");
    f.expect("self-closed 2", common::WAIT);
    let leak = t
        .wait_for(common::WAIT, |v| is_leak_of(v, f.pid))
        .unwrap_or_else(|| panic!("no leak; stderr:\n{}", t.stderr()));
    let want_path = format!("/docker/{}", cg.id);
    assert_eq!(leak["container_id"], cg.id.as_str(), "{leak}");
    assert_eq!(leak["cgroup"], want_path.as_str(), "{leak}");

    let addr = t.metrics_addr();
    let short = &cg.id[..12];
    let want = format!(
        r#"tracer_tcp_close_wait_sockets{{pid="{}",comm="in-container",container="{short}"}} 2"#,
        f.pid
    );
    let mut last = String::new();
    let deadline = std::time::Instant::now() + common::WAIT;
    while std::time::Instant::now() < deadline {
        last = http_request(addr, "GET", "/metrics", &[], common::WAIT)
            .map(|r| r.body)
            .unwrap_or_default();
        if last.contains(&want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last.contains(&want), "missing {want} in:\n{last}");

    f.send("close");
    f.expect("closed 2", common::WAIT);
    let pid = f.pid;
    let close = t
        .wait_for(common::WAIT, |v| v["type"] == "close" && v["pid"] == pid)
        .unwrap_or_else(|| panic!("no close; stderr:\n{}", t.stderr()));
    assert_eq!(close["container_id"], cg.id.as_str(), "{close}");
    assert_eq!(close["cgroup"], want_path.as_str(), "{close}");
    let (code, _, stderr) = t.stop();
    assert_eq!(code, 0, "{stderr}");
    drop(f);
}

/// The text leak line names the container by its short id and the namespace when it is not
/// the tracer's own.
#[test]
fn text_leak_line_names_container_and_namespace() {
    let cg = DockerLikeCgroup::new(2);
    let mut f = Fixture::spawn_in_new_netns(&["serve", "txt-netns"]);
    cg.add(f.pid);
    let ns = netns_of(f.pid);
    let mut t = Traced::start(&["--close-wait-threshold", "1s", "--show", "leaks"]);
    f.send("self 1");
    f.expect("self-closed 1", common::WAIT);
    let pid = f.pid;
    let line = t
        .wait_for_line(common::WAIT, |l| {
            l.contains("LEAK") && l.contains(&format!("pid {pid} "))
        })
        .unwrap_or_else(|| panic!("no leak line; stderr:\n{}", t.stderr()));
    assert!(
        line.contains(&format!("container {}", &cg.id[..12])),
        "{line}"
    );
    assert!(line.contains(&format!("netns {ns}")), "{line}");
    drop(t);
    drop(f);
}

/// The startup baseline reads every namespace: 20 namespaces holding 500 sockets each (250
/// connections to their own listener, both ends held) are all seeded, and the summary says how
/// many namespaces were read and how long it took.
#[test]
fn baseline_reads_twenty_namespaces() {
    const NAMESPACES: usize = 20;
    const CONNECTIONS: usize = 250;
    let mut fixtures: Vec<Fixture> = (0..NAMESPACES)
        .map(|i| Fixture::spawn_in_new_netns(&["serve", &format!("bl-ns{i:02}")]))
        .collect();
    for f in &mut fixtures {
        let cmd = format!("connect {} {CONNECTIONS}", f.port);
        f.send(&cmd);
    }
    for f in &mut fixtures {
        f.expect("connected ", common::WAIT);
        f.send(&format!("wait {CONNECTIONS}"));
        f.expect(&format!("have {CONNECTIONS}"), common::WAIT);
    }
    let t = Traced::start(&["--json", "--show", "none"]);
    let (code, values, stderr) = t.stop();
    assert_eq!(code, 0, "{stderr}");
    let summary = of_type(&values, "summary").next().expect("summary");
    let b = &summary["baseline"];
    let sockets = b["sockets"].as_u64().unwrap_or(0);
    let namespaces = b["namespaces"].as_u64().unwrap_or(0);
    let want = (NAMESPACES * (2 * CONNECTIONS + 1)) as u64;
    assert!(sockets >= want, "seeded {sockets} < {want}: {summary}");
    assert!(namespaces > NAMESPACES as u64, "{summary}");
    assert_eq!(b["namespaces_failed"], 0, "{summary}");
    eprintln!(
        "baseline: {sockets} sockets in {namespaces} namespaces in {} µs",
        b["took_us"]
    );
    // The host-wide TIME_WAIT count reads every namespace's sockstat: its cost, with the
    // namespace list made anew and with the list kept.
    let mut ns = tracer::netns::Namespaces::open().expect("sock_diag");
    let t0 = std::time::Instant::now();
    let first = ns.time_wait_total(t0, Duration::ZERO);
    let t1 = std::time::Instant::now();
    let again = ns.time_wait_total(t1, Duration::MAX);
    let t2 = std::time::Instant::now();
    assert!(first.namespaces > NAMESPACES as u64, "{first:?}");
    assert_eq!(first.failed, 0, "{first:?}");
    assert_eq!(again.namespaces, first.namespaces, "{again:?}");
    eprintln!(
        "TIME_WAIT summed over {} namespaces: {} µs with discovery, {} µs without",
        first.namespaces,
        (t1 - t0).as_micros(),
        (t2 - t1).as_micros()
    );
}

/// The `tw` count of a `/proc/.../net/sockstat`.
fn sockstat_tw(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    tracer::netns::sockstat_time_wait(&text).unwrap_or_else(|| panic!("no tw in {path}: {text}"))
}

/// The kernel counts timewait sockets per network namespace (`/proc/net/sockstat` answers for
/// the reader's own): the host-wide TIME_WAIT count that the metrics and `tracer top` show sums
/// every namespace, a container's too. A fixture in a new namespace closes 150 connections
/// first (its side waits in a timewait socket); the sum counts them on top of this namespace's.
#[test]
fn time_wait_count_sums_every_namespace() {
    const N: usize = 150;
    let mut f = Fixture::spawn_in_new_netns(&["serve", "tw-ns"]);
    f.send(&format!("connect {} {N}", f.port));
    f.expect("connected ", common::WAIT);
    f.send(&format!("wait {N}"));
    f.expect(&format!("have {N}"), common::WAIT);
    f.send("drop");
    f.expect("dropped ", common::WAIT);
    let theirs_path = format!("/proc/{}/net/sockstat", f.pid);
    let deadline = std::time::Instant::now() + common::WAIT;
    let theirs = loop {
        let n = sockstat_tw(&theirs_path);
        if n >= N as u64 {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} timewait sockets in the fixture's namespace, {N} made"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut ns = tracer::netns::Namespaces::open().expect("sock_diag");
    let before = sockstat_tw("/proc/net/sockstat");
    let total = ns.time_wait_total(std::time::Instant::now(), Duration::ZERO);
    let after = sockstat_tw("/proc/net/sockstat");
    // Other namespaces (other tests' fixtures) may add theirs; none can take ours away.
    assert!(
        total.sockets >= before.min(after) + theirs,
        "summed {total:?}; this namespace {before}..{after}, the fixture's {theirs}"
    );
    assert!(total.namespaces >= 2, "{total:?}");
    eprintln!("TIME_WAIT summed: {total:?}; own {before}..{after}, fixture's {theirs}");
}

/// Runs `ip ARGS…`, panicking with its stderr when it fails.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace with only a name under /run/netns (`ip netns add`), deleted when dropped.
struct NamedNetns(String);

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A namespace that no process is in, only a name (`ip netns add`), is counted too: read from
/// a thread inside it. 120 client-first connections made there by a process that then exits
/// leave their timewait sockets behind.
#[test]
fn time_wait_count_reaches_a_namespace_with_only_a_name() {
    const N: usize = 120;
    let ns = NamedNetns(format!("tracer-tw-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    let script = format!(
        "import socket, threading, time\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(256)\n\
         port = l.getsockname()[1]\n\
         def serve():\n\
         \x20   while True:\n\
         \x20       c, _ = l.accept()\n\
         \x20       while c.recv(16): pass\n\
         \x20       c.close()\n\
         threading.Thread(target=serve, daemon=True).start()\n\
         for _ in range({N}):\n\
         \x20   socket.create_connection(('127.0.0.1', port)).close()\n\
         time.sleep(0.5)\n"
    );
    ip(&["netns", "exec", &ns.0, "python3", "-c", &script]);
    let theirs = tracer::netns::sockstat_time_wait(&ip(&[
        "netns",
        "exec",
        &ns.0,
        "cat",
        "/proc/net/sockstat",
    ]))
    .expect("tw in the namespace's sockstat");
    assert!(theirs >= N as u64 / 2, "{theirs} timewait sockets of {N}");
    let mut namespaces = tracer::netns::Namespaces::open().expect("sock_diag");
    let before = sockstat_tw("/proc/net/sockstat");
    let total = namespaces.time_wait_total(std::time::Instant::now(), Duration::ZERO);
    let after = sockstat_tw("/proc/net/sockstat");
    assert!(
        total.sockets >= before.min(after) + theirs,
        "summed {total:?}; this namespace {before}..{after}, the named one's {theirs}"
    );
}
