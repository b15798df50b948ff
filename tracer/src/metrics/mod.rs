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
//!
//! Inside, downward: `families` (one descriptor per family, and the encoder that walks them) →
//! `series` (label sets, the per-process cap, histogram buckets) → `snapshot` (the data);
//! `format` (content negotiation, the 0.0.4 rewrite) stands apart.

mod families;
mod format;
mod series;
mod snapshot;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use families::PREFIX;
pub use format::{EncodeError, Format, encode, openmetrics_to_text};
pub use series::{DEFAULT_MAX_PROCESS_SERIES, MIN_DWELL_BUCKET_SECONDS};
pub use snapshot::{
    HistogramSnapshot, MetricsSnapshot, OwnerCloseWait, PortSeries, RemoteSeries, ResetSeries,
    SnapshotSource,
};

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
        families::encode_snapshot(&snapshot, self.max_process_series, &mut encoder)
    }
}
