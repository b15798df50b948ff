//! The DaemonSet's pod, run for real: the pod template of dist/kubernetes/tracer.yaml,
//! translated field by field into `podman run` flags (a field this file does not know fails the
//! test, so the manifest cannot drift from what was run), with the image `cargo xtask dist`
//! built (target/dist/tracer-VERSION-oci.tar, loaded with `podman load`). The test proves
//! /ready from the node's network, a CLOSE_WAIT leak in another podman container reported with
//! its host pid, 64-hex container id, netns and the per-process metric's `container` label, a
//! clean stop (exit 0, summary, no BPF program, link or map left) and, capability by
//! capability, what breaks without each one (the table in docs/daemon.md).
//!
//! podman runs with `--runtime runc --cgroup-manager cgroupfs` (crun refuses this host's hybrid
//! cgroup layout) and explicit ulimits within the host's hard limits. Needs root, podman, runc,
//! buildah, bpftool, gcc and openssl (`cargo xtask setup`); fails, never skips, without them.
//!
//! Tier: host

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::prometheus::TempDir;
use serde_yaml_ng::Value;

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dist/kubernetes/tracer.yaml"
);
const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dist");
/// The name `cargo xtask dist` gives the image, which the manifest's `image:` must be.
const IMAGE: &str = concat!("localhost/tracer:", env!("CARGO_PKG_VERSION"));
/// Runtime flags of every podman command (docs/daemon.md, "Container runtimes").
const PODMAN_GLOBAL: [&str; 4] = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"];
/// The password the test puts in the web config Secret (as the manifest tells its user to).
const PASSWORD: &str = "scrape-me";

/// The image of the leaky fixture (one name, replaced by each run: no image piles up).
const LEAKY_IMAGE: &str = "localhost/tracer-test-leaky:latest";

/// One pod at a time on this host, across test threads, test binaries and checkouts: every pod
/// binds the manifest's host port, and the image names are podman's, host-wide. An exclusive
/// `flock` held while the test runs; the images are loaded and built under it.
struct HostLock(#[expect(dead_code, reason = "held for its lock")] std::fs::File);

fn host_lock() -> HostLock {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/tracer-container-test.lock")
        .unwrap();
    // SAFETY: flock on a descriptor this function owns.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    images();
    HostLock(f)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}): run `cargo xtask setup`"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(PODMAN_GLOBAL);
    c
}

/// A podman command line as a shell would take it (for the log and the report).
fn shown(args: &[String]) -> String {
    let mut s = format!("podman {}", PODMAN_GLOBAL.join(" "));
    for a in args {
        s.push(' ');
        if a.contains([' ', '"', '\'']) || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// The capability numbers of linux/capability.h, by the name Kubernetes uses.
fn cap_number(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} has no number in tests/container.rs"),
    }
}

fn status_caps(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Mapping keys, each of which must be one this file translates.
fn fields<'a>(v: &'a Value, at: &str, known: &[&str]) -> BTreeMap<String, &'a Value> {
    let map = v
        .as_mapping()
        .unwrap_or_else(|| panic!("{at} is not a mapping"));
    let mut out = BTreeMap::new();
    for (k, val) in map {
        let k = k
            .as_str()
            .unwrap_or_else(|| panic!("{at}: a non-string key"));
        assert!(
            known.contains(&k),
            "{at}.{k}: tests/container.rs does not translate this field to podman; translate \
             it (or refuse it) before shipping the manifest"
        );
        out.insert(k.to_owned(), val);
    }
    out
}

fn str_of<'a>(v: &'a Value, at: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{at} is not a string: {v:?}"))
}

fn bool_of(v: &Value, at: &str) -> bool {
    v.as_bool()
        .unwrap_or_else(|| panic!("{at} is not a boolean: {v:?}"))
}

/// Kubernetes' `defaultMode`. Kubernetes reads YAML 1.1, where `0400` is an octal number;
/// this YAML 1.2 parser gives the string "0400". Either way, the mode Kubernetes applies.
fn file_mode(v: &Value, at: &str) -> u32 {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) if s.starts_with('0') => u32::from_str_radix(s, 8).ok(),
        _ => None,
    }
    .filter(|m| *m <= 0o777)
    .unwrap_or_else(|| panic!("{at} is not a file mode: {v:?}"))
}

/// The DaemonSet's pod, as `podman run` arguments, with the Secrets it mounts made in a
/// temporary directory.
struct Pod {
    /// Flags before the image, without `--cap-add` (see `caps`).
    flags: Vec<String>,
    /// The manifest's `capabilities.add`.
    caps: Vec<String>,
    image: String,
    args: Vec<String>,
    /// The metrics port on the node (hostNetwork), and the probes' paths on it.
    port: u16,
    readiness: String,
    liveness: String,
    /// The CA that signed the `tracer-tls` certificate.
    ca: PathBuf,
    _secrets: TempDir,
}

