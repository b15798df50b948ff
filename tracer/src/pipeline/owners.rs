//! Who owns a socket, as the trace and the startup baseline show it: the owner a transition
//! reveals by running in the owner's context (connect, listen, close, shutdown) or by being
//! the child of a listener whose owner is known, and the listeners by (netns, port). (Baseline
//! sockets are found by their first traced event through a stand-in key hashed from their
//! (netns, 4-tuple): `baseline::stand_in_key`.)
//!
//! Schedule: per event (a few hash lookups, only on the transitions that use them).

use crate::event::{TcpState, Transition};
use crate::record::{Owner, OwnerSource};
use crate::sockdiag::FourTuple;

/// Who owns what, as the trace and the baseline show it.
#[derive(Default)]
pub(super) struct Owners {
    /// (netns, local port) → owner of the listener(s) on it.
    pub(super) listeners: crate::timewait::FastMap<(u32, u16), Owner>,
}

impl Owners {
    /// The owner a transition reveals by running in the owner's own context, or by being a
    /// child of a listener whose owner is known.
    pub(super) fn revealed_by(&self, t: &Transition, netns: u32) -> Option<Owner> {
        use TcpState::*;
        let context = matches!(
            (t.old, t.new),
            (Close, SynSent) | (Close, Listen) | (Established, FinWait1) | (CloseWait, LastAck)
        );
        if context && t.task_pid != 0 {
            return Some(Owner {
                pid: t.task_pid,
                comm: t.task_comm,
                source: OwnerSource::Context,
            });
        }
        if (t.old, t.new) == (Listen, SynRecv) {
            return self.listeners.get(&(netns, t.sport)).map(|o| Owner {
                source: if o.source == OwnerSource::Shared {
                    OwnerSource::Shared
                } else {
                    OwnerSource::Listener
                },
                ..*o
            });
        }
        None
    }

    pub(super) fn track_listener(&mut self, t: &Transition, netns: u32, owner: Option<Owner>) {
        match (t.old, t.new) {
            (TcpState::Close, TcpState::Listen) => {
                if let Some(o) = owner {
                    self.listeners.insert((netns, t.sport), o);
                }
            }
            (TcpState::Listen, TcpState::Close) => {
                self.listeners.remove(&(netns, t.sport));
            }
            _ => {}
        }
    }
}

/// A transition's 4-tuple, normalized as the baseline's stand-in keys hash it.
pub(super) fn tuple_of(t: &Transition) -> FourTuple {
    FourTuple {
        family: t.family,
        saddr: t.saddr,
        sport: t.sport,
        daddr: t.daddr,
        dport: t.dport,
    }
    .normalized()
}
