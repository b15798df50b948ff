//! Replay of a JSON Lines recording (`tracer --json > FILE`) through the engine.
//!
//! Consumes lines; `"type":"transition"` lines are parsed into [`Transition`]s (plus the owner,
//! when the line names one) and fed to the per-event path ([`Pipeline`], the same as live); a
//! first `"type":"meta"` line gives the
//! live run's settings (threshold, capacity), used unless the command line overrides them;
//! lines of other types (close, close_wait_leak, summary, …) are not input and are skipped
//! silently; malformed lines are reported with their line number and skipped. Produces the
//! path's records through a [`Sink`], and [`ReplayStats`]. Never panics on any input.
//!
//! # Untrusted input
//! - **Memory does not grow with line length**: a line longer than [`MAX_LINE_BYTES`] is read
//!   through to its newline without being kept, reported with its number and counted
//!   ([`ReplayStats::long_lines`]). A UTF-8 byte-order mark on the first line is ignored.
//! - **Time comes from the input**, which need not be monotonic the way the kernel's clock is.
//!   The engine stays pure and trusts its timestamps (live, they are CLOCK_MONOTONIC); the
//!   replayer guards them before they reach it:
//!   - *A jump ahead*: a transition more than [`JUMP_NS`] after the input's clock, followed by
//!     one that comes back below it (or, at the end of the input, more than the span read so
//!     far after it), is an outlier: it is fed at the clock instead of its own time (its states
//!     still count) and counted ([`ReplayStats::time_jumps`]). A jump that the next transition
//!     confirms is a real pause of the recording and is kept.
//!   - *The clock going back* by more than [`BACK_NS`] (or the threshold, if smaller), or a
//!     `meta` line after transitions, means a new recording starts (two files concatenated): the
//!     sockets tracked so far are forgotten without a record (counted in
//!     [`ReplayStats::restart_forgotten`]), and the new part's times are shifted to continue
//!     from the engine clock, so every part reports what it reports alone
//!     ([`ReplayStats::restarts`]). Records carry their part's own timestamps. A smaller step
//!     back is left to the engine, which drops and counts a socket's event older than its last
//!     (`out_of_order`, `stale_dropped`).
//!
//! Time: the engine advances with each transition's `ts_ns`. Before feeding a transition, the
//! replayer ticks the engine at every leak due time up to that transition's `ts_ns`, so a leak
//! record carries the exact moment its threshold was crossed (live, a leak fires at the first
//! tick after it, so within one tick interval of the same moment). At the end of the input (and
//! of each part) no time is invented: sockets not yet over the threshold at the last event do
//! not leak.

use std::borrow::Cow;
use std::io::{self, BufRead, Read as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{DEFAULT_CAPACITY, DEFAULT_CLOSE_WAIT_THRESHOLD, ReplayConfig};
use crate::engine::{EngineConfig, Summary};
use crate::event::{Comm, Family, TcpState, Transition};
use crate::output::Output;
use crate::pipeline::{Pipeline, PipelineConfig, RecordContext, Sink};
use crate::record::{CloseRecord, LeakRecord, Owner, OwnerSource};

/// Longest input line kept, in bytes (without its newline); longer ones are skipped.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A transition this far (ns) ahead of the input's clock is a jump candidate.
pub const JUMP_NS: u64 = 1_000_000_000;

/// The clock going back by more than this (ns), or by the close-wait threshold if smaller,
/// starts a new part of the input.
pub const BACK_NS: u64 = 1_000_000_000;

/// Counts of one replay. `lines = transitions + other_lines + skipped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    /// Lines read (including blank ones).
    pub lines: u64,
    /// Transition lines fed to the engine.
    pub transitions: u64,
    /// Lines that are not input: meta and other record types, and blank lines.
    pub other_lines: u64,
    /// Of `other_lines`, the blank ones.
    pub blank_lines: u64,
    /// Lines that could not be used: malformed (reported through `on_error`), or too long.
    pub skipped: u64,
    /// Of `skipped`, lines longer than [`MAX_LINE_BYTES`].
    pub long_lines: u64,
    /// Transitions whose timestamp jumped ahead and back, fed at the clock instead.
    pub time_jumps: u64,
    /// Times the input started over (the clock went back, or a meta line after transitions).
    pub restarts: u64,
    /// Sockets tracked when the input started over, forgotten without a record.
    pub restart_forgotten: u64,
}

impl ReplayStats {
    /// Lines that held a record (meta, transition or any other type).
    pub fn records(&self) -> u64 {
        self.transitions + self.other_lines - self.blank_lines
    }

    /// Adds the replay's counts to an engine summary.
    pub fn fill(&self, s: &mut Summary) {
        s.skipped_lines = Some(self.skipped);
        s.long_lines = Some(self.long_lines);
        s.time_jumps = Some(self.time_jumps);
        s.restarts = Some(self.restarts);
        s.restart_forgotten = Some(self.restart_forgotten);
    }
}

/// Why a line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not JSON, not an object, or a field of the wrong type (or missing).
    #[error("invalid json at column {column}: {message}")]
    Json { column: usize, message: String },
    /// A JSON object without a string `"type"`.
    #[error("missing \"type\" field")]
    MissingType,
    /// `sk` is not a `0x`-prefixed hexadecimal u64.
    #[error("invalid sk {value:?}: expected a 0x-prefixed hex number")]
    Sk { value: String },
    /// `family` is neither 4 nor 6.
    #[error("invalid family {value}: expected 4 or 6")]
    Family { value: u64 },
    /// An address field does not parse as IPv4 or IPv6.
    #[error("invalid address in {field}: {value:?}")]
    Addr { field: &'static str, value: String },
    /// A state field is not a TCP state name.
    #[error("unknown TCP state in {field}: {value:?}")]
    State { field: &'static str, value: String },
    /// A reset reason that is not a name (empty, too long, or not printable ASCII).
    #[error("invalid reset reason {value:?}")]
    Reason { value: String },
    /// `owner_source` is not a known source name.
    #[error("unknown owner_source {value:?}")]
    OwnerSource { value: String },
    /// Valid JSON, but not an object (an array, a number, a string…).
    #[error("invalid json: expected a JSON object")]
    NotObject,
    /// Longer than [`MAX_LINE_BYTES`]; not read into memory.
    #[error("line of {bytes} bytes is longer than the limit of {MAX_LINE_BYTES} bytes")]
    TooLong { bytes: u64 },
}

impl LineError {
    /// Anything but a JSON object is refused before serde sees it (serde would read a JSON
    /// array as a struct's fields in order): named for what it is, or the JSON error.
    fn check_object(line: &[u8]) -> Result<(), Self> {
        if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return Ok(());
        }
        Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => LineError::NotObject,
                Err(e) => LineError::json(&e),
            },
        )
    }

    /// A serde_json error in the user's words: no Rust type names, no line number (the caller
    /// gives the file's line number).
    fn json(e: &serde_json::Error) -> Self {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let mut message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        for (rust, words) in [
            ("expected u16", "expected an integer from 0 to 65535"),
            ("expected u32", "expected an integer from 0 to 4294967295"),
            ("expected u64", "expected a non-negative integer"),
            ("expected i64", "expected an integer"),
            ("expected a borrowed string", "expected a string"),
            ("expected a boolean", "expected true or false"),
        ] {
            message = message.replace(rust, words);
        }
        LineError::Json {
            column: e.column(),
            message,
        }
    }
}

