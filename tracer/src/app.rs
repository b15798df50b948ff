//! Wiring: configuration → kernel program → ring-buffer reader → engine → output and metrics;
//! owner attribution, the startup baseline, `--pid`, signals, `--duration`, the exit summary,
//! and offline replay.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::attribution::{self, Attributor, AttributorConfig};
use crate::bpf::{KernelCounters, LoadOptions, ProgramStats, Tracer};
use crate::cli::{LiveConfig, ReplayConfig};
use crate::engine::{Engine, EngineConfig, Seed};
use crate::event::{self, Comm, TcpState, Transition};
use crate::metrics::{self, HistogramSnapshot, MetricsSnapshot, OwnerCloseWait};
use crate::output::{self, Format, LeakContext, Output};
use crate::record::{CloseKind, LeakRecord, Owner, OwnerSource, Record, SocketId};
use crate::sockdiag::{FourTuple, SockDiag, StateMask};

/// Counts kept by the reader.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderStats {
    /// Records decoded from the ring buffer.
    pub events: u64,
    /// Records that could not be decoded (should stay 0; counted, never silent).
    pub undecodable: u64,
    /// Times the kernel woke the reader (ring buffer past its wakeup threshold).
    pub wakeups: u64,
    /// Drains run by the reader's own timer.
    pub timer_drains: u64,
}

/// What the reader shares with the metrics endpoint. Locked once per drained batch and once
/// per scrape; never per event.
struct Shared {
    engine: Engine,
    reader: ReaderStats,
    /// Transitions per (from, to), by `TcpState::index`.
    transitions: [[u64; 12]; 12],
    kernel: KernelCounters,
    program: Option<ProgramStats>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who owns what: listener owners for accepted sockets, and the sockets of the startup baseline
/// (known by 4-tuple only until their first traced event names their kernel address).
#[derive(Default)]
struct Owners {
    /// Local port → owner of the listener(s) on it.
    listeners: HashMap<u16, Owner>,
    /// Baseline sockets by 4-tuple → the placeholder key the engine knows them by.
    baseline: HashMap<FourTuple, u64>,
}

impl Owners {
    /// The owner a transition reveals by running in the owner's own context, or by being a
    /// child of a listener whose owner is known.
    fn revealed_by(&self, t: &Transition) -> Option<Owner> {
        use TcpState::*;
        let context = matches!(
            (t.old, t.new),
            (Close, SynSent) | (Close, Listen) | (Established, FinWait1) | (CloseWait, LastAck)
        );
        if context && t.task_pid != 0 {
            return Some(Owner {
                pid: t.task_pid,
                comm: t.task_comm,
                source: OwnerSource::Context,
            });
        }
        if (t.old, t.new) == (Listen, SynRecv) {
            return self.listeners.get(&t.sport).map(|o| Owner {
                source: if o.source == OwnerSource::Shared {
                    OwnerSource::Shared
                } else {
                    OwnerSource::Listener
                },
                ..*o
            });
        }
        None
    }

