//! Wiring of the streaming tracer and the daemon: configuration → kernel program →
//! ring-buffer reader → [`Pipeline`] → output and metrics; the startup baseline, `--pid`,
//! signals, `--duration`, the exit summary. The per-event path itself lives in `pipeline`: this
//! module is loops and sinks (the replay front-end is in `replay`).

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::attribution;
use crate::bpf::{KernelCounters, ProgramStats};
use crate::cli::LiveConfig;
use crate::engine::{Engine, EngineConfig};
use crate::event::{self, Comm, TcpState, Transition};
use crate::live::{Kernel, KernelOptions};
use crate::metrics::{self, MetricsSnapshot};
use crate::output::{self, Output};
use crate::pipeline::{Pipeline, PipelineConfig, RecordContext, Sink};
use crate::record::{CloseRecord, LeakRecord, Owner};

pub use crate::live::ReaderStats;

/// What the reader shares with the metrics endpoint. Locked once per drained batch and once
/// per scrape; never per event.
struct Shared {
    path: Pipeline,
    reader: ReaderStats,
    kernel: KernelCounters,
    program: Option<ProgramStats>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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

    fn leak(&mut self, l: &LeakRecord, cx: &RecordContext) -> io::Result<()> {
        if self.daemon {
            tracing::warn!(
                pid = l.owner.map(|o| o.pid),
                comm = %l.owner.map(|o| o.comm).unwrap_or_default(),
                container = cx.cgroup.as_ref().and_then(|c| c.container_id).map(|id| id.short().to_owned()),
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

/// How long `--pid` keeps following the sockets of its process after the process is gone.
const EXIT_FOLLOW: Duration = Duration::from_secs(2);

/// Live tracing until a signal, `--duration`, or the end of `--pid`'s process.
pub async fn live(mut cfg: LiveConfig) -> anyhow::Result<()> {
    cfg.pid = crate::live::resolve_pid(cfg.pid)?;
    // Bind the metrics port before anything is loaded, so a busy port is reported first.
    let bound = match cfg.metrics_addr {
        Some(addr) => Some(crate::server::bind(addr).await?),
        None => None,
    };

    let mut kernel = Kernel::load(&KernelOptions {
        pid: cfg.pid,
        ring_bytes: cfg.ring_bytes,
        // Run-time accounting for the tracer_bpf_run* metrics: host-wide, so only when asked.
        run_time_stats: cfg.bpf_stats,
    })?;

    let mut path = Pipeline::live(PipelineConfig {
        engine: EngineConfig {
            capacity: cfg.capacity,
            close_wait_threshold_ns: cfg.close_wait_threshold.as_nanos() as u64,
        },
        pid: cfg.pid,
    })
    .context("opening sock_diag")?;
    path.set_time_wait_config(cfg.time_wait);
    let own_netns = path.own_netns();
    let shared = Arc::new(Mutex::new(Shared {
        path,
        reader: ReaderStats::default(),
        kernel: KernelCounters::default(),
        program: None,
    }));

    let daemon = cfg.metrics_addr.is_some();
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
    sink.out.meta(&cfg.meta(kernel.attach_kind()))?;

    // Attached first, then the baseline: a socket that changes state in between is seen by
    // both, and the traced state wins.
    if cfg.baseline {
        kernel.baseline(&mut lock(&shared).path)?;
    }

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = bound.map(|b| {
        let addr = b.local_addr();
        let source = {
            let shared = shared.clone();
            move || {
                let now = output::clock_ns(libc::CLOCK_MONOTONIC);
                snapshot(&mut lock(&shared), now)
            }
        };
        let registry = Arc::new(metrics::registry(Arc::new(source), cfg.max_process_series));
        eprintln!("tracer: serving metrics on http://{addr}/metrics");
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
        kernel.attach_kind()
    );
    ready.store(true, Ordering::Release);
    // Leaks found in the baseline are reported first.
    clock_tick(&mut lock(&shared), &mut sink, &mut kernel, &mut 0)?;

    let mut drain_timer = tokio::time::interval(cfg.drain_interval);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = async {
        match cfg.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut lost_reported = 0u64;
    let mut last_program_read = Instant::now();

    let reason = loop {
        tokio::select! {
            woken = kernel.wakeup() => {
                woken?;
                let mut sh = lock(&shared);
                kernel.drain(&mut sh.path, &mut sink).context("writing output")?;
                sh.reader = kernel.reader_stats();
            }
            // A drain that stopped at its batch limit goes on at once, after the other
            // branches have had their turn.
            _ = std::future::ready(()), if kernel.has_backlog() => {
                let mut sh = lock(&shared);
                kernel.drain(&mut sh.path, &mut sink).context("writing output")?;
            }
            _ = drain_timer.tick() => {
                {
                    let mut sh = lock(&shared);
                    let now = kernel.timer_drain(&mut sh.path, &mut sink).context("writing output")?;
                    refresh_counters(&mut sh, &kernel, &mut lost_reported);
                    // Rate-limited inside; after the drain, so the dump and the trace agree.
                    if let Some(took) = sh.path.resync_time_wait(now) {
                        tracing::debug!("TIME_WAIT re-sync took {took:?}");
                    }
                    if daemon && last_program_read.elapsed() >= Duration::from_secs(1) {
                        sh.program = kernel.program_stats();
                        last_program_read = Instant::now();
                    }
                }
                if let Some(pid) = cfg.pid
                    && !attribution::process_alive(pid)
                {
                    // The kernel closes what the process held just after it exits (a socket
                    // in LAST_ACK waits for the peer's ACK): follow until none is left, within
                    // a bound for sockets whose end is never seen.
                    let until = Instant::now() + EXIT_FOLLOW;
                    loop {
                        let left = {
                            let mut sh = lock(&shared);
                            kernel.drain(&mut sh.path, &mut sink).context("writing output")?;
                            sh.path.engine().sockets_owned_by(pid)
                        };
                        if left == 0 || Instant::now() >= until {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
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
    let mut sh = lock(&shared);
    kernel
        .drain(&mut sh.path, &mut sink)
        .and_then(|()| kernel.flush(&mut sh.path, &mut sink))
        .context("writing output")?;
    let now = clock_tick(&mut sh, &mut sink, &mut kernel, &mut lost_reported)?;
    eprintln!("tracer: stopping: {reason}");
    let mut summary = sh.path.summary(now);
    summary.events_lost = Some(sh.kernel.lost());
    sink.out.summary(&summary)?;
    sink.out.flush().context("writing output")?;
    exit_line(&sh);
    if let Some(p) = kernel.program_stats()
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

/// A clock reading for the path (leak timers), its records written out, and the kernel and
/// reader counters refreshed (lost events reported). Returns the time used.
fn clock_tick(
    sh: &mut Shared,
    sink: &mut impl Sink,
    kernel: &mut Kernel,
    lost_reported: &mut u64,
) -> anyhow::Result<u64> {
    let now = kernel.tick(&mut sh.path, sink).context("writing output")?;
    refresh_counters(sh, kernel, lost_reported);
    Ok(now)
}

/// The kernel's and the reader's counters, as of the kernel's last tick, copied where the
/// metrics endpoint reads them; newly lost events reported.
fn refresh_counters(sh: &mut Shared, kernel: &Kernel, lost_reported: &mut u64) {
    sh.kernel = kernel.counters();
    sh.reader = kernel.reader_stats();
    report_lost(&sh.kernel, lost_reported);
}

fn report_lost(c: &KernelCounters, reported: &mut u64) {
    if c.lost() > *reported {
        eprintln!(
            "tracer: lost {} events (total lost {}: {} with the ring buffer full — try a larger --ring-mib; {} skipped by the kernel, the program already running on that CPU)",
            c.lost() - *reported,
            c.lost(),
            c.ring_full,
            c.skipped
        );
        *reported = c.lost();
    }
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

/// The metrics view: the path's, plus the kernel's and the reader's counters.
fn snapshot(sh: &mut Shared, now_ns: u64) -> MetricsSnapshot {
    let mut m = sh.path.metrics(now_ns);
    m.events_lost_total = sh.kernel.lost();
    m.bpf_transitions_seen_total = Some(sh.kernel.seen);
    m.bpf_filtered_total = Some(sh.kernel.filtered);
    m.bpf_recursion_misses_total = Some(sh.kernel.skipped);
    m.bpf_recursion_recovered_total = Some(sh.kernel.recovered);
    m.bpf_run_time_ns = sh.program.map(|p| p.run_time.as_nanos() as u64);
    m.bpf_run_count = sh.program.map(|p| p.run_count);
    m
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
