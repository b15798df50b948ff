//! The JSON Lines sink (schema in docs/output.md): each line is a typed record that borrows
//! from the engine's records, serialised by serde_json straight into one reused buffer. No
//! allocation per line: text fields that are not stored as text (addresses, `sk`, `comm`) go
//! through `collect_str`, which formats into the buffer.

use std::fmt::Display;
use std::io::{self, Write};

use serde::{Serialize, Serializer};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

use super::{Batched, FormatSink, Meta, Show, dwell_pairs};
use crate::engine::Summary;
use crate::event::{AddrFmt, Comm, EndpointFmt, TcpState, Transition};
use crate::pipeline::{RecordContext, Sink};
use crate::record::{CloseRecord, Dwell, LeakRecord, Owner, SocketId, StatePath};
use crate::rst::ResetSent;
use crate::untrusted::Cmdline;

/// Writes JSON Lines: a `meta` line, then `transition`, `close` and `close_wait_leak` lines as
/// `--show` asks, then the `summary`.
pub struct JsonSink<W: Write> {
    lines: Batched<W, Vec<u8>>,
    show: Show,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W, show: Show) -> Self {
        Self {
            lines: Batched::new(out, Vec::with_capacity(64 * 1024)),
            show,
        }
    }

    /// Gives back the writer (tests).
    pub fn into_inner(self) -> W {
        self.lines.into_inner()
    }

    /// Serialises one line into the buffer; a line that fails to serialise leaves nothing.
    fn line<T: Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        let buf = &mut self.lines.buf;
        let start = buf.len();
        let mut ser = serde_json::Serializer::with_formatter(&mut *buf, LineFormatter);
        if let Err(e) = value.serialize(&mut ser) {
            buf.truncate(start);
            return Err(io::Error::other(e));
        }
        buf.push(b'\n');
        self.lines.end_line()
    }
}

impl<W: Write> FormatSink for JsonSink<W> {
    fn show(&self) -> Show {
        self.show
    }

    /// The run's settings, written whatever `--show` says (the first line of a recording).
    fn meta(&mut self, meta: &Meta) -> io::Result<()> {
        self.line(&MetaLine {
            line_type: "meta",
            meta,
        })
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(summary)
    }

    fn raw_line(&mut self, line: &str) -> io::Result<()> {
        let buf = &mut self.lines.buf;
        buf.extend_from_slice(line.as_bytes());
        if !line.ends_with('\n') {
            buf.push(b'\n');
        }
        self.lines.end_line()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lines.flush()
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        if !self.show.transitions {
            return Ok(());
        }
        self.line(&TransitionLine::new(t, owner))
    }

    fn close(&mut self, r: &CloseRecord, cx: &RecordContext) -> io::Result<()> {
        if !self.show.closes {
            return Ok(());
        }
        self.line(&CloseLine::new(r, cx))
    }

    fn leak(&mut self, r: &LeakRecord, cx: &RecordContext) -> io::Result<()> {
        if !self.show.leaks {
            return Ok(());
        }
        self.line(&LeakLine::new(r, cx))
    }

    /// Resets are events like transitions: shown (and recorded, for replay) with them.
    fn reset(&mut self, r: &ResetSent) -> io::Result<()> {
        if !self.show.transitions {
            return Ok(());
        }
        self.line(&ResetLine::new(r))
    }
}

/// `{"type":"reset_sent",…}`: a RST this host sent.
#[derive(Serialize)]
struct ResetLine {
    #[serde(rename = "type")]
    line_type: &'static str,
    ts_ns: u64,
    #[serde(serialize_with = "hex")]
    sk: u64,
    netns: u32,
    family: u8,
    #[serde(serialize_with = "display")]
    saddr: AddrFmt,
    sport: u16,
    #[serde(serialize_with = "display")]
    daddr: AddrFmt,
    dport: u16,
    /// The sending socket's state; null without a socket.
    state: Option<&'static str>,
    reason: &'static str,
}

impl ResetLine {
    fn new(r: &ResetSent) -> Self {
        Self {
            line_type: "reset_sent",
            ts_ns: r.ts_ns,
            sk: r.sk,
            netns: r.netns,
            family: r.family.number(),
            saddr: AddrFmt(r.saddr),
            sport: r.sport,
            daddr: AddrFmt(r.daddr),
            dport: r.dport,
            state: r.state.map(TcpState::name),
            reason: r.reason.name(),
        }
    }
}

/// `{"type":"meta",…}`: the run's settings after the type.
#[derive(Serialize)]
struct MetaLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    #[serde(flatten)]
    meta: &'a Meta,
}

