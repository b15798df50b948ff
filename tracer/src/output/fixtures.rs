//! Records for the output tests (tests only): transitions, closes and leaks of every kind,
//! role and source, IPv4, IPv6 and v4-mapped, with and without owner, cgroup and container,
//! and names that need escaping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Meta;
use crate::container::{Cgroup, ContainerId};
use crate::engine::summary::RemoteSummary;
use crate::engine::{BaselineSummary, Engine, EngineConfig, Summary};
use crate::event::{Comm, Family, TcpState, Transition};
use crate::pipeline::{RecordContext, Sink};
use crate::record::{
    AgeSource, CloseKind, CloseRecord, LeakRecord, Owner, OwnerSource, ResetBy, Role, SocketId,
    StatePath,
};

/// Comms and command lines with every character class the JSON escaping treats apart.
const NAMES: [&str; 4] = [
    "python3",
    "a\"b\\c\u{1}",
    "t\tn\nr\r\u{8}\u{c}\u{7f}",
    "héllo/ü",
];

fn v4() -> (IpAddr, IpAddr) {
    (
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
    )
}

fn v6() -> (IpAddr, IpAddr) {
    (
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "2001:db8::42".parse().unwrap(),
    )
}

/// A dual-stack socket talking to an IPv4 peer.
fn mapped() -> (IpAddr, IpAddr) {
    (
        "::ffff:127.0.0.1".parse().unwrap(),
        "::ffff:192.168.1.9".parse().unwrap(),
    )
}

/// Endpoints number `i`: v4, v6 and v4-mapped in turn.
fn endpoints(i: usize) -> (Family, IpAddr, IpAddr) {
    match i % 3 {
        0 => (Family::V4, v4().0, v4().1),
        1 => (Family::V6, v6().0, v6().1),
        _ => (Family::V6, mapped().0, mapped().1),
    }
}

pub fn owner(i: usize) -> Owner {
    let sources = [
        OwnerSource::Context,
        OwnerSource::Listener,
        OwnerSource::Inode,
        OwnerSource::Shared,
    ];
    Owner {
        pid: 1000 + i as u32,
        comm: Comm::new(NAMES[i % NAMES.len()]),
        source: sources[i % sources.len()],
    }
}

pub fn transitions() -> Vec<(Transition, Option<Owner>)> {
    let pairs = [
        (TcpState::Close, TcpState::SynSent),
        (TcpState::Established, TcpState::CloseWait),
        (TcpState::FinWait1, TcpState::FinWait1),
        (TcpState::Listen, TcpState::Close),
    ];
    (0..8)
        .map(|i| {
            let (family, saddr, daddr) = endpoints(i);
            let (old, new) = pairs[i % pairs.len()];
            let t = Transition {
                ts_ns: 1_000_000_000 + i as u64 * 7,
                sk: 0xffff_8881_04a3_c000 + i as u64 * 0x100,
                family,
                saddr,
                sport: 40_000 + i as u16,
                daddr,
                dport: 8080,
                old,
                new,
                dwell_ns: (i % 2 == 1).then_some(73_912 * i as u64),
                netns: if i % 4 == 0 { 0 } else { 4_026_531_840 },
                sk_err: if i == 3 { 104 } else { 0 },
                task_pid: 12_347 + i as u32,
                task_tid: 12_350 + i as u32,
                task_comm: Comm::new(NAMES[i % NAMES.len()]),
                idle: if new == TcpState::Close && i == 3 {
                    crate::event::Idle {
                        rx_ns: Some(30_012_000_000),
                        tx_ns: Some(4_000_000),
                    }
                } else {
                    crate::event::Idle::NONE
                },
            };
            (t, (i % 3 != 2).then(|| owner(i)))
        })
        .collect()
}

fn id(i: usize) -> SocketId {
    let (family, saddr, daddr) = endpoints(i);
    SocketId {
        sk: 0xffff_8881_1000_0000 + i as u64 * 0x40,
        netns: if i % 5 == 4 { 0 } else { 4_026_532_301 },
        family,
        saddr,
        sport: 8080,
        daddr,
        dport: 50_000 + i as u16,
    }
}

fn path(states: &[TcpState]) -> StatePath {
    let mut p = StatePath::default();
    for &s in states {
        p.push(s);
    }
    p
}

