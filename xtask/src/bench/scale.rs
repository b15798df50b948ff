//! `cargo xtask bench --scale`: what many established sockets cost the daemon.
//!
//! In a network namespace of its own (`ip netns add`, removed at the end), child processes
//! (`xtask bench --hold-pairs P`) each open a listener and hold `P` established loopback pairs
//! — at most 9,000 pairs each, under the 20,000 file descriptors a process may have here — so
//! `N` sockets take `N / 18,000` processes. Each holder listens on its own loopback address
//! (port 5000, below the namespace's ephemeral range of 10000–65535), so a million sockets fit.
//!
//! Measured in one run, for each socket count:
//!
//! 1. a daemon (`--metrics-addr`, `--show none`) started **before** the sockets: its RSS
//!    idle, then with the `N` sockets tracked from their traced transitions;
//! 2. a second daemon started **after** them: the time from its start to `/ready` (the
//!    startup baseline: sock_diag in every namespace and one /proc scan for the owners), its
//!    RSS once ready, its peak RSS, and the time of one `/metrics` scrape;
//! 3. the RSS growth per tracked socket of each, against the idle RSS of the first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::output;

/// The holders' listening port (each on its own address), and the namespace's ephemeral range
/// above it.
const LISTEN_PORT: u16 = 5000;
const EPHEMERAL: &str = "net.ipv4.ip_local_port_range=10000 65535";

/// Pairs one holder process keeps (two descriptors each).
const MAX_PAIRS_PER_HOLDER: usize = 9_000;

/// `xtask bench --hold-pairs P --hold-index K`: opens a listener on 127.1.x.y (from `K`),
/// makes `P` loopback connections to it and accepts each, prints `ready N` and keeps them
/// until its stdin closes.
pub fn hold(pairs: usize, index: usize) -> Result<()> {
    raise_nofile();
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + index as u32);
    // A server's port, below the ephemeral range (as a real server's: one in the range makes
    // each accepted socket a port user of its own in the TIME_WAIT table's per-remote counts).
    let port = LISTEN_PORT;
    let listener = TcpListener::bind((ip, port)).with_context(|| format!("binding {ip}:{port}"))?;
    // SAFETY: listen(2) on a socket we own.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    let addr = listener.local_addr()?;
    let mut held = Vec::with_capacity(2 * pairs);
    for i in 0..pairs {
        let c = TcpStream::connect(addr).with_context(|| format!("connection {i} to {addr}"))?;
        let (s, _) = listener.accept().context("accepting")?;
        held.push(c);
        held.push(s);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", held.len())?;
    out.flush()?;
    drop(out);
    let mut b = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while stdin.read(&mut b).is_ok_and(|n| n > 0) {}
    drop(held);
    Ok(())
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on this process with a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const r);
        }
    }
}

