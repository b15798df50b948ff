//! Engine unit tests: every close kind from the sequences in docs/kernel.md, leaks and their
//! timing, seeds, mid-life sockets, reordering, recycled addresses, eviction, and a property
//! test over arbitrary streams.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::event::{Comm, Family, TcpState, TcpState::*, Transition};
use crate::record::{AgeSource, CloseKind, CloseRecord, LeakRecord, Owner, OwnerSource, Role};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const THR: u64 = 30 * S;

fn tr(ts: u64, sk: u64, old: TcpState, new: TcpState) -> Transition {
    Transition {
        ts_ns: ts,
        sk,
        family: Family::V4,
        saddr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        sport: 40_000,
        daddr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        dport: 80,
        old,
        new,
        dwell_ns: None,
        netns: 0,
        sk_err: 0,
        task_pid: 1,
        task_tid: 1,
        task_comm: Comm::new("test"),
        idle: crate::event::Idle::NONE,
    }
}

fn owner(pid: u32, comm: &str) -> Owner {
    Owner {
        pid,
        comm: Comm::new(comm),
        source: OwnerSource::Context,
    }
}

struct H {
    e: Engine,
    out: Vec<Record>,
}

impl H {
    fn new() -> Self {
        Self::with(1000)
    }

    fn with(capacity: usize) -> Self {
        H {
            e: Engine::new(EngineConfig {
                capacity,
                close_wait_threshold_ns: THR,
            }),
            out: Vec::new(),
        }
    }

    fn ev(&mut self, t: Transition) -> Vec<Record> {
        self.out.clear();
        self.e.on_transition(&t, &mut self.out);
        self.out.clone()
    }

    /// Feeds `sk` through `states` starting at `t0`, one step every `step` ns (dwell from
    /// timestamps); returns all records.
    fn seq(&mut self, sk: u64, t0: u64, step: u64, states: &[TcpState]) -> Vec<Record> {
        let mut all = Vec::new();
        for (k, w) in states.windows(2).enumerate() {
            all.extend(self.ev(tr(t0 + k as u64 * step, sk, w[0], w[1])));
        }
        all
    }

    fn tick(&mut self, now: u64) -> Vec<Record> {
        self.out.clear();
        self.e.tick(now, &mut self.out);
        self.out.clone()
    }

    fn check_invariants(&self) {
        let per = self.e.sockets_per_state();
        assert_eq!(per.iter().sum::<u64>(), self.e.tracked() as u64);
        assert!(self.e.tracked() <= self.e.config().capacity);
        self.e.check_internal();
    }
}

fn only_close(recs: &[Record]) -> CloseRecord {
    let closes: Vec<_> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Close(c) => Some(*c),
            Record::Leak(_) => None,
        })
        .collect();
    assert_eq!(closes.len(), 1, "{recs:?}");
    closes[0]
}

fn leaks(recs: &[Record]) -> Vec<LeakRecord> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Leak(l) => Some(*l),
            Record::Close(_) => None,
        })
        .collect()
}

fn path(c: &CloseRecord) -> Vec<TcpState> {
    c.states.iter().collect()
}

// Input sequences, births included; a close record's path leaves out the birth's old state.
const CLIENT_ACTIVE: &[TcpState] = &[Close, SynSent, Established, FinWait1, FinWait2, Close];
const SERVER_PASSIVE: &[TcpState] = &[Listen, SynRecv, Established, CloseWait, LastAck, Close];

#[test]
fn client_active_close() {
    let mut h = H::new();
    let c = only_close(&h.seq(1, 1000, 10, CLIENT_ACTIVE));
    assert_eq!(c.role, Role::Client);
    assert_eq!(c.kind, CloseKind::Active);
    assert!(c.time_wait);
    assert!(!c.leaked);
    assert_eq!(path(&c), &CLIENT_ACTIVE[1..]);
    assert_eq!(c.lifetime_ns, Some(40));
    assert_eq!(c.dwell_ns[SynSent.index()], Some(10));
    assert_eq!(c.dwell_ns[FinWait2.index()], Some(10));
    assert_eq!(c.dwell_ns[Close.index()], None);
    assert_eq!(c.ts_ns, 1040);
    assert_eq!(h.e.tracked(), 0);
    assert_eq!(h.e.stats().closes_of(CloseKind::Active), 1);
    assert_eq!(h.e.stats().closes_as(Role::Client), 1);
    assert_eq!(h.e.dwell_histogram(Established).count(), 1);
    h.check_invariants();
}

#[test]
fn server_passive_close_and_both_sides_of_each_kind() {
    let mut h = H::new();
    let c = only_close(&h.seq(2, 0, 10, SERVER_PASSIVE));
    assert_eq!(
        (c.role, c.kind, c.time_wait),
        (Role::Server, CloseKind::Passive, false)
    );
    assert_eq!(path(&c), &SERVER_PASSIVE[1..]);
    // Server closes first (active), client is passive.
    let c = only_close(&h.seq(
        3,
        0,
        10,
        &[Listen, SynRecv, Established, FinWait1, FinWait2, Close],
    ));
    assert_eq!(
        (c.role, c.kind, c.time_wait),
        (Role::Server, CloseKind::Active, true)
    );
    let c = only_close(&h.seq(
        4,
        0,
        10,
        &[Close, SynSent, Established, CloseWait, LastAck, Close],
    ));
    assert_eq!((c.role, c.kind), (Role::Client, CloseKind::Passive));
}

/// The kernel-measured dwell wins over the difference of timestamps.
#[test]
fn kernel_dwell_preferred() {
    let mut h = H::new();
    h.ev(tr(0, 9, Close, SynSent));
    let mut t = tr(100, 9, SynSent, Established);
    t.dwell_ns = Some(77);
    h.ev(t);
    let c = only_close(&h.ev(tr(200, 9, Established, Close)));
    assert_eq!(c.dwell_ns[SynSent.index()], Some(77));
    assert_eq!(c.dwell_ns[Established.index()], Some(100));
}

#[test]
fn simultaneous_close_both_sides_with_cross_socket_reorder() {
    let mut h = H::new();
    h.seq(10, 0, 10, &[Close, SynSent, Established]);
    h.seq(11, 0, 10, &[Listen, SynRecv, Established]);
    h.ev(tr(100, 10, Established, FinWait1));
    h.ev(tr(101, 11, Established, FinWait1));
    h.ev(tr(105, 11, FinWait1, Closing));
    // Peer's CLOSING→CLOSE shows up before our FIN_WAIT1→CLOSING (another CPU).
    let c11 = only_close(&h.ev(tr(120, 11, Closing, Close)));
    h.ev(tr(104, 10, FinWait1, Closing));
    let c10 = only_close(&h.ev(tr(121, 10, Closing, Close)));
    for c in [c10, c11] {
        assert_eq!(c.kind, CloseKind::Simultaneous);
        assert!(c.time_wait);
    }
    assert_eq!(path(&c10), [SynSent, Established, FinWait1, Closing, Close]);
    assert_eq!(h.e.stats().gaps, 0);
    assert_eq!(h.e.stats().out_of_order, 0);
}

