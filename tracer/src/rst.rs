//! Resets this host sent, from the tracepoint `tcp:tcp_send_reset`. Pure: a format file and a
//! BTF enum in, a [`RecordLayout`] and [`ReasonNames`] out; raw records in, [`ResetSent`]s out.
//!
//! The kernel program copies the record as it is ([`tracer_common::ResetEvent`]), because its
//! layout is not the same on every kernel:
//! - before 6.10 the class `tcp_event_sk_skb`: `skaddr`, `state`, `sport`, `dport`, (`family`),
//!   `saddr[4]`, `daddr[4]`, `saddr_v6[16]`, `daddr_v6[16]`, taken from the socket (called only
//!   with one);
//! - since 6.10 its own event: `skaddr`, `state`, `reason` (`enum sk_rst_reason`), and
//!   `saddr`/`daddr` as `struct sockaddr_in`/`sockaddr_in6` (28 bytes each), from the socket
//!   when it is a full one, else from the packet being answered (a timewait socket, no
//!   socket), with the packet's 4-tuple turned around so that `daddr` is always the remote.
//!
//! The reason's numbers are not ABI: the names come from the running kernel's BTF.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::{AF_INET, AF_INET6, RESET_RAW_BYTES, ResetEvent};

use crate::event::{Family, TcpState};

/// Where the fields of the running kernel's `tcp_send_reset` record are, as offsets into
/// [`ResetEvent::raw`] (the record after its 8-byte common header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLayout {
    /// Bytes of the record after the common header.
    pub len: usize,
    /// Offset of `skaddr` in the whole record (what the kernel program reads it at).
    pub skaddr_in_record: usize,
    skaddr: usize,
    state: Option<usize>,
    reason: Option<usize>,
    addrs: Addrs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addrs {
    /// `saddr`/`daddr` hold a `struct sockaddr_in` or `sockaddr_in6` (6.10+).
    SockAddr { saddr: usize, daddr: usize },
    /// Separate ports and addresses (before 6.10); `family` is absent on some kernels.
    Split {
        sport: usize,
        dport: usize,
        family: Option<usize>,
        saddr: usize,
        daddr: usize,
        saddr_v6: usize,
        daddr_v6: usize,
    },
}

/// One `field:` line of a format file.
struct FormatField<'a> {
    name: &'a str,
    offset: usize,
    size: usize,
}

fn fields(text: &str) -> impl Iterator<Item = FormatField<'_>> {
    text.lines().filter_map(|l| {
        let l = l.trim_start().strip_prefix("field:")?;
        let mut parts = l.split(';');
        let decl = parts.next()?.trim_end();
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        let mut offset = None;
        let mut size = None;
        for p in parts {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.trim().parse().ok();
            }
        }
        Some(FormatField {
            name,
            offset: offset?,
            size: size?,
        })
    })
}

/// Why a format file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("field {0} not found or of an unexpected size")]
    Field(&'static str),
    #[error("the record is {0} bytes after its header; the program copies at most {max}", max = RESET_RAW_BYTES)]
    TooLong(usize),
}

impl RecordLayout {
    /// Parses the tracepoint's format file (`events/tcp/tcp_send_reset/format`).
    pub fn from_format(text: &str) -> Result<Self, LayoutError> {
        let all: Vec<FormatField<'_>> = fields(text).collect();
        let find = |name: &'static str, sizes: &[usize]| -> Result<usize, LayoutError> {
            all.iter()
                .find(|f| f.name == name && sizes.contains(&f.size) && f.offset >= 8)
                .map(|f| f.offset)
                .ok_or(LayoutError::Field(name))
        };
        let opt = |name: &'static str, size: usize| find(name, &[size]).ok();
        let skaddr = find("skaddr", &[8])?;
        let saddr_any = all.iter().find(|f| f.name == "saddr").map(|f| f.size);
        let addrs = if saddr_any == Some(28) {
            Addrs::SockAddr {
                saddr: find("saddr", &[28])? - 8,
                daddr: find("daddr", &[28])? - 8,
            }
        } else {
            Addrs::Split {
                sport: find("sport", &[2])? - 8,
                dport: find("dport", &[2])? - 8,
                family: opt("family", 2).map(|o| o - 8),
                saddr: find("saddr", &[4])? - 8,
                daddr: find("daddr", &[4])? - 8,
                saddr_v6: find("saddr_v6", &[16])? - 8,
                daddr_v6: find("daddr_v6", &[16])? - 8,
            }
        };
        let end = all
            .iter()
            .filter(|f| f.offset >= 8)
            .map(|f| f.offset + f.size)
            .max()
            .unwrap_or(8);
        let len = end - 8;
        if len > RESET_RAW_BYTES {
            return Err(LayoutError::TooLong(len));
        }
        Ok(RecordLayout {
            len,
            skaddr_in_record: skaddr,
            skaddr: skaddr - 8,
            state: opt("state", 4).map(|o| o - 8),
            reason: opt("reason", 4).map(|o| o - 8),
            addrs,
        })
    }

    /// Whether this kernel says why it sends each reset (6.10+).
    pub fn has_reason(&self) -> bool {
        self.reason.is_some()
    }
}