/// `{"type":"transition",…}`.
#[derive(Serialize)]
struct TransitionLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    ts_ns: u64,
    #[serde(serialize_with = "hex")]
    sk: u64,
    family: u8,
    #[serde(serialize_with = "display")]
    saddr: AddrFmt,
    sport: u16,
    #[serde(serialize_with = "display")]
    daddr: AddrFmt,
    dport: u16,
    old: &'static str,
    new: &'static str,
    dwell_ns: Option<u64>,
    netns: u32,
    sk_err: u16,
    /// Only on transitions to CLOSE whose idle stamps were read (replay reads them back).
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_rx_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_tx_ns: Option<u64>,
    task_pid: u32,
    task_tid: u32,
    #[serde(serialize_with = "exact_comm")]
    task_comm: &'a Comm,
    #[serde(flatten)]
    owner: OwnerFields<'a>,
}

impl<'a> TransitionLine<'a> {
    fn new(t: &'a Transition, owner: Option<&'a Owner>) -> Self {
        Self {
            line_type: "transition",
            ts_ns: t.ts_ns,
            sk: t.sk,
            family: t.family.number(),
            saddr: AddrFmt(t.saddr),
            sport: t.sport,
            daddr: AddrFmt(t.daddr),
            dport: t.dport,
            old: t.old.name(),
            new: t.new.name(),
            dwell_ns: t.dwell_ns,
            netns: t.netns,
            sk_err: t.sk_err,
            idle_rx_ns: t.idle.rx_ns,
            idle_tx_ns: t.idle.tx_ns,
            task_pid: t.task_pid,
            task_tid: t.task_tid,
            task_comm: &t.task_comm,
            owner: OwnerFields::new(owner),
        }
    }
}

/// `{"type":"close",…}`.
#[derive(Serialize)]
struct CloseLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    #[serde(flatten)]
    id: IdFields,
    role: &'static str,
    kind: &'static str,
    states: States<'a>,
    dwell_ns: DwellMap<'a>,
    lifetime_ns: Option<u64>,
    time_wait: bool,
    reset_by: Option<&'static str>,
    /// Why the kernel sent the RST this host ended the connection with (6.10+).
    rst_reason: Option<&'static str>,
    sk_err: Option<u16>,
    /// Since the last segment received, at the close; and since the last data sent.
    idle_before_close_ns: Option<u64>,
    last_send_before_close_ns: Option<u64>,
    leaked: bool,
    /// Only when true: the close was never seen (docs/output.md).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    closed_unseen: bool,
    #[serde(flatten)]
    owner: OwnerFields<'a>,
    #[serde(flatten)]
    container: ContainerFields<'a>,
}

impl<'a> CloseLine<'a> {
    fn new(r: &'a CloseRecord, cx: &'a RecordContext) -> Self {
        Self {
            line_type: "close",
            id: IdFields::new(r.ts_ns, &r.id),
            role: r.role.name(),
            kind: r.kind.name(),
            states: States(&r.states),
            dwell_ns: DwellMap(&r.dwell_ns),
            lifetime_ns: r.lifetime_ns,
            time_wait: r.time_wait,
            reset_by: r.reset_by.map(super::super::record::ResetBy::name),
            rst_reason: r.rst_reason.map(crate::rst::RstReason::name),
            sk_err: r.sk_err,
            idle_before_close_ns: r.idle.rx_ns,
            last_send_before_close_ns: r.idle.tx_ns,
            leaked: r.leaked,
            closed_unseen: r.closed_unseen,
            owner: OwnerFields::new(r.owner.as_ref()),
            container: ContainerFields::new(cx),
        }
    }
}

/// `{"type":"close_wait_leak",…}`.
#[derive(Serialize)]
struct LeakLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    #[serde(flatten)]
    id: IdFields,
    age_ns: u64,
    age_source: &'static str,
    idle_ns: Option<u64>,
    #[serde(flatten)]
    owner: OwnerFields<'a>,
    #[serde(serialize_with = "opt_exact_cmdline")]
    cmdline: Option<&'a Cmdline>,
    close_wait_held: Option<u64>,
    #[serde(flatten)]
    container: ContainerFields<'a>,
    accepted: Option<bool>,
    fds: &'a [u32],
    unread_bytes: Option<u32>,
    unsent_bytes: Option<u32>,
    listener: Option<ListenerLine>,
}

/// A never-accepted socket's listener, in a leak line.
#[derive(Serialize)]
struct ListenerLine {
    #[serde(serialize_with = "display")]
    local: EndpointFmt,
    pid: Option<u32>,
    #[serde(serialize_with = "opt_exact_comm")]
    comm: Option<Comm>,
    accept_queue: u32,
    backlog: u32,
}