#[test]
fn reset_on_both_sides() {
    let mut h = H::new();
    h.seq(20, 0, 10, &[Close, SynSent, Established]);
    h.seq(21, 0, 10, &[Listen, SynRecv, Established]);
    // SO_LINGER{1,0} closer, then the peer ~20 µs later.
    let a = only_close(&h.ev(tr(1_000_000, 20, Established, Close)));
    let b = only_close(&h.ev(tr(1_020_000, 21, Established, Close)));
    assert_eq!(
        (a.kind, a.role, a.time_wait),
        (CloseKind::Reset, Role::Client, false)
    );
    assert_eq!((b.kind, b.role), (CloseKind::Reset, Role::Server));
}

#[test]
fn reset_from_syn_recv_and_fin_wait1() {
    let mut h = H::new();
    let c = only_close(&h.seq(30, 0, 10, &[Listen, SynRecv, Close]));
    assert_eq!((c.kind, c.role), (CloseKind::Reset, Role::Server));
    let c = only_close(&h.seq(31, 0, 10, &[Close, SynSent, Established, FinWait1, Close]));
    assert_eq!((c.kind, c.time_wait), (CloseKind::Reset, false));
}

#[test]
fn close_wait_to_close_without_sk_err_is_a_reset_of_unknown_origin() {
    let mut h = H::new();
    let c = only_close(&h.seq(40, 0, MS, &[Listen, SynRecv, Established, CloseWait, Close]));
    assert_eq!(
        (c.kind, c.time_wait, c.reset_by, c.sk_err),
        (CloseKind::Reset, false, None, None)
    );
    assert_eq!(c.dwell_ns[CloseWait.index()], Some(MS));
    assert_eq!(h.e.close_wait_now(), 0);
}

/// The closing transition's sk_err (known when the event names a namespace) decides who sent
/// the RST.
#[test]
fn sk_err_decides_who_reset() {
    use crate::engine::classify::errno::*;
    use crate::record::ResetBy;
    let cases = [
        (Established, 0, CloseKind::Abort, Some(ResetBy::Local)),
        (
            Established,
            ECONNRESET,
            CloseKind::Reset,
            Some(ResetBy::Peer),
        ),
        (CloseWait, 0, CloseKind::Abort, Some(ResetBy::Local)),
        (CloseWait, EPIPE, CloseKind::Reset, Some(ResetBy::Peer)),
        (
            Established,
            ECONNABORTED,
            CloseKind::Abort,
            Some(ResetBy::Local),
        ),
        (Established, ETIMEDOUT, CloseKind::Timeout, None),
        (FinWait1, ECONNRESET, CloseKind::Reset, None),
        (FinWait2, ECONNRESET, CloseKind::Reset, Some(ResetBy::Peer)),
        (FinWait2, 0, CloseKind::Active, None),
        (LastAck, 0, CloseKind::Passive, None),
        (
            SynSent,
            ECONNREFUSED,
            CloseKind::ConnectFailed,
            Some(ResetBy::Peer),
        ),
        (SynSent, ETIMEDOUT, CloseKind::ConnectFailed, None),
    ];
    let mut h = H::new();
    for (i, (from, err, kind, by)) in cases.into_iter().enumerate() {
        let sk = 0x100 + i as u64;
        let ts = 1000 * (i as u64 + 1);
        let mut t = tr(ts, sk, from, Close);
        t.netns = 7;
        t.sk_err = err;
        let mut out = Vec::new();
        h.e.on_transition(&t, &mut out);
        let c = only_close(&out);
        assert_eq!((c.kind, c.reset_by), (kind, by), "{from:?} sk_err {err}");
        assert_eq!(c.sk_err, Some(err));
        assert_eq!(c.time_wait, kind == CloseKind::Active, "{from:?} {err}");
    }
}

#[test]
fn connect_refused() {
    let mut h = H::new();
    let c = only_close(&h.seq(50, 0, 50_000, &[Close, SynSent, Close]));
    assert_eq!((c.kind, c.role), (CloseKind::ConnectFailed, Role::Client));
    assert_eq!(c.lifetime_ns, Some(50_000));
}

#[test]
fn listener_and_children_do_not_disturb_each_other() {
    let mut h = H::new();
    h.ev(tr(0, 60, Close, Listen));
    // Children: LISTEN→SYN_RECV on their own sk.
    h.seq(61, 10, 10, &[Listen, SynRecv, Established]);
    h.seq(62, 20, 10, &[Listen, SynRecv, Established]);
    assert_eq!(h.e.state_of(60), Some(Listen));
    assert_eq!(h.e.state_of(61), Some(Established));
    let l = only_close(&h.ev(tr(1000, 60, Listen, Close)));
    assert_eq!((l.kind, l.role), (CloseKind::Listener, Role::Listener));
    assert_eq!(path(&l), [Listen, Close]);
    // Un-accepted children are reset.
    let c = only_close(&h.ev(tr(1001, 61, Established, Close)));
    assert_eq!((c.kind, c.role), (CloseKind::Reset, Role::Server));
    assert_eq!(h.e.stats().recycled, 0);
}

#[test]
fn half_close() {
    let mut h = H::new();
    h.seq(70, 0, 10, &[Close, SynSent, Established]);
    h.seq(71, 0, 10, &[Listen, SynRecv, Established]);
    h.ev(tr(100, 70, Established, FinWait1)); // shutdown(SHUT_WR)
    h.ev(tr(101, 71, Established, CloseWait));
    h.ev(tr(110, 70, FinWait1, FinWait2));
    // FIN_WAIT2 lasts until the server closes, 5 s later.
    h.ev(tr(5 * S, 71, CloseWait, LastAck));
    let c = only_close(&h.ev(tr(5 * S + 50, 70, FinWait2, Close)));
    let s = only_close(&h.ev(tr(5 * S + 60, 71, LastAck, Close)));
    assert_eq!((c.kind, c.time_wait), (CloseKind::Active, true));
    // Dwells over ~1.07 s are kept to the µs.
    assert_eq!(
        c.dwell_ns[FinWait2.index()],
        Some((5 * S + 50 - 110) / 1000 * 1000)
    );
    assert_eq!(s.kind, CloseKind::Passive);
    assert!(!s.leaked);
}

