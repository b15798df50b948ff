//! What the exposition shows: the [`MetricsSnapshot`] the engine hands over at each scrape,
//! and the [`SnapshotSource`] it comes from.

use crate::container::ContainerId;
use crate::event::{Comm, TcpState};
use crate::record::CloseKind;

/// Everything the exposition shows, taken from the engine at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Transitions seen, `[from.index()][to.index()]` ([`TcpState::index`]).
    pub transitions: [[u64; 12]; 12],
    /// Time spent in each state before leaving it, one histogram per state.
    pub dwell: Vec<(TcpState, HistogramSnapshot)>,
    /// Closed connections by kind; kinds missing here are exported as 0.
    pub closes: Vec<(CloseKind, u64)>,
    /// Idle time before close, per kind, for the kinds that had one.
    pub idle_before_close: Vec<(CloseKind, HistogramSnapshot)>,
    /// Resets sent are traced (else their family is left out).
    pub resets_traced: bool,
    /// Resets sent per reason and remote, already capped.
    pub resets_sent: Vec<ResetSeries>,
    /// Sockets in each state now, indexed by [`TcpState::index`] (startup baseline included).
    pub sockets: [u64; 12],
    /// Per owning process: sockets in CLOSE_WAIT now, and how many of them are leaking (over
    /// the threshold). `pid: None` = unattributed.
    pub close_wait: Vec<OwnerCloseWait>,
    /// Age of the oldest socket in CLOSE_WAIT now; `None` when there is none.
    pub close_wait_oldest_seconds: Option<f64>,
    /// The CLOSE_WAIT age above which a socket counts as leaking.
    pub leak_threshold_seconds: Option<f64>,
    /// Leak records emitted (sockets that crossed the threshold) since start.
    pub leaks_detected_total: u64,
    /// Events read from the ring buffer.
    pub events_total: u64,
    /// Events the kernel program could not submit because the ring buffer was full.
    pub events_lost_total: u64,
    /// Ring-buffer records that could not be decoded.
    pub events_malformed_total: u64,
    /// Sockets the engine tracks now.
    pub tracked_sockets: u64,
    /// Sockets dropped from the engine's table because it was full.
    pub evictions_total: u64,
    /// TCP transitions the kernel program saw, before filtering (kernel counter).
    pub bpf_transitions_seen_total: Option<u64>,
    /// Transitions dropped by the in-kernel filter (kernel counter).
    pub bpf_filtered_total: Option<u64>,
    /// Transitions lost to the kernel's recursion guard: the main program's
    /// `recursion_misses` less what the nested-event program recovered (part of
    /// `events_lost_total` too).
    pub bpf_recursion_misses_total: Option<u64>,
    /// Transitions the kernel skipped the main program for that the nested-event program
    /// handled (not lost).
    pub bpf_recursion_recovered_total: Option<u64>,
    /// Total run time of the eBPF program (ns), from `kernel.bpf_stats_enabled`.
    pub bpf_run_time_ns: Option<u64>,
    /// Number of runs of the eBPF program, from `kernel.bpf_stats_enabled`.
    pub bpf_run_count: Option<u64>,
    /// TIME_WAIT sockets per remote endpoint now, already capped (the rest summed under
    /// `other`). Empty: the family is left out.
    pub time_wait_remotes: Vec<RemoteSeries>,
    /// Share of the ephemeral port range in use per (local address, remote endpoint), capped
    /// the same way.
    pub ephemeral_ports: Vec<PortSeries>,
    /// Hand-overs to TIME_WAIT not tracked because the per-remote table was full.
    pub time_wait_table_full_total: u64,
    /// Re-syncs of the TIME_WAIT table from sock_diag that failed.
    pub time_wait_resync_failures_total: u64,
    /// Leak candidates whose owner's activity could not be asked (decided by age alone).
    pub leak_checks_unanswered_total: u64,
    /// Leak candidates the kernel no longer had (asked twice): not leaks.
    pub leak_checks_gone_total: u64,
    /// Leak candidates the kernel had in another state (asked twice): not leaks.
    pub leak_checks_other_state_total: u64,
    /// Reconciliation with the kernel (live only; `None` leaves its families out).
    pub reconcile: Option<crate::engine::ReconcileSummary>,
    /// Holder confirmation by inode (live only).
    pub holders: Option<crate::engine::HolderSummary>,
}

/// One series of `tracer_tcp_time_wait_sockets`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteSeries {
    /// The namespace, when it is not the tracer's own (`None` also for `other`).
    pub netns: Option<u32>,
    /// `addr:port` (`[v6]:port`), or `other`.
    pub remote: String,
    pub sockets: u64,
}

/// One series of `tracer_tcp_resets_sent_total`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetSeries {
    /// The kernel's reason, or `unknown`.
    pub reason: &'static str,
    /// The sender's namespace when it is not the tracer's own and is known.
    pub netns: Option<u32>,
    /// The remote address, or `other`.
    pub remote: String,
    pub count: u64,
}

/// One series of `tracer_tcp_ephemeral_ports_used_ratio`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortSeries {
    pub netns: Option<u32>,
    /// Local address, or `other`.
    pub local: String,
    /// `addr:port`, or `other`.
    pub remote: String,
    pub ratio: f64,
}

/// A histogram as the engine keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, bounds increasing, without `+Inf`
    /// (`count` is the `+Inf` bucket).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// CLOSE_WAIT sockets held by one process now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerCloseWait {
    /// `None`: the owner of these sockets is not known.
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    /// The container the process runs in, if any.
    pub container: Option<ContainerId>,
    /// Sockets in CLOSE_WAIT.
    pub sockets: u64,
    /// Of `sockets`, those in CLOSE_WAIT longer than the leak threshold.
    pub leaking: u64,
}

/// Where the exposition gets its data: called once per scrape, from a blocking-pool thread.
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshot(&self) -> MetricsSnapshot;
}

impl<F> SnapshotSource for F
where
    F: Fn() -> MetricsSnapshot + Send + Sync + 'static,
{
    fn snapshot(&self) -> MetricsSnapshot {
        self()
    }
}
