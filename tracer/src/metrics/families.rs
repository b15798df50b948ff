//! The metric families, one descriptor each ([`FAMILIES`]: name, help, unit, how the samples
//! are read from a snapshot), and [`encode_snapshot`], which writes them in order.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::series::{
    KindLabels, ProcessLabels, ProcessSeries, StateLabels, TransitionLabels, histogram_buckets,
    process_series,
};
use super::snapshot::MetricsSnapshot;
use crate::event::TcpState;
use crate::record::CloseKind;

/// Prefix of every metric name.
pub const PREFIX: &str = "tracer";

/// A gauge value for a count: prometheus-client writes gauges as i64.
fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What one scrape encodes: the snapshot, and the per-process series derived from it once for
/// the two per-process families.
struct Scrape<'a> {
    snapshot: &'a MetricsSnapshot,
    /// The capped per-process CLOSE_WAIT series ([`process_series`]).
    processes: Vec<ProcessSeries>,
    /// Distinct processes holding CLOSE_WAIT sockets, before the cap.
    process_count: usize,
}

/// One metric family: its descriptor and how its samples are read from a scrape.
///
/// The exposed family is `tracer_` + `name` (+ `_seconds` with [`Unit::Seconds`]); a counter's
/// sample adds `_total` ([`Family::sample_name`]). Adding a metric is one row of [`FAMILIES`],
/// plus its row in docs/metrics.md and its samples in the golden expositions
/// (tests/fixtures/metrics/, rewritten by the unit tests with `TRACER_BLESS_METRICS=1`), which
/// the unit tests check.
pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    pub(super) unit: Option<Unit>,
    samples: Samples,
}

/// How a family's samples are read from a [`Scrape`]. A reader that returns `None`, or
/// `present` returning false, leaves the family out of the scrape.
enum Samples {
    /// One unlabelled counter.
    Counter(fn(&Scrape) -> Option<u64>),
    /// One unlabelled counter of a fractional quantity (seconds).
    CounterF64(fn(&Scrape) -> Option<f64>),
    /// One unlabelled gauge of a count.
    Gauge(fn(&Scrape) -> Option<u64>),
    /// One unlabelled gauge of a fractional quantity (seconds).
    GaugeF64(fn(&Scrape) -> Option<f64>),
    /// Labelled series of type `kind`, written by `encode` when `present`.
    Series {
        kind: MetricType,
        present: fn(&Scrape) -> bool,
        encode: fn(&Scrape, &mut MetricEncoder) -> fmt::Result,
    },
}

impl Family {
    fn kind(&self) -> MetricType {
        match self.samples {
            Samples::Counter(_) | Samples::CounterF64(_) => MetricType::Counter,
            Samples::Gauge(_) | Samples::GaugeF64(_) => MetricType::Gauge,
            Samples::Series { kind, .. } => kind,
        }
    }

    /// The name of the family's samples (for histograms, without `_bucket`/`_sum`/`_count`), the
    /// same in both formats.
    #[cfg(test)]
    pub(super) fn sample_name(&self) -> String {
        let unit = self
            .unit
            .as_ref()
            .map_or(String::new(), |u| format!("_{}", u.as_str()));
        let total = if matches!(self.kind(), MetricType::Counter) {
            "_total"
        } else {
            ""
        };
        format!("{PREFIX}_{}{unit}{total}", self.name)
    }

