//! Container identity of a process: its cgroup v2 path and, when that path names one, the
//! container id that Docker, containerd, CRI-O and the Kubernetes kubepods slices write into it.
//!
//! Consumes `/proc/PID/cgroup` (the `0::PATH` line, which exists on cgroup v2 and on hybrid
//! hosts alike); produces [`Cgroup`]s. [`Containers`] caches the answer per pid for a short
//! time, so a busy host's close records cost no `/proc` read each; a leak (rare, and acted on)
//! always reads afresh.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attribution::ProcFs;

/// A 64-hex-digit container id (lowercase), stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContainerId([u8; 64]);

impl ContainerId {
    /// Parses exactly 64 hex digits (either case; stored lowercase).
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 64 || !b.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut id = [0u8; 64];
        for (d, s) in id.iter_mut().zip(b) {
            *d = s.to_ascii_lowercase();
        }
        Some(ContainerId(id))
    }

    /// The full id.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 12-character short form `docker ps` and `crictl ps` show.
    pub fn short(&self) -> &str {
        &self.as_str()[..12]
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContainerId({})", self.short())
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A process's cgroup v2 membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// The path from the `0::` line of `/proc/PID/cgroup`, e.g.
    /// `/system.slice/docker-<id>.scope`.
    pub path: Arc<str>,
    /// The container id the path names, if any.
    pub container_id: Option<ContainerId>,
}

/// The cgroup v2 path in the text of `/proc/PID/cgroup`: the `0::PATH` line.
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
        .filter(|p| !p.is_empty())
}

/// The container id a cgroup path names: the innermost path component that is, or ends in, a
/// 64-hex id, with the runtimes' decorations removed. Covers
/// - Docker (cgroupfs driver): `/docker/<id>`;
/// - Docker (systemd driver): `/system.slice/docker-<id>.scope`;
/// - containerd / CRI-O under Kubernetes (systemd driver):
///   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`,
///   `…/crio-<id>.scope`;
/// - Kubernetes with the cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`;
/// - podman: `…/libpod-<id>.scope`.
///
/// A pod's uid (`pod<uuid>`) is not a container id and is never taken for one.
pub fn container_id_of(path: &str) -> Option<ContainerId> {
    path.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        // The id is the last 64 characters after an optional `runtime-` prefix.
        let tail = part.rsplit(['-', ':']).next().unwrap_or(part);
        ContainerId::parse(tail)
    })
}

/// Reads a process's cgroup from `/proc/PID/cgroup`.
pub fn cgroup_of(proc: &ProcFs, pid: u32) -> Option<Cgroup> {
    let text = std::fs::read_to_string(proc.root().join(pid.to_string()).join("cgroup")).ok()?;
    let path = parse_proc_cgroup(&text)?;
    Some(Cgroup {
        container_id: container_id_of(path),
        path: Arc::from(path),
    })
}

/// Counters of a [`Containers`] cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// `/proc/PID/cgroup` reads.
    pub reads: u64,
    /// Answers from the cache.
    pub hits: u64,
    /// Times the cache was full and was emptied (counted, so that nothing is lost silently).
    pub resets: u64,
}

/// Per-pid cache of [`Cgroup`]s, each answer trusted for `ttl`. Bounded: when full it is
/// emptied and counted ([`ContainerStats::resets`]); answers are cheap to read again.
#[derive(Debug)]
pub struct Containers {
    proc: ProcFs,
    ttl: Duration,
    capacity: usize,
    cache: crate::timewait::FastMap<u32, (Instant, Option<Cgroup>)>,
    stats: ContainerStats,
}

impl Containers {
    pub fn new(proc: ProcFs, ttl: Duration, capacity: usize) -> Self {
        Containers {
            proc,
            ttl,
            capacity: capacity.max(1),
            cache: Default::default(),
            stats: ContainerStats::default(),
        }
    }

    pub fn stats(&self) -> ContainerStats {
        self.stats
    }

    /// The cgroup of `pid`, from the cache when younger than the ttl.
    pub fn get(&mut self, pid: u32, now: Instant) -> Option<Cgroup> {
        if let Some((at, cg)) = self.cache.get(&pid)
            && now.saturating_duration_since(*at) < self.ttl
        {
            self.stats.hits += 1;
            return cg.clone();
        }
        self.fresh(pid, now)
    }

    /// The cgroup of `pid`, read now (and cached).
    pub fn fresh(&mut self, pid: u32, now: Instant) -> Option<Cgroup> {
        self.stats.reads += 1;
        let cg = cgroup_of(&self.proc, pid);
        if self.cache.len() >= self.capacity && !self.cache.contains_key(&pid) {
            self.cache.clear();
            self.stats.resets += 1;
        }
        self.cache.insert(pid, (now, cg.clone()));
        cg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

    #[test]
    fn parses_the_v2_line_on_hybrid_and_unified_hosts() {
        let hybrid = "12:pids:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/user.slice/session-1.scope\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            Some("/user.slice/session-1.scope")
        );
        assert_eq!(parse_proc_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_proc_cgroup("3:cpu:/x\n"), None);
        assert_eq!(parse_proc_cgroup(""), None);
    }

    #[test]
    fn finds_ids_in_every_runtimes_layout() {
        let forms = [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_1111_2222_3333_444455556666.slice/cri-containerd-{ID}.scope"
            ),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b.slice/crio-{ID}.scope"
            ),
            format!("/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/docker/{ID}/nested/child"),
            format!(
                "/system.slice/containerd.service/kubepods-burstable-pod1.slice:cri-containerd:{ID}"
            ),
        ];
        for f in &forms {
            let id = container_id_of(f).unwrap_or_else(|| panic!("no id in {f}"));
            assert_eq!(id.as_str(), ID, "{f}");
            assert_eq!(id.short(), &ID[..12]);
        }
        let upper = format!("/docker/{}", ID.to_ascii_uppercase());
        assert_eq!(container_id_of(&upper).unwrap().as_str(), ID);
    }

    #[test]
    fn no_id_where_there_is_none() {
        for p in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/docker.service",
            "/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666",
            "/docker/abc123",
            &format!("/docker/{}", &ID[..63]),
            &format!("/docker/{ID}0"),
            &format!("/docker/{}g", &ID[..63]),
        ] {
            assert_eq!(container_id_of(p), None, "{p}");
        }
    }

    #[test]
    fn cache_is_bounded_and_expires() {
        let dir = std::env::temp_dir().join(format!("tracer-cg-{}", std::process::id()));
        for pid in [10u32, 11, 12] {
            let d = dir.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup"), format!("0::/docker/{ID}\n")).unwrap();
        }
        let mut c = Containers::new(ProcFs::new(&dir), Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(c.get(10, t0).unwrap().container_id.unwrap().as_str(), ID);
        assert_eq!(
            c.get(10, t0).unwrap().path.as_ref(),
            format!("/docker/{ID}")
        );
        assert_eq!(c.stats().reads, 1);
        assert_eq!(c.stats().hits, 1);
        // Moved to another cgroup: seen once the answer expires.
        std::fs::write(dir.join("10/cgroup"), "0::/user.slice\n").unwrap();
        assert!(c.get(10, t0).unwrap().container_id.is_some());
        let later = t0 + Duration::from_secs(2);
        assert_eq!(c.get(10, later).unwrap().path.as_ref(), "/user.slice");
        assert_eq!(c.get(10, later).unwrap().container_id, None);
        c.get(11, later);
        c.get(12, later);
        assert_eq!(c.stats().resets, 1);
        assert!(c.get(99, later).is_none(), "no such process");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