/// `--ulimit` flags that runc can apply here. podman's defaults are above what its process
/// chain may set (nofile 1048576 against this host's hard limit of 20000; nproc above the
/// 32768 conmon runs with), and runc then refuses to start the container ("error setting
/// rlimits ... operation not permitted"). nofile: the host's hard limit; nproc: 4096, far above
/// what the tracer (a handful of threads) or the fixture need.
fn host_ulimits() -> Vec<String> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
    let nofile = rl.rlim_max.min(1 << 20);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        "--ulimit=nproc=4096:4096".to_owned(),
    ]
}

impl Pod {
    fn from_manifest() -> Pod {
        let text = std::fs::read_to_string(MANIFEST).unwrap();
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let kind = |d: &Value, k: &str| d.get("kind").and_then(Value::as_str) == Some(k);
        let ds = docs
            .iter()
            .find(|d| kind(d, "DaemonSet"))
            .expect("no DaemonSet");
        let secrets: BTreeMap<&str, &Value> = docs
            .iter()
            .filter(|d| kind(d, "Secret"))
            .map(|d| (d["metadata"]["name"].as_str().unwrap(), d))
            .collect();
        let template = &ds["spec"]["template"];
        let t = fields(template, "template", &["metadata", "spec"]);
        let mut flags: Vec<String> = vec!["--detach".into()];
        if let Some(meta) = t.get("metadata") {
            let m = fields(meta, "template.metadata", &["labels", "annotations"]);
            // Labels become container labels; annotations are for Prometheus' discovery.
            if let Some(labels) = m.get("labels") {
                for (k, v) in labels.as_mapping().unwrap() {
                    flags.push(format!(
                        "--label={}={}",
                        k.as_str().unwrap(),
                        str_of(v, "label")
                    ));
                }
            }
        }
        let spec = fields(
            t["spec"],
            "template.spec",
            &[
                "serviceAccountName",
                "automountServiceAccountToken",
                "hostPID",
                "hostNetwork",
                "dnsPolicy",
                "priorityClassName",
                "tolerations",
                "containers",
                "volumes",
            ],
        );
        // serviceAccountName, priorityClassName and tolerations are the API's identity and the
        // scheduler's: nothing in the container. No token is mounted, so nothing to mount here.
        let automount = spec
            .get("automountServiceAccountToken")
            .is_some_and(|v| bool_of(v, "automountServiceAccountToken"));
        assert!(
            !automount,
            "a mounted service-account token cannot be translated"
        );
        let host_network = spec
            .get("hostNetwork")
            .is_some_and(|v| bool_of(v, "hostNetwork"));
        if spec.get("hostPID").is_some_and(|v| bool_of(v, "hostPID")) {
            flags.push("--pid=host".into());
        }
        if host_network {
            flags.push("--network=host".into());
        }
        if let Some(dns) = spec.get("dnsPolicy") {
            // With the node's network the resolver is the node's (the tracer resolves nothing).
            assert_eq!(
                str_of(dns, "dnsPolicy"),
                "ClusterFirstWithHostNet",
                "dnsPolicy not translated"
            );
            assert!(host_network);
        }

        let secret_dir = TempDir::new("pod-secrets");
        let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut ca = PathBuf::new();
        for vol in spec["volumes"].as_sequence().expect("volumes") {
            let v = fields(vol, "volumes[]", &["name", "secret", "hostPath"]);
            let name = str_of(v["name"], "volumes[].name").to_owned();
            let at = format!("volumes[{name}]");
            let source = if let Some(secret) = v.get("secret") {
                let s = fields(secret, &at, &["secretName", "defaultMode"]);
                let secret_name = str_of(s["secretName"], &at);
                let dir = secret_dir.path(secret_name);
                std::fs::create_dir_all(&dir).unwrap();
                if let Some(doc) = secrets.get(secret_name) {
                    write_manifest_secret(doc, &dir);
                } else if secret_name == "tracer-tls" {
                    // The Secret the manifest tells its user to create (kubectl create secret
                    // tls): a certificate for the node's address, signed by a CA of ours.
                    ca = make_tls_secret(&secret_dir, &dir);
                } else {
                    panic!("{at}: Secret {secret_name} is neither in the manifest nor known");
                }
                let mode = s
                    .get("defaultMode")
                    .map_or(0o644, |m| file_mode(m, &format!("{at}.defaultMode")));
                for f in std::fs::read_dir(&dir).unwrap() {
                    use std::os::unix::fs::PermissionsExt as _;
                    let f = f.unwrap().path();
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
                }
                dir
            } else if let Some(host) = v.get("hostPath") {
                let h = fields(host, &at, &["path", "type"]);
                let path = PathBuf::from(str_of(h["path"], &at));
                match h.get("type").map(|t| str_of(t, &at)) {
                    Some("DirectoryOrCreate") => std::fs::create_dir_all(&path).unwrap(),
                    Some("Directory") | None => assert!(path.is_dir(), "{at}: no {path:?}"),
                    Some(other) => panic!("{at}: hostPath type {other} not translated"),
                }
                path
            } else {
                unreachable!()
            };
            volumes.insert(name, source);
        }

        let containers = spec["containers"].as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "one container per pod is translated");
        let c = fields(
            &containers[0],
            "containers[0]",
            &[
                "name",
                "image",
                "imagePullPolicy",
                "args",
                "env",
                "ports",
                "livenessProbe",
                "readinessProbe",
                "resources",
                "securityContext",
                "volumeMounts",
            ],
        );
        let image = str_of(c["image"], "image").to_owned();
        assert_eq!(
            image, IMAGE,
            "the manifest's image must be the one `cargo xtask dist` builds"
        );
        flags.push(format!(
            "--name=tracer-{}-{}",
            str_of(c["name"], "name"),
            std::process::id()
        ));
        match c
            .get("imagePullPolicy")
            .map(|p| str_of(p, "imagePullPolicy"))
        {
            // The image was loaded from the archive: present, so never pulled.
            Some("IfNotPresent" | "Never") => flags.push("--pull=never".into()),
            other => panic!("imagePullPolicy {other:?} not translated (no registry here)"),
        }
        let args: Vec<String> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| str_of(a, "args[]").to_owned())
            .collect();
        for e in c
            .get("env")
            .and_then(|e| e.as_sequence())
            .into_iter()
            .flatten()
        {
            let e = fields(e, "env[]", &["name", "value"]);
            flags.push(format!(
                "--env={}={}",
                str_of(e["name"], "env[].name"),
                str_of(e["value"], "env[].value")
            ));
        }
        let mut ports = BTreeMap::new();
        for p in c["ports"].as_sequence().unwrap() {
            let p = fields(
                p,
                "ports[]",
                &["name", "containerPort", "hostPort", "protocol"],
            );
            let port = u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap();
            // With the node's network there is nothing to publish: the port is the node's.
            assert!(host_network, "ports without hostNetwork not translated");
            if let Some(h) = p.get("hostPort") {
                assert_eq!(h.as_u64(), Some(u64::from(port)));
            }
            ports.insert(str_of(p["name"], "ports[].name").to_owned(), port);
        }
        let probe = |key: &str| -> (String, u16) {
            let p = fields(c[key], key, &["httpGet", "periodSeconds", "timeoutSeconds"]);
            let g = fields(p["httpGet"], key, &["path", "port", "scheme"]);
            assert_eq!(
                g.get("scheme").map(|s| str_of(s, key)),
                Some("HTTPS"),
                "{key}: the test probes over HTTPS"
            );
            let port = ports[str_of(g["port"], key)];
            (str_of(g["path"], key).to_owned(), port)
        };
        let (readiness, port) = probe("readinessProbe");
        let (liveness, live_port) = probe("livenessProbe");
        assert_eq!(port, live_port);
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--metrics-addr" && w[1].ends_with(&format!(":{port}"))),
            "the probes' port is not the one --metrics-addr serves"
        );

        if let Some(r) = c.get("resources") {
            let r = fields(r, "resources", &["requests", "limits"]);
            // Requests are for the scheduler; limits are the cgroup's.
            if let Some(l) = r.get("limits") {
                let l = fields(l, "resources.limits", &["memory"]);
                let mem = str_of(l["memory"], "limits.memory");
                let mib = mem.strip_suffix("Mi").expect("memory limit in Mi");
                flags.push(format!("--memory={mib}m"));
            }
        }
        let sc = fields(
            c["securityContext"],
            "securityContext",
            &[
                "privileged",
                "runAsUser",
                "runAsNonRoot",
                "readOnlyRootFilesystem",
                "allowPrivilegeEscalation",
                "seccompProfile",
                "capabilities",
            ],
        );
        if sc
            .get("privileged")
            .is_some_and(|v| bool_of(v, "privileged"))
        {
            flags.push("--privileged".into());
        }
        if let Some(u) = sc.get("runAsUser") {
            flags.push(format!("--user={}", u.as_u64().unwrap()));
        }
        if sc
            .get("runAsNonRoot")
            .is_some_and(|v| bool_of(v, "runAsNonRoot"))
        {
            assert_ne!(sc.get("runAsUser").and_then(|u| u.as_u64()), Some(0));
        }
        if sc
            .get("readOnlyRootFilesystem")
            .is_some_and(|v| bool_of(v, "readOnlyRootFilesystem"))
        {
            // Kubernetes mounts no tmpfs of its own on a read-only root; podman would.
            flags.push("--read-only".into());
            flags.push("--read-only-tmpfs=false".into());
        }
        if sc
            .get("allowPrivilegeEscalation")
            .is_some_and(|v| !bool_of(v, "allowPrivilegeEscalation"))
        {
            flags.push("--security-opt=no-new-privileges".into());
        }
        if let Some(s) = sc.get("seccompProfile") {
            let s = fields(s, "seccompProfile", &["type"]);
            assert_eq!(str_of(s["type"], "seccompProfile.type"), "RuntimeDefault");
            // The runtime's default profile, named so that nothing can turn it off.
            flags.push("--security-opt=seccomp=/usr/share/containers/seccomp.json".into());
        }
        let capabilities = fields(sc["capabilities"], "capabilities", &["drop", "add"]);
        let drop: Vec<&str> = capabilities["drop"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|d| str_of(d, "drop[]"))
            .collect();
        assert_eq!(drop, ["ALL"], "only `drop: [ALL]` is translated");
        flags.push("--cap-drop=ALL".into());
        let caps: Vec<String> = capabilities["add"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| str_of(a, "add[]").to_owned())
            .collect();

        for m in c["volumeMounts"].as_sequence().unwrap() {
            let m = fields(
                m,
                "volumeMounts[]",
                &["name", "mountPath", "readOnly", "mountPropagation"],
            );
            let name = str_of(m["name"], "volumeMounts[].name");
            let source = volumes
                .get(name)
                .unwrap_or_else(|| panic!("volumeMounts: no volume {name}"));
            let mut opts = Vec::new();
            if m.get("readOnly").is_some_and(|v| bool_of(v, "readOnly")) {
                opts.push("ro");
            }
            match m
                .get("mountPropagation")
                .map(|p| str_of(p, "mountPropagation"))
            {
                None | Some("None") => {}
                Some("HostToContainer") => opts.push("rslave"),
                Some(other) => panic!("mountPropagation {other} not translated"),
            }
            let mut flag = format!(
                "--volume={}:{}",
                source.display(),
                str_of(m["mountPath"], "mountPath")
            );
            if !opts.is_empty() {
                flag.push(':');
                flag.push_str(&opts.join(","));
            }
            flags.push(flag);
        }

        // What the runtime gives that the manifest cannot say: the rlimits (containerd passes
        // its own; podman's defaults for nofile and nproc are above this host's hard limits, and
        // runc then refuses to start), and Kubernetes' default grace period before SIGKILL.
        flags.extend(host_ulimits());
        flags.push("--stop-timeout=30".into());
        assert!(ca.is_file(), "no tracer-tls volume");
        Pod {
            flags,
            caps,
            image,
            args,
            port,
            readiness,
            liveness,
            ca,
            _secrets: secret_dir,
        }
    }

    /// The `podman run` arguments with these capabilities, and the manifest's
    /// `--close-wait-threshold` replaced by `threshold` when given.
    fn run_args(&self, caps: &[String], threshold: Option<&str>) -> Vec<String> {
        let mut a = vec!["run".to_owned()];
        a.extend(self.flags.iter().cloned());
        a.extend(caps.iter().map(|c| format!("--cap-add={c}")));
        a.push(self.image.clone());
        let mut args = self.args.clone();
        if let Some(t) = threshold {
            let at = args
                .iter()
                .position(|a| a == "--close-wait-threshold")
                .expect("the manifest passes --close-wait-threshold");
            t.clone_into(&mut args[at + 1]);
        }
        a.extend(args);
        a
    }

    /// HTTPS status of `path` on the node's port (what the kubelet's probe asks), with basic
    /// auth when `auth`; 0 when nothing answers.
    fn get(&self, path: &str, auth: bool) -> (u32, String) {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "3", "-w", "\n%{http_code}", "--cacert"])
            .arg(&self.ca);
        if auth {
            c.args(["-u", &format!("prometheus:{PASSWORD}")]);
        }
        let out = c
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("cannot run curl: run `cargo xtask setup`");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

