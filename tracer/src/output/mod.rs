//! Renders transitions and records as a readable table or as JSON Lines (schema in
//! docs/output.md). Lines are formatted into one reused buffer and written in batches: no
//! allocation and no syscall per event.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::IpAddr;

use crate::event::{AddrFmt, EndpointFmt, Family, Transition};
use crate::pipeline::{RecordContext, Sink};
use crate::record::{CloseRecord, LeakRecord, Owner, SocketId};

#[cfg(test)]
mod fixtures;
mod json;

pub use json::JsonSink;

/// What to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Show {
    pub transitions: bool,
    pub closes: bool,
    pub leaks: bool,
}

impl Show {
    pub const ALL: Show = Show {
        transitions: true,
        closes: true,
        leaks: true,
    };

    /// Parses a comma-separated list of `transitions`, `closes`, `leaks`, `all`, `none`.
    pub fn parse(s: &str) -> Result<Show, String> {
        let mut show = Show {
            transitions: false,
            closes: false,
            leaks: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "transitions" | "transition" => show.transitions = true,
                "closes" | "close" => show.closes = true,
                "leaks" | "leak" => show.leaks = true,
                "all" => show = Show::ALL,
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown kind {other:?} (expected transitions, closes, leaks, all or none)"
                    ));
                }
            }
        }
        Ok(show)
    }
}

/// Text or JSON Lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The settings of a live run, written first in a recording (`{"type":"meta",…}`) so that a
/// replay uses them (docs/output.md).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Meta {
    /// `tracer`'s version.
    pub version: &'static str,
    /// `--close-wait-threshold`, in ns.
    pub close_wait_threshold_ns: u64,
    /// `--capacity`.
    pub capacity: u64,
    /// `--pid` (the thread group followed), if any.
    pub pid: Option<u32>,
    /// The kernel hook in use: `tp_btf` or `tracepoint`.
    pub attach: &'static str,
    /// Whether the sockets open at startup were read (not `--no-baseline`).
    pub baseline: bool,
    /// Wall-clock minus monotonic time (ns) at startup: turns `ts_ns` into a date.
    pub realtime_offset_ns: i64,
}

/// A writer and the lines formatted for it in one reused buffer, written out in batches of
/// about 60 KiB: no allocation and no syscall per line.
struct Batched<W, B> {
    out: W,
    buf: B,
}

/// The buffer a sink formats into: text into a `String`, JSON into a `Vec<u8>`.
trait LineBuf: AsRef<[u8]> {
    fn clear(&mut self);
}

impl LineBuf for String {
    fn clear(&mut self) {
        String::clear(self);
    }
}

impl LineBuf for Vec<u8> {
    fn clear(&mut self) {
        Vec::clear(self);
    }
}

/// Bytes buffered before a batch is written out.
const BATCH: usize = 60 * 1024;

impl<W: Write, B: LineBuf> Batched<W, B> {
    fn new(out: W, buf: B) -> Self {
        Self { out, buf }
    }

    /// Writes out what is buffered.
    fn flush(&mut self) -> io::Result<()> {
        self.write_buffered()?;
        self.out.flush()
    }

