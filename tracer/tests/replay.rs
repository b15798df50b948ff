//! `tracer replay` end to end, on generated input (no root needed): bounded memory on a line
//! of over 1 GiB, time that goes back or jumps ahead, exit statuses and error wording.
//!
//! Tier: offline

mod common;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::recordings::{leak_recording_lines as part, line};

const S: u64 = 1_000_000_000;

/// Runs `tracer replay - ARGS` on `input`; returns (exit code, stdout lines, stderr).
fn replay(input: &[u8], args: &[&str]) -> (i32, Vec<String>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .arg("replay")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tracer replay");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn summary(values: &[Value]) -> &Value {
    values
        .iter()
        .find(|v| v["type"] == "summary")
        .expect("a summary")
}

fn leaks(values: &[Value]) -> Vec<(String, u64, u64)> {
    values
        .iter()
        .filter(|v| v["type"] == "close_wait_leak")
        .map(|v| {
            (
                v["sk"].as_str().unwrap().to_owned(),
                v["ts_ns"].as_u64().unwrap(),
                v["age_ns"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn appended_recordings_report_what_each_reports() {
    let one = part(5_000 * S).join("\n") + "\n";
    let (code, out, err) = replay(one.as_bytes(), &["--json", "--close-wait-threshold", "1s"]);
    assert_eq!(code, 0, "{err}");
    let alone = json(&out);
    let alone_leaks = leaks(&alone);
    assert_eq!(alone_leaks.len(), 10, "{out:?}");
    assert!(alone_leaks.iter().all(|l| l.2 == S), "{alone_leaks:?}");

    let twice = format!("{one}{one}");
    let (code, out, err) = replay(
        twice.as_bytes(),
        &["--json", "--close-wait-threshold", "1s"],
    );
    assert_eq!(code, 0, "{err}");
    let both = json(&out);
    let got = leaks(&both);
    assert_eq!(got.len(), 20, "{got:?}");
    assert_eq!(got[..10], alone_leaks[..]);
    assert_eq!(got[10..], alone_leaks[..]);
    let s = summary(&both);
    assert_eq!(s["leaks"], 20, "{s}");
    assert_eq!(s["restarts"], 1, "{s}");
    assert_eq!(s["restart_forgotten"], 1, "{s}");
    assert_eq!(s["time_jumps"], 0, "{s}");
    assert!(s["duration_ns"].as_u64().unwrap() < 7 * S, "{s}");
    assert!(err.contains("started over 1 time(s)"), "{err}");

    // Text mode says it in the summary too.
    let (code, out, _) = replay(twice.as_bytes(), &["--close-wait-threshold", "1s"]);
    assert_eq!(code, 0);
    let text = out.join("\n");
    assert!(
        text.contains("input restarts 1 (1 sockets forgotten)"),
        "{text}"
    );
    assert!(text.contains("20 CLOSE_WAIT leaks"), "{text}");
}

#[test]
fn a_timestamp_far_ahead_is_counted_and_ignored() {
    let mut lines = part(5_000 * S);
    let (_, out, _) = replay(
        (lines.join("\n") + "\n").as_bytes(),
        &["--json", "--close-wait-threshold", "1s"],
    );
    let alone_leaks = leaks(&json(&out));
    let mid = lines.len() / 2;
    lines.insert(
        mid,
        line(1_000_000_000_000_000_000, 0x400, "CLOSE", "SYN_SENT"),
    );
    let input = lines.join("\n") + "\n";
    let (code, out, err) = replay(
        input.as_bytes(),
        &["--json", "--close-wait-threshold", "1s"],
    );
    assert_eq!(code, 0, "{err}");
    let values = json(&out);
    assert_eq!(leaks(&values), alone_leaks);
    let s = summary(&values);
    assert_eq!(s["time_jumps"], 1, "{s}");
    assert_eq!(s["leaks"], 10, "{s}");
    assert!(s["duration_ns"].as_u64().unwrap() < 4 * S, "{s}");
    assert!(err.contains("1 transition(s) jumped ahead"), "{err}");
    let (_, out, _) = replay(input.as_bytes(), &["--close-wait-threshold", "1s"]);
    let text = out.join("\n");
    assert!(text.contains("summary over 3.00s"), "{text}");
    assert!(text.contains("time jumps ignored 1"), "{text}");
}

#[test]
fn exit_status_says_whether_anything_was_read() {
    // Nothing at all, only blank lines, only garbage: exit 1, one error line at the end.
    for input in ["", "\n\n  \n", "garbage\n[1,2]\n{\"no\":\"type\"}\n"] {
        let (code, out, err) = replay(input.as_bytes(), &["--json"]);
        assert_eq!(code, 1, "{input:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("tracer: error: -: no record could be read"),
            "{input:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        // The summary is still printed.
        assert!(json(&out).iter().any(|v| v["type"] == "summary"), "{out:?}");
    }
    // A recording with no transitions (a live run that saw nothing) is a good input.
    let (code, _, err) = replay(
        b"{\"type\":\"meta\",\"close_wait_threshold_ns\":1000}\n{\"type\":\"summary\"}\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // A BOM, a malformed line among good ones: exit 0, the bad line named in user words.
    let mut input = "\u{feff}".to_owned();
    input.push_str(&line(S, 1, "CLOSE", "SYN_SENT"));
    input.push_str("\n[\"transition\"]\n");
    input.push_str(&line(2 * S, 1, "SYN_SENT", "CLOSE"));
    input.push('\n');
    let (code, out, err) = replay(input.as_bytes(), &["--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("-: line 2: invalid json: expected a JSON object"),
        "{err}"
    );
    assert!(!err.contains("struct"), "{err}");
    let values = json(&out);
    assert_eq!(summary(&values)["transitions"], 2);
    assert_eq!(summary(&values)["skipped_lines"], 1);
    // A missing file: exit 1, one line.
    let out = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["replay", "/nonexistent/recording.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot open /nonexistent/recording.jsonl"),
        "{err}"
    );
}

/// Peak RSS (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A single line of more than 1 GiB, generated into a pipe: skipped with its number, counted,
/// and the replay's peak RSS stays under 64 MiB.
#[test]
fn a_line_over_1_gib_is_skipped_in_bounded_memory() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 1025; // 1 GiB + 1 MiB
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["replay", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tracer replay");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    writeln!(stdin, "{}", line(S, 1, "CLOSE", "SYN_SENT")).unwrap();
    // A long line that starts like a record: the parser never sees it.
    let mut chunk = vec![b'x'; CHUNK];
    chunk[..31].copy_from_slice(br#"{"type":"transition","ts_ns":1,"#);
    stdin.write_all(&chunk).unwrap();
    chunk[..31].fill(b'x');
    for _ in 1..CHUNKS {
        stdin.write_all(&chunk).unwrap();
    }
    stdin.write_all(b"\n").unwrap();
    writeln!(stdin, "{}", line(2 * S, 1, "SYN_SENT", "ESTABLISHED")).unwrap();
    stdin.flush().unwrap();
    // Everything but at most a pipe's worth has been read; let the reader catch up, then take
    // the peak while the process still waits for more input.
    std::thread::sleep(Duration::from_millis(300));
    let hwm = peak_rss_kib(pid);
    drop(stdin);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let out = reader.join().unwrap();
    let took = start.elapsed();
    eprintln!("1 GiB line: peak RSS {hwm} KiB, {took:?}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB on a 1 GiB line");
    let bytes = CHUNKS * CHUNK + 1;
    assert!(
        err.contains(&format!(
            "-: line 2: line of {bytes} bytes is longer than the limit of 1048576 bytes"
        )),
        "{err}"
    );
    let values: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let s = summary(&values);
    assert_eq!(s["transitions"], 2, "{s}");
    assert_eq!(s["skipped_lines"], 1, "{s}");
    assert_eq!(s["long_lines"], 1, "{s}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}
