//! `tracer top` in a real terminal: a tmux server of its own runs a shell at a fixed size,
//! `send-keys` types, `capture-pane` reads the screen ([`Tmux`]); and reading top's process
//! rows off that screen ([`row`], [`counts`]). Needs tmux (installed by `cargo xtask setup`);
//! fails, never skips, without it.

use std::process::Command;
use std::time::{Duration, Instant};

/// Long enough for a slow emulated VM; every wait polls the screen and stops as soon as it
/// matches.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A tmux server of our own (its own socket), with one session running `/bin/sh` (no line
/// editor of its own, so a terminal left in raw mode would show: Enter would not end a line).
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn start(name: &str, width: u16, height: u16) -> Tmux {
        let t = Tmux {
            socket: format!("tracer-test-{name}-{}", std::process::id()),
        };
        let out = t
            .cmd()
            .args(["new-session", "-d", "-s", "top", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg("/bin/sh")
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux (install it: cargo xtask setup): {e}"));
        assert!(out.status.success(), "tmux new-session failed: {out:?}");
        t
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"])
            .env("LC_ALL", "C.UTF-8")
            .env("TERM", "xterm-256color");
        c
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = self
            .cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"));
        assert!(out.status.success(), "tmux {args:?} failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally.
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "top", "-l", text]);
    }

    /// Presses one key by tmux name (`Enter`, `Escape`, `C-c`).
    pub fn key(&self, key: &str) {
        self.run(&["send-keys", "-t", "top", key]);
    }

    /// Types a shell command line and runs it.
    pub fn shell(&self, line: &str) {
        self.type_text(line);
        self.key("Enter");
    }

    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    pub fn display(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", "top", format])
            .trim()
            .to_owned()
    }

    /// Polls the screen until `pred` holds; panics with the screen after [`DEADLINE`].
    pub fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The terminal is as the shell left it: main screen, cursor shown.
    pub fn assert_restored(&self) {
        assert_eq!(
            self.display("#{alternate_on}"),
            "0",
            "still on the alternate screen"
        );
        assert_eq!(self.display("#{cursor_flag}"), "1", "cursor still hidden");
    }

    /// The pid of the program the shell runs in the foreground.
    pub fn foreground_pid(&self) -> u32 {
        let shell: u32 = self.display("#{pane_pid}").parse().expect("pane pid");
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .expect("reading the shell's children");
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the shell ({shell}) runs nothing"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The columns of the process row of (pid, comm), if it is on the screen.
pub fn row(screen: &str, pid: u32, comm: &str) -> Option<Vec<String>> {
    let pid = pid.to_string();
    screen.lines().find_map(|l| {
        let cols: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
        (cols.len() >= 4 && cols[0] == pid && cols[1] == comm).then_some(cols)
    })
}

/// CLOSE_WAIT and LEAKING of a row (the third and fourth columns).
pub fn counts(screen: &str, pid: u32, comm: &str) -> Option<(u64, u64)> {
    let r = row(screen, pid, comm)?;
    Some((r[2].parse().ok()?, r[3].parse().ok()?))
}