    /// After a line: writes out the batch when it is large, so a burst does not grow the
    /// buffer without bound.
    fn end_line(&mut self) -> io::Result<()> {
        if self.buf.as_ref().len() >= BATCH {
            self.write_buffered()?;
        }
        Ok(())
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        if !self.buf.as_ref().is_empty() {
            self.out.write_all(self.buf.as_ref())?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Gives back the writer, after writing out what is buffered.
    fn into_inner(mut self) -> W {
        let _ = self.flush();
        self.out
    }
}

/// Writes records to an underlying writer.
pub struct Output<W: Write> {
    out: W,
    buf: String,
    format: Format,
    show: Show,
    /// Wall-clock minus monotonic time (ns), to print readable times in text mode.
    realtime_offset_ns: i128,
    header_done: bool,
    /// The tracer's own network namespace: text output names a socket's namespace only when
    /// it is another one.
    own_netns: u32,
}

impl<W: Write> Output<W> {
    pub fn new(out: W, format: Format, show: Show, realtime_offset_ns: i128) -> Self {
        Self {
            out,
            buf: String::with_capacity(64 * 1024),
            format,
            show,
            realtime_offset_ns,
            header_done: false,
            own_netns: 0,
        }
    }

    /// Sets the tracer's own network namespace (see [`Output::transition`]).
    #[must_use]
    pub fn with_own_netns(mut self, netns: u32) -> Self {
        self.own_netns = netns;
        self
    }

    pub fn show(&self) -> Show {
        self.show
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(self.buf.as_bytes())?;
            self.buf.clear();
        }
        self.out.flush()
    }

    /// Flushes when the buffer is large, so a burst does not grow it without bound.
    fn maybe_flush(&mut self) -> io::Result<()> {
        if self.buf.len() >= 60 * 1024 {
            self.out.write_all(self.buf.as_bytes())?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The run's settings, as the first line of a JSON recording; nothing in text mode.
    pub fn meta(&mut self, meta: &Meta) -> io::Result<()> {
        if self.format != Format::Json {
            return Ok(());
        }
        self.buf.push_str("{\"type\":\"meta\",");
        let fields = serde_json::to_string(meta).map_err(io::Error::other)?;
        // `fields` is an object: splice its members after the type.
        self.buf
            .push_str(fields.strip_prefix('{').unwrap_or(&fields));
        self.buf.push('\n');
        self.maybe_flush()
    }

    /// Sets the wall-clock minus monotonic offset used to print times in text mode (a replay
    /// learns it from the recording's meta line).
    pub fn set_realtime_offset_ns(&mut self, offset_ns: i128) {
        self.realtime_offset_ns = offset_ns;
    }

    /// Writes a free-form line (summary text, notices).
    pub fn raw_line(&mut self, line: &str) -> io::Result<()> {
        self.buf.push_str(line);
        if !line.ends_with('\n') {
            self.buf.push('\n');
        }
        self.maybe_flush()
    }

    fn header(&mut self) {
        if self.format == Format::Text && !self.header_done && self.show.transitions {
            self.header_done = true;
            let _ = writeln!(
                self.buf,
                "{:<15} {:>7} {:<15} {:<23} {:<23} {:<27} {:>9}",
                "TIME", "PID", "COMM", "LOCAL", "REMOTE", "TRANSITION", "IN OLD"
            );
        }
    }

    /// A transition, with the socket's owner when known.
    pub fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        if !self.show.transitions {
            return Ok(());
        }
        self.header();
        let b = &mut self.buf;
        match self.format {
            Format::Text => {
                let _ = write!(
                    b,
                    "{} {:>7} {:<15} {:<23} {:<23} {:<27} {:>9}",
                    WallTime(t.ts_ns, self.realtime_offset_ns),
                    t.task_pid,
                    t.task_comm,
                    Pad(EndpointFmt(t.saddr, t.sport)),
                    Pad(EndpointFmt(t.daddr, t.dport)),
                    Pad(Arrow(t.old.name(), t.new.name())),
                    Pad(OptDuration(t.dwell_ns)),
                );
                if let Some(o) = owner
                    && o.pid != t.task_pid
                {
                    let _ = write!(b, "  owner {} {}", o.pid, o.comm);
                }
                netns_text(b, t.netns, self.own_netns);
                b.push('\n');
            }
            Format::Json => {
                let _ = write!(
                    b,
                    "{{\"type\":\"transition\",\"ts_ns\":{},\"sk\":\"{:#x}\",\"family\":{},\"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{},\"old\":\"{}\",\"new\":\"{}\",\"dwell_ns\":{},\"netns\":{},\"sk_err\":{},\"task_pid\":{},\"task_tid\":{},\"task_comm\":",
                    t.ts_ns,
                    t.sk,
                    t.family.number(),
                    AddrFmt(t.saddr),
                    t.sport,
                    AddrFmt(t.daddr),
                    t.dport,
                    t.old.name(),
                    t.new.name(),
                    OptNum(t.dwell_ns),
                    t.netns,
                    t.sk_err,
                    t.task_pid,
                    t.task_tid,
                );
                json_str(b, &t.task_comm.as_str());
                owner_json(b, owner);
                b.push_str("}\n");
            }
        }
        self.maybe_flush()
    }

    /// A close record.
    pub fn close(&mut self, r: &CloseRecord, ctx: &RecordContext) -> io::Result<()> {
        if !self.show.closes {
            return Ok(());
        }
        let b = &mut self.buf;
        match self.format {
            Format::Text => {
                let _ = write!(
                    b,
                    "{} CLOSE {:<14} {:<8} {} ",
                    WallTime(r.ts_ns, self.realtime_offset_ns),
                    r.kind.name(),
                    r.role.name(),
                    Pair(&r.id),
                );
                for (i, s) in r.states.iter().enumerate() {
                    if i > 0 {
                        b.push('>');
                    }
                    b.push_str(s.name());
                }
                if let Some(l) = r.lifetime_ns {
                    let _ = write!(b, "  life {}", Dur(l));
                }
                for (st, d) in dwell_pairs(&r.dwell_ns) {
                    let _ = write!(b, " {}={}", st, Dur(d));
                }
                if r.time_wait {
                    b.push_str("  →TIME_WAIT");
                }
                match r.reset_by {
                    Some(by) => {
                        let _ = write!(b, "  RST by {}", by.name());
                    }
                    None if r.kind == crate::record::CloseKind::Reset => {
                        b.push_str("  RST by ?");
                    }
                    None => {}
                }
                if r.leaked {
                    b.push_str("  LEAKED");
                }
                owner_text(b, r.owner.as_ref());
                container_text(b, ctx);
                netns_text(b, r.id.netns, self.own_netns);
                b.push('\n');
            }
            Format::Json => {
                b.push_str("{\"type\":\"close\",");
                id_json(b, r.ts_ns, &r.id);
                let _ = write!(
                    b,
                    ",\"role\":\"{}\",\"kind\":\"{}\",\"states\":[",
                    r.role.name(),
                    r.kind.name()
                );
                for (i, s) in r.states.iter().enumerate() {
                    if i > 0 {
                        b.push(',');
                    }
                    let _ = write!(b, "\"{}\"", s.name());
                }
                b.push_str("],\"dwell_ns\":{");
                for (i, (st, d)) in dwell_pairs(&r.dwell_ns).enumerate() {
                    if i > 0 {
                        b.push(',');
                    }
                    let _ = write!(b, "\"{st}\":{d}");
                }
                let _ = write!(
                    b,
                    "}},\"lifetime_ns\":{},\"time_wait\":{},\"reset_by\":",
                    OptNum(r.lifetime_ns),
                    r.time_wait,
                );
                match r.reset_by {
                    Some(by) => {
                        let _ = write!(b, "\"{}\"", by.name());
                    }
                    None => b.push_str("null"),
                }
                let _ = write!(
                    b,
                    ",\"sk_err\":{},\"leaked\":{}",
                    OptNum(r.sk_err.map(u64::from)),
                    r.leaked
                );
                owner_json(b, r.owner.as_ref());
                container_json(b, ctx);
                b.push_str("}\n");
            }
        }
        self.maybe_flush()
    }

    /// A CLOSE_WAIT leak.
    pub fn leak(&mut self, r: &LeakRecord, ctx: &RecordContext) -> io::Result<()> {
        if !self.show.leaks {
            return Ok(());
        }
        let b = &mut self.buf;
        match self.format {
            Format::Text => {
                let _ = write!(
                    b,
                    "{} LEAK  CLOSE_WAIT for {}{}",
                    WallTime(r.ts_ns, self.realtime_offset_ns),
                    Dur(r.age_ns),
                    if r.age_source == crate::record::AgeSource::Estimate {
                        " (estimated)"
                    } else {
                        ""
                    },
                );
                if let Some(idle) = r.idle_ns {
                    let _ = write!(b, "  idle {}", Dur(idle));
                }
                match &r.owner {
                    Some(o) => {
                        let _ = write!(b, "  pid {} ({})", o.pid, o.comm);
                        if let Some(c) = &ctx.cmdline {
                            let _ = write!(b, " `{c}`");
                        }
                    }
                    None => b.push_str("  owner unknown"),
                }
                let _ = write!(
                    b,
                    "  local {}  peer {} closed",
                    EndpointFmt(r.id.saddr, r.id.sport),
                    EndpointFmt(r.id.daddr, r.id.dport)
                );
                if let Some(n) = ctx.close_wait_held {
                    let _ = write!(
                        b,
                        "  — it holds {n} CLOSE_WAIT socket{} now",
                        if n == 1 { "" } else { "s" }
                    );
                }
                container_text(b, ctx);
                netns_text(b, r.id.netns, self.own_netns);
                b.push('\n');
            }
            Format::Json => {
                b.push_str("{\"type\":\"close_wait_leak\",");
                id_json(b, r.ts_ns, &r.id);
                let _ = write!(
                    b,
                    ",\"age_ns\":{},\"age_source\":\"{}\",\"idle_ns\":{}",
                    r.age_ns,
                    r.age_source.name(),
                    OptNum(r.idle_ns)
                );
                owner_json(b, r.owner.as_ref());
                b.push_str(",\"cmdline\":");
                match &ctx.cmdline {
                    Some(c) => json_str(b, c),
                    None => b.push_str("null"),
                }
                let _ = write!(b, ",\"close_wait_held\":{}", OptNum(ctx.close_wait_held));
                container_json(b, ctx);
                b.push_str("}\n");
            }
        }
        self.maybe_flush()
    }

    /// Gives back the writer (tests).
    pub fn into_inner(mut self) -> W {
        let _ = self.flush();
        self.out
    }
}

fn dwell_pairs(d: &crate::record::Dwell) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    crate::event::TcpState::ALL
        .into_iter()
        .filter_map(|st| d[st.index()].map(|v| (st.name(), v)))
}

fn id_json(b: &mut String, ts_ns: u64, id: &SocketId) {
    let _ = write!(
        b,
        "\"ts_ns\":{},\"sk\":\"{:#x}\",\"netns\":{},\"family\":{},\"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{}",
        ts_ns,
        id.sk,
        id.netns,
        match id.family {
            Family::V4 => 4,
            Family::V6 => 6,
        },
        AddrFmt(id.saddr),
        id.sport,
        AddrFmt(id.daddr),
        id.dport
    );
}

fn owner_json(b: &mut String, owner: Option<&Owner>) {
    match owner {
        Some(o) => {
            let _ = write!(b, ",\"pid\":{},\"comm\":", o.pid);
            json_str(b, &o.comm.as_str());
            let _ = write!(b, ",\"owner_source\":\"{}\"", o.source.name());
        }
        None => b.push_str(",\"pid\":null,\"comm\":null,\"owner_source\":null"),
    }
}

/// `"cgroup"` and `"container_id"` (each null when unknown).
fn container_json(b: &mut String, ctx: &RecordContext) {
    b.push_str(",\"cgroup\":");
    match &ctx.cgroup {
        Some(cg) => json_str(b, &cg.path),
        None => b.push_str("null"),
    }
    match ctx.cgroup.as_ref().and_then(|c| c.container_id) {
        Some(id) => {
            let _ = write!(b, ",\"container_id\":\"{id}\"");
        }
        None => b.push_str(",\"container_id\":null"),
    }
}

/// `  container ID12` when the owner runs in a container.
fn container_text(b: &mut String, ctx: &RecordContext) {
    if let Some(id) = ctx.cgroup.as_ref().and_then(|c| c.container_id) {
        let _ = write!(b, "  container {}", id.short());
    }
}

/// `  netns N` when the socket is in another network namespace than the tracer.
fn netns_text(b: &mut String, netns: u32, own: u32) {
    if netns != 0 && netns != own {
        let _ = write!(b, "  netns {netns}");
    }
}

fn owner_text(b: &mut String, owner: Option<&Owner>) {
    if let Some(o) = owner {
        let _ = write!(b, "  pid {} ({})", o.pid, o.comm);
    }
}

/// Appends `s` as a JSON string literal.
pub fn json_str(b: &mut String, s: &str) {
    b.push('"');
    for c in s.chars() {
        match c {
            '"' => b.push_str("\\\""),
            '\\' => b.push_str("\\\\"),
            '\n' => b.push_str("\\n"),
            '\r' => b.push_str("\\r"),
            '\t' => b.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(b, "\\u{:04x}", c as u32);
            }
            c => b.push(c),
        }
    }
    b.push('"');
}

