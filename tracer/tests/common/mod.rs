//! Test harness: runs the real `tracer` binary (which loads the real eBPF program; these tests
//! need root and fail, never skip, without it) and drives real sockets on loopback.
//!
//! The one home of what the test binaries share: this module (the traced tracer, fixtures,
//! HTTP, running the tracer to its exit), [`alloc`] (the counting allocator), [`sockets`]
//! (`one_connection`, `set_linger_zero`), [`promtool`], [`recordings`] (replay's
//! generators) and [`tmux`] (`tracer top` in a terminal). A test binary copies none of it.
#![allow(
    dead_code,
    reason = "every test binary includes this module and uses a part of it"
)]

pub mod alloc;
pub mod prometheus;
pub mod promtool;
pub mod recordings;
pub mod sockets;
pub mod tmux;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for something that must happen (a line, an event, a fixture being
/// ready, a process exiting): only a hang reaches it. It is a bound, not an expectation: tests
/// wait for the thing itself, and under emulation (TCG) the same work takes 10–50x longer than
/// on the host (a debug tracer's start alone took over 2 minutes in a guest on a busy host).
pub const WAIT: Duration = Duration::from_secs(300);

/// A running tracer whose stdout lines are collected in the background.
pub struct Traced {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    seen: Vec<String>,
}

impl Traced {
    /// Starts `tracer ARGS` and waits until it says it is tracing.
    pub fn start(args: &[&str]) -> Traced {
        Traced::start_env(args, &[])
    }

    /// Like [`Traced::start`], with extra environment variables (e.g. `TRACER_ATTACH`).
    pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Traced {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tracer");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let eb = err_buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("tracing TCP state changes") {
                    let _ = ready_tx.send(());
                }
                let mut b = eb.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        let mut t = Traced {
            child,
            lines: rx,
            stderr: err_buf,
            seen: Vec::new(),
        };
        if ready_rx.recv_timeout(WAIT).is_err() {
            let status = t.child.try_wait().ok().flatten();
            let _ = t.child.kill();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "tracer did not start tracing within {WAIT:?} (exit: {status:?}); stderr:\n{}",
                t.stderr()
            );
        }
        t
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the stderr collected so far; false after `timeout`.
    pub fn wait_stderr(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stderr.lock().unwrap()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Collects stdout lines until `pred` matches one of the JSON lines or `timeout` passes.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        if let Some(v) = self
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| pred(v))
        {
            return Some(v);
        }
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v = serde_json::from_str::<Value>(&line).ok();
                    self.seen.push(line);
                    if let Some(v) = v
                        && pred(&v)
                    {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits until at least `n` JSON lines match `pred`; returns how many matched.
    pub fn wait_for_n(
        &mut self,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        let count = |seen: &[String]| {
            seen.iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| pred(v))
                .count()
        };
        let mut got = count(&self.seen);
        while got < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if serde_json::from_str::<Value>(&line).is_ok_and(|v| pred(&v)) {
                        got += 1;
                    }
                    self.seen.push(line);
                }
                Err(_) => break,
            }
        }
        got
    }

    /// Sends SIGINT, waits for exit, and returns (exit code, every stdout line parsed as JSON).
    pub fn stop(self) -> (i32, Vec<Value>, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.finish()
    }

    /// Waits (up to [`WAIT`]) for the tracer to exit on its own; every stdout line must be JSON.
    pub fn finish(self) -> (i32, Vec<Value>, String) {
        let (code, lines, stderr) = self.finish_raw();
        let values = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect();
        (code, values, stderr)
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The running kernel's (major, minor), from uname(2).
pub fn kernel_version() -> (u32, u32) {
    // SAFETY: uname fills the zeroed struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::uname(&mut u) }, 0, "uname failed");
    // SAFETY: the kernel NUL-terminates the release.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let v = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    assert!(v.0 > 0, "cannot parse the kernel release {release:?}");
    v
}

/// Whether an accepted child's LISTEN→SYN_RECV event carries its peer. Before 6.15 the kernel
/// sets SYN_RECV on the clone before copying the request's addresses into it (fixed by
/// "inet: consolidate inet_csk_clone_lock()"), so that event has dport 0 and an unspecified
/// daddr; measured on 5.10, 6.1 and 6.12 (none) and 6.18 (the peer). The full 4-tuple
/// appears from SYN_RECV→ESTABLISHED on, on every kernel.
pub fn child_birth_has_peer() -> bool {
    kernel_version() >= (6, 15)
}

/// True when a JSON record is about the connection between these two local ports in this
/// test's network namespace (ports repeat across namespaces: other processes' load runs in
/// namespaces of their own).
pub fn on_ports(v: &Value, a: u16, b: u16) -> bool {
    let sp = v["sport"].as_u64().unwrap_or(0) as u16;
    let dp = v["dport"].as_u64().unwrap_or(0) as u16;
    in_own_netns(v) && ((sp == a && dp == b) || (sp == b && dp == a))
}

/// The network namespace inode of this test process.
pub fn own_netns() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net")
        .expect("/proc/self/ns/net")
        .ino()
}

