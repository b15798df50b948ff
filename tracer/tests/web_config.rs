//! `--web-config-file` (issue 20): a real Prometheus scrapes the daemon over TLS with basic
//! auth and a client certificate, all made by the test with the openssl CLI; a wrong password
//! gets 401, a client without a certificate (or with one from another CA) is refused when the
//! file asks for one, plain HTTP is refused; the client auth types keep Go's meanings; a bad
//! file, a missing certificate or a wrong password hash stop tracer at start with one line.
//! Also measures the scrape latency over TLS against plain HTTP in the same run.
//!
//! Needs `prometheus` (Debian's package), `openssl` and `curl`, installed by `cargo xtask
//! setup`; without them the tests fail, they do not skip.
//!
//! Tier: host

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, TempDir};
use common::{Traced, WAIT, run_tracer};

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}): run `cargo xtask setup`"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA and certificates signed by it (P-256 keys), in `dir`.
struct Pki<'a> {
    dir: &'a TempDir,
}

impl<'a> Pki<'a> {
    /// A self-signed CA `name` (`name.crt`, `name.key`).
    fn ca(dir: &'a TempDir, name: &str) -> Pki<'a> {
        run(Command::new("openssl").current_dir(&dir.0).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        Pki { dir }
    }

    /// `name.crt`/`name.key` signed by the CA `ca`, for a server on 127.0.0.1 or a client.
    fn issue(&self, ca: &str, name: &str, server: bool) {
        let dir = &self.dir.0;
        run(Command::new("openssl").current_dir(dir).args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]));
        let ext = if server {
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        } else {
            "subjectAltName=DNS:scraper.test\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
        };
        self.dir.write(&format!("{name}.ext"), ext);
        run(Command::new("openssl").current_dir(dir).args([
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]));
    }
}

/// A bcrypt hash of `password` at exporter-toolkit's usual cost, 10.
fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 10).unwrap()
}

/// The address in `tracer: serving metrics on SCHEME://ADDR/metrics`.
fn served_addr(t: &Traced, scheme: &str) -> SocketAddr {
    let err = t.stderr();
    let marker = format!("serving metrics on {scheme}://");
    err.lines()
        .find_map(|l| {
            l.split_once(marker.as_str())
                .and_then(|(_, rest)| rest.strip_suffix("/metrics"))
        })
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no `{marker}ADDR/metrics` line in:\n{err}"))
}

