//! Typed, decoded transitions: what the rest of userspace works with.
//!
//! Consumes the raw `tracer_common::TcpEvent` bytes from the ring buffer ([`decode`]) and the
//! JSON Lines of a recording (`replay`), and produces [`Transition`]s. Everything here is `Copy`
//! and allocation-free so the per-event path stays cheap.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::{AF_INET, AF_INET6, TcpEvent};

/// TCP states with the kernel's numbering (include/net/tcp_states.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state with kernel number `n`, if there is one.
    pub fn from_kernel(n: u8) -> Option<Self> {
        Self::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// Index 0..12, for per-state arrays.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The kernel's name without the `TCP_` prefix, as used in the JSON output.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// Parses a name as printed by [`TcpState::name`] (an optional `TCP_` prefix is accepted).
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.strip_prefix("TCP_").unwrap_or(s);
        Self::ALL.into_iter().find(|st| st.name() == s)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A process name (`comm`): up to 15 bytes, NUL-padded, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    /// Builds a comm from text, truncated to 15 bytes (as the kernel does), and at a NUL: the
    /// kernel's comm is a C string, and what is kept must be what [`Comm::as_str`] shows (a
    /// replayed `"a\u0000b"` was kept whole and shown as `a`; found by the replay_line fuzzer).
    pub fn new(s: &str) -> Self {
        let s = s.split('\0').next().unwrap_or_default();
        let mut b = [0u8; 16];
        let mut n = s.len().min(15);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(b)
    }

    /// The name as text; invalid UTF-8 is replaced.
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.0[..end])
    }

    /// The raw bytes, up to the first NUL.
    pub fn bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(16);
        &self.0[..end]
    }

    /// The exact name, for JSON (invalid UTF-8 as U+FFFD, nothing escaped): not for a
    /// terminal, which gets [`Comm`]'s `Display`.
    pub fn exact(&self) -> ExactComm<'_> {
        ExactComm(self.bytes())
    }
}

/// [`Comm::exact`].
pub struct ExactComm<'a>(&'a [u8]);

impl fmt::Display for ExactComm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// What a process calls itself is hostile text: a human sees it escaped
/// ([`crate::untrusted::Escaped`]), padded as asked.
impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&crate::untrusted::Escaped::new(self.bytes(), 16), f)
    }
}

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// 4 or 6, as in the JSON output.
    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

/// One TCP state transition of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Kernel monotonic time (ns).
    pub ts_ns: u64,
    /// Kernel socket address: the socket's identity while it lives.
    pub sk: u64,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old: TcpState,
    pub new: TcpState,
    /// Time spent in `old`, when the source measured it: never from the kernel (the engine
    /// computes it from event times, see `Engine::last_dwell_ns`); a replayed line carries the
    /// value the live run printed.
    pub dwell_ns: Option<u64>,
    /// Inode number of the socket's network namespace (`net:[N]`); 0 when unknown (classic
    /// tracepoint without kernel BTF, or a recording made before namespaces were reported).
    pub netns: u32,
    /// The socket's pending error (errno) when the transition ran; 0 when none or unknown.
    pub sk_err: u16,
    /// Task on CPU when the transition ran (thread-group id). Often NOT the socket's owner.
    pub task_pid: u32,
    /// Thread id of the task on CPU.
    pub task_tid: u32,
    /// `comm` of the task on CPU.
    pub task_comm: Comm,
    /// At a transition to CLOSE: how long the socket had been quiet (see [`Idle`]).
    pub idle: Idle,
}

/// How long before a transition to CLOSE the socket last heard from its peer and last sent
/// data, from the kernel's stamps (`tcp_sock.rcv_tstamp`, `lsndtime`: jiffies, so to a tick:
/// 4 ms at 250 Hz). `None` where not known: other transitions, kernels without the offsets, a
/// tick rate not learnt yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Idle {
    /// Since the last segment received that carried an ACK (a RST does not count).
    pub rx_ns: Option<u64>,
    /// Since the last data segment sent.
    pub tx_ns: Option<u64>,
}

impl Idle {
    pub const NONE: Idle = Idle {
        rx_ns: None,
        tx_ns: None,
    };
}

/// The raw idle stamps of a kernel event: `(jiffies, rcv_tstamp, lsndtime)`; `jiffies == 0`
/// when the program read none.
pub fn idle_stamps(ev: &TcpEvent) -> (u64, u32, u32) {
    (ev.jiffies, ev.rcv_tstamp, ev.lsndtime)
}

/// What goes down the path in time order: a transition, or a reset this host sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Transition(Transition),
    Reset(crate::rst::ResetSent),
}

