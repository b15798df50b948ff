//! Resets this host sent (`tcp:tcp_send_reset`): counted per reason and remote address, and
//! joined to the close record of the socket that sent one.
//!
//! The kernel sends a socket's last RST either just before its transition to CLOSE (keepalive
//! timeout, out of memory) or just after it (close() with unread data, SO_LINGER 0, a listener
//! dropping its queue, data after shutdown). So:
//! - a reset from a socket that is still open is kept a moment, by socket address, for its
//!   close ([`Resets::take_reason`]);
//! - a close this side reset (`reset_by: local`) is held until its socket's reset arrives, or
//!   for [`HOLD_NS`] at most, then goes out without a reason ([`Resets::hold`],
//!   [`Resets::expired`]). Only where the kernel says why it resets (6.10+): elsewhere
//!   there is no reason to wait for.
//!
//! Bounded everywhere: [`SERIES_MAX`] (reason, namespace, remote) series, the rest counted under
//! `other` per reason; [`PENDING_MAX`] reasons waiting, [`HELD_MAX`] closes held (the oldest
//! goes out first when full). Everything dropped is counted.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::record::CloseRecord;
use crate::rst::{ResetSent, RstReason};

use super::RecordContext;

/// Most (reason, namespace, remote) series; later remotes are counted under `other`. A series
/// once given stays (counters must not go down).
pub const SERIES_MAX: usize = 64;
/// Most resets kept waiting for their socket's close.
pub const PENDING_MAX: usize = 1024;
/// Most close records held waiting for their reset.
pub const HELD_MAX: usize = 4096;
/// Longest a close waits for its reset (ns of event time): the reset is sent microseconds
/// after the close, on the same CPU, and reaches the reader in the same drain or the next.
pub const HOLD_NS: u64 = 250_000_000;
/// A reset older than this (ns) before its socket's close is not that close's.
pub const PENDING_NS: u64 = 1_000_000_000;

/// One series of `tracer_tcp_resets_sent_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResetKey {
    pub reason: RstReason,
    /// The sender's namespace (0: unknown, as for resets sent without a socket).
    pub netns: u32,
    /// Where the RST went; `None` is the `other` series of the reason.
    pub remote: Option<IpAddr>,
}

/// Counts kept about resets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetStats {
    /// Resets decoded.
    pub sent: u64,
    /// Of those, sent without a full socket (no socket, or a timewait socket).
    pub without_socket: u64,
    /// Close records that got their reason.
    pub joined: u64,
    /// Close records held for a reset that never came (sent without a reason).
    pub held_expired: u64,
    /// Close records sent on early because the held queue was full.
    pub held_overflow: u64,
    /// Resets from open sockets dropped from the waiting list (full, or never closed).
    pub pending_dropped: u64,
}

#[derive(Debug, Default)]
pub struct Resets {
    series: HashMap<ResetKey, u64>,
    /// Series of `series` with a remote of their own (at most [`SERIES_MAX`]).
    named: usize,
    pending: VecDeque<(u64, RstReason, u64)>,
    held: VecDeque<(CloseRecord, RecordContext)>,
    /// The kernel names reasons: closes this side reset wait for theirs.
    pub reasons: bool,
    stats: ResetStats,
}

impl Resets {
    pub fn new(reasons: bool) -> Self {
        Resets {
            series: HashMap::with_capacity(SERIES_MAX + 32),
            named: 0,
            pending: VecDeque::with_capacity(PENDING_MAX),
            held: VecDeque::with_capacity(64),
            reasons,
            stats: ResetStats::default(),
        }
    }

    pub fn stats(&self) -> ResetStats {
        self.stats
    }

    /// Counts one reset. `open` says whether its socket is a tracked, open one (a close will
    /// follow). Returns a held close record it completes, if any.
    pub fn on_reset(
        &mut self,
        r: &ResetSent,
        netns: u32,
        open: bool,
    ) -> Option<(CloseRecord, RecordContext)> {
        self.stats.sent += 1;
        if r.sk == 0 || r.state.is_none() || r.state == Some(crate::event::TcpState::TimeWait) {
            self.stats.without_socket += 1;
        }
        let own = ResetKey {
            reason: r.reason,
            netns,
            remote: Some(r.daddr),
        };
        let key = if self.series.contains_key(&own) {
            own
        } else if self.named < SERIES_MAX {
            self.named += 1;
            own
        } else {
            ResetKey {
                remote: None,
                ..own
            }
        };
        *self.series.entry(key).or_insert(0) += 1;
        if r.sk == 0 {
            return None;
        }
        // Its close, if held, is among the last held: the reset follows it at once.
        if let Some(i) = self.held.iter().rposition(|(c, _)| c.id.sk == r.sk) {
            let (mut c, cx) = self.held.remove(i)?;
            c.rst_reason = Some(r.reason);
            self.stats.joined += 1;
            return Some((c, cx));
        }
        if open {
            if self.pending.len() >= PENDING_MAX {
                self.pending.pop_front();
                self.stats.pending_dropped += 1;
            }
            self.pending.push_back((r.sk, r.reason, r.ts_ns));
        }
        None
    }

