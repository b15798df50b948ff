//! Prometheus' own tools for the exposition tests: finding `promtool` (and `prometheus`), and
//! `promtool check metrics` on an exposition. Missing tools fail the test, never skip it.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The binary `name`: the path in the environment variable `env`, else the first `name` on
/// PATH (or in /usr/bin). Panics, saying how to install it, when there is none.
pub fn tool(env: &str, name: &str) -> String {
    if let Ok(p) = std::env::var(env) {
        return p;
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin"])
    {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!(
        "`{name}` not found: run `cargo xtask setup` (installs Debian's `prometheus` package, \
         which has promtool and prometheus), or set {env} to the binary"
    )
}

/// The promtool binary: `PROMTOOL`, else `promtool` from PATH.
pub fn promtool() -> String {
    tool("PROMTOOL", "promtool")
}

/// Panics for a promtool that could not be run.
pub fn missing(e: &std::io::Error) -> ! {
    panic!("cannot run `{}` ({e}): run `cargo xtask setup`", promtool())
}

/// Runs `promtool check metrics` on `text` (the `what` exposition, for the message); panics
/// with promtool's findings on an error or any lint finding. Returns its (empty) report.
pub fn check_metrics(text: &str, what: &str) -> String {
    let mut child = match Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => missing(&e),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics rejected the {what} exposition ({}):\n{report}\n--- exposition ---\n{text}",
        out.status
    );
    report
}
