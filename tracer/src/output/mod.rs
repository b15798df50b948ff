//! Output: transitions, records and the summary, as a readable table ([`TextSink`], text.rs) or
//! as JSON Lines ([`JsonSink`], json.rs; schema in docs/output.md). One type per format, each a
//! [`Sink`] and a [`FormatSink`]; [`Output`] is the one chosen by [`Format`] at run time. Also
//! the settings line ([`Meta`]), `--show` ([`Show`]), and the formatting helpers the formats and
//! front-ends share (durations, clocks). Lines are formatted into one reused buffer and written
//! in batches: no allocation and no syscall per event.

use std::io::{self, Write};
use std::net::IpAddr;

use crate::engine::Summary;
use crate::event::Transition;
use crate::pipeline::{RecordContext, Sink};
use crate::record::{CloseRecord, LeakRecord, Owner};

#[cfg(test)]
mod fixtures;
mod json;
#[cfg(test)]
mod schema;
mod text;

pub use json::JsonSink;
pub use text::TextSink;

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
    /// What the run traces of resets sent: `reason`, `unnamed` or `none`.
    pub resets: &'static str,
    /// Wall-clock minus monotonic time (ns) at startup: turns `ts_ns` into a date.
    pub realtime_offset_ns: i64,
}

/// What an output format writes besides transitions and records: the run's settings first,
/// the summary last, free-form lines; and it flushes. One type per format implements it.
pub trait FormatSink: Sink {
    /// What `--show` lets through.
    fn show(&self) -> Show;
    /// The run's settings (before any transition).
    fn meta(&mut self, meta: &Meta) -> io::Result<()>;
    /// The exit summary.
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    /// A free-form line, as it is (a newline is added when it has none).
    fn raw_line(&mut self, line: &str) -> io::Result<()>;
    /// Writes out what is buffered.
    fn flush(&mut self) -> io::Result<()>;
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

/// The sink of the format chosen at run time: what front-ends hold. Each method goes to the
/// format's own type.
pub enum Output<W: Write> {
    Text(TextSink<W>),
    Json(JsonSink<W>),
}

impl<W: Write> Output<W> {
    pub fn new(out: W, format: Format, show: Show, realtime_offset_ns: i128) -> Self {
        match format {
            Format::Text => Output::Text(TextSink::new(out, show, realtime_offset_ns)),
            Format::Json => Output::Json(JsonSink::new(out, show)),
        }
    }

    /// Sets the tracer's own network namespace: text output names a socket's namespace only
    /// when it is another one (JSON always has `netns`).
    #[must_use]
    pub fn with_own_netns(self, netns: u32) -> Self {
        match self {
            Output::Text(t) => Output::Text(t.with_own_netns(netns)),
            json => json,
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Output::Text(_) => Format::Text,
            Output::Json(_) => Format::Json,
        }
    }

    pub fn show(&self) -> Show {
        self.sink_ref().show()
    }

    /// The run's settings, as the first line of a JSON recording; nothing in text mode.
    pub fn meta(&mut self, meta: &Meta) -> io::Result<()> {
        self.sink().meta(meta)
    }

    /// The exit summary: one `summary` line in JSON, a table in text.
    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.sink().summary(summary)
    }

    /// Sets the wall-clock minus monotonic offset used to print times in text mode (a replay
    /// learns it from the recording's meta line).
    pub fn set_realtime_offset_ns(&mut self, offset_ns: i128) {
        if let Output::Text(t) = self {
            t.set_realtime_offset_ns(offset_ns);
        }
    }

    /// Writes a free-form line (notices).
    pub fn raw_line(&mut self, line: &str) -> io::Result<()> {
        self.sink().raw_line(line)
    }

