//! The streaming tracer and the daemon: a front-end of the live driver ([`Driver`]: kernel,
//! path, drains, `--pid`, loss reports), adding the output sink, the metrics server,
//! `--duration`, signals and the exit summary. The per-event path itself lives in `pipeline`:
//! this module is a loop and a sink (the replay front-end is in `replay`).

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cli::LiveConfig;
use crate::driver::{Driver, DriverOptions, Shared};
use crate::engine::{Engine, EngineConfig};
use crate::event::{self, Comm, TcpState, Transition};
use crate::metrics;
use crate::output::{self, Output};
use crate::pipeline::{RecordContext, Sink};
use crate::record::{CloseRecord, LeakRecord, Owner};

pub use crate::live::ReaderStats;

/// The streaming and daemon front-ends' sink: the output, plus one structured warning per
/// leak in daemon mode (for the journal).
struct LiveSink<W: Write> {
    out: Output<W>,
    daemon: bool,
}

impl<W: Write> Sink for LiveSink<W> {
    fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        self.out.transition(t, owner)
    }

    fn close(&mut self, c: &CloseRecord, cx: &RecordContext) -> io::Result<()> {
        self.out.close(c, cx)
    }

    fn reset(&mut self, r: &crate::rst::ResetSent) -> io::Result<()> {
        self.out.reset(r)
    }

    fn leak(&mut self, l: &LeakRecord, cx: &RecordContext) -> io::Result<()> {
        if self.daemon {
            tracing::warn!(
                pid = l.owner.map(|o| o.pid),
                comm = %l.owner.map(|o| o.comm).unwrap_or_default(),
                container = cx.cgroup.as_ref().and_then(|c| c.container_id).map(|id| id.short().to_owned()),
                container_id = cx.cgroup.as_ref().and_then(|c| c.container_id).map(|id| id.as_str().to_owned()),
                cgroup = cx.cgroup.as_ref().map(|c| crate::untrusted::Escaped::str(&c.path, crate::untrusted::PATH_SHOWN_MAX).to_string()),
                netns = l.id.netns,
                local = %event::EndpointFmt(l.id.saddr, l.id.sport),
                peer = %event::EndpointFmt(l.id.daddr, l.id.dport),
                age = %output::Dur(l.age_ns),
                "CLOSE_WAIT leak: the peer closed, the owner has not"
            );
        }
        self.out.leak(l, cx)
    }
}

/// Live tracing until a signal, `--duration`, or the end of `--pid`'s process.
pub async fn live(mut cfg: LiveConfig) -> anyhow::Result<()> {
    cfg.kernel.pid = crate::live::resolve_pid(cfg.kernel.pid)?;
    // Bind the metrics port before anything is loaded, so a busy port is reported first.
    // The web configuration first of all: a bad file is one line at start.
    let web = match &cfg.web_config_file {
        Some(path) => {
            let web = crate::webconfig::load(path)?;
            for note in &web.notes {
                tracing::warn!("--web-config-file {}: {note}", path.display());
            }
            Some(Arc::new(web))
        }
        None => None,
    };
    let bound = match cfg.metrics_addr {
        Some(addr) => {
            let b = crate::server::bind(addr).await?;
            Some(match web {
                Some(w) => b.with_web_config(w),
                None => b,
            })
        }
        None => None,
    };
    let daemon = cfg.metrics_addr.is_some();
    let mut driver = Driver::open(
        cfg.kernel,
        DriverOptions {
            time_wait: cfg.time_wait,
            run_time_stats: cfg.bpf_stats,
            program_stats: daemon,
        },
    )?;
    let own_netns = driver.lock().path.own_netns();
    let mut sink = LiveSink {
        out: Output::new(
            io::stdout().lock(),
            cfg.format,
            cfg.show,
            output::realtime_offset_ns(),
        )
        .with_own_netns(own_netns),
        daemon,
    };
    // The run's settings first, so that a replay of the recording uses them.
    sink.out
        .meta(&cfg.meta(driver.attach_kind(), driver.resets_traced()))?;
    // Attached first, then the baseline: a socket that changes state in between is seen by
    // both, and the traced state wins.
    driver.baseline()?;

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = bound.map(|b| {
        let addr = b.local_addr();
        let source = {
            let shared = driver.shared();
            move || {
                let now = output::clock_ns(libc::CLOCK_MONOTONIC);
                crate::driver::lock(&shared).metrics(now)
            }
        };
        let registry = Arc::new(metrics::registry(Arc::new(source), cfg.max_process_series));
        let scheme = if b.tls() { "https" } else { "http" };
        eprintln!("tracer: serving metrics on {scheme}://{addr}/metrics");
        tokio::spawn(b.serve(registry, ready.clone(), async {
            let _ = stop_rx.await;
        }))
    });

    // Installed before tracing is announced, and kept for the whole run: a signal that arrives
    // while another branch of the loop is ready is then still pending at the next iteration.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    eprintln!(
        "tracer: tracing TCP state changes (sock:inet_sock_set_state via {}); Ctrl-C to stop",
        driver.attach_kind()
    );
    ready.store(true, Ordering::Release);
    // Leaks found in the baseline are reported first.
    driver.tick(&mut sink)?;

    let deadline = async {
        match cfg.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);

    let reason = loop {
        tokio::select! {
            wake = driver.wait() => {
                if driver.handle(wake?, &mut sink)? {
                    let pid = cfg.kernel.pid.unwrap_or_default();
                    break format!("process {pid} exited");
                }
            }
            _ = &mut deadline => break "duration reached".to_owned(),
            _ = sigint.recv() => break "interrupted".to_owned(),
            _ = sigterm.recv() => break "terminated".to_owned(),
        }
        sink.out.flush().context("writing output")?;
    };
    ready.store(false, Ordering::Release);
    // Stop serving first: a scrape in flight needs the lock taken below.
    if let Some(s) = server {
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(3), s).await;
    }
    let summary = driver.finish(&mut sink)?;
    eprintln!("tracer: stopping: {reason}");
    sink.out.summary(&summary)?;
    sink.out.flush().context("writing output")?;
    exit_line(&driver.lock());
    if let Some(p) = driver.program_stats()
        && p.run_count > 0
    {
        eprintln!(
            "tracer: kernel program: {} runs, {:.0} ns per run (bpf_stats)",
            p.run_count,
            p.run_time.as_nanos() as f64 / p.run_count as f64
        );
    }
    Ok(())
}

