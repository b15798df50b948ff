//! The TIME_WAIT re-sync: the per-remote TIME_WAIT counts and the ephemeral-port use are set
//! again from the kernel (one sock_diag dump per network namespace, with that namespace's
//! `ip_local_port_range`), and the limits of that accounting ([`TimeWaitConfig`]).
//!
//! Schedule: periodic (rate-limited, after the ring buffer is drained); a namespace whose port
//! range is not known yet is read at the next call.

use std::time::{Duration, Instant};

use crate::netns::Namespaces;
use crate::sockdiag::StateMask;
use crate::timewait::TimeWait;

use super::Pipeline;

/// Limits of the per-remote TIME_WAIT and ephemeral-port accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWaitConfig {
    /// Most (namespace, local address, remote endpoint) tuples tracked.
    pub capacity: usize,
    /// Most remotes (and tuples) named in the metrics; the rest are summed under `other`.
    pub series: usize,
    /// Least time between two re-syncs from sock_diag. A re-sync is also never closer to the
    /// last than 20 times what the last one took.
    pub resync_every: Duration,
}

impl Default for TimeWaitConfig {
    fn default() -> Self {
        TimeWaitConfig {
            capacity: TimeWait::DEFAULT_CAPACITY,
            series: 20,
            resync_every: Duration::from_secs(30),
        }
    }
}

/// A re-sync takes at most this share of the reader's time.
const RESYNC_DUTY: u32 = 20;

impl Pipeline {
    /// Sets the limits of the TIME_WAIT accounting (before the baseline).
    pub fn set_time_wait_config(&mut self, cfg: TimeWaitConfig) {
        self.tw_cfg = cfg;
        self.tw = TimeWait::new(cfg.capacity);
    }

    /// Re-syncs the per-remote TIME_WAIT counts and the ephemeral-port use with the kernel:
    /// one sock_diag dump (every state, streamed one datagram at a time) per network
    /// namespace, each read inside its namespace with its `ip_local_port_range`. Rate-limited:
    /// does nothing until `resync_every` has passed since the last one, and at least 20 times
    /// what the last one took. Returns how long it took when it ran. Call after draining the
    /// ring buffer, so that closes the dump already reflects are not counted twice.
    pub fn resync_time_wait(&mut self, now_ns: u64) -> Option<Duration> {
        // `--pid` follows one process: host-wide dumps are not its business.
        if self.pid.is_some() {
            return None;
        }
        let started = Instant::now();
        // A namespace that hands over its first socket before its port range is known (it
        // came after the last re-sync) is read at once, not at the next round: until then its
        // ephemeral ports would be counted against the default range.
        let unranged = self.tw.take_unranged();
        if !unranged.is_empty() && self.live.is_some() {
            let mut known = match self.live.as_mut() {
                Some(live) => live.namespaces.discover(started),
                None => Vec::new(),
            };
            known.retain(|ns| unranged.contains(ns));
            for ns in known {
                self.resync_namespace(ns, started, now_ns);
            }
        }
        if let Some((at, took)) = self.tw_last_resync {
            let gap = self.tw_cfg.resync_every.max(took * RESYNC_DUTY);
            if started.saturating_duration_since(at) < gap {
                return None;
            }
        }
        let namespaces = self.live.as_mut()?.namespaces.discover(started);
        for ns in namespaces {
            self.resync_namespace(ns, started, now_ns);
        }
        self.tw.prune(now_ns);
        let took = started.elapsed();
        self.tw_last_resync = Some((started, took));
        Some(took)
    }

    /// One namespace's part of [`Pipeline::resync_time_wait`]: its port range, then a dump of
    /// its sockets in place of what was counted.
    fn resync_namespace(&mut self, ns: u32, started: Instant, now_ns: u64) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        read_port_range(&mut live.namespaces, &mut self.tw, ns, started);
        let Some(diag) = live.namespaces.diag(ns, started) else {
            self.tw.resync_failed();
            return;
        };
        let tw = &mut self.tw;
        let mut r = tw.begin_resync(ns, now_ns);
        match diag.dump_each(StateMask::ALL, |s| tw.feed(&mut r, s)) {
            Ok(()) => tw.finish_resync(r),
            Err(e) => {
                // What was read so far stands until the next re-sync.
                tracing::warn!("network namespace {ns}: TIME_WAIT re-sync: {e}");
                tw.finish_resync(r);
                tw.resync_failed();
            }
        }
    }
}

/// `ip_local_port_range` of the namespace the reading task is in.
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Reads namespace `ns`'s `ip_local_port_range` from inside it into the TIME_WAIT accounting
/// (left at the default when it cannot be read).
pub(super) fn read_port_range(
    namespaces: &mut Namespaces,
    tw: &mut TimeWait,
    ns: u32,
    at: Instant,
) {
    if let Some((lo, hi)) = namespaces
        .read_in(ns, std::path::Path::new(PORT_RANGE), at)
        .as_deref()
        .and_then(TimeWait::parse_range)
    {
        tw.set_range(ns, lo, hi);
    }
}