struct OptNum(Option<u64>);

impl std::fmt::Display for OptNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("null"),
        }
    }
}

struct Arrow<'a>(&'a str, &'a str);

impl std::fmt::Display for Arrow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.0, self.1)
    }
}

struct Pair<'a>(&'a SocketId);

impl std::fmt::Display for Pair<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}",
            EndpointFmt(self.0.saddr, self.0.sport),
            EndpointFmt(self.0.daddr, self.0.dport)
        )
    }
}

/// A duration in ns, printed with a readable unit: `850ns`, `12.3µs`, `4.56ms`, `2.10s`,
/// `3m04s`, `2h05m`.
pub struct Dur(pub u64);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = self.0;
        let mut b = StackStr::new();
        let _ = if ns < 1_000 {
            write!(b, "{ns}ns")
        } else if ns < 1_000_000 {
            write!(b, "{:.1}µs", ns as f64 / 1e3)
        } else if ns < 1_000_000_000 {
            write!(b, "{:.2}ms", ns as f64 / 1e6)
        } else if ns < 60_000_000_000 {
            write!(b, "{:.2}s", ns as f64 / 1e9)
        } else if ns < 3_600_000_000_000 {
            let s = ns / 1_000_000_000;
            write!(b, "{}m{:02}s", s / 60, s % 60)
        } else {
            let m = ns / 60_000_000_000;
            write!(b, "{}h{:02}m", m / 60, m % 60)
        };
        f.pad(b.as_str())
    }
}