/// The hard limit on descriptors of this process (the holders inherit it).
fn nofile_hard() -> usize {
    // SAFETY: as above.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) == 0 {
            r.rlim_max.min(1 << 20) as usize
        } else {
            1024
        }
    }
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Result<Netns> {
        let name = format!("tracer-scale-{}", std::process::id());
        output(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        ns.exec(&["sysctl", "-qw", EPHEMERAL])?;
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> Result<String> {
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.0])
                .args(args),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The holder processes; closing their stdin ends them.
struct Holders(Vec<(Child, Option<ChildStdin>)>);

impl Drop for Holders {
    fn drop(&mut self) {
        for (_, stdin) in &mut self.0 {
            stdin.take();
        }
        for (c, _) in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_holders(ns: &Netns, xtask: &Path, sockets: usize) -> Result<(Holders, usize)> {
    let per = MAX_PAIRS_PER_HOLDER
        .min(nofile_hard().saturating_sub(64) / 2)
        .max(1);
    let mut pairs = sockets / 2;
    let mut holders = Holders(Vec::new());
    let (mut k, mut total) = (0, 0);
    while pairs > 0 {
        let p = pairs.min(per);
        pairs -= p;
        let mut c = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(xtask)
            .args(["bench", "--hold-pairs", &p.to_string()])
            .args(["--hold-index", &k.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning a socket holder")?;
        let stdin = c.stdin.take();
        // One at a time: all at once, a million events arrive within a second and the
        // traced daemon's rings overflow (a burst the bench does not mean to measure).
        let out = c.stdout.take().context("holder stdout")?;
        holders.0.push((c, stdin));
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let n: usize = line
            .strip_prefix("ready ")
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("a socket holder failed (said {:?})", line.trim()))?;
        total += n;
        k += 1;
    }
    Ok((holders, total))
}

/// A daemon under measurement.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    /// From spawn to the "tracing" line (printed as `/ready` turns 200).
    startup: Duration,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(tracer: &Path, capacity: usize) -> Result<Daemon> {
        let started = Instant::now();
        let mut child = Command::new(tracer)
            .args(["--metrics-addr", "127.0.0.1:0", "--show", "none"])
            .args(["--capacity", &capacity.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning tracer")?;
        let stderr = child.stderr.take().context("tracer stderr")?;
        let buf: Arc<Mutex<String>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut addr = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("tracer: serving metrics on http://") {
                    addr = rest.strip_suffix("/metrics").and_then(|a| a.parse().ok());
                }
                if line.contains("tracing TCP state changes") {
                    let _ = tx.send((addr, started.elapsed()));
                }
                let mut g = b.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                g.push_str(&line);
                g.push('\n');
            }
        });
        let Ok((Some(addr), startup)) = rx.recv_timeout(Duration::from_secs(300)) else {
            let _ = child.kill();
            let _ = child.wait();
            let err = buf.lock().map(|g| g.clone()).unwrap_or_default();
            bail!("tracer did not become ready within 300 s: {err}");
        };
        let d = Daemon {
            child,
            addr,
            startup,
            stderr: buf,
        };
        let (status, _) = d.get("/ready")?;
        if status != 200 {
            bail!("tracer announced tracing but /ready answered {status}");
        }
        Ok(d)
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        let status = body
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, body))
    }

    fn gauge(&self, name: &str) -> Result<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }

    fn status_kib(&self, field: &str) -> u64 {
        status_kib(self.child.id(), field)
    }

    fn stop(mut self) -> Result<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        std::thread::sleep(Duration::from_millis(100));
        let err = self.stderr.lock().map(|g| g.clone()).unwrap_or_default();
        if !status.success() {
            bail!("tracer exited with {status}: {err}");
        }
        Ok(err)
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of a daemon: all of it, and its anonymous part (the heap: what grows with
/// sockets; the rest is the binary and the ring buffers' pages, which the kernel fills and
/// which are resident once an event burst has gone round them, up to `--ring-mib`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub anon_kib: u64,
}

impl Mem {
    fn of(d: &Daemon) -> Mem {
        Mem {
            rss_kib: d.status_kib("VmRSS"),
            anon_kib: d.status_kib("RssAnon"),
        }
    }
}

/// One daemon's figures at one socket count.
pub struct DaemonRow {
    pub mem: Mem,
    pub peak_kib: u64,
    /// Sockets it tracks beyond what it tracked idle.
    pub tracked: f64,
    pub startup: Duration,
    pub lost: f64,
}

/// One socket count's figures.
pub struct ScaleRow {
    pub sockets: usize,
    pub holders: usize,
    pub setup: Duration,
    pub idle: Mem,
    pub traced: DaemonRow,
    pub baseline: DaemonRow,
    pub scrape: Duration,
    pub scrape_bytes: usize,
    pub ss: Duration,
}

impl ScaleRow {
    /// RSS and anonymous-memory growth per tracked socket over the idle daemon.
    pub fn per_socket(&self, d: &DaemonRow) -> (f64, f64) {
        let per =
            |now: u64, idle: u64| (now.saturating_sub(idle) * 1024) as f64 / d.tracked.max(1.0);
        (
            per(d.mem.rss_kib, self.idle.rss_kib),
            per(d.mem.anon_kib, self.idle.anon_kib),
        )
    }
}

/// Waits until the daemon's RSS has not grown for a second (the drain tick, owner look-ups
/// and the confirmation of held sockets settle after startup).
fn settled(d: &Daemon) -> Mem {
    let mut last = Mem::of(d);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        let now = Mem::of(d);
        if now.rss_kib <= last.rss_kib {
            return now;
        }
        last = now;
    }
    last
}