    fn track_listener(&mut self, t: &Transition, owner: Option<Owner>) {
        match (t.old, t.new) {
            (TcpState::Close, TcpState::Listen) => {
                if let Some(o) = owner {
                    self.listeners.insert(t.sport, o);
                }
            }
            (TcpState::Listen, TcpState::Close) => {
                self.listeners.remove(&t.sport);
            }
            _ => {}
        }
    }
}

fn tuple_of(t: &Transition) -> FourTuple {
    FourTuple {
        family: t.family,
        saddr: t.saddr,
        sport: t.sport,
        daddr: t.daddr,
        dport: t.dport,
    }
    .normalized()
}

/// Live tracing until a signal, `--duration`, or the end of `--pid`'s process.
pub async fn live(mut cfg: LiveConfig) -> anyhow::Result<()> {
    if let Some(pid) = cfg.pid {
        if !attribution::process_alive(pid) {
            anyhow::bail!("no running process with pid {pid}");
        }
        // A thread id names its process: sockets belong to the whole thread group.
        if let Some(tgid) = tgid_of(pid)
            && tgid != pid
        {
            eprintln!("tracer: {pid} is a thread of process {tgid}; following process {tgid}");
            cfg.pid = Some(tgid);
        }
    }
    // Bind the metrics port before anything is loaded, so a busy port is reported first.
    let bound = match cfg.metrics_addr {
        Some(addr) => Some(crate::server::bind(addr).await?),
        None => None,
    };

    let mut tracer = Tracer::load(&LoadOptions {
        filter: cfg.pid.is_some(),
        ring_bytes: cfg.ring_bytes,
        ..LoadOptions::default()
    })?;
    if let Some(pid) = cfg.pid {
        tracer.filter_pid(pid)?;
    }
    if bound.is_some() {
        // Run-time accounting for tracer_bpf_* metrics; a small cost per event, daemon only.
        if let Err(e) = tracer.enable_stats() {
            tracing::warn!("BPF run-time statistics unavailable: {e}");
        }
    }
    let ring = tracer.take_ring()?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with epoll: {e}"))?;

    let threshold_ns = cfg.close_wait_threshold.as_nanos() as u64;
    let shared = Arc::new(Mutex::new(Shared {
        engine: Engine::new(EngineConfig {
            capacity: cfg.capacity,
            close_wait_threshold_ns: threshold_ns,
        }),
        reader: ReaderStats::default(),
        transitions: [[0; 12]; 12],
        kernel: KernelCounters::default(),
        program: None,
    }));
    let mut owners = Owners::default();
    let mut attributor = Attributor::new(AttributorConfig::default());
    let mut diag = SockDiag::open().context("opening sock_diag")?;

    let stdout = io::stdout().lock();
    let mut out = Output::new(stdout, cfg.format, cfg.show, output::realtime_offset_ns());
    let mut records = Vec::with_capacity(256);

    // Attached first, then the baseline: a socket that changes state in between is seen by
    // both, and the traced state wins.
    if cfg.baseline {
        let seeded = baseline(
            &mut lock(&shared),
            &mut owners,
            &mut attributor,
            &mut diag,
            &mut tracer,
            cfg.pid,
            &mut records,
        )?;
        tracing::debug!("startup baseline: {seeded} sockets");
    }

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = bound.map(|b| {
        let addr = b.local_addr();
        let source = {
            let shared = shared.clone();
            move || {
                let now = output::clock_ns(libc::CLOCK_MONOTONIC);
                snapshot(&lock(&shared), now, threshold_ns)
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
        tracer.attach_kind()
    );
    ready.store(true, Ordering::Release);
    let daemon = cfg.metrics_addr.is_some();
    let mut ctx = Ctx {
        owners: &mut owners,
        attributor: &mut attributor,
        diag: &mut diag,
        pid: cfg.pid,
        records: &mut records,
        daemon,
    };
    // Leaks found in the baseline are reported first.
    emit(&mut lock(&shared), &mut ctx, &mut out)?;

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
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                lock(&shared).reader.wakeups += 1;
                drain(guard.get_inner_mut(), &shared, &mut ctx, &mut out)?;
                guard.clear_ready();
            }
            _ = drain_timer.tick() => {
                lock(&shared).reader.timer_drains += 1;
                drain(ring.get_mut(), &shared, &mut ctx, &mut out)?;
                {
                    let mut sh = lock(&shared);
                    clock_tick(&mut sh, &mut ctx, &mut out, &tracer, &mut lost_reported)?;
                    if daemon && last_program_read.elapsed() >= Duration::from_secs(1) {
                        sh.program = tracer.program_stats();
                        last_program_read = Instant::now();
                    }
                }
                if let Some(pid) = cfg.pid
                    && !attribution::process_alive(pid)
                {
                    // The kernel closes what the process held ~1 ms after it exits.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break format!("process {pid} exited");
                }
            }
            _ = &mut deadline => break "duration reached".to_owned(),
            _ = sigint.recv() => break "interrupted".to_owned(),
            _ = sigterm.recv() => break "terminated".to_owned(),
        }
        out.flush().context("writing output")?;
    };
    ready.store(false, Ordering::Release);
    // Stop serving first: a scrape in flight needs the lock taken below.
    if let Some(s) = server {
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(3), s).await;
    }
    drain(ring.get_mut(), &shared, &mut ctx, &mut out)?;
    let mut sh = lock(&shared);
    let now = clock_tick(&mut sh, &mut ctx, &mut out, &tracer, &mut lost_reported)?;
    eprintln!("tracer: stopping: {reason}");
    let mut summary = sh.engine.summary(now);
    summary.events_lost = Some(sh.kernel.ring_full);
    write_summary(&mut out, &summary)?;
    out.flush().context("writing output")?;
    exit_line(&sh.reader, &sh.kernel);
    if let Some(p) = tracer.program_stats()
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

/// A clock reading for the engine (leak timers), its records written out, and the kernel
/// counters refreshed (lost events reported). Returns the time used.
fn clock_tick<W: Write>(
    sh: &mut Shared,
    ctx: &mut Ctx<'_>,
    out: &mut Output<W>,
    tracer: &Tracer,
    lost_reported: &mut u64,
) -> anyhow::Result<u64> {
    let now = output::clock_ns(libc::CLOCK_MONOTONIC);
    sh.engine.tick(now, ctx.records);
    emit(sh, ctx, out)?;
    sh.kernel = tracer.counters();
    report_lost(&sh.kernel, lost_reported);
    Ok(now)
}

/// Per-run state the record handling needs.
struct Ctx<'a> {
    owners: &'a mut Owners,
    attributor: &'a mut Attributor,
    diag: &'a mut SockDiag,
    pid: Option<u32>,
    records: &'a mut Vec<Record>,
    daemon: bool,
}

