//! The view model of `tracer top`, pure (no terminal, no clock, no /proc):
//! - [`TopSink`]: top's [`Sink`] on the path. Per close or leak record of an owner it bumps a
//!   few counters and one histogram in that owner's entry — no allocation once the owner is
//!   known; transitions are ignored.
//! - [`Snapshot`]: what the front-end reads from the path and the kernel once per redraw.
//! - [`Model::update`]: builds a [`View`] (process rows, host strip, dwell per state) from a
//!   snapshot and what the sink gathered since the last one.
//! - [`Column`], [`sort_rows`], [`matches`]: sorting and filtering of the rows.

use std::collections::{HashMap, VecDeque};
use std::io;

use crate::container::ContainerId;
use crate::engine::{Histogram, OwnerCloseWait};
use crate::event::{Comm, TcpState, Transition};
use crate::pipeline::RecordContext;
use crate::pipeline::Sink;
use crate::record::{CloseKind, CloseRecord, LeakRecord, Owner};

/// Who a row is about: a process (pid), or `None` for the sockets whose owner is not known.
pub type OwnerId = Option<u32>;

/// The kinds of close with a closes/s column per process, and their column titles.
pub const RATE_KINDS: [(CloseKind, &str); 5] = [
    (CloseKind::Active, "ACT/s"),
    (CloseKind::Passive, "PAS/s"),
    (CloseKind::Reset, "RST/s"),
    (CloseKind::Abort, "ABT/s"),
    (CloseKind::ConnectFailed, "REF/s"),
];

/// Redraws an owner without CLOSE_WAIT sockets stays listed after its last close.
pub const LINGER_UPDATES: u64 = 10;
/// Redraws the dwell quantiles are taken over.
pub const DWELL_WINDOW: usize = 10;
/// Per-redraw p99 values kept for the dwell sparkline.
pub const SPARK_LEN: usize = 60;
/// States shown in the dwell panel, in this order (TIME_WAIT and NEW_SYN_RECV are never
/// traced; CLOSE has no dwell).
pub const DWELL_STATES: [TcpState; 9] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Closing,
    TcpState::Listen,
];

/// What the sink knows about one owner.
#[derive(Clone, Debug)]
struct Activity {
    comm: Comm,
    /// Closes per kind since the last [`Model::update`], by `CloseKind as usize`.
    window: [u64; CloseKind::ALL.len()],
    /// CLOSE_WAIT dwell of its sockets that left CLOSE_WAIT.
    close_wait_dwell: Histogram,
    /// Idle time before close of its connections.
    idle: Histogram,
    /// Update generation of its last close or leak record.
    last_record: u64,
}

/// `tracer top`'s sink: closes per owner and kind, CLOSE_WAIT dwell per owner. At most `limit`
/// owners are followed at once (owners idle for [`LINGER_UPDATES`] redraws are dropped at each
/// update); records of further owners are counted in [`TopSink::unfollowed`].
pub struct TopSink {
    owners: HashMap<OwnerId, Activity>,
    limit: usize,
    generation: u64,
    /// Records about owners beyond the limit (counted, never silently dropped).
    pub unfollowed: u64,
}

impl TopSink {
    pub fn new(limit: usize) -> Self {
        TopSink {
            owners: HashMap::with_capacity(limit.min(1024)),
            limit,
            generation: 0,
            unfollowed: 0,
        }
    }

    fn activity(&mut self, owner: Option<&Owner>) -> Option<&mut Activity> {
        let id = owner.map(|o| o.pid);
        let comm = owner.map(|o| o.comm).unwrap_or_default();
        let full = self.owners.len() >= self.limit;
        let generation = self.generation;
        let a = match self.owners.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                self.unfollowed += 1;
                return None;
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Activity {
                comm,
                window: [0; CloseKind::ALL.len()],
                close_wait_dwell: Histogram::new(),
                idle: Histogram::with_bounds(&crate::engine::histogram::IDLE_BOUNDS_NS),
                last_record: generation,
            }),
        };
        if owner.is_some() {
            a.comm = comm;
        }
        a.last_record = generation;
        Some(a)
    }

    /// Owners followed now.
    pub fn followed(&self) -> usize {
        self.owners.len()
    }
}