/// Idle times the fixture closes cycle through: none, a short pause, a load balancer's 350 s.
const FIXTURE_IDLE: [crate::event::Idle; 3] = [
    crate::event::Idle::NONE,
    crate::event::Idle {
        rx_ns: Some(3_004_000_000),
        tx_ns: Some(12_000_000),
    },
    crate::event::Idle {
        rx_ns: Some(350_020_000_000),
        tx_ns: None,
    },
];

pub fn closes() -> Vec<CloseRecord> {
    use TcpState::*;
    let roles = [Role::Client, Role::Server, Role::Listener, Role::Unknown];
    CloseKind::ALL
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let states = match i % 3 {
                0 => path(&[SynSent, Established, FinWait1, FinWait2, Close]),
                1 => path(&[]),
                _ => path(&[Established, CloseWait, LastAck, Close]),
            };
            let mut dwell_ns = [None; 12];
            if i % 3 != 1 {
                dwell_ns[Established.index()] = Some(20_311_000 + i as u64);
                dwell_ns[SynSent.index()] = Some(202_300);
                dwell_ns[CloseWait.index()] = Some(i as u64);
            }
            CloseRecord {
                ts_ns: 2_000_000_000 + i as u64,
                id: id(i),
                role: roles[i % roles.len()],
                kind,
                states,
                dwell_ns,
                lifetime_ns: (i % 2 == 0).then_some(20_555_100 + i as u64),
                time_wait: kind == CloseKind::Active,
                reset_by: match kind {
                    CloseKind::Abort => Some(ResetBy::Local),
                    CloseKind::Reset if i % 2 == 1 => Some(ResetBy::Peer),
                    _ => None,
                },
                sk_err: (i % 4 != 3).then_some(if kind == CloseKind::Reset { 104 } else { 0 }),
                leaked: kind == CloseKind::Passive,
                closed_unseen: kind == CloseKind::Unknown,
                idle: FIXTURE_IDLE[i % FIXTURE_IDLE.len()],
                rst_reason: (kind == CloseKind::Abort)
                    .then(|| crate::rst::RstReason::from_name("TCP_ABORT_ON_CLOSE"))
                    .flatten(),
                owner: (i % 3 != 1).then(|| owner(i)),
            }
        })
        .collect()
}

pub fn leaks() -> Vec<LeakRecord> {
    (0..6)
        .map(|i| LeakRecord {
            ts_ns: 3_000_000_000 + i as u64,
            id: id(i + 1),
            age_ns: 30_000_412_000 + i as u64,
            age_source: if i % 2 == 0 {
                AgeSource::Traced
            } else {
                AgeSource::Estimate
            },
            owner: (i % 3 != 2).then(|| owner(i)),
            idle_ns: (i % 2 == 0).then_some(30_004_000_000),
            accepted: match i {
                2 | 3 => Some(false),
                1 | 4 => None,
                _ => Some(true),
            },
        })
        .collect()
}

/// Contexts: none, a cgroup without a container, a container with a command line, and one
/// with a command line that needs escaping.
pub fn contexts() -> Vec<RecordContext> {
    let id = ContainerId::parse(&"4f1c2a9b8d7e6f5a".repeat(4)).unwrap();
    vec![
        RecordContext::default(),
        RecordContext {
            cmdline: None,
            close_wait_held: Some(1),
            cgroup: Some(Cgroup {
                path: "/user.slice/session-2.scope".into(),
                container_id: None,
            }),
            fds: vec![7],
            unread_bytes: Some(5),
            unsent_bytes: Some(0),
            listener: None,
        },
        RecordContext {
            cmdline: Some("/usr/bin/server --port 8080".into()),
            close_wait_held: Some(17),
            cgroup: Some(Cgroup {
                path: format!("/kubepods.slice/cri-containerd-{id}.scope").into(),
                container_id: Some(id),
            }),
            fds: vec![3, 9],
            unread_bytes: Some(0),
            unsent_bytes: Some(1448),
            listener: None,
        },
        RecordContext {
            cmdline: Some(NAMES[2].into()),
            close_wait_held: None,
            cgroup: None,
            fds: Vec::new(),
            unread_bytes: Some(120),
            unsent_bytes: Some(0),
            listener: Some(crate::pipeline::ListenerInfo {
                owner: Some(owner(9)),
                addr: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                port: 8080,
                accept_queue: 129,
                backlog: 128,
            }),
        },
    ]
}