    /// The reason of a reset the socket sent shortly before its close, taken.
    pub fn take_reason(&mut self, sk: u64, close_ns: u64) -> Option<RstReason> {
        while let Some(&(_, _, ts)) = self.pending.front() {
            if ts + PENDING_NS >= close_ns {
                break;
            }
            self.pending.pop_front();
            self.stats.pending_dropped += 1;
        }
        let i = self.pending.iter().rposition(|p| p.0 == sk)?;
        let (_, reason, _) = self.pending.remove(i)?;
        self.stats.joined += 1;
        Some(reason)
    }

    /// Whether a close must wait for its reset: this side reset it, the kernel names reasons,
    /// and none arrived before it.
    pub fn must_wait(&self, c: &CloseRecord) -> bool {
        self.reasons && c.rst_reason.is_none() && c.reset_by == Some(crate::record::ResetBy::Local)
    }

    /// Holds a close for its reset; when full, returns the oldest held one to send now.
    pub fn hold(
        &mut self,
        c: CloseRecord,
        cx: RecordContext,
    ) -> Option<(CloseRecord, RecordContext)> {
        let out = if self.held.len() >= HELD_MAX {
            self.stats.held_overflow += 1;
            self.held.pop_front()
        } else {
            None
        };
        self.held.push_back((c, cx));
        out
    }

    /// The oldest held close whose wait is over at `now_ns` (`u64::MAX`: every one), taken.
    pub fn expired(&mut self, now_ns: u64) -> Option<(CloseRecord, RecordContext)> {
        let (c, _) = self.held.front()?;
        if c.ts_ns.saturating_add(HOLD_NS) > now_ns {
            return None;
        }
        self.stats.held_expired += 1;
        self.held.pop_front()
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether a close of socket `sk` is held.
    pub fn holds(&self, sk: u64) -> bool {
        sk != 0 && self.held.iter().rev().any(|(c, _)| c.id.sk == sk)
    }

    /// Every series with its count, `other` ones last within a reason, largest first.
    pub fn series(&self) -> Vec<(ResetKey, u64)> {
        let mut v: Vec<(ResetKey, u64)> = self.series.iter().map(|(k, n)| (*k, *n)).collect();
        v.sort_by(|a, b| {
            (a.0.remote.is_none(), std::cmp::Reverse(a.1), a.0).cmp(&(
                b.0.remote.is_none(),
                std::cmp::Reverse(b.1),
                b.0,
            ))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Family, TcpState};
    use std::net::Ipv4Addr;

    fn reset(sk: u64, remote: u8, reason: &str, ts: u64) -> ResetSent {
        ResetSent {
            ts_ns: ts,
            sk,
            netns: 1,
            state: (sk != 0).then_some(TcpState::Close),
            reason: RstReason::from_name(reason).unwrap(),
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 80,
            daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, remote)),
            dport: 5000,
        }
    }

    #[test]
    fn series_are_bounded_and_sticky() {
        let mut r = Resets::new(true);
        for i in 0..(SERIES_MAX as u8 + 10) {
            r.on_reset(&reset(0, i, "NO_SOCKET", 1), 1, false);
        }
        r.on_reset(&reset(0, 0, "NO_SOCKET", 2), 1, false);
        let s = r.series();
        assert_eq!(
            s.iter().filter(|(k, _)| k.remote.is_some()).count(),
            SERIES_MAX
        );
        let other = s.iter().find(|(k, _)| k.remote.is_none()).unwrap();
        assert_eq!(other.1, 10);
        assert_eq!(s[0].1, 2, "the remote seen twice comes first");
        assert_eq!(r.stats().without_socket, SERIES_MAX as u64 + 11);
    }

    #[test]
    fn a_reset_before_the_close_is_taken_by_it() {
        let mut r = Resets::new(true);
        assert!(
            r.on_reset(&reset(7, 1, "TCP_KEEPALIVE_TIMEOUT", 100), 1, true)
                .is_none()
        );
        assert_eq!(r.take_reason(8, 200), None);
        assert_eq!(
            r.take_reason(7, 200).map(RstReason::name),
            Some("TCP_KEEPALIVE_TIMEOUT")
        );
        assert_eq!(r.take_reason(7, 200), None);
        // Too old to be this close's.
        r.on_reset(&reset(9, 1, "TCP_STATE", 100), 1, true);
        assert_eq!(r.take_reason(9, 100 + PENDING_NS + 1), None);
        assert_eq!(r.stats().pending_dropped, 1);
    }
}