impl<'a> LeakLine<'a> {
    fn new(r: &'a LeakRecord, cx: &'a RecordContext) -> Self {
        Self {
            line_type: "close_wait_leak",
            id: IdFields::new(r.ts_ns, &r.id),
            age_ns: r.age_ns,
            age_source: r.age_source.name(),
            idle_ns: r.idle_ns,
            owner: OwnerFields::new(r.owner.as_ref()),
            cmdline: cx.cmdline.as_ref(),
            close_wait_held: cx.close_wait_held,
            container: ContainerFields::new(cx),
            accepted: r.accepted,
            fds: &cx.fds,
            unread_bytes: cx.unread_bytes,
            unsent_bytes: cx.unsent_bytes,
            listener: cx.listener.map(|l| ListenerLine {
                local: EndpointFmt(l.addr, l.port),
                pid: l.owner.map(|o| o.pid),
                comm: l.owner.map(|o| o.comm),
                accept_queue: l.accept_queue,
                backlog: l.backlog,
            }),
        }
    }
}

/// The time and the socket's identity, first in close and leak lines.
#[derive(Serialize)]
struct IdFields {
    ts_ns: u64,
    #[serde(serialize_with = "hex")]
    sk: u64,
    netns: u32,
    family: u8,
    #[serde(serialize_with = "display")]
    saddr: AddrFmt,
    sport: u16,
    #[serde(serialize_with = "display")]
    daddr: AddrFmt,
    dport: u16,
}

impl IdFields {
    fn new(ts_ns: u64, id: &SocketId) -> Self {
        Self {
            ts_ns,
            sk: id.sk,
            netns: id.netns,
            family: id.family.number(),
            saddr: AddrFmt(id.saddr),
            sport: id.sport,
            daddr: AddrFmt(id.daddr),
            dport: id.dport,
        }
    }
}

/// `pid`, `comm` and `owner_source`, each null when the owner is unknown.
#[derive(Serialize)]
struct OwnerFields<'a> {
    pid: Option<u32>,
    #[serde(serialize_with = "opt_exact_comm")]
    comm: Option<&'a Comm>,
    owner_source: Option<&'static str>,
}

impl<'a> OwnerFields<'a> {
    fn new(owner: Option<&'a Owner>) -> Self {
        Self {
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| &o.comm),
            owner_source: owner.map(|o| o.source.name()),
        }
    }
}

/// `cgroup` and `container_id`, each null when unknown.
#[derive(Serialize)]
struct ContainerFields<'a> {
    cgroup: Option<&'a str>,
    container_id: Option<&'a str>,
}

impl<'a> ContainerFields<'a> {
    fn new(cx: &'a RecordContext) -> Self {
        Self {
            cgroup: cx.cgroup.as_ref().map(|c| &*c.path),
            container_id: cx
                .cgroup
                .as_ref()
                .and_then(|c| c.container_id.as_ref())
                .map(super::super::container::ContainerId::as_str),
        }
    }
}

/// A close's states, as an array of names.
struct States<'a>(&'a StatePath);

impl Serialize for States<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(super::super::event::TcpState::name))
    }
}

/// A close's time per state, as an object from state name to ns, in kernel order, leaving out
/// the states not seen.
struct DwellMap<'a>(&'a Dwell);

impl Serialize for DwellMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(dwell_pairs(self.0))
    }
}

/// `sk` as a hex string (`"0xffff888104a3c000"`).
#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's `serialize_with` passes the field by reference"
)]
fn hex<S: Serializer>(sk: &u64, s: S) -> Result<S::Ok, S::Error> {
    // `{:#x}`, by hand (it is in every line).
    let mut buf = [0u8; 18];
    let mut i = buf.len();
    let mut n = *sk;
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    i -= 2;
    buf[i..i + 2].copy_from_slice(b"0x");
    match std::str::from_utf8(&buf[i..]) {
        Ok(text) => s.serialize_str(text),
        Err(_) => s.collect_str(&format_args!("{sk:#x}")),
    }
}

/// A value as the JSON string of its `Display`.
fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A comm's exact text (a human-facing sink escapes it; JSON's own escapes suffice here).
fn exact_comm<S: Serializer>(c: &Comm, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&c.exact())
}

fn opt_exact_comm<C: std::borrow::Borrow<Comm>, S: Serializer>(
    c: &Option<C>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => exact_comm(c.borrow(), s),
        None => s.serialize_none(),
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with hands over a reference"
)]
fn opt_exact_cmdline<S: Serializer>(c: &Option<&Cmdline>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(&c.exact()),
        None => s.serialize_none(),
    }
}