impl Sink for TopSink {
    fn transition(&mut self, _: &Transition, _: Option<&Owner>) -> io::Result<()> {
        Ok(())
    }

    fn close(&mut self, c: &CloseRecord, _: &RecordContext) -> io::Result<()> {
        if let Some(a) = self.activity(c.owner.as_ref()) {
            a.window[c.kind as usize] += 1;
            if let Some(d) = c.dwell_ns[TcpState::CloseWait.index()] {
                a.close_wait_dwell.record(d);
            }
            if let Some(idle) = c.idle.rx_ns {
                a.idle.record(idle);
            }
        }
        Ok(())
    }

    fn leak(&mut self, l: &LeakRecord, _: &RecordContext) -> io::Result<()> {
        self.activity(l.owner.as_ref());
        Ok(())
    }
}

/// One remote endpoint's TIME_WAIT sockets and the ephemeral ports used towards it (the
/// summary's `time_wait_top` rows).
pub type RemoteTimeWait = crate::engine::summary::RemoteSummary;

/// The TIME_WAIT panel's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWaitPanel {
    /// The remotes with the most TIME_WAIT sockets, most first.
    pub rows: Vec<RemoteTimeWait>,
    /// Remote endpoints with TIME_WAIT sockets now, shown or not.
    pub remotes: usize,
    /// Hand-overs not counted because the accounting's table was full
    /// (`--time-wait-capacity`).
    pub uncounted: u64,
}

/// What the front-end reads from the path and the kernel once per redraw.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Kernel monotonic ns.
    pub now_ns: u64,
    /// CLOSE_WAIT sockets per owner ([`crate::engine::Engine::close_wait_by_owner`]).
    pub close_wait: Vec<OwnerCloseWait>,
    /// Sockets per state, by [`TcpState::index`].
    pub sockets: [u64; 12],
    pub leaking_now: u64,
    /// Closes since the start.
    pub closes_total: u64,
    /// Events read from the ring buffer since the start.
    pub events_total: u64,
    /// Events the kernel could not put in the ring buffer (full).
    pub lost: u64,
    /// Events that could not be decoded.
    pub undecodable: u64,
    pub tracked: u64,
    pub capacity: u64,
    /// Cumulative dwell histograms, by [`TcpState::index`].
    pub dwell: [Histogram; 12],
    /// Remote endpoints by TIME_WAIT sockets; `None` when there is none.
    pub time_wait_by_remote: Option<TimeWaitPanel>,
    /// The (reason, remote) pairs this host sent the most RSTs to.
    pub resets_top: Vec<ResetSummary>,
    /// RSTs sent since the start; `None` when resets are not traced.
    pub resets_total: Option<u64>,
}

/// RSTs sent for one reason to one remote (the summary's `resets_top` rows).
pub type ResetSummary = crate::engine::summary::ResetSummary;

/// One process row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub owner: OwnerId,
    pub comm: Comm,
    pub container: Option<ContainerId>,
    /// Sockets in CLOSE_WAIT now.
    pub close_wait: u64,
    /// Of which over the threshold.
    pub leaking: u64,
    /// Of which never accepted (still in a listener's accept queue; only on the row of no
    /// owner).
    pub not_accepted: u64,
    /// Age of its oldest CLOSE_WAIT socket.
    pub oldest_ns: Option<u64>,
    /// Closes per second over the last redraw interval, in the order of [`RATE_KINDS`].
    pub rates: [f64; 5],
    /// p99 of the time its sockets spent in CLOSE_WAIT (those that left it since top started).
    pub p99_close_wait_ns: Option<u64>,
    /// Median idle time before close of its connections (since top started).
    pub p50_idle_ns: Option<u64>,
}

/// The host strip.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Host {
    pub sockets: [u64; 12],
    pub leaking: u64,
    pub closes_per_s: f64,
    pub events_per_s: f64,
    pub lost: u64,
    pub undecodable: u64,
    pub tracked: u64,
    pub capacity: u64,
    /// RSTs sent per second; `None` when resets are not traced.
    pub resets_per_s: Option<f64>,
    /// The top (reason, remote) pairs of RSTs sent since the start.
    pub resets_top: Vec<ResetSummary>,
}