/// A tracer daemon serving with `web_config` (or plain HTTP without).
fn daemon(web_config: Option<&Path>) -> (Traced, SocketAddr) {
    let mut args = vec![
        "--metrics-addr".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--json".to_owned(),
    ];
    if let Some(p) = web_config {
        args.push("--web-config-file".to_owned());
        args.push(p.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Traced::start(&args);
    let addr = served_addr(
        &t,
        if web_config.is_some() {
            "https"
        } else {
            "http"
        },
    );
    (t, addr)
}

/// What curl got: its exit code, the HTTP status (0 when there was no response), the body,
/// and the time the transfer took (curl's own messages go to the test's stderr).
#[derive(Debug)]
struct Curl {
    code: i32,
    status: u16,
    body: String,
    seconds: f64,
}

/// `curl ARGS URL` (TLS settings and credentials in `args`); never retries.
fn curl(args: &[&str], url: &str) -> Curl {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{time_total}",
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl ({e}): run `cargo xtask setup`"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut tail = tail.split_whitespace();
    Curl {
        code: out.status.code().unwrap_or(-1),
        status: tail.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        seconds: tail.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN),
        body: body.to_owned(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A real Prometheus scrapes one daemon over TLS with basic auth and a client certificate, and
/// another over plain HTTP; with a wrong password its target is down with 401. Direct requests:
/// a wrong password → 401 with `WWW-Authenticate: Basic`, no client certificate or one from
/// another CA → refused in the handshake, plain HTTP → refused with a 400 that says why,
/// `/live` without credentials → 200. Prints the scrape latencies of both.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let dir = TempDir::new("webcfg");
    let pki = Pki::ca(&dir, "ca");
    pki.issue("ca", "server", true);
    pki.issue("ca", "client", false);
    Pki::ca(&dir, "other-ca").issue("other-ca", "stranger", false);
    let password = "correct horse battery staple";
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
             basic_auth_users:\n  prometheus: {}\n",
            bcrypt_hash(password)
        ),
    );
    let (tls_tracer, tls_addr) = daemon(Some(&web));
    let (plain_tracer, plain_addr) = daemon(None);
    let d = |f: &str| dir.path(f).display().to_string();

    let tls_job = |job: &str, pass: &str| {
        format!(
            "  - job_name: {job}\n    scheme: https\n    tls_config:\n      ca_file: {}\n      \
             cert_file: {}\n      key_file: {}\n    basic_auth:\n      username: prometheus\n      \
             password: \"{pass}\"\n    static_configs:\n      - targets: [\"{tls_addr}\"]\n",
            d("ca.crt"),
            d("client.crt"),
            d("client.key")
        )
    };
    let scrape_configs = format!(
        "{}{}  - job_name: plain\n    static_configs:\n      - targets: [\"{plain_addr}\"]\n",
        tls_job("tls", password),
        tls_job("wrong_password", "hunter2"),
    );
    let prom = Prometheus::start(&scrape_configs);

    // Direct checks meanwhile.
    let url = format!("https://{tls_addr}/metrics");
    let ca = d("ca.crt");
    let cert = d("client.crt");
    let key = d("client.key");
    let user = format!("prometheus:{password}");
    let tls_args = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let ok = curl(&[&tls_args[..], &["-u", &user]].concat(), &url);
    assert_eq!((ok.code, ok.status), (0, 200), "{ok:?}");
    assert!(ok.body.contains("tracer_events_total"), "{ok:?}");

    let wrong = curl(
        &[&tls_args[..], &["-i", "-u", "prometheus:hunter2"]].concat(),
        &url,
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(
        wrong
            .body
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{wrong:?}"
    );
    assert!(!wrong.body.contains("tracer_events_total"), "{wrong:?}");
    let unknown_user = curl(
        &[&tls_args[..], &["-u", &format!("root:{password}")]].concat(),
        &url,
    );
    assert_eq!(unknown_user.status, 401, "{unknown_user:?}");
    let no_creds = curl(&tls_args, &url);
    assert_eq!(no_creds.status, 401, "{no_creds:?}");

    let no_cert = curl(&["--cacert", &ca, "-u", &user], &url);
    assert_eq!(
        no_cert.status, 0,
        "no client certificate: refused, {no_cert:?}"
    );
    assert_ne!(no_cert.code, 0, "{no_cert:?}");
    assert!(!no_cert.body.contains("tracer_events_total"), "{no_cert:?}");
    let (sc, sk) = (d("stranger.crt"), d("stranger.key"));
    let stranger = curl(
        &["--cacert", &ca, "--cert", &sc, "--key", &sk, "-u", &user],
        &url,
    );
    assert_eq!(
        stranger.status, 0,
        "a certificate of another CA: refused, {stranger:?}"
    );
    assert_ne!(stranger.code, 0, "{stranger:?}");

    let plain = curl(&["-u", &user], &format!("http://{tls_addr}/metrics"));
    assert_eq!(plain.status, 400, "plain HTTP on the TLS port: {plain:?}");
    assert!(
        plain.body.contains("HTTP request to an HTTPS server"),
        "{plain:?}"
    );
    assert!(!plain.body.contains("tracer_events_total"), "{plain:?}");

    // Probes: /live and /ready need TLS (and here the client certificate) but no password.
    for path in ["/live", "/ready"] {
        let r = curl(&tls_args, &format!("https://{tls_addr}{path}"));
        assert_eq!((r.code, r.status), (0, 200), "{path}: {r:?}");
    }

    // Prometheus: the TLS target is up, the wrong password's down with 401, plain up; and
    // enough scrapes of each for the latencies.
    let deadline = Instant::now() + WAIT;
    let (tls_scrapes, plain_scrapes) = loop {
        let targets = prom.targets();
        let health = |job: &str| {
            targets
                .iter()
                .find(|t| t.0 == job)
                .map(|t| (t.1.clone(), t.2.clone()))
                .unwrap_or_default()
        };
        let tls_n = prom
            .value("count_over_time(up{job=\"tls\"}[5m])")
            .unwrap_or(0.0);
        let plain_n = prom
            .value("count_over_time(up{job=\"plain\"}[5m])")
            .unwrap_or(0.0);
        let (wrong_health, wrong_error) = health("wrong_password");
        if health("tls").0 == "up"
            && health("plain").0 == "up"
            && wrong_health == "down"
            && tls_n >= 20.0
            && plain_n >= 20.0
        {
            assert!(wrong_error.contains("401"), "{wrong_error}");
            break (tls_n, plain_n);
        }
        assert!(
            Instant::now() < deadline,
            "targets not as expected within {WAIT:?}: {targets:?}\nprometheus log:\n{}\ntls tracer:\n{}",
            prom.log(),
            tls_tracer.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Every scrape answered, but for a few that ran past the 1 s scrape timeout on a loaded
    // machine (3 of 20 with two other builds running): a broken TLS setup fails them all.
    let tls_up = prom
        .value("sum_over_time(up{job=\"tls\"}[5m])")
        .unwrap_or(0.0);
    assert!(
        tls_up >= 0.8 * tls_scrapes,
        "{tls_up} of {tls_scrapes} TLS scrapes succeeded"
    );

    // Latency: Prometheus' own scrape durations (kept-alive connections), and fresh connections
    // from curl (a full TLS handshake each).
    let prom_tls = prom
        .value("avg_over_time(scrape_duration_seconds{job=\"tls\"}[5m])")
        .unwrap();
    let prom_plain = prom
        .value("avg_over_time(scrape_duration_seconds{job=\"plain\"}[5m])")
        .unwrap();
    let fresh = |args: &[&str], url: &str| {
        median(
            (0..20)
                .map(|_| {
                    let r = curl(args, url);
                    assert_eq!(r.status, 200, "{r:?}");
                    r.seconds
                })
                .collect(),
        )
    };
    let curl_tls = fresh(&[&tls_args[..], &["-u", &user]].concat(), &url);
    let curl_plain = fresh(&[], &format!("http://{plain_addr}/metrics"));
    println!(
        "scrape latency: Prometheus avg over {tls_scrapes} scrapes: TLS+auth {:.2} ms, \
         over {plain_scrapes}: plain {:.2} ms; fresh connections (curl, median of 20): \
         TLS+auth {:.2} ms, plain {:.2} ms",
        prom_tls * 1e3,
        prom_plain * 1e3,
        curl_tls * 1e3,
        curl_plain * 1e3
    );
    drop(prom);
    for t in [tls_tracer, plain_tracer] {
        let (code, _, stderr) = t.terminate();
        assert_eq!(code, 0, "{stderr}");
    }
}

/// The client auth types keep Go's meanings: RequireAnyClientCert takes a certificate of any
/// CA and refuses none; VerifyClientCertIfGiven takes none, refuses a stranger's, takes the
/// CA's; NoClientCert asks for none. A TLS config without users needs no password.
#[test]
fn client_auth_types_keep_go_meanings() {
    let dir = TempDir::new("webcfg-auth");
    let pki = Pki::ca(&dir, "ca");
    pki.issue("ca", "server", true);
    pki.issue("ca", "client", false);
    Pki::ca(&dir, "other-ca").issue("other-ca", "stranger", false);
    let d = |f: &str| dir.path(f).display().to_string();
    let ca = d("ca.crt");
    let (cc, ck, sc, sk) = (
        d("client.crt"),
        d("client.key"),
        d("stranger.crt"),
        d("stranger.key"),
    );
    let none: &[&str] = &["--cacert", &ca];
    let ours: &[&str] = &["--cacert", &ca, "--cert", &cc, "--key", &ck];
    let theirs: &[&str] = &["--cacert", &ca, "--cert", &sc, "--key", &sk];
    for (auth, expect) in [
        ("RequireAnyClientCert", [false, true, true]),
        ("VerifyClientCertIfGiven", [true, true, false]),
        ("NoClientCert", [true, true, true]),
    ] {
        let ca_line = if auth == "NoClientCert" {
            ""
        } else {
            "  client_ca_file: ca.crt\n"
        };
        let web = dir.write(
            &format!("{auth}.yml"),
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 client_auth_type: {auth}\n{ca_line}"
            ),
        );
        let (t, addr) = daemon(Some(&web));
        let url = format!("https://{addr}/metrics");
        for (args, want) in [none, ours, theirs].into_iter().zip(expect) {
            let r = curl(args, &url);
            assert_eq!(r.status == 200, want, "{auth} with {args:?}: {r:?}");
        }
        let (code, _, stderr) = t.terminate();
        assert_eq!(code, 0, "{stderr}");
    }
}

/// A bad file, a missing certificate, a wrong password hash, a key of another certificate:
/// one line naming the file and the problem, exit status 1, before anything is loaded.
#[test]
fn bad_web_config_fails_at_start_with_one_line() {
    let dir = TempDir::new("webcfg-bad");
    let pki = Pki::ca(&dir, "ca");
    pki.issue("ca", "server", true);
    pki.issue("ca", "client", false);
    let cases: &[(&str, &str, &str)] = &[
        (
            "missing-cert.yml",
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
            "nope.crt: no such file",
        ),
        (
            "hash.yml",
            "basic_auth_users:\n  alice: hunter2\n",
            "not a bcrypt hash",
        ),
        (
            "typo.yml",
            "tls_server_config:\n  cert_fille: server.crt\n",
            "unknown field",
        ),
        (
            "mismatch.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
            "does not fit the certificate",
        ),
        (
            "no-key.yml",
            "tls_server_config:\n  cert_file: server.crt\n",
            "missing one of key or key_file",
        ),
        (
            "not-pem.yml",
            "tls_server_config:\n  cert_file: hash.yml\n  key_file: server.key\n",
            "no PEM certificate",
        ),
        (
            "auth.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Maybe\n",
            "client_auth_type \"Maybe\"",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.write(name, text);
        let p = path.display().to_string();
        let (code, stdout, stderr, ran) = run_tracer(
            &["--metrics-addr", "127.0.0.1:0", "--web-config-file", &p],
            Duration::from_secs(60),
        );
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{name}: one line: {stderr}");
        assert!(
            stderr.starts_with("tracer: error: --web-config-file ") && stderr.contains(&p),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(want), "{name}: want {want:?} in {stderr}");
        assert!(!stderr.contains("tracing TCP"), "{name}: {stderr}");
        assert!(ran < Duration::from_secs(30), "{name}: {ran:?}");
    }
    let missing = dir.path("absent.yml").display().to_string();
    let (code, _, stderr, _) = run_tracer(
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--web-config-file",
            &missing,
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("absent.yml: no such file"), "{stderr}");
    // Without a server to configure: a usage error.
    let (code, _, stderr, _) =
        run_tracer(&["--web-config-file", &missing], Duration::from_secs(60));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("give --metrics-addr too"), "{stderr}");
}

/// The subject of the certificate the server at `addr` presents (openssl s_client).
fn served_subject(addr: SocketAddr, ca: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile", ca])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): run `cargo xtask setup`"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no subject in the s_client output:\n{text}"))
}

/// A certificate renewed in place (as a Kubernetes Secret or cert-manager does) is served from
/// the next handshake on, without a restart; a renewal that does not load (a key that does not
/// fit) keeps the previous pair.
#[test]
fn rotated_certificate_is_served_without_restart() {
    let dir = TempDir::new("webcfg-rotate");
    let pki = Pki::ca(&dir, "ca");
    pki.issue("ca", "server", true);
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let (t, addr) = daemon(Some(&web));
    let ca = dir.path("ca.crt").display().to_string();
    assert!(served_subject(addr, &ca).contains("CN = server"), "before");

    // Renewed: another certificate and key under the same names, moved in place at once.
    pki.issue("ca", "renewed", true);
    std::fs::rename(dir.path("renewed.key"), dir.path("server.key")).unwrap();
    std::fs::rename(dir.path("renewed.crt"), dir.path("server.crt")).unwrap();
    assert!(
        served_subject(addr, &ca).contains("CN = renewed"),
        "after renewal; tracer:\n{}",
        t.stderr()
    );
    let r = curl(&["--cacert", &ca], &format!("https://{addr}/metrics"));
    assert_eq!(r.status, 200, "{r:?}");

    // A broken renewal: a certificate whose key is not the one on disk. The last good pair
    // stays in use, with a warning.
    pki.issue("ca", "broken", true);
    std::fs::rename(dir.path("broken.crt"), dir.path("server.crt")).unwrap();
    assert!(served_subject(addr, &ca).contains("CN = renewed"), "kept");
    assert!(
        t.wait_stderr(Duration::from_secs(10), |e| e.contains("does not load")),
        "a warning names the failed reload:\n{}",
        t.stderr()
    );
    let (code, _, stderr) = t.terminate();
    assert_eq!(code, 0, "{stderr}");
}
