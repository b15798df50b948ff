//! Series and labels: the label sets of the families, the per-process CLOSE_WAIT series and
//! their cardinality cap, and the conversion of the engine's histograms into buckets.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::{self, Write as _};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use super::snapshot::{HistogramSnapshot, OwnerCloseWait};
use crate::container::ContainerId;
use crate::event::Comm;

/// Default cap on per-process series in the CLOSE_WAIT families.
pub const DEFAULT_MAX_PROCESS_SERIES: usize = 100;

/// Smallest dwell-histogram bound exported (10 µs); smaller bounds in a snapshot are folded into
/// the first exported bucket (buckets are cumulative, so nothing is lost).
pub const MIN_DWELL_BUCKET_SECONDS: f64 = 10e-6;

#[derive(Debug, EncodeLabelSet)]
pub(super) struct TransitionLabels {
    pub(super) from: &'static str,
    pub(super) to: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
pub(super) struct StateLabels {
    pub(super) state: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub(super) kind: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
pub(super) struct ProcessLabels {
    pub(super) pid: PidLabel,
    pub(super) comm: CommLabel,
    pub(super) container: ContainerLabel,
}

/// The `container` label: the 12-character container id, or empty (no container, or an
/// aggregate series).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ContainerLabel(pub(super) Option<ContainerId>);

impl EncodeLabelValue for ContainerLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        match &self.0 {
            Some(id) => encoder.write_str(id.short()),
            None => Ok(()),
        }
    }
}

/// The `pid` label: a process id, or one of the two aggregate series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PidLabel {
    Pid(u32),
    Other,
    Unknown,
}

impl EncodeLabelValue for PidLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        match self {
            PidLabel::Pid(pid) => write!(encoder, "{pid}"),
            PidLabel::Other => encoder.write_str("other"),
            PidLabel::Unknown => encoder.write_str("unknown"),
        }
    }
}

/// The `comm` label: a process name (escaped, since it is arbitrary bytes), or a fixed word.
/// A missing or empty name is `unknown` (an empty label value would mean "no label").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CommLabel {
    Comm(Comm),
    Other,
    Unknown,
}

impl EncodeLabelValue for CommLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        match self {
            CommLabel::Comm(comm) => write_escaped(encoder, &comm.as_str()),
            CommLabel::Other => encoder.write_str("other"),
            CommLabel::Unknown => encoder.write_str("unknown"),
        }
    }
}

/// Escapes a label value the way both text formats require: `\`, `"` and newline.
/// (prometheus-client writes label values verbatim.)
pub(super) fn write_escaped(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '\\' => "\\\\",
            '"' => "\\\"",
            '\n' => "\\n",
            _ => continue,
        };
        w.write_str(&s[start..i])?;
        w.write_str(escaped)?;
        start = i + c.len_utf8();
    }
    w.write_str(&s[start..])
}

/// One series of the per-process CLOSE_WAIT families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProcessSeries {
    pub(super) pid: PidLabel,
    pub(super) comm: CommLabel,
    pub(super) container: ContainerLabel,
    pub(super) sockets: u64,
    pub(super) leaking: u64,
}

/// Applies the cardinality rule of [`super::registry`]: entries of the same pid are merged, empty
/// entries dropped, the top `cap` processes kept, the rest summed into `other`, unattributed
/// sockets summed into `unknown`. Also returns the number of distinct processes (before the
/// cap).
pub(super) fn process_series(owners: &[OwnerCloseWait], cap: usize) -> (Vec<ProcessSeries>, usize) {
    let mut unknown = (0u64, 0u64);
    let mut by_pid: HashMap<u32, ProcessSeries> = HashMap::new();
    for owner in owners {
        if owner.sockets == 0 && owner.leaking == 0 {
            continue;
        }
        let Some(pid) = owner.pid else {
            unknown.0 = unknown.0.saturating_add(owner.sockets);
            unknown.1 = unknown.1.saturating_add(owner.leaking);
            continue;
        };
        let comm = owner
            .comm
            .filter(|c| c.0[0] != 0)
            .map_or(CommLabel::Unknown, CommLabel::Comm);
        match by_pid.entry(pid) {
            Entry::Occupied(mut e) => {
                let s = e.get_mut();
                s.sockets = s.sockets.saturating_add(owner.sockets);
                s.leaking = s.leaking.saturating_add(owner.leaking);
                if s.comm == CommLabel::Unknown {
                    s.comm = comm;
                }
                if s.container.0.is_none() {
                    s.container = ContainerLabel(owner.container);
                }
            }
            Entry::Vacant(e) => {
                e.insert(ProcessSeries {
                    pid: PidLabel::Pid(pid),
                    comm,
                    container: ContainerLabel(owner.container),
                    sockets: owner.sockets,
                    leaking: owner.leaking,
                });
            }
        }
    }
    let processes = by_pid.len();
    let mut series: Vec<ProcessSeries> = by_pid.into_values().collect();
    let key = |s: &ProcessSeries| match s.pid {
        PidLabel::Pid(p) => p,
        PidLabel::Other | PidLabel::Unknown => u32::MAX,
    };
    series.sort_unstable_by(|a, b| {
        b.leaking
            .cmp(&a.leaking)
            .then(b.sockets.cmp(&a.sockets))
            .then(key(a).cmp(&key(b)))
    });
    if series.len() > cap {
        let rest = series.split_off(cap);
        let other = rest.iter().fold((0u64, 0u64), |acc, s| {
            (
                acc.0.saturating_add(s.sockets),
                acc.1.saturating_add(s.leaking),
            )
        });
        series.push(ProcessSeries {
            pid: PidLabel::Other,
            comm: CommLabel::Other,
            container: ContainerLabel(None),
            sockets: other.0,
            leaking: other.1,
        });
    }
    if unknown != (0, 0) {
        series.push(ProcessSeries {
            pid: PidLabel::Unknown,
            comm: CommLabel::Unknown,
            container: ContainerLabel(None),
            sockets: unknown.0,
            leaking: unknown.1,
        });
    }
    (series, processes)
}

/// Converts the snapshot's cumulative buckets into the per-bucket counts prometheus-client
/// expects, keeping bounds ≥ [`MIN_DWELL_BUCKET_SECONDS`], and appends `+Inf` (`f64::MAX`).
/// Inconsistent input (decreasing bounds or counts) is repaired rather than exported invalid.
/// Returns the count.
pub(super) fn histogram_buckets(h: &HistogramSnapshot, out: &mut Vec<(f64, u64)>) -> u64 {
    // Tolerates bounds computed with rounding error just below 10 µs.
    const MIN_BOUND: f64 = MIN_DWELL_BUCKET_SECONDS * (1.0 - 1e-9);
    out.clear();
    let mut prev_bound = f64::NEG_INFINITY;
    let mut prev_cum = 0u64;
    for &(bound, cum) in &h.buckets {
        if !bound.is_finite() || bound >= f64::MAX || bound <= prev_bound || bound < MIN_BOUND {
            continue;
        }
        let cum = cum.max(prev_cum);
        out.push((bound, cum - prev_cum));
        prev_bound = bound;
        prev_cum = cum;
    }
    let count = h
        .count
        .max(prev_cum)
        .max(h.buckets.iter().map(|b| b.1).max().unwrap_or(0));
    out.push((f64::MAX, count - prev_cum));
    count
}