    /// Writes the family's descriptor and samples, unless the scrape leaves it out.
    fn encode(&self, scrape: &Scrape, enc: &mut DescriptorEncoder) -> fmt::Result {
        match self.samples {
            Samples::Counter(read) => match read(scrape) {
                Some(v) => self
                    .descriptor(enc)?
                    .encode_counter::<NoLabelSet, u64, u64>(&v, None),
                None => Ok(()),
            },
            Samples::CounterF64(read) => match read(scrape) {
                Some(v) => self
                    .descriptor(enc)?
                    .encode_counter::<NoLabelSet, f64, u64>(&v, None),
                None => Ok(()),
            },
            Samples::Gauge(read) => match read(scrape) {
                Some(v) => self.descriptor(enc)?.encode_gauge(&gauge(v)),
                None => Ok(()),
            },
            Samples::GaugeF64(read) => match read(scrape) {
                Some(v) => self.descriptor(enc)?.encode_gauge(&v),
                None => Ok(()),
            },
            Samples::Series {
                present, encode, ..
            } => {
                if present(scrape) {
                    encode(scrape, &mut self.descriptor(enc)?)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn descriptor<'e>(
        &'e self,
        enc: &'e mut DescriptorEncoder,
    ) -> Result<MetricEncoder<'e>, fmt::Error> {
        enc.encode_descriptor(self.name, self.help, self.unit.as_ref(), self.kind())
    }
}

/// Every family of the collector, in exposition order (`tracer_build` is registered on its
/// own, before them).
pub(super) static FAMILIES: &[Family] = &[
    Family {
        name: "tcp_transitions",
        help: "TCP state transitions seen, by old and new state.",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Counter,
            present: |s| s.snapshot.transitions.iter().flatten().any(|&v| v != 0),
            encode: encode_transitions,
        },
    },
    Family {
        name: "tcp_state_dwell",
        help: "Time a socket spent in a TCP state before leaving it, by state.",
        unit: Some(Unit::Seconds),
        samples: Samples::Series {
            kind: MetricType::Histogram,
            present: |s| !s.snapshot.dwell.is_empty(),
            encode: encode_dwell,
        },
    },
    Family {
        name: "tcp_closes",
        help: "TCP connections closed, by how they closed (docs/close-kinds.md).",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Counter,
            present: |_| true,
            encode: encode_closes,
        },
    },
    Family {
        name: "tcp_idle_before_close",
        help: "How long a connection had not heard from its peer when it closed, by how it closed (buckets resolve the usual middlebox idle timeouts: 30, 60, 300, 350, 900 s).",
        unit: Some(Unit::Seconds),
        samples: Samples::Series {
            kind: MetricType::Histogram,
            present: |s| !s.snapshot.idle_before_close.is_empty(),
            encode: encode_idle_before_close,
        },
    },
    Family {
        name: "tcp_resets_sent",
        help: "RSTs this host sent, by the kernel's reason (unknown before 6.10) and remote address (the first remotes seen; later ones summed under remote=\"other\"); includes resets sent without a socket and by timewait sockets.",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Counter,
            present: |s| s.snapshot.resets_traced,
            encode: encode_resets_sent,
        },
    },
    Family {
        name: "tcp_sockets",
        help: "TCP sockets in each state now.",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Gauge,
            present: |_| true,
            encode: encode_sockets,
        },
    },
    Family {
        name: "tcp_close_wait_sockets",
        help: "Sockets in CLOSE_WAIT now, by owning process (top processes, then other and unknown).",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Gauge,
            present: |s| !s.processes.is_empty(),
            encode: |s, m| encode_processes(s, m, |p| p.sockets),
        },
    },
    Family {
        name: "tcp_close_wait_leaks",
        help: "Sockets in CLOSE_WAIT for longer than the leak threshold now, by owning process.",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Gauge,
            present: |s| !s.processes.is_empty(),
            encode: |s, m| encode_processes(s, m, |p| p.leaking),
        },
    },
    Family {
        name: "tcp_close_wait_processes",
        help: "Processes holding sockets in CLOSE_WAIT now (before the per-process series cap).",
        unit: None,
        samples: Samples::Gauge(|s| Some(u64::try_from(s.process_count).unwrap_or(u64::MAX))),
    },
    Family {
        name: "tcp_close_wait_oldest",
        help: "Age of the oldest socket in CLOSE_WAIT now; 0 when there is none.",
        unit: Some(Unit::Seconds),
        samples: Samples::GaugeF64(|s| Some(s.snapshot.close_wait_oldest_seconds.unwrap_or(0.0))),
    },
    Family {
        name: "tcp_close_wait_leak_threshold",
        help: "CLOSE_WAIT age above which a socket counts as leaking.",
        unit: Some(Unit::Seconds),
        samples: Samples::GaugeF64(|s| s.snapshot.leak_threshold_seconds),
    },
    Family {
        name: "tcp_close_wait_leaks_detected",
        help: "Sockets whose time in CLOSE_WAIT crossed the leak threshold (one per socket).",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.leaks_detected_total)),
    },
    Family {
        name: "events",
        help: "Transition events read from the kernel ring buffer.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.events_total)),
    },
    Family {
        name: "events_lost",
        help: "Transition events lost because the kernel ring buffer was full.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.events_lost_total)),
    },
    Family {
        name: "events_malformed",
        help: "Ring-buffer records that could not be decoded.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.events_malformed_total)),
    },
    Family {
        name: "tracked_sockets",
        help: "Sockets the tracer tracks now.",
        unit: None,
        samples: Samples::Gauge(|s| Some(s.snapshot.tracked_sockets)),
    },
    Family {
        name: "evictions",
        help: "Sockets dropped from the tracer's table because it was full.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.evictions_total)),
    },
    Family {
        name: "tcp_time_wait_sockets",
        help: "TIME_WAIT sockets now by remote endpoint (top remotes, the rest summed under remote=\"other\").",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Gauge,
            present: |s| !s.snapshot.time_wait_remotes.is_empty(),
            encode: encode_time_wait_remotes,
        },
    },
    Family {
        name: "tcp_ephemeral_ports_used_ratio",
        help: "Share of the namespace's ephemeral port range used by sockets from a local address to a remote endpoint (top tuples, the rest summed under other).",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Gauge,
            present: |s| !s.snapshot.ephemeral_ports.is_empty(),
            encode: encode_ephemeral_ports,
        },
    },
    Family {
        name: "tcp_time_wait_table_full",
        help: "Hand-overs to TIME_WAIT not tracked per remote because the table was full.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.time_wait_table_full_total)),
    },
    Family {
        name: "tcp_time_wait_resync_failures",
        help: "Re-syncs of the per-remote TIME_WAIT counts from sock_diag that failed.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.time_wait_resync_failures_total)),
    },
    Family {
        name: "tcp_close_wait_leak_checks_unanswered",
        help: "Leak candidates the kernel could not be asked about (namespace unreachable, sock_diag error); decided by CLOSE_WAIT age alone.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.leak_checks_unanswered_total)),
    },
    Family {
        name: "tcp_close_wait_leak_checks_gone",
        help: "Leak candidates the kernel no longer had when asked (twice): not leaks; each left as a close of kind unknown (closed while events were lost).",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.leak_checks_gone_total)),
    },
    Family {
        name: "tcp_close_wait_leak_checks_other_state",
        help: "Leak candidates the kernel had in another state than CLOSE_WAIT when asked (twice): not leaks; the kernel's state was taken.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.leak_checks_other_state_total)),
    },
    Family {
        name: "reconcile_runs",
        help: "Reconciliations of the tracked CLOSE_WAIT sockets with the kernel's (a filtered sock_diag dump per namespace, then a confirmation).",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.reconcile.map(|r| r.runs)),
    },
    Family {
        name: "reconcile_after_loss",
        help: "Reconciliations started because events were lost.",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.reconcile.map(|r| r.after_loss)),
    },
    Family {
        name: "reconcile_duration",
        help: "Wall time spent reconciling with the kernel.",
        unit: Some(Unit::Seconds),
        samples: Samples::CounterF64(|s| s.snapshot.reconcile.map(|r| r.total_us as f64 / 1e6)),
    },
    Family {
        name: "reconcile_corrections",
        help: "What reconciliation changed, by kind: closed_unseen (the kernel no longer had the socket), state_corrected (it had it in another state), seeded (it had a CLOSE_WAIT socket the tracer did not).",
        unit: None,
        samples: Samples::Series {
            kind: MetricType::Counter,
            present: |s| s.snapshot.reconcile.is_some(),
            encode: encode_reconcile_corrections,
        },
    },
    Family {
        name: "reconcile_unreachable",
        help: "Namespaces or sockets reconciliation could not ask about (namespace unreachable, sock_diag error).",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.reconcile.map(|r| r.unreachable)),
    },
    Family {
        name: "holder_lookups",
        help: "Holder look-ups by inode of CLOSE_WAIT sockets: 300 ms after a socket enters CLOSE_WAIT, every 10 s while it stays, and every round while it is not accepted or not answered.",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.holders.map(|h| h.sockets)),
    },
    Family {
        name: "holder_corrections",
        help: "Holder lookups that named another process than the trace had (pre-fork workers, SO_REUSEPORT groups, passed fds, fork after accept).",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.holders.map(|h| h.corrected)),
    },
    Family {
        name: "holder_unanswered",
        help: "Holder lookups without an answer (namespace unreachable, sock_diag error, /proc rescan rate-limited): asked again.",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.holders.map(|h| h.unanswered)),
    },
    Family {
        name: "bpf_transitions_seen",
        help: "TCP transitions the eBPF program saw, before filtering.",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.bpf_transitions_seen_total),
    },
    Family {
        name: "bpf_filtered",
        help: "TCP transitions dropped by the in-kernel filter.",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.bpf_filtered_total),
    },
    Family {
        name: "bpf_recursion_misses",
        help: "TCP transitions lost because the kernel did not run the eBPF program while it was already running on that CPU, and the nested-event program could not run either (counted in tracer_events_lost_total too).",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.bpf_recursion_misses_total),
    },
    Family {
        name: "bpf_recursion_recovered",
        help: "TCP transitions the kernel skipped the eBPF program for (it was already running on that CPU) that the nested-event program delivered instead.",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.bpf_recursion_recovered_total),
    },
    Family {
        name: "bpf_runs",
        help: "Runs of the eBPF program (kernel.bpf_stats_enabled).",
        unit: None,
        samples: Samples::Counter(|s| s.snapshot.bpf_run_count),
    },
    Family {
        name: "bpf_run_time",
        help: "CPU time spent in the eBPF program (kernel.bpf_stats_enabled).",
        unit: Some(Unit::Seconds),
        // Exact up to 2^53 ns (104 days of CPU time); beyond, only sub-ns precision is lost.
        samples: Samples::CounterF64(|s| s.snapshot.bpf_run_time_ns.map(|ns| ns as f64 / 1e9)),
    },
];

