//! The JSON Lines sink (schema in docs/output.md): each line is a typed record that borrows
//! from the engine's records, serialised by serde_json straight into one reused buffer. No
//! allocation per line: text fields that are not stored as text (addresses, `sk`, `comm`) go
//! through `collect_str`, which formats into the buffer.

use std::fmt::Display;
use std::io::{self, Write};

use serde::{Serialize, Serializer};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

use super::{Batched, Meta, Show, dwell_pairs};
use crate::engine::Summary;
use crate::event::{AddrFmt, Comm, Transition};
use crate::pipeline::{RecordContext, Sink};
use crate::record::{CloseRecord, Dwell, LeakRecord, Owner, SocketId, StatePath};

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

    pub fn show(&self) -> Show {
        self.show
    }

    /// The run's settings, written whatever `--show` says (the first line of a recording).
    pub fn meta(&mut self, meta: &Meta) -> io::Result<()> {
        self.line(&MetaLine {
            line_type: "meta",
            meta,
        })
    }

    /// The exit summary, as one `summary` line.
    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(summary)
    }

    /// Writes a free-form line as it is (a newline is added when it has none).
    pub fn raw_line(&mut self, line: &str) -> io::Result<()> {
        let buf = &mut self.lines.buf;
        buf.extend_from_slice(line.as_bytes());
        if !line.ends_with('\n') {
            buf.push(b'\n');
        }
        self.lines.end_line()
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.lines.flush()
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
    task_pid: u32,
    task_tid: u32,
    #[serde(serialize_with = "display")]
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
    sk_err: Option<u16>,
    leaked: bool,
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
            reset_by: r.reset_by.map(|by| by.name()),
            sk_err: r.sk_err,
            leaked: r.leaked,
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
    cmdline: Option<&'a str>,
    close_wait_held: Option<u64>,
    #[serde(flatten)]
    container: ContainerFields<'a>,
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
            cmdline: cx.cmdline.as_deref(),
            close_wait_held: cx.close_wait_held,
            container: ContainerFields::new(cx),
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
    #[serde(serialize_with = "opt_display")]
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
                .map(|id| id.as_str()),
        }
    }
}

/// A close's states, as an array of names.
struct States<'a>(&'a StatePath);

impl Serialize for States<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|st| st.name()))
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
fn hex<S: Serializer>(sk: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{sk:#x}"))
}

/// A value as the JSON string of its `Display`.
fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// An optional value as the JSON string of its `Display`, or null.
fn opt_display<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// serde_json's compact output with the string escapes tracer's lines have always had:
/// backspace and form feed as `\u0008` and `\u000c` (serde_json writes `\b` and `\f`), and DEL
/// escaped as `\u007f` (serde_json leaves it raw).
struct LineFormatter;

impl Formatter for LineFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(i) = rest.find('\u{7f}') {
            w.write_all(&rest.as_bytes()[..i])?;
            w.write_all(b"\\u007f")?;
            rest = &rest[i + 1..];
        }
        w.write_all(rest.as_bytes())
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
    use crate::output::fixtures;
    use crate::output::{Format, Output};

    /// Every fixture record through a sink.
    fn render(sink: &mut impl Sink) {
        for (t, o) in fixtures::transitions() {
            sink.transition(&t, o.as_ref()).unwrap();
        }
        let cxs = fixtures::contexts();
        for (i, c) in fixtures::closes().iter().enumerate() {
            sink.close(c, &cxs[i % cxs.len()]).unwrap();
        }
        for (i, l) in fixtures::leaks().iter().enumerate() {
            sink.leak(l, &cxs[i % cxs.len()]).unwrap();
        }
    }

    #[test]
    fn serde_lines_equal_the_hand_written_ones() {
        let mut old = Output::new(Vec::new(), Format::Json, Show::ALL, 0);
        let mut new = JsonSink::new(Vec::new(), Show::ALL);
        for pid in [None, Some(42)] {
            old.meta(&fixtures::meta(pid)).unwrap();
            new.meta(&fixtures::meta(pid)).unwrap();
        }
        render(&mut old);
        render(&mut new);
        for s in [fixtures::summary_plain(), fixtures::summary_full()] {
            old.raw_line(&serde_json::to_string(&s).unwrap()).unwrap();
            new.summary(&s).unwrap();
        }
        let old = String::from_utf8(old.into_inner()).unwrap();
        let new = String::from_utf8(new.into_inner()).unwrap();
        std::fs::write("/tmp/output-golden.jsonl", &new).unwrap();
        for (a, b) in old.lines().zip(new.lines()) {
            assert_eq!(a, b);
        }
        assert_eq!(old, new);
    }
}