fn exit_line(sh: &Shared) {
    let (c, counts, r) = (&sh.kernel, sh.path.counts(), &sh.reader);
    eprintln!(
        "tracer: {} events, {} lost, {} undecodable, {} filtered in the kernel; read in {} kernel wakeups and {} timer drains",
        counts.events,
        c.lost(),
        counts.undecodable,
        c.filtered,
        r.wakeups,
        r.timer_drains
    );
    if let Some(ns) = sh.path.netns_stats()
        && (ns.enter_failed > 0 || ns.unreachable > 0 || ns.sockstat_failed > 0)
    {
        eprintln!(
            "tracer: network namespaces: {} entered, {} could not be entered, {} questions about namespaces no process leads to (owners there unconfirmed), {} left out of a TIME_WAIT count (gone while it was read)",
            ns.entered, ns.enter_failed, ns.unreachable, ns.sockstat_failed
        );
    }
}

/// `tracer bench-engine`: engine throughput on one core over a synthetic stream, and the
/// memory per tracked socket with `sockets` sockets tracked (RSS growth).
pub fn bench_engine(connections: u64, sockets: u64) -> anyhow::Result<()> {
    let mut engine = Engine::new(EngineConfig::default());
    let stream: Vec<Transition> = crate::engine::synthetic_stream(connections, 1024, 42).collect();
    let mut recs = Vec::with_capacity(64);
    let start = Instant::now();
    for t in &stream {
        engine.on_transition(t, &mut recs);
        recs.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    let events = stream.len() as f64;
    drop(stream);

    let rss_before = rss_kib();
    let mut big = Engine::new(EngineConfig {
        capacity: sockets as usize,
        ..EngineConfig::default()
    });
    let comm = Comm::new("bench");
    for i in 0..sockets {
        let t = Transition {
            ts_ns: 1_000 + i,
            sk: 0xffff_8880_0000_0000 + i * 2048,
            family: event::Family::V4,
            saddr: IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
            sport: (i % 60_000) as u16 + 1024,
            daddr: IpAddr::from([10, 1, 0, 1]),
            dport: 443,
            old: TcpState::Close,
            new: TcpState::SynSent,
            dwell_ns: None,
            netns: 0,
            sk_err: 0,
            task_pid: 1,
            task_tid: 1,
            task_comm: comm,
            idle: crate::event::Idle::NONE,
        };
        big.on_transition(&t, &mut recs);
        recs.clear();
    }
    let rss_after = rss_kib();
    let per_socket = (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / sockets as f64;
    println!(
        "{{\"events\":{},\"seconds\":{:.3},\"events_per_s\":{:.0},\"sockets\":{},\"tracked\":{},\"rss_bytes_per_socket\":{:.0},\"computed_bytes_per_socket\":{}}}",
        events as u64,
        secs,
        events / secs,
        sockets,
        big.tracked(),
        per_socket,
        big.approx_bytes_per_socket()
    );
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