/// A small string on the stack, for formatting a column before padding it (no allocation).
struct StackStr {
    buf: [u8; 80],
    len: usize,
}

impl StackStr {
    fn new() -> Self {
        Self {
            buf: [0; 80],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in (see `write_str`), so this is valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Formats the inner value first, then applies the caller's width and alignment to it.
struct Pad<T>(T);

impl<T: std::fmt::Display> std::fmt::Display for Pad<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut b = StackStr::new();
        write!(b, "{}", self.0)?;
        f.pad(b.as_str())
    }
}

struct OptDuration(Option<u64>);

impl std::fmt::Display for OptDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => Dur(v).fmt(f),
            None => f.pad("-"),
        }
    }
}

/// Kernel monotonic ns printed as local wall-clock time `HH:MM:SS.ffffff` (UTC).
struct WallTime(u64, i128);

impl std::fmt::Display for WallTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let real = i128::from(self.0) + self.1;
        let day_ns = real.rem_euclid(86_400 * 1_000_000_000);
        let secs = day_ns / 1_000_000_000;
        let micros = (day_ns % 1_000_000_000) / 1_000;
        write!(
            f,
            "{:02}:{:02}:{:02}.{:06}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            micros
        )
    }
}

/// Wall-clock minus monotonic time, in ns, sampled now.
pub fn realtime_offset_ns() -> i128 {
    let mono = clock_ns(libc::CLOCK_MONOTONIC);
    let real = clock_ns(libc::CLOCK_REALTIME);
    i128::from(real) - i128::from(mono)
}