#[test]
fn owner_exits_holding_close_wait() {
    let mut h = H::new();
    h.seq(80, 0, MS, &[Listen, SynRecv, Established, CloseWait]);
    let entered = 2 * MS;
    h.e.set_owner(80, owner(1234, "leaky"));
    assert_eq!(h.e.owner(80).map(|o| o.pid), Some(1234));
    // Leak fires at the tick that shows the threshold crossed.
    let l = leaks(&h.tick(entered + 40 * S));
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].age_ns, 40 * S);
    assert_eq!(l[0].age_source, AgeSource::Traced);
    assert_eq!(l[0].owner.map(|o| o.pid), Some(1234));
    assert_eq!(h.e.leaking_now(), 1);
    // The owner exits ~1 ms later: the kernel closes it.
    h.ev(tr(entered + 60 * S, 80, CloseWait, LastAck));
    assert_eq!(h.e.leaking_now(), 0);
    let c = only_close(&h.ev(tr(entered + 60 * S + MS, 80, LastAck, Close)));
    assert_eq!(c.kind, CloseKind::Passive);
    assert!(c.leaked);
    assert_eq!(c.dwell_ns[CloseWait.index()], Some(60 * S));
    assert_eq!(c.owner.map(|o| o.pid), Some(1234));
    assert_eq!(h.e.stats().leaks, 1);
}

#[test]
fn leak_timer_fires_by_tick_alone_at_the_boundary() {
    let mut h = H::new();
    h.seq(90, S, 0, &[Established, CloseWait]);
    assert!(h.tick(S + THR - 1).is_empty(), "just below");
    assert_eq!(h.e.next_leak_due_ns(), Some(S + THR));
    let l = leaks(&h.tick(S + THR));
    assert_eq!(l.len(), 1, "exactly at the threshold fires");
    assert_eq!((l[0].ts_ns, l[0].age_ns), (S + THR, THR));
    assert!(h.tick(S + 10 * THR).is_empty(), "once only");
    assert_eq!(h.e.next_leak_due_ns(), None);
}

#[test]
fn leak_by_another_sockets_event() {
    let mut h = H::new();
    h.seq(100, 0, 0, &[Established, CloseWait]);
    let recs = h.ev(tr(THR, 101, Close, SynSent));
    assert_eq!(leaks(&recs).len(), 1);
}

#[test]
fn close_wait_leaving_just_below_or_at_threshold() {
    let mut h = H::new();
    h.seq(110, 0, 0, &[Established, CloseWait]);
    h.ev(tr(THR - 1, 110, CloseWait, LastAck));
    let c = only_close(&h.ev(tr(THR + 5, 110, LastAck, Close)));
    assert!(!c.leaked);
    assert_eq!(h.e.stats().leaks, 0);

    let mut h = H::new();
    h.seq(111, 0, 0, &[Established, CloseWait]);
    let recs = h.ev(tr(THR, 111, CloseWait, Close));
    assert_eq!(leaks(&recs).len(), 1);
    assert!(matches!(recs[0], Record::Leak(_)), "leak before close");
    let c = only_close(&recs);
    assert!(c.leaked);
    assert_eq!(
        (c.kind, c.dwell_ns[CloseWait.index()]),
        (CloseKind::Reset, Some(THR))
    );
}

#[test]
fn seeded_close_wait_with_estimate_leaks_as_estimate() {
    let mut h = H::new();
    h.tick(100 * S);
    let id = SocketId {
        sk: 120,
        netns: 0,
        family: Family::V6,
        saddr: "::ffff:127.0.0.1".parse().unwrap(),
        sport: 8080,
        daddr: "::1".parse().unwrap(),
        dport: 5555,
    };
    h.out.clear();
    h.e.seed(
        &Seed {
            id,
            state: CloseWait,
            owner: Some(owner(7, "old")),
            state_since_ns: Some(50 * S),
        },
        &mut h.out,
    );
    let l = leaks(&h.out);
    assert_eq!(l.len(), 1, "already over the threshold: fires during seed");
    assert_eq!(l[0].age_source, AgeSource::Estimate);
    assert_eq!(l[0].age_ns, 50 * S);
    assert_eq!(l[0].id, id);
    // A second seed below the threshold fires at a later tick.
    h.out.clear();
    h.e.seed(
        &Seed {
            id: SocketId { sk: 121, ..id },
            state: CloseWait,
            owner: None,
            state_since_ns: Some(90 * S),
        },
        &mut h.out,
    );
    assert!(h.out.is_empty());
    let l = leaks(&h.tick(120 * S));
    assert_eq!((l.len(), l[0].age_source), (1, AgeSource::Estimate));

    let recs = h.seq(120, 130 * S, MS, &[CloseWait, LastAck, Close]);
    let c = only_close(&recs);
    assert_eq!((c.kind, c.role), (CloseKind::Passive, Role::Unknown));
    assert!(c.leaked);
    assert_eq!(c.lifetime_ns, None);
    assert_eq!(c.dwell_ns[CloseWait.index()], None, "start not seen");
    assert_eq!(c.dwell_ns[LastAck.index()], Some(MS));
    assert_eq!(c.owner.map(|o| o.pid), Some(7));
    assert_eq!(h.e.stats().seeded, 2);
}

#[test]
fn seeded_close_wait_without_estimate_before_any_clock() {
    let mut h = H::new();
    let id = SocketId {
        sk: 130,
        netns: 0,
        family: Family::V4,
        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport: 1,
        daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dport: 2,
    };
    h.e.seed(
        &Seed {
            id,
            state: CloseWait,
            owner: None,
            state_since_ns: None,
        },
        &mut h.out,
    );
    assert_eq!(h.e.close_wait_now(), 1);
    assert_eq!(h.e.close_wait_by_owner(0)[0].close_wait, 1);
    assert!(h.tick(1000 * S).is_empty(), "age starts at the first clock");
    assert!(h.tick(1000 * S + THR - 1).is_empty());
    let l = leaks(&h.tick(1000 * S + THR));
    assert_eq!((l.len(), l[0].age_source), (1, AgeSource::Estimate));
}

