//! Network namespaces: their identity, where to find them, and a sock_diag socket inside each.
//!
//! The kernel program reports each socket's namespace as the inode number of its namespace file
//! (what `readlink /proc/PID/ns/net` shows as `net:[N]`). sock_diag answers only about the
//! namespace its netlink socket was created in, and 4-tuples repeat across namespaces (every
//! pod has its own 127.0.0.1), so every question about a socket by address goes to a socket
//! made inside that socket's namespace.
//!
//! Consumes `/proc/*/ns/net` and `/run/netns/*` (the named namespaces of `ip netns`, which may
//! have no process in them); produces [`SockDiag`] handles per namespace inode. A namespace is
//! entered from a short-lived thread (`setns` changes only the calling thread's namespace), the
//! netlink socket is created there and keeps working from any thread. Sockets are cached and
//! dropped when their namespace is no longer found, so the tracer does not keep dead
//! namespaces alive.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::attribution::ProcFs;
use crate::sockdiag::{SockDiag, SockDiagError};

/// Where `ip netns add` puts named namespaces.
pub const RUN_NETNS: &str = "/run/netns";

/// The inode number of the namespace file at `path` (`/proc/PID/ns/net`, `/run/netns/NAME`).
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// The tracer's own network namespace.
pub fn own() -> Option<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// The network namespace of a process.
pub fn of_pid(proc: &ProcFs, pid: u32) -> Option<u32> {
    inode_of(&proc.root().join(pid.to_string()).join("ns/net"))
}

/// Every network namespace that has a process in it or a name under `run_netns`, each with
/// one file to enter it by. Processes are listed first, so a namespace both named and
/// populated is entered through its name (which cannot be recycled like a pid).
pub fn discover(proc: &ProcFs, run_netns: &Path) -> HashMap<u32, PathBuf> {
    let mut found = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(proc.root()) {
        for entry in dir.flatten() {
            let name = entry.file_name();
            if !name
                .to_str()
                .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let path = entry.path().join("ns/net");
            if let Some(ino) = inode_of(&path) {
                found.entry(ino).or_insert(path);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(run_netns) {
        for entry in dir.flatten() {
            let path = entry.path();
            if let Some(ino) = inode_of(&path) {
                found.insert(ino, path);
            }
        }
    }
    found
}

/// Why a namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    /// The namespace file could not be opened (the process or the name is gone).
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The file now names another namespace (its pid was reused).
    #[error("{path} is now namespace {found}, not {wanted}")]
    Moved {
        path: String,
        wanted: u32,
        found: u32,
    },
    /// `setns(CLONE_NEWNET)` failed (needs CAP_SYS_ADMIN).
    #[error("setns into {path}")]
    Setns {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The sock_diag socket could not be made inside it.
    #[error("sock_diag in {path}")]
    Diag {
        path: String,
        #[source]
        source: SockDiagError,
    },
}

/// Runs `f` on a short-lived thread that entered the network namespace whose file is `path`,
/// after checking that the file still names namespace `wanted` (a pid can be reused).
/// `setns` changes only the calling thread's namespace, so nothing else of the tracer moves.
fn run_in<T: Send>(
    path: &Path,
    wanted: u32,
    f: impl FnOnce() -> Result<T, EnterError> + Send,
) -> Result<T, EnterError> {
    let shown = || path.display().to_string();
    let file = File::open(path).map_err(|source| EnterError::Open {
        path: shown(),
        source,
    })?;
    let found = file
        .metadata()
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
        .unwrap_or(0);
    if found != wanted {
        return Err(EnterError::Moved {
            path: shown(),
            wanted,
            found,
        });
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this (scoped, short-lived) thread only; the fd is valid for the
            // call (`file` outlives the scope).
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(EnterError::Setns {
                    path: shown(),
                    source: io::Error::last_os_error(),
                });
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(EnterError::Setns {
                path: shown(),
                source: io::Error::other("the namespace thread panicked"),
            })
        })
    })
}

/// Opens a sock_diag socket inside the namespace whose file is `path`, checking that the file
/// still names namespace `wanted`. The socket keeps working from any thread.
pub fn open_diag_in(path: &Path, wanted: u32) -> Result<SockDiag, EnterError> {
    run_in(path, wanted, || {
        SockDiag::open().map_err(|source| EnterError::Diag {
            path: path.display().to_string(),
            source,
        })
    })
}

/// Reads `file` (a per-namespace file such as `/proc/sys/net/ipv4/ip_local_port_range`) from
/// inside the namespace whose file is `path`, checking that it still names `wanted`. Network
/// sysctls answer for the namespace of the task that reads them.
pub fn read_file_in(path: &Path, wanted: u32, file: &Path) -> Result<String, EnterError> {
    run_in(path, wanted, || {
        std::fs::read_to_string(file).map_err(|source| EnterError::Open {
            path: file.display().to_string(),
            source,
        })
    })
}

