//! `tracer top` in a real terminal (issue 13): tmux runs it at a fixed size, `send-keys` types,
//! `capture-pane` reads the screen, while leaky servers (tests/fixtures/leaky.py) hold
//! CLOSE_WAIT sockets — one from before top started (found by the startup baseline), one made
//! while it runs (traced). Checks the rows and their counts, sorting, the filter, a process's
//! sockets, and that every way out (q, Ctrl-C, SIGTERM, a panic) exits as it should and leaves
//! the terminal usable: main screen, cursor shown, `stty` settings as before.
//!
//! Needs root (the eBPF program) and tmux (installed by `cargo xtask setup`); fails, never
//! skips, without them. Only the fixtures' own pids, names and ports are looked at: the
//! screen's other rows are whatever else the machine does.
//!
//! Tier: root

mod common;

use std::time::Duration;

use common::tmux::{Tmux, counts, row};
use common::{Fixture, run_tracer};

/// Makes `n` connections to a listener on 127.0.0.1, each closed by the client first and then
/// by the server once it has read the client's FIN, so that each client socket ends in
/// TIME_WAIT. Returns the listener's port and `n`.
fn time_wait_towards_a_listener(n: usize) -> (u16, usize) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    for _ in 0..n {
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        drop(client);
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).expect("read the client's FIN"), 0);
        drop(server);
    }
    (port, n)
}

fn tracer() -> &'static str {
    env!("CARGO_BIN_EXE_tracer")
}

/// The shell line that runs `tracer top ARGS` and then says how it exited (a line
/// `exit-TAG=N`), then whether the terminal settings are as before (a line `tty-TAG-restored`,
/// else `tty-TAG-changed`).
/// The tag is expanded by the shell, so the typed line itself never shows those lines.
fn top_line(tag: &str, env: &str, args: &str) -> String {
    format!(
        "clear; T={tag}; S0=$(stty -g); {env} {} top {args}; echo \"exit-$T=$?\"; if [ \"$(stty -g)\" = \"$S0\" ]; then echo \"tty-$T-restored\"; else echo \"tty-$T-changed\"; fi",
        tracer()
    )
}

/// Once the shell line of [`top_line`] has finished: top's exit status, and whether the
/// terminal settings were as before.
fn exited(screen: &str, tag: &str) -> Option<(i32, bool)> {
    let prefix = format!("exit-{tag}=");
    let status = screen
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(&prefix))?
        .parse()
        .ok()?;
    let line = |what: &str| {
        let want = format!("tty-{tag}-{what}");
        screen.lines().any(|l| l.trim_end() == want)
    };
    let restored = line("restored");
    (restored || line("changed")).then_some((status, restored))
}

/// The screen line index of (pid, comm)'s row.
fn line_of(screen: &str, pid: u32, comm: &str) -> Option<usize> {
    let pid = pid.to_string();
    screen.lines().position(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(pid.as_str()) && w.next() == Some(comm)
    })
}