/// Dwell of one state.
#[derive(Clone, Debug, PartialEq)]
pub struct DwellLine {
    pub state: TcpState,
    /// Samples in the last [`DWELL_WINDOW`] redraws.
    pub count: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// p99 per redraw interval, oldest first (`None`: no sample in that interval).
    pub history: Vec<Option<u64>>,
    /// p99 of this window is at least [`TREND_FACTOR`] times that of the window before.
    pub rising: bool,
}

/// Everything a redraw shows, built once per redraw.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Unsorted, unfiltered: the UI sorts and filters.
    pub rows: Vec<Row>,
    pub host: Host,
    pub dwell: Vec<DwellLine>,
    pub time_wait_by_remote: Option<TimeWaitPanel>,
    /// Records about owners top could not follow (over its owner limit).
    pub unfollowed: u64,
}

/// State kept between redraws: previous totals (for rates) and dwell history.
pub struct Model {
    prev_ns: u64,
    prev_events: u64,
    prev_closes: u64,
    prev_resets: u64,
    /// Cumulative dwell histograms of the last redraws, oldest first.
    dwell_marks: VecDeque<[Histogram; 12]>,
    /// p99 per redraw interval, per state.
    spark: [VecDeque<Option<u64>>; 12],
}

impl Model {
    /// A model whose first interval starts at `now_ns` with these totals.
    pub fn new(now_ns: u64, events: u64, closes: u64, dwell: &[Histogram; 12]) -> Self {
        let mut dwell_marks = VecDeque::with_capacity(2 * DWELL_WINDOW + 1);
        dwell_marks.push_back(dwell.clone());
        Model {
            prev_ns: now_ns,
            prev_events: events,
            prev_closes: closes,
            prev_resets: 0,
            dwell_marks,
            spark: std::array::from_fn(|_| VecDeque::with_capacity(SPARK_LEN)),
        }
    }

    /// Builds the view from a snapshot and what the sink gathered since the last update, then
    /// starts the sink's next interval. `container` names a process's container.
    pub fn update(
        &mut self,
        snap: &Snapshot,
        sink: &mut TopSink,
        mut container: impl FnMut(u32) -> Option<ContainerId>,
    ) -> View {
        let secs = (snap.now_ns.saturating_sub(self.prev_ns) as f64 / 1e9).max(1e-3);
        let mut rows: Vec<Row> = Vec::new();
        let mut index: HashMap<OwnerId, usize> = HashMap::new();
        // One row per process: an owner seen under two names (exec, a renamed thread) is one
        // row, named as by most of its CLOSE_WAIT sockets.
        let mut best: HashMap<OwnerId, u64> = HashMap::new();
        for o in &snap.close_wait {
            let id = o.owner.map(|k| k.pid);
            let comm = o.owner.map(|k| k.comm).unwrap_or_default();
            let i = *index.entry(id).or_insert_with(|| {
                rows.push(empty_row(id, comm));
                rows.len() - 1
            });
            let r = &mut rows[i];
            r.close_wait += o.close_wait;
            r.leaking += o.leaking;
            r.not_accepted += o.not_accepted;
            r.oldest_ns = Some(r.oldest_ns.unwrap_or(0).max(o.oldest_age_ns));
            let b = best.entry(id).or_insert(0);
            if o.close_wait > *b {
                *b = o.close_wait;
                r.comm = comm;
            }
        }
        let generation = sink.generation;
        sink.owners.retain(|id, a| {
            let listed = index.contains_key(id);
            listed || a.last_record + LINGER_UPDATES > generation
        });
        for (id, a) in sink.owners.iter_mut() {
            let i = *index.entry(*id).or_insert_with(|| {
                rows.push(empty_row(*id, a.comm));
                rows.len() - 1
            });
            let r = &mut rows[i];
            for (k, (kind, _)) in RATE_KINDS.iter().enumerate() {
                r.rates[k] = a.window[*kind as usize] as f64 / secs;
            }
            r.p99_close_wait_ns = a.close_wait_dwell.quantile(0.99);
            r.p50_idle_ns = a.idle.quantile(0.5);
            a.window = [0; CloseKind::ALL.len()];
        }
        for r in rows.iter_mut() {
            r.container = r.owner.and_then(&mut container);
        }
        sink.generation += 1;

        let host = Host {
            sockets: snap.sockets,
            leaking: snap.leaking_now,
            closes_per_s: snap.closes_total.saturating_sub(self.prev_closes) as f64 / secs,
            events_per_s: snap.events_total.saturating_sub(self.prev_events) as f64 / secs,
            lost: snap.lost,
            undecodable: snap.undecodable,
            tracked: snap.tracked,
            capacity: snap.capacity,
            resets_per_s: snap
                .resets_total
                .map(|n| n.saturating_sub(self.prev_resets) as f64 / secs),
            resets_top: snap.resets_top.clone(),
        };
        self.prev_resets = snap.resets_total.unwrap_or(0);
        let dwell = self.dwell_lines(&snap.dwell);
        self.prev_ns = snap.now_ns;
        self.prev_events = snap.events_total;
        self.prev_closes = snap.closes_total;
        View {
            rows,
            host,
            dwell,
            time_wait_by_remote: snap.time_wait_by_remote.clone(),
            unfollowed: sink.unfollowed,
        }
    }