/// TIME_WAIT sockets summed over namespaces ([`Namespaces::time_wait_total`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeWaitTotal {
    pub sockets: u64,
    /// Namespaces counted.
    pub namespaces: u64,
    /// Namespaces that could not be read (gone meanwhile, no privilege).
    pub failed: u64,
}

/// The `tw` count of a `/proc/net/sockstat` (`TCP: inuse 5 orphan 0 tw 12 alloc 9 mem 1`).
pub fn sockstat_time_wait(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "tw" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Counters of a [`Namespaces`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetnsStats {
    /// Namespace lists made (`/proc/*/ns/net`, `/run/netns`).
    pub discoveries: u64,
    /// Namespaces entered (a sock_diag socket made inside).
    pub entered: u64,
    /// Attempts to enter that failed (namespace gone, pid reused, no privilege).
    pub enter_failed: u64,
    /// Questions about a namespace that no process or name leads to (it is gone, or its only
    /// holders are sockets): answered "unknown", never from another namespace.
    pub unreachable: u64,
    /// Sockets dropped because their namespace disappeared, or to stay within capacity.
    pub dropped: u64,
    /// Namespaces left out of a host-wide TIME_WAIT count: their sockstat could not be read
    /// (gone between listing and reading, a pid reused meanwhile).
    pub sockstat_failed: u64,
}

/// sock_diag sockets per network namespace, made on demand and cached.
pub struct Namespaces {
    proc: ProcFs,
    run_netns: PathBuf,
    own: u32,
    own_diag: SockDiag,
    others: HashMap<u32, SockDiag>,
    known: HashMap<u32, PathBuf>,
    last_discovery: Option<Instant>,
    min_rediscover: Duration,
    capacity: usize,
    stats: NetnsStats,
}

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespaces")
            .field("own", &self.own)
            .field("open", &self.others.len())
            .field("known", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl Namespaces {
    /// Most namespaces with a cached socket at once.
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// Opens the sock_diag socket of the tracer's own namespace.
    pub fn open() -> Result<Self, SockDiagError> {
        Ok(Namespaces {
            proc: ProcFs::default(),
            run_netns: PathBuf::from(RUN_NETNS),
            own: own().unwrap_or(0),
            own_diag: SockDiag::open()?,
            others: HashMap::new(),
            known: HashMap::new(),
            last_discovery: None,
            min_rediscover: Duration::from_secs(1),
            capacity: Self::DEFAULT_CAPACITY,
            stats: NetnsStats::default(),
        })
    }

    /// The tracer's own namespace (0 if it could not be read).
    pub fn own(&self) -> u32 {
        self.own
    }

    pub fn stats(&self) -> NetnsStats {
        self.stats
    }

    /// Lists the namespaces now (processes and `/run/netns`), drops the sockets of those that
    /// are gone, and returns every namespace found, the tracer's own first.
    pub fn discover(&mut self, now: Instant) -> Vec<u32> {
        self.known = discover(&self.proc, &self.run_netns);
        self.last_discovery = Some(now);
        self.stats.discoveries += 1;
        let before = self.others.len();
        let known = &self.known;
        self.others.retain(|ns, _| known.contains_key(ns));
        self.stats.dropped += (before - self.others.len()) as u64;
        let mut all: Vec<u32> = self
            .known
            .keys()
            .copied()
            .filter(|&n| n != self.own)
            .collect();
        all.sort_unstable();
        all.insert(0, self.own);
        all
    }

    /// The sock_diag socket of namespace `netns` (0 = unknown, taken as the tracer's own).
    /// `None` when the namespace cannot be reached: then nothing is asked of any other one.
    pub fn diag(&mut self, netns: u32, now: Instant) -> Option<&mut SockDiag> {
        if netns == 0 || netns == self.own {
            return Some(&mut self.own_diag);
        }
        if !self.others.contains_key(&netns) {
            let sock = self.enter(netns, now)?;
            if self.others.len() >= self.capacity {
                // Dropping one is enough; it is made again when asked for.
                if let Some(&victim) = self.others.keys().next() {
                    self.others.remove(&victim);
                    self.stats.dropped += 1;
                }
            }
            self.others.insert(netns, sock);
        }
        self.others.get_mut(&netns)
    }

    /// Whether namespace `netns` can still be found (a process in it, or a name under
    /// /run/netns), the list made again first when it is older than a second. A namespace
    /// that cannot be found may still exist (kept by an open fd or a socket passed out of it),
    /// so callers decide nothing from this alone.
    pub fn is_known(&mut self, netns: u32, now: Instant) -> bool {
        if netns == 0 || netns == self.own {
            return true;
        }
        if self.known.contains_key(&netns) {
            return true;
        }
        let due = self
            .last_discovery
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_rediscover);
        if due {
            self.discover(now);
        }
        self.known.contains_key(&netns)
    }

    /// Reads a per-namespace file (a network sysctl) as seen from inside namespace `netns`
    /// (0 = the tracer's own). `None` when the namespace cannot be reached or the read fails.
    pub fn read_in(&mut self, netns: u32, file: &Path, now: Instant) -> Option<String> {
        if netns == 0 || netns == self.own {
            return std::fs::read_to_string(file).ok();
        }
        if !self.known.contains_key(&netns) {
            let due = self
                .last_discovery
                .is_none_or(|t| now.saturating_duration_since(t) >= self.min_rediscover);
            if due {
                self.discover(now);
            }
        }
        let Some(path) = self.known.get(&netns).cloned() else {
            self.stats.unreachable += 1;
            return None;
        };
        match read_file_in(&path, netns, file) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("network namespace {netns}: {e}");
                self.stats.enter_failed += 1;
                None
            }
        }
    }

    /// TIME_WAIT sockets of every namespace found (each one's `/proc/net/sockstat`, `tw`:
    /// the kernel counts timewait sockets per namespace), the namespaces counted, and those
    /// that could not be read. The list of namespaces is made again when it is older than
    /// `rediscover`. A namespace with a process is read through `/proc/PID/net` (no thread, no
    /// `setns`), checked afterwards to still be that pid's; a namespace with only a name under
    /// /run/netns from a thread inside it.
    pub fn time_wait_total(&mut self, now: Instant, rediscover: Duration) -> TimeWaitTotal {
        let stale = self
            .last_discovery
            .is_none_or(|t| now.saturating_duration_since(t) >= rediscover);
        if stale {
            self.discover(now);
        }
        let mut total = TimeWaitTotal::default();
        let mut add = |text: Option<String>| match text.as_deref().and_then(sockstat_time_wait) {
            Some(n) => {
                total.sockets += n;
                total.namespaces += 1;
            }
            None => total.failed += 1,
        };
        add(std::fs::read_to_string("/proc/net/sockstat").ok());
        for (&ns, path) in self.known.iter().filter(|(ns, _)| **ns != self.own) {
            let pid_dir = path
                .parent()
                .and_then(Path::parent)
                .filter(|_| path.ends_with("ns/net") && path.starts_with(self.proc.root()));
            let text = match pid_dir {
                Some(dir) => {
                    let text = std::fs::read_to_string(dir.join("net/sockstat")).ok();
                    // The pid may have gone and come back as another process meanwhile.
                    text.filter(|_| inode_of(path) == Some(ns))
                }
                None => read_file_in(path, ns, Path::new("/proc/thread-self/net/sockstat")).ok(),
            };
            add(text);
        }
        self.stats.sockstat_failed += total.failed;
        total
    }

    fn enter(&mut self, netns: u32, now: Instant) -> Option<SockDiag> {
        if !self.known.contains_key(&netns) {
            let due = self
                .last_discovery
                .is_none_or(|t| now.saturating_duration_since(t) >= self.min_rediscover);
            if due {
                self.discover(now);
            }
        }
        let Some(path) = self.known.get(&netns).cloned() else {
            self.stats.unreachable += 1;
            return None;
        };
        match open_diag_in(&path, netns) {
            Ok(s) => {
                self.stats.entered += 1;
                Some(s)
            }
            Err(e) => {
                tracing::debug!("network namespace {netns}: {e}");
                self.stats.enter_failed += 1;
                self.known.remove(&netns);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_found_by_discovery() {
        let own = own().expect("/proc/self/ns/net");
        let all = discover(&ProcFs::default(), Path::new(RUN_NETNS));
        assert!(all.contains_key(&own));
        let mine = of_pid(&ProcFs::default(), std::process::id());
        assert_eq!(mine, Some(own));
    }

    #[test]
    fn a_file_that_names_another_namespace_is_refused() {
        let path = Path::new("/proc/self/ns/net");
        let own = own().unwrap();
        match open_diag_in(path, own.wrapping_add(1)) {
            Err(EnterError::Moved { wanted, found, .. }) => {
                assert_eq!((wanted, found), (own.wrapping_add(1), own));
            }
            other => panic!("expected Moved, got {other:?}"),
        }
        assert!(matches!(
            open_diag_in(Path::new("/nonexistent/ns"), 1),
            Err(EnterError::Open { .. })
        ));
    }
}