/// Just the type of a line.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct Probe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// The transition line contract (output/json.rs). Unknown fields are ignored.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
struct Line<'a> {
    ts_ns: u64,
    #[serde(borrow)]
    sk: Cow<'a, str>,
    family: u64,
    #[serde(borrow)]
    saddr: Cow<'a, str>,
    sport: u16,
    #[serde(borrow)]
    daddr: Cow<'a, str>,
    dport: u16,
    #[serde(borrow)]
    old: Cow<'a, str>,
    #[serde(borrow)]
    new: Cow<'a, str>,
    dwell_ns: Option<u64>,
    /// Absent from recordings made before namespaces were reported: 0 (unknown).
    #[serde(default)]
    netns: u32,
    #[serde(default)]
    sk_err: u16,
    /// On transitions to CLOSE of recordings that carry them.
    #[serde(default)]
    idle_rx_ns: Option<u64>,
    #[serde(default)]
    idle_tx_ns: Option<u64>,
    task_pid: u32,
    task_tid: u32,
    #[serde(borrow)]
    task_comm: Cow<'a, str>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(borrow, default)]
    comm: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    owner_source: Option<Cow<'a, str>>,
}

/// The settings a live run recorded in its meta line (docs/output.md). Every field is
/// optional; unknown ones are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct RecordedMeta {
    pub version: Option<String>,
    pub close_wait_threshold_ns: Option<u64>,
    pub capacity: Option<u64>,
    pub pid: Option<u32>,
    pub attach: Option<String>,
    pub realtime_offset_ns: Option<i64>,
    /// `reason`: the recording's kernel named why it sent each reset.
    pub resets: Option<String>,
}

/// One parsed input line.
#[derive(Debug)]
pub enum Parsed {
    /// A transition, and the owner the line names.
    Transition(Transition, Option<Owner>),
    /// The settings of the run that made the recording.
    Meta(RecordedMeta),
    /// A reset the recorded host sent.
    Reset(crate::rst::ResetSent),
    /// A record of another type, or a blank line.
    Other,
}

/// Parses one line of any type.
pub fn parse_any(line: &[u8]) -> Result<Parsed, LineError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Parsed::Other);
    }
    LineError::check_object(line)?;
    let probe: Probe<'_> = serde_json::from_slice(line).map_err(|e| LineError::json(&e))?;
    match probe.kind.as_deref() {
        None => Err(LineError::MissingType),
        Some("transition") => parse_line(line).map(|p| match p {
            Some((t, o)) => Parsed::Transition(t, o),
            None => Parsed::Other,
        }),
        Some("meta") => serde_json::from_slice(line)
            .map(Parsed::Meta)
            .map_err(|e| LineError::json(&e)),
        Some("reset_sent") => parse_reset(line).map(Parsed::Reset),
        Some(_) => Ok(Parsed::Other),
    }
}

/// A `reset_sent` line (docs/output.md).
#[derive(Deserialize)]
struct ResetLine<'a> {
    ts_ns: u64,
    #[serde(borrow)]
    sk: Cow<'a, str>,
    #[serde(default)]
    netns: u32,
    family: u64,
    #[serde(borrow)]
    saddr: Cow<'a, str>,
    sport: u16,
    #[serde(borrow)]
    daddr: Cow<'a, str>,
    dport: u16,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Cow<'a, str>,
}

fn parse_reset(line: &[u8]) -> Result<crate::rst::ResetSent, LineError> {
    let l: ResetLine<'_> = serde_json::from_slice(line).map_err(|e| LineError::json(&e))?;
    let family = family_of(l.family)?;
    let sk = sk_of(&l.sk)?;
    let state = l.state.as_ref().map(|v| state_of("state", v)).transpose()?;
    let reason = crate::rst::RstReason::from_name(&l.reason).ok_or_else(|| LineError::Reason {
        value: l.reason.clone().into_owned(),
    })?;
    Ok(crate::rst::ResetSent {
        ts_ns: l.ts_ns,
        sk,
        netns: l.netns,
        state,
        reason,
        family,
        saddr: addr_of("saddr", &l.saddr)?,
        sport: l.sport,
        daddr: addr_of("daddr", &l.daddr)?,
        dport: l.dport,
    })
}

/// A line's `family`: 4 or 6.
fn family_of(value: u64) -> Result<Family, LineError> {
    match value {
        4 => Ok(Family::V4),
        6 => Ok(Family::V6),
        value => Err(LineError::Family { value }),
    }
}

/// A line's `sk`: a 0x-prefixed hex number.
fn sk_of(v: &str) -> Result<u64, LineError> {
    parse_sk(v).ok_or_else(|| LineError::Sk {
        value: v.to_owned(),
    })
}

/// An address field.
fn addr_of(field: &'static str, v: &str) -> Result<IpAddr, LineError> {
    v.parse::<IpAddr>().map_err(|_| LineError::Addr {
        field,
        value: v.to_owned(),
    })
}

/// A state field, as [`TcpState::from_name`] reads it.
fn state_of(field: &'static str, v: &str) -> Result<TcpState, LineError> {
    TcpState::from_name(v).ok_or_else(|| LineError::State {
        field,
        value: v.to_owned(),
    })
}

/// Parses one line: `Ok(Some)` for a transition, `Ok(None)` for any other record type (or a
/// blank line), `Err` when malformed.
pub fn parse_transition_line(line: &str) -> Result<Option<Transition>, LineError> {
    parse_line(line.as_bytes()).map(|o| o.map(|(t, _)| t))
}

