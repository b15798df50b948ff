//! What the engine produces: close records, CLOSE_WAIT leak records, and the owner of a socket.
//!
//! Plain data, `Copy` where it can be, no allocation per record. `output` turns these into
//! text or JSON; `metrics` aggregates them.

use std::net::IpAddr;

use crate::event::{Comm, Family, Idle, TcpState};
use crate::rst::RstReason;

/// How a connection closed. Each kind maps to exact transition patterns, documented in
/// docs/close-kinds.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloseKind {
    /// This side sent FIN first: ESTABLISHED→FIN_WAIT1→FIN_WAIT2→CLOSE.
    Active,
    /// The peer sent FIN first: ESTABLISHED→CLOSE_WAIT→LAST_ACK→CLOSE.
    Passive,
    /// Both sides sent FIN before seeing the other's: FIN_WAIT1→CLOSING→CLOSE.
    Simultaneous,
    /// Closed by a reset the peer sent (`reset_by: peer`), or a reset whose sender cannot be
    /// told (`reset_by: null`): the kernel's pending error at X→CLOSE was ECONNRESET/EPIPE, or
    /// is unknown.
    Reset,
    /// This side sent the RST (`reset_by: local`): SO_LINGER {1,0}, close() with unread data, a
    /// listener closed with connections it never accepted, `tcp_abort` (`ss -K`).
    Abort,
    /// SYN_SENT→CLOSE: the connect failed (refused, timed out, or was cancelled).
    ConnectFailed,
    /// A listening socket closed: LISTEN→CLOSE.
    Listener,
    /// The kernel gave up on an established connection: retransmissions, keepalive probes or
    /// the FIN's retransmissions went unanswered (ETIMEDOUT). No RST was exchanged.
    Timeout,
    /// The close sequence was not seen from its start (tracer started mid-life, or events were
    /// lost) and the seen part fits no other kind.
    Unknown,
}

impl CloseKind {
    /// Every kind, in display order (per-kind arrays are indexed by `kind as usize`, the
    /// declaration order).
    pub const ALL: [CloseKind; 9] = [
        CloseKind::Active,
        CloseKind::Passive,
        CloseKind::Simultaneous,
        CloseKind::Reset,
        CloseKind::Abort,
        CloseKind::Timeout,
        CloseKind::ConnectFailed,
        CloseKind::Listener,
        CloseKind::Unknown,
    ];

    /// Stable lowercase name used in JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseKind::Active => "active",
            CloseKind::Passive => "passive",
            CloseKind::Simultaneous => "simultaneous",
            CloseKind::Reset => "reset",
            CloseKind::Abort => "abort",
            CloseKind::ConnectFailed => "connect_failed",
            CloseKind::Listener => "listener",
            CloseKind::Timeout => "timeout",
            CloseKind::Unknown => "unknown",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Which end of a connection sent the RST that ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResetBy {
    /// This socket's side.
    Local,
    /// The remote end.
    Peer,
}

impl ResetBy {
    pub fn name(self) -> &'static str {
        match self {
            ResetBy::Local => "local",
            ResetBy::Peer => "peer",
        }
    }
}

/// Which end of the connection the socket was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Made by connect(): first seen as CLOSE→SYN_SENT.
    Client,
    /// Accepted from a listener: first seen as LISTEN→SYN_RECV.
    Server,
    /// A listening socket: CLOSE→LISTEN.
    Listener,
    /// First seen mid-life.
    Unknown,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Client, Role::Server, Role::Listener, Role::Unknown];

    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Listener => "listener",
            Role::Unknown => "unknown",
        }
    }
}

/// How the owner of a socket was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerSource {
    /// Seen in the owner's own context in the kernel (connect, listen, close, shutdown).
    Context,
    /// An accepted socket given its listener's owner.
    Listener,
    /// Looked up: sock_diag inode → the process whose fd table holds it (/proc/PID/fd).
    Inode,
    /// Several processes hold the socket (shared listener, passed fd); the one named is the
    /// lowest pid among them.
    Shared,
}

impl OwnerSource {
    pub fn name(self) -> &'static str {
        match self {
            OwnerSource::Context => "context",
            OwnerSource::Listener => "listener",
            OwnerSource::Inode => "inode",
            OwnerSource::Shared => "shared",
        }
    }
}

/// The process that holds a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Thread-group id (process id).
    pub pid: u32,
    pub comm: Comm,
    pub source: OwnerSource,
}

/// Where a CLOSE_WAIT age comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgeSource {
    /// Measured from the traced ESTABLISHED→CLOSE_WAIT transition.
    Traced,
    /// Estimated at startup from what the kernel reports (tcp_info), for sockets that were
    /// already in CLOSE_WAIT when the tracer started.
    Estimate,
}

impl AgeSource {
    pub fn name(self) -> &'static str {
        match self {
            AgeSource::Traced => "traced",
            AgeSource::Estimate => "estimate",
        }
    }
}

/// The socket's identity and endpoints, shared by every record about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketId {
    pub sk: u64,
    /// Inode number of the socket's network namespace (`net:[N]`); 0 when unknown. 4-tuples
    /// repeat across namespaces: a 4-tuple names a socket only together with this.
    pub netns: u32,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// Most states a close record lists; a longer path keeps its first entries and counts the rest.
