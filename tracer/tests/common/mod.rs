//! Test harness: runs the real `tracer` binary (which loads the real eBPF program; these tests
//! need root and fail, never skip, without it) and drives real sockets on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running tracer whose stdout lines are collected in the background.
pub struct Traced {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    seen: Vec<String>,
}

impl Traced {
    /// Starts `tracer ARGS` and waits until it says it is tracing.
    pub fn start(args: &[&str]) -> Traced {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tracer");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let eb = err_buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("tracing TCP state changes") {
                    let _ = ready_tx.send(());
                }
                let mut b = eb.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        let mut t = Traced {
            child,
            lines: rx,
            stderr: err_buf,
            seen: Vec::new(),
        };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = t.child.try_wait().ok().flatten();
            let _ = t.child.kill();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "tracer did not start tracing within 30 s (exit: {status:?}); stderr:\n{}",
                t.stderr()
            );
        }
        t
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Collects stdout lines until `pred` matches one of the JSON lines or `timeout` passes.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        if let Some(v) = self
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| pred(v))
        {
            return Some(v);
        }
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v = serde_json::from_str::<Value>(&line).ok();
                    self.seen.push(line);
                    if let Some(v) = v
                        && pred(&v)
                    {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits until at least `n` JSON lines match `pred`; returns how many matched.
    pub fn wait_for_n(
        &mut self,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        let count = |seen: &[String]| {
            seen.iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| pred(v))
                .count()
        };
        let mut got = count(&self.seen);
        while got < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if serde_json::from_str::<Value>(&line).is_ok_and(|v| pred(&v)) {
                        got += 1;
                    }
                    self.seen.push(line);
                }
                Err(_) => break,
            }
        }
        got
    }

    /// Sends SIGINT, waits for exit, and returns (exit code, every stdout line parsed as JSON).
    pub fn stop(self) -> (i32, Vec<Value>, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.finish()
    }

    /// Waits (up to 60 s) for the tracer to exit on its own.
    pub fn finish(mut self) -> (i32, Vec<Value>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tracer did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        std::thread::sleep(Duration::from_millis(50));
        let values = self
            .seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect();
        (status.code().unwrap_or(-1), values, self.stderr())
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// True when a JSON record is about the connection between these two local ports.
pub fn on_ports(v: &Value, a: u16, b: u16) -> bool {
    let sp = v["sport"].as_u64().unwrap_or(0) as u16;
    let dp = v["dport"].as_u64().unwrap_or(0) as u16;
    (sp == a && dp == b) || (sp == b && dp == a)
}

pub fn of_type<'a>(vs: &'a [Value], ty: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let ty = ty.to_owned();
    vs.iter().filter(move |v| v["type"] == ty.as_str())
}

pub fn states(v: &Value) -> (String, String) {
    (
        v["old"].as_str().unwrap().to_owned(),
        v["new"].as_str().unwrap().to_owned(),
    )
}