/// What userspace needs to decode the resets the kernel program copies: the record layout of
/// this kernel's `tcp:tcp_send_reset` and the names of `enum sk_rst_reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetDecoder {
    pub layout: RecordLayout,
    pub names: ReasonNames,
}

/// The kernel's names of `enum sk_rst_reason`, by value, without the `SK_RST_REASON_` prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasonNames {
    names: Vec<Option<&'static str>>,
}

/// Most reason values kept (6.18 has 26).
const MAX_REASONS: usize = 256;

impl ReasonNames {
    /// From `(name, value)` pairs of the enum (as BTF lists them). The names are kept for the
    /// life of the process (one small enum, read once): records carry `&'static str`.
    pub fn new<'a>(enumerators: impl IntoIterator<Item = (&'a str, i64)>) -> Self {
        let mut names: Vec<Option<&'static str>> = Vec::new();
        for (name, value) in enumerators {
            let Ok(v) = usize::try_from(value) else {
                continue;
            };
            if v >= MAX_REASONS {
                continue;
            }
            let short = name.strip_prefix("SK_RST_REASON_").unwrap_or(name);
            if names.len() <= v {
                names.resize(v + 1, None);
            }
            names[v] = Some(intern(short));
        }
        ReasonNames { names }
    }

    pub fn is_empty(&self) -> bool {
        self.names.iter().all(Option::is_none)
    }

    /// The name of value `v`; `None` for a value the enum does not have.
    pub fn name(&self, v: u32) -> Option<&'static str> {
        self.names.get(v as usize).copied().flatten()
    }
}

/// Names of reasons kept for the process's life, shared by every decoder and replay.
fn intern(s: &str) -> &'static str {
    use std::sync::Mutex;
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(n) = names.iter().find(|n| **n == s) {
        return n;
    }
    if names.len() >= MAX_REASONS {
        return "OTHER";
    }
    let kept: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.push(kept);
    kept
}

/// Why the kernel sent a reset: the enumerator's name (`TCP_ABORT_ON_CLOSE`, `NO_SOCKET`, …),
/// or [`RstReason::UNKNOWN`] where the kernel does not say (before 6.10) or said a value its
/// BTF does not name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RstReason(&'static str);

impl RstReason {
    pub const UNKNOWN: RstReason = RstReason("unknown");

    pub fn name(self) -> &'static str {
        self.0
    }

    /// A name read back (a replayed record), kept like the kernel's (bounded; empty or
    /// unprintable names are refused).
    pub fn from_name(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        Some(if s == Self::UNKNOWN.0 {
            Self::UNKNOWN
        } else {
            RstReason(intern(s))
        })
    }
}

impl fmt::Display for RstReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.0)
    }
}

/// A reset this host sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetSent {
    pub ts_ns: u64,
    /// The sending socket's kernel address (full or timewait); 0 without one.
    pub sk: u64,
    /// Its network namespace; 0 when unknown (no socket).
    pub netns: u32,
    /// The sending socket's state; `None` without a socket (or a state the record lacks).
    pub state: Option<TcpState>,
    pub reason: RstReason,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    /// Where the RST went: the remote end.
    pub daddr: IpAddr,
    pub dport: u16,
}

/// Why a reset record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResetDecodeError {
    #[error("reset record of {0} bytes, expected {1}")]
    Short(usize, usize),
    #[error("reset record with address family {0}")]
    Family(u16),
}