#[test]
fn top_shows_the_leaking_server_sorts_filters_and_quits_cleanly() {
    let tag = std::process::id() % 100_000;
    // Two names that sort apart, and a part they share for a filter that shows only them.
    let shared = format!("top{tag}");
    let (name_a, name_b) = (format!("tz{shared}"), format!("ta{shared}"));
    // A leaks 3 CLOSE_WAIT sockets before top starts: the startup baseline finds them.
    let mut a = Fixture::serve(&name_a, &["--self", "3", "--max-seconds", "300"]);
    a.expect("self-closed 3", Duration::from_secs(30));

    let tmux = Tmux::start("main", 120, 40);
    tmux.shell(&top_line(
        "q",
        "",
        "--close-wait-threshold 1s --refresh 500ms",
    ));
    tmux.wait("top's first screen", |s| {
        s.contains("tracer top") && s.contains("processes:")
    });
    // Only our processes: filter on the part of the name they share.
    tmux.type_text("/");
    tmux.type_text(&shared);
    tmux.key("Enter");
    // Keys are handled asynchronously: wait for the screen that shows they took effect.
    let filtered = format!("filter \"{shared}\"");
    tmux.wait(
        "A's row with 3 CLOSE_WAIT sockets, all leaking, filtered",
        |s| s.contains(&filtered) && counts(s, a.pid, &name_a) == Some((3, 3)),
    );

    // B leaks 1 while top runs: traced.
    let mut b = Fixture::serve(&name_b, &["--self", "1", "--max-seconds", "300"]);
    b.expect("self-closed 1", Duration::from_secs(30));
    let s = tmux.wait("B's row with 1 CLOSE_WAIT socket, leaking", |s| {
        counts(s, b.pid, &name_b) == Some((1, 1))
    });
    // Sorted by CLOSE_WAIT, most first: A above B.
    assert!(s.contains("CLOSE_WAIT▼"), "{s}");
    assert!(
        line_of(&s, a.pid, &name_a) < line_of(&s, b.pid, &name_b),
        "{s}"
    );

    // `<`: sorted by COMM, ascending — B ("ta…") above A ("tz…"). (Twice when a row has a
    // container, as on a CI host that is itself a container: CONTAINER lies in between.)
    tmux.type_text("<");
    let s = tmux.wait("the sort to move left", |s| !s.contains("CLOSE_WAIT▼"));
    if s.contains("CONTAINER▲") {
        tmux.type_text("<");
    }
    tmux.wait("sorted by COMM, B above A", |s| {
        s.contains("COMM▲")
            && line_of(s, b.pid, &name_b).is_some()
            && line_of(s, b.pid, &name_b) < line_of(s, a.pid, &name_a)
    });
    // `r` reverses it.
    tmux.type_text("r");
    tmux.wait("sorted by COMM, descending: A above B", |s| {
        s.contains("COMM▼")
            && line_of(s, a.pid, &name_a).is_some()
            && line_of(s, a.pid, &name_a) < line_of(s, b.pid, &name_b)
    });

    // Filter by A's name: B's row goes.
    tmux.type_text("/");
    for _ in 0..shared.len() {
        tmux.key("BSpace");
    }
    tmux.type_text(&name_a);
    tmux.key("Enter");
    tmux.wait("only A's row", |s| {
        s.contains(&format!("filter \"{name_a}\""))
            && row(s, a.pid, &name_a).is_some()
            && row(s, b.pid, &name_b).is_none()
    });

    // Enter: A's sockets, with their endpoints (A's port on our side), ages, leaking.
    tmux.key("Enter");
    let local = format!("127.0.0.1:{}", a.port);
    let s = tmux.wait("A's three sockets", |s| {
        s.lines()
            .filter(|l| l.starts_with(&local) && l.contains(" yes "))
            .count()
            == 3
    });
    assert!(
        s.contains(&format!(
            "CLOSE_WAIT sockets of {} ({name_a}): 3, 3 leaking",
            a.pid
        )),
        "{s}"
    );
    // Its command line above them (the fixture runs as `python3 …/leaky.py serve NAME …`).
    assert!(
        s.lines()
            .any(|l| l.starts_with("command ") && l.contains("leaky.py")),
        "{s}"
    );
    for l in s.lines().filter(|l| l.starts_with(&local)) {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert!(
            cols[1].starts_with("127.0.0.1:"),
            "remote endpoint in {l:?}"
        );
        assert!(cols[2].ends_with('s'), "an age in {l:?}");
    }

    // Esc: back to the table; filter by B's pid: only B.
    tmux.key("Escape");
    tmux.wait("the table again", |s| s.contains("processes:"));
    tmux.type_text("/");
    for _ in 0..name_a.len() {
        tmux.key("BSpace");
    }
    tmux.type_text(&b.pid.to_string());
    tmux.key("Enter");
    tmux.wait("only B's row", |s| {
        row(s, b.pid, &name_b).is_some() && row(s, a.pid, &name_a).is_none()
    });

    // TIME_WAIT by remote: 30 connections to a listener of ours, each closed by the client
    // first (the client's side goes to TIME_WAIT, towards the listener's endpoint).
    let (port, made) = time_wait_towards_a_listener(30);
    let remote = format!("127.0.0.1:{port}");
    let s = tmux.wait("the listener's row in the TIME_WAIT panel", |s| {
        s.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.windows(3)
                .any(|w| w[0] == remote && w[1] == made.to_string() && w[2] == made.to_string())
        })
    });
    assert!(s.contains("PORTS USED"), "{s}");

    // q: exit status 0, the terminal as it was, and a shell that still reads lines.
    tmux.type_text("q");
    let s = tmux.wait("top's exit", |s| exited(s, "q").is_some());
    assert_eq!(exited(&s, "q"), Some((0, true)), "{s}");
    tmux.assert_restored();
    tmux.shell("echo usable-$((6*7))");
    tmux.wait("the shell to answer", |s| {
        s.lines().any(|l| l.trim_end() == "usable-42")
    });
}

#[test]
fn ctrl_c_sigterm_and_a_panic_restore_the_terminal() {
    let tmux = Tmux::start("exits", 100, 30);
    let up = |s: &str| s.contains("tracer top") && s.contains("processes:");

    // Ctrl-C is a key in raw mode: top quits with status 0.
    tmux.shell(&top_line("ctrlc", "", ""));
    tmux.wait("top's screen", up);
    tmux.key("C-c");
    let s = tmux.wait("top's exit", |s| exited(s, "ctrlc").is_some());
    assert_eq!(exited(&s, "ctrlc"), Some((0, true)), "{s}");
    tmux.assert_restored();

    // SIGTERM from elsewhere: status 0, terminal restored.
    tmux.shell(&top_line("term", "", ""));
    tmux.wait("top's screen", up);
    let pid = tmux.foreground_pid();
    // SAFETY: plain kill(2) on the tracer the shell runs for this test.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let s = tmux.wait("top's exit", |s| exited(s, "term").is_some());
    assert_eq!(exited(&s, "term"), Some((0, true)), "{s}");
    tmux.assert_restored();

    // A panic: the terminal is restored before the message, which stays readable.
    tmux.shell(&top_line(
        "panic",
        "RUST_BACKTRACE=0 TRACER_TOP_TEST_PANIC=1",
        "--refresh 200ms",
    ));
    let s = tmux.wait("top's exit", |s| exited(s, "panic").is_some());
    assert_eq!(exited(&s, "panic"), Some((101, true)), "{s}");
    assert!(s.contains("panicking to test the terminal restore"), "{s}");
    tmux.assert_restored();
    tmux.shell("echo usable-$((6*7))");
    tmux.wait("the shell to answer", |s| {
        s.lines().any(|l| l.trim_end() == "usable-42")
    });
}

#[test]
fn top_without_a_terminal_says_so_and_exits_2() {
    let (code, out, err, _) = run_tracer(&["top"], Duration::from_secs(30));
    assert_eq!(code, 2, "stderr: {err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("not a terminal"), "{err}");
    // Bad options are usage errors too.
    let (code, _, err, _) = run_tracer(&["top", "--refresh", "1ms"], Duration::from_secs(30));
    assert_eq!(code, 2);
    assert!(err.contains("--refresh"), "{err}");
}
