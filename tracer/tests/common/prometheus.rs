//! A real Prometheus on loopback for the scrape tests (tests/daemon.rs, tests/web_config.rs),
//! with the temporary directory and the loopback port it needs. The binary comes from
//! [`super::promtool::tool`] (installed by `cargo xtask setup`); it fails, never skips,
//! without it.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::http_request;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "tracer-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` in the directory; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback address for a server that binds it later (Prometheus, seconds after it
/// starts). Not from `bind(":0")`: that port is in the ephemeral range, where any connect() of
/// the tests running alongside may take it before the server binds it (seen under emulation:
/// "bind: address already in use"). A port below the range is only ever taken by an explicit
/// bind.
pub fn port_outside_ephemeral_range() -> SocketAddr {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    // Each call starts elsewhere: two servers of this process must not be handed one port.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(low.saturating_sub(10_000).max(1));
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = (std::process::id().wrapping_mul(7919) + call * 97) % span;
    (0..span)
        .map(|i| 10_000 + ((start + i) % span) as u16)
        .find_map(|port| {
            TcpListener::bind(("127.0.0.1", port))
                .ok()
                .map(|l| l.local_addr().unwrap())
        })
        .expect("a free loopback port below the ephemeral range")
}

/// A Prometheus server on loopback, killed (and reaped) on drop.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` over plain HTTP every second (job `tracer`).
    pub fn scraping(target: SocketAddr) -> Prometheus {
        Prometheus::start(&format!(
            "  - job_name: tracer\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ))
    }

    /// Starts Prometheus with these `scrape_configs` (YAML list items, indented two spaces),
    /// every second.
    pub fn start(scrape_configs: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n{scrape_configs}"
            ),
        );
        let addr = port_outside_ephemeral_range();
        let log = dir.path("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(super::promtool::tool("PROMETHEUS", "prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run prometheus ({e}): run `cargo xtask setup`"));
        Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/PATH` as JSON, or why not.
    pub fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let r = http_request(
            self.addr,
            "GET",
            &format!("/api/v1/{path_and_query}"),
            &[],
            Duration::from_secs(30),
        )
        .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("HTTP {}: {}", r.status, r.body));
        }
        serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))
    }

    /// The active targets: (job, health, lastError, lastScrapeDuration).
    pub fn targets(&self) -> Vec<(String, String, String, f64)> {
        let Ok(v) = self.api("targets?state=active") else {
            return Vec::new();
        };
        v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                    t["health"].as_str().unwrap_or_default().to_owned(),
                    t["lastError"].as_str().unwrap_or_default().to_owned(),
                    t["lastScrapeDuration"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    }

    /// An instant query's single value.
    pub fn value(&self, query: &str) -> Option<f64> {
        let q: String = query
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let v = self.api(&format!("query?query={q}")).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