pub const MAX_PATH: usize = 12;

/// The states a socket went through, in order, inline (no allocation): kernel state numbers
/// (1–12) packed two to a byte, 10 bytes in all (it is part of every tracked socket's slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatePath {
    states: [u8; MAX_PATH / 2],
    len: u8,
    /// States that did not fit.
    pub truncated: u16,
}

impl StatePath {
    fn at(&self, i: usize) -> Option<TcpState> {
        TcpState::from_kernel((self.states[i / 2] >> (4 * (i % 2))) & 0xf)
    }

    pub fn push(&mut self, s: TcpState) {
        let i = usize::from(self.len);
        if i < MAX_PATH {
            let shift = 4 * (i % 2);
            let b = &mut self.states[i / 2];
            *b = (*b & !(0xf << shift)) | ((s as u8 & 0xf) << shift);
            self.len += 1;
        } else {
            self.truncated = self.truncated.saturating_add(1);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = TcpState> + '_ {
        (0..usize::from(self.len)).filter_map(|i| self.at(i))
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn last(&self) -> Option<TcpState> {
        self.len
            .checked_sub(1)
            .and_then(|i| self.at(usize::from(i)))
    }
}

/// Time spent in each state (ns), indexed by [`TcpState::index`]; `None` = not seen (or its
/// start was not seen).
pub type Dwell = [Option<u64>; 12];

/// Emitted once when a socket reaches CLOSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseRecord {
    pub ts_ns: u64,
    pub id: SocketId,
    pub role: Role,
    pub kind: CloseKind,
    /// States from the first seen to CLOSE, inclusive.
    pub states: StatePath,
    pub dwell_ns: Dwell,
    /// From the first transition seen to CLOSE; `None` when the socket was seeded from the
    /// startup baseline (its birth was not seen).
    pub lifetime_ns: Option<u64>,
    /// Handed to a timewait socket (FIN_WAIT2→CLOSE, or CLOSING→CLOSE after our FIN).
    pub time_wait: bool,
    /// For a close that ended in a reset (`reset`, `abort`, a refused connect): who sent the
    /// RST, `None` when it cannot be told. Always `None` for other kinds.
    pub reset_by: Option<ResetBy>,
    /// The socket's pending error at its X→CLOSE (errno, 0 = none); `None` when the kernel
    /// program could not read it.
    pub sk_err: Option<u16>,
    /// A leak record was emitted for this socket.
    pub leaked: bool,
    pub owner: Option<Owner>,
    /// The close itself was never seen: the kernel no longer had the socket when asked (a
    /// leak check or a reconciliation), so it closed while its events were lost. The kind is
    /// then `unknown`, and `ts_ns` is when that was found out.
    pub closed_unseen: bool,
    /// How long the connection had been quiet when it reached CLOSE: since the last segment
    /// received (`rx_ns`, what `idle_before_close_ns` reports) and since the last data sent.
    /// Only for connections that were established (not a failed connect or a listener).
    pub idle: Idle,
    /// Why the kernel sent the RST this socket ended with, when this host sent one (kernels
    /// with the reason: 6.10+). Filled by the path from `tcp:tcp_send_reset`, not the engine.
    pub rst_reason: Option<RstReason>,
}

/// Emitted once per socket when its time in CLOSE_WAIT crosses the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakRecord {
    pub ts_ns: u64,
    pub id: SocketId,
    /// Time in CLOSE_WAIT at `ts_ns`.
    pub age_ns: u64,
    pub age_source: AgeSource,
    pub owner: Option<Owner>,
    /// How long the owner had sent no data (tcp_info `tcpi_last_data_sent`) when the leak was
    /// confirmed; `None` when it was not asked (replay) or could not be learnt.
    pub idle_ns: Option<u64>,
    /// Whether a process had accepted the socket, as the kernel said (its inode): `Some(false)`
    /// for a socket still in its listener's accept queue (no process has an fd for it: a
    /// stalled accept loop, not a missing `close()`); `None` when not known (replay).
    pub accepted: Option<bool>,
}

/// What the engine emits.
// `allow`, not `expect`: whether the lint fires depends on how much larger a close record is
// than a leak record, which changes as fields come and go (the packed state path made it 6
// bytes smaller).
#[allow(
    clippy::large_enum_variant,
    reason = "records are Copy and reused in one Vec per batch; boxing would allocate per record"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Close(CloseRecord),
    Leak(LeakRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_path_packs_two_states_a_byte() {
        assert_eq!(size_of::<StatePath>(), 10);
        let mut p = StatePath::default();
        assert_eq!((p.len(), p.last()), (0, None));
        let want: Vec<TcpState> = TcpState::ALL.iter().rev().copied().collect();
        for &st in &want {
            p.push(st);
            assert_eq!(p.last(), Some(st));
        }
        assert_eq!(p.iter().collect::<Vec<_>>(), want);
        p.push(TcpState::Close);
        p.push(TcpState::Close);
        assert_eq!((p.len(), p.truncated), (MAX_PATH, 2));
        assert_eq!(p.last(), Some(TcpState::Established));
    }
}
