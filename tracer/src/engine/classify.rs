//! Close-kind classification: a socket's seen state path → [`CloseKind`].
//!
//! Pure functions over [`TcpState`]s; the engine calls [`classify`] once per close record. The
//! sequences they decode are the kernel's, as docs/kernel.md ("Sequences per socket") lists
//! them; the kinds are docs/close-kinds.md's.

use crate::event::TcpState;
use crate::record::{CloseKind, ResetBy, Role, StatePath};

/// What a close record says about how the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub kind: CloseKind,
    /// Who sent the RST, for closes that ended in one; `None` when it cannot be told.
    pub reset_by: Option<ResetBy>,
    /// Handed to a timewait socket.
    pub time_wait: bool,
}

/// errnos the kernel leaves in `sk->sk_err` before it takes a socket to CLOSE
/// (include/uapi/asm-generic/errno*.h; the same on every Linux architecture that matters here).
pub mod errno {
    pub const EPIPE: u16 = 32;
    pub const ECONNABORTED: u16 = 103;
    pub const ECONNRESET: u16 = 104;
    pub const ETIMEDOUT: u16 = 110;
    pub const ECONNREFUSED: u16 = 111;
}

/// The verdict on a close from the state path, the closing transition's old state `from` and
/// the socket's pending error at that transition (`sk_err`: `Some(errno)`, 0 = none; `None`
/// when the kernel program could not read it).
///
/// The kernel sets `sk_err` *before* `tcp_done()` when the close comes from outside this
/// side's own call: a received RST (`tcp_reset`: ECONNRESET, EPIPE in CLOSE_WAIT, ECONNREFUSED
/// in SYN_SENT), a timeout (`tcp_write_err`: ETIMEDOUT) or `tcp_abort` (`ss -K`:
/// ECONNABORTED, which sends our RST). A close this side starts (close() with unread data,
/// SO_LINGER {1,0}, `tcp_disconnect`, a listener dropping its un-accepted children) sets it
/// only after the state change, so its X→CLOSE shows 0. Hence, for X→CLOSE:
///
/// | X | `sk_err` 0 | ECONNRESET / EPIPE | ECONNABORTED | ETIMEDOUT | other errno, or unknown |
/// |---|---|---|---|---|---|
/// | ESTABLISHED, SYN_RECV, CLOSE_WAIT | `abort`, local | `reset`, peer | `abort`, local | `timeout` | `reset`, null |
/// | FIN_WAIT1 | `abort`, local | `reset`, **null** | `abort`, local | `timeout` | `reset`, null |
/// | FIN_WAIT2 | `active` (→TIME_WAIT) | `reset`, peer | `abort`, local | `timeout` | `active` |
/// | CLOSING | `simultaneous` (→TIME_WAIT) | `reset`, peer | `abort`, local | `timeout` | as for FIN_WAIT2 |
/// | LAST_ACK | `passive` | `reset`, peer | `abort`, local | `timeout` | as for FIN_WAIT2 |
/// | SYN_SENT | `connect_failed` | | | `connect_failed` | `connect_failed` |
///
/// (SYN_SENT with ECONNREFUSED: `connect_failed`, reset_by peer.) FIN_WAIT1 with ECONNRESET
/// is either the peer's RST or this side's: an orphaned socket (close() was called) that
/// receives data after its FIN answers with RST and `tcp_reset()` sets ECONNRESET on itself
/// (TCPAbortOnData), so it is `null`. In FIN_WAIT2 that needs a full socket that was shut for
/// reading and then gets data (SHUT_RD, or orphaned with `tcp_fin_timeout` > 60 s, when it is
/// not handed to a timewait socket); outside those, ECONNRESET in FIN_WAIT2 is the peer's.
///
/// The on-CPU task is not used to decide: a received RST runs in softirq, which on loopback
/// is the sending peer's task and on a real network whatever task was running — the owner's
/// own process included — and this side's resets run in the owner's context or a timer's.
/// The task is kept on the transition for a reader to weigh.
pub fn verdict(path: &StatePath, from: TcpState, sk_err: Option<u16>) -> Verdict {
    use errno::*;
    let base = classify(path, from);
    let plain = Verdict {
        kind: base,
        reset_by: None,
        time_wait: hands_to_time_wait(from),
    };
    if base == CloseKind::Unknown {
        return plain;
    }
    let v = |kind, reset_by| Verdict {
        kind,
        reset_by,
        time_wait: false,
    };
    match from {
        TcpState::SynSent => Verdict {
            reset_by: (sk_err == Some(ECONNREFUSED)).then_some(ResetBy::Peer),
            ..plain
        },
        TcpState::Established | TcpState::SynRecv | TcpState::CloseWait | TcpState::FinWait1 => {
            match sk_err {
                Some(0 | ECONNABORTED) => v(CloseKind::Abort, Some(ResetBy::Local)),
                Some(ECONNRESET | EPIPE) if from != TcpState::FinWait1 => {
                    v(CloseKind::Reset, Some(ResetBy::Peer))
                }
                Some(ETIMEDOUT) => v(CloseKind::Timeout, None),
                _ => v(CloseKind::Reset, None),
            }
        }
        TcpState::FinWait2 | TcpState::Closing | TcpState::LastAck => match sk_err {
            None | Some(0) => plain,
            Some(ECONNRESET | EPIPE) => v(CloseKind::Reset, Some(ResetBy::Peer)),
            Some(ECONNABORTED) => v(CloseKind::Abort, Some(ResetBy::Local)),
            Some(ETIMEDOUT) => v(CloseKind::Timeout, None),
            // The FIN exchange does not touch sk_err: another errno is an older error (an ICMP
            // report with IP_RECVERR) that the application has not read.
            Some(_) => plain,
        },
        _ => plain,
    }
}