fn u16_ne(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_ne(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_ne(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(w)
}

fn v6(b: &[u8], off: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Ipv6Addr::from(a)
}

/// Decodes one reset record with the running kernel's layout and reason names.
pub fn decode(
    layout: &RecordLayout,
    names: &ReasonNames,
    ev: &ResetEvent,
) -> Result<ResetSent, ResetDecodeError> {
    let len = ev.raw_len as usize;
    if len < layout.len {
        return Err(ResetDecodeError::Short(len, layout.len));
    }
    let b = &ev.raw[..];
    let (family, saddr, sport, daddr, dport) = match layout.addrs {
        Addrs::SockAddr { saddr, daddr } => {
            let fam = u16_ne(b, saddr);
            // sockaddr_in: family, port (big-endian), address; sockaddr_in6: family, port,
            // flowinfo, address.
            let port = |o: usize| u16::from_be_bytes([b[o + 2], b[o + 3]]);
            match fam {
                AF_INET => {
                    let a = |o: usize| {
                        IpAddr::V4(Ipv4Addr::new(b[o + 4], b[o + 5], b[o + 6], b[o + 7]))
                    };
                    (Family::V4, a(saddr), port(saddr), a(daddr), port(daddr))
                }
                AF_INET6 => (
                    Family::V6,
                    IpAddr::V6(v6(b, saddr + 8)),
                    port(saddr),
                    IpAddr::V6(v6(b, daddr + 8)),
                    port(daddr),
                ),
                other => return Err(ResetDecodeError::Family(other)),
            }
        }
        Addrs::Split {
            sport,
            dport,
            family,
            saddr,
            daddr,
            saddr_v6,
            daddr_v6,
        } => {
            let (s6, d6) = (v6(b, saddr_v6), v6(b, daddr_v6));
            // Without a family field: the kernel stores an IPv4 socket's addresses v4-mapped
            // in the v6 fields too.
            let fam = match family {
                Some(o) => u16_ne(b, o),
                None if s6.to_ipv4_mapped().is_some() || s6.is_unspecified() => AF_INET,
                None => AF_INET6,
            };
            let v4 = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
            let (fam, s, d) = match fam {
                AF_INET => (Family::V4, v4(saddr), v4(daddr)),
                AF_INET6 => (Family::V6, IpAddr::V6(s6), IpAddr::V6(d6)),
                other => return Err(ResetDecodeError::Family(other)),
            };
            // The ports were stored in host order (ntohs).
            (fam, s, u16_ne(b, sport), d, u16_ne(b, dport))
        }
    };
    let state = layout
        .state
        .and_then(|o| u8::try_from(u32_ne(b, o)).ok())
        .and_then(TcpState::from_kernel);
    let reason = match layout.reason {
        Some(o) => names
            .name(u32_ne(b, o))
            .map_or(RstReason::UNKNOWN, RstReason),
        None => RstReason::UNKNOWN,
    };
    Ok(ResetSent {
        ts_ns: ev.ts_ns,
        sk: u64_ne(b, layout.skaddr),
        netns: ev.netns,
        state,
        reason,
        family,
        saddr,
        sport,
        daddr,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host's 6.18 format file (`/sys/kernel/tracing/events/tcp/tcp_send_reset/format`).
    const FORMAT_6_18: &str = "name: tcp_send_reset
ID: 2280
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;
";

    /// The class `tcp_event_sk_skb` of the older kernels (fields as in include/trace/events/tcp.h).
    const FORMAT_SPLIT: &str = "format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    fn names() -> ReasonNames {
        ReasonNames::new([
            ("SK_RST_REASON_NOT_SPECIFIED", 0),
            ("SK_RST_REASON_NO_SOCKET", 1),
            ("SK_RST_REASON_TCP_ABORT_ON_CLOSE", 11),
            ("SK_RST_REASON_TCP_STATE", 14),
        ])
    }

    fn event(fill: impl FnOnce(&mut [u8])) -> ResetEvent {
        let mut ev = ResetEvent {
            ts_ns: 5,
            netns: 7,
            raw_len: 80,
            raw: [0; RESET_RAW_BYTES],
        };
        fill(&mut ev.raw);
        ev
    }

    #[test]
    fn parses_and_decodes_the_6_18_layout() {
        let l = RecordLayout::from_format(FORMAT_6_18).unwrap();
        assert_eq!(l.len, 80);
        assert_eq!(l.skaddr_in_record, 16);
        assert!(l.has_reason());
        let ev = event(|b| {
            b[8..16].copy_from_slice(&0xffff_8888u64.to_ne_bytes());
            b[16..20].copy_from_slice(&1i32.to_ne_bytes());
            b[20..24].copy_from_slice(&11u32.to_ne_bytes());
            b[24..26].copy_from_slice(&AF_INET.to_ne_bytes());
            b[26..28].copy_from_slice(&8080u16.to_be_bytes());
            b[28..32].copy_from_slice(&[127, 0, 0, 1]);
            b[52..54].copy_from_slice(&AF_INET.to_ne_bytes());
            b[54..56].copy_from_slice(&40000u16.to_be_bytes());
            b[56..60].copy_from_slice(&[10, 0, 0, 2]);
        });
        let r = decode(&l, &names(), &ev).unwrap();
        assert_eq!(r.sk, 0xffff_8888);
        assert_eq!(r.state, Some(TcpState::Established));
        assert_eq!(r.reason.name(), "TCP_ABORT_ON_CLOSE");
        assert_eq!((r.saddr.to_string(), r.sport), ("127.0.0.1".into(), 8080));
        assert_eq!((r.daddr.to_string(), r.dport), ("10.0.0.2".into(), 40000));
        assert_eq!(r.netns, 7);
    }

    #[test]
    fn no_socket_and_unnamed_values() {
        let l = RecordLayout::from_format(FORMAT_6_18).unwrap();
        let ev = event(|b| {
            b[20..24].copy_from_slice(&99u32.to_ne_bytes());
            b[24..26].copy_from_slice(&AF_INET6.to_ne_bytes());
            b[52..54].copy_from_slice(&AF_INET6.to_ne_bytes());
            b[75] = 1; // daddr's sin6_addr = ::1
        });
        let r = decode(&l, &names(), &ev).unwrap();
        assert_eq!((r.sk, r.state), (0, None));
        assert_eq!(r.reason, RstReason::UNKNOWN);
        assert_eq!(r.daddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn the_split_layout_has_no_reason() {
        let l = RecordLayout::from_format(FORMAT_SPLIT).unwrap();
        assert_eq!(l.len, 64);
        assert!(!l.has_reason());
        let ev = event(|b| {
            b[20..22].copy_from_slice(&443u16.to_ne_bytes());
            b[22..24].copy_from_slice(&5555u16.to_ne_bytes());
            b[24..28].copy_from_slice(&[192, 168, 1, 1]);
            b[28..32].copy_from_slice(&[192, 168, 1, 2]);
            b[32..48].copy_from_slice(&Ipv4Addr::new(192, 168, 1, 1).to_ipv6_mapped().octets());
        });
        let r = decode(&l, &names(), &ev).unwrap();
        assert_eq!(r.family, Family::V4);
        assert_eq!((r.sport, r.dport), (443, 5555));
        assert_eq!(r.daddr.to_string(), "192.168.1.2");
        assert_eq!(r.reason, RstReason::UNKNOWN);
    }

    #[test]
    fn bad_formats_and_records_are_errors() {
        assert_eq!(
            RecordLayout::from_format("format:\n"),
            Err(LayoutError::Field("skaddr"))
        );
        let l = RecordLayout::from_format(FORMAT_6_18).unwrap();
        let mut ev = event(|_| {});
        assert_eq!(decode(&l, &names(), &ev), Err(ResetDecodeError::Family(0)));
        ev.raw_len = 10;
        assert_eq!(
            decode(&l, &names(), &ev),
            Err(ResetDecodeError::Short(10, 80))
        );
    }

    #[test]
    fn replayed_names_are_bounded_and_printable() {
        assert_eq!(
            RstReason::from_name("NO_SOCKET").unwrap().name(),
            "NO_SOCKET"
        );
        assert_eq!(RstReason::from_name("unknown"), Some(RstReason::UNKNOWN));
        assert_eq!(RstReason::from_name("a b"), None);
        assert_eq!(RstReason::from_name("\u{1b}[31m"), None);
        assert_eq!(RstReason::from_name(""), None);
    }
}