    fn dwell_lines(&mut self, now: &[Histogram; 12]) -> Vec<DwellLine> {
        let last = self.dwell_marks.back().cloned().unwrap_or_default();
        for st in DWELL_STATES {
            let i = st.index();
            let s = &mut self.spark[i];
            if s.len() == SPARK_LEN {
                s.pop_front();
            }
            s.push_back(now[i].since(&last[i]).quantile(0.99));
        }
        if self.dwell_marks.len() == 2 * DWELL_WINDOW + 1 {
            self.dwell_marks.pop_front();
        }
        self.dwell_marks.push_back(now.clone());
        let n = self.dwell_marks.len();
        // The window: the last DWELL_WINDOW intervals; the one before it, for the trend.
        let start = &self.dwell_marks[n.saturating_sub(DWELL_WINDOW + 1)];
        let before = (n > DWELL_WINDOW + 1).then(|| &self.dwell_marks[0]);
        DWELL_STATES
            .into_iter()
            .filter(|st| !now[st.index()].is_empty())
            .map(|st| {
                let i = st.index();
                let w = now[i].since(&start[i]);
                let p99 = w.quantile(0.99);
                let prev = before.map(|b| start[i].since(&b[i]));
                DwellLine {
                    state: st,
                    count: w.count(),
                    p50_ns: w.quantile(0.5),
                    p99_ns: p99,
                    history: self.spark[i].iter().copied().collect(),
                    rising: rising(&w, prev.as_ref()),
                }
            })
            .collect()
    }
}

/// Samples each of two windows needs before their p99s are compared.
pub const TREND_MIN_SAMPLES: u64 = 20;
/// How much larger a window's p99 must be than the previous window's to be flagged.
pub const TREND_FACTOR: u64 = 4;
/// The least p99 flagged: below it a 4x swing is noise (a FIN_WAIT2 of 4 µs, then of 28 µs; a
/// CLOSE_WAIT of 0.6 ms, then of 2.7 ms), not a state that sockets start to linger in.
pub const TREND_FLOOR_NS: u64 = 10_000_000;

/// Whether the p99 of `window` is at least [`TREND_FACTOR`] times that of `before` and at
/// least [`TREND_FLOOR_NS`], both windows having [`TREND_MIN_SAMPLES`] samples (fewer make a
/// p99 too noisy to compare).
fn rising(window: &Histogram, before: Option<&Histogram>) -> bool {
    let Some(before) = before else { return false };
    if window.count() < TREND_MIN_SAMPLES || before.count() < TREND_MIN_SAMPLES {
        return false;
    }
    matches!(
        (window.quantile(0.99), before.quantile(0.99)),
        (Some(a), Some(b)) if a >= b.saturating_mul(TREND_FACTOR) && a >= TREND_FLOOR_NS
    )
}

fn empty_row(owner: OwnerId, comm: Comm) -> Row {
    Row {
        owner,
        comm,
        container: None,
        close_wait: 0,
        leaking: 0,
        not_accepted: 0,
        oldest_ns: None,
        rates: [0.0; 5],
        p99_close_wait_ns: None,
        p50_idle_ns: None,
    }
}

