//! Prometheus exposition of the engine's state, built at scrape time.
//!
//! Consumes one [`MetricsSnapshot`] per scrape from a [`SnapshotSource`] (the engine) and
//! produces the OpenMetrics 1.0 text format (through prometheus-client) or, derived from it,
//! the Prometheus text format 0.0.4 ([`encode`], [`Format`]). Nothing here runs per event: the
//! engine keeps every count, and the [`Collector`] registered by [`registry`] only reads a
//! snapshot when Prometheus asks.
//!
//! Label values are bounded: states and close kinds are closed sets, and the per-process
//! CLOSE_WAIT families keep at most `max_process_series` processes plus `other` and `unknown`
//! (see [`registry`]). docs/metrics.md lists every family.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::container::ContainerId;
use crate::event::{Comm, TcpState};
use crate::record::CloseKind;

/// Prefix of every metric name.
pub const PREFIX: &str = "tracer";

/// Default cap on per-process series in the CLOSE_WAIT families.
pub const DEFAULT_MAX_PROCESS_SERIES: usize = 100;

/// Smallest dwell-histogram bound exported (10 µs); smaller bounds in a snapshot are folded into
/// the first exported bucket (buckets are cumulative, so nothing is lost).
pub const MIN_DWELL_BUCKET_SECONDS: f64 = 10e-6;

/// Everything the exposition shows, taken from the engine at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Transitions seen, `[from.index()][to.index()]` ([`TcpState::index`]).
    pub transitions: [[u64; 12]; 12],
    /// Time spent in each state before leaving it, one histogram per state.
    pub dwell: Vec<(TcpState, HistogramSnapshot)>,
    /// Closed connections by kind; kinds missing here are exported as 0.
    pub closes: Vec<(CloseKind, u64)>,
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

/// Builds the registry: `tracer_build_info` plus a scrape-time collector over `source`.
///
/// The per-process CLOSE_WAIT families (`tracer_tcp_close_wait_sockets`,
/// `tracer_tcp_close_wait_leaks`) carry at most `max_process_series` processes, chosen by most
/// leaking sockets, then most sockets, then lowest pid; the rest are summed under
/// `pid="other",comm="other"`. Unattributed sockets are always their own series,
/// `pid="unknown",comm="unknown"`, outside the cap. The `container` label is the owner's
/// 12-character container id, empty outside containers and on the aggregate series. So each family has at most
/// `max_process_series + 2` series.
pub fn registry(source: Arc<dyn SnapshotSource>, max_process_series: usize) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register(
        "build",
        "Version of this tracer build",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(SnapshotCollector {
        source,
        max_process_series,
    }));
    registry
}

/// Exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub const OPENMETRICS_CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
    pub const TEXT_CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => Self::OPENMETRICS_CONTENT_TYPE,
            Format::Text => Self::TEXT_CONTENT_TYPE,
        }
    }

    /// Picks the format from an `Accept` header: OpenMetrics when the client names
    /// `application/openmetrics-text` (version 1.0.0, 0.0.1 or none) with a quality at least as
    /// high as any range that covers `text/plain`; the 0.0.4 text format otherwise (no header,
    /// `*/*`, `text/plain`, anything unparsable).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut q_openmetrics = 0.0_f64;
        let mut q_text = 0.0_f64;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0_f64;
            let mut version = None;
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "version" => version = Some(v.to_owned()),
                    _ => {}
                }
            }
            if !(0.0..=1.0).contains(&q) {
                continue;
            }
            match media.as_str() {
                "application/openmetrics-text"
                    if matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) =>
                {
                    q_openmetrics = q_openmetrics.max(q);
                }
                "text/plain" if matches!(version.as_deref(), None | Some("0.0.4")) => {
                    q_text = q_text.max(q);
                }
                "text/*" | "*/*" => q_text = q_text.max(q),
                _ => {}
            }
        }
        if q_openmetrics > 0.0 && q_openmetrics >= q_text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Encoding the exposition failed (a metric value could not be written).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the metrics exposition")]
pub struct EncodeError(#[source] fmt::Error);

/// Encodes everything in `registry` in `format`; takes one snapshot.
pub fn encode(registry: &Registry, format: Format) -> Result<String, EncodeError> {
    let mut openmetrics = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut openmetrics, registry).map_err(EncodeError)?;
    Ok(match format {
        Format::OpenMetrics => openmetrics,
        Format::Text => openmetrics_to_text(&openmetrics),
    })
}

