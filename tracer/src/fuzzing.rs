//! Entry points for the fuzz targets in `tracer/fuzz` (cargo-fuzz, libFuzzer): each takes
//! arbitrary bytes, runs one parser of untrusted input on them, and asserts what must hold
//! whatever the input (no panic, and the invariants below). Not a stable API.
//!
//! The unit tests at the bottom run every file of the checked-in seed corpora (and the inputs
//! the fuzzers found) through the same functions, so `cargo test` keeps the regressions.

use std::io::Cursor;
use std::path::Path;

use crate::engine::{Engine, EngineConfig};
use crate::event::{self, Comm, Family, Transition};
use crate::output::{Format, Output, Show};
use crate::pipeline::RecordContext;
use crate::record::{Owner, Record};
use crate::replay;
use crate::sockdiag;

/// A ring-buffer record: decoded; when it decodes, fed to an engine (and, in chunks of a
/// record's size, so is a run of them), whose records are written as text and as JSON.
pub fn ring_record(data: &[u8]) {
    let size = std::mem::size_of::<tracer_common::TcpEvent>();
    match event::decode(data) {
        Ok(_) => assert!(data.len() >= size),
        Err(event::DecodeError::Short { len, expected }) => {
            assert_eq!((len, expected), (data.len(), size));
        }
        Err(_) => {}
    }
    let mut engine = Engine::new(EngineConfig {
        capacity: 4,
        close_wait_threshold_ns: 1_000,
    });
    let mut transitions = Vec::new();
    let mut records = Vec::new();
    for chunk in data.chunks(size) {
        if let Ok(t) = event::decode(chunk) {
            // Recorded and replayed, the transition is the same (but for a comm that text does
            // not carry exactly: invalid UTF-8 is replaced, bytes after a NUL are not shown).
            let (back, _) = json_round_trip(&t, None);
            if Comm::new(&t.task_comm.as_str()) == t.task_comm {
                assert_eq!(back, t, "changed by a JSON round trip");
            } else {
                let back = Transition {
                    task_comm: t.task_comm,
                    ..back
                };
                assert_eq!(back, t, "changed by a JSON round trip");
            }
            engine.on_transition(&t, &mut records);
            engine.tick(t.ts_ns, &mut records);
            transitions.push(t);
        }
    }
    assert!(
        engine.tracked() <= 4,
        "capacity exceeded: {}",
        engine.tracked()
    );
    // Whatever a process chose as its command line reaches the sinks through the context.
    let cx = RecordContext {
        cmdline: crate::untrusted::Cmdline::from_proc(
            data,
            0,
            crate::untrusted::CmdlinePolicy::Redacted,
        ),
        ..RecordContext::default()
    };
    for format in [Format::Text, Format::Json] {
        let mut out = Output::new(Vec::new(), format, Show::ALL, 0);
        for t in &transitions {
            out.transition(t, None).expect("writing to memory");
        }
        for r in &records {
            match r {
                Record::Close(c) => out.close(c, &cx),
                Record::Leak(l) => out.leak(l, &cx),
            }
            .expect("writing to memory");
        }
        let text = String::from_utf8(out.into_inner()).expect("the output is UTF-8");
        if format == Format::Json {
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"));
            }
            assert_eq!(
                text.lines().count(),
                transitions.len() + records.len(),
                "one JSON line per transition and record:\n{text}"
            );
        }
    }
}

/// A transition written as `tracer --json` writes it, and read back as `tracer replay` reads
/// it: a recording must replay what was recorded.
fn json_round_trip(t: &Transition, owner: Option<&Owner>) -> (Transition, Option<Owner>) {
    let mut out = Output::new(Vec::new(), Format::Json, Show::ALL, 0);
    out.transition(t, owner).expect("writing to memory");
    let bytes = out.into_inner();
    let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    match replay::parse_line(line) {
        Ok(Some(p)) => p,
        other => panic!(
            "tracer's own transition line does not replay ({other:?}): {}",
            String::from_utf8_lossy(line)
        ),
    }
}

