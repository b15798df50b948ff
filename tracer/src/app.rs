//! Wiring: configuration → kernel program → ring-buffer reader → engine → output and metrics;
//! signals, `--duration`, and the exit summary.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::bpf::{KernelCounters, LoadOptions, Tracer};
use crate::cli::LiveConfig;
use crate::event::{self, Transition};
use crate::output::{self, Output};

/// Counts kept by the reader.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderStats {
    /// Records decoded from the ring buffer.
    pub events: u64,
    /// Records that could not be decoded (should stay 0; counted, never silent).
    pub undecodable: u64,
}

/// Runs live tracing until a signal, `--duration`, or the end of `--pid`'s process.
pub async fn live(cfg: LiveConfig) -> anyhow::Result<()> {
    let mut tracer = Tracer::load(&LoadOptions {
        filter: cfg.pid.is_some(),
        ring_bytes: cfg.ring_bytes,
        ..LoadOptions::default()
    })?;
    let ring = tracer.take_ring()?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with epoll: {e}"))?;
    eprintln!("tracer: tracing TCP state changes (sock:inet_sock_set_state); Ctrl-C to stop");

    let stdout = io::stdout().lock();
    let mut out = Output::new(
        stdout,
        cfg.format,
        cfg.show,
        output::realtime_offset_ns(),
    );
    let mut stats = ReaderStats::default();
    let mut lost_reported = 0u64;

    let mut drain_timer = tokio::time::interval(cfg.drain_interval);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = async {
        match cfg.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                drain(guard.get_inner_mut(), &mut stats, &mut out)?;
                guard.clear_ready();
            }
            _ = drain_timer.tick() => {
                drain(ring.get_mut(), &mut stats, &mut out)?;
                report_lost(&tracer.counters(), &mut lost_reported);
            }
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        out.flush().context("writing output")?;
    }
    drain(ring.get_mut(), &mut stats, &mut out)?;
    out.flush().context("writing output")?;
    let counters = tracer.counters();
    report_lost(&counters, &mut lost_reported);
    exit_summary(&stats, &counters);
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

/// Drains everything the ring buffer holds. Each item is decoded (copied out) at once; the
/// borrow of ring memory never outlives the loop body.
fn drain<W: Write>(
    ring: &mut RingBuf<MapData>,
    stats: &mut ReaderStats,
    out: &mut Output<W>,
) -> anyhow::Result<()> {
    while let Some(item) = ring.next() {
        let t = event::decode(&item);
        drop(item);
        match t {
            Ok(t) => {
                stats.events += 1;
                handle(&t, out)?;
            }
            Err(e) => {
                stats.undecodable += 1;
                tracing::warn!("undecodable event: {e}");
            }
        }
    }
    Ok(())
}

fn handle<W: Write>(t: &Transition, out: &mut Output<W>) -> anyhow::Result<()> {
    out.transition(t, None).context("writing output")
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

fn exit_summary(stats: &ReaderStats, c: &KernelCounters) {
    eprintln!(
        "tracer: {} events, {} lost, {} undecodable, {} sockets without dwell tracking (kernel table full)",
        stats.events, c.ring_full, stats.undecodable, c.socket_table_full
    );
}

/// Re-exported for the drain interval default.
pub const DEFAULT_DRAIN: Duration = Duration::from_millis(100);

/// Offline replay of a recording (engine not wired yet).
pub fn replay(_cfg: &crate::cli::ReplayConfig) -> anyhow::Result<()> {
    anyhow::bail!("replay is not available yet")
}