#[test]
fn seeded_listener_then_its_birth_event_is_adopted() {
    let mut h = H::new();
    h.tick(100 * S);
    let id = SocketId {
        sk: 140,
        netns: 0,
        family: Family::V4,
        saddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        sport: 80,
        daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dport: 0,
    };
    h.e.seed(
        &Seed {
            id,
            state: Listen,
            owner: None,
            state_since_ns: None,
        },
        &mut h.out,
    );
    // The listen() happened during the startup race: its event is older than the seed.
    h.ev(tr(99 * S, 140, Close, Listen));
    assert_eq!(h.e.stats().late_births, 1);
    assert_eq!(h.e.stats().recycled, 0);
    let c = only_close(&h.ev(tr(200 * S, 140, Listen, Close)));
    assert_eq!((c.kind, c.role), (CloseKind::Listener, Role::Listener));
    assert_eq!(c.lifetime_ns, Some(101 * S));
    // Seeds of untracked states, and of tracked sockets, are ignored.
    h.ev(tr(201 * S, 141, Close, SynSent));
    for (sk, st) in [(141, Established), (142, TimeWait), (143, Close)] {
        h.e.seed(
            &Seed {
                id: SocketId { sk, ..id },
                state: st,
                owner: Some(owner(1, "x")),
                state_since_ns: None,
            },
            &mut h.out,
        );
    }
    assert_eq!(h.e.stats().seed_ignored, 3);
    assert_eq!(h.e.state_of(141), Some(SynSent));
    assert_eq!(
        h.e.owner(141).map(|o| o.pid),
        Some(1),
        "missing owner filled in"
    );
}

#[test]
fn seed_keyed_by_cookie_is_rekeyed_at_its_first_event() {
    let mut h = H::new();
    h.tick(100 * S);
    let cookie = 0x1234;
    let id = SocketId {
        sk: cookie,
        netns: 0,
        family: Family::V4,
        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport: 8080,
        daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dport: 5000,
    };
    h.e.seed(
        &Seed {
            id,
            state: CloseWait,
            owner: Some(owner(9, "srv")),
            state_since_ns: Some(90 * S),
        },
        &mut h.out,
    );
    assert!(h.e.rekey(cookie, 0xffff_8880_0000_0040));
    assert!(
        !h.e.rekey(cookie, 0xffff_8880_0000_0080),
        "no longer tracked"
    );
    assert_eq!(h.e.state_of(cookie), None);
    let l = leaks(&h.tick(120 * S));
    assert_eq!(l[0].id.sk, 0xffff_8880_0000_0040);
    let c = only_close(&h.seq(
        0xffff_8880_0000_0040,
        130 * S,
        MS,
        &[CloseWait, LastAck, Close],
    ));
    assert_eq!(
        (c.kind, c.leaked, c.lifetime_ns),
        (CloseKind::Passive, true, None)
    );
    assert_eq!(c.owner.map(|o| o.pid), Some(9));
    // Onto a tracked key: refused.
    h.ev(tr(200 * S, 1, Close, SynSent));
    h.ev(tr(200 * S, 2, Close, SynSent));
    assert!(!h.e.rekey(1, 2));
    assert!(h.e.forget(1));
    assert!(!h.e.forget(1));
    assert_eq!(h.e.state_of(1), None);
    h.check_invariants();
}

#[test]
fn first_seen_mid_life() {
    let mut h = H::new();
    let c = only_close(&h.seq(150, 0, 10, &[FinWait1, FinWait2, Close]));
    assert_eq!(
        (c.kind, c.role, c.time_wait),
        (CloseKind::Active, Role::Unknown, true)
    );
    assert_eq!(c.lifetime_ns, Some(10));
    assert_eq!(c.dwell_ns[FinWait1.index()], None, "its start was not seen");
    let c = only_close(&h.seq(151, 0, 10, &[CloseWait, LastAck, Close]));
    assert_eq!(c.kind, CloseKind::Passive);
    // First seen by its close.
    let c = only_close(&h.ev(tr(5, 152, Established, Close)));
    assert_eq!((c.kind, c.role), (CloseKind::Reset, Role::Unknown));
    assert_eq!(path(&c), [Established, Close]);
    let c = only_close(&h.ev(tr(5, 153, TimeWait, Close)));
    assert_eq!(c.kind, CloseKind::Unknown);
    // A first-seen SYN_SENT is a client.
    let c = only_close(&h.ev(tr(5, 154, SynSent, Close)));
    assert_eq!((c.kind, c.role), (CloseKind::ConnectFailed, Role::Client));
    assert_eq!(h.e.stats().first_seen_midlife, 5);
    assert_eq!(h.e.tracked(), 0);
}

#[test]
fn first_seen_close_wait_exit_with_long_kernel_dwell_is_a_leak() {
    let mut h = H::new();
    let mut t = tr(100 * S, 155, CloseWait, LastAck);
    t.dwell_ns = Some(45 * S);
    let l = leaks(&h.ev(t));
    assert_eq!((l.len(), l[0].age_ns), (1, 45 * S));
    let c = only_close(&h.ev(tr(100 * S + 1, 155, LastAck, Close)));
    assert!(c.leaked);
    assert_eq!(c.dwell_ns[CloseWait.index()], Some(45 * S));
}

#[test]
fn gap_takes_the_events_old_state_as_truth() {
    let mut h = H::new();
    h.seq(160, 0, 10, &[Close, SynSent, Established]);
    // ESTABLISHED→FIN_WAIT1 and FIN_WAIT1→FIN_WAIT2 lost.
    let mut t = tr(100, 160, FinWait2, Close);
    t.dwell_ns = Some(3);
    let c = only_close(&h.ev(t));
    assert_eq!(c.kind, CloseKind::Active);
    assert_eq!(path(&c), [SynSent, Established, FinWait2, Close]);
    assert_eq!(c.dwell_ns[Established.index()], None);
    assert_eq!(c.dwell_ns[FinWait2.index()], Some(3));
    assert_eq!(h.e.stats().gaps, 1);
    // Mixed lives (CLOSE_WAIT can never reach FIN_WAIT2): unknown.
    h.seq(161, 0, 10, &[Established, CloseWait]);
    let c = only_close(&h.ev(tr(100, 161, FinWait2, Close)));
    assert_eq!(c.kind, CloseKind::Unknown);
    assert_eq!(h.e.close_wait_now(), 0);
    h.check_invariants();
}

#[test]
fn late_events_never_move_state_backwards() {
    let mut h = H::new();
    h.seq(170, 100, 10, &[Close, SynSent, Established, FinWait1]);
    // A late duplicate of an earlier step.
    assert!(h.ev(tr(105, 170, SynSent, Established)).is_empty());
    assert_eq!(h.e.state_of(170), Some(FinWait1));
    assert_eq!(h.e.stats().out_of_order, 1);
    // Older than the socket's birth: a previous socket at this address.
    assert!(h.ev(tr(50, 170, FinWait2, Close)).is_empty());
    assert_eq!(h.e.stats().stale_dropped, 1);
    assert_eq!(h.e.state_of(170), Some(FinWait1));
    // Equal timestamps are in order.
    h.ev(tr(120, 170, FinWait1, FinWait2));
    let c = only_close(&h.ev(tr(120, 170, FinWait2, Close)));
    assert_eq!(c.dwell_ns[FinWait2.index()], Some(0));
}