pub fn measure(tracer: &Path, xtask: &Path, sockets: usize) -> Result<ScaleRow> {
    let capacity = (sockets + sockets / 4).max(1_000_000);
    let ns = Netns::create()?;
    let traced = Daemon::start(tracer, capacity)?;
    let idle = settled(&traced);
    let before = traced.gauge("tracer_tracked_sockets")?;

    let t = Instant::now();
    let (holders, held) = spawn_holders(&ns, xtask, sockets)?;
    let setup = t.elapsed();
    eprintln!(
        "bench --scale: {held} sockets held by {} processes in {:.1} s",
        holders.0.len(),
        setup.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut traced_tracked = traced.gauge("tracer_tracked_sockets")?;
    while traced_tracked < before + held as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        traced_tracked = traced.gauge("tracer_tracked_sockets")?;
    }
    let traced_mem = settled(&traced);

    let t = Instant::now();
    let ss_out = ns.exec(&["ss", "-Htan"])?;
    let ss = t.elapsed();
    eprintln!(
        "bench --scale: `ss -Htan` in the namespace: {} lines in {:.2} s",
        ss_out.lines().count(),
        ss.as_secs_f64()
    );

    let baseline = Daemon::start(tracer, capacity)?;
    let baseline_mem = settled(&baseline);
    let baseline_peak = baseline.status_kib("VmHWM");
    let baseline_tracked = baseline.gauge("tracer_tracked_sockets")?;
    // The median of three scrapes.
    let mut scrapes = Vec::new();
    let mut scrape_bytes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let (status, body) = baseline.get("/metrics")?;
        scrapes.push(t.elapsed());
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        scrape_bytes = body.len();
    }
    scrapes.sort();
    let row = ScaleRow {
        sockets: held,
        holders: holders.0.len(),
        setup,
        idle,
        traced: DaemonRow {
            mem: traced_mem,
            peak_kib: traced.status_kib("VmHWM"),
            tracked: traced_tracked - before,
            startup: traced.startup,
            lost: traced.gauge("tracer_events_lost_total")?,
        },
        baseline: DaemonRow {
            mem: baseline_mem,
            peak_kib: baseline_peak,
            // Its idle self is the first daemon's: the host's other sockets are in both.
            tracked: baseline_tracked - before,
            startup: baseline.startup,
            lost: baseline.gauge("tracer_events_lost_total")?,
        },
        scrape: scrapes[1],
        scrape_bytes,
        ss,
    };
    let err_b = baseline.stop()?;
    let err_t = traced.stop()?;
    for line in err_b.lines().chain(err_t.lines()) {
        if line.contains("evict") || line.contains("error") {
            eprintln!("bench --scale: tracer said: {line}");
        }
    }
    drop(holders);
    drop(ns);
    Ok(row)
}

pub fn print(rows: &[ScaleRow]) {
    println!(
        "Many established sockets: loopback pairs held by child processes in a network namespace \
         of their own; a daemon (`--metrics-addr`, `--show none`) started before them (it traces \
         their births) and one started after them (its startup baseline reads them). Bytes per \
         socket: growth over the first daemon's idle memory, divided by the sockets tracked; \
         \"anon\" is the heap (RSS also counts the ring buffers' pages, resident once events \
         have gone round them).\n"
    );
    println!(
        "| sockets | daemon | RSS MiB (idle → now, peak) | bytes per socket: RSS / anon | startup to /ready | one scrape | lost events |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mib = |k: u64| k as f64 / 1024.0;
    for r in rows {
        for (name, d) in [
            ("started before (traced)", &r.traced),
            ("started after (baseline)", &r.baseline),
        ] {
            let (rss, anon) = r.per_socket(d);
            println!(
                "| {} ({} processes, {:.1} s to open; `ss -Htan` {:.2} s) | {name} | {:.1} → {:.1}, {:.1} | {rss:.0} / {anon:.0} | {:.2} s | {} | {} |",
                r.sockets,
                r.holders,
                r.setup.as_secs_f64(),
                r.ss.as_secs_f64(),
                mib(r.idle.rss_kib),
                mib(d.mem.rss_kib),
                mib(d.peak_kib),
                d.startup.as_secs_f64(),
                if std::ptr::eq(d, &r.baseline) {
                    format!(
                        "{:.0} ms ({} KiB)",
                        r.scrape.as_secs_f64() * 1000.0,
                        r.scrape_bytes / 1024
                    )
                } else {
                    "–".into()
                },
                d.lost,
            );
        }
    }
}
