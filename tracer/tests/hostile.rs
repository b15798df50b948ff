//! Tier: host
//!
//! Text that a process chose about itself never reaches an operator raw: a fixture names
//! itself `ESC[31mEVIL ESC]0;` and runs with a command line of escape sequences, a newline
//! that would forge a whole record, CR/TAB, invalid UTF-8, C1 and bidi controls, secrets and a
//! 100 KiB argument, then leaks one CLOSE_WAIT socket. The text output, the daemon's log line
//! and `tracer top`'s screens show all of it escaped, on one line each, cut visibly, the
//! secrets hidden; JSON carries the exact text; `--cmdline full` and `none` do what they say.
//! (Nothing here depends on the kernel's version: the host runs it.)

mod common;

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::os::unix::ffi::OsStringExt as _;
use std::process::{Child, Command, Stdio};

use common::tmux::Tmux;
use common::{Traced, WAIT, fixture_path, python};
use serde_json::Value;

/// The comm: colour red, then the start of an OSC title sequence (13 bytes; the kernel keeps
/// 15).
const COMM: &[u8] = b"\x1b[31mEVIL\x1b]0;";
/// How the text sinks show it.
const COMM_SHOWN: &str = r"\x1b[31mEVIL\x1b]0;";
/// A record that the newline in an argument would forge, were it printed raw.
const FORGED: &str = "12:00:00.000000 LEAK  CLOSE_WAIT for 99.00s  pid 1 (forged)";

fn hostile_args() -> Vec<OsString> {
    vec![
        "--password=hunter2".into(),
        "postgres://u:s3cr3t@h/db".into(),
        "\x1b[2J\x1b[H".into(),
        format!("line\n{FORGED}").into(),
        "cr\rtab\tend".into(),
        OsString::from_vec(b"bad\xff\xfeutf8".to_vec()),
        "\u{9b}31m\u{202e}rtl".into(),
        "y".repeat(100 * 1024).into(),
    ]
}

/// The fixture: `hostile.py COMM_HEX ARGS…`, holding one CLOSE_WAIT socket.
struct Hostile {
    child: Child,
    port: u16,
    peer: u16,
    pid: u32,
}