/// Like [`parse_transition_line`], also returning the owner the line names (`pid`, `comm`,
/// optional `owner_source`, default `context`), if any.
pub fn parse_line(line: &[u8]) -> Result<Option<(Transition, Option<Owner>)>, LineError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    LineError::check_object(line)?;
    let probe: Probe<'_> = serde_json::from_slice(line).map_err(|e| LineError::json(&e))?;
    match probe.kind.as_deref() {
        None => return Err(LineError::MissingType),
        Some("transition") => {}
        Some(_) => return Ok(None),
    }
    let l: Line<'_> = serde_json::from_slice(line).map_err(|e| LineError::json(&e))?;
    let family = family_of(l.family)?;
    let sk = sk_of(&l.sk)?;
    let t = Transition {
        ts_ns: l.ts_ns,
        sk,
        family,
        saddr: addr_of("saddr", &l.saddr)?,
        sport: l.sport,
        daddr: addr_of("daddr", &l.daddr)?,
        dport: l.dport,
        old: state_of("old", &l.old)?,
        new: state_of("new", &l.new)?,
        dwell_ns: l.dwell_ns,
        netns: l.netns,
        sk_err: l.sk_err,
        task_pid: l.task_pid,
        task_tid: l.task_tid,
        task_comm: Comm::new(&l.task_comm),
        idle: crate::event::Idle {
            rx_ns: l.idle_rx_ns,
            tx_ns: l.idle_tx_ns,
        },
    };
    let owner = match l.pid {
        None => None,
        Some(pid) => {
            let source = match l.owner_source.as_deref() {
                None | Some("context") => OwnerSource::Context,
                Some("listener") => OwnerSource::Listener,
                Some("inode") => OwnerSource::Inode,
                Some("shared") => OwnerSource::Shared,
                Some(other) => {
                    return Err(LineError::OwnerSource {
                        value: other.to_owned(),
                    });
                }
            };
            Some(Owner {
                pid,
                comm: Comm::new(l.comm.as_deref().unwrap_or("")),
                source,
            })
        }
    };
    Ok(Some((t, owner)))
}

fn parse_sk(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// What [`read_line_capped`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineRead {
    Eof,
    /// A line (in the buffer, with its newline if it had one).
    Line,
    /// A line of this many bytes (newline included), longer than the limit: consumed, not kept.
    TooLong(u64),
}

/// Reads one line into `buf`, keeping at most `max` bytes of it (plus the newline); a longer
/// line is read through to its newline without being kept. Memory: `buf` never grows past
/// about twice `max`. (std's `read_until` and `skip_until` search with its optimised memchr.)
fn read_line_capped<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<LineRead> {
    buf.clear();
    let limit = max as u64 + 1;
    let n = (&mut *r).take(limit).read_until(b'\n', buf)? as u64;
    if n == 0 {
        return Ok(LineRead::Eof);
    }
    if buf.last() == Some(&b'\n') || n < limit {
        return Ok(LineRead::Line);
    }
    buf.clear();
    let rest = r.skip_until(b'\n')? as u64;
    Ok(LineRead::TooLong(n + rest))
}

/// A transition held back until the next one tells whether its timestamp is an outlier.
#[derive(Clone, Copy)]
struct Held {
    t: Transition,
    owner: Option<Owner>,
}

/// The guard between the input's timestamps and the engine (see the module documentation).
struct Clock {
    /// Input time of the last transition fed in the current part.
    last_in: Option<u64>,
    /// Input time of the first transition of the current part.
    part_start_in: u64,
    /// Added to the current part's input times to get the engine's times.
    offset: u64,
    /// A new part starts at the next transition (a meta line after transitions).
    restart_pending: bool,
    /// Step back tolerated within a part.
    back_ns: u64,
    held: Option<Held>,
}

/// Passes what the path produces on to the front-end's sink with the input's own timestamps
/// (the path runs on the replay clock, which continues across parts of the input).
struct Shifted<'a, S> {
    sink: &'a mut S,
    offset: u64,
}

impl<S: Sink> Sink for Shifted<'_, S> {
    fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        let mut t = *t;
        t.ts_ns = t.ts_ns.saturating_sub(self.offset);
        self.sink.transition(&t, owner)
    }

    fn close(&mut self, c: &CloseRecord, cx: &RecordContext) -> io::Result<()> {
        let mut c = *c;
        c.ts_ns = c.ts_ns.saturating_sub(self.offset);
        self.sink.close(&c, cx)
    }

    fn leak(&mut self, l: &LeakRecord, cx: &RecordContext) -> io::Result<()> {
        let mut l = *l;
        l.ts_ns = l.ts_ns.saturating_sub(self.offset);
        self.sink.leak(&l, cx)
    }

    fn reset(&mut self, r: &crate::rst::ResetSent) -> io::Result<()> {
        let mut r = *r;
        r.ts_ns = r.ts_ns.saturating_sub(self.offset);
        self.sink.reset(&r)
    }
}

/// Drives the path over the input's transitions.
struct Replayer<'a, S> {
    path: Pipeline,
    stats: ReplayStats,
    clock: Clock,
    sink: &'a mut S,
}

impl<'a, S: Sink> Replayer<'a, S> {
    fn new(path: Pipeline, stats: ReplayStats, sink: &'a mut S) -> Self {
        let back_ns = BACK_NS.min(path.engine().config().close_wait_threshold_ns.max(1));
        Replayer {
            path,
            stats,
            clock: Clock {
                last_in: None,
                part_start_in: 0,
                offset: 0,
                restart_pending: false,
                back_ns,
                held: None,
            },
            sink,
        }
    }

    /// One transition from the input, in input time.
    fn transition(&mut self, t: Transition, owner: Option<Owner>) -> io::Result<()> {
        self.stats.transitions += 1;
        if let Some(h) = self.clock.held.take() {
            if t.ts_ns.saturating_add(JUMP_NS) < h.t.ts_ns {
                // It jumped ahead, and this one came back: an outlier.
                self.outlier(h)?;
            } else {
                self.feed(h.t, h.owner, h.t.ts_ns)?;
            }
        }
        if self.clock.restart_pending {
            self.restart(t.ts_ns);
        }
        match self.clock.last_in {
            None => {
                self.clock.part_start_in = t.ts_ns;
                self.feed(t, owner, t.ts_ns)
            }
            Some(prev) if t.ts_ns > prev.saturating_add(JUMP_NS) => {
                self.clock.held = Some(Held { t, owner });
                Ok(())
            }
            Some(prev) if t.ts_ns.saturating_add(self.clock.back_ns) < prev => {
                self.restart(t.ts_ns);
                self.feed(t, owner, t.ts_ns)
            }
            Some(_) => self.feed(t, owner, t.ts_ns),
        }
    }

    /// A reset line, fed at once in the current part's time.
    fn reset(&mut self, mut r: crate::rst::ResetSent) -> io::Result<()> {
        r.ts_ns = r.ts_ns.saturating_add(self.clock.offset);
        let mut sink = Shifted {
            sink: &mut *self.sink,
            offset: self.clock.offset,
        };
        self.path.on_reset(&r, &mut sink)
    }

    /// A meta line: before any transition, nothing to do (the caller applied it); after
    /// transitions, a new recording begins.
    fn meta(&mut self) {
        if self.clock.last_in.is_some() || self.clock.held.is_some() {
            self.clock.restart_pending = true;
        }
    }

    /// End of input: a transition still held is judged against the span read so far.
    fn finish(&mut self) -> io::Result<()> {
        if let Some(h) = self.clock.held.take() {
            let prev = self.clock.last_in.unwrap_or(h.t.ts_ns);
            let span = prev.saturating_sub(self.clock.part_start_in);
            if h.t.ts_ns - prev > span.max(JUMP_NS) {
                self.outlier(h)?;
            } else {
                self.feed(h.t, h.owner, h.t.ts_ns)?;
            }
        }
        Ok(())
    }