/// Classifies a close from the path of states the socket was seen in (`path`, first seen state
/// … `CLOSE`) and the old state of its closing transition (`closing_from`, the `X` of `X→CLOSE`;
/// passed separately because a long path may be truncated).
///
/// The closing transition `X→CLOSE` is always seen (it is the event that produces the record),
/// and on this tracepoint each `X` has exactly one meaning, so the kind is decided by `X`, with
/// the rest of the path as a consistency check:
///
/// | `X→CLOSE` | kind | `time_wait` | typical full path (what the tracepoint shows) | also covers (indistinguishable on the tracepoint) |
/// |---|---|---|---|---|
/// | `FIN_WAIT2→CLOSE` | `active` | yes | `ESTABLISHED→FIN_WAIT1→FIN_WAIT2→CLOSE` (we sent FIN first; orphaned: FIN_WAIT2→CLOSE µs later when the timewait socket takes over; after `shutdown(SHUT_WR)` (half close): when the peer's FIN arrives) | FIN_WAIT2 timeout; RST received in FIN_WAIT2 |
/// | `LAST_ACK→CLOSE` | `passive` | no | `ESTABLISHED→CLOSE_WAIT→LAST_ACK→CLOSE` (peer sent FIN first; also the server side of a half close, and an owner that exits holding CLOSE_WAIT: the kernel closes it for the dying task) | RST received in LAST_ACK |
/// | `CLOSING→CLOSE` | `simultaneous` | yes | `ESTABLISHED→FIN_WAIT1→CLOSING→CLOSE` on both sides (FINs crossed) | RST received in CLOSING |
/// | `ESTABLISHED→CLOSE` | `reset` | no | either side of a reset: the closer with `SO_LINGER{1,0}` or unread data, and the peer ~20 µs later (ECONNRESET); un-accepted children of a closed listener | retransmission/keepalive timeout, `tcp_abort` (`ss -K`) |
/// | `SYN_RECV→CLOSE` | `reset` | no | `LISTEN→SYN_RECV→CLOSE`: a child reset (or timed out) before the handshake completed | |
/// | `FIN_WAIT1→CLOSE` | `reset` | no | `ESTABLISHED→FIN_WAIT1→CLOSE`: RST received after our FIN, or `SO_LINGER{1,0}`/unread data after `shutdown(SHUT_WR)` | FIN_WAIT1 retransmissions exhausted |
/// | `CLOSE_WAIT→CLOSE` | `abort` | no | `ESTABLISHED→CLOSE_WAIT→CLOSE`: close() with unread data (RST sent instead of FIN, LAST_ACK skipped) | RST received in CLOSE_WAIT |
/// | `SYN_SENT→CLOSE` | `connect_failed` | no | `CLOSE→SYN_SENT→CLOSE` within ~50 µs: refused (RST) | connect timeout, close() during connect |
/// | `LISTEN→CLOSE` | `listener` | no | `CLOSE→LISTEN→CLOSE` | |
/// | `CLOSE→CLOSE`, `TIME_WAIT→CLOSE`, `NEW_SYN_RECV→CLOSE` | `unknown` | no | never emitted by the kernel on this tracepoint | |
///
/// The kind does not depend on where the path starts, so a socket first seen mid-life (tracer
/// started later, entry evicted, or seeded from the startup baseline) gets the same kind as a
/// fully traced one whenever `X` decides it: first seen `FIN_WAIT1→FIN_WAIT2→CLOSE` is `active`,
/// `CLOSE_WAIT→LAST_ACK→CLOSE` is `passive`, `ESTABLISHED→FIN_WAIT1→CLOSING→CLOSE` is
/// `simultaneous`.
///
/// The rest of the path decides only one thing: if two adjacent states in it cannot follow each
/// other within one TCP life (each state must be reachable from the one before, through states
/// possibly not seen — see [`reachable`]), the path mixes two lives of a recycled socket address
/// (a lost CLOSE and a lost birth), and the kind is `unknown`. Example:
/// `ESTABLISHED→CLOSE_WAIT→(gap)→FIN_WAIT2→CLOSE`.
pub fn classify(path: &StatePath, closing_from: TcpState) -> CloseKind {
    let kind = kind_of_closing(closing_from);
    if kind == CloseKind::Unknown || !consistent(path) {
        return CloseKind::Unknown;
    }
    kind
}