/// serde_json's compact output with the string escapes tracer's lines have always had:
/// backspace and form feed as `\u0008` and `\u000c` (serde_json writes `\b` and `\f`), and DEL
/// escaped as `\u007f` (serde_json leaves it raw); and, since a JSON line also ends up in a
/// terminal (`tail -f`, `jq -c`), the C1 controls and the invisible or reordering format
/// characters as `\uXXXX` too ([`crate::untrusted`]'s set). The values decode unchanged.
struct LineFormatter;

impl Formatter for LineFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.bytes().all(|b| b < 0x7f) {
            return w.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c == '\u{7f}' || crate::untrusted::needs_unicode_escape(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                write!(w, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        match escape {
            CharEscape::Backspace => w.write_all(b"\\u0008"),
            CharEscape::FormFeed => w.write_all(b"\\u000c"),
            other => CompactFormatter.write_char_escape(w, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_by_hand_are_hex_as_before() {
        for sk in [0u64, 1, 0xf, 0x10, 0xffff_8881_04a3_c000, u64::MAX] {
            let mut out = Vec::new();
            hex(&sk, &mut serde_json::Serializer::new(&mut out)).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{sk:#x}\""));
        }
    }
    use crate::output::fixtures;

    #[test]
    fn terminal_controls_are_escaped_and_the_value_decodes_unchanged() {
        let text = "a\u{7f}b\u{9b}2J\u{202e}c\u{2028}d é\u{1b}";
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut out, LineFormatter);
        text.serialize(&mut ser).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line, r#""a\u007fb\u009b2J\u202ec\u2028d é\u001b""#);
        assert_eq!(serde_json::from_str::<String>(&line).unwrap(), text);
    }

    /// What the hand-written JSON wrote for the fixtures (checked equal to it, byte for byte,
    /// before it was replaced by serde).
    const GOLDEN: [&str; 30] = [
        r#"{"type":"meta","version":"0.1.0","close_wait_threshold_ns":30000000000,"capacity":1000000,"pid":null,"attach":"tp_btf","baseline":true,"resets":"reason","realtime_offset_ns":1764441234567890123}"#,
        r#"{"type":"meta","version":"0.1.0","close_wait_threshold_ns":30000000000,"capacity":1000000,"pid":42,"attach":"tp_btf","baseline":false,"resets":"reason","realtime_offset_ns":1764441234567890123}"#,
        r#"{"type":"transition","ts_ns":1000000000,"sk":"0xffff888104a3c000","family":4,"saddr":"127.0.0.1","sport":40000,"daddr":"10.1.2.3","dport":8080,"old":"CLOSE","new":"SYN_SENT","dwell_ns":null,"netns":0,"sk_err":0,"task_pid":12347,"task_tid":12350,"task_comm":"python3","pid":1000,"comm":"python3","owner_source":"context"}"#,
        r#"{"type":"transition","ts_ns":1000000007,"sk":"0xffff888104a3c100","family":6,"saddr":"::1","sport":40001,"daddr":"2001:db8::42","dport":8080,"old":"ESTABLISHED","new":"CLOSE_WAIT","dwell_ns":73912,"netns":4026531840,"sk_err":0,"task_pid":12348,"task_tid":12351,"task_comm":"a\"b\\c\u0001","pid":1001,"comm":"a\"b\\c\u0001","owner_source":"listener"}"#,
        r#"{"type":"transition","ts_ns":1000000014,"sk":"0xffff888104a3c200","family":6,"saddr":"::ffff:127.0.0.1","sport":40002,"daddr":"::ffff:192.168.1.9","dport":8080,"old":"FIN_WAIT1","new":"FIN_WAIT1","dwell_ns":null,"netns":4026531840,"sk_err":0,"task_pid":12349,"task_tid":12352,"task_comm":"t\tn\nr\r\u0008\u000c\u007f","pid":null,"comm":null,"owner_source":null}"#,
        r#"{"type":"transition","ts_ns":1000000021,"sk":"0xffff888104a3c300","family":4,"saddr":"127.0.0.1","sport":40003,"daddr":"10.1.2.3","dport":8080,"old":"LISTEN","new":"CLOSE","dwell_ns":221736,"netns":4026531840,"sk_err":104,"idle_rx_ns":30012000000,"idle_tx_ns":4000000,"task_pid":12350,"task_tid":12353,"task_comm":"héllo/ü","pid":1003,"comm":"héllo/ü","owner_source":"shared"}"#,
        r#"{"type":"transition","ts_ns":1000000028,"sk":"0xffff888104a3c400","family":6,"saddr":"::1","sport":40004,"daddr":"2001:db8::42","dport":8080,"old":"CLOSE","new":"SYN_SENT","dwell_ns":null,"netns":0,"sk_err":0,"task_pid":12351,"task_tid":12354,"task_comm":"python3","pid":1004,"comm":"python3","owner_source":"context"}"#,
        r#"{"type":"transition","ts_ns":1000000035,"sk":"0xffff888104a3c500","family":6,"saddr":"::ffff:127.0.0.1","sport":40005,"daddr":"::ffff:192.168.1.9","dport":8080,"old":"ESTABLISHED","new":"CLOSE_WAIT","dwell_ns":369560,"netns":4026531840,"sk_err":0,"task_pid":12352,"task_tid":12355,"task_comm":"a\"b\\c\u0001","pid":null,"comm":null,"owner_source":null}"#,
        r#"{"type":"transition","ts_ns":1000000042,"sk":"0xffff888104a3c600","family":4,"saddr":"127.0.0.1","sport":40006,"daddr":"10.1.2.3","dport":8080,"old":"FIN_WAIT1","new":"FIN_WAIT1","dwell_ns":null,"netns":4026531840,"sk_err":0,"task_pid":12353,"task_tid":12356,"task_comm":"t\tn\nr\r\u0008\u000c\u007f","pid":1006,"comm":"t\tn\nr\r\u0008\u000c\u007f","owner_source":"inode"}"#,
        r#"{"type":"transition","ts_ns":1000000049,"sk":"0xffff888104a3c700","family":6,"saddr":"::1","sport":40007,"daddr":"2001:db8::42","dport":8080,"old":"LISTEN","new":"CLOSE","dwell_ns":517384,"netns":4026531840,"sk_err":0,"task_pid":12354,"task_tid":12357,"task_comm":"héllo/ü","pid":1007,"comm":"héllo/ü","owner_source":"shared"}"#,
        r#"{"type":"reset_sent","ts_ns":1500000000,"sk":"0xffff888110000100","netns":4026532301,"family":4,"saddr":"127.0.0.1","sport":8080,"daddr":"10.1.2.3","dport":50004,"state":"CLOSE","reason":"TCP_ABORT_ON_CLOSE"}"#,
        r#"{"type":"reset_sent","ts_ns":1500000001,"sk":"0x0","netns":0,"family":6,"saddr":"::1","sport":9,"daddr":"2001:db8::42","dport":41000,"state":null,"reason":"NO_SOCKET"}"#,
        r#"{"type":"reset_sent","ts_ns":1500000002,"sk":"0xffff888110000200","netns":4026532301,"family":4,"saddr":"127.0.0.1","sport":8080,"daddr":"192.168.1.9","dport":50006,"state":"TIME_WAIT","reason":"unknown"}"#,
        r#"{"type":"close","ts_ns":2000000000,"sk":"0xffff888110000000","netns":4026532301,"family":4,"saddr":"127.0.0.1","sport":8080,"daddr":"10.1.2.3","dport":50000,"role":"client","kind":"active","states":["SYN_SENT","ESTABLISHED","FIN_WAIT1","FIN_WAIT2","CLOSE"],"dwell_ns":{"ESTABLISHED":20311000,"SYN_SENT":202300,"CLOSE_WAIT":0},"lifetime_ns":20555100,"time_wait":true,"reset_by":null,"rst_reason":null,"sk_err":0,"idle_before_close_ns":null,"last_send_before_close_ns":null,"leaked":false,"pid":1000,"comm":"python3","owner_source":"context","cgroup":null,"container_id":null}"#,
        r#"{"type":"close","ts_ns":2000000001,"sk":"0xffff888110000040","netns":4026532301,"family":6,"saddr":"::1","sport":8080,"daddr":"2001:db8::42","dport":50001,"role":"server","kind":"passive","states":[],"dwell_ns":{},"lifetime_ns":null,"time_wait":false,"reset_by":null,"rst_reason":null,"sk_err":0,"idle_before_close_ns":3004000000,"last_send_before_close_ns":12000000,"leaked":true,"pid":null,"comm":null,"owner_source":null,"cgroup":"/user.slice/session-2.scope","container_id":null}"#,
        r#"{"type":"close","ts_ns":2000000002,"sk":"0xffff888110000080","netns":4026532301,"family":6,"saddr":"::ffff:127.0.0.1","sport":8080,"daddr":"::ffff:192.168.1.9","dport":50002,"role":"listener","kind":"simultaneous","states":["ESTABLISHED","CLOSE_WAIT","LAST_ACK","CLOSE"],"dwell_ns":{"ESTABLISHED":20311002,"SYN_SENT":202300,"CLOSE_WAIT":2},"lifetime_ns":20555102,"time_wait":false,"reset_by":null,"rst_reason":null,"sk_err":0,"idle_before_close_ns":350020000000,"last_send_before_close_ns":null,"leaked":false,"pid":1002,"comm":"t\tn\nr\r\u0008\u000c\u007f","owner_source":"inode","cgroup":"/kubepods.slice/cri-containerd-4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a.scope","container_id":"4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a"}"#,
        r#"{"type":"close","ts_ns":2000000003,"sk":"0xffff8881100000c0","netns":4026532301,"family":4,"saddr":"127.0.0.1","sport":8080,"daddr":"10.1.2.3","dport":50003,"role":"unknown","kind":"reset","states":["SYN_SENT","ESTABLISHED","FIN_WAIT1","FIN_WAIT2","CLOSE"],"dwell_ns":{"ESTABLISHED":20311003,"SYN_SENT":202300,"CLOSE_WAIT":3},"lifetime_ns":null,"time_wait":false,"reset_by":"peer","rst_reason":null,"sk_err":null,"idle_before_close_ns":null,"last_send_before_close_ns":null,"leaked":false,"pid":1003,"comm":"héllo/ü","owner_source":"shared","cgroup":null,"container_id":null}"#,
        r#"{"type":"close","ts_ns":2000000004,"sk":"0xffff888110000100","netns":0,"family":6,"saddr":"::1","sport":8080,"daddr":"2001:db8::42","dport":50004,"role":"client","kind":"abort","states":[],"dwell_ns":{},"lifetime_ns":20555104,"time_wait":false,"reset_by":"local","rst_reason":"TCP_ABORT_ON_CLOSE","sk_err":0,"idle_before_close_ns":3004000000,"last_send_before_close_ns":12000000,"leaked":false,"pid":null,"comm":null,"owner_source":null,"cgroup":null,"container_id":null}"#,
        r#"{"type":"close","ts_ns":2000000005,"sk":"0xffff888110000140","netns":4026532301,"family":6,"saddr":"::ffff:127.0.0.1","sport":8080,"daddr":"::ffff:192.168.1.9","dport":50005,"role":"server","kind":"timeout","states":["ESTABLISHED","CLOSE_WAIT","LAST_ACK","CLOSE"],"dwell_ns":{"ESTABLISHED":20311005,"SYN_SENT":202300,"CLOSE_WAIT":5},"lifetime_ns":null,"time_wait":false,"reset_by":null,"rst_reason":null,"sk_err":0,"idle_before_close_ns":350020000000,"last_send_before_close_ns":null,"leaked":false,"pid":1005,"comm":"a\"b\\c\u0001","owner_source":"listener","cgroup":"/user.slice/session-2.scope","container_id":null}"#,
        r#"{"type":"close","ts_ns":2000000006,"sk":"0xffff888110000180","netns":4026532301,"family":4,"saddr":"127.0.0.1","sport":8080,"daddr":"10.1.2.3","dport":50006,"role":"listener","kind":"connect_failed","states":["SYN_SENT","ESTABLISHED","FIN_WAIT1","FIN_WAIT2","CLOSE"],"dwell_ns":{"ESTABLISHED":20311006,"SYN_SENT":202300,"CLOSE_WAIT":6},"lifetime_ns":20555106,"time_wait":false,"reset_by":null,"rst_reason":null,"sk_err":0,"idle_before_close_ns":null,"last_send_before_close_ns":null,"leaked":false,"pid":1006,"comm":"t\tn\nr\r\u0008\u000c\u007f","owner_source":"inode","cgroup":"/kubepods.slice/cri-containerd-4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a.scope","container_id":"4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a"}"#,
        r#"{"type":"close","ts_ns":2000000007,"sk":"0xffff8881100001c0","netns":4026532301,"family":6,"saddr":"::1","sport":8080,"daddr":"2001:db8::42","dport":50007,"role":"unknown","kind":"listener","states":[],"dwell_ns":{},"lifetime_ns":null,"time_wait":false,"reset_by":null,"rst_reason":null,"sk_err":null,"idle_before_close_ns":3004000000,"last_send_before_close_ns":12000000,"leaked":false,"pid":null,"comm":null,"owner_source":null,"cgroup":null,"container_id":null}"#,
        r#"{"type":"close","ts_ns":2000000008,"sk":"0xffff888110000200","netns":4026532301,"family":6,"saddr":"::ffff:127.0.0.1","sport":8080,"daddr":"::ffff:192.168.1.9","dport":50008,"role":"client","kind":"unknown","states":["ESTABLISHED","CLOSE_WAIT","LAST_ACK","CLOSE"],"dwell_ns":{"ESTABLISHED":20311008,"SYN_SENT":202300,"CLOSE_WAIT":8},"lifetime_ns":20555108,"time_wait":false,"reset_by":null,"rst_reason":null,"sk_err":0,"idle_before_close_ns":350020000000,"last_send_before_close_ns":null,"leaked":false,"closed_unseen":true,"pid":1008,"comm":"python3","owner_source":"context","cgroup":null,"container_id":null}"#,
        r#"{"type":"close_wait_leak","ts_ns":3000000000,"sk":"0xffff888110000040","netns":4026532301,"family":6,"saddr":"::1","sport":8080,"daddr":"2001:db8::42","dport":50001,"age_ns":30000412000,"age_source":"traced","idle_ns":30004000000,"pid":1000,"comm":"python3","owner_source":"context","cmdline":null,"close_wait_held":null,"cgroup":null,"container_id":null,"accepted":true,"fds":[],"unread_bytes":null,"unsent_bytes":null,"listener":null}"#,
        r#"{"type":"close_wait_leak","ts_ns":3000000001,"sk":"0xffff888110000080","netns":4026532301,"family":6,"saddr":"::ffff:127.0.0.1","sport":8080,"daddr":"::ffff:192.168.1.9","dport":50002,"age_ns":30000412001,"age_source":"estimate","idle_ns":null,"pid":1001,"comm":"a\"b\\c\u0001","owner_source":"listener","cmdline":null,"close_wait_held":1,"cgroup":"/user.slice/session-2.scope","container_id":null,"accepted":null,"fds":[7],"unread_bytes":5,"unsent_bytes":0,"listener":null}"#,
        r#"{"type":"close_wait_leak","ts_ns":3000000002,"sk":"0xffff8881100000c0","netns":4026532301,"family":4,"saddr":"127.0.0.1","sport":8080,"daddr":"10.1.2.3","dport":50003,"age_ns":30000412002,"age_source":"traced","idle_ns":30004000000,"pid":null,"comm":null,"owner_source":null,"cmdline":"/usr/bin/server --port 8080","close_wait_held":17,"cgroup":"/kubepods.slice/cri-containerd-4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a.scope","container_id":"4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a4f1c2a9b8d7e6f5a","accepted":false,"fds":[3,9],"unread_bytes":0,"unsent_bytes":1448,"listener":null}"#,
        r#"{"type":"close_wait_leak","ts_ns":3000000003,"sk":"0xffff888110000100","netns":0,"family":6,"saddr":"::1","sport":8080,"daddr":"2001:db8::42","dport":50004,"age_ns":30000412003,"age_source":"estimate","idle_ns":null,"pid":1003,"comm":"héllo/ü","owner_source":"shared","cmdline":"t\tn\nr\r\u0008\u000c\u007f","close_wait_held":null,"cgroup":null,"container_id":null,"accepted":false,"fds":[],"unread_bytes":120,"unsent_bytes":0,"listener":{"local":"0.0.0.0:8080","pid":1009,"comm":"a\"b\\c\u0001","accept_queue":129,"backlog":128}}"#,
        r#"{"type":"close_wait_leak","ts_ns":3000000004,"sk":"0xffff888110000140","netns":4026532301,"family":6,"saddr":"::ffff:127.0.0.1","sport":8080,"daddr":"::ffff:192.168.1.9","dport":50005,"age_ns":30000412004,"age_source":"traced","idle_ns":30004000000,"pid":1004,"comm":"python3","owner_source":"context","cmdline":null,"close_wait_held":null,"cgroup":null,"container_id":null,"accepted":null,"fds":[],"unread_bytes":null,"unsent_bytes":null,"listener":null}"#,
        r#"{"type":"close_wait_leak","ts_ns":3000000005,"sk":"0xffff888110000180","netns":4026532301,"family":4,"saddr":"127.0.0.1","sport":8080,"daddr":"10.1.2.3","dport":50006,"age_ns":30000412005,"age_source":"estimate","idle_ns":null,"pid":null,"comm":null,"owner_source":null,"cmdline":null,"close_wait_held":1,"cgroup":"/user.slice/session-2.scope","container_id":null,"accepted":true,"fds":[7],"unread_bytes":5,"unsent_bytes":0,"listener":null}"#,
        r#"{"type":"summary","duration_ns":0,"transitions":0,"closes":0,"closes_by_kind":{"active":0,"passive":0,"simultaneous":0,"reset":0,"abort":0,"timeout":0,"connect_failed":0,"listener":0,"unknown":0},"closes_by_role":{"client":0,"server":0,"listener":0,"unknown":0},"closes_time_wait":0,"leaks":0,"dwell":{},"sockets_now":{},"close_wait_now":0,"leaking_now":0,"oldest_close_wait_ns":null,"tracked":0,"capacity":1000000,"evicted":0,"evicted_leaking":0,"recycled":0,"seeded":0,"first_seen_midlife":0,"gaps":0,"out_of_order":0,"stale_dropped":0,"closed_unseen":0,"state_corrected":0}"#,
        r#"{"type":"summary","duration_ns":0,"transitions":0,"closes":0,"closes_by_kind":{"active":0,"passive":0,"simultaneous":0,"reset":0,"abort":0,"timeout":0,"connect_failed":0,"listener":0,"unknown":0},"closes_by_role":{"client":0,"server":0,"listener":0,"unknown":0},"closes_time_wait":0,"leaks":0,"dwell":{},"sockets_now":{},"close_wait_now":0,"leaking_now":0,"oldest_close_wait_ns":null,"tracked":0,"capacity":1000000,"evicted":0,"evicted_leaking":0,"recycled":0,"seeded":0,"first_seen_midlife":0,"gaps":0,"out_of_order":0,"stale_dropped":0,"closed_unseen":20,"state_corrected":3,"events_lost":1,"skipped_lines":2,"long_lines":3,"time_jumps":4,"restarts":5,"restart_forgotten":6,"baseline":{"sockets":7,"namespaces":2,"namespaces_failed":0,"took_us":1234},"reconcile":{"runs":12,"after_loss":2,"total_us":48500,"max_us":9000,"suspects":25,"closed_unseen":20,"state_corrected":3,"seeded":1,"unreachable":1},"holders":{"rounds":7,"sockets":40,"lookups":30,"dumps":1,"confirmed":38,"corrected":9,"not_accepted":2,"unanswered":1,"total_us":2100},"time_wait_top":[{"remote":"127.0.0.1:5432","netns":4026532301,"time_wait":9,"ephemeral_ports_used":10,"ephemeral_port_range":28232}],"idle_before_close":[{"kind":"reset","count":7,"p50_ns":349500000000,"p90_ns":350100000000,"p99_ns":350400000000,"max_ns":350450000000}],"resets_top":[{"reason":"NO_SOCKET","remote":"10.0.0.7","resets":50},{"reason":"TCP_ABORT_ON_CLOSE","remote":"::1","netns":4026532301,"resets":2}]}"#,
    ];

    /// The fixture records, meta lines first and summaries last, as JSON Lines.
    fn rendered() -> String {
        let mut sink = JsonSink::new(Vec::new(), Show::ALL);
        for pid in [None, Some(42)] {
            sink.meta(&fixtures::meta(pid)).unwrap();
        }
        fixtures::render(&mut sink);
        for s in [fixtures::summary_plain(), fixtures::summary_full()] {
            sink.summary(&s).unwrap();
        }
        String::from_utf8(sink.into_inner()).unwrap()
    }

    #[test]
    fn lines_are_the_golden_bytes() {
        let out = rendered();
        if let Ok(p) = std::env::var("TRACER_DUMP_GOLDEN") {
            std::fs::write(p, &out).unwrap();
        }
        let lines: Vec<&str> = out.split_terminator('\n').collect();
        for (got, want) in lines.iter().zip(GOLDEN) {
            assert_eq!(*got, want);
        }
        assert_eq!(lines.len(), GOLDEN.len());
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn every_line_is_json() {
        for line in rendered().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["type"].is_string(), "{line}");
        }
    }

    #[test]
    fn show_leaves_out_what_it_does_not_name() {
        let mut sink = JsonSink::new(Vec::new(), Show::parse("leaks").unwrap());
        sink.meta(&fixtures::meta(None)).unwrap();
        fixtures::render(&mut sink);
        let out = String::from_utf8(sink.into_inner()).unwrap();
        let types: Vec<String> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
            .collect();
        assert_eq!(types[0], "\"meta\"");
        assert_eq!(types.len(), 1 + fixtures::leaks().len());
        assert!(types[1..].iter().all(|t| t == "\"close_wait_leak\""));
    }
}
