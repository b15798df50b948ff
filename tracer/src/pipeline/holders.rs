//! Holder confirmation: the process that holds each CLOSE_WAIT socket, known within a second
//! of it entering CLOSE_WAIT, whatever the server model. Periodic (called on the drain tick,
//! after the drain); rate-limited to one round per [`ROUND_EVERY`].
//!
//! The trace names an accepted socket's owner by its listener, and the listener by its port:
//! right for a server that is one process per listener, wrong for a pre-fork server (the
//! master listens, workers accept), an `SO_REUSEPORT` group, an acceptor that passes fds over
//! `SCM_RIGHTS`, or a fork after accept. The kernel knows better: the socket's inode, and the
//! fd tables that hold it (what `ss -p` reads). So a socket still in CLOSE_WAIT
//! [`CONFIRM_AFTER_NS`] after it entered it is looked up by inode — most CLOSE_WAIT stays last
//! microseconds and are never looked up. A round asks sock_diag once per socket, or dumps the
//! namespace's CLOSE_WAIT sockets when many are due there, and resolves each inode through the
//! attributor (a cached answer costs one `readlink`; a miss, a rate-limited `/proc` rescan).
//!
//! Every [`RECHECK_EVERY`] each CLOSE_WAIT socket is confirmed again, so that a socket handed
//! to another process later in its CLOSE_WAIT stay is named by its new holder.
//!
//! A CLOSE_WAIT socket with inode 0 is still in its listener's accept queue: no process has an
//! fd for it (`ss -p` shows no user). It is marked never accepted and held by nobody, and looked
//! at again each round until it is accepted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Pipeline;
use crate::event::TcpState;
use crate::record::SocketId;
use crate::sockdiag::{DiagSocket, FourTuple, StateMask};

/// A CLOSE_WAIT socket's holder is looked up once it has been in CLOSE_WAIT this long.
pub const CONFIRM_AFTER_NS: u64 = 300_000_000;
/// At most one round this often.
pub const ROUND_EVERY: Duration = Duration::from_millis(250);
/// Every CLOSE_WAIT socket's holder is confirmed again this often: a socket handed to another
/// process after its holder was confirmed (a late hand-over to a worker) is named by its new
/// holder within this. Cached answers cost one `readlink` each.
pub const RECHECK_EVERY: Duration = Duration::from_secs(10);
/// Most sockets looked up in one round (the rest wait for the next).
const ROUND_MAX: usize = 8192;
/// From this many sockets due in one namespace, one filtered dump replaces the lookups.
const DUMP_FROM: usize = 16;

pub use crate::engine::HolderSummary as HolderStats;

/// Holder confirmation's state, kept by the path.
#[derive(Debug, Default)]
pub(super) struct Holders {
    last_round: Option<Instant>,
    last_recheck: Option<Instant>,
    stats: HolderStats,
    /// Scratch, reused.
    due: Vec<SocketId>,
}

impl Pipeline {
    /// What holder confirmation has done.
    pub fn holder_stats(&self) -> HolderStats {
        self.holders.stats
    }

    /// The drain tick's holder confirmation (call after the drain): every CLOSE_WAIT socket in
    /// CLOSE_WAIT for [`CONFIRM_AFTER_NS`] whose holder is not yet confirmed is looked up by
    /// inode. Live only; at most one round per [`ROUND_EVERY`].
    pub fn confirm_holders(&mut self) {
        if self.live.is_none() {
            return;
        }
        let now = Instant::now();
        if self
            .holders
            .last_round
            .is_some_and(|t| now.duration_since(t) < ROUND_EVERY)
        {
            return;
        }
        self.holders.last_round = Some(now);
        match self.holders.last_recheck {
            Some(t) if now.duration_since(t) >= RECHECK_EVERY => {
                self.engine.recheck_holders();
                self.holders.last_recheck = Some(now);
            }
            None => self.holders.last_recheck = Some(now),
            Some(_) => {}
        }
        let mut due = std::mem::take(&mut self.holders.due);
        let entered_by = self.engine.clock_ns().saturating_sub(CONFIRM_AFTER_NS);
        self.engine.holders_due(entered_by, ROUND_MAX, &mut due);
        if !due.is_empty() {
            let own = self.own_netns;
            due.sort_unstable_by_key(|id| if id.netns == 0 { own } else { id.netns });
            let mut start = 0;
            while start < due.len() {
                let ns = self.ns(due[start].netns);
                let end = start
                    + due[start..]
                        .iter()
                        .take_while(|id| self.ns(id.netns) == ns)
                        .count();
                self.confirm_in(ns, &due[start..end], now);
                start = end;
            }
            let s = &mut self.holders.stats;
            s.rounds += 1;
            s.sockets += due.len() as u64;
            s.total_us += now.elapsed().as_micros() as u64;
        }
        due.clear();
        self.holders.due = due;
    }

    /// One namespace's sockets of a round.
    fn confirm_in(&mut self, ns: u32, ids: &[SocketId], now: Instant) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Some(diag) = live.namespaces.diag(ns, now) else {
            self.holders.stats.unanswered += ids.len() as u64;
            return;
        };
        let found: Vec<Option<DiagSocket>> = if ids.len() >= DUMP_FROM {
            self.holders.stats.dumps += 1;
            match diag.dump(StateMask::only(TcpState::CloseWait)) {
                Ok(v) => {
                    let by: HashMap<FourTuple, DiagSocket> =
                        v.into_iter().map(|s| (s.tuple().normalized(), s)).collect();
                    ids.iter()
                        .map(|id| by.get(&FourTuple::from(id).normalized()).copied())
                        .collect()
                }
                Err(e) => {
                    tracing::debug!("holders: network namespace {ns}: {e}");
                    self.holders.stats.unanswered += ids.len() as u64;
                    return;
                }
            }
        } else {
            self.holders.stats.lookups += ids.len() as u64;
            ids.iter()
                .map(|id| diag.lookup(&FourTuple::from(id)).ok().flatten())
                .collect()
        };
        for (id, s) in ids.iter().zip(found) {
            // Gone or in another state: the trace or the reconciliation will say.
            let Some(s) = s.filter(|s| s.state == TcpState::CloseWait) else {
                continue;
            };
            self.confirm_one(id, &s, now);
        }
    }

    fn confirm_one(&mut self, id: &SocketId, s: &DiagSocket, now: Instant) {
        if s.inode == 0 {
            self.holders.stats.not_accepted += 1;
            self.engine.set_holder(id.sk, None, false);
            return;
        }
        let Some(live) = self.live.as_mut() else {
            return;
        };
        match live.attributor.resolve_inode(s.inode, now) {
            Some(owner) => {
                let before = self.engine.owner(id.sk);
                let s = &mut self.holders.stats;
                s.confirmed += 1;
                if before.map(|o| o.pid) != Some(owner.pid) {
                    s.corrected += 1;
                }
                self.engine.set_holder(id.sk, Some(owner), true);
            }
            None => self.holders.stats.unanswered += 1,
        }
    }
}