/// Reads a clock in ns (CLOCK_MONOTONIC is the clock of the kernel's event timestamps).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Whether an address is in the family's natural form (for tests and filters).
pub fn is_loopback(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

impl<W: io::Write> Sink for Output<W> {
    fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        Output::transition(self, t, owner)
    }

    fn close(&mut self, c: &CloseRecord, cx: &RecordContext) -> io::Result<()> {
        Output::close(self, c, cx)
    }

    fn leak(&mut self, l: &LeakRecord, cx: &RecordContext) -> io::Result<()> {
        Output::leak(self, l, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, TcpState};
    use std::net::Ipv4Addr;

    fn t() -> Transition {
        Transition {
            ts_ns: 5,
            sk: 0xabc,
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 1,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 2,
            old: TcpState::Established,
            new: TcpState::CloseWait,
            dwell_ns: None,
            netns: 0,
            sk_err: 0,
            task_pid: 3,
            task_tid: 4,
            task_comm: Comm::new("a\"b\\c\u{1}"),
        }
    }

    #[test]
    fn transition_json_is_valid_and_matches_contract() {
        let mut o = Output::new(Vec::new(), Format::Json, Show::ALL, 0);
        o.transition(&t(), None).unwrap();
        let out = String::from_utf8(o.into_inner()).unwrap();
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["type"], "transition");
        assert_eq!(v["sk"], "0xabc");
        assert_eq!(v["family"], 4);
        assert_eq!(v["old"], "ESTABLISHED");
        assert_eq!(v["new"], "CLOSE_WAIT");
        assert!(v["dwell_ns"].is_null());
        assert_eq!(v["task_comm"], "a\"b\\c\u{1}");
        assert!(v["pid"].is_null());
    }

    #[test]
    fn show_parses() {
        assert_eq!(Show::parse("all").unwrap(), Show::ALL);
        let s = Show::parse("leaks, closes").unwrap();
        assert!(s.leaks && s.closes && !s.transitions);
        assert!(Show::parse("bogus").is_err());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(Dur(850).to_string(), "850ns");
        assert_eq!(Dur(12_345).to_string(), "12.3µs");
        assert_eq!(Dur(4_560_000).to_string(), "4.56ms");
        assert_eq!(Dur(2_100_000_000).to_string(), "2.10s");
        assert_eq!(Dur(184_000_000_000).to_string(), "3m04s");
        assert_eq!(Dur(7_500_000_000_000).to_string(), "2h05m");
    }
}