/// `tracer_tcp_transitions`: the pairs seen at least once, in kernel order of `from`, `to`.
fn encode_transitions(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    for from in TcpState::ALL {
        for to in TcpState::ALL {
            let v = s.snapshot.transitions[from.index()][to.index()];
            if v != 0 {
                let labels = TransitionLabels {
                    from: from.name(),
                    to: to.name(),
                };
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
            }
        }
    }
    Ok(())
}

/// `tracer_tcp_state_dwell_seconds`: one histogram per state in the snapshot, in kernel order;
/// the first entry for a state wins.
fn encode_dwell(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    let mut buckets = Vec::new();
    for state in TcpState::ALL {
        if let Some((_, h)) = s.snapshot.dwell.iter().find(|(st, _)| *st == state) {
            let count = histogram_buckets(h, &mut buckets);
            m.encode_family(&StateLabels {
                state: state.name(),
            })?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, count, &buckets, None)?;
        }
    }
    Ok(())
}

/// `tracer_tcp_idle_before_close_seconds`: one histogram per kind in the snapshot.
fn encode_idle_before_close(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    let mut buckets = Vec::new();
    for (kind, h) in &s.snapshot.idle_before_close {
        let count = histogram_buckets(h, &mut buckets);
        m.encode_family(&KindLabels { kind: kind.name() })?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, count, &buckets, None)?;
    }
    Ok(())
}