    /// A transition, with the socket's owner when known.
    pub fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        self.sink().transition(t, owner)
    }

    /// A close record.
    pub fn close(&mut self, r: &CloseRecord, cx: &RecordContext) -> io::Result<()> {
        self.sink().close(r, cx)
    }

    /// A CLOSE_WAIT leak.
    pub fn leak(&mut self, r: &LeakRecord, cx: &RecordContext) -> io::Result<()> {
        self.sink().leak(r, cx)
    }

    /// A reset this host sent.
    pub fn reset(&mut self, r: &crate::rst::ResetSent) -> io::Result<()> {
        self.sink().reset(r)
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.sink().flush()
    }

    /// Gives back the writer (tests).
    pub fn into_inner(self) -> W {
        match self {
            Output::Text(t) => t.into_inner(),
            Output::Json(j) => j.into_inner(),
        }
    }

    fn sink(&mut self) -> &mut dyn FormatSink {
        match self {
            Output::Text(t) => t,
            Output::Json(j) => j,
        }
    }

    fn sink_ref(&self) -> &dyn FormatSink {
        match self {
            Output::Text(t) => t,
            Output::Json(j) => j,
        }
    }
}

impl<W: Write> Sink for Output<W> {
    fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        Output::transition(self, t, owner)
    }

    fn close(&mut self, c: &CloseRecord, cx: &RecordContext) -> io::Result<()> {
        Output::close(self, c, cx)
    }

    fn leak(&mut self, l: &LeakRecord, cx: &RecordContext) -> io::Result<()> {
        Output::leak(self, l, cx)
    }

    fn reset(&mut self, r: &crate::rst::ResetSent) -> io::Result<()> {
        Output::reset(self, r)
    }
}

/// A close's time per state, as (state name, ns), in kernel order, for the states seen.
fn dwell_pairs(d: &crate::record::Dwell) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    crate::event::TcpState::ALL
        .into_iter()
        .filter_map(|st| d[st.index()].map(|v| (st.name(), v)))
}

/// A duration in ns, printed with a readable unit: `850ns`, `12.3µs`, `4.56ms`, `2.10s`,
/// `3m04s`, `2h05m`.
pub struct Dur(pub u64);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut b = StackStr::new();
        let _ = dur_into(&mut b, self.0);
        f.pad(b.as_str())
    }
}

/// Writes `n` in decimal, by hand (no formatting machinery: this runs for most lines).
pub(crate) fn dec_into<W: std::fmt::Write + ?Sized>(out: &mut W, n: u64) -> std::fmt::Result {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // SAFETY: `buf[i..]` holds only ASCII digits, which are valid UTF-8.
    out.write_str(unsafe { std::str::from_utf8_unchecked(&buf[i..]) })
}

/// Writes `n` in decimal with at least `width` digits (zeros in front).
pub(crate) fn dec_zeros_into<W: std::fmt::Write + ?Sized>(
    out: &mut W,
    n: u64,
    width: usize,
) -> std::fmt::Result {
    let mut digits = 1;
    let mut m = n;
    while m >= 10 {
        m /= 10;
        digits += 1;
    }
    for _ in digits..width {
        out.write_str("0")?;
    }
    dec_into(out, n)
}

/// `q.ddd` with `decimals` digits after the point, of `ns / 10^decimals / unit` where
/// `div = unit / 10^decimals`, rounded to nearest; `None` on an exact tie, whose rounding is
/// the float formatter's (half to even of the binary value) and is left to it.
fn fixed_into<W: std::fmt::Write + ?Sized>(
    out: &mut W,
    ns: u64,
    div: u64,
    decimals: u32,
) -> Option<std::fmt::Result> {
    let (mut q, r) = (ns / div, ns % div);
    if r * 2 == div {
        return None;
    }
    if r * 2 > div {
        q += 1;
    }
    let scale = 10u64.pow(decimals);
    Some(
        dec_into(out, q / scale)
            .and_then(|()| out.write_str("."))
            .and_then(|()| dec_zeros_into(out, q % scale, decimals as usize)),
    )
}