#[test]
fn late_birth_of_a_child_is_adopted() {
    let mut h = H::new();
    // The child's SYN_RECV→ESTABLISHED arrives before its LISTEN→SYN_RECV.
    h.ev(tr(20, 180, SynRecv, Established));
    h.ev(tr(10, 180, Listen, SynRecv));
    assert_eq!(h.e.stats().late_births, 1);
    assert_eq!(h.e.stats().first_seen_midlife, 0);
    let c = only_close(&h.seq(180, 100, 10, &[Established, CloseWait, LastAck, Close]));
    assert_eq!((c.role, c.kind), (Role::Server, CloseKind::Passive));
    assert_eq!(path(&c), &SERVER_PASSIVE[1..]);
    assert_eq!(c.lifetime_ns, Some(120 - 10));
    assert_eq!(c.dwell_ns[SynRecv.index()], Some(10));
}

/// Kernels up to 6.12 report an accepted child's LISTEN→SYN_RECV without its peer (dport 0,
/// daddr 0.0.0.0; 6.18 has it): the full 4-tuple arrives with SYN_RECV→ESTABLISHED. Leak and
/// close records carry the full 4-tuple, whether the birth arrives first or late.
#[test]
fn child_born_without_its_peer_gets_it_from_its_next_event() {
    let peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let peerless = |ts, sk| Transition {
        sport: 80,
        daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dport: 0,
        ..tr(ts, sk, Listen, SynRecv)
    };
    let full = |ts, sk, old, new| Transition {
        sport: 80,
        daddr: peer,
        dport: 40_001,
        ..tr(ts, sk, old, new)
    };
    let has_peer = |id: &SocketId| {
        assert_eq!((id.sport, id.daddr, id.dport), (80, peer, 40_001), "{id:?}");
    };
    for birth_first in [true, false] {
        let mut h = H::new();
        if birth_first {
            assert!(h.ev(peerless(0, 9)).is_empty());
            assert!(h.ev(full(10, 9, SynRecv, Established)).is_empty());
        } else {
            assert!(h.ev(full(10, 9, SynRecv, Established)).is_empty());
            assert!(h.ev(peerless(0, 9)).is_empty());
            assert_eq!(h.e.stats().late_births, 1);
        }
        h.ev(full(20, 9, Established, CloseWait));
        let l = leaks(&h.tick(20 + THR));
        assert_eq!(l.len(), 1, "birth first: {birth_first}");
        has_peer(&l[0].id);
        h.ev(full(30 + THR, 9, CloseWait, LastAck));
        let c = only_close(&h.ev(full(40 + THR, 9, LastAck, Close)));
        has_peer(&c.id);
        assert_eq!(
            (c.role, c.kind, c.leaked),
            (Role::Server, CloseKind::Passive, true)
        );
        assert_eq!(path(&c), &SERVER_PASSIVE[1..]);
        h.check_invariants();
    }
    // Reset while still in SYN_RECV: SYN_RECV→CLOSE carries the peer.
    let mut h = H::new();
    h.ev(peerless(0, 10));
    let c = only_close(&h.ev(full(10, 10, SynRecv, Close)));
    has_peer(&c.id);
    assert_eq!((c.role, c.kind), (Role::Server, CloseKind::Reset));
}

#[test]
fn recycled_addresses_start_a_new_record() {
    let mut h = H::new();
    h.seq(190, 0, 10, &[Close, SynSent, Established]);
    // Its CLOSE was lost; the kernel reuses the address for a new connection.
    assert!(
        h.ev(tr(1000, 190, Close, SynSent)).is_empty(),
        "nothing fake"
    );
    assert_eq!(h.e.stats().recycled, 1);
    assert_eq!(h.e.tracked(), 1);
    let c = only_close(&h.seq(190, 1010, 10, &[SynSent, Established, Close]));
    assert_eq!(path(&c), [SynSent, Established, Close]);
    assert_eq!(c.lifetime_ns, Some(1020 - 1000));
    // LISTEN→SYN_RECV on a tracked (leaking) address: the old socket is gone too.
    h.seq(191, 0, 0, &[Established, CloseWait]);
    h.tick(THR);
    assert_eq!(h.e.leaking_now(), 1);
    h.ev(tr(THR + 1, 191, Listen, SynRecv));
    assert_eq!(h.e.stats().recycled, 2);
    assert_eq!(h.e.leaking_now(), 0);
    assert_eq!(h.e.close_wait_now(), 0);
    assert_eq!(h.e.state_of(191), Some(SynRecv));
    // CLOSE→LISTEN on a tracked address.
    h.ev(tr(THR + 2, 191, Close, Listen));
    assert_eq!(h.e.stats().recycled, 3);
    h.check_invariants();
}

#[test]
fn capacity_evicts_least_recently_updated() {
    let mut h = H::with(3);
    h.ev(tr(1, 1, Close, SynSent));
    h.ev(tr(2, 2, Close, SynSent));
    h.ev(tr(3, 3, Close, SynSent));
    h.ev(tr(4, 1, SynSent, Established)); // 1 is fresh now; 2 is the stalest
    h.ev(tr(5, 4, Close, SynSent));
    assert_eq!(h.e.tracked(), 3);
    assert_eq!(h.e.state_of(2), None);
    assert!(h.e.state_of(1).is_some() && h.e.state_of(3).is_some());
    assert_eq!(h.e.stats().evicted, 1);
    h.check_invariants();
}

#[test]
fn leaking_entries_are_protected_from_eviction() {
    let mut h = H::with(2);
    h.seq(1, 0, 0, &[Established, CloseWait]);
    h.tick(THR);
    h.ev(tr(THR + 1, 2, Close, SynSent));
    h.ev(tr(THR + 2, 3, Close, SynSent)); // evicts 2, not the older leaking 1
    assert_eq!(h.e.state_of(1), Some(CloseWait));
    assert_eq!(h.e.state_of(2), None);
    assert_eq!((h.e.stats().evicted, h.e.stats().evicted_leaking), (1, 0));

    // Everything leaking: the first to leak goes, counted separately.
    let mut h = H::with(2);
    h.seq(1, 0, 0, &[Established, CloseWait]);
    h.seq(2, 1, 0, &[Established, CloseWait]);
    h.tick(THR + 1);
    assert_eq!(h.e.leaking_now(), 2);
    h.ev(tr(THR + 2, 3, Close, SynSent));
    assert_eq!(h.e.state_of(1), None);
    assert_eq!(h.e.state_of(2), Some(CloseWait));
    assert_eq!((h.e.stats().evicted, h.e.stats().evicted_leaking), (0, 1));
    assert_eq!(h.e.leaking_now(), 1);
    h.check_invariants();
}

