//! The example alerting rules in docs/metrics.md pass `promtool check rules` (Debian's
//! `prometheus` package, installed by `cargo xtask setup`; `PROMTOOL` names another binary).
//!
//! Tier: offline

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The YAML code blocks of the "## Alerting" section of docs/metrics.md.
fn alerting_yaml() -> String {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
    )
    .expect("reading docs/metrics.md");
    let section = doc
        .split("\n## Alerting")
        .nth(1)
        .expect("an Alerting section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut yaml = String::new();
    let mut inside = false;
    for line in section.lines() {
        match (inside, line.trim_start()) {
            (false, l) if l.starts_with("```yaml") => inside = true,
            (true, l) if l.starts_with("```") => inside = false,
            (true, _) => {
                yaml.push_str(line);
                yaml.push('\n');
            }
            _ => {}
        }
    }
    assert!(!yaml.is_empty(), "no yaml block in the Alerting section");
    yaml
}

#[test]
fn documented_alerts_pass_promtool() {
    let yaml = alerting_yaml();
    for alert in [
        "TcpCloseWaitLeak",
        "EphemeralPortsExhausting",
        "TracerLosingEvents",
    ] {
        assert!(yaml.contains(&format!("alert: {alert}")), "{alert} missing");
    }
    let dir = std::env::temp_dir().join(format!("tracer-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yml");
    std::fs::write(&file, &yaml).unwrap();
    let promtool = common::promtool::promtool();
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {promtool} ({e}): run `cargo xtask setup`"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}\n--- rules ---\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