/// The Secret's `stringData`, files in `dir`; the web config's bcrypt hash replaced by one of
/// [`PASSWORD`] (the manifest ships a hash of a password nobody knows, to be replaced).
fn write_manifest_secret(doc: &Value, dir: &Path) {
    let d = fields(
        doc,
        "Secret",
        &["apiVersion", "kind", "metadata", "type", "stringData"],
    );
    for (k, v) in d["stringData"].as_mapping().unwrap() {
        let name = k.as_str().unwrap();
        let mut text = str_of(v, name).to_owned();
        if name == "web.yml" {
            let mut web: Value = serde_yaml_ng::from_str(&text).unwrap();
            let users = web["basic_auth_users"]
                .as_mapping_mut()
                .expect("web.yml has basic_auth_users");
            assert!(
                users.contains_key("prometheus"),
                "web.yml's user is prometheus"
            );
            users.insert(
                "prometheus".into(),
                bcrypt::hash(PASSWORD, 10).unwrap().into(),
            );
            text = serde_yaml_ng::to_string(&web).unwrap();
        }
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// `tls.crt` and `tls.key` in `dir` for 127.0.0.1, signed by a new CA; the CA's path.
fn make_tls_secret(work: &TempDir, dir: &Path) -> PathBuf {
    let w = &work.0;
    run(Command::new("openssl").current_dir(w).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=node-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    run(Command::new("openssl")
        .current_dir(w)
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
        ])
        .arg(dir.join("tls.key"))
        .args(["-out", "tls.csr", "-subj", "/CN=node"]));
    work.write(
        "tls.ext",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    );
    run(Command::new("openssl")
        .current_dir(w)
        .args([
            "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        ])
        .args([
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "tls.ext",
            "-out",
        ])
        .arg(dir.join("tls.crt")));
    w.join("ca.crt")
}

/// A podman container removed (with `-f`) when dropped.
struct Container {
    id: String,
}

impl Container {
    fn start(args: &[String]) -> Result<Container, String> {
        eprintln!("+ {}", shown(args));
        let out = podman().args(args).output().expect("cannot run podman");
        if !out.status.success() {
            // A container runc refused stays "Created": remove it by its name.
            if let Some(name) = args.iter().find_map(|a| a.strip_prefix("--name=")) {
                let _ = podman().args(["rm", "-f", name]).output();
            }
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let id = stdout(&out);
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "podman run printed {id:?}"
        );
        Ok(Container { id })
    }

    fn inspect(&self, format: &str) -> String {
        stdout(&run(
            podman().args(["inspect", "--format", format, &self.id])
        ))
    }

    /// The host pid of the container's process (0 once it exited).
    fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().unwrap()
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    /// Everything it wrote (stdout and stderr).
    fn logs(&self) -> String {
        let out = run(podman().args(["logs", &self.id]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `podman stop` (SIGTERM, then SIGKILL after the stop timeout) and its exit code.
    fn stop(&self) -> i32 {
        let args = vec!["stop".to_owned(), self.id.clone()];
        eprintln!("+ {}", shown(&args));
        run(podman().args(&args));
        self.inspect("{{.State.ExitCode}}").parse().unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.id]).output();
    }
}

/// The images: the tracer's from the dist archive, and a `FROM scratch` image holding the
/// static leaky fixture, [`LEAKY_IMAGE`]. Made by each test under [`host_lock`], so that the
/// image it runs is this checkout's.
fn images() {
    {
        let archive = Path::new(DIST).join(format!("tracer-{}-oci.tar", env!("CARGO_PKG_VERSION")));
        assert!(
            archive.is_file(),
            "{} is missing: run `cargo xtask dist` (cargo xtask test runs it first)",
            archive.display()
        );
        let loaded = stdout(&run(podman().arg("load").arg("-i").arg(&archive)));
        eprintln!("+ podman load -i {}: {loaded}", archive.display());
        assert!(loaded.contains(IMAGE), "podman load said {loaded:?}");
        let size = stdout(&run(podman().args([
            "image",
            "inspect",
            "--format",
            "{{.Size}}",
            IMAGE,
        ])));
        eprintln!(
            "image {IMAGE}: {size} bytes unpacked, archive {} bytes",
            std::fs::metadata(&archive).unwrap().len()
        );

        let dir = TempDir::new("leaky-image");
        let bin = dir.path("leaky-ctr");
        run(Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/leaky_ctr.c"
            )));
        let name = LEAKY_IMAGE;
        let _ = Command::new("buildah").args(["rmi", name]).output();
        let ctr = stdout(&run(Command::new("buildah").args(["from", "scratch"])));
        run(Command::new("buildah")
            .args(["copy", "--chmod", "0755", &ctr])
            .arg(&bin)
            .arg("/leaky-ctr"));
        run(Command::new("buildah").args(["config", "--entrypoint", r#"["/leaky-ctr"]"#, &ctr]));
        run(Command::new("buildah").args(["commit", "--rm", "--quiet", &ctr, name]));
    }
}

/// A container running the leaky fixture as an unprivileged user (nobody) in its own network
/// namespace, once its socket sits in CLOSE_WAIT.
fn leaky_container() -> Container {
    let args: Vec<String> = [
        "run",
        "--detach",
        "--network=none",
        "--user=65534:65534",
        &format!("--name=tracer-leaky-{}-{}", std::process::id(), unique()),
    ]
    .map(str::to_owned)
    .to_vec();
    let mut args = args;
    args.extend(host_ulimits());
    args.push(LEAKY_IMAGE.to_owned());
    let c = Container::start(&args).expect("the leaky container did not start");
    let deadline = Instant::now() + common::WAIT;
    while !c.logs().contains("leaking ") {
        assert!(c.running(), "the leaky fixture exited: {}", c.logs());
        assert!(Instant::now() < deadline, "the leaky fixture never leaked");
        std::thread::sleep(Duration::from_millis(100));
    }
    c
}

fn unique() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The network namespace inode of a process (`net:[N]`).
fn netns_of(pid: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let s = link.to_string_lossy();
    s.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

/// The value of `key=` in a tracing line (quoted or not).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()
    } else {
        rest.split(' ').next()
    }
}

/// BPF objects (`prog`, `map`, `link`) a process holds, by id: its descriptors'
/// `/proc/PID/fdinfo` (`prog_id:`, `map_id:`, `link_id:`).
fn bpf_objects_of(pid: u32) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(fd.unwrap().path()) else {
            continue;
        };
        for (key, kind) in [
            ("prog_id:", "prog"),
            ("map_id:", "map"),
            ("link_id:", "link"),
        ] {
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
            {
                found.push((kind.to_owned(), id));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn bpf_object_exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

fn port_free(port: u16) {
    assert!(
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
        "port {port} (the manifest's hostPort) is in use on this machine: stop what holds it"
    );
}

/// Waits until `/ready` answers 200, or the container exits; the status seen last.
fn wait_ready(pod: &Pod, c: &Container, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    loop {
        let (code, _) = pod.get(&pod.readiness, false);
        if code == 200 || !c.running() || Instant::now() > deadline {
            return code;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for the leak warning naming `pid`; the line.
fn wait_leak(c: &Container, pid: u32, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let logs = c.logs();
        if let Some(l) = logs
            .lines()
            .find(|l| l.contains("CLOSE_WAIT leak") && field(l, "pid") == Some(&pid.to_string()))
        {
            return Some(l.to_owned());
        }
        if !c.running() || Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_daemonset_pod_runs_in_podman_and_reports_a_leak_in_another_container() {
    let _one = host_lock();
    let pod = Pod::from_manifest();
    port_free(pod.port);
    let tracer = Container::start(&pod.run_args(&pod.caps, None)).expect("the pod did not start");
    let pid = tracer.pid();

    // Exactly the manifest's capabilities, less those outside this host's bounding set (which
    // podman drops without a word).
    let host_bounding = status_caps(std::process::id(), "CapBnd:");
    let wanted: u64 = pod
        .caps
        .iter()
        .map(|c| 1u64 << cap_number(c))
        .fold(0, |a, b| a | b);
    let eff = status_caps(pid, "CapEff:");
    let missing: Vec<&String> = pod
        .caps
        .iter()
        .filter(|c| eff & (1 << cap_number(c)) == 0)
        .collect();
    eprintln!("the pod's CapEff {eff:016x}; of the manifest's, not granted: {missing:?}");
    assert_eq!(
        eff,
        wanted & host_bounding,
        "the pod's capabilities are not the manifest's"
    );
    assert_eq!(
        status_caps(pid, "NoNewPrivs:"),
        1,
        "no_new_privs is not set"
    );
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert!(
        std::fs::write(format!("/proc/{pid}/root/probe"), "x").is_err(),
        "the root filesystem ({root:?}) is writable"
    );
    assert_eq!(
        netns_of(pid),
        netns_of(std::process::id()),
        "hostNetwork: the pod is not in the node's network namespace"
    );

    let code = wait_ready(&pod, &tracer, common::WAIT);
    assert_eq!(code, 200, "/ready never answered 200: {}", tracer.logs());
    assert_eq!(pod.get(&pod.liveness, false).0, 200);
    let (unauthorised, _) = pod.get("/metrics", false);
    assert_eq!(unauthorised, 401, "/metrics answers without the password");
    let objects = bpf_objects_of(pid);
    assert!(
        objects.iter().any(|(k, _)| k == "prog") && objects.iter().any(|(k, _)| k == "map"),
        "bpftool shows no program or map held by the pod's tracer: {objects:?}"
    );

    let leaky = leaky_container();
    let leaky_pid = leaky.pid();
    let leaky_netns = netns_of(leaky_pid);
    let cgroup = std::fs::read_to_string(format!("/proc/{leaky_pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("libpod-{}", leaky.id)),
        "the leaky container's cgroup does not name it: {cgroup}"
    );
    // The manifest's threshold (30 s) has to pass.
    let line = wait_leak(&tracer, leaky_pid, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("no leak reported for pid {leaky_pid}:\n{}", tracer.logs()));
    eprintln!("the pod's log: {line}");
    assert_eq!(field(&line, "comm"), Some("leaky-ctr"), "{line}");
    assert_eq!(
        field(&line, "container_id"),
        Some(leaky.id.as_str()),
        "{line}"
    );
    assert_eq!(field(&line, "container"), Some(&leaky.id[..12]), "{line}");
    assert_eq!(
        field(&line, "netns"),
        Some(leaky_netns.to_string().as_str()),
        "{line}"
    );
    assert_ne!(leaky_netns, netns_of(pid));
    assert!(
        field(&line, "cgroup").is_some_and(|c| c.contains(&format!("libpod-{}", leaky.id))),
        "{line}"
    );
    let (code, metrics) = pod.get("/metrics", true);
    assert_eq!(code, 200);
    let series = format!(
        "tracer_tcp_close_wait_sockets{{pid=\"{leaky_pid}\",comm=\"leaky-ctr\",container=\"{}\"}} 1",
        &leaky.id[..12]
    );
    assert!(
        metrics.lines().any(|l| l == series),
        "no {series} in the pod's metrics:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("close_wait"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The runtime's stop signal (SIGTERM): exit 0 with the summary, and nothing left behind.
    let exit = tracer.stop();
    let logs = tracer.logs();
    assert_eq!(exit, 0, "the pod's tracer exited {exit}:\n{logs}");
    assert!(logs.contains("summary over"), "no summary:\n{logs}");
    let left: Vec<_> = objects
        .iter()
        .filter(|(k, id)| bpf_object_exists(k, *id))
        .collect();
    assert!(left.is_empty(), "BPF objects left after the stop: {left:?}");
    eprintln!(
        "stopped: exit {exit}; {} BPF objects held while running, none left",
        objects.len()
    );
}

/// What the pod's log said about one leaky container's leak, from worst to best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Leak {
    /// No leak line for its socket.
    NotReported,
    /// Reported, without the owner's pid (or with another pid).
    NoOwner,
    /// Reported with the owner's pid, not its container id.
    NoContainer,
    /// Reported with the owner's pid and container id.
    Named,
}

/// What one run of the pod with a set of capabilities showed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    ready: bool,
    /// The tracer's error line when it did not start.
    error: Option<String>,
    /// A leak that existed before the tracer started: its owner can be found only through
    /// sock_diag in the container's namespace and the owner's /proc/PID/fd.
    before: Leak,
    /// A leak made while the tracer runs.
    live: Leak,
    /// Questions to the kernel that went unanswered, from /metrics just before the stop
    /// (namespaces or sockets sock_diag could not be asked about: leak checks, holder lookups,
    /// reconciliation, TIME_WAIT re-syncs).
    unanswered: u64,
    exit: i32,
    summary: bool,
}

/// The counters that say a question to the kernel went unanswered.
const UNANSWERED: [&str; 4] = [
    "tracer_tcp_close_wait_leak_checks_unanswered_total",
    "tracer_holder_unanswered_total",
    "tracer_reconcile_unreachable_total",
    "tracer_tcp_time_wait_resync_failures_total",
];

fn unanswered(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| UNANSWERED.iter().any(|n| l.starts_with(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

impl Leaky {
    fn start() -> Leaky {
        let c = leaky_container();
        let port = c
            .logs()
            .lines()
            .find_map(|l| l.strip_prefix("leaking "))
            .and_then(|p| p.trim().parse().ok())
            .expect("the fixture names its port");
        let pid = c.pid();
        Leaky { c, pid, port }
    }

    /// What `logs` (the pod's) say about this leak.
    fn seen(&self, logs: &str) -> Leak {
        let local = format!("127.0.0.1:{}", self.port);
        let mut seen = Leak::NotReported;
        for l in logs
            .lines()
            .filter(|l| l.contains("CLOSE_WAIT leak") && field(l, "local") == Some(&local))
        {
            let named = if field(l, "pid") != Some(&self.pid.to_string()) {
                Leak::NoOwner
            } else if field(l, "container_id") == Some(self.c.id.as_str()) {
                Leak::Named
            } else {
                Leak::NoContainer
            };
            seen = seen.max(named);
        }
        seen
    }
}

/// The leaky fixture's container, its host pid and the port of its leaking socket.
struct Leaky {
    c: Container,
    pid: u32,
    port: u16,
}

fn outcome(pod: &Pod, caps: &[String], unconfined: bool) -> Outcome {
    port_free(pod.port);
    let before = Leaky::start();
    // A short threshold (the rest of the pod as in the manifest): each run reports within
    // seconds.
    let mut args = pod.run_args(caps, Some("2s"));
    if unconfined {
        let at = args
            .iter()
            .position(|a| a.starts_with("--security-opt=seccomp="))
            .unwrap();
        "--security-opt=seccomp=unconfined".clone_into(&mut args[at]);
    }
    let tracer = Container::start(&args).expect("the pod did not start");
    let ready = wait_ready(pod, &tracer, Duration::from_secs(60)) == 200;
    let mut o = Outcome {
        ready,
        error: None,
        before: Leak::NotReported,
        live: Leak::NotReported,
        unanswered: 0,
        exit: 0,
        summary: false,
    };
    if ready {
        let live = Leaky::start();
        // Both past the threshold and a drain or two: what is reported by then is all there is.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let logs = tracer.logs();
            o.before = before.seen(&logs);
            o.live = live.seen(&logs);
            let done = o.before == Leak::Named && o.live == Leak::Named;
            if done || Instant::now() > deadline || !tracer.running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let (code, metrics) = pod.get("/metrics", true);
        assert_eq!(code, 200, "/metrics: {metrics}");
        assert!(
            UNANSWERED.iter().all(|n| metrics.contains(n)),
            "a counter of {UNANSWERED:?} is missing from /metrics"
        );
        o.unanswered = unanswered(&metrics);
        o.exit = tracer.stop();
    } else {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tracer.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        o.exit = tracer.inspect("{{.State.ExitCode}}").parse().unwrap();
    }
    let logs = tracer.logs();
    o.error = logs
        .lines()
        .find(|l| l.starts_with("tracer: error"))
        .map(str::to_owned);
    o.summary = logs.contains("summary over");
    let oom = tracer.inspect("{{.State.OOMKilled}}");
    assert_ne!(
        oom, "true",
        "the pod was OOM-killed at the manifest's memory limit (caps {caps:?}):\n{logs}"
    );
    eprintln!("caps {caps:?}: {o:?}");
    o
}

/// Capabilities of the manifest this host cannot grant (outside its bounding set: podman drops
/// them without a word), and why the manifest keeps them anyway.
const NOT_GRANTABLE: &[(&str, &str)] = &[(
    "SYS_RESOURCE",
    "raises RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to; 6.18 charges the \
     memory cgroup",
)];

#[test]
fn each_capability_of_the_manifest_is_needed() {
    let _one = host_lock();
    let pod = Pod::from_manifest();
    let all = outcome(&pod, &pod.caps, false);
    assert_eq!(
        all,
        Outcome {
            ready: true,
            error: None,
            before: Leak::Named,
            live: Leak::Named,
            unanswered: 0,
            exit: 0,
            summary: true,
        },
        "the manifest's capabilities"
    );
    let host_bounding = status_caps(std::process::id(), "CapBnd:");
    let mut table = Vec::new();
    for cap in &pod.caps {
        if host_bounding & (1 << cap_number(cap)) == 0 {
            // The runtime cannot grant it here, so the pod above already ran without it.
            let (_, why) = NOT_GRANTABLE
                .iter()
                .find(|(c, _)| c == cap)
                .unwrap_or_else(|| {
                    panic!("{cap} is outside this host's bounding set and not in NOT_GRANTABLE")
                });
            eprintln!("without {cap}: not testable on this host ({why})");
            continue;
        }
        let fewer: Vec<String> = pod.caps.iter().filter(|c| *c != cap).cloned().collect();
        table.push((cap.clone(), outcome(&pod, &fewer, false)));
    }
    // SYS_ADMIN does three things here: the kernel takes it for CAP_BPF and CAP_PERFMON
    // (bpf_capable(), perfmon_capable()), podman's RuntimeDefault seccomp profile lets `bpf`
    // and `perf_event_open` through only to a holder of CAP_SYS_ADMIN, and setns() needs it.
    // BPF and PERFMON instead of it: refused by the profile; and without the profile, what
    // setns() alone is for.
    if pod.caps.iter().any(|c| c == "SYS_ADMIN") {
        let mut instead: Vec<String> = pod
            .caps
            .iter()
            .filter(|c| *c != "SYS_ADMIN")
            .cloned()
            .collect();
        instead.extend(["BPF".to_owned(), "PERFMON".to_owned()]);
        let confined = outcome(&pod, &instead, false);
        let unconfined = outcome(&pod, &instead, true);
        eprintln!("BPF and PERFMON instead of SYS_ADMIN: {confined:?}");
        eprintln!("BPF and PERFMON instead of SYS_ADMIN, seccomp unconfined: {unconfined:?}");
        assert!(!confined.ready, "{confined:?}");
        assert!(unconfined.ready && unconfined != all, "{unconfined:?}");
    }
    for (cap, o) in &table {
        eprintln!("without {cap}: {o:?}");
    }
    let unneeded: Vec<&String> = table
        .iter()
        .filter(|(_, o)| *o == all)
        .map(|(c, _)| c)
        .collect();
    assert!(
        unneeded.is_empty(),
        "the pod works as well without {unneeded:?}: take them out of the manifest"
    );
}