/// Rewrites an OpenMetrics exposition (as prometheus-client writes it) into the Prometheus
/// text format 0.0.4: drops `# UNIT` and `# EOF`; names counter families after their `_total`
/// samples and info families after their `_info` samples (typed `gauge`); `unknown` becomes
/// `untyped`; undoes the OpenMetrics-only `\"` escape in help text. Sample lines are the same
/// in both formats (no exemplars or timestamps are written here).
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut renames: HashMap<&str, (&str, &str)> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            let rename = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                _ => continue,
            };
            renames.insert(name, rename);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = renames.get(name).map_or("", |r| r.0);
            out.push_str("# HELP ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            push_text_help(&mut out, help);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = renames.get(name).copied().unwrap_or(("", kind));
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(kind);
        } else if line.starts_with('#') || line.is_empty() {
            // `# UNIT`, `# EOF`: not part of the 0.0.4 format.
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// OpenMetrics escapes `\`, newline and `"` in help text; 0.0.4 only `\` and newline.
fn push_text_help(out: &mut String, help: &str) {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('"') => out.push('"'),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push_str("\\\\"),
            }
        } else {
            out.push(c);
        }
    }
}

/// The scrape-time collector: one snapshot per scrape, encoded family by family.
struct SnapshotCollector {
    source: Arc<dyn SnapshotSource>,
    max_process_series: usize,
}

impl fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotCollector")
            .field("max_process_series", &self.max_process_series)
            .finish_non_exhaustive()
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = self.source.snapshot();
        encode_snapshot(&snapshot, self.max_process_series, &mut encoder)
    }
}

#[derive(Debug, EncodeLabelSet)]
struct TransitionLabels {
    from: &'static str,
    to: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, EncodeLabelSet)]
struct ProcessLabels {
    pid: PidLabel,
    comm: CommLabel,
    container: ContainerLabel,
}