/// `tracer_tcp_resets_sent_total`: the snapshot's series, in its order.
fn encode_resets_sent(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    for r in &s.snapshot.resets_sent {
        let mut labels = vec![("reason", r.reason.to_owned())];
        labels.extend(remote_labels(r.netns, None, &r.remote));
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&r.count, None)?;
    }
    Ok(())
}

/// `tracer_tcp_closes_total`: every kind, entries of the same kind summed, missing kinds 0.
fn encode_closes(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    for kind in CloseKind::ALL {
        let v = s
            .snapshot
            .closes
            .iter()
            .filter(|(k, _)| *k == kind)
            .fold(0u64, |acc, (_, n)| acc.saturating_add(*n));
        m.encode_family(&KindLabels { kind: kind.name() })?
            .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
    }
    Ok(())
}

/// `tracer_reconcile_corrections`: each kind.
fn encode_reconcile_corrections(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    let Some(r) = s.snapshot.reconcile else {
        return Ok(());
    };
    for (kind, v) in [
        ("closed_unseen", r.closed_unseen),
        ("state_corrected", r.state_corrected),
        ("seeded", r.seeded),
    ] {
        m.encode_family(&KindLabels { kind })?
            .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
    }
    Ok(())
}

/// `tracer_tcp_sockets`: every state.
fn encode_sockets(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    for state in TcpState::ALL {
        m.encode_family(&StateLabels {
            state: state.name(),
        })?
        .encode_gauge(&gauge(s.snapshot.sockets[state.index()]))?;
    }
    Ok(())
}

