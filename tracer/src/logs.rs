//! Where log lines (and the tracer's own notices, [`line`]) go: stderr, except while a
//! full-screen view (`tracer top`) owns the terminal, when they are held in memory (the last
//! [`HELD_MAX`], the rest counted) so that they neither garble the screen nor get lost; the view
//! shows the latest and prints them all once the terminal is restored.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most lines held while the screen is up; older ones are counted, not kept.
pub const HELD_MAX: usize = 200;

static HOLDING: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<Held> = Mutex::new(Held {
    lines: VecDeque::new(),
    dropped: 0,
});

struct Held {
    lines: VecDeque<String>,
    dropped: u64,
}

fn held() -> std::sync::MutexGuard<'static, Held> {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// From now on, log lines are held instead of written.
pub fn hold() {
    HOLDING.store(true, Ordering::Release);
}

/// Stops holding; returns the lines held (oldest first) and how many more were dropped.
pub fn release() -> (Vec<String>, u64) {
    HOLDING.store(false, Ordering::Release);
    let mut h = held();
    let dropped = std::mem::take(&mut h.dropped);
    (h.lines.drain(..).collect(), dropped)
}

/// A line of the tracer's own (not a log event, e.g. a loss report): written to stderr, or
/// held like a log line while the screen is up.
pub fn line(line: &str) {
    if HOLDING.load(Ordering::Acquire) {
        push(line.to_owned());
    } else {
        eprintln!("{line}");
    }
}

/// The latest line held, without terminal escape sequences.
pub fn latest() -> Option<String> {
    held().lines.back().map(|l| strip_ansi(l))
}

fn push(line: String) {
    let mut h = held();
    if h.lines.len() == HELD_MAX {
        h.lines.pop_front();
        h.dropped += 1;
    }
    h.lines.push_back(line);
}

/// `ESC [ … letter` sequences removed (colours of the log formatter).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The log writer: stderr, or the held lines.
pub struct LogWriter;

/// One log event's writer.
pub enum EventWriter {
    Stderr(io::Stderr),
    Held(Vec<u8>),
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            EventWriter::Stderr(e) => e.write(buf),
            EventWriter::Held(b) => {
                b.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            EventWriter::Stderr(e) => e.flush(),
            EventWriter::Held(_) => Ok(()),
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let EventWriter::Held(b) = self
            && !b.is_empty()
        {
            push(String::from_utf8_lossy(b).trim_end().to_owned());
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> Self::Writer {
        if HOLDING.load(Ordering::Acquire) {
            EventWriter::Held(Vec::new())
        } else {
            EventWriter::Stderr(io::stderr())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lines_are_bounded_counted_and_stripped() {
        use tracing_subscriber::fmt::MakeWriter as _;
        hold();
        for i in 0..HELD_MAX + 3 {
            let mut w = LogWriter.make_writer();
            writeln!(w, "\u{1b}[33mWARN\u{1b}[0m line {i}").unwrap();
        }
        assert_eq!(
            latest().as_deref(),
            Some(format!("WARN line {}", HELD_MAX + 2).as_str())
        );
        let (lines, dropped) = release();
        assert_eq!((lines.len(), dropped), (HELD_MAX, 3));
        assert!(lines[0].ends_with("line 3"));
        assert!(matches!(LogWriter.make_writer(), EventWriter::Stderr(_)));
    }
}
