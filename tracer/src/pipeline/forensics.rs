//! Leak forensics: what a leak record carries for the next step of whoever reads it — the
//! owner's fd numbers, the bytes never read and never acknowledged, and for a socket that was
//! never accepted, its listener with the accept queue against the backlog. On demand: once per
//! leak record, from what the leak check's sock_diag answer said and the attributor's index
//! (one `readlink` per fd; for a socket never accepted, one dump of the namespace's listeners).

use std::collections::HashMap;
use std::time::Instant;

use super::{ListenerInfo, Pipeline, RecordContext};
use crate::event::TcpState;
use crate::record::{LeakRecord, SocketId};
use crate::sockdiag::FourTuple;
use crate::sockdiag::{DiagSocket, StateMask};

/// What the kernel said of a leak candidate when its leak was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LeakFacts {
    pub(super) sk: u64,
    /// 0: no process has an fd for it (still in its listener's accept queue).
    pub(super) inode: u64,
    pub(super) recv_queue: u32,
    pub(super) send_queue: u32,
}

impl LeakFacts {
    pub(super) fn of(sk: u64, s: &DiagSocket) -> Self {
        LeakFacts {
            sk,
            inode: s.inode,
            recv_queue: s.recv_queue,
            send_queue: s.send_queue,
        }
    }

    /// Bytes received and not read. The kernel's receive queue of a CLOSE_WAIT socket also
    /// counts the peer's FIN, as one, until the owner has read up to it (measured: a peer that
    /// sent 5 bytes and closed shows 6; after the owner reads them, 0).
    fn unread_bytes(self) -> u32 {
        self.recv_queue.saturating_sub(1)
    }
}

/// Forensics of one CLOSE_WAIT socket for a view (`tracer top`'s sockets screen).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketForensics {
    /// Its fd numbers in the process the view is about.
    pub fds: Vec<u32>,
    /// Bytes never read (the FIN not counted), and bytes not acknowledged; `None` when the
    /// kernel could not be asked or no longer has it.
    pub unread_bytes: Option<u32>,
    pub unsent_bytes: Option<u32>,
}

impl Pipeline {
    /// Forensics of CLOSE_WAIT sockets for a view, in their order: one sock_diag dump filtered
    /// to CLOSE_WAIT per namespace they are in, and one read of `pid`'s fd table. On demand (a
    /// redraw of the sockets screen), never per event.
    pub fn close_wait_forensics(
        &mut self,
        ids: &[SocketId],
        pid: Option<u32>,
    ) -> Vec<SocketForensics> {
        let mut out = vec![SocketForensics::default(); ids.len()];
        let Some(live) = self.live.as_mut() else {
            return out;
        };
        let now = Instant::now();
        let own = self.own_netns;
        let ns_of = |n: u32| if n == 0 { own } else { n };
        let mut by_ns: HashMap<u32, HashMap<FourTuple, DiagSocket>> = HashMap::new();
        for id in ids {
            let ns = ns_of(id.netns);
            if by_ns.contains_key(&ns) {
                continue;
            }
            let found = live
                .namespaces
                .diag(ns, now)
                .and_then(|d| d.dump(StateMask::only(TcpState::CloseWait)).ok())
                .unwrap_or_default();
            by_ns.insert(
                ns,
                found
                    .into_iter()
                    .map(|s| (s.tuple().normalized(), s))
                    .collect(),
            );
        }
        let index = pid.map(|p| live.proc.scan_inodes(Some(p)));
        for (id, f) in ids.iter().zip(out.iter_mut()) {
            let Some(s) = by_ns
                .get(&ns_of(id.netns))
                .and_then(|m| m.get(&FourTuple::from(id).normalized()))
            else {
                continue;
            };
            let facts = LeakFacts::of(id.sk, s);
            f.unread_bytes = Some(facts.unread_bytes());
            f.unsent_bytes = Some(s.send_queue);
            if let Some(ix) = &index
                && s.inode != 0
            {
                f.fds = ix.holders(s.inode).map(|h| h.fd).collect();
                f.fds.sort_unstable();
            }
        }
        out
    }

    /// Keeps what the kernel said of a leak about to be reported, and tells the engine whether
    /// the socket was ever accepted (inode 0: still in the accept queue).
    pub(super) fn keep_leak_facts(&mut self, f: LeakFacts) {
        let accepted = f.inode != 0;
        self.engine.set_holder(f.sk, None, accepted);
        self.leak_facts.push(f);
    }

    pub(super) fn leak_facts_of(&self, sk: u64) -> Option<LeakFacts> {
        self.leak_facts.iter().rev().find(|f| f.sk == sk).copied()
    }

    /// The context of one leak record: the owner's command line, cgroup and CLOSE_WAIT count,
    /// and the forensics.
    pub(super) fn leak_context(
        &mut self,
        l: &LeakRecord,
        held: &HashMap<u32, u64>,
        now: Instant,
    ) -> RecordContext {
        let facts = self.leak_facts_of(l.id.sk);
        let mut cx = RecordContext {
            cmdline: l.owner.and_then(|o| self.cmdline_of(o.pid)),
            close_wait_held: l.owner.and_then(|o| held.get(&o.pid).copied()),
            cgroup: self.cgroup(l.owner.as_ref(), now, true),
            unread_bytes: facts.map(LeakFacts::unread_bytes),
            unsent_bytes: facts.map(|f| f.send_queue),
            ..RecordContext::default()
        };
        if let (Some(f), Some(o), Some(live)) = (facts, l.owner, self.live.as_mut())
            && f.inode != 0
        {
            cx.fds = live.attributor.fds_of(o.pid, f.inode);
        }
        if l.accepted == Some(false) {
            cx.listener = self.listener_of(l, now);
        }
        cx
    }

    /// The listener on a never-accepted socket's local port in its namespace (one dump of the
    /// namespace's listeners), with its holder. Of an `SO_REUSEPORT` group, the first listener
    /// bound to the socket's address or to the wildcard.
    fn listener_of(&mut self, l: &LeakRecord, now: Instant) -> Option<ListenerInfo> {
        let ns = self.ns(l.id.netns);
        let live = self.live.as_mut()?;
        let diag = live.namespaces.diag(ns, now)?;
        let listeners = diag.dump(StateMask::only(TcpState::Listen)).ok()?;
        let found = listeners.iter().find(|s| {
            s.sport == l.id.sport
                && s.family == l.id.family
                && (s.saddr == l.id.saddr || s.saddr.is_unspecified())
        })?;
        Some(ListenerInfo {
            owner: live.attributor.resolve_inode(found.inode, now),
            addr: found.saddr,
            port: found.sport,
            // For a listener, sock_diag's queues are the accept queue and its limit.
            accept_queue: found.recv_queue,
            backlog: found.send_queue,
        })
    }
}
