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
        assert!(
            out.contains("passed for resource secret/tracer-web-config"),
            "the web config Secret not validated (kubernetes {version}):\n{out}"
        );
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
        // Each shown needed in a real container runtime, and BPF, PERFMON and NET_ADMIN shown
        // not to be: tests/container.rs, docs/daemon.md.
        ["SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"]
    );
    assert!(
        text.contains("drop:\n                - ALL"),
        "drops everything else"
    );
}

/// /metrics is served with TLS and basic auth from a Secret (--web-config-file), and the
/// kubelet's probes speak HTTPS; the shipped web config is one tracer accepts.
#[test]
fn daemonset_serves_metrics_with_tls_and_auth_from_a_secret() {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    assert!(
        text.contains("- --web-config-file\n            - /etc/tracer/web/web.yml"),
        "the DaemonSet passes --web-config-file"
    );
    assert_eq!(
        text.matches("scheme: HTTPS").count(),
        2,
        "both probes over HTTPS"
    );
    assert!(text.contains("secretName: tracer-web-config"));
    assert!(text.contains("secretName: tracer-tls"));
    // The web.yml of the Secret, as the file tracer will read.
    let web: String = text
        .lines()
        .skip_while(|l| l.trim() != "web.yml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let parsed = tracer::webconfig::parse(&web, std::path::Path::new("/etc/tracer/web"))
        .unwrap_or_else(|e| panic!("the shipped web config does not parse: {e}\n{web}"));
    let tls = parsed.tls.expect("TLS is on");
    assert_eq!(
        tls.cert,
        tracer::webconfig::Pem::File("/etc/tracer/tls/tls.crt".into())
    );
    assert_eq!(parsed.users.len(), 1, "{web}");
}