impl Hostile {
    fn start() -> Hostile {
        let hex: String = COMM.iter().map(|b| format!("{b:02x}")).collect();
        let mut child = Command::new(python())
            .arg(fixture_path("hostile.py"))
            .arg(hex)
            .args(hostile_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning hostile.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let w: Vec<u32> = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("hostile.py said {line:?}"))
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        Hostile {
            child,
            port: w[0] as u16,
            peer: w[1] as u16,
            pid: w[2],
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// No control character (C0 but the line ends, DEL, C1) and no bidi or invisible format
/// character in `text`.
fn assert_printable(what: &str, text: &str) {
    for (n, line) in text.lines().enumerate() {
        if let Some(c) = line.chars().find(|&c| {
            (c.is_control() && c != '\t')
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        }) {
            panic!("{what}, line {n}: raw {c:?} in {line:?}");
        }
    }
}

fn tracer_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--close-wait-threshold", "1s"];
    a.extend_from_slice(extra);
    a
}

#[test]
fn hostile_names_and_command_lines_reach_no_output_raw() {
    let mut text = Traced::start(&tracer_args(&[]));
    let mut json = Traced::start(&tracer_args(&["--json", "--show", "leaks,transitions"]));
    let mut full = Traced::start(&tracer_args(&[
        "--json",
        "--show",
        "leaks",
        "--cmdline",
        "full",
    ]));
    let mut none = Traced::start(&tracer_args(&[
        "--json",
        "--show",
        "leaks",
        "--cmdline",
        "none",
    ]));
    let daemon = Traced::start(&tracer_args(&["--metrics-addr", "127.0.0.1:0"]));
    let h = Hostile::start();
    let ours = |v: &Value| {
        v["type"] == "close_wait_leak"
            && v["sport"].as_u64() == Some(u64::from(h.port))
            && v["dport"].as_u64() == Some(u64::from(h.peer))
    };

    // Text: one leak line, everything escaped, the secrets hidden, the long argument cut.
    let local = format!("local 127.0.0.1:{}", h.port);
    let leak = text
        .wait_for_line(WAIT, |l| l.contains(" LEAK ") && l.contains(&local))
        .unwrap_or_else(|| panic!("no text leak line; stderr:\n{}", text.stderr()));
    assert!(
        leak.contains(&format!("pid {} ({COMM_SHOWN})", h.pid)),
        "{leak}"
    );
    for shown in [
        r"\x1b[2J\x1b[H",
        r"line\n12:00:00.000000 LEAK",
        r"cr\rtab\tend",
        r"bad\xff\xfeutf8",
        r"\u{9b}31m\u{202e}rtl",
        "--password=***",
        "postgres://u:***@h/db",
        "…[+",
    ] {
        assert!(
            leak.contains(shown),
            "{shown:?} not in the leak line {leak:?}"
        );
    }
    assert!(
        !leak.contains("hunter2") && !leak.contains("s3cr3t"),
        "{leak}"
    );
    assert!(
        leak.len() < 2048,
        "the 100 KiB argument is cut: {} bytes",
        leak.len()
    );
    let port = format!(":{}", h.port);

    // JSON: the exact text (JSON's own escapes), redacted by default.
    let v = json.wait_for(WAIT, ours).expect("a JSON leak record");
    assert_eq!(v["comm"], "\x1b[31mEVIL\x1b]0;", "{v}");
    let cmd = v["cmdline"].as_str().expect("cmdline");
    for exact in [
        "\x1b[2J\x1b[H",
        &format!("line\n{FORGED}"),
        "cr\rtab\tend",
        "bad\u{fffd}\u{fffd}utf8",
        "\u{9b}31m\u{202e}rtl",
        "--password=***",
        "postgres://u:***@h/db",
    ] {
        assert!(cmd.contains(exact), "{exact:?} not in {cmd:?}");
    }
    assert!(
        !cmd.contains("hunter2") && !cmd.contains("s3cr3t"),
        "{cmd:?}"
    );
    assert!(cmd.ends_with('…'), "the kept 4 KiB end with the cut mark");
    let v = full
        .wait_for(WAIT, ours)
        .expect("a JSON leak record (--cmdline full)");
    let cmd = v["cmdline"].as_str().expect("cmdline");
    assert!(
        cmd.contains("--password=hunter2") && cmd.contains("postgres://u:s3cr3t@h/db"),
        "{cmd:?}"
    );
    let v = none
        .wait_for(WAIT, ours)
        .expect("a JSON leak record (--cmdline none)");
    assert_eq!(v["cmdline"], Value::Null, "{v}");
    assert_eq!(v["comm"], "\x1b[31mEVIL\x1b]0;", "the comm stays: {v}");

    // The daemon's log line of the leak.
    let pid_field = format!("pid={}", h.pid);
    assert!(
        daemon.wait_stderr(WAIT, |e| e
            .lines()
            .any(|l| l.contains("CLOSE_WAIT leak") && l.contains(&pid_field))),
        "no leak log line; stderr:\n{}",
        daemon.stderr()
    );
    let log = daemon.stderr();
    assert!(log.contains(COMM_SHOWN), "{log}");

    // `tracer top`: the row and the sockets screen show the text escaped; the terminal's
    // title is not the fixture's to set.
    let tmux = Tmux::start("hostile", 240, 40);
    let title = tmux.display("#{pane_title}");
    tmux.shell(&format!(
        "{} top --close-wait-threshold 1s --refresh 500ms",
        env!("CARGO_BIN_EXE_tracer")
    ));
    tmux.wait("top's first screen", |s| s.contains("processes:"));
    tmux.type_text("/");
    tmux.type_text(&h.pid.to_string());
    tmux.key("Enter");
    let pid = h.pid.to_string();
    // The column is 16 wide: the escaped name is cut there, visibly.
    let row = |s: &str| {
        s.lines()
            .any(|l| l.split_whitespace().next() == Some(&pid) && l.contains(r"\x1b[31mEVIL\x1…"))
    };
    let screen = tmux.wait("the fixture's row, its comm escaped", row);
    assert_printable("top's screen", &screen);
    tmux.key("Enter");
    let screen = tmux.wait("its sockets screen with the command line", |s| {
        s.lines()
            .any(|l| l.starts_with("command ") && l.contains("--password=***"))
    });
    assert!(screen.contains(r"\x1b[2J\x1b[H"), "{screen}");
    assert!(!screen.contains("hunter2"), "{screen}");
    assert_printable("top's sockets screen", &screen);
    // Escape sequences on screen are top's own: none of them is the fixture's red.
    let styled = tmux.run(&["capture-pane", "-p", "-e", "-t", "top"]);
    assert!(
        !styled.contains("\x1b[31mEVIL"),
        "the fixture's colour reached the terminal"
    );
    assert_eq!(
        tmux.display("#{pane_title}"),
        title,
        "the fixture set the title"
    );
    tmux.key("q");
    tmux.key("q");

    drop(h);
    for (what, t) in [
        ("text", text),
        ("json", json),
        ("full", full),
        ("none", none),
        ("daemon", daemon),
    ] {
        let (code, lines, stderr) = t.signal_and_finish_raw(libc::SIGINT);
        assert_eq!(code, 0, "{what}: {stderr}");
        assert_printable(&format!("{what}'s stdout"), &lines.join("\n"));
        assert_printable(&format!("{what}'s stderr"), &stderr);
        if what == "text" {
            assert!(
                !lines.iter().any(|l| l.starts_with(FORGED)),
                "a forged record line"
            );
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&port) && l.contains(COMM_SHOWN)),
                "the fixture's transitions name its comm, escaped"
            );
        }
    }
}
