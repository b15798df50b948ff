//! Unit tests of the exposition: format negotiation, escaping, the series cap, histograms, the
//! golden exposition in both formats, and the documentation of every family.

use super::families::*;
use super::series::*;
use super::*;
use crate::container::ContainerId;
use crate::event::{Comm, TcpState};
use crate::record::CloseKind;

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
        leak_checks_gone_total: 3,
        leak_checks_other_state_total: 2,
        reconcile: Some(crate::engine::summary::samples().0),
        holders: Some(crate::engine::summary::samples().1),
        idle_before_close: vec![(
            CloseKind::Reset,
            HistogramSnapshot {
                buckets: vec![(1.0, 1), (290.0, 2), (340.0, 2), (360.0, 7)],
                count: 8,
                sum_seconds: 2460.5,
            },
        )],
        resets_traced: true,
        resets_sent: vec![
            crate::metrics::ResetSeries {
                reason: "NO_SOCKET",
                netns: None,
                remote: "10.0.0.7".into(),
                count: 50,
            },
            crate::metrics::ResetSeries {
                reason: "TCP_ABORT_ON_CLOSE",
                netns: Some(4026532000),
                remote: "::1".into(),
                count: 2,
            },
            crate::metrics::ResetSeries {
                reason: "NO_SOCKET",
                netns: None,
                remote: "other".into(),
                count: 9,
            },
        ],
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
        include_str!("../../tests/fixtures/metrics/golden.openmetrics"),
    );
}

#[test]
fn golden_exposition_text() {
    check_golden(
        &golden_render(Format::Text),
        "golden.txt",
        include_str!("../../tests/fixtures/metrics/golden.txt"),
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
    let docs = include_str!("../../../docs/metrics.md");
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