/// True when a JSON record's `netns` is this test process's namespace.
pub fn in_own_netns(v: &Value) -> bool {
    v["netns"].as_u64() == Some(own_netns())
}

pub fn of_type<'a>(vs: &'a [Value], ty: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let ty = ty.to_owned();
    vs.iter().filter(move |v| v["type"] == ty.as_str())
}

pub fn states(v: &Value) -> (String, String) {
    (
        v["old"].as_str().unwrap().to_owned(),
        v["new"].as_str().unwrap().to_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers of the attribution and daemon tests: raw (non-JSON) output, signals, the metrics
// address, fixture processes (tests/fixtures/leaky.py), a minimal HTTP client, and running the
// tracer to its exit.

impl Traced {
    /// Collects stdout lines until one satisfies `pred` (raw text, for the table format).
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line.clone());
                    if hit {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends SIGTERM, waits for exit, and returns (exit code, every stdout line parsed as
    /// JSON, stderr). Like [`Traced::stop`], with the signal a service manager sends.
    pub fn terminate(self) -> (i32, Vec<Value>, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.finish()
    }

    /// Sends `signal`, waits (up to [`WAIT`]) for the exit, and returns (exit code, raw stdout
    /// lines, stderr).
    pub fn signal_and_finish_raw(self, signal: i32) -> (i32, Vec<String>, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.finish_raw()
    }

    /// Waits (up to [`WAIT`]) for the tracer to exit on its own; returns (exit code, raw stdout
    /// lines, stderr). Unlike [`Traced::finish`], lines need not be JSON.
    pub fn finish_raw(mut self) -> (i32, Vec<String>, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tracer did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        std::thread::sleep(Duration::from_millis(50));
        let seen = std::mem::take(&mut self.seen);
        (status.code().unwrap_or(-1), seen, self.stderr())
    }

    /// Whether the tracer has exited (it is reaped if so).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The metrics address from `tracer: serving metrics on http://ADDR/metrics` (printed on
    /// stderr before the tracing line [`Traced::start`] waits for).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let err = self.stderr();
        err.lines()
            .find_map(|l| {
                l.split_once("serving metrics on http://")
                    .and_then(|(_, rest)| rest.strip_suffix("/metrics"))
            })
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!("no `serving metrics on http://ADDR/metrics` line in:\n{err}")
            })
    }
}

/// The Python interpreter's own path (not a version manager's shim, so a fixture's pid is the
/// interpreter's).
/// The Python interpreter of the fixtures.
pub fn python() -> &'static str {
    static PY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 (needed by the fixtures): {e}"));
        assert!(out.status.success(), "python3 failed: {out:?}");
        let p = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(!p.is_empty(), "python3 has no sys.executable");
        p
    })
}