/// [`Dur`]'s text, unpadded: integer arithmetic, the same digits as the float formatting it
/// replaces (`{:.1}µs`, `{:.2}ms`, `{:.2}s`; an exact tie goes to the float formatter, whose
/// rounding of the binary value decides it: away from a tie the two agree, as the float's
/// error, below 10^-14 here, is far smaller than the 1 ns steps).
pub(crate) fn dur_into<W: std::fmt::Write + ?Sized>(out: &mut W, ns: u64) -> std::fmt::Result {
    if ns < 1_000 {
        dec_into(out, ns)?;
        return out.write_str("ns");
    }
    let (div, decimals, unit, scale) = if ns < 1_000_000 {
        (100, 1, "µs", 1e3)
    } else if ns < 1_000_000_000 {
        (10_000, 2, "ms", 1e6)
    } else if ns < 60_000_000_000 {
        (10_000_000, 2, "s", 1e9)
    } else if ns < 3_600_000_000_000 {
        let s = ns / 1_000_000_000;
        dec_into(out, s / 60)?;
        out.write_str("m")?;
        dec_zeros_into(out, s % 60, 2)?;
        return out.write_str("s");
    } else {
        let m = ns / 60_000_000_000;
        dec_into(out, m / 60)?;
        out.write_str("h")?;
        dec_zeros_into(out, m % 60, 2)?;
        return out.write_str("m");
    };
    match fixed_into(out, ns, div, decimals) {
        Some(r) => r?,
        None => write!(out, "{:.*}", decimals as usize, ns as f64 / scale)?,
    }
    out.write_str(unit)
}

/// A small string on the stack, for formatting a column before padding it (no allocation).
#[derive(Clone, Copy)]
pub(crate) struct StackStr {
    buf: [u8; 80],
    len: usize,
}

impl Default for StackStr {
    fn default() -> Self {
        Self::new()
    }
}

impl StackStr {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; 80],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Dur` printed before its digits were written by hand.
    fn dur_by_float(ns: u64) -> String {
        if ns < 1_000 {
            format!("{ns}ns")
        } else if ns < 1_000_000 {
            format!("{:.1}µs", ns as f64 / 1e3)
        } else if ns < 1_000_000_000 {
            format!("{:.2}ms", ns as f64 / 1e6)
        } else if ns < 60_000_000_000 {
            format!("{:.2}s", ns as f64 / 1e9)
        } else if ns < 3_600_000_000_000 {
            let s = ns / 1_000_000_000;
            format!("{}m{:02}s", s / 60, s % 60)
        } else {
            let m = ns / 60_000_000_000;
            format!("{}h{:02}m", m / 60, m % 60)
        }
    }

    #[test]
    fn durations_by_hand_match_the_float_formatting() {
        let mut values: Vec<u64> = vec![0, 1, 999, 1_000, 1_049, 1_050, 1_150, 1_250, 1_350];
        // Around every unit boundary and rounding edge.
        for edge in [
            1_000u64,
            1_000_000,
            1_000_000_000,
            60_000_000_000,
            3_600_000_000_000,
        ] {
            for d in 0..200 {
                values.extend([edge.saturating_sub(d), edge + d]);
            }
        }
        for div in [100u64, 10_000, 10_000_000] {
            for q in [1u64, 7, 99, 999, 5_999] {
                for d in [0u64, 1] {
                    values.extend([q * div + div / 2 - d, q * div + div / 2 + d]);
                }
            }
        }
        // And a spread of others (a fixed LCG: the same values every run).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            values.push(x >> (x % 40 + 16));
        }
        values.push(u64::MAX);
        for ns in values {
            let mut got = String::new();
            dur_into(&mut got, ns).unwrap();
            assert_eq!(got, dur_by_float(ns), "{ns} ns");
            assert_eq!(Dur(ns).to_string(), got);
        }
        let mut d = String::new();
        dec_zeros_into(&mut d, 7, 6).unwrap();
        dec_into(&mut d, u64::MAX).unwrap();
        assert_eq!(d, "00000718446744073709551615");
    }
    use crate::event::Family;
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
            idle: crate::event::Idle::NONE,
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
