//! What is built on demand from the path's state, never per event: the metrics snapshot, the
//! summary, the sockets per state now, the TIME_WAIT top remotes, a process's container, and
//! the helpers that turn the TIME_WAIT accounting into metric series.
//!
//! Schedule: per scrape (metrics), per redraw (`tracer top`), or at exit (the summary).

use std::time::{Duration, Instant};

use crate::engine::Summary;
use crate::event::TcpState;
use crate::metrics::{HistogramSnapshot, MetricsSnapshot, OwnerCloseWait};
use crate::record::CloseKind;
use crate::timewait::{PortUse, RemoteCount};

use super::Pipeline;

/// The host-wide TIME_WAIT count is read again after this long.
const TIME_WAIT_TOTAL_EVERY: Duration = Duration::from_secs(1);
/// The list of namespaces it sums over is made again after this long.
const NAMESPACES_REDISCOVER: Duration = Duration::from_secs(10);

impl Pipeline {
    pub fn summary(&self, now_ns: u64) -> Summary {
        let mut s = Summary {
            baseline: self.baseline,
            reconcile: self.live.is_some().then(|| self.reconcile_stats()),
            holders: self.live.is_some().then(|| self.holder_stats()),
            ..self.engine.summary(now_ns)
        };
        s.time_wait_top = self.time_wait_top(now_ns, 5);
        s.resets_top = self.resets_top(5);
        s
    }

    /// The `n` (reason, remote) series with the most RSTs sent, most first (`other` ones
    /// included, by their count).
    pub fn resets_top(&self, n: usize) -> Vec<crate::engine::summary::ResetSummary> {
        let mut all = self.resets.series();
        all.sort_by_key(|(k, count)| (std::cmp::Reverse(*count), *k));
        all.into_iter()
            .take(n)
            .map(|(k, resets)| crate::engine::summary::ResetSummary {
                reason: k.reason.name(),
                remote: k.remote.map_or_else(
                    || "other".to_owned(),
                    |a| crate::event::AddrFmt(a).to_string(),
                ),
                netns: (k.netns != 0 && k.netns != self.own_netns && k.remote.is_some())
                    .then_some(k.netns),
                resets,
            })
            .collect()
    }

    /// The `n` remote endpoints with the most TIME_WAIT sockets now, most first, each with its
    /// busiest local address's ephemeral port use (the summary's `time_wait_top`, and top's
    /// panel).
    pub fn time_wait_top(
        &self,
        now_ns: u64,
        n: usize,
    ) -> Vec<crate::engine::summary::RemoteSummary> {
        self.time_wait_top_of(now_ns, n).0
    }

    /// [`Pipeline::time_wait_top`], and how many remote endpoints have TIME_WAIT sockets now.
    pub fn time_wait_top_of(
        &self,
        now_ns: u64,
        n: usize,
    ) -> (Vec<crate::engine::summary::RemoteSummary>, usize) {
        let ports = self.tw.port_use(now_ns);
        let remotes = self.tw.remotes(now_ns);
        let total = remotes.len();
        let top = remotes
            .into_iter()
            .take(n)
            .map(|r| {
                let busiest = ports
                    .iter()
                    .filter(|p| (p.netns, p.remote, p.rport) == (r.netns, r.remote, r.rport))
                    .max_by_key(|p| p.used);
                let (lo, hi) = self.tw.range(r.netns);
                crate::engine::summary::RemoteSummary {
                    remote: crate::event::EndpointFmt(r.remote, r.rport).to_string(),
                    netns: (r.netns != self.own_netns && r.netns != 0).then_some(r.netns),
                    time_wait: r.time_wait,
                    ephemeral_ports_used: busiest.map_or(0, |p| p.used),
                    ephemeral_port_range: busiest.map_or(u64::from(hi - lo) + 1, |p| p.range),
                }
            })
            .collect();
        (top, total)
    }

    /// Counters of the per-remote TIME_WAIT accounting.
    pub fn time_wait_stats(&self) -> crate::timewait::TimeWaitStats {
        self.tw.stats()
    }

