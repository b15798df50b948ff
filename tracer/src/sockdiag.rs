//! sock_diag client: the only module that speaks netlink.
//!
//! Sends `SOCK_DIAG_BY_FAMILY` requests for TCP (`inet_diag`) over a `NETLINK_SOCK_DIAG`
//! socket and produces [`DiagSocket`]s: state, endpoints, inode, uid, cookie and the "ms ago"
//! ages of `struct tcp_info`. Two uses:
//!
//! - [`SockDiag::dump`]: the startup baseline (what `ss -tan` shows), one dump per family;
//! - [`SockDiag::lookup`]: one socket by its 4-tuple, to learn the inode of a socket seen in
//!   the trace (`attribution` turns the inode into a process).
//!
//! The socket is blocking and each call waits for the kernel's whole answer (a dump of 4000
//! sockets takes ~30 ms): from async code, call it on a blocking thread.
//!
//! Messages are built and parsed with `netlink-packet-core` / `netlink-packet-sock-diag`. The
//! one thing read by hand is the `INET_DIAG_INFO` payload (`struct tcp_info`, uapi
//! `linux/tcp.h`), which the sock-diag crate hands over as raw bytes: four `u32`s at fixed,
//! stable offsets.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId as DiagSocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};

use crate::event::{Family, TcpState};
use crate::record::SocketId;

/// Initial receive buffer. The kernel caps a dump datagram at 32 KiB (it sizes them after
/// the largest buffer the reader offered), so this is enough for every dump datagram; a
/// bigger datagram is still received whole, by peeking its size first.
const RECV_BUF: usize = 64 * 1024;

/// `INET_DIAG_NOCOOKIE`: "match any cookie" in an exact lookup.
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// Netlink messages are aligned to 4 bytes (`NLMSG_ALIGN`).
const fn nlmsg_align(len: usize) -> usize {
    (len + 3) & !3
}