/// Seeds the engine with the sockets that exist now (sock_diag), with their owners.
fn baseline(
    sh: &mut Shared,
    owners: &mut Owners,
    attributor: &mut Attributor,
    diag: &mut SockDiag,
    tracer: &mut Tracer,
    pid: Option<u32>,
    out: &mut Vec<Record>,
) -> anyhow::Result<usize> {
    let sockets = diag
        .dump(StateMask::ALL)
        .context("reading existing TCP sockets (sock_diag)")?;
    // With --pid only that process's fd table is read.
    let index = attribution::scan_inodes(pid);
    let found = attribution::owners_of_baseline(&sockets, &index);
    let now = output::clock_ns(libc::CLOCK_MONOTONIC);
    sh.engine.tick(now, out);
    let mut seeded = 0;
    for (s, owner) in sockets.iter().zip(found) {
        if pid.is_some() && owner.map(|o| o.pid) != pid {
            continue;
        }
        if matches!(s.state, TcpState::TimeWait | TcpState::Close) {
            continue;
        }
        // The engine keys sockets by kernel address, which sock_diag does not give; the cookie
        // stands in (never a kernel address) until the socket's first traced event.
        let key = s.cookie & !(1 << 63);
        owners.baseline.insert(s.tuple().normalized(), key);
        if s.state == TcpState::Listen
            && let Some(o) = owner
        {
            owners.listeners.insert(s.sport, o);
        }
        if pid.is_some() {
            tracer.filter_port(s.sport)?;
        }
        let since = s
            .close_wait_since_estimate_ms()
            .map(|ms| now.saturating_sub(u64::from(ms) * 1_000_000));
        sh.engine.seed(
            &Seed {
                id: SocketId {
                    sk: key,
                    family: s.family,
                    saddr: s.saddr,
                    sport: s.sport,
                    daddr: s.daddr,
                    dport: s.dport,
                },
                state: s.state,
                owner,
                state_since_ns: since,
            },
            out,
        );
        seeded += 1;
    }
    attributor.adopt_index(index, Instant::now());
    Ok(seeded)
}

/// Drains everything the ring buffer holds. Each item is decoded (copied out) at once; the
/// borrow of ring memory never outlives the loop body.
fn drain<W: Write>(
    ring: &mut RingBuf<MapData>,
    shared: &Mutex<Shared>,
    ctx: &mut Ctx<'_>,
    out: &mut Output<W>,
) -> anyhow::Result<()> {
    let mut sh = lock(shared);
    while let Some(item) = ring.next() {
        let t = event::decode(&item);
        drop(item);
        match t {
            Ok(t) => on_transition(&mut sh, ctx, &t, out)?,
            Err(e) => {
                sh.reader.undecodable += 1;
                tracing::warn!("undecodable event: {e}");
            }
        }
    }
    Ok(())
}

fn on_transition<W: Write>(
    sh: &mut Shared,
    ctx: &mut Ctx<'_>,
    t: &Transition,
    out: &mut Output<W>,
) -> anyhow::Result<()> {
    sh.reader.events += 1;
    sh.transitions[t.old.index()][t.new.index()] += 1;
    // A socket of the startup baseline, seen by its kernel address for the first time. Births
    // are new sockets: the program is attached before the baseline is read, so a baseline
    // socket's own close is always seen before its 4-tuple can be born again.
    if !ctx.owners.baseline.is_empty()
        && !crate::engine::classify::is_birth(t.old, t.new)
        && sh.engine.state_of(t.sk).is_none()
        && let Some(key) = ctx.owners.baseline.remove(&tuple_of(t))
    {
        sh.engine.rekey(key, t.sk);
    }
    let revealed = ctx.owners.revealed_by(t);
    ctx.owners.track_listener(t, revealed);
    if let Some(o) = revealed {
        sh.engine.set_owner(t.sk, o);
    }
    sh.engine.on_transition(t, ctx.records);
    if let Some(o) = revealed {
        // A socket born by this transition exists in the engine only now.
        sh.engine.set_owner(t.sk, o);
    }
    let owner = sh.engine.owner(t.sk).or(revealed);
    if ctx.pid.is_none_or(|p| owner.is_some_and(|o| o.pid == p)) {
        out.transition(t, owner.as_ref())
            .context("writing output")?;
    }
    if !ctx.records.is_empty() {
        emit(sh, ctx, out)?;
    }
    Ok(())
}