    /// The metrics view, taken at scrape time. Kernel and reader counters are the caller's.
    pub fn metrics(&mut self, now_ns: u64) -> MetricsSnapshot {
        let now = Instant::now();
        let threshold_ns = self.engine.config().close_wait_threshold_ns;
        let owners = self.engine.close_wait_by_owner(now_ns);
        let close_wait = owners
            .into_iter()
            .map(|o| {
                let container = match (self.live.as_mut(), o.owner) {
                    (Some(live), Some(k)) => {
                        live.containers.get(k.pid, now).and_then(|c| c.container_id)
                    }
                    _ => None,
                };
                OwnerCloseWait {
                    pid: o.owner.map(|k| k.pid),
                    comm: o.owner.map(|k| k.comm),
                    container,
                    sockets: o.close_wait,
                    leaking: o.leaking,
                }
            })
            .collect();
        let sockets = self.sockets_now(now_ns);
        let e = &self.engine;
        MetricsSnapshot {
            transitions: self.counts.transitions,
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
            idle_before_close: CloseKind::ALL
                .into_iter()
                .filter(|&k| !e.idle_histogram(k).is_empty())
                .map(|k| {
                    let h = e.idle_histogram(k);
                    (
                        k,
                        HistogramSnapshot {
                            buckets: h.buckets().filter(|(le, _)| le.is_finite()).collect(),
                            count: h.count(),
                            sum_seconds: h.sum_seconds(),
                        },
                    )
                })
                .collect(),
            resets_traced: self.traces_resets(),
            resets_sent: self
                .resets
                .series()
                .into_iter()
                .map(|(k, count)| crate::metrics::ResetSeries {
                    reason: k.reason.name(),
                    netns: (k.netns != 0 && k.netns != self.own_netns && k.remote.is_some())
                        .then_some(k.netns),
                    remote: k.remote.map_or_else(
                        || "other".to_owned(),
                        |a| crate::event::AddrFmt(a).to_string(),
                    ),
                    count,
                })
                .collect(),
            sockets,
            close_wait,
            close_wait_oldest_seconds: e.oldest_close_wait_ns(now_ns).map(|ns| ns as f64 / 1e9),
            leak_threshold_seconds: Some(threshold_ns as f64 / 1e9),
            leaks_detected_total: e.stats().leaks,
            events_total: self.counts.events,
            events_malformed_total: self.counts.undecodable,
            tracked_sockets: e.tracked() as u64,
            evictions_total: e.stats().evicted + e.stats().evicted_leaking,
            time_wait_remotes: remote_series(
                &self.tw.remotes(now_ns),
                self.tw_cfg.series,
                self.own_netns,
            ),
            ephemeral_ports: port_series(
                &self.tw.port_use(now_ns),
                self.tw_cfg.series,
                self.own_netns,
            ),
            time_wait_table_full_total: self.tw.stats().table_full,
            time_wait_resync_failures_total: self.tw.stats().resync_failures,
            leak_checks_unanswered_total: self.counts.leak_checks_unanswered,
            leak_checks_gone_total: self.counts.leak_checks_gone,
            leak_checks_other_state_total: self.counts.leak_checks_other_state,
            reconcile: self.live.is_some().then(|| self.reconcile_stats()),
            holders: self.live.is_some().then(|| self.holder_stats()),
            ..MetricsSnapshot::default()
        }
    }
}

/// What a redrawing view (`tracer top`) reads once per redraw, besides the engine's own
/// snapshots.
impl Pipeline {
    /// The container of a process (live only; from the short-lived cgroup cache).
    pub fn container_id(&mut self, pid: u32) -> Option<crate::container::ContainerId> {
        let live = self.live.as_mut()?;
        live.containers
            .get(pid, Instant::now())
            .and_then(|c| c.container_id)
    }

    /// Sockets per state now, indexed by [`TcpState::index`]: the engine's, and TIME_WAIT,
    /// which the tracepoint never shows (a separate timewait socket runs it). Live, TIME_WAIT
    /// is the kernel's own count summed over every network namespace (re-read at most once a
    /// second); with `--pid`, the per-remote accounting's, which counts that process's
    /// hand-overs only. Offline it is absent.
    pub fn sockets_now(&mut self, now_ns: u64) -> [u64; 12] {
        let mut sockets = self.engine.sockets_per_state();
        if self.pid.is_some() {
            sockets[TcpState::TimeWait.index()] = self.tw.total(now_ns);
            return sockets;
        }
        let Some(live) = self.live.as_mut() else {
            return sockets;
        };
        let now = Instant::now();
        let fresh = live
            .time_wait_total
            .filter(|(at, _)| now.saturating_duration_since(*at) < TIME_WAIT_TOTAL_EVERY);
        let total = match fresh {
            Some((_, t)) => t,
            None => {
                // Namespaces that could not be read are counted in the namespace counters.
                let t = live.namespaces.time_wait_total(now, NAMESPACES_REDISCOVER);
                live.time_wait_total = Some((now, t));
                t
            }
        };
        sockets[TcpState::TimeWait.index()] = total.sockets;
        sockets
    }
}

/// The namespace as a label: none for the tracer's own.
fn ns_label(netns: u32, own: u32) -> Option<u32> {
    (netns != 0 && netns != own).then_some(netns)
}

/// The first `cap` remotes (already sorted, most first) as series, the rest summed under
/// `other`.
fn remote_series(all: &[RemoteCount], cap: usize, own: u32) -> Vec<crate::metrics::RemoteSeries> {
    let mut v: Vec<_> = all
        .iter()
        .take(cap)
        .map(|r| crate::metrics::RemoteSeries {
            netns: ns_label(r.netns, own),
            remote: crate::event::EndpointFmt(r.remote, r.rport).to_string(),
            sockets: r.time_wait,
        })
        .collect();
    if all.len() > cap {
        v.push(crate::metrics::RemoteSeries {
            netns: None,
            remote: "other".into(),
            sockets: all[cap..].iter().map(|r| r.time_wait).sum(),
        });
    }
    v
}

/// The first `cap` tuples (sorted, highest share first) as series, the rest's shares summed
/// under `other`.
fn port_series(all: &[PortUse], cap: usize, own: u32) -> Vec<crate::metrics::PortSeries> {
    let mut v: Vec<_> = all
        .iter()
        .take(cap)
        .map(|p| crate::metrics::PortSeries {
            netns: ns_label(p.netns, own),
            local: crate::event::AddrFmt(p.local).to_string(),
            remote: crate::event::EndpointFmt(p.remote, p.rport).to_string(),
            ratio: p.ratio(),
        })
        .collect();
    if all.len() > cap {
        v.push(crate::metrics::PortSeries {
            netns: None,
            local: "other".into(),
            remote: "other".into(),
            ratio: all[cap..].iter().map(PortUse::ratio).sum(),
        });
    }
    v
}