/// A sortable column of the process table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Pid,
    Comm,
    Container,
    CloseWait,
    Leaking,
    Oldest,
    /// Closes per second of [`RATE_KINDS`]`[k]`.
    Rate(usize),
    P99CloseWait,
    /// Median idle time before close.
    P50Idle,
}

impl Column {
    /// Every column, in display order.
    pub const ALL: [Column; 13] = [
        Column::Pid,
        Column::Comm,
        Column::Container,
        Column::CloseWait,
        Column::Leaking,
        Column::Oldest,
        Column::Rate(0),
        Column::Rate(1),
        Column::Rate(2),
        Column::Rate(3),
        Column::Rate(4),
        Column::P99CloseWait,
        Column::P50Idle,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Pid => "PID",
            Column::Comm => "COMM",
            Column::Container => "CONTAINER",
            Column::CloseWait => "CLOSE_WAIT",
            Column::Leaking => "LEAKING",
            Column::Oldest => "OLDEST",
            Column::Rate(k) => RATE_KINDS.get(k).map_or("?", |(_, t)| t),
            Column::P99CloseWait => "P99 CW",
            Column::P50Idle => "IDLE P50",
        }
    }

    /// Names and numbers sort ascending first; counts, ages and rates descending.
    pub fn descending_first(self) -> bool {
        !matches!(self, Column::Pid | Column::Comm | Column::Container)
    }

    fn position(self) -> usize {
        Column::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The next column to the right (`step` 1) or left (`step` -1), wrapping.
    pub fn step(self, step: isize) -> Column {
        let n = Column::ALL.len() as isize;
        let i = (self.position() as isize + step).rem_euclid(n);
        Column::ALL[i as usize]
    }
}

/// Sorts rows by `by` (ties: more CLOSE_WAIT first, then by pid, unknown owner last).
pub fn sort_rows(rows: &mut [&Row], by: Column, descending: bool) {
    use std::cmp::Ordering;
    let key = |a: &Row, b: &Row| -> Ordering {
        match by {
            Column::Pid => a
                .owner
                .unwrap_or(u32::MAX)
                .cmp(&b.owner.unwrap_or(u32::MAX)),
            Column::Comm => a.comm.0.cmp(&b.comm.0),
            Column::Container => {
                let s = |r: &Row| r.container.map(|c| c.as_str().to_owned());
                s(a).cmp(&s(b))
            }
            Column::CloseWait => a.close_wait.cmp(&b.close_wait),
            Column::Leaking => a.leaking.cmp(&b.leaking),
            Column::Oldest => a.oldest_ns.cmp(&b.oldest_ns),
            Column::Rate(k) => a.rates[k].total_cmp(&b.rates[k]),
            Column::P99CloseWait => a.p99_close_wait_ns.cmp(&b.p99_close_wait_ns),
            Column::P50Idle => a.p50_idle_ns.cmp(&b.p50_idle_ns),
        }
    };
    rows.sort_by(|a, b| {
        let o = key(a, b);
        let o = if descending { o.reverse() } else { o };
        o.then(b.close_wait.cmp(&a.close_wait)).then(
            a.owner
                .unwrap_or(u32::MAX)
                .cmp(&b.owner.unwrap_or(u32::MAX)),
        )
    });
}

/// Whether a row passes the `/` filter: its pid is the filter, or its comm (or container id)
/// contains it, ignoring case. An empty filter passes everything.
pub fn matches(row: &Row, filter: &str) -> bool {
    let f = filter.trim();
    if f.is_empty() {
        return true;
    }
    if let Ok(pid) = f.parse::<u32>()
        && row.owner == Some(pid)
    {
        return true;
    }
    let f = f.to_ascii_lowercase();
    row.comm.as_str().to_ascii_lowercase().contains(&f)
        || row.container.is_some_and(|c| c.as_str().starts_with(&f))
}

