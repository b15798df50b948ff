//! Snapshots of engine state for views that redraw (`tracer top`): the sockets in CLOSE_WAIT
//! now, with their owner and age. Computed on demand, once per redraw, never on the event path:
//! O(sockets in CLOSE_WAIT).

use super::{Engine, flag};
use crate::record::{AgeSource, Owner, SocketId};

/// A socket in CLOSE_WAIT now, as [`Engine::close_wait_sockets`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseWaitSocket {
    pub id: SocketId,
    pub owner: Option<Owner>,
    /// Time in CLOSE_WAIT at the snapshot's `now_ns` (0 for a seed still waiting for its first
    /// clock reading).
    pub age_ns: u64,
    /// Over the threshold (reported leaking, or due at `now_ns`).
    pub leaking: bool,
    pub age_source: AgeSource,
    /// As the holder confirmation found it: `Some(false)` while it is still in its listener's
    /// accept queue, `Some(true)` once a process's fd holds it, `None` not yet looked at.
    pub accepted: Option<bool>,
}

impl Engine {
    /// The sockets in CLOSE_WAIT now whose owner passes `keep`, oldest first (ties by socket
    /// address). O(sockets in CLOSE_WAIT), plus the sort of those kept.
    pub fn close_wait_sockets(
        &self,
        now_ns: u64,
        mut keep: impl FnMut(Option<&Owner>) -> bool,
    ) -> Vec<CloseWaitSocket> {
        let thr = self.cfg.close_wait_threshold_ns;
        let mut v = Vec::new();
        let v6 = &self.table.v6;
        self.for_each_close_wait(|e| {
            if !keep(e.owner.as_ref()) {
                return;
            }
            let unclocked = e.has(flag::CW_UNCLOCKED);
            let age_ns = if unclocked {
                0
            } else {
                now_ns.saturating_sub(e.since_ns)
            };
            v.push(CloseWaitSocket {
                id: e.id(v6),
                owner: e.owner,
                age_ns,
                leaking: e.has(flag::LEAKING) || (!unclocked && age_ns >= thr),
                age_source: if e.has(flag::AGE_ESTIMATE) {
                    AgeSource::Estimate
                } else {
                    AgeSource::Traced
                },
                accepted: e.accepted(),
            });
        });
        v.sort_by(|a, b| b.age_ns.cmp(&a.age_ns).then(a.id.sk.cmp(&b.id.sk)));
        v
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::engine::{EngineConfig, Seed};
    use crate::event::{Comm, Family, TcpState, TcpState::*, Transition};
    use crate::record::{OwnerSource, Record};

    const S: u64 = 1_000_000_000;

    fn tr(ts: u64, sk: u64, old: TcpState, new: TcpState) -> Transition {
        Transition {
            ts_ns: ts,
            sk,
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 8000 + sk as u16,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 40_000,
            old,
            new,
            dwell_ns: None,
            netns: 0,
            sk_err: 0,
            task_pid: 1,
            task_tid: 1,
            task_comm: Comm::new("t"),
            idle: crate::event::Idle::NONE,
        }
    }

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: Comm::new("srv"),
            source: OwnerSource::Inode,
        }
    }

    #[test]
    fn lists_close_wait_sockets_of_one_owner_oldest_first_with_leaking_marked() {
        let mut e = Engine::new(EngineConfig {
            capacity: 100,
            close_wait_threshold_ns: 30 * S,
        });
        let mut out: Vec<Record> = Vec::new();
        for (sk, at, pid) in [
            (1u64, S, 10u32),
            (2, 2 * S, 20),
            (3, 3 * S, 10),
            (4, 4 * S, 10),
        ] {
            e.on_transition(&tr(at - S / 2, sk, Listen, SynRecv), &mut out);
            e.set_owner(sk, owner(pid));
            e.on_transition(&tr(at - S / 4, sk, SynRecv, Established), &mut out);
            e.on_transition(&tr(at, sk, Established, CloseWait), &mut out);
        }
        // Socket 4 leaves CLOSE_WAIT: it is no longer listed.
        e.on_transition(&tr(5 * S, 4, CloseWait, LastAck), &mut out);
        e.tick(32 * S, &mut out);
        let mine = e.close_wait_sockets(32 * S, |o| o.is_some_and(|o| o.pid == 10));
        let got: Vec<_> = mine
            .iter()
            .map(|s| (s.id.sk, s.age_ns, s.leaking))
            .collect();
        assert_eq!(got, vec![(1, 31 * S, true), (3, 29 * S, false)]);
        assert_eq!(mine[0].id.sport, 8001);
        assert_eq!(mine[0].owner.map(|o| o.pid), Some(10));
        assert_eq!(mine[0].age_source, AgeSource::Traced);
        // At a later reading socket 3 is over the threshold too, before any tick reports it.
        let later = e.close_wait_sockets(33 * S, |o| o.is_some_and(|o| o.pid == 10));
        assert!(later.iter().all(|s| s.leaking));
        assert_eq!(e.close_wait_sockets(32 * S, |_| true).len(), 3);
        assert!(e.close_wait_sockets(32 * S, |o| o.is_none()).is_empty());
    }

    #[test]
    fn seeded_sockets_carry_an_estimated_age() {
        let mut e = Engine::new(EngineConfig::default());
        let mut out = Vec::new();
        e.tick(100 * S, &mut out);
        e.seed(
            &Seed {
                id: SocketId {
                    sk: 7,
                    netns: 0,
                    family: Family::V4,
                    saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    sport: 1,
                    daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    dport: 2,
                },
                state: CloseWait,
                owner: None,
                state_since_ns: Some(60 * S),
            },
            &mut out,
        );
        let v = e.close_wait_sockets(100 * S, |o| o.is_none());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].age_ns, 40 * S);
        assert_eq!(v[0].age_source, AgeSource::Estimate);
        assert!(v[0].leaking);
    }
}