/// Writes out the records the engine produced, naming leak owners precisely first.
fn emit<W: Write>(sh: &mut Shared, ctx: &mut Ctx<'_>, out: &mut Output<W>) -> anyhow::Result<()> {
    if ctx.records.is_empty() {
        return Ok(());
    }
    let mut held: Option<HashMap<u32, u64>> = None;
    let now = sh.engine.clock_ns();
    // Taken out (capacity kept) so the loops can use the rest of `ctx`.
    let mut records = std::mem::take(ctx.records);
    // Owners of all leaks first, so the per-owner counts below see every confirmed holder.
    for rec in records.iter_mut() {
        if let Record::Leak(l) = rec
            && let Some(o) = confirm_owner(ctx, l)
        {
            l.owner = Some(o);
            sh.engine.set_owner(l.id.sk, o);
        }
    }
    for rec in records.drain(..) {
        match rec {
            Record::Close(c) => {
                if ctx.pid.is_none_or(|p| c.owner.is_some_and(|o| o.pid == p)) {
                    out.close(&c).context("writing output")?;
                }
            }
            Record::Leak(l) => {
                if ctx.pid.is_some_and(|p| l.owner.is_none_or(|o| o.pid != p)) {
                    continue;
                }
                let counts = held.get_or_insert_with(|| {
                    sh.engine
                        .close_wait_by_owner(now)
                        .into_iter()
                        .filter_map(|o| Some((o.owner?.pid, o.close_wait)))
                        .fold(HashMap::new(), |mut m, (p, n)| {
                            *m.entry(p).or_insert(0) += n;
                            m
                        })
                });
                let lc = LeakContext {
                    cmdline: l.owner.and_then(|o| attribution::process_cmdline(o.pid)),
                    close_wait_held: l.owner.and_then(|o| counts.get(&o.pid).copied()),
                };
                if ctx.daemon {
                    tracing::warn!(
                        pid = l.owner.map(|o| o.pid),
                        comm = %l.owner.map(|o| o.comm).unwrap_or_default(),
                        local = %event::EndpointFmt(l.id.saddr, l.id.sport),
                        peer = %event::EndpointFmt(l.id.daddr, l.id.dport),
                        age = %output::Dur(l.age_ns),
                        "CLOSE_WAIT leak: the peer closed, the owner has not"
                    );
                }
                out.leak(&l, &lc).context("writing output")?;
            }
        }
    }
    *ctx.records = records;
    Ok(())
}

/// The owner a leak names must be the process holding the socket now: confirmed through the
/// socket's inode (fds can be passed, listeners shared, children forked).
fn confirm_owner(ctx: &mut Ctx<'_>, l: &LeakRecord) -> Option<Owner> {
    if l.owner.is_some_and(|o| o.source == OwnerSource::Inode) {
        return l.owner;
    }
    ctx.attributor.resolve(ctx.diag, &l.id, Instant::now())
}

fn report_lost(c: &KernelCounters, reported: &mut u64) {
    if c.ring_full > *reported {
        eprintln!(
            "tracer: lost {} events: the ring buffer was full (total lost {}); try a larger --ring-mib",
            c.ring_full - *reported,
            c.ring_full
        );
        *reported = c.ring_full;
    }
}

fn exit_line(stats: &ReaderStats, c: &KernelCounters) {
    eprintln!(
        "tracer: {} events, {} lost, {} undecodable, {} sockets without dwell tracking (kernel table full), {} filtered in the kernel; read in {} kernel wakeups and {} timer drains",
        stats.events,
        c.ring_full,
        stats.undecodable,
        c.socket_table_full,
        c.filtered,
        stats.wakeups,
        stats.timer_drains
    );
}

fn write_summary<W: Write>(
    out: &mut Output<W>,
    summary: &crate::engine::Summary,
) -> anyhow::Result<()> {
    match out.format() {
        Format::Json => {
            let line = serde_json::to_string(summary).context("encoding the summary")?;
            out.raw_line(&line)?;
        }
        Format::Text => out.raw_line(&summary.render_text())?,
    }
    Ok(())
}