    fn outlier(&mut self, h: Held) -> io::Result<()> {
        self.stats.time_jumps += 1;
        let at = self
            .path
            .engine()
            .clock_ns()
            .saturating_sub(self.clock.offset);
        self.feed(h.t, h.owner, at)
    }

    /// The input starts over at input time `first_in`: forget the sockets of the part before
    /// and continue the path's clock from where it is.
    fn restart(&mut self, first_in: u64) {
        self.clock.restart_pending = false;
        if self.clock.last_in.is_none() {
            return;
        }
        self.stats.restarts += 1;
        self.stats.restart_forgotten += self.path.forget_all();
        self.clock.offset = self.path.engine().clock_ns().saturating_sub(first_in);
        self.clock.part_start_in = first_in;
        self.clock.last_in = None;
    }

    /// Feeds `t` at input time `at_in`, after ticking the path at every leak due time up to
    /// it; what comes out goes to the sink with input times.
    fn feed(&mut self, mut t: Transition, owner: Option<Owner>, at_in: u64) -> io::Result<()> {
        self.clock.last_in = Some(self.clock.last_in.map_or(at_in, |l| l.max(at_in)));
        t.ts_ns = at_in.saturating_add(self.clock.offset);
        let mut sink = Shifted {
            sink: &mut *self.sink,
            offset: self.clock.offset,
        };
        // The engine fires everything due at or before its clock after every call, so each
        // `due` here is ahead of the clock and each tick fires at least one leak.
        while let Some(due) = self.path.next_leak_due_ns() {
            let at = due.max(self.path.engine().clock_ns());
            if at > t.ts_ns {
                break;
            }
            self.path.tick(at, &mut sink)?;
        }
        self.path.on_transition(&t, owner, &mut sink)
    }
}

/// Engine settings given on the command line; what is not given comes from the recording's
/// meta line, then from the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub close_wait_threshold_ns: Option<u64>,
    pub capacity: Option<usize>,
}

/// What a replay ends with.
pub struct Replayed {
    /// The path, holding the engine's final state (for the summary).
    pub path: Pipeline,
    pub stats: ReplayStats,
    /// The recording's meta line, if it had one before its first transition.
    pub meta: Option<RecordedMeta>,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The input could not be read.
    #[error("read error")]
    Read(#[source] io::Error),
    /// The sink could not write.
    #[error("write error")]
    Write(#[source] io::Error),
}

/// Runs a recording through a new per-event path whose engine is configured by `overrides`,
/// then the recording's meta line (if it comes before the first transition), then the
/// defaults. Calls `on_meta` for that meta line (with the sink, before anything is written to
/// it); the sink gets every record (and transition, if it shows them) with the input's
/// timestamps; `on_error(line_number, error)` (1-based) is called for every line that cannot be
/// used, and the rest of the input still runs. An owner named on a transition line is given to
/// the path as a hint, so records carry it as they did live. Fails on a read or write error.
pub fn replay<R: BufRead, S: Sink>(
    mut input: R,
    overrides: Overrides,
    mut on_meta: impl FnMut(&RecordedMeta, &mut S),
    sink: &mut S,
    mut on_error: impl FnMut(u64, &LineError),
) -> Result<Replayed, ReplayError> {
    let mut buf = Vec::with_capacity(512);
    let mut stats = ReplayStats::default();
    let mut meta: Option<RecordedMeta> = None;
    // Lines before the first transition: meta and others, handled before the path exists.
    // The first event line (a transition or a reset), fed once the path exists.
    let mut first: Option<Parsed> = None;
    loop {
        match next_line(&mut input, &mut buf, &mut stats, &mut on_error)
            .map_err(ReplayError::Read)?
        {
            None => break,
            Some(p @ (Parsed::Transition(..) | Parsed::Reset(_))) => {
                first = Some(p);
                break;
            }
            Some(Parsed::Meta(m)) => {
                if meta.is_none() {
                    on_meta(&m, sink);
                    meta = Some(m);
                }
            }
            Some(Parsed::Other) => {}
        }
    }
    let engine = EngineConfig {
        close_wait_threshold_ns: overrides
            .close_wait_threshold_ns
            .or(meta.as_ref().and_then(|m| m.close_wait_threshold_ns))
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_CLOSE_WAIT_THRESHOLD.as_nanos() as u64),
        capacity: overrides
            .capacity
            .or(meta
                .as_ref()
                .and_then(|m| m.capacity)
                .and_then(|c| usize::try_from(c).ok()))
            .filter(|&c| c > 0)
            .unwrap_or(DEFAULT_CAPACITY),
    };
    let path = Pipeline::offline(PipelineConfig {
        engine,
        ..PipelineConfig::default()
    });
    let mut path = path;
    path.set_reset_reasons(meta.as_ref().and_then(|m| m.resets.as_deref()) == Some("reason"));
    let mut r = Replayer::new(path, stats, sink);
    if let Some(p) = first {
        match p {
            Parsed::Transition(t, o) => r.transition(t, o).map_err(ReplayError::Write)?,
            Parsed::Reset(e) => r.reset(e).map_err(ReplayError::Write)?,
            Parsed::Meta(_) | Parsed::Other => {}
        }
        loop {
            match next_line(&mut input, &mut buf, &mut r.stats, &mut on_error)
                .map_err(ReplayError::Read)?
            {
                None => break,
                Some(Parsed::Transition(t, o)) => r.transition(t, o).map_err(ReplayError::Write)?,
                Some(Parsed::Meta(_)) => r.meta(),
                Some(Parsed::Reset(e)) => r.reset(e).map_err(ReplayError::Write)?,
                Some(Parsed::Other) => {}
            }
        }
    }
    r.finish().map_err(ReplayError::Write)?;
    {
        let mut sink = Shifted {
            sink: &mut *r.sink,
            offset: r.clock.offset,
        };
        r.path.finish(&mut sink).map_err(ReplayError::Write)?;
    }
    Ok(Replayed {
        path: r.path,
        stats: r.stats,
        meta,
    })
}

/// Reads and parses the next line, counting it. `None` at the end of the input; unusable lines
/// are reported, counted and passed over.
fn next_line<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    stats: &mut ReplayStats,
    on_error: &mut impl FnMut(u64, &LineError),
) -> io::Result<Option<Parsed>> {
    loop {
        let read = read_line_capped(input, buf, MAX_LINE_BYTES)?;
        if read == LineRead::Eof {
            return Ok(None);
        }
        stats.lines += 1;
        if let LineRead::TooLong(bytes) = read {
            stats.skipped += 1;
            stats.long_lines += 1;
            on_error(stats.lines, &LineError::TooLong { bytes });
            continue;
        }
        let mut line = &buf[..];
        if stats.lines == 1 {
            line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
        }
        match parse_any(line) {
            Ok(p) => {
                if !matches!(p, Parsed::Transition(..)) {
                    stats.other_lines += 1;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        stats.blank_lines += 1;
                    }
                }
                return Ok(Some(p));
            }
            Err(e) => {
                stats.skipped += 1;
                on_error(stats.lines, &e);
            }
        }
    }
}