/// Path of `tests/fixtures/NAME`.
pub fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A process running a Python fixture (`tests/fixtures/leaky.py`, or another with
/// [`Fixture::spawn_script`]), killed and reaped when dropped. Its stdout lines are collected
/// in the background.
pub struct Fixture {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    /// The pid the fixture reported (`ready PORT PID`), 0 for modes that report none.
    pub pid: u32,
    /// The port of its listener (`serve`), 0 otherwise.
    pub port: u16,
}

impl Fixture {
    /// Runs `leaky.py ARGS` and, for `serve`, waits for its `ready PORT PID` line.
    pub fn spawn(args: &[&str]) -> Fixture {
        Fixture::spawn_cmd(Command::new(python()), "leaky.py", args)
    }

    /// Runs `tests/fixtures/SCRIPT ARGS` (a Python fixture); its pid is the interpreter's.
    pub fn spawn_script(script: &str, args: &[&str]) -> Fixture {
        Fixture::spawn_cmd(Command::new(python()), script, args)
    }

    /// Like [`Fixture::spawn`], in a new network namespace of its own (`unshare --net`, with
    /// `lo` brought up). `unshare` and `sh` exec, so the fixture's pid is the interpreter's.
    pub fn spawn_in_new_netns(args: &[&str]) -> Fixture {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$0" "$@""#,
            python(),
        ]);
        Fixture::spawn_cmd(cmd, "leaky.py", args)
    }

    fn spawn_cmd(mut cmd: Command, script: &str, args: &[&str]) -> Fixture {
        let mut child = cmd
            .arg(fixture_path(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {script}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut f = Fixture {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
            pid: 0,
            port: 0,
        };
        if script == "leaky.py" && args.first() == Some(&"serve") {
            let ready = f.expect("ready ", WAIT);
            let mut w = ready.split_whitespace().skip(1);
            f.port = w.next().and_then(|p| p.parse().ok()).expect("port");
            f.pid = w.next().and_then(|p| p.parse().ok()).expect("pid");
            assert_eq!(f.pid, f.child.id(), "the fixture's pid is its process's");
        }
        f
    }

    /// `leaky.py serve NAME EXTRA…`: a server with comm NAME that never closes what it accepts.
    pub fn serve(name: &str, extra: &[&str]) -> Fixture {
        let mut args = vec!["serve", name];
        args.extend_from_slice(extra);
        Fixture::spawn(&args)
    }

    /// Sends one command line on its stdin.
    pub fn send(&mut self, command: &str) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{command}").expect("writing to the fixture");
        stdin.flush().unwrap();
    }

    /// Closes its stdin (a `serve` fixture exits on it).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Reads stdout lines until one starts with `prefix`; panics after `timeout`.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            let l = l.clone();
            self.seen.retain(|s| *s != l);
            return l;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "fixture: no line starting with {prefix:?} within {timeout:?}; seen {:?}",
                        self.seen
                    )
                });
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "fixture: no line starting with {prefix:?} within {timeout:?} (exit {:?}); seen {:?}",
                    self.child.try_wait().ok().flatten(),
                    self.seen
                ),
            }
        }
    }

    /// Every line read so far plus those pending now.
    pub fn drain_lines(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// Waits (up to `timeout`) for the process to exit and reaps it; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process has ended (exited, zombie or reaped), without reaping it.
    pub fn has_ended(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            Err(_) => true,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics` of a tracer's metrics address (the body).
pub fn scrape(addr: std::net::SocketAddr) -> String {
    http_request(addr, "GET", "/metrics", &[], WAIT)
        .expect("scraping /metrics")
        .body
}

/// The per-process CLOSE_WAIT gauge for pid label `pid` in a scrape (0 when absent).
pub fn close_wait_gauge(text: &str, pid: &str) -> u64 {
    let prefix = format!("tracer_tcp_close_wait_sockets{{pid=\"{pid}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// The value of the sample whose name and labels are exactly `series` (0 when absent).
pub fn sample_of(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// How many sockets `ss -H ARGS` lists (one per non-empty line).
pub fn ss_count(args: &[&str]) -> u64 {
    let out = Command::new("ss")
        .arg("-H")
        .args(args)
        .output()
        .expect("running ss");
    assert!(out.status.success(), "ss {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

/// Loopback clients of `port` that this (test) process holds.
pub fn connect_clients(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
        })
        .collect()
}

/// Runs `tracer ARGS` to its exit (killed after `timeout`); returns (exit code, stdout, stderr,
/// how long it ran).
pub fn run_tracer(args: &[&str], timeout: Duration) -> (i32, String, String, Duration) {
    use std::io::Read as _;
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tracer");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tracer {args:?} did not exit within {timeout:?}; stderr:\n{}",
                err_t.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ran = start.elapsed();
    (
        status.code().unwrap_or(-1),
        out_t.join().unwrap(),
        err_t.join().unwrap(),
        ran,
    )
}

/// An HTTP response, as read by [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (`Connection: close`) with `std::net`; the whole exchange must finish
/// within `timeout`. `extra_headers` are full lines without CRLF.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[&str],
    timeout: Duration,
) -> std::io::Result<HttpReply> {
    use std::io::{Read as _, Write as _};
    let deadline = Instant::now() + timeout;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in extra_headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.set_write_timeout(Some(timeout))?;
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP exchange timed out")
            })?;
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_http_reply(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

/// Parses a complete HTTP/1.x response (Content-Length, chunked, or until close).
pub fn parse_http_reply(raw: &[u8]) -> Option<HttpReply> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        let mut r = rest;
        loop {
            let eol = r.windows(2).position(|w| w == b"\r\n")?;
            let size_str = std::str::from_utf8(&r[..eol]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            r = &r[eol + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(r.get(..size)?);
            r = r.get(size + 2..)?;
        }
        body
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(HttpReply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