/// The kind decided by the closing transition `from→CLOSE` alone (first column of the table on
/// [`classify`]).
pub fn kind_of_closing(from: TcpState) -> CloseKind {
    match from {
        TcpState::FinWait2 => CloseKind::Active,
        TcpState::LastAck => CloseKind::Passive,
        TcpState::Closing => CloseKind::Simultaneous,
        TcpState::Established | TcpState::SynRecv | TcpState::FinWait1 => CloseKind::Reset,
        TcpState::CloseWait => CloseKind::Abort,
        TcpState::SynSent => CloseKind::ConnectFailed,
        TcpState::Listen => CloseKind::Listener,
        TcpState::Close | TcpState::TimeWait | TcpState::NewSynRecv => CloseKind::Unknown,
    }
}

/// Whether `from→CLOSE` hands the connection to a timewait socket (the active or simultaneous
/// closer). Not on reset paths.
pub fn hands_to_time_wait(from: TcpState) -> bool {
    matches!(from, TcpState::FinWait2 | TcpState::Closing)
}

/// The role a socket's first seen transition `old→new` tells: a birth (`CLOSE→SYN_SENT`
/// client, `CLOSE→LISTEN` listener, `LISTEN→SYN_RECV` server child), or a first seen state that
/// only one role can be in (`SYN_SENT` client, `LISTEN` listener, `SYN_RECV` server — a
/// simultaneous open, where a client passes through SYN_RECV, is too rare to matter). Anything
/// else first seen mid-life is [`Role::Unknown`].
pub fn role_of_first(old: TcpState, new: TcpState) -> Role {
    match (old, new) {
        (TcpState::Close, TcpState::SynSent) => Role::Client,
        (TcpState::Close, TcpState::Listen) => Role::Listener,
        (TcpState::Close, _) => Role::Unknown,
        (TcpState::SynSent, _) => Role::Client,
        (TcpState::Listen, TcpState::SynRecv) | (TcpState::SynRecv, _) => Role::Server,
        (TcpState::Listen, _) => Role::Listener,
        _ => Role::Unknown,
    }
}