/// The `container` label: the 12-character container id, or empty (no container, or an
/// aggregate series).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ContainerLabel(Option<ContainerId>);

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
enum PidLabel {
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
enum CommLabel {
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
fn write_escaped(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
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
struct ProcessSeries {
    pid: PidLabel,
    comm: CommLabel,
    container: ContainerLabel,
    sockets: u64,
    leaking: u64,
}

/// Applies the cardinality rule of [`registry`]: entries of the same pid are merged, empty
/// entries dropped, the top `cap` processes kept, the rest summed into `other`, unattributed
/// sockets summed into `unknown`. Also returns the number of distinct processes (before the
/// cap).
fn process_series(owners: &[OwnerCloseWait], cap: usize) -> (Vec<ProcessSeries>, usize) {
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
fn histogram_buckets(h: &HistogramSnapshot, out: &mut Vec<(f64, u64)>) -> u64 {
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
/// sample adds `_total` ([`Family::sample_name`]). Adding a metric is one row of [`FAMILIES`]
/// (plus its row in docs/metrics.md, which a test checks).
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
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
    fn sample_name(&self) -> String {
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
static FAMILIES: &[Family] = &[
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
        help: "Leak candidates whose owner's last send could not be read (tcp_info); decided by CLOSE_WAIT age alone.",
        unit: None,
        samples: Samples::Counter(|s| Some(s.snapshot.leak_checks_unanswered_total)),
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
fn encode_snapshot(s: &MetricsSnapshot, cap: usize, enc: &mut DescriptorEncoder) -> fmt::Result {
    let (processes, process_count) = process_series(&s.close_wait, cap);
    let scrape = Scrape {
        snapshot: s,
        processes,
        process_count,
    };
    FAMILIES.iter().try_for_each(|f| f.encode(&scrape, enc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32, comm: &str, sockets: u64, leaking: u64) -> OwnerCloseWait {
        OwnerCloseWait {
            pid: Some(pid),
            comm: Some(Comm::new(comm)),
            container: None,
            sockets,
            leaking,
        }
    }

    fn render(snapshot: MetricsSnapshot, cap: usize, format: Format) -> String {
        let reg = registry(Arc::new(move || snapshot.clone()), cap);
        encode(&reg, format).unwrap()
    }

    fn sample(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn negotiates_format() {
        use Format::{OpenMetrics as Om, Text};
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let cases = [
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some(prometheus), Om),
            (Some("application/openmetrics-text"), Om),
            (
                Some("application/openmetrics-text; version=0.0.1; charset=utf-8"),
                Om,
            ),
            (Some("APPLICATION/OpenMetrics-Text;version=1.0.0"), Om),
            (Some("application/openmetrics-text;version=2.0.0"), Text),
            (Some("application/openmetrics-text;q=0"), Text),
            (
                Some("text/plain;version=0.0.4,application/openmetrics-text;q=0.5"),
                Text,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.3,application/openmetrics-text;q=0.5"),
                Om,
            ),
            (Some("application/json"), Text),
            (Some(";;,,q=="), Text),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        write_escaped(&mut s, "a\"b\\c\nd é").unwrap();
        assert_eq!(s, "a\\\"b\\\\c\\nd é");
        let snap = MetricsSnapshot {
            close_wait: vec![owner(7, "we\"ird\\na\nme", 1, 0)],
            ..Default::default()
        };
        let text = render(snap, 10, Format::Text);
        assert!(
            text.contains(
                r#"tracer_tcp_close_wait_sockets{pid="7",comm="we\"ird\\na\nme",container=""} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn caps_process_series_and_sums_the_rest() {
        let mut owners: Vec<_> = (1..=10).map(|p| owner(p, "p", u64::from(p), 0)).collect();
        owners.push(owner(100, "leaker", 1, 1));
        owners.push(OwnerCloseWait {
            pid: None,
            comm: None,
            container: None,
            sockets: 4,
            leaking: 2,
        });
        owners.push(owner(200, "idle", 0, 0));
        let (series, processes) = process_series(&owners, 3);
        assert_eq!(processes, 11);
        let got: Vec<_> = series
            .iter()
            .map(|s| (s.pid, s.sockets, s.leaking))
            .collect();
        assert_eq!(
            got,
            vec![
                (PidLabel::Pid(100), 1, 1),
                (PidLabel::Pid(10), 10, 0),
                (PidLabel::Pid(9), 9, 0),
                (PidLabel::Other, (1..=8).sum(), 0),
                (PidLabel::Unknown, 4, 2),
            ]
        );
        // No `other` when everything fits; cap 0 folds every process into `other`.
        assert_eq!(process_series(&owners, 11).0.len(), 12);
        let (all_other, _) = process_series(&owners, 0);
        assert_eq!(all_other.len(), 2);
        assert_eq!(all_other[0].sockets, (1..=10).sum::<u64>() + 1);
    }

    #[test]
    fn merges_duplicate_pids() {
        let owners = [
            OwnerCloseWait {
                pid: Some(5),
                comm: None,
                container: None,
                sockets: 1,
                leaking: 0,
            },
            owner(5, "srv", 2, 1),
        ];
        let (series, processes) = process_series(&owners, 10);
        assert_eq!(processes, 1);
        assert_eq!(
            series,
            vec![ProcessSeries {
                pid: PidLabel::Pid(5),
                comm: CommLabel::Comm(Comm::new("srv")),
                container: ContainerLabel(None),
                sockets: 3,
                leaking: 1,
            }]
        );
    }

    #[test]
    fn histogram_drops_small_bounds_and_repairs() {
        let h = HistogramSnapshot {
            buckets: vec![
                (1e-6, 1),
                (2e-6, 2),
                (5e-6, 3),
                (1e-5, 4),
                (2e-5, 4),
                (5e-5, 3), // decreasing count: repaired
                (1e-4, 9),
            ],
            count: 10,
            sum_seconds: 0.5,
        };
        let mut out = Vec::new();
        assert_eq!(histogram_buckets(&h, &mut out), 10);
        assert_eq!(
            out,
            vec![(1e-5, 4), (2e-5, 0), (5e-5, 0), (1e-4, 5), (f64::MAX, 1)]
        );
        let empty = HistogramSnapshot::default();
        assert_eq!(histogram_buckets(&empty, &mut out), 0);
        assert_eq!(out, vec![(f64::MAX, 0)]);
    }

    #[test]
    fn exposes_every_family() {
        let mut transitions = [[0u64; 12]; 12];
        transitions[TcpState::Established.index()][TcpState::CloseWait.index()] = 3;
        let mut sockets = [0u64; 12];
        sockets[TcpState::CloseWait.index()] = 2;
        let snap = MetricsSnapshot {
            transitions,
            dwell: vec![(
                TcpState::Established,
                HistogramSnapshot {
                    buckets: vec![(1e-5, 1), (1.0, 2), (3600.0, 3)],
                    count: 4,
                    sum_seconds: 5000.0,
                },
            )],
            closes: vec![(CloseKind::Passive, 2), (CloseKind::Passive, 1)],
            sockets,
            close_wait: vec![
                owner(42, "srv", 2, 1),
                OwnerCloseWait {
                    container: ContainerId::parse(
                        "4f1c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a",
                    ),
                    ..owner(43, "in-ctr", 1, 0)
                },
            ],
            close_wait_oldest_seconds: Some(12.5),
            leak_threshold_seconds: Some(60.0),
            leaks_detected_total: 1,
            events_total: 10,
            events_lost_total: 1,
            events_malformed_total: 0,
            tracked_sockets: 5,
            evictions_total: 0,
            bpf_transitions_seen_total: Some(11),
            bpf_filtered_total: Some(0),
            bpf_recursion_misses_total: Some(0),
            bpf_recursion_recovered_total: Some(0),
            bpf_run_time_ns: Some(1_500_000_000),
            bpf_run_count: Some(11),
            time_wait_remotes: vec![
                RemoteSeries {
                    netns: None,
                    remote: "127.0.0.1:5432".into(),
                    sockets: 3000,
                },
                RemoteSeries {
                    netns: Some(4026532000),
                    remote: "[::1]:80".into(),
                    sockets: 2,
                },
                RemoteSeries {
                    netns: None,
                    remote: "other".into(),
                    sockets: 7,
                },
            ],
            ephemeral_ports: vec![PortSeries {
                netns: None,
                local: "127.0.0.1".into(),
                remote: "127.0.0.1:5432".into(),
                ratio: 0.25,
            }],
            ..Default::default()
        };
        let om = render(snap.clone(), 100, Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        for want in [
            "# TYPE tracer_tcp_transitions counter",
            r#"tracer_tcp_transitions_total{from="ESTABLISHED",to="CLOSE_WAIT"} 3"#,
            "# UNIT tracer_tcp_state_dwell_seconds seconds",
            r#"tracer_tcp_state_dwell_seconds_bucket{le="+Inf",state="ESTABLISHED"} 4"#,
            r#"tracer_tcp_state_dwell_seconds_bucket{le="3600.0",state="ESTABLISHED"} 3"#,
            r#"tracer_tcp_closes_total{kind="passive"} 3"#,
            r#"tracer_tcp_closes_total{kind="connect_failed"} 0"#,
            r#"tracer_tcp_sockets{state="CLOSE_WAIT"} 2"#,
            r#"tracer_tcp_close_wait_sockets{pid="42",comm="srv",container=""} 2"#,
            r#"tracer_tcp_close_wait_leaks{pid="42",comm="srv",container=""} 1"#,
            r#"tracer_tcp_close_wait_sockets{pid="43",comm="in-ctr",container="4f1c2a9b8d7e"} 1"#,
            "tracer_tcp_close_wait_oldest_seconds 12.5",
            "tracer_bpf_run_time_seconds_total 1.5",
            "tracer_bpf_runs_total 11",
            "tracer_events_total 10",
            r#"tracer_build_info{version=""#,
            r#"tracer_tcp_time_wait_sockets{remote="127.0.0.1:5432"} 3000"#,
            r#"tracer_tcp_time_wait_sockets{remote="[::1]:80",netns="4026532000"} 2"#,
            r#"tracer_tcp_time_wait_sockets{remote="other"} 7"#,
            r#"tracer_tcp_ephemeral_ports_used_ratio{local="127.0.0.1",remote="127.0.0.1:5432"} 0.25"#,
        ] {
            assert!(om.contains(want), "missing {want:?} in\n{om}");
        }
        assert_eq!(sample(&om, "tracer_tcp_closes_total").len(), 9);
        assert_eq!(sample(&om, "tracer_tcp_sockets{").len(), 12);
        assert_eq!(sample(&om, "tracer_tcp_transitions_total").len(), 1);

        let text = render(snap, 100, Format::Text);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        for want in [
            "# TYPE tracer_tcp_transitions_total counter",
            "# HELP tracer_tcp_transitions_total ",
            "# TYPE tracer_bpf_run_time_seconds_total counter",
            "# TYPE tracer_build_info gauge",
            "# TYPE tracer_tcp_state_dwell_seconds histogram",
            "# TYPE tracer_tcp_sockets gauge",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn empty_snapshot_still_has_fixed_families() {
        let text = render(MetricsSnapshot::default(), 100, Format::Text);
        assert_eq!(sample(&text, "tracer_tcp_closes_total").len(), 9);
        assert!(
            text.contains("tracer_tcp_close_wait_oldest_seconds 0\n")
                || text.contains("tracer_tcp_close_wait_oldest_seconds 0.0\n"),
            "{text}"
        );
        assert!(!text.contains("tracer_tcp_transitions"), "{text}");
        assert!(!text.contains("tracer_tcp_close_wait_sockets"), "{text}");
        assert!(!text.contains("tracer_bpf_runs"), "{text}");
    }

    #[test]
    fn text_conversion_renames_families() {
        let om = "# HELP a_seconds Help with \\\"quotes\\\" and \\\\.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total 1\n# HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n# HELP c C.\n# TYPE c unknown\nc 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_seconds_total Help with \"quotes\" and \\\\.\n# TYPE a_seconds_total counter\na_seconds_total 1\n# HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n# HELP c C.\n# TYPE c untyped\nc 2\n"
        );
    }

    /// A snapshot with every family present: several transitions, histograms (bounds below
    /// 10 µs folded), process series beyond the cap of [`GOLDEN_CAP`] (`other`), unattributed
    /// sockets (`unknown`), a container, remotes and ports in another namespace, every kernel
    /// counter.
    fn golden_snapshot() -> MetricsSnapshot {
        let mut transitions = [[0u64; 12]; 12];
        transitions[TcpState::SynSent.index()][TcpState::Established.index()] = 40;
        transitions[TcpState::Established.index()][TcpState::FinWait1.index()] = 25;
        transitions[TcpState::Established.index()][TcpState::CloseWait.index()] = 12;
        transitions[TcpState::CloseWait.index()][TcpState::LastAck.index()] = 9;
        transitions[TcpState::LastAck.index()][TcpState::Close.index()] = 9;
        let mut sockets = [0u64; 12];
        for (i, state) in TcpState::ALL.into_iter().enumerate() {
            sockets[state.index()] = i as u64 * 7;
        }
        let ctr = "4f1c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
        MetricsSnapshot {
            transitions,
            dwell: vec![
                (
                    TcpState::Established,
                    HistogramSnapshot {
                        buckets: vec![(5e-6, 1), (1e-5, 2), (1e-3, 5), (1.0, 9), (3600.0, 11)],
                        count: 12,
                        sum_seconds: 4321.125,
                    },
                ),
                (
                    TcpState::CloseWait,
                    HistogramSnapshot {
                        buckets: vec![(1e-5, 0), (2e-5, 1), (0.5, 3), (60.0, 8)],
                        count: 9,
                        sum_seconds: 250.5,
                    },
                ),
                (TcpState::SynSent, HistogramSnapshot::default()),
            ],
            closes: vec![
                (CloseKind::Active, 20),
                (CloseKind::Passive, 9),
                (CloseKind::Reset, 3),
                (CloseKind::Passive, 1),
            ],
            sockets,
            close_wait: vec![
                owner(42, "srv", 6, 2),
                OwnerCloseWait {
                    container: ContainerId::parse(ctr),
                    ..owner(43, "in-ctr", 3, 0)
                },
                owner(44, "we\"ird\\\nname", 2, 1),
                owner(45, "", 1, 0),
                owner(46, "small", 1, 0),
                OwnerCloseWait {
                    pid: None,
                    comm: None,
                    container: None,
                    sockets: 4,
                    leaking: 1,
                },
            ],
            close_wait_oldest_seconds: Some(512.25),
            leak_threshold_seconds: Some(300.0),
            leaks_detected_total: 17,
            events_total: 123_456,
            events_lost_total: 7,
            events_malformed_total: 1,
            tracked_sockets: 4096,
            evictions_total: 2,
            bpf_transitions_seen_total: Some(130_000),
            bpf_filtered_total: Some(6_000),
            bpf_recursion_misses_total: Some(3),
            bpf_recursion_recovered_total: Some(250),
            bpf_run_time_ns: Some(987_654_321),
            bpf_run_count: Some(130_000),
            time_wait_remotes: vec![
                RemoteSeries {
                    netns: None,
                    remote: "127.0.0.1:5432".into(),
                    sockets: 3000,
                },
                RemoteSeries {
                    netns: Some(4026532000),
                    remote: "[::1]:80".into(),
                    sockets: 2,
                },
                RemoteSeries {
                    netns: None,
                    remote: "other".into(),
                    sockets: 7,
                },
            ],
            ephemeral_ports: vec![
                PortSeries {
                    netns: None,
                    local: "127.0.0.1".into(),
                    remote: "127.0.0.1:5432".into(),
                    ratio: 0.25,
                },
                PortSeries {
                    netns: Some(4026532000),
                    local: "::1".into(),
                    remote: "[::1]:80".into(),
                    ratio: 0.0625,
                },
                PortSeries {
                    netns: None,
                    local: "other".into(),
                    remote: "other".into(),
                    ratio: 0.5,
                },
            ],
            time_wait_table_full_total: 5,
            time_wait_resync_failures_total: 1,
            leak_checks_unanswered_total: 4,
        }
    }

    /// The per-process series cap of the golden exposition (leaves two processes to `other`).
    const GOLDEN_CAP: usize = 3;

    /// Renders the golden snapshot, the build version replaced by `VERSION`.
    fn golden_render(format: Format) -> String {
        let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        render(golden_snapshot(), GOLDEN_CAP, format).replace(&version, "version=\"VERSION\"")
    }

    /// Compares `got` with the golden file `name` (tests/fixtures/metrics/); with
    /// `TRACER_BLESS_METRICS=1` in the environment, rewrites the file instead.
    fn check_golden(got: &str, name: &str, want: &str) {
        if std::env::var_os("TRACER_BLESS_METRICS").is_some() {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/metrics")
                .join(name);
            std::fs::write(&path, got).unwrap();
            return;
        }
        if got != want {
            let line = got
                .lines()
                .zip(want.lines())
                .position(|(g, w)| g != w)
                .map_or_else(|| "length".to_owned(), |i| format!("line {}", i + 1));
            panic!("exposition differs from tests/fixtures/metrics/{name} ({line}):\n{got}");
        }
    }

    #[test]
    fn golden_exposition_openmetrics() {
        check_golden(
            &golden_render(Format::OpenMetrics),
            "golden.openmetrics",
            include_str!("../tests/fixtures/metrics/golden.openmetrics"),
        );
    }

    #[test]
    fn golden_exposition_text() {
        check_golden(
            &golden_render(Format::Text),
            "golden.txt",
            include_str!("../tests/fixtures/metrics/golden.txt"),
        );
    }

    /// The sample names of every family, `tracer_build_info` included.
    fn every_sample_name() -> Vec<String> {
        let mut names = vec![format!("{PREFIX}_build_info")];
        names.extend(FAMILIES.iter().map(Family::sample_name));
        names
    }

    #[test]
    fn every_family_is_documented() {
        let docs = include_str!("../../docs/metrics.md");
        let names = every_sample_name();
        for name in &names {
            assert!(
                docs.contains(&format!("\n| `{name}` |")),
                "{name} has no row in docs/metrics.md"
            );
        }
        for row in docs.lines().filter_map(|l| l.strip_prefix("| `tracer_")) {
            let name = format!("tracer_{}", row.split('`').next().unwrap_or(""));
            assert!(
                names.contains(&name),
                "docs/metrics.md documents {name}, which is no family"
            );
        }
    }

    #[test]
    fn golden_snapshot_has_every_family() {
        let om = golden_render(Format::OpenMetrics);
        let exposed: Vec<&str> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut want = vec![format!("{PREFIX}_build")];
        want.extend(FAMILIES.iter().map(|f| {
            let unit = f.unit.as_ref().map_or("", |u| u.as_str());
            let sep = if unit.is_empty() { "" } else { "_" };
            format!("{PREFIX}_{}{sep}{unit}", f.name)
        }));
        assert_eq!(exposed, want);
    }
}