/// The metrics view of the shared state, taken at scrape time.
fn snapshot(sh: &Shared, now_ns: u64, threshold_ns: u64) -> MetricsSnapshot {
    let e = &sh.engine;
    let mut sockets = e.sockets_per_state();
    // The tracepoint never shows TIME_WAIT (a separate timewait socket runs it); the kernel
    // counts those sockets in /proc/net/sockstat.
    if let Some(tw) = time_wait_count() {
        sockets[TcpState::TimeWait.index()] = tw;
    }
    MetricsSnapshot {
        transitions: sh.transitions,
        dwell: TcpState::ALL
            .into_iter()
            .map(|st| {
                let h = e.dwell_histogram(st);
                (
                    st,
                    HistogramSnapshot {
                        buckets: h.buckets().filter(|(le, _)| le.is_finite()).collect(),
                        count: h.count(),
                        sum_seconds: h.sum_seconds(),
                    },
                )
            })
            .collect(),
        closes: CloseKind::ALL
            .into_iter()
            .map(|k| (k, e.stats().closes_of(k)))
            .collect(),
        sockets,
        close_wait: e
            .close_wait_by_owner(now_ns)
            .into_iter()
            .map(|o| OwnerCloseWait {
                pid: o.owner.map(|k| k.pid),
                comm: o.owner.map(|k| k.comm),
                sockets: o.close_wait,
                leaking: o.leaking,
            })
            .collect(),
        close_wait_oldest_seconds: e.oldest_close_wait_ns(now_ns).map(|ns| ns as f64 / 1e9),
        leak_threshold_seconds: Some(threshold_ns as f64 / 1e9),
        leaks_detected_total: e.stats().leaks,
        events_total: sh.reader.events,
        events_lost_total: sh.kernel.ring_full,
        events_malformed_total: sh.reader.undecodable,
        tracked_sockets: e.tracked() as u64,
        evictions_total: e.stats().evicted + e.stats().evicted_leaking,
        bpf_transitions_seen_total: Some(sh.kernel.seen),
        bpf_filtered_total: Some(sh.kernel.filtered),
        bpf_socket_table_full_total: Some(sh.kernel.socket_table_full),
        bpf_run_time_ns: sh.program.map(|p| p.run_time.as_nanos() as u64),
        bpf_run_count: sh.program.map(|p| p.run_count),
    }
}

/// The thread-group id of a task, from /proc/PID/status.
fn tgid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// TIME_WAIT sockets of the host, from /proc/net/sockstat (`TCP: … tw N`).
fn time_wait_count() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "tw" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Offline replay of a recording made with `tracer --json`.
pub fn replay(cfg: &ReplayConfig) -> anyhow::Result<()> {
    let input: Box<dyn io::BufRead> = if cfg.file.as_os_str() == "-" {
        Box::new(io::BufReader::new(io::stdin().lock()))
    } else {
        let f = std::fs::File::open(&cfg.file)
            .with_context(|| format!("cannot open {}", cfg.file.display()))?;
        Box::new(io::BufReader::with_capacity(1 << 16, f))
    };
    let mut engine = Engine::new(EngineConfig {
        capacity: cfg.capacity,
        close_wait_threshold_ns: cfg.close_wait_threshold.as_nanos() as u64,
    });
    let stdout = io::stdout().lock();
    let mut out = Output::new(stdout, cfg.format, cfg.show, 0);
    let mut write_err: Option<io::Error> = None;
    let stats = crate::replay::replay(
        input,
        &mut engine,
        |rec| {
            let r = match rec {
                Record::Close(c) => out.close(c),
                Record::Leak(l) => out.leak(l, &LeakContext::default()),
            };
            if let Err(e) = r
                && write_err.is_none()
            {
                write_err = Some(e);
            }
        },
        |line, err| eprintln!("tracer: {}: line {line}: {err}", cfg.file.display()),
    )
    .with_context(|| format!("reading {}", cfg.file.display()))?;
    if let Some(e) = write_err {
        return Err(e).context("writing output");
    }
    let mut summary = engine.summary(engine.clock_ns());
    summary.skipped_lines = Some(stats.skipped);
    write_summary(&mut out, &summary)?;
    out.flush().context("writing output")?;
    if stats.skipped > 0 {
        eprintln!(
            "tracer: skipped {} malformed line(s) of {}",
            stats.skipped, stats.lines
        );
    }
    Ok(())
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
            dwell_table_full: false,
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