impl Event {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Transition(t) => t.ts_ns,
            Event::Reset(r) => r.ts_ns,
        }
    }

    /// The socket's kernel address (0 for a reset without a socket).
    pub fn sk(&self) -> u64 {
        match self {
            Event::Transition(t) => t.sk,
            Event::Reset(r) => r.sk,
        }
    }
}

/// What a ring record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingRecord {
    Transition(TcpEvent),
    Reset(tracer_common::ResetEvent),
}

/// Tells the two kinds of ring record apart by size, and copies one out.
pub fn classify(bytes: &[u8]) -> Result<RingRecord, DecodeError> {
    use tracer_common::ResetEvent;
    if bytes.len() == size_of::<ResetEvent>() {
        // SAFETY: length checked; `ResetEvent` is plain old data; unaligned read.
        let ev: ResetEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        return Ok(RingRecord::Reset(ev));
    }
    let expected = size_of::<TcpEvent>();
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: length checked above; `TcpEvent` is plain old data (every bit pattern valid) and
    // `read_unaligned` has no alignment requirement.
    let ev: TcpEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Ok(RingRecord::Transition(ev))
}

impl Transition {
    /// The socket's pending error, when the kernel program could read it. The program reads
    /// `sk_err` and the namespace from the same socket with the same offsets, and reports
    /// namespace 0 exactly when it could not: a known namespace means a known `sk_err`.
    pub fn sk_err_known(&self) -> Option<u16> {
        (self.netns != 0).then_some(self.sk_err)
    }
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than a `TcpEvent`.
    #[error("short event: {len} bytes, expected {expected}")]
    Short { len: usize, expected: usize },
    /// The family is neither AF_INET nor AF_INET6.
    #[error("unknown address family {0}")]
    Family(u16),
    /// A state number outside 1..=12.
    #[error("unknown TCP state {0}")]
    State(u8),
    /// The record is a reset sent, not a transition ([`classify`] tells them apart).
    #[error("a reset record, not a transition")]
    Reset,
}

/// Decodes one ring-buffer record. The bytes are copied out with an unaligned read, never
/// referenced in place.
pub fn decode(bytes: &[u8]) -> Result<Transition, DecodeError> {
    match classify(bytes)? {
        RingRecord::Transition(ev) => from_raw(&ev),
        RingRecord::Reset(_) => Err(DecodeError::Reset),
    }
}

/// Converts a raw kernel event into a [`Transition`].
pub fn from_raw(ev: &TcpEvent) -> Result<Transition, DecodeError> {
    let (family, saddr, daddr) = match ev.family {
        AF_INET => (Family::V4, v4(&ev.saddr), v4(&ev.daddr)),
        AF_INET6 => (
            Family::V6,
            IpAddr::V6(Ipv6Addr::from(ev.saddr)),
            IpAddr::V6(Ipv6Addr::from(ev.daddr)),
        ),
        other => return Err(DecodeError::Family(other)),
    };
    let state = |n| TcpState::from_kernel(n).ok_or(DecodeError::State(n));
    Ok(Transition {
        ts_ns: ev.ts_ns,
        sk: ev.skaddr,
        family,
        saddr,
        sport: ev.sport,
        daddr,
        dport: ev.dport,
        old: state(ev.oldstate)?,
        new: state(ev.newstate)?,
        dwell_ns: None,
        netns: ev.netns,
        sk_err: ev.sk_err,
        task_pid: ev.tgid,
        task_tid: ev.tid,
        task_comm: Comm(ev.comm),
        idle: Idle::NONE,
    })
}

fn v4(b: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// Formats an address the way the JSON output does: v4-mapped IPv6 as `::ffff:a.b.c.d`.
pub struct AddrFmt(pub IpAddr);

impl fmt::Display for AddrFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // By hand (it is in every line), padded as `Ipv4Addr`'s Display pads.
            IpAddr::V4(a) => {
                let mut buf = [0u8; 15];
                let mut n = 0;
                for (i, o) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    if o >= 100 {
                        buf[n] = b'0' + o / 100;
                        n += 1;
                    }
                    if o >= 10 {
                        buf[n] = b'0' + o / 10 % 10;
                        n += 1;
                    }
                    buf[n] = b'0' + o % 10;
                    n += 1;
                }
                f.pad(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
            }
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => write!(f, "::ffff:{v4}"),
                None => write!(f, "{a}"),
            },
        }
    }
}

/// Formats `addr:port`, with brackets around IPv6 addresses.
pub struct EndpointFmt(pub IpAddr, pub u16);