/// The role of a socket seeded in state `st` (same rule as [`role_of_first`]).
pub fn role_of_state(st: TcpState) -> Role {
    match st {
        TcpState::SynSent => Role::Client,
        TcpState::SynRecv => Role::Server,
        TcpState::Listen => Role::Listener,
        _ => Role::Unknown,
    }
}

/// Whether `old→new` starts a new socket life: `CLOSE→X` (connect, listen) or `LISTEN→SYN_RECV`
/// (a child cloned from a listener; the event carries the child's address).
pub fn is_birth(old: TcpState, new: TcpState) -> bool {
    (old == TcpState::Close && new != TcpState::Close)
        || (old == TcpState::Listen && new == TcpState::SynRecv)
}

/// Direct transitions one socket life can show on this tracepoint (TIME_WAIT and NEW_SYN_RECV
/// never appear; `CLOSE→X` only as a birth).
const fn successors(s: TcpState) -> u16 {
    const fn bit(s: TcpState) -> u16 {
        1 << (s as u8 - 1)
    }
    match s {
        TcpState::Close => bit(TcpState::SynSent) | bit(TcpState::Listen),
        TcpState::Listen => bit(TcpState::SynRecv) | bit(TcpState::Close),
        TcpState::SynSent => {
            bit(TcpState::Established) | bit(TcpState::SynRecv) | bit(TcpState::Close)
        }
        TcpState::SynRecv => {
            bit(TcpState::Established) | bit(TcpState::FinWait1) | bit(TcpState::Close)
        }
        TcpState::Established => {
            bit(TcpState::FinWait1) | bit(TcpState::CloseWait) | bit(TcpState::Close)
        }
        TcpState::FinWait1 => {
            bit(TcpState::FinWait2) | bit(TcpState::Closing) | bit(TcpState::Close)
        }
        TcpState::FinWait2 | TcpState::Closing | TcpState::LastAck => bit(TcpState::Close),
        TcpState::CloseWait => bit(TcpState::LastAck) | bit(TcpState::Close),
        TcpState::TimeWait | TcpState::NewSynRecv => 0,
    }
}

/// `REACH[a] & (1 << b)`: `b` can follow `a` within one life (one or more transitions, not
/// passing through CLOSE). Transitive closure of [`successors`], computed at compile time.
const REACH: [u16; 12] = {
    let mut r = [0u16; 12];
    let mut i = 0;
    while i < 12 {
        r[i] = successors(TcpState::ALL[i]);
        i += 1;
    }
    let close = 1u16 << (TcpState::Close as u8 - 1);
    let mut changed = true;
    while changed {
        changed = false;
        let mut a = 0;
        while a < 12 {
            let mut b = 0;
            while b < 12 {
                // Extend through b unless b is CLOSE (a life ends there).
                if r[a] & (1 << b) != 0 && (1u16 << b) != close {
                    let n = r[a] | r[b];
                    if n != r[a] {
                        r[a] = n;
                        changed = true;
                    }
                }
                b += 1;
            }
            a += 1;
        }
    }
    r
};

/// Whether `b` can follow `a` within one socket life, directly or through unseen states.
pub fn reachable(a: TcpState, b: TcpState) -> bool {
    REACH[a.index()] & (1 << b.index()) != 0
}