/// Why `tracer replay` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The recording could not be opened.
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the recording failed.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("writing output")]
    Write(#[source] io::Error),
    /// Not one line of the input held a record.
    #[error(
        "{path}: no record could be read ({lines} lines, {skipped} unusable); is it a recording made with `tracer --json`?"
    )]
    NothingRead {
        path: PathBuf,
        lines: u64,
        skipped: u64,
    },
}

/// `tracer replay`: prints the records and the summary of a recording. Fails (exit status 1)
/// on an I/O error, and when no line of the input held a record (an empty input, or every
/// line unusable), after printing the summary.
pub fn run(cfg: &ReplayConfig) -> Result<ReplayStats, RunError> {
    let path = cfg.file.as_path();
    let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(io::BufReader::with_capacity(1 << 16, io::stdin().lock()))
    } else {
        let f = std::fs::File::open(path).map_err(|source| RunError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Box::new(io::BufReader::with_capacity(1 << 16, f))
    };
    let overrides = Overrides {
        close_wait_threshold_ns: cfg
            .close_wait_threshold
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        capacity: cfg.capacity,
    };
    let mut out = Output::new(io::stdout().lock(), cfg.format, cfg.show, 0);
    let replayed = replay(
        input,
        overrides,
        |m, out: &mut Output<_>| {
            if let Some(off) = m.realtime_offset_ns {
                out.set_realtime_offset_ns(i128::from(off));
            }
        },
        &mut out,
        |line, err| eprintln!("tracer: {}: line {line}: {err}", path.display()),
    )
    .map_err(|e| match e {
        ReplayError::Read(source) => RunError::Read {
            path: path.to_path_buf(),
            source,
        },
        ReplayError::Write(source) => RunError::Write(source),
    })?;
    let stats = replayed.stats;
    let mut summary = replayed.path.summary(replayed.path.engine().clock_ns());
    stats.fill(&mut summary);
    out.summary(&summary).map_err(RunError::Write)?;
    out.flush().map_err(RunError::Write)?;
    report_counts(path, &stats);
    if stats.records() == 0 {
        return Err(RunError::NothingRead {
            path: path.to_path_buf(),
            lines: stats.lines,
            skipped: stats.skipped,
        });
    }
    Ok(stats)
}