/// One line of a recording, as `tracer replay` parses it; a transition it accepts is written
/// back as JSON and read again unchanged.
pub fn replay_line(data: &[u8]) {
    let any = replay::parse_any(data);
    let line = replay::parse_line(data);
    // The two parsers agree on what is a transition.
    match (&any, &line) {
        (Ok(replay::Parsed::Transition(t, o)), Ok(Some((t2, o2)))) => {
            assert_eq!((t, o), (t2, o2));
            let (t3, o3) = json_round_trip(t, o.as_ref());
            assert_eq!((&t3, &o3), (t, o), "changed by a JSON round trip");
        }
        (Ok(replay::Parsed::Transition(..)), other) => {
            panic!("parse_any found a transition, parse_line {other:?}")
        }
        (_, Ok(Some(_))) => panic!("parse_line found a transition, parse_any {any:?}"),
        _ => {}
    }
    if let Err(e) = &any {
        // Errors are one line (they are printed as `FILE: line N: ERROR`).
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

/// A whole recording, replayed as `tracer replay` does, into text or JSON (the first byte
/// chooses); every line is either used or counted as skipped.
pub fn replay_recording(data: &[u8]) {
    let (format, input) = match data.split_first() {
        Some((b, rest)) if b & 1 == 1 => (Format::Json, rest),
        Some((_, rest)) => (Format::Text, rest),
        None => (Format::Text, data),
    };
    let mut out = Output::new(Vec::new(), format, Show::ALL, 0);
    let mut errors = 0u64;
    let replayed = replay::replay(
        Cursor::new(input),
        replay::Overrides {
            close_wait_threshold_ns: Some(1_000_000),
            capacity: Some(8),
        },
        |m, out: &mut Output<Vec<u8>>| {
            if let Some(off) = m.realtime_offset_ns {
                out.set_realtime_offset_ns(i128::from(off));
            }
        },
        &mut out,
        |_, e| {
            errors += 1;
            assert!(!e.to_string().contains('\n'), "{e}");
        },
    )
    .unwrap_or_else(|e| panic!("replaying from memory failed: {e}"));
    let stats = replayed.stats;
    assert!(stats.skipped <= stats.lines, "{stats:?}");
    assert_eq!(
        errors, stats.skipped,
        "every unusable line reported once: {stats:?}"
    );
    let summary = replayed.path.summary(replayed.path.engine().clock_ns());
    out.summary(&summary)
        .unwrap_or_else(|e| panic!("writing to memory failed: {e}"));
    if format == Format::Json {
        let text = String::from_utf8(out.into_inner()).expect("JSON output is UTF-8");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"));
        }
    }
}

/// One sock_diag reply datagram (netlink messages), as a dump and as an exact lookup would
/// read it; and its bytes as a `tcp_info`.
pub fn sockdiag_reply(data: &[u8]) {
    // The request's sequence number: the first message's, so the walk reads the messages.
    let seq = data
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    for op in [sockdiag::OP_DUMP, sockdiag::OP_LOOKUP] {
        for family in [Family::V4, Family::V6] {
            let mut out = Vec::new();
            let mut skipped = 0;
            let walked = sockdiag::walk_datagram(data, seq, op, family, &mut out, &mut skipped);
            if let Err(e) = walked {
                assert!(!e.to_string().contains('\n'), "{e}");
            }
            for s in &out {
                let _ = s.tuple();
                let _ = s.close_wait_since_estimate_ms();
            }
        }
    }
    let _ = sockdiag::TcpInfoAges::from_tcp_info(data);
}

/// /proc files as the attribution reads them; the first byte chooses: `/proc/PID/stat`,
/// `/proc/PID/cgroup` (and the container id in its path), an `fd` link target,
/// `/proc/PID/cmdline`, `/proc/net/sockstat`.
pub fn proc_file(data: &[u8]) {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Some((comm, _flags)) = crate::cli::stat_comm_flags(text)
            {
                assert!(text.contains(comm));
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Some(path) = crate::container::parse_proc_cgroup(text)
            {
                assert!(text.contains(path));
                if let Some(id) = crate::container::container_id_of(path) {
                    assert!(id.as_str().len() >= id.short().len());
                    assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
                }
            }
        }
        2 => {
            let _ = crate::attribution::parse_socket_link(rest);
        }
        3 => {
            use crate::untrusted::{Cmdline, CmdlinePolicy};
            for policy in [CmdlinePolicy::Full, CmdlinePolicy::Redacted] {
                if let Some(c) = Cmdline::from_proc(rest, 0, policy) {
                    assert!(!c.as_bytes().contains(&0), "{c:?}");
                    // What a human sees is one line of printable text.
                    let shown = c.shown().to_string();
                    assert!(!shown.chars().any(char::is_control), "{shown:?}");
                }
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = crate::netns::sockstat_time_wait(text);
            }
        }
    }
}

/// A `--web-config-file` file, parsed (no file is read), and an `Authorization` header.
pub fn web_config(data: &[u8]) {
    let _ = crate::webconfig::basic_credentials(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::webconfig::parse(text, Path::new("/etc/tracer")) {
        Ok(file) => {
            for (name, value) in &file.headers {
                assert!(hyper::header::HeaderName::from_bytes(name.as_bytes()).is_ok());
                assert!(hyper::header::HeaderValue::from_str(value).is_ok());
            }
            for hash in file.users.values() {
                assert!(hash.parse::<bcrypt::HashParts>().is_ok(), "{hash}");
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every file of `tracer/fuzz/corpus/TARGET` (seeds and found inputs) through `f`.
    fn corpus(target: &str, f: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            f(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n > 0, "no corpus in {}", dir.display());
    }

    #[test]
    fn ring_record_corpus() {
        corpus("ring_record", ring_record);
    }

    #[test]
    fn replay_line_corpus() {
        corpus("replay_line", replay_line);
    }

    #[test]
    fn replay_recording_corpus() {
        corpus("replay_recording", replay_recording);
    }

    #[test]
    fn sockdiag_reply_corpus() {
        corpus("sockdiag_reply", sockdiag_reply);
    }

    #[test]
    fn proc_file_corpus() {
        corpus("proc_file", proc_file);
    }

    #[test]
    fn web_config_corpus() {
        corpus("web_config", web_config);
    }
}