/// The rows to show, filtered and sorted.
pub fn visible<'a>(rows: &'a [Row], filter: &str, by: Column, descending: bool) -> Vec<&'a Row> {
    let mut v: Vec<&Row> = rows.iter().filter(|r| matches(r, filter)).collect();
    sort_rows(&mut v, by, descending);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::OwnerKey;
    use crate::event::Family;
    use crate::record::{OwnerSource, Role, SocketId, StatePath};
    use std::net::{IpAddr, Ipv4Addr};

    const S: u64 = 1_000_000_000;

    fn owner(pid: u32, comm: &str) -> Owner {
        Owner {
            pid,
            comm: Comm::new(comm),
            source: OwnerSource::Inode,
        }
    }

    fn close(owner: Option<Owner>, kind: CloseKind, close_wait_ns: Option<u64>) -> CloseRecord {
        let mut dwell = [None; 12];
        dwell[TcpState::CloseWait.index()] = close_wait_ns;
        CloseRecord {
            ts_ns: 0,
            id: SocketId {
                sk: 1,
                netns: 0,
                family: Family::V4,
                saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                sport: 1,
                daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                dport: 2,
            },
            role: Role::Server,
            kind,
            states: StatePath::default(),
            dwell_ns: dwell,
            lifetime_ns: None,
            time_wait: false,
            reset_by: None,
            sk_err: None,
            leaked: false,
            closed_unseen: false,
            idle: crate::event::Idle::NONE,
            rst_reason: None,
            owner,
        }
    }

    fn cw(pid: u32, comm: &str, n: u64, leaking: u64, oldest_s: u64) -> OwnerCloseWait {
        OwnerCloseWait {
            owner: Some(OwnerKey {
                pid,
                comm: Comm::new(comm),
            }),
            close_wait: n,
            leaking,
            oldest_age_ns: oldest_s * S,
            not_accepted: 0,
        }
    }

    fn snapshot(now_ns: u64, close_wait: Vec<OwnerCloseWait>) -> Snapshot {
        Snapshot {
            now_ns,
            close_wait,
            sockets: [0; 12],
            leaking_now: 0,
            closes_total: 0,
            events_total: 0,
            lost: 0,
            undecodable: 0,
            tracked: 0,
            capacity: 100,
            dwell: std::array::from_fn(|_| Histogram::new()),
            time_wait_by_remote: None,
            resets_top: Vec::new(),
            resets_total: None,
        }
    }

    fn model() -> Model {
        Model::new(0, 0, 0, &std::array::from_fn(|_| Histogram::new()))
    }

    fn row(v: &View, pid: u32) -> &Row {
        v.rows
            .iter()
            .find(|r| r.owner == Some(pid))
            .unwrap_or_else(|| panic!("no row for {pid} in {:?}", v.rows))
    }

    #[test]
    fn rows_join_close_wait_snapshot_and_closes_by_kind() {
        let mut sink = TopSink::new(100);
        let mut m = model();
        let cx = RecordContext::default();
        let srv = owner(10, "srv");
        for _ in 0..4 {
            sink.close(&close(Some(srv), CloseKind::Passive, Some(2 * S)), &cx)
                .unwrap();
        }
        sink.close(&close(Some(srv), CloseKind::Reset, None), &cx)
            .unwrap();
        sink.close(
            &close(Some(owner(20, "cli")), CloseKind::ConnectFailed, None),
            &cx,
        )
        .unwrap();
        sink.close(&close(None, CloseKind::Active, None), &cx)
            .unwrap();
        let snap = snapshot(
            2 * S,
            vec![cw(10, "srv", 3, 1, 40), cw(30, "idle", 2, 0, 5)],
        );
        let v = m.update(&snap, &mut sink, |pid| {
            (pid == 10).then(|| ContainerId::parse(&"ab".repeat(32)).unwrap())
        });
        assert_eq!(v.rows.len(), 4, "{:?}", v.rows);
        let r = row(&v, 10);
        assert_eq!((r.close_wait, r.leaking, r.oldest_ns), (3, 1, Some(40 * S)));
        assert_eq!(r.comm.as_str(), "srv");
        // Over 2 s: 4 passive closes = 2/s, 1 reset = 0.5/s.
        assert_eq!(r.rates, [0.0, 2.0, 0.5, 0.0, 0.0]);
        assert_eq!(r.p99_close_wait_ns, Some(2 * S));
        assert_eq!(r.container.unwrap().short(), "abababababab");
        let r = row(&v, 20);
        assert_eq!((r.close_wait, r.rates[4]), (0, 0.5));
        assert_eq!(row(&v, 30).close_wait, 2);
        let unknown = v.rows.iter().find(|r| r.owner.is_none()).unwrap();
        assert_eq!(unknown.rates[0], 0.5);

        // The next interval: rates start again from zero.
        let v = m.update(
            &snapshot(3 * S, vec![cw(10, "srv", 3, 3, 41)]),
            &mut sink,
            |_| None,
        );
        let r = row(&v, 10);
        assert_eq!((r.rates, r.leaking), ([0.0; 5], 3));
        // Its CLOSE_WAIT dwell is kept.
        assert_eq!(r.p99_close_wait_ns, Some(2 * S));
    }

    #[test]
    fn one_row_per_process_named_by_most_sockets() {
        let mut sink = TopSink::new(100);
        let v = model().update(
            &snapshot(S, vec![cw(10, "old", 1, 0, 9), cw(10, "new", 4, 2, 3)]),
            &mut sink,
            |_| None,
        );
        assert_eq!(v.rows.len(), 1);
        let r = &v.rows[0];
        assert_eq!(
            (r.comm.as_str().as_ref(), r.close_wait, r.leaking),
            ("new", 5, 2)
        );
        assert_eq!(r.oldest_ns, Some(9 * S));
    }

    #[test]
    fn idle_owners_linger_then_go_and_the_owner_limit_is_counted() {
        let mut sink = TopSink::new(2);
        let mut m = model();
        let cx = RecordContext::default();
        sink.close(&close(Some(owner(1, "a")), CloseKind::Active, None), &cx)
            .unwrap();
        sink.close(&close(Some(owner(2, "b")), CloseKind::Active, None), &cx)
            .unwrap();
        // A third owner does not fit: counted.
        sink.close(&close(Some(owner(3, "c")), CloseKind::Active, None), &cx)
            .unwrap();
        assert_eq!((sink.followed(), sink.unfollowed), (2, 1));
        let mut t = 0;
        for _ in 0..LINGER_UPDATES {
            t += S;
            let v = m.update(&snapshot(t, vec![cw(2, "b", 1, 0, 1)]), &mut sink, |_| None);
            assert_eq!(v.rows.len(), 2);
            assert_eq!(v.unfollowed, 1);
        }
        // Owner 1 has been idle for LINGER_UPDATES redraws; owner 2 still holds a socket.
        let v = m.update(
            &snapshot(t + S, vec![cw(2, "b", 1, 0, 1)]),
            &mut sink,
            |_| None,
        );
        assert_eq!(v.rows.len(), 1);
        assert_eq!(v.rows[0].owner, Some(2));
        assert_eq!(sink.followed(), 1);
    }

    #[test]
    fn host_rates_and_dwell_window() {
        let mut h: [Histogram; 12] = std::array::from_fn(|_| Histogram::new());
        let mut m = Model::new(0, 0, 0, &h);
        let mut sink = TopSink::new(10);
        let est = TcpState::Established.index();
        let update = |m: &mut Model, sink: &mut TopSink, h: &[Histogram; 12], step: u64| {
            let mut snap = snapshot((step + 1) * S, vec![]);
            snap.dwell = h.clone();
            snap.events_total = (step + 1) * 100;
            snap.closes_total = (step + 1) * 10;
            m.update(&snap, sink, |_| None)
        };
        // Twenty seconds of 1 ms dwell, then ten of 1 s: the window shows the recent ones, and
        // the trend flags the rise.
        for step in 0..30u64 {
            let d = if step < 20 { 1_000_000 } else { S };
            for _ in 0..5 {
                h[est].record(d);
            }
            let v = update(&mut m, &mut sink, &h, step);
            assert_eq!(v.host.events_per_s, 100.0);
            assert_eq!(v.host.closes_per_s, 10.0);
            assert_eq!(v.dwell.len(), 1, "only states with samples");
            let line = &v.dwell[0];
            assert_eq!(line.state, TcpState::Established);
            assert_eq!(line.history.len(), step as usize + 1);
            if step == 19 {
                assert_eq!((line.count, line.p99_ns), (50, Some(1_000_000)));
                assert!(!line.rising);
            }
            if step == 29 {
                assert_eq!(line.count, 50);
                let p99 = line.p99_ns.unwrap();
                assert!((900_000_000..=S).contains(&p99), "{p99}");
                assert!(line.rising, "{line:?}");
            }
        }
        // A quiet interval: an empty spark, the window one interval shorter.
        let v = update(&mut m, &mut sink, &h, 30);
        let line = &v.dwell[0];
        assert_eq!(line.count, 45);
        assert_eq!(line.history.last(), Some(&None));
        assert_eq!(line.history[19], Some(1_000_000));
        assert!(line.history[20].is_some_and(|p| p > 900_000_000));
    }

    #[test]
    fn a_rise_needs_enough_samples_in_both_windows() {
        let hist = |n: u64, ns: u64| {
            let mut h = Histogram::new();
            (0..n).for_each(|_| h.record(ns));
            h
        };
        let slow = hist(TREND_MIN_SAMPLES, 10_000_000);
        assert!(rising(&slow, Some(&hist(TREND_MIN_SAMPLES, 1_000_000))));
        // Three times slower is not enough; neither is a window with too few samples.
        assert!(!rising(&slow, Some(&hist(TREND_MIN_SAMPLES, 3_500_000))));
        assert!(!rising(
            &slow,
            Some(&hist(TREND_MIN_SAMPLES - 1, 1_000_000))
        ));
        assert!(!rising(
            &hist(TREND_MIN_SAMPLES - 1, 10_000_000),
            Some(&slow)
        ));
        assert!(!rising(&slow, None));
        // Microseconds growing 7x: below the floor, noise.
        let us = |ns| hist(TREND_MIN_SAMPLES, ns);
        assert!(!rising(&us(28_000), Some(&us(4_000))));
        assert!(rising(&us(TREND_FLOOR_NS), Some(&us(TREND_FLOOR_NS / 4))));
    }

    fn rows() -> Vec<Row> {
        let mk = |pid: u32, comm: &str, cw: u64, act: f64| Row {
            rates: [act, 0.0, 0.0, 0.0, 0.0],
            close_wait: cw,
            ..empty_row(Some(pid), Comm::new(comm))
        };
        vec![
            mk(300, "nginx", 2, 5.0),
            mk(100, "leaky-srv", 7, 0.0),
            mk(200, "python3", 0, 9.0),
            Row {
                close_wait: 4,
                ..empty_row(None, Comm::default())
            },
        ]
    }

    fn pids(v: &[&Row]) -> Vec<Option<u32>> {
        v.iter().map(|r| r.owner).collect()
    }

    #[test]
    fn sorting_by_each_kind_of_column() {
        let rs = rows();
        let by = |c: Column| pids(&visible(&rs, "", c, c.descending_first()));
        assert_eq!(
            by(Column::CloseWait),
            vec![Some(100), None, Some(300), Some(200)]
        );
        assert_eq!(by(Column::Pid), vec![Some(100), Some(200), Some(300), None]);
        assert_eq!(
            by(Column::Comm),
            vec![None, Some(100), Some(300), Some(200)]
        );
        assert_eq!(
            by(Column::Rate(0)),
            vec![Some(200), Some(300), Some(100), None]
        );
        // Reversed.
        assert_eq!(
            pids(&visible(&rs, "", Column::CloseWait, false)),
            vec![Some(200), Some(300), None, Some(100)]
        );
        assert_eq!(Column::CloseWait.step(1), Column::Leaking);
        assert_eq!(Column::Pid.step(-1), Column::P50Idle);
        assert_eq!(Column::P99CloseWait.step(1), Column::P50Idle);
        assert_eq!(Column::P50Idle.step(1), Column::Pid);
        assert!(Column::ALL.iter().all(|c| c.title().len() <= 10));
    }

    #[test]
    fn filtering_by_comm_or_pid() {
        let rs = rows();
        let f = |s: &str| pids(&visible(&rs, s, Column::CloseWait, true));
        assert_eq!(f("leaky"), vec![Some(100)]);
        assert_eq!(f("PYTH"), vec![Some(200)]);
        assert_eq!(f("300"), vec![Some(300)]);
        // A pid matches exactly, not as a prefix.
        assert_eq!(f("30"), Vec::<Option<u32>>::new());
        assert_eq!(f("  "), vec![Some(100), None, Some(300), Some(200)]);
        assert_eq!(f("n"), vec![Some(300), Some(200)]);
    }
}