/// Resets sent: with a socket and a reason, without a socket (IPv6), and without a reason.
pub fn resets() -> Vec<crate::rst::ResetSent> {
    use crate::rst::{ResetSent, RstReason};
    let reason = |n: &str| RstReason::from_name(n).unwrap_or(RstReason::UNKNOWN);
    vec![
        ResetSent {
            ts_ns: 1_500_000_000,
            sk: 0xffff_8881_1000_0100,
            netns: 4_026_532_301,
            state: Some(TcpState::Close),
            reason: reason("TCP_ABORT_ON_CLOSE"),
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 8080,
            daddr: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            dport: 50004,
        },
        ResetSent {
            ts_ns: 1_500_000_001,
            sk: 0,
            netns: 0,
            state: None,
            reason: reason("NO_SOCKET"),
            family: Family::V6,
            saddr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            sport: 9,
            daddr: IpAddr::V6("2001:db8::42".parse().unwrap_or(Ipv6Addr::UNSPECIFIED)),
            dport: 41000,
        },
        ResetSent {
            ts_ns: 1_500_000_002,
            sk: 0xffff_8881_1000_0200,
            netns: 4_026_532_301,
            state: Some(TcpState::TimeWait),
            reason: RstReason::UNKNOWN,
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 8080,
            daddr: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9)),
            dport: 50006,
        },
    ]
}

/// Every transition, reset, close and leak of the fixtures through a sink.
pub fn render(sink: &mut impl Sink) {
    for (t, o) in transitions() {
        sink.transition(&t, o.as_ref()).unwrap();
    }
    for r in resets() {
        sink.reset(&r).unwrap();
    }
    let cxs = contexts();
    for (i, c) in closes().iter().enumerate() {
        sink.close(c, &cxs[i % cxs.len()]).unwrap();
    }
    for (i, l) in leaks().iter().enumerate() {
        sink.leak(l, &cxs[i % cxs.len()]).unwrap();
    }
}

pub fn meta(pid: Option<u32>) -> Meta {
    Meta {
        version: "0.1.0",
        close_wait_threshold_ns: 30_000_000_000,
        capacity: 1_000_000,
        pid,
        attach: "tp_btf",
        baseline: pid.is_none(),
        resets: "reason",
        realtime_offset_ns: 1_764_441_234_567_890_123,
    }
}

/// A summary with only the fields every run has.
pub fn summary_plain() -> Summary {
    Engine::new(EngineConfig::default()).summary(0)
}

/// A summary with every optional field filled in.
pub fn summary_full() -> Summary {
    let mut s = summary_plain();
    s.events_lost = Some(1);
    s.skipped_lines = Some(2);
    s.long_lines = Some(3);
    s.time_jumps = Some(4);
    s.restarts = Some(5);
    s.restart_forgotten = Some(6);
    s.baseline = Some(BaselineSummary {
        sockets: 7,
        namespaces: 2,
        namespaces_failed: 0,
        took_us: 1234,
    });
    s.closed_unseen = 20;
    s.state_corrected = 3;
    (s.reconcile, s.holders) = {
        let (r, h) = crate::engine::summary::samples();
        (Some(r), Some(h))
    };
    s.time_wait_top = vec![RemoteSummary {
        remote: "127.0.0.1:5432".into(),
        netns: Some(4_026_532_301),
        time_wait: 9,
        ephemeral_ports_used: 10,
        ephemeral_port_range: 28_232,
    }];
    s.idle_before_close = vec![crate::engine::summary::IdleSummary {
        kind: "reset",
        count: 7,
        p50_ns: 349_500_000_000,
        p90_ns: 350_100_000_000,
        p99_ns: 350_400_000_000,
        max_ns: 350_450_000_000,
    }];
    s.resets_top = vec![
        crate::engine::summary::ResetSummary {
            reason: "NO_SOCKET",
            remote: "10.0.0.7".into(),
            netns: None,
            resets: 50,
        },
        crate::engine::summary::ResetSummary {
            reason: "TCP_ABORT_ON_CLOSE",
            remote: "::1".into(),
            netns: Some(4_026_532_301),
            resets: 2,
        },
    ];
    s
}
