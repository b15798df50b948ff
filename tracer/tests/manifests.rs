//! The Kubernetes manifest in dist/kubernetes validates against the Kubernetes API schemas
//! (kubernetes-validate, strict: unknown fields are errors) for the oldest and newest
//! Kubernetes versions we claim, and keeps the grants docs/daemon.md explains. `cargo xtask
//! setup` installs the validator; without it this test fails, it does not skip.
//!
//! Tier: offline

use std::process::Command;

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dist/kubernetes/tracer.yaml"
);

fn validate(path: &str, version: &str) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", version, path])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubernetes-validate ({e}): run `cargo xtask setup` first")
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn daemonset_manifest_validates() {
    for version in ["1.28.0", "1.37.0"] {
        let (ok, out) = validate(MANIFEST, version);
        assert!(ok, "kubernetes {version}:\n{out}");
        for kind in ["namespace", "serviceaccount", "daemonset", "service"] {
            assert!(
                out.contains(&format!("passed for resource {kind}/tracer")),
                "{kind} not validated (kubernetes {version}):\n{out}"
            );
        }
    }
}

/// The validator is not a rubber stamp: a misspelled field fails.
#[test]
fn a_broken_manifest_fails_validation() {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    let broken = text.replacen("hostPID: true", "hostPIDs: true", 1);
    assert_ne!(broken, text);
    let path = std::env::temp_dir().join(format!("tracer-k8s-{}.yaml", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let (ok, out) = validate(path.to_str().unwrap(), "1.37.0");
    let _ = std::fs::remove_file(&path);
    assert!(!ok, "a misspelled field passed:\n{out}");
}

/// What the tracer needs on a node, as docs/daemon.md explains it: the node's pids and network
/// namespace, and exactly these capabilities (everything else dropped, not privileged).
#[test]
fn daemonset_grants_what_the_tracer_needs_and_no_more() {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    for needed in [
        "hostPID: true",
        "hostNetwork: true",
        "privileged: false",
        "readOnlyRootFilesystem: true",
        "automountServiceAccountToken: false",
    ] {
        assert!(text.contains(needed), "missing {needed:?}");
    }
    let adds: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "add:")
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("- "))
        .map(|l| l.trim().trim_start_matches("- "))
        .collect();
    assert_eq!(
        adds,
        [
            "BPF",
            "PERFMON",
            "SYS_RESOURCE",
            "SYS_ADMIN",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "NET_ADMIN"
        ]
    );
    assert!(
        text.contains("drop:\n                - ALL"),
        "drops everything else"
    );
}