#[test]
fn evicted_pending_close_wait_never_leaks() {
    let mut h = H::with(1);
    h.seq(1, 0, 0, &[Established, CloseWait]);
    h.ev(tr(1, 2, Close, SynSent));
    assert!(h.tick(10 * THR).is_empty());
    assert_eq!(h.e.close_wait_now(), 0);
}

#[test]
fn close_wait_by_owner_and_oldest() {
    let mut h = H::new();
    h.seq(1, 0, 0, &[Established, CloseWait]);
    h.seq(2, 10 * S, 0, &[Established, CloseWait]);
    h.seq(3, 20 * S, 0, &[Established, CloseWait]);
    h.e.set_owner(1, owner(100, "a"));
    h.e.set_owner(2, owner(100, "a"));
    h.e.set_owner(3, owner(50, "b"));
    h.seq(4, 25 * S, 0, &[Established, CloseWait]);
    h.tick(THR); // socket 1 leaks
    let v = h.e.close_wait_by_owner(41 * S);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].owner, None);
    assert_eq!(
        (v[0].close_wait, v[0].leaking, v[0].oldest_age_ns),
        (1, 0, 16 * S)
    );
    assert_eq!(v[1].owner.map(|o| o.pid), Some(50));
    let a = v[2];
    assert_eq!(a.owner.map(|o| o.pid), Some(100));
    // 1 leaked at the tick; 2 is over the threshold at 41 s though no tick has said so yet.
    assert_eq!((a.close_wait, a.leaking, a.oldest_age_ns), (2, 2, 41 * S));
    assert_eq!(h.e.oldest_close_wait_ns(41 * S), Some(41 * S));
    assert_eq!(h.e.leaking_now(), 1);
    assert_eq!(h.e.close_wait_now(), 4);
}

#[test]
fn summary_serialises_and_renders() {
    let mut h = H::new();
    h.seq(1, 0, MS, CLIENT_ACTIVE);
    h.seq(2, 0, MS, &[Established, CloseWait]);
    let mut s = h.e.summary(100 * S);
    s.events_lost = Some(0);
    let v: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(v["type"], "summary");
    assert_eq!(v["closes_by_kind"]["active"], 1);
    assert_eq!(v["closes_by_role"]["client"], 1);
    assert_eq!(v["dwell"]["ESTABLISHED"]["count"], 1);
    assert_eq!(v["dwell"]["ESTABLISHED"]["p50_ns"], MS);
    assert_eq!(v["sockets_now"]["CLOSE_WAIT"], 1);
    assert_eq!(v["events_lost"], 0);
    assert!(v.get("skipped_lines").is_none());
    let text = s.render_text();
    assert!(text.contains("active 1"), "{text}");
    assert!(text.contains("ESTABLISHED"), "{text}");
    assert!(text.contains("CLOSE_WAIT now: 1"), "{text}");
}

#[test]
fn entry_is_compact() {
    let entry = Engine::entry_size();
    let at_1m = Engine::bytes_per_socket_at(1_000_000);
    assert!(entry <= 128, "entry is {entry} bytes");
    assert!(at_1m <= 256, "{at_1m} bytes per socket at 1M");
}

#[test]
fn synthetic_stream_sanity() {
    let mut h = H::new();
    let mut n = 0u64;
    for t in synthetic_stream(2000, 64, 7) {
        h.out.clear();
        h.e.on_transition(&t, &mut h.out);
        n += 1;
    }
    assert_eq!(n, 20_000);
    let s = h.e.stats();
    assert_eq!(s.closes, 4000);
    assert_eq!(s.closes_of(CloseKind::Active), 2000);
    assert_eq!(s.closes_of(CloseKind::Passive), 2000);
    assert_eq!(s.closes_as(Role::Client), 2000);
    assert_eq!(s.closes_as(Role::Server), 2000);
    assert_eq!(
        (s.gaps, s.recycled, s.out_of_order, s.evicted),
        (0, 0, 0, 0)
    );
    assert_eq!(h.e.tracked(), 0);
    h.check_invariants();
}

/// Rough single-core throughput: `cargo test --release -p tracer --lib engine_throughput --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn engine_throughput() {
    // Few connections in flight (table in cache), then many (table well beyond the caches).
    for concurrency in [256, 4096, 50_000, 200_000] {
        let events: Vec<Transition> = synthetic_stream(1_000_000, concurrency, 1).collect();
        let mut e = Engine::new(EngineConfig::default());
        let mut out = Vec::with_capacity(16);
        let t0 = std::time::Instant::now();
        let mut records = 0usize;
        for t in &events {
            out.clear();
            e.on_transition(t, &mut out);
            records += out.len();
        }
        let dt = t0.elapsed();
        println!(
            "concurrency {concurrency}: {} events in {:?}: {:.2} M events/s ({records} records)",
            events.len(),
            dt,
            events.len() as f64 / dt.as_secs_f64() / 1e6
        );
    }
}

/// Measured memory of a full table: `cargo test --release -p tracer --lib
/// engine_memory_at_1m -- --ignored --nocapture`.
#[test]
#[ignore]
fn engine_memory_at_1m() {
    let mut e = Engine::new(EngineConfig::default());
    let mut out = Vec::new();
    for sk in 0..1_000_000u64 {
        let mut t = tr(sk, 0xffff_8880_0000_0000 + sk * 64, Close, SynSent);
        t.sport = (sk % 60_000) as u16;
        e.on_transition(&t, &mut out);
    }
    assert_eq!(e.tracked(), 1_000_000);
    println!(
        "entry {} bytes; measured {} bytes/socket at 1M; computed {}",
        Engine::entry_size(),
        e.approx_bytes_per_socket(),
        Engine::bytes_per_socket_at(1_000_000)
    );
    assert!(e.approx_bytes_per_socket() <= 256);
}

fn any_state() -> impl Strategy<Value = TcpState> {
    (1u8..=12).prop_map(|n| TcpState::from_kernel(n).unwrap())
}