/// One gauge per process series, of the count `pick` reads from it.
fn encode_processes(
    s: &Scrape,
    m: &mut MetricEncoder,
    pick: fn(&ProcessSeries) -> u64,
) -> fmt::Result {
    for p in &s.processes {
        let labels = ProcessLabels {
            pid: p.pid,
            comm: p.comm,
            container: p.container,
        };
        m.encode_family(&labels)?.encode_gauge(&gauge(pick(p)))?;
    }
    Ok(())
}

/// Label set of the per-remote families: `netns` only where it is not the tracer's own.
fn remote_labels<'a>(
    netns: Option<u32>,
    local: Option<&'a str>,
    remote: &'a str,
) -> Vec<(&'static str, String)> {
    let mut l = Vec::with_capacity(3);
    if let Some(local) = local {
        l.push(("local", local.to_owned()));
    }
    l.push(("remote", remote.to_owned()));
    if let Some(ns) = netns {
        l.push(("netns", ns.to_string()));
    }
    l
}

/// `tracer_tcp_time_wait_sockets`: the snapshot's remotes, in its order.
fn encode_time_wait_remotes(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    for r in &s.snapshot.time_wait_remotes {
        m.encode_family(&remote_labels(r.netns, None, &r.remote))?
            .encode_gauge(&gauge(r.sockets))?;
    }
    Ok(())
}

/// `tracer_tcp_ephemeral_ports_used_ratio`: the snapshot's tuples, in its order.
fn encode_ephemeral_ports(s: &Scrape, m: &mut MetricEncoder) -> fmt::Result {
    for p in &s.snapshot.ephemeral_ports {
        m.encode_family(&remote_labels(p.netns, Some(&p.local), &p.remote))?
            .encode_gauge(&p.ratio)?;
    }
    Ok(())
}

/// Encodes every family of [`FAMILIES`] that the snapshot has, in order.
pub(super) fn encode_snapshot(
    s: &MetricsSnapshot,
    cap: usize,
    enc: &mut DescriptorEncoder,
) -> fmt::Result {
    let (processes, process_count) = process_series(&s.close_wait, cap);
    let scrape = Scrape {
        snapshot: s,
        processes,
        process_count,
    };
    FAMILIES.iter().try_for_each(|f| f.encode(&scrape, enc))
}