impl fmt::Display for EndpointFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(_) => write!(f, "{}:{}", AddrFmt(self.0), self.1),
            IpAddr::V6(_) => write!(f, "[{}]:{}", AddrFmt(self.0), self.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_by_hand_is_what_ipv4addr_displays() {
        for a in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 99, 100, 255],
            [1, 22, 133, 9],
        ] {
            let v4 = std::net::Ipv4Addr::from(a);
            let ours = AddrFmt(IpAddr::V4(v4));
            assert_eq!(ours.to_string(), v4.to_string());
            assert_eq!(format!("{ours:<17}|"), format!("{v4:<17}|"));
            assert_eq!(format!("{ours:>17}|"), format!("{v4:>17}|"));
        }
    }

    fn raw() -> TcpEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        TcpEvent {
            ts_ns: 1_000,
            skaddr: 0xffff_8880_1234_5678,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            tgid: 7,
            tid: 8,
            sport: 40000,
            dport: 80,
            family: AF_INET,
            oldstate: 1,
            newstate: 8,
            comm,
            sk_err: 0,
            _pad: 0,
            netns: 4026531840,
            jiffies: 0,
            rcv_tstamp: 0,
            lsndtime: 0,
        }
    }

    fn bytes(ev: &TcpEvent) -> Vec<u8> {
        // SAFETY: TcpEvent is POD without padding.
        unsafe {
            std::slice::from_raw_parts((ev as *const TcpEvent).cast::<u8>(), size_of::<TcpEvent>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_v4() {
        let t = decode(&bytes(&raw())).unwrap();
        assert_eq!(t.family, Family::V4);
        assert_eq!(t.saddr.to_string(), "127.0.0.1");
        assert_eq!(t.daddr.to_string(), "10.1.2.3");
        assert_eq!((t.sport, t.dport), (40000, 80));
        assert_eq!((t.old, t.new), (TcpState::Established, TcpState::CloseWait));
        assert_eq!(t.dwell_ns, None, "the kernel measures no dwell");
        assert_eq!(t.netns, 4026531840);
        assert_eq!(t.task_comm.as_str(), "curl");
        assert_eq!((t.task_pid, t.task_tid), (7, 8));
    }

    #[test]
    fn decodes_v6_and_mapped() {
        let mut ev = raw();
        ev.family = AF_INET6;
        ev.saddr = Ipv6Addr::LOCALHOST.octets();
        ev.daddr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        let t = decode(&bytes(&ev)).unwrap();
        assert_eq!(AddrFmt(t.saddr).to_string(), "::1");
        assert_eq!(AddrFmt(t.daddr).to_string(), "::ffff:127.0.0.1");
        assert_eq!(EndpointFmt(t.saddr, 5).to_string(), "[::1]:5");
        assert_eq!(t.dwell_ns, None);
    }

    #[test]
    fn rejects_short_and_bad_fields() {
        let b = bytes(&raw());
        for len in [0, 1, 103] {
            assert_eq!(
                decode(&b[..len]),
                Err(DecodeError::Short { len, expected: 104 })
            );
        }
        let mut ev = raw();
        ev.family = 1;
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::Family(1)));
        let mut ev = raw();
        ev.newstate = 13;
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::State(13)));
        ev.newstate = 0;
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::State(0)));
    }

    #[test]
    fn every_state_round_trips() {
        for (i, st) in TcpState::ALL.into_iter().enumerate() {
            assert_eq!(st.index(), i);
            assert_eq!(TcpState::from_kernel(st as u8), Some(st));
            assert_eq!(TcpState::from_name(st.name()), Some(st));
            assert_eq!(TcpState::from_name(&format!("TCP_{}", st.name())), Some(st));
            let mut ev = raw();
            ev.oldstate = st as u8;
            ev.newstate = st as u8;
            let t = decode(&bytes(&ev)).unwrap();
            assert_eq!((t.old, t.new), (st, st));
        }
        assert_eq!(TcpState::from_name("BOGUS"), None);
    }

    #[test]
    fn comm_truncates_on_char_boundary() {
        assert_eq!(
            Comm::new("a-very-long-process-name").as_str(),
            "a-very-long-pro"
        );
        assert_eq!(Comm::new("ééééééééé").as_str(), "ééééééé");
    }

    /// Regression (fuzzing, replay_line): a comm with a NUL kept the bytes after it, so a
    /// replayed transition differed from the one it printed.
    #[test]
    fn comm_ends_at_a_nul() {
        assert_eq!(Comm::new("a\0b"), Comm::new("a"));
        assert_eq!(Comm::new("a\0b").as_str(), "a");
        assert_eq!(Comm::new("\0x"), Comm::default());
    }
}