/// Errors of the sock_diag client.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The netlink socket could not be created or connected.
    #[error("cannot open a NETLINK_SOCK_DIAG socket")]
    Open {
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request or the socket for lack of privilege (EPERM/EACCES).
    #[error(
        "permission denied for sock_diag {op}: the tracer needs root (or CAP_NET_ADMIN) to \
         read the kernel's socket table"
    )]
    PermissionDenied {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A request could not be sent.
    #[error("cannot send the sock_diag {op} request ({family:?})")]
    Send {
        op: &'static str,
        family: Family,
        #[source]
        source: io::Error,
    },
    /// A reply could not be received.
    #[error("cannot receive the sock_diag {op} reply ({family:?})")]
    Recv {
        op: &'static str,
        family: Family,
        #[source]
        source: io::Error,
    },
    /// The kernel answered with an error (NLMSG_ERROR, or a negative NLMSG_DONE code).
    #[error("sock_diag {op} ({family:?}) failed in the kernel")]
    Kernel {
        op: &'static str,
        family: Family,
        #[source]
        source: io::Error,
    },
    /// A reply datagram is not a sequence of well-framed netlink messages (truncated or
    /// corrupt header).
    #[error("malformed sock_diag {op} reply: bad netlink frame at byte {offset} of {len}")]
    Malformed {
        op: &'static str,
        offset: usize,
        len: usize,
        #[source]
        source: DecodeError,
    },
    /// The kernel reported NLMSG_OVERRUN: part of the reply was lost.
    #[error("sock_diag {op} ({family:?}) reply overran: messages were lost")]
    Overrun { op: &'static str, family: Family },
}

impl SockDiagError {
    fn io(op: &'static str, family: Family, source: io::Error, send: bool) -> Self {
        if is_permission(&source) {
            SockDiagError::PermissionDenied { op, source }
        } else if send {
            SockDiagError::Send { op, family, source }
        } else {
            SockDiagError::Recv { op, family, source }
        }
    }

    fn kernel(op: &'static str, family: Family, errno: i32) -> Self {
        let source = io::Error::from_raw_os_error(errno.saturating_abs());
        if is_permission(&source) {
            SockDiagError::PermissionDenied { op, source }
        } else {
            SockDiagError::Kernel { op, family, source }
        }
    }

    /// The kernel's errno, when the kernel itself answered with an error.
    fn kernel_errno(&self) -> Option<i32> {
        match self {
            SockDiagError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

/// A set of TCP states, as the kernel's `idiag_states` bitmask (bit `n` = state number `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct StateMask(u32);

impl StateMask {
    /// No state.
    pub const EMPTY: StateMask = StateMask(0);
    /// Every state, TIME_WAIT and request sockets (SYN_RECV) included.
    pub const ALL: StateMask = StateMask(0x1ffe);

    /// The set holding just `s`.
    pub const fn only(s: TcpState) -> Self {
        StateMask(1 << (s as u32))
    }

    /// This set plus `s`.
    #[must_use]
    pub const fn with(self, s: TcpState) -> Self {
        StateMask(self.0 | (1 << (s as u32)))
    }

    /// Whether `s` is in the set.
    pub const fn contains(self, s: TcpState) -> bool {
        self.0 & (1 << s as u32) != 0
    }

    /// The kernel bitmask.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The states in the set, in kernel order.
    pub fn iter(self) -> impl Iterator<Item = TcpState> {
        TcpState::ALL.into_iter().filter(move |&s| self.contains(s))
    }
}

impl From<TcpState> for StateMask {
    fn from(s: TcpState) -> Self {
        StateMask::only(s)
    }
}

impl FromIterator<TcpState> for StateMask {
    fn from_iter<I: IntoIterator<Item = TcpState>>(iter: I) -> Self {
        iter.into_iter().fold(StateMask::EMPTY, StateMask::with)
    }
}

impl std::ops::BitOr for StateMask {
    type Output = StateMask;
    fn bitor(self, rhs: StateMask) -> StateMask {
        StateMask(self.0 | rhs.0)
    }
}

impl std::ops::BitOr<TcpState> for StateMask {
    type Output = StateMask;
    fn bitor(self, rhs: TcpState) -> StateMask {
        self.with(rhs)
    }
}

/// The "how long ago" fields of `struct tcp_info`, in milliseconds before the dump.
///
/// Kernel resolution is one jiffy (1–10 ms). `tcpi_last_ack_sent` is left out: the kernel
/// always reports 0 for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpInfoAges {
    /// Since the last segment carrying data was sent (`tcpi_last_data_sent`).
    pub last_data_sent_ms: u32,
    /// Since the last segment carrying data was received (`tcpi_last_data_recv`, the delayed-ACK
    /// engine's `lrcvtime`). A segment without payload (a bare FIN) does not move it.
    pub last_data_recv_ms: u32,
    /// Since the last acceptable ACK was received (`tcpi_last_ack_recv`, `rcv_tstamp`). Every
    /// segment the peer sends after the handshake carries an ACK, FIN included.
    pub last_ack_recv_ms: u32,
}

/// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h): eight `__u8`, nine `__u32`
/// (`tcpi_rto` .. `tcpi_fackets`), then the four "last" stamps. Unchanged since 2.6.
const TCPI_LAST_DATA_SENT: usize = 44;
const TCPI_LAST_DATA_RECV: usize = 52;
const TCPI_LAST_ACK_RECV: usize = 56;

impl TcpInfoAges {
    /// Reads the ages from the bytes of an `INET_DIAG_INFO` attribute; `None` when it is too
    /// short to hold them.
    pub fn from_tcp_info(raw: &[u8]) -> Option<Self> {
        let u32_at = |off: usize| -> Option<u32> {
            let b = raw.get(off..off + 4)?;
            Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        Some(TcpInfoAges {
            last_data_sent_ms: u32_at(TCPI_LAST_DATA_SENT)?,
            last_data_recv_ms: u32_at(TCPI_LAST_DATA_RECV)?,
            last_ack_recv_ms: u32_at(TCPI_LAST_ACK_RECV)?,
        })
    }
}

/// A socket's family and local/remote endpoints: what identifies a connection to the kernel's
/// lookup. `saddr`/`sport` are local, `daddr`/`dport` remote (as in the trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FourTuple {
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl FourTuple {
    /// The tuple with addresses in the family's form: v4 for [`Family::V4`], v6 (v4-mapped if
    /// need be) for [`Family::V6`]. A v6 address on a V4 tuple that is not v4-mapped is kept.
    #[must_use]
    pub fn normalized(self) -> Self {
        let fix = |a: IpAddr| match (self.family, a) {
            (Family::V4, IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
            (Family::V6, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => a,
        };
        FourTuple {
            saddr: fix(self.saddr),
            daddr: fix(self.daddr),
            ..self
        }
    }
}

impl From<&SocketId> for FourTuple {
    fn from(id: &SocketId) -> Self {
        FourTuple {
            family: id.family,
            saddr: id.saddr,
            sport: id.sport,
            daddr: id.daddr,
            dport: id.dport,
        }
    }
}

/// One TCP socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub family: Family,
    /// The state. Request sockets (NEW_SYN_RECV) are reported as SYN_RECV by the kernel.
    pub state: TcpState,
    /// Local address: `IpAddr::V4` for AF_INET, `IpAddr::V6` for AF_INET6 (v4-mapped kept, as
    /// the tracepoint reports them).
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Inode of the socket file; 0 when no file is attached (TIME_WAIT, request sockets,
    /// orphans after close()).
    pub inode: u64,
    pub uid: u32,
    /// The kernel's socket cookie (`sock_gen_cookie`), unique per network namespace boot.
    pub cookie: u64,
    /// For listeners: pending connections; otherwise bytes not yet read by the application.
    pub recv_queue: u32,
    /// For listeners: the backlog; otherwise bytes not yet acknowledged by the peer.
    pub send_queue: u32,
    /// `None` for TIME_WAIT and request sockets (the kernel has no `tcp_info` for them).
    pub info: Option<TcpInfoAges>,
    /// Time left on the socket's pending timer, ms (`idiag_expires`): for a TIME_WAIT socket,
    /// until the kernel frees it; 0 when no timer is pending.
    pub timer_ms: u32,
}

impl DiagSocket {
    /// The socket's family and endpoints.
    pub fn tuple(&self) -> FourTuple {
        FourTuple {
            family: self.family,
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
        }
    }

    /// How long ago (ms, at dump time) a socket found in CLOSE_WAIT received the peer's FIN,
    /// i.e. entered CLOSE_WAIT. `None` unless the socket is in CLOSE_WAIT with `tcp_info`.
    ///
    /// The estimate is `tcpi_last_ack_recv`. The FIN is the last segment the peer sends in
    /// this state and it carries an ACK, so the ACK stamp is set when it arrives. The data
    /// stamp is the wrong one: a FIN without payload does not move it, so it dates the last
    /// data before the FIN, or the handshake. Measured (kernel 6.18, loopback, FIN 1511 ms
    /// before the dump, data 2511 ms before): last_ack_recv 1504, last_data_recv 2504.
    ///
    /// Limits: it is a lower bound. Whatever the peer sends after its FIN moves the stamp: a
    /// half-closed peer (shutdown(SHUT_WR)) ACKs data this side sends in CLOSE_WAIT
    /// (measured: FIN 1200 ms ago, our write 400 ms ago → 404), and answered keepalive probes
    /// do the same. A peer that closed completely answers such data with RST instead, which
    /// ends CLOSE_WAIT, so the usual leak (peer gone, we never read or write) is dated
    /// right. Resolution is one jiffy.
    pub fn close_wait_since_estimate_ms(&self) -> Option<u32> {
        if self.state != TcpState::CloseWait {
            return None;
        }
        self.info.map(|i| i.last_ack_recv_ms)
    }

    /// Builds from a parsed `inet_diag_msg`; `None` for a family or state this crate does not
    /// know.
    fn from_response(r: &InetResponse) -> Option<Self> {
        let h = &r.header;
        let family = match h.family {
            AF_INET => Family::V4,
            AF_INET6 => Family::V6,
            _ => return None,
        };
        let state = TcpState::from_kernel(h.state)?;
        let id = &h.socket_id;
        // idiag_cookie[2]: low 32 bits first, each in host order (sock_diag_save_cookie).
        let c = id.cookie;
        let cookie = u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            | (u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32);
        let info = r.nlas.iter().find_map(|nla| match nla {
            Nla::TcpInfo(raw) => TcpInfoAges::from_tcp_info(raw),
            _ => None,
        });
        Some(DiagSocket {
            family,
            state,
            saddr: id.source_address,
            sport: id.source_port,
            daddr: id.destination_address,
            dport: id.destination_port,
            inode: u64::from(h.inode),
            uid: h.uid,
            cookie,
            recv_queue: h.recv_queue,
            send_queue: h.send_queue,
            info,
            timer_ms: 0,
        })
    }
}

/// What one reply datagram told us.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    /// More datagrams follow.
    More,
    /// NLMSG_DONE seen (or, for an exact lookup, the single answer).
    Done,
}

/// Walks the netlink messages of one datagram that answer request `seq`. Socket records go
/// to `out`; messages of other requests (left over from an interrupted exchange) are skipped;
/// messages that frame correctly but do not parse are counted in `skipped`.
pub(crate) fn walk_datagram(
    buf: &[u8],
    seq: u32,
    op: &'static str,
    family: Family,
    out: &mut Vec<DiagSocket>,
    skipped: &mut u64,
) -> Result<Walk, SockDiagError> {
    let mut off = 0;
    let mut answered = false;
    while off < buf.len() {
        let rest = &buf[off..];
        let frame =
            NetlinkBuffer::new_checked(rest).map_err(|source| SockDiagError::Malformed {
                op,
                offset: off,
                len: buf.len(),
                source,
            })?;
        let len = frame.length() as usize;
        let next = off + nlmsg_align(len);
        if frame.sequence_number() != seq {
            off = next;
            continue;
        }
        answered = true;
        match NetlinkMessage::<SockDiagMessage>::deserialize(&rest[..len]) {
            Ok(msg) => match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    match DiagSocket::from_response(&r) {
                        Some(mut s) => {
                            // The sock-diag crate drops the TIME_WAIT timer's expiry; read
                            // `idiag_expires` from the message itself.
                            s.timer_ms = idiag_expires(&rest[..len]).unwrap_or(0);
                            out.push(s);
                        }
                        None => *skipped += 1,
                    }
                }
                NetlinkPayload::Done(d) => {
                    if d.code < 0 {
                        return Err(SockDiagError::kernel(op, family, d.code));
                    }
                    return Ok(Walk::Done);
                }
                NetlinkPayload::Error(e) => {
                    // code None is an ACK; we never ask for one, but it is harmless.
                    if let Some(code) = e.code {
                        return Err(SockDiagError::kernel(op, family, code.get()));
                    }
                }
                NetlinkPayload::Overrun(_) => return Err(SockDiagError::Overrun { op, family }),
                NetlinkPayload::Noop => {}
                _ => *skipped += 1,
            },
            Err(_) => *skipped += 1,
        }
        off = next;
    }
    // An exact lookup is answered by one message that is not multipart and has no NLMSG_DONE.
    if op == OP_LOOKUP && answered {
        return Ok(Walk::Done);
    }
    Ok(Walk::More)
}

/// `idiag_expires` of an `inet_diag_msg` in a netlink message: after the 16-byte netlink
/// header, 4 one-byte fields and the 48-byte `inet_diag_sockid` (uapi linux/inet_diag.h).
fn idiag_expires(msg: &[u8]) -> Option<u32> {
    const OFFSET: usize = 16 + 4 + 48;
    let b = msg.get(OFFSET..OFFSET + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub(crate) const OP_DUMP: &str = "dump";
pub(crate) const OP_LOOKUP: &str = "lookup";

/// A `NETLINK_SOCK_DIAG` socket. Blocking; one request at a time.
pub struct SockDiag {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    skipped: u64,
}

impl std::fmt::Debug for SockDiag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockDiag")
            .field("seq", &self.seq)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl SockDiag {
    /// Opens and connects the netlink socket.
    pub fn open() -> Result<Self, SockDiagError> {
        let wrap = |source: io::Error| {
            if is_permission(&source) {
                SockDiagError::PermissionDenied { op: "open", source }
            } else {
                SockDiagError::Open { source }
            }
        };
        let sock = Socket::new(NETLINK_SOCK_DIAG).map_err(wrap)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(wrap)?;
        Ok(SockDiag {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            skipped: 0,
        })
    }

    /// Reply messages that were framed correctly but could not be parsed (unknown family or
    /// state, malformed attributes), since the socket was opened.
    pub fn skipped_messages(&self) -> u64 {
        self.skipped
    }

    /// Every TCP socket (AF_INET, then AF_INET6) in one of `states`, with `tcp_info` ages.
    ///
    /// A kernel without IPv6 answers the AF_INET6 request with ENOENT (no handler for the
    /// family); that counts as "no IPv6 sockets".
    pub fn dump(&mut self, states: StateMask) -> Result<Vec<DiagSocket>, SockDiagError> {
        let mut out = Vec::new();
        self.dump_family(Family::V4, states, &mut out)?;
        match self.dump_family(Family::V6, states, &mut out) {
            Err(e) if e.kernel_errno() == Some(libc::ENOENT) => {}
            other => other?,
        }
        Ok(out)
    }

    /// Every TCP socket (AF_INET, then AF_INET6) in one of `states`, handed to `f` one reply
    /// datagram at a time: memory stays that of one datagram (~32 KiB), however many sockets
    /// there are.
    pub fn dump_each(
        &mut self,
        states: StateMask,
        mut f: impl FnMut(&DiagSocket),
    ) -> Result<(), SockDiagError> {
        let mut batch = Vec::with_capacity(256);
        for family in [Family::V4, Family::V6] {
            let socket_id = match family {
                Family::V4 => DiagSocketId::new_v4(),
                Family::V6 => DiagSocketId::new_v6(),
            };
            let seq = self.send(OP_DUMP, family, states, socket_id, true)?;
            loop {
                batch.clear();
                let walk = match self.recv(OP_DUMP, family, seq, &mut batch) {
                    Ok(w) => w,
                    // No IPv6 in this kernel: no IPv6 sockets.
                    Err(e) if family == Family::V6 && e.kernel_errno() == Some(libc::ENOENT) => {
                        break;
                    }
                    Err(e) => return Err(e),
                };
                batch.iter().for_each(&mut f);
                if walk == Walk::Done {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Every TCP socket of one family in one of `states`, appended to `out`.
    pub fn dump_family(
        &mut self,
        family: Family,
        states: StateMask,
        out: &mut Vec<DiagSocket>,
    ) -> Result<(), SockDiagError> {
        let socket_id = match family {
            Family::V4 => DiagSocketId::new_v4(),
            Family::V6 => DiagSocketId::new_v6(),
        };
        let seq = self.send(OP_DUMP, family, states, socket_id, true)?;
        while self.recv(OP_DUMP, family, seq, out)? == Walk::More {}
        Ok(())
    }

    /// The socket with exactly this 4-tuple, if it exists (TIME_WAIT sockets included, with
    /// inode 0). The kernel's lookup falls back to a listener on the local port when no
    /// connection matches; such an answer (and any answer of another family) is `None`.
    ///
    /// Link-local IPv6 sockets bound to an interface may need the interface index, which the
    /// trace does not carry; they are looked up with "any interface".
    pub fn lookup(&mut self, tuple: &FourTuple) -> Result<Option<DiagSocket>, SockDiagError> {
        let t = tuple.normalized();
        let socket_id = DiagSocketId {
            source_port: t.sport,
            destination_port: t.dport,
            source_address: t.saddr,
            destination_address: t.daddr,
            interface_id: 0,
            cookie: NO_COOKIE,
        };
        let seq = self.send(OP_LOOKUP, t.family, StateMask::ALL, socket_id, false)?;
        let mut out = Vec::with_capacity(1);
        loop {
            match self.recv(OP_LOOKUP, t.family, seq, &mut out) {
                Ok(Walk::Done) => break,
                Ok(Walk::More) => {}
                Err(e) if e.kernel_errno() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(out.into_iter().find(|s| s.tuple() == t))
    }

    /// Sends one request; returns its sequence number.
    fn send(
        &mut self,
        op: &'static str,
        family: Family,
        states: StateMask,
        socket_id: DiagSocketId,
        dump: bool,
    ) -> Result<u32, SockDiagError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        header.sequence_number = self.seq;
        let request = SockDiagMessage::InetRequest(InetRequest {
            family: match family {
                Family::V4 => AF_INET,
                Family::V6 => AF_INET6,
            },
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::from_bits_retain(states.bits()),
            socket_id,
        });
        let mut msg = NetlinkMessage::new(header, request.into());
        msg.finalize();
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut bytes);
        loop {
            match self.sock.send(&bytes, 0) {
                Ok(_) => return Ok(self.seq),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SockDiagError::io(op, family, e, true)),
            }
        }
    }

    /// Receives one datagram whole (growing the buffer if the kernel sent a bigger one) and
    /// walks it.
    fn recv(
        &mut self,
        op: &'static str,
        family: Family,
        seq: u32,
        out: &mut Vec<DiagSocket>,
    ) -> Result<Walk, SockDiagError> {
        let err = |e| SockDiagError::io(op, family, e, false);
        loop {
            // MSG_TRUNC makes the peek return the datagram's real size.
            self.buf.clear();
            let size = match self
                .sock
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err(e)),
            };
            if size > self.buf.capacity() {
                self.buf.reserve(size);
                continue;
            }
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        walk_datagram(&self.buf, seq, op, family, out, &mut self.skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART};
    use netlink_packet_sock_diag::inet::InetResponseHeader;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::num::NonZeroI32;

    #[test]
    fn state_mask_bits_follow_kernel_numbers() {
        assert_eq!(StateMask::only(TcpState::Established).bits(), 1 << 1);
        assert_eq!(StateMask::only(TcpState::CloseWait).bits(), 1 << 8);
        assert_eq!(StateMask::from(TcpState::Listen).bits(), 1 << 10);
        let m: StateMask = [TcpState::CloseWait, TcpState::LastAck]
            .into_iter()
            .collect();
        assert_eq!(m.bits(), (1 << 8) | (1 << 9));
        assert!(m.contains(TcpState::LastAck) && !m.contains(TcpState::Listen));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [TcpState::CloseWait, TcpState::LastAck]
        );
        assert_eq!(
            StateMask::EMPTY | TcpState::TimeWait,
            StateMask::only(TcpState::TimeWait)
        );
        assert_eq!(StateMask::ALL.iter().count(), 12);
        assert_eq!(StateMask::ALL, TcpState::ALL.into_iter().collect());
        // Same bits as the crate's flags for the states it names.
        assert_eq!(
            StateMask::only(TcpState::Closing).bits(),
            StateFlags::CLOSING.bits()
        );
        assert_eq!(
            StateFlags::from_bits_retain(StateMask::ALL.bits()).bits(),
            StateFlags::all().bits() | (1 << 12)
        );
    }

    #[test]
    fn tuple_normalization() {
        let v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        let t = FourTuple {
            family: Family::V6,
            saddr: v4,
            sport: 1,
            daddr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            dport: 2,
        };
        let n = t.normalized();
        assert_eq!(n.saddr, mapped);
        assert_eq!(n.daddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        let t = FourTuple {
            family: Family::V4,
            saddr: mapped,
            daddr: v4,
            ..t
        };
        assert_eq!(t.normalized().saddr, v4);
    }

    fn tcp_info(sent: u32, recv: u32, ack: u32) -> Vec<u8> {
        let mut b = vec![0u8; 232];
        b[TCPI_LAST_DATA_SENT..][..4].copy_from_slice(&sent.to_ne_bytes());
        b[48..52].copy_from_slice(&77u32.to_ne_bytes()); // last_ack_sent, ignored
        b[TCPI_LAST_DATA_RECV..][..4].copy_from_slice(&recv.to_ne_bytes());
        b[TCPI_LAST_ACK_RECV..][..4].copy_from_slice(&ack.to_ne_bytes());
        b
    }

    #[test]
    fn tcp_info_ages() {
        let a = TcpInfoAges::from_tcp_info(&tcp_info(1, 2, 3)).unwrap();
        assert_eq!(
            a,
            TcpInfoAges {
                last_data_sent_ms: 1,
                last_data_recv_ms: 2,
                last_ack_recv_ms: 3
            }
        );
        assert!(TcpInfoAges::from_tcp_info(&tcp_info(1, 2, 3)[..60]).is_some());
        assert!(TcpInfoAges::from_tcp_info(&tcp_info(1, 2, 3)[..59]).is_none());
        assert!(TcpInfoAges::from_tcp_info(&[]).is_none());
    }

    fn response(state: u8, port: u16, info: Option<Vec<u8>>) -> InetResponse {
        let mut socket_id = DiagSocketId::new_v6();
        socket_id.source_port = port;
        socket_id.destination_port = 4242;
        socket_id.source_address = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        socket_id.destination_address = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let mut cookie = [0u8; 8];
        cookie[..4].copy_from_slice(&0x0102_0304u32.to_ne_bytes());
        cookie[4..].copy_from_slice(&0x0a0b_0c0du32.to_ne_bytes());
        socket_id.cookie = cookie;
        let mut r = InetResponse {
            header: InetResponseHeader {
                family: AF_INET6,
                state,
                timer: None,
                socket_id,
                recv_queue: 5,
                send_queue: 6,
                uid: 1000,
                inode: 123_456,
            },
            nlas: Default::default(),
        };
        if let Some(i) = info {
            r.nlas.push(Nla::TcpInfo(i));
        }
        r
    }

    fn frame(seq: u32, payload: NetlinkPayload<SockDiagMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_MULTIPART;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, payload);
        msg.finalize();
        let mut b = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut b);
        b
    }

    fn inet(r: InetResponse) -> NetlinkPayload<SockDiagMessage> {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(Box::new(r)))
    }

    fn done(code: i32) -> NetlinkPayload<SockDiagMessage> {
        let mut d = DoneMessage::default();
        d.code = code;
        NetlinkPayload::Done(d)
    }

    fn walk(
        buf: &[u8],
        seq: u32,
        op: &'static str,
    ) -> (Result<Walk, SockDiagError>, Vec<DiagSocket>, u64) {
        let mut out = Vec::new();
        let mut skipped = 0;
        let r = walk_datagram(buf, seq, op, Family::V6, &mut out, &mut skipped);
        (r, out, skipped)
    }

    #[test]
    fn converts_a_response() {
        let r = response(8, 80, Some(tcp_info(10, 20, 30)));
        let s = DiagSocket::from_response(&r).unwrap();
        assert_eq!(s.family, Family::V6);
        assert_eq!(s.state, TcpState::CloseWait);
        assert_eq!(
            s.saddr,
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped())
        );
        assert_eq!((s.sport, s.dport), (80, 4242));
        assert_eq!((s.inode, s.uid), (123_456, 1000));
        assert_eq!(s.cookie, 0x0a0b_0c0d_0102_0304);
        assert_eq!((s.recv_queue, s.send_queue), (5, 6));
        assert_eq!(s.close_wait_since_estimate_ms(), Some(30));
        let est = DiagSocket::from_response(&response(1, 80, Some(tcp_info(1, 2, 3)))).unwrap();
        assert_eq!(est.close_wait_since_estimate_ms(), None);
        let tw = DiagSocket::from_response(&response(6, 80, None)).unwrap();
        assert_eq!((tw.state, tw.info), (TcpState::TimeWait, None));
        assert!(DiagSocket::from_response(&response(0, 80, None)).is_none());
        assert!(DiagSocket::from_response(&response(13, 80, None)).is_none());
    }

    #[test]
    fn walks_multipart_until_done() {
        let mut dgram = frame(7, inet(response(10, 1, None)));
        dgram.extend(frame(7, inet(response(1, 2, Some(tcp_info(0, 0, 0))))));
        let (r, out, skipped) = walk(&dgram, 7, OP_DUMP);
        assert_eq!(r.unwrap(), Walk::More);
        assert_eq!(out.iter().map(|s| s.sport).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(skipped, 0);

        let mut dgram = frame(7, inet(response(1, 3, None)));
        dgram.extend(frame(7, done(0)));
        let (r, out, _) = walk(&dgram, 7, OP_DUMP);
        assert_eq!(r.unwrap(), Walk::Done);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn skips_other_requests_and_unknown_states() {
        let mut dgram = frame(6, inet(response(1, 1, None)));
        dgram.extend(frame(6, done(0)));
        dgram.extend(frame(7, inet(response(13, 2, None))));
        dgram.extend(frame(7, inet(response(1, 3, None))));
        let (r, out, skipped) = walk(&dgram, 7, OP_DUMP);
        assert_eq!(r.unwrap(), Walk::More);
        assert_eq!(out.iter().map(|s| s.sport).collect::<Vec<_>>(), [3]);
        assert_eq!(skipped, 1);
        // Only stale messages: a lookup keeps waiting for its own answer.
        let (r, out, _) = walk(&frame(6, inet(response(1, 1, None))), 7, OP_LOOKUP);
        assert_eq!((r.unwrap(), out.len()), (Walk::More, 0));
        let (r, out, _) = walk(&frame(7, inet(response(1, 1, None))), 7, OP_LOOKUP);
        assert_eq!((r.unwrap(), out.len()), (Walk::Done, 1));
    }

    #[test]
    fn kernel_errors() {
        let mut e = ErrorMessage::default();
        e.code = NonZeroI32::new(-libc::ENOENT);
        let (r, _, _) = walk(&frame(1, NetlinkPayload::Error(e.clone())), 1, OP_LOOKUP);
        let err = r.unwrap_err();
        assert_eq!(err.kernel_errno(), Some(libc::ENOENT));
        e.code = NonZeroI32::new(-libc::EPERM);
        let (r, _, _) = walk(&frame(1, NetlinkPayload::Error(e)), 1, OP_DUMP);
        let err = r.unwrap_err();
        assert!(matches!(
            err,
            SockDiagError::PermissionDenied { op: "dump", .. }
        ));
        assert!(err.to_string().contains("root"), "{err}");
        let (r, _, _) = walk(&frame(1, done(-libc::EINVAL)), 1, OP_DUMP);
        assert_eq!(r.unwrap_err().kernel_errno(), Some(libc::EINVAL));
        let (r, _, _) = walk(&frame(1, NetlinkPayload::Overrun(vec![])), 1, OP_DUMP);
        assert!(matches!(r, Err(SockDiagError::Overrun { .. })));
    }

    #[test]
    fn truncated_datagram_is_malformed() {
        let mut dgram = frame(1, inet(response(1, 1, None)));
        let second = frame(1, inet(response(1, 2, None)));
        dgram.extend(&second[..second.len() - 10]);
        let (r, out, _) = walk(&dgram, 1, OP_DUMP);
        match r {
            Err(SockDiagError::Malformed { offset, len, .. }) => {
                assert_eq!(offset, second.len());
                assert_eq!(len, dgram.len());
            }
            other => panic!("expected malformed, got {other:?}"),
        }
        assert_eq!(out.len(), 1);
        let (r, _, _) = walk(&[1, 2, 3], 1, OP_DUMP);
        assert!(matches!(r, Err(SockDiagError::Malformed { .. })));
    }
}