#[derive(Clone, Debug)]
enum Op {
    Ev(u64, u8, TcpState, TcpState, Option<u64>),
    Tick(u64),
    Seed(u8, TcpState, Option<u64>),
    Owner(u8),
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..200 * S, 0u8..8, any_state(), any_state(), proptest::option::of(0u64..100 * S))
            .prop_map(|(ts, sk, o, n, d)| Op::Ev(ts, sk, o, n, d)),
        1 => (0u64..200 * S).prop_map(Op::Tick),
        1 => (0u8..8, any_state(), proptest::option::of(0u64..200 * S))
            .prop_map(|(sk, st, since)| Op::Seed(sk, st, since)),
        1 => (0u8..8).prop_map(Op::Owner),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_streams_never_panic_or_overgrow(
        capacity in 1usize..6,
        ops in proptest::collection::vec(any_op(), 0..200),
    ) {
        let mut h = H::with(capacity);
        let mut leaked_sks = std::collections::HashMap::<u64, u32>::new();
        for op in ops {
            h.out.clear();
            match op {
                Op::Ev(ts, sk, o, n, d) => {
                    let mut t = tr(ts, u64::from(sk), o, n);
                    t.dwell_ns = d;
                    h.e.on_transition(&t, &mut h.out);
                }
                Op::Tick(now) => h.e.tick(now, &mut h.out),
                Op::Seed(sk, st, since) => {
                    let id = SocketId {
                        sk: u64::from(sk),
                        netns: 0,
                        family: Family::V4,
                        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        sport: 1,
                        daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        dport: 2,
                    };
                    h.e.seed(&Seed { id, state: st, owner: None, state_since_ns: since }, &mut h.out);
                }
                Op::Owner(sk) => h.e.set_owner(u64::from(sk), owner(1, "p")),
            }
            for r in &h.out {
                match r {
                    Record::Leak(l) => {
                        prop_assert!(l.age_ns >= THR);
                        *leaked_sks.entry(l.id.sk).or_default() += 1;
                    }
                    Record::Close(c) => {
                        if c.states.truncated == 0 {
                            prop_assert_eq!(c.states.last(), Some(Close));
                        }
                        leaked_sks.remove(&c.id.sk);
                    }
                }
            }
            // At most one leak per socket life.
            prop_assert!(leaked_sks.values().all(|&n| n <= 1) || h.e.stats().recycled > 0
                || h.e.stats().evicted + h.e.stats().evicted_leaking > 0);
            h.check_invariants();
            prop_assert!(h.e.leaking_now() <= h.e.close_wait_now());
            let _ = h.e.close_wait_by_owner(h.e.clock_ns());
            let _ = h.e.oldest_close_wait_ns(h.e.clock_ns());
        }
        let _ = h.e.summary(h.e.clock_ns()).render_text();
    }
}

/// With no dwell from the kernel, each transition's dwell is the difference of the socket's
/// event times; unknown where the start was not seen; a self-transition reports the time in the
/// state so far; a kernel-measured dwell is passed through.
#[test]
fn last_dwell_comes_from_event_times() {
    let mut h = H::new();
    let mut feed = |t: Transition| {
        h.e.on_transition(&t, &mut h.out);
        h.e.last_dwell_ns()
    };
    assert_eq!(feed(tr(1_000, 7, Close, SynSent)), None, "birth");
    assert_eq!(feed(tr(1_500, 7, SynSent, Established)), Some(500));
    assert_eq!(feed(tr(4_000, 7, Established, FinWait1)), Some(2_500));
    assert_eq!(
        feed(tr(4_100, 7, FinWait1, FinWait1)),
        Some(100),
        "self-transition"
    );
    assert_eq!(
        feed(tr(4_300, 7, FinWait1, FinWait2)),
        Some(300),
        "start kept"
    );
    assert_eq!(feed(tr(4_400, 7, FinWait2, Close)), Some(100));
    // First sight mid-life, then a gap (an event lost): unknown.
    assert_eq!(feed(tr(9_000, 8, Established, CloseWait)), None);
    assert_eq!(feed(tr(9_500, 8, LastAck, Close)), None, "gap");
    // The kernel's measure wins when the event has one.
    let mut t = tr(10_000, 9, Established, CloseWait);
    t.dwell_ns = Some(42);
    assert_eq!(feed(t), Some(42));
}