/// Every adjacent pair of the path is [`reachable`].
fn consistent(path: &StatePath) -> bool {
    let mut prev: Option<TcpState> = None;
    for s in path.iter() {
        if let Some(p) = prev
            && !reachable(p, s)
        {
            return false;
        }
        prev = Some(s);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    fn path(states: &[TcpState]) -> StatePath {
        let mut p = StatePath::default();
        for &s in states {
            p.push(s);
        }
        p
    }

    fn kind(states: &[TcpState]) -> CloseKind {
        let from = states[states.len() - 2];
        classify(&path(states), from)
    }

    #[test]
    fn full_paths() {
        use CloseKind as K;
        let cases: &[(&[TcpState], CloseKind)] = &[
            (
                &[Close, SynSent, Established, FinWait1, FinWait2, Close],
                K::Active,
            ),
            (
                &[Listen, SynRecv, Established, FinWait1, FinWait2, Close],
                K::Active,
            ),
            (
                &[Listen, SynRecv, Established, CloseWait, LastAck, Close],
                K::Passive,
            ),
            (
                &[Close, SynSent, Established, CloseWait, LastAck, Close],
                K::Passive,
            ),
            (
                &[Close, SynSent, Established, FinWait1, Closing, Close],
                K::Simultaneous,
            ),
            (&[Close, SynSent, Established, Close], K::Reset),
            (&[Listen, SynRecv, Established, Close], K::Reset),
            (&[Listen, SynRecv, Close], K::Reset),
            (&[Close, SynSent, Established, FinWait1, Close], K::Reset),
            (&[Listen, SynRecv, Established, CloseWait, Close], K::Abort),
            (&[Close, SynSent, Close], K::ConnectFailed),
            (&[Close, Listen, Close], K::Listener),
        ];
        for (p, k) in cases {
            assert_eq!(kind(p), *k, "{p:?}");
        }
    }

    #[test]
    fn mid_life_paths() {
        assert_eq!(kind(&[FinWait1, FinWait2, Close]), CloseKind::Active);
        assert_eq!(kind(&[CloseWait, LastAck, Close]), CloseKind::Passive);
        assert_eq!(kind(&[LastAck, Close]), CloseKind::Passive);
        assert_eq!(kind(&[Established, Close]), CloseKind::Reset);
        assert_eq!(kind(&[Closing, Close]), CloseKind::Simultaneous);
        // Gap: ESTABLISHED then (FIN_WAIT1 lost) FIN_WAIT2→CLOSE.
        assert_eq!(kind(&[Established, FinWait2, Close]), CloseKind::Active);
    }

    #[test]
    fn mixed_lives_are_unknown() {
        assert_eq!(
            kind(&[Established, CloseWait, FinWait2, Close]),
            CloseKind::Unknown
        );
        assert_eq!(kind(&[FinWait2, Established, Close]), CloseKind::Unknown);
        assert_eq!(kind(&[TimeWait, Close]), CloseKind::Unknown);
    }

    #[test]
    fn reach_table() {
        assert!(reachable(Close, FinWait2));
        assert!(reachable(Listen, LastAck));
        assert!(reachable(SynSent, Close));
        assert!(!reachable(CloseWait, FinWait1));
        assert!(!reachable(FinWait2, Established));
        assert!(!reachable(LastAck, LastAck));
        assert!(!reachable(Established, SynSent));
        assert!(hands_to_time_wait(FinWait2) && hands_to_time_wait(Closing));
        assert!(!hands_to_time_wait(FinWait1) && !hands_to_time_wait(LastAck));
    }

    #[test]
    fn roles() {
        assert_eq!(role_of_first(Close, SynSent), Role::Client);
        assert_eq!(role_of_first(Close, Listen), Role::Listener);
        assert_eq!(role_of_first(Listen, SynRecv), Role::Server);
        assert_eq!(role_of_first(Established, CloseWait), Role::Unknown);
        assert_eq!(role_of_first(Listen, Close), Role::Listener);
        assert!(is_birth(Close, SynSent) && is_birth(Listen, SynRecv));
        assert!(!is_birth(Close, Close) && !is_birth(Listen, Close));
    }
}