/// One stderr line per kind of input trouble, so none goes unnoticed.
fn report_counts(path: &Path, s: &ReplayStats) {
    let p = path.display();
    if s.skipped > 0 {
        eprintln!(
            "tracer: {p}: skipped {} unusable line(s) of {} ({} too long)",
            s.skipped, s.lines, s.long_lines
        );
    }
    if s.time_jumps > 0 {
        eprintln!(
            "tracer: {p}: {} transition(s) jumped ahead in time and back; fed at the clock instead",
            s.time_jumps
        );
    }
    if s.restarts > 0 {
        eprintln!(
            "tracer: {p}: the input started over {} time(s) (clock went back, or a new meta line); {} socket(s) of the earlier part(s) forgotten",
            s.restarts, s.restart_forgotten
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CloseKind, Record};
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn line(ts: u64, sk: u64, old: &str, new: &str, extra: &str) -> String {
        format!(
            r#"{{"type":"transition","ts_ns":{ts},"sk":"0x{sk:x}","family":4,"saddr":"127.0.0.1","sport":40000,"daddr":"127.0.0.1","dport":80,"old":"{old}","new":"{new}","dwell_ns":null,"task_pid":1,"task_tid":2,"task_comm":"curl"{extra}}}"#
        )
    }

    fn path() -> Pipeline {
        Pipeline::offline(PipelineConfig {
            engine: EngineConfig {
                capacity: 100,
                close_wait_threshold_ns: 30 * S,
            },
            ..PipelineConfig::default()
        })
    }

    /// Collects the records a replay produces.
    #[derive(Default)]
    struct Recs(Vec<Record>);

    impl Sink for Recs {
        fn transition(&mut self, _: &Transition, _: Option<&Owner>) -> io::Result<()> {
            Ok(())
        }
        fn close(&mut self, c: &CloseRecord, _: &RecordContext) -> io::Result<()> {
            self.0.push(Record::Close(*c));
            Ok(())
        }
        fn leak(&mut self, l: &LeakRecord, _: &RecordContext) -> io::Result<()> {
            self.0.push(Record::Leak(*l));
            Ok(())
        }
    }

    const OVERRIDES: Overrides = Overrides {
        close_wait_threshold_ns: Some(30 * S),
        capacity: Some(100),
    };

    /// Replays `input` with `ov`: the outcome, the records, the errors (line, message).
    fn replay_with(input: &[u8], ov: Overrides) -> (Replayed, Vec<Record>, Vec<(u64, String)>) {
        let mut recs = Recs::default();
        let mut errs = Vec::new();
        let r = replay(
            input,
            ov,
            |_, _| {},
            &mut recs,
            |n, err| errs.push((n, err.to_string())),
        )
        .unwrap();
        (r, recs.0, errs)
    }

    fn run(input: &str) -> (ReplayStats, Vec<Record>, Vec<(u64, String)>) {
        let (r, recs, errs) = replay_with(input.as_bytes(), OVERRIDES);
        r.path.engine().check_internal();
        (r.stats, recs, errs)
    }

    /// Replays bytes, ignoring what comes out (for the property tests).
    fn run_bytes(input: &[u8]) -> ReplayStats {
        replay_with(input, OVERRIDES).0.stats
    }

    #[test]
    fn parses_the_contract() {
        let l = r#"{"type":"transition","ts_ns":5,"sk":"0xffff888012345678","family":6,"saddr":"::ffff:1.2.3.4","sport":1,"daddr":"::1","dport":2,"old":"ESTABLISHED","new":"CLOSE_WAIT","dwell_ns":42,"task_pid":7,"task_tid":8,"task_comm":"nginx","pid":9,"comm":"nginx","future_field":[1,2]}"#;
        let (t, o) = parse_line(l.as_bytes()).unwrap().unwrap();
        assert_eq!(t.sk, 0xffff_8880_1234_5678);
        assert_eq!(t.family, Family::V6);
        assert_eq!(crate::event::AddrFmt(t.saddr).to_string(), "::ffff:1.2.3.4");
        assert_eq!((t.old, t.new), (TcpState::Established, TcpState::CloseWait));
        assert_eq!(t.dwell_ns, Some(42));
        assert_eq!((t.task_pid, t.task_tid), (7, 8));
        assert_eq!(t.task_comm.as_str(), "nginx");
        let o = o.unwrap();
        assert_eq!(
            (o.pid, o.comm.as_str().as_ref(), o.source),
            (9, "nginx", OwnerSource::Context)
        );
        // Owner fields may be null.
        let l2 = l.replace(r#""pid":9,"comm":"nginx""#, r#""pid":null,"comm":null"#);
        assert!(parse_line(l2.as_bytes()).unwrap().unwrap().1.is_none());
        assert!(parse_transition_line(l).unwrap().is_some());
    }

    #[test]
    fn other_types_are_not_input() {
        for l in [
            r#"{"type":"close","kind":"active","dwell_ns":{"ESTABLISHED":5}}"#,
            r#"{"type":"close_wait_leak","sk":"0x1"}"#,
            r#"{"type":"summary","transitions":3}"#,
            "",
            "   ",
        ] {
            assert!(parse_transition_line(l).unwrap().is_none(), "{l}");
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        let good = line(1, 1, "CLOSE", "SYN_SENT", "");
        let cases = [
            ("not json".to_owned(), "invalid json"),
            ("[1,2]".to_owned(), "invalid json"),
            (r#"{"ts_ns":1}"#.to_owned(), "missing \"type\""),
            (good.replace(r#""ts_ns":1,"#, ""), "missing field `ts_ns`"),
            (good.replace(r#""sk":"0x1""#, r#""sk":"12""#), "invalid sk"),
            (good.replace(r#""sk":"0x1""#, r#""sk":"0x""#), "invalid sk"),
            (
                good.replace(r#""sk":"0x1""#, r#""sk":"0x1ffffffffffffffff""#),
                "invalid sk",
            ),
            (
                good.replace(r#""family":4"#, r#""family":5"#),
                "invalid family 5",
            ),
            (
                good.replace(r#""saddr":"127.0.0.1""#, r#""saddr":"nope""#),
                "invalid address in saddr",
            ),
            (
                good.replace(r#""old":"CLOSE""#, r#""old":"OPEN""#),
                "unknown TCP state in old",
            ),
            (
                good.replace(r#""sport":40000"#, r#""sport":70000"#),
                "invalid json",
            ),
            (
                good.replace(r#""dwell_ns":null"#, r#""dwell_ns":-1"#),
                "invalid json",
            ),
        ];
        for (l, msg) in cases {
            let err = parse_transition_line(&l).unwrap_err().to_string();
            assert!(err.contains(msg), "{l}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn round_trip_with_errors_and_other_lines() {
        let input = [
            line(1_000, 1, "CLOSE", "SYN_SENT", ""),
            line(2_000, 1, "SYN_SENT", "ESTABLISHED", ""),
            r#"{"type":"summary","closes":0}"#.to_owned(),
            "garbage".to_owned(),
            line(3_000, 1, "ESTABLISHED", "FIN_WAIT1", ""),
            line(4_000, 1, "FIN_WAIT1", "FIN_WAIT2", ""),
            String::new(),
            line(5_000, 1, "FIN_WAIT2", "CLOSE", r#","pid":42,"comm":"curl""#),
            r#"{"type":"close","sk":"0x1"}"#.to_owned(),
            line(6_000, 2, "OOPS", "CLOSE", ""),
        ]
        .join("\n");
        let (st, recs, errs) = run(&input);
        assert_eq!(
            st,
            ReplayStats {
                lines: 10,
                transitions: 5,
                other_lines: 3,
                blank_lines: 1,
                skipped: 2,
                ..ReplayStats::default()
            }
        );
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].0, 4);
        assert_eq!(errs[1].0, 10);
        assert!(errs[1].1.contains("OOPS"));
        assert_eq!(recs.len(), 1);
        let Record::Close(c) = recs[0] else {
            panic!("{recs:?}")
        };
        assert_eq!(c.kind, CloseKind::Active);
        assert_eq!(c.owner.map(|o| o.pid), Some(42));
        assert_eq!(c.lifetime_ns, Some(4_000));
    }

    /// What the JSON output writes, replay reads back: the same records as feeding the engine
    /// directly.
    #[test]
    fn round_trip_through_output() {
        use crate::output::{Format, Output, Show};
        let events: Vec<Transition> = crate::engine::synthetic_stream(300, 16, 5)
            .map(|mut t| {
                // Mix in IPv6 and v4-mapped addresses.
                if t.sk % 3 == 0 {
                    t.family = Family::V6;
                    t.saddr = "::ffff:127.0.0.1".parse().unwrap();
                    t.daddr = "::1".parse().unwrap();
                }
                t
            })
            .collect();
        // Replay is the same path as live: its records equal the path's fed directly.
        let mut direct = path();
        let mut want = Recs::default();
        for t in &events {
            direct.on_transition(t, None, &mut want).unwrap();
        }
        let want = want.0;
        let mut o = Output::new(Vec::new(), Format::Json, Show::ALL, 0);
        for t in &events {
            o.transition(t, None).unwrap();
        }
        let text = o.into_inner();
        let (r, got, errs) = replay_with(&text, OVERRIDES);
        assert_eq!(errs, []);
        let st = r.stats;
        assert_eq!(st.transitions, 3000);
        assert_eq!(
            (st.skipped, st.other_lines, st.time_jumps, st.restarts),
            (0, 0, 0, 0)
        );
        assert_eq!(got, want);
        assert_eq!(r.path.engine().stats(), direct.engine().stats());
    }

    #[test]
    fn leaks_fire_at_their_due_time_and_no_time_is_invented() {
        let input = [
            line(
                S,
                1,
                "ESTABLISHED",
                "CLOSE_WAIT",
                r#","pid":5,"comm":"app""#,
            ),
            line(2 * S, 2, "ESTABLISHED", "CLOSE_WAIT", ""),
            // 100 s later, another socket's event: both leaks fire, at their own due times.
            line(100 * S, 3, "CLOSE", "SYN_SENT", ""),
            line(101 * S, 4, "ESTABLISHED", "CLOSE_WAIT", ""),
        ]
        .join("\n");
        let (st, recs, errs) = run(&input);
        assert!(errs.is_empty());
        assert_eq!(st.transitions, 4);
        let leaks: Vec<_> = recs
            .iter()
            .filter_map(|r| match r {
                Record::Leak(l) => Some(*l),
                Record::Close(_) => None,
            })
            .collect();
        assert_eq!(
            leaks.len(),
            2,
            "socket 4 is not over the threshold at the end"
        );
        assert_eq!(
            (leaks[0].id.sk, leaks[0].ts_ns, leaks[0].age_ns),
            (1, 31 * S, 30 * S)
        );
        assert_eq!(leaks[0].owner.map(|o| o.pid), Some(5));
        assert_eq!((leaks[1].id.sk, leaks[1].ts_ns), (2, 32 * S));
    }

    #[test]
    fn invalid_utf8_is_a_line_error() {
        let mut input = line(1, 1, "CLOSE", "SYN_SENT", "").into_bytes();
        input.extend_from_slice(b"\n{\"type\":\"transition\",\"sk\":\"\xff\"}\n");
        let (r, _, errs) = replay_with(&input, OVERRIDES);
        assert_eq!((r.stats.transitions, r.stats.skipped), (1, 1));
        assert_eq!(errs.iter().map(|e| e.0).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn long_lines_are_skipped_without_being_kept() {
        let mut input = Vec::new();
        input.extend_from_slice(line(1, 1, "CLOSE", "SYN_SENT", "").as_bytes());
        input.push(b'\n');
        input.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE_BYTES));
        input.push(b'\n');
        input.extend_from_slice(line(2, 1, "SYN_SENT", "ESTABLISHED", "").as_bytes());
        // Exactly at the limit is kept (and here malformed), one more byte is too long.
        input.push(b'\n');
        input.extend(std::iter::repeat_n(b' ', MAX_LINE_BYTES));
        input.push(b'\n');
        input.extend(std::iter::repeat_n(b' ', MAX_LINE_BYTES + 1));
        let (r, _, errs) = replay_with(&input, OVERRIDES);
        let st = r.stats;
        assert_eq!(
            (
                st.lines,
                st.transitions,
                st.skipped,
                st.long_lines,
                st.blank_lines
            ),
            (5, 2, 2, 2, 1)
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].0, 2);
        assert!(
            errs[0].1.contains("3145729 bytes is longer than the limit"),
            "{errs:?}"
        );
        assert_eq!(errs[1].0, 5);
        assert_eq!(r.path.engine().state_of(1), Some(TcpState::Established));

        // The buffer never holds more than the limit plus one read.
        let mut reader = io::BufReader::with_capacity(4096, &input[..]);
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        loop {
            let got = read_line_capped(&mut reader, &mut buf, 1000).unwrap();
            assert!(buf.capacity() <= 8192, "{}", buf.capacity());
            if got == LineRead::Eof {
                break;
            }
            seen.push(got);
        }
        assert!(matches!(seen[1], LineRead::TooLong(n) if n == 3 * MAX_LINE_BYTES as u64 + 1));
        assert_eq!(seen.len(), 5);
    }

    #[test]
    fn a_byte_order_mark_is_ignored_on_the_first_line_only() {
        let l = line(1, 1, "CLOSE", "SYN_SENT", "");
        let input = format!("\u{feff}{l}\n\u{feff}{l}\n");
        let (st, _, errs) = run(&input);
        assert_eq!((st.transitions, st.skipped), (1, 1));
        assert_eq!(errs[0].0, 2);
    }

    #[test]
    fn errors_speak_json_not_rust() {
        let good = line(1, 1, "CLOSE", "SYN_SENT", "");
        for (l, want) in [
            ("[1,2]".to_owned(), "invalid json: expected a JSON object"),
            (
                r#"["type","transition"]"#.to_owned(),
                "invalid json: expected a JSON object",
            ),
            ("5".to_owned(), "expected a JSON object"),
            (
                good.replace(r#""sport":40000"#, r#""sport":70000"#),
                "expected an integer from 0 to 65535",
            ),
            (
                good.replace(r#""ts_ns":1"#, r#""ts_ns":"1""#),
                "expected a non-negative integer",
            ),
            (
                r#"{"type":"meta","capacity":-1}"#.to_owned(),
                "expected a non-negative integer",
            ),
            (
                "{\"type\":".to_owned(),
                "invalid json at column 8: EOF while parsing a value",
            ),
        ] {
            let err = parse_any(l.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{l}: {err}");
            for rust in ["struct", "Probe", "Line", "u16", "u64", " at line "] {
                assert!(!err.contains(rust), "{l}: {err}");
            }
        }
    }

    #[test]
    fn the_recordings_settings_apply_unless_overridden() {
        let meta = r#"{"type":"meta","version":"0.1.0","close_wait_threshold_ns":2000000000,"capacity":50,"pid":null,"attach":"tp_btf","baseline":true,"realtime_offset_ns":1700000000000000000}"#;
        let body = [
            line(S, 1, "ESTABLISHED", "CLOSE_WAIT", ""),
            line(2 * S, 2, "CLOSE", "SYN_SENT", ""),
            line(2 * S + S / 2, 2, "SYN_SENT", "ESTABLISHED", ""),
            line(3 * S + 1, 2, "ESTABLISHED", "FIN_WAIT1", ""),
        ]
        .join("\n");
        let input = format!("\u{feff}{meta}\n{body}\n");
        let none = Overrides::default();
        let (r, recs, errs) = replay_with(input.as_bytes(), none);
        assert!(errs.is_empty(), "{errs:?}");
        let m = r.meta.expect("meta");
        assert_eq!(m.close_wait_threshold_ns, Some(2 * S));
        assert_eq!(m.realtime_offset_ns, Some(1_700_000_000_000_000_000));
        assert_eq!(r.path.engine().config().close_wait_threshold_ns, 2 * S);
        assert_eq!(r.path.engine().config().capacity, 50);
        assert_eq!(recs.len(), 1, "leaks at 2 s by the recording's threshold");
        assert_eq!(r.stats.other_lines, 1);
        // The command line wins.
        let (r, recs, _) = replay_with(input.as_bytes(), OVERRIDES);
        assert_eq!(r.path.engine().config().close_wait_threshold_ns, 30 * S);
        assert!(recs.is_empty());
        // Without a meta line: the defaults.
        let (r, _, _) = replay_with(body.as_bytes(), none);
        assert_eq!(
            r.path.engine().config().close_wait_threshold_ns,
            DEFAULT_CLOSE_WAIT_THRESHOLD.as_nanos() as u64
        );
        assert_eq!(r.path.engine().config().capacity, DEFAULT_CAPACITY);
        assert!(r.meta.is_none());
    }

    /// One recording of 3 s starting at `base`, with threshold 1 s:
    /// [`crate::engine::synthetic::leak_recording`] as transition lines.
    fn part(base: u64) -> Vec<String> {
        crate::engine::synthetic::leak_recording(base)
            .iter()
            .map(|&(ts, sk, old, new)| line(ts, sk, old.name(), new.name(), ""))
            .collect()
    }

    const ONE_S: Overrides = Overrides {
        close_wait_threshold_ns: Some(S),
        capacity: Some(1000),
    };

    fn leaks(recs: &[Record]) -> Vec<(u64, u64, u64)> {
        recs.iter()
            .filter_map(|r| match r {
                Record::Leak(l) => Some((l.id.sk, l.ts_ns, l.age_ns)),
                Record::Close(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_recording_appended_to_itself_reports_what_each_copy_reports() {
        let one = part(1_000 * S).join("\n");
        let (alone, alone_recs, _) = replay_with(one.as_bytes(), ONE_S);
        let alone_leaks = leaks(&alone_recs);
        assert_eq!(alone_leaks.len(), 10);
        assert!(alone_leaks.iter().all(|l| l.2 == S), "{alone_leaks:?}");
        assert_eq!(alone.stats.restarts, 0);

        // Appended as is (the clock goes back), and with a meta line heading each copy.
        let meta = r#"{"type":"meta","close_wait_threshold_ns":1000000000}"#;
        for input in [
            format!("{one}\n{one}\n"),
            format!("{meta}\n{one}\n{meta}\n{one}\n"),
        ] {
            let (r, recs, errs) = replay_with(input.as_bytes(), ONE_S);
            assert!(errs.is_empty(), "{errs:?}");
            r.path.engine().check_internal();
            let got = leaks(&recs);
            assert_eq!(got.len(), 20, "{got:?}");
            // The same leaks, at the same (recorded) times, twice.
            assert_eq!(got[..10], alone_leaks[..]);
            assert_eq!(got[10..], alone_leaks[..]);
            let closes = recs.len() - got.len();
            assert_eq!(closes, 2 * (alone_recs.len() - 10));
            assert_eq!(r.stats.restarts, 1);
            // The socket left in CLOSE_WAIT by the first copy is not carried into the second.
            assert_eq!(r.stats.restart_forgotten, 1);
            let s = r.path.engine().summary(r.path.engine().clock_ns());
            assert_eq!(s.leaks, 20);
            assert_eq!((s.out_of_order, s.stale_dropped, s.recycled), (0, 0, 0));
            assert!(s.duration_ns < 7 * S, "{}", s.duration_ns);
        }
    }

    #[test]
    fn a_timestamp_far_ahead_does_not_move_the_clock() {
        let mut lines = part(1_000 * S);
        let (_, alone_recs, _) = replay_with(lines.join("\n").as_bytes(), ONE_S);
        let mid = lines.len() / 2;
        lines.insert(
            mid,
            line(1_000_000_000_000_000_000, 0x400, "CLOSE", "SYN_SENT", ""),
        );
        let (r, recs, errs) = replay_with(lines.join("\n").as_bytes(), ONE_S);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(r.stats.time_jumps, 1);
        assert_eq!(r.stats.restarts, 0);
        assert_eq!(leaks(&recs), leaks(&alone_recs));
        let s = r.path.engine().summary(r.path.engine().clock_ns());
        assert!(s.duration_ns < 4 * S, "{}", s.duration_ns);
        // Its states still count: the socket was born.
        assert_eq!(r.path.engine().state_of(0x400), Some(TcpState::SynSent));

        // The same as the last line: more than the whole span ahead of it.
        let mut lines = part(1_000 * S);
        lines.push(line(
            1_000_000_000_000_000_000,
            0x400,
            "CLOSE",
            "SYN_SENT",
            "",
        ));
        let (r, recs, _) = replay_with(lines.join("\n").as_bytes(), ONE_S);
        assert_eq!(r.stats.time_jumps, 1);
        assert_eq!(leaks(&recs), leaks(&alone_recs));
        // A last event after a pause shorter than the span so far is a real pause.
        let mut lines = part(1_000 * S);
        lines.push(line(
            1_002 * S + S / 2 + 3 * S,
            0x400,
            "CLOSE",
            "SYN_SENT",
            "",
        ));
        let (r, recs, _) = replay_with(lines.join("\n").as_bytes(), ONE_S);
        assert_eq!(r.stats.time_jumps, 0);
        // The socket left in CLOSE_WAIT leaks during that pause.
        assert_eq!(leaks(&recs).len(), 11);
    }

    #[test]
    fn small_steps_back_are_left_to_the_engine() {
        let input = [
            line(10 * S, 1, "CLOSE", "SYN_SENT", ""),
            line(10 * S + 200_000, 1, "SYN_SENT", "ESTABLISHED", ""),
            // 100 µs back: not a new recording; the engine drops it as out of order.
            line(10 * S + 100_000, 1, "ESTABLISHED", "FIN_WAIT1", ""),
            line(10 * S + 300_000, 1, "ESTABLISHED", "FIN_WAIT1", ""),
        ]
        .join("\n");
        let (r, _, _) = replay_with(input.as_bytes(), OVERRIDES);
        assert_eq!((r.stats.restarts, r.stats.time_jumps), (0, 0));
        assert_eq!(r.path.engine().stats().out_of_order, 1);
        assert_eq!(r.path.engine().state_of(1), Some(TcpState::FinWait1));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,400}") {
            let _ = parse_transition_line(&s);
            let st = run_bytes(s.as_bytes());
            prop_assert_eq!(st.lines, st.transitions + st.other_lines + st.skipped);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_line(&b);
            let st = run_bytes(&b);
            prop_assert_eq!(st.lines, st.transitions + st.other_lines + st.skipped);
        }

        #[test]
        fn mutated_transition_lines_never_panic(
            ts in any::<u64>(),
            sk in any::<u64>(),
            old in "[A-Z_]{0,12}",
            cut in 0usize..300,
        ) {
            let l = line(ts, sk, &old, "CLOSE", "");
            let l = &l[..cut.min(l.len())];
            let _ = run_bytes(l.as_bytes());
        }

        #[test]
        fn random_valid_streams_never_panic(
            evs in proptest::collection::vec((0u64..100 * S, 0u64..6, 1u8..=12, 1u8..=12), 0..100),
        ) {
            let input: Vec<String> = evs
                .iter()
                .map(|&(ts, sk, o, n)| {
                    let o = TcpState::from_kernel(o).unwrap().name();
                    let n = TcpState::from_kernel(n).unwrap().name();
                    line(ts, sk, o, n, "")
                })
                .collect();
            let (st, _, errs) = run(&input.join("\n"));
            prop_assert!(errs.is_empty());
            prop_assert_eq!(st.transitions, evs.len() as u64);
        }
    }

    #[test]
    fn reset_lines_parse_and_bad_ones_are_errors() {
        let ok = br#"{"type":"reset_sent","ts_ns":5,"sk":"0x0","netns":0,"family":4,"saddr":"127.0.0.1","sport":9,"daddr":"10.0.0.2","dport":4000,"state":null,"reason":"NO_SOCKET"}"#;
        match parse_any(ok) {
            Ok(Parsed::Reset(r)) => {
                assert_eq!(r.reason.name(), "NO_SOCKET");
                assert_eq!((r.sk, r.state, r.dport), (0, None, 4000));
                assert_eq!(r.daddr.to_string(), "10.0.0.2");
            }
            other => panic!("{other:?}"),
        }
        let bad_reason = br#"{"type":"reset_sent","ts_ns":5,"sk":"0x0","family":4,"saddr":"127.0.0.1","sport":9,"daddr":"10.0.0.2","dport":4000,"reason":"\u001b[31m"}"#;
        let e = parse_any(bad_reason).unwrap_err();
        assert!(matches!(e, LineError::Reason { .. }), "{e}");
        assert!(!e.to_string().contains('\u{1b}'), "escaped: {e}");
        let bad_state = br#"{"type":"reset_sent","ts_ns":5,"sk":"0x1","family":4,"saddr":"127.0.0.1","sport":9,"daddr":"10.0.0.2","dport":4000,"state":"NOPE","reason":"TCP_STATE"}"#;
        assert!(matches!(parse_any(bad_state), Err(LineError::State { .. })));
    }
}