/// With leak confirmation, a CLOSE_WAIT socket past the threshold is asked about; "still
/// sending" puts it back until the re-check time, and it is never counted as leaking
/// meanwhile; "idle" reports it, with the idle time; a passive close after a deferral is not
/// `leaked`.
#[test]
fn confirmed_leaks_wait_for_the_callers_decision() {
    let mut h = H::new();
    h.e.confirm_leaks(true);
    h.seq(1, 0, 0, &[Established, CloseWait]);
    h.seq(2, 0, 0, &[Established, CloseWait]);
    assert!(h.tick(THR).is_empty(), "no leak before the decision");
    let mut checks = Vec::new();
    h.e.take_leak_checks(&mut checks);
    assert_eq!(checks.len(), 2);
    assert!(!h.e.has_leak_checks());
    assert_eq!(h.e.close_wait_now(), 2);
    let (a, b) = (checks[0], checks[1]);
    let (a, b) = if a.id.sk == 1 { (a, b) } else { (b, a) };
    assert_eq!(a.age_ns, THR);
    // Socket 1 sent data 10 s ago: re-check in 20 s. Socket 2 has been idle: a leak.
    let mut out = Vec::new();
    h.e.decide_leak(
        &a,
        LeakDecision::RecheckAt {
            at_ns: THR + 20 * S,
        },
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(
        h.e.close_wait_by_owner(THR)[0].leaking,
        0,
        "deferred: not leaking"
    );
    h.e.decide_leak(
        &b,
        LeakDecision::Leak {
            idle_ns: Some(THR + S),
        },
        &mut out,
    );
    let l = leaks(&out);
    assert_eq!((l.len(), l[0].id.sk, l[0].idle_ns), (1, 2, Some(THR + S)));
    // A second answer to the same check changes nothing.
    out.clear();
    h.e.decide_leak(&b, LeakDecision::Leak { idle_ns: None }, &mut out);
    assert!(out.is_empty());
    h.check_invariants();
    assert_eq!(h.e.next_leak_due_ns(), Some(THR + 20 * S));
    assert!(h.tick(THR + 19 * S).is_empty());
    assert_eq!(h.e.close_wait_by_owner(THR + 19 * S)[0].leaking, 1);
    assert!(!h.e.has_leak_checks());
    h.tick(THR + 20 * S);
    h.e.take_leak_checks(&mut checks);
    assert_eq!(checks.len(), 1);
    h.e.decide_leak(
        &checks[0],
        LeakDecision::RecheckAt { at_ns: 3 * THR },
        &mut out,
    );
    h.check_invariants();
    // It closes while deferred: passive, not leaked, the whole CLOSE_WAIT dwell.
    let recs = h.seq(1, 2 * THR, 0, &[CloseWait, LastAck, Close]);
    let c = only_close(&recs);
    assert_eq!((c.kind, c.leaked), (CloseKind::Passive, false));
    assert_eq!(c.dwell_ns[CloseWait.index()], Some(2 * THR));
    assert_eq!(h.e.stats().leak_checks, 3);
    assert_eq!(h.e.stats().leaks_deferred, 2);
    assert_eq!(h.e.stats().leaks_confirmed, 1);
    // A check answered after its socket left CLOSE_WAIT is ignored.
    h.e.decide_leak(&checks[0], LeakDecision::Leak { idle_ns: None }, &mut out);
    assert_eq!(h.e.stats().leaks, 1);
    h.check_invariants();
}

/// A leak candidate the kernel no longer has (its close events were lost) is never a leak: it
/// leaves as a close of kind `unknown`, `closed_unseen`, and the CLOSE_WAIT counts drop.
#[test]
fn a_candidate_the_kernel_no_longer_has_closes_unseen() {
    let mut h = H::new();
    h.e.confirm_leaks(true);
    h.seq(1, 0, 0, &[Established, CloseWait]);
    h.seq(2, 0, 0, &[Established, CloseWait]);
    assert!(h.tick(THR).is_empty());
    let mut checks = Vec::new();
    h.e.take_leak_checks(&mut checks);
    assert_eq!(checks.len(), 2);
    let mut out = Vec::new();
    for c in &checks {
        h.e.decide_leak(c, LeakDecision::Gone, &mut out);
    }
    assert!(leaks(&out).is_empty(), "{out:?}");
    assert_eq!(out.len(), 2);
    for r in &out {
        let Record::Close(c) = r else { unreachable!() };
        assert_eq!(
            (c.kind, c.closed_unseen, c.leaked),
            (CloseKind::Unknown, true, false)
        );
        assert_eq!(c.lifetime_ns, None);
        assert_eq!(c.ts_ns, THR);
        assert_eq!(path(c), &[Established, CloseWait, Close]);
    }
    assert_eq!(h.e.close_wait_now(), 0);
    assert_eq!(h.e.leaking_now(), 0);
    assert_eq!(h.e.tracked(), 0);
    assert_eq!(h.e.stats().closed_unseen, 2);
    assert_eq!(h.e.stats().closes_of(CloseKind::Unknown), 2);
    assert_eq!(h.e.stats().leaks, 0);
    h.check_invariants();
    // Nothing is due any more.
    assert!(h.tick(10 * THR).is_empty());
    h.e.take_leak_checks(&mut checks);
    assert!(checks.is_empty());
}

/// A leak candidate the kernel has in another state (it left CLOSE_WAIT while its events were
/// lost) takes that state; its later events then follow on from it.
#[test]
fn a_candidate_in_another_state_takes_the_kernels_state() {
    let mut h = H::new();
    h.e.confirm_leaks(true);
    h.seq(1, 0, 0, &[Established, CloseWait]);
    h.tick(THR);
    let mut checks = Vec::new();
    h.e.take_leak_checks(&mut checks);
    let mut out = Vec::new();
    h.e.decide_leak(
        &checks[0],
        LeakDecision::InState { state: LastAck },
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(h.e.close_wait_now(), 0);
    assert_eq!(h.e.sockets_per_state()[LastAck.index()], 1);
    assert_eq!(h.e.stats().state_corrected, 1);
    h.check_invariants();
    let c = only_close(&h.ev(tr(THR + S, 1, LastAck, Close)));
    assert_eq!(c.kind, CloseKind::Passive);
    assert!(!c.leaked && !c.closed_unseen);
    // The time in LAST_ACK began while events were lost: unknown.
    assert_eq!(c.dwell_ns[LastAck.index()], None);
    h.check_invariants();
}

/// The kernel can also say a socket is gone outside a leak check (a reconciliation): a
/// leaking socket leaves as `closed_unseen` and `leaked`; a socket it has in CLOSE_WAIT that the
/// engine held as ESTABLISHED enters CLOSE_WAIT now (its age an estimate from now).
#[test]
fn reconciliation_closes_and_corrects_any_socket() {
    let mut h = H::new();
    h.seq(1, 0, 0, &[Established, CloseWait]);
    assert_eq!(leaks(&h.tick(THR)).len(), 1);
    h.seq(2, 0, 0, &[SynSent, Established]);
    let mut out = Vec::new();
    assert!(h.e.close_unseen(1, &mut out));
    let c = only_close(&out);
    assert!(c.closed_unseen && c.leaked);
    assert_eq!(h.e.leaking_now(), 0);
    out.clear();
    assert!(h.e.correct_state(2, CloseWait, &mut out));
    assert_eq!(h.e.close_wait_now(), 1);
    assert!(h.tick(THR + THR - 1).is_empty());
    let l = leaks(&h.tick(2 * THR));
    assert_eq!((l.len(), l[0].age_source), (1, AgeSource::Estimate));
    assert!(!h.e.close_unseen(99, &mut out));
    // A state the tracepoint never shows means gone.
    out.clear();
    assert!(h.e.correct_state(2, TimeWait, &mut out));
    assert!(only_close(&out).closed_unseen);
    assert_eq!(h.e.tracked(), 0);
    h.check_invariants();
}

/// Idle before close: taken from the closing transition, clamped to the life within a tick,
/// dropped beyond it and for connections never established; histogrammed per kind.
#[test]
fn idle_before_close_is_kept_checked_and_histogrammed() {
    let s = 1_000_000_000u64;
    let passive = [Close, SynSent, Established, CloseWait, LastAck, Close];
    // One transition a second: the life is 4 s.
    let close_with = |h: &mut H, sk: u64, idle: Idle| -> CloseRecord {
        let mut recs = Vec::new();
        for (i, w) in passive.windows(2).enumerate() {
            let mut t = tr(i as u64 * s, sk, w[0], w[1]);
            if w[1] == Close {
                t.idle = idle;
            }
            recs = h.ev(t);
        }
        only_close(&recs)
    };
    let mut h = H::new();
    let two = Idle {
        rx_ns: Some(2 * s),
        tx_ns: Some(s),
    };
    assert_eq!(close_with(&mut h, 7, two).idle, two);
    assert_eq!(h.e.idle_histogram(CloseKind::Passive).count(), 1);
    assert_eq!(h.e.idle_histogram(CloseKind::Active).count(), 0);
    // Within a tick past the life: the life. Far past it: not an idle time.
    let c = close_with(
        &mut h,
        9,
        Idle {
            rx_ns: Some(4 * s + 4_000_000),
            tx_ns: Some(90 * s),
        },
    );
    assert_eq!(c.idle.rx_ns, Some(4 * s), "clamped to the 4 s life");
    assert_eq!(c.idle.tx_ns, None, "a stamp never set");
    assert_eq!(h.e.idle_histogram(CloseKind::Passive).count(), 2);
    // A failed connect has none.
    h.ev(tr(0, 11, Close, SynSent));
    let mut t = tr(s, 11, SynSent, Close);
    t.idle = two;
    let c = only_close(&h.ev(t));
    assert_eq!(c.kind, CloseKind::ConnectFailed);
    assert_eq!(c.idle, Idle::NONE);
}
