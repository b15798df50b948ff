//! Owner resolution: which process holds a socket.
//!
//! Consumes socket inodes (from `sockdiag`) and the fd tables under `/proc/PID/fd`; produces
//! [`Owner`]s. The task on CPU at a transition is often not the socket's owner (softirq,
//! timers, the sending peer on loopback), so the owner is found by the socket's inode:
//! 4-tuple → sock_diag lookup → inode → the processes whose fd tables hold `socket:[INODE]`.
//!
//! Costs: a full `/proc` scan is one `readlink` per open fd on the host, so the [`Attributor`]
//! keeps the last scan's index and a bounded cache of resolved owners, checks a cached answer
//! with one `readlink`, and rescans at most once per `min_rescan_interval`.
//! TIME_WAIT sockets and orphans (closed by their process, still finishing) have inode 0 and no
//! owner.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::event::Comm;
use crate::record::{Owner, OwnerSource, SocketId};
use crate::sockdiag::{DiagSocket, FourTuple, SockDiag};
use crate::untrusted::{CMDLINE_KEPT_MAX, Cmdline, CmdlinePolicy};

/// Parses the target of a `/proc/PID/fd/N` link: `socket:[12345]` → 12345.
pub fn parse_socket_link(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One process holding a socket, and one fd it holds it under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    /// Thread-group id.
    pub pid: u32,
    pub fd: u32,
}

/// One `socket:[INODE]` link of one process: 12 bytes. Socket inode numbers are 32-bit
/// (`get_next_ino`; sock_diag's `idiag_inode` is a `__u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Link {
    inode: u32,
    pid: u32,
    fd: u32,
}

/// Socket inode → the processes (tgids) whose fd tables hold it, from one `/proc` scan: the
/// links sorted by inode (12 bytes per socket, no hash-table slack; a look-up is a binary
/// search). Built by [`InodeIndex::insert`] then [`InodeIndex::finish`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InodeIndex {
    links: Vec<Link>,
    /// Distinct inodes (after `finish`).
    inodes: usize,
    /// Processes whose fd table was read whole.
    pub scanned_processes: u32,
    /// Processes that vanished mid-scan or whose fd table could not be read (permission);
    /// what was read of a table before it vanished is kept.
    pub skipped_processes: u32,
}

impl InodeIndex {
    /// Records that `pid` holds `inode` under `fd` (call [`InodeIndex::finish`] before asking).
    /// A process is recorded once per inode (its lowest fd), whatever the number of fds it
    /// holds it under. An inode above 32 bits is not a socket's and is left out.
    pub fn insert(&mut self, inode: u64, pid: u32, fd: u32) {
        if let Ok(inode) = u32::try_from(inode) {
            self.links.push(Link { inode, pid, fd });
        }
    }

    /// Sorts and de-duplicates what was inserted, and gives back the growth slack.
    pub fn finish(&mut self) {
        self.links.sort_unstable();
        self.links
            .dedup_by(|b, a| (a.inode, a.pid) == (b.inode, b.pid));
        self.links.shrink_to_fit();
        self.inodes = self.links.chunk_by(|a, b| a.inode == b.inode).count();
    }

    /// Every process holding `inode` (empty if none was seen).
    pub fn holders(&self, inode: u64) -> impl Iterator<Item = Holder> + '_ {
        let found = match u32::try_from(inode) {
            Ok(inode) => {
                let start = self.links.partition_point(|l| l.inode < inode);
                let len = self.links[start..].partition_point(|l| l.inode == inode);
                &self.links[start..start + len]
            }
            Err(_) => &[],
        };
        found.iter().map(|l| Holder {
            pid: l.pid,
            fd: l.fd,
        })
    }

    /// The owner's pid and how it was found: the only holder ([`OwnerSource::Inode`]) or the
    /// lowest pid among several ([`OwnerSource::Shared`]).
    pub fn owner_pid(&self, inode: u64) -> Option<(u32, OwnerSource)> {
        pick(self.holders(inode)).map(|(h, src)| (h.pid, src))
    }

    /// Number of distinct socket inodes seen.
    pub fn len(&self) -> usize {
        self.inodes
    }

    pub fn is_empty(&self) -> bool {
        self.inodes == 0
    }

    /// Bytes held (for docs/performance.md's accounting).
    pub fn heap_bytes(&self) -> usize {
        self.links.capacity() * size_of::<Link>()
    }
}

/// The holder with the lowest pid, and whether it was alone.
fn pick(holders: impl Iterator<Item = Holder>) -> Option<(Holder, OwnerSource)> {
    let mut n = 0usize;
    let lowest = holders.inspect(|_| n += 1).min_by_key(|h| h.pid)?;
    let source = if n > 1 {
        OwnerSource::Shared
    } else {
        OwnerSource::Inode
    };
    Some((lowest, source))
}

/// A view of a procfs mount: `/proc` by default, or e.g. the host's procfs mounted inside a
/// container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        ProcFs::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pid_path(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// Walks `ROOT/*/fd` (or only `ROOT/PID/fd`) and indexes every `socket:[INODE]` link.
    /// Only thread-group directories are listed by procfs, so each fd table is read once.
    pub fn scan_inodes(&self, only_pid: Option<u32>) -> InodeIndex {
        let mut index = InodeIndex::default();
        match only_pid {
            Some(pid) => self.scan_process(pid, &mut index),
            None => {
                let Ok(dir) = fs::read_dir(&self.root) else {
                    return index;
                };
                for entry in dir.flatten() {
                    let pid = entry
                        .file_name()
                        .to_str()
                        .and_then(|s| s.parse::<u32>().ok());
                    if let Some(pid) = pid {
                        self.scan_process(pid, &mut index);
                    }
                }
            }
        }
        index.finish();
        index
    }

    fn scan_process(&self, pid: u32, index: &mut InodeIndex) {
        let mut path = self.pid_path(pid);
        path.push("fd");
        let Ok(dir) = fs::read_dir(&path) else {
            index.skipped_processes += 1;
            return;
        };
        let mut complete = true;
        for entry in dir {
            // An error here means the process went away mid-listing: keep what was read.
            let Ok(entry) = entry else {
                complete = false;
                break;
            };
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // The fd may have been closed since the listing: skip it.
            let Ok(target) = fs::read_link(entry.path()) else {
                continue;
            };
            if let Some(inode) = parse_socket_link(target.as_os_str().as_bytes()) {
                index.insert(inode, pid, fd);
            }
        }
        if complete {
            index.scanned_processes += 1;
        } else {
            index.skipped_processes += 1;
        }
    }

    /// Whether `pid` still holds `inode` under `fd` (one `readlink`).
    pub fn holds(&self, pid: u32, fd: u32, inode: u64) -> bool {
        let mut path = self.pid_path(pid);
        path.push("fd");
        path.push(fd.to_string());
        fs::read_link(&path)
            .ok()
            .and_then(|t| parse_socket_link(t.as_os_str().as_bytes()))
            == Some(inode)
    }

    /// The process name from `ROOT/PID/comm` (raw bytes, at most 15).
    pub fn comm(&self, pid: u32) -> Option<Comm> {
        let mut path = self.pid_path(pid);
        path.push("comm");
        let raw = fs::read(path).ok()?;
        let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let mut b = [0u8; 16];
        let n = name.len().min(15);
        b[..n].copy_from_slice(&name[..n]);
        Some(Comm(b))
    }

    /// The command line under `policy` ([`Cmdline::from_proc`]: secrets redacted by
    /// default): its first [`CMDLINE_KEPT_MAX`] bytes, the rest counted. `None` if the process
    /// is gone or has no command line (kernel threads, zombies), or under `--cmdline none`.
    pub fn cmdline(&self, pid: u32, policy: CmdlinePolicy) -> Option<Cmdline> {
        if policy == CmdlinePolicy::None {
            return None;
        }
        let mut path = self.pid_path(pid);
        path.push("cmdline");
        let mut file = fs::File::open(path).ok()?;
        let mut raw = Vec::new();
        (&mut file)
            .take(CMDLINE_KEPT_MAX as u64)
            .read_to_end(&mut raw)
            .ok()?;
        // Count what is beyond (up to 1 MiB: the kernel's own limit on arguments is lower).
        let mut more = 0usize;
        let mut chunk = [0u8; 4096];
        while more < (1 << 20) {
            match file.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => more += n,
            }
        }
        Cmdline::from_proc(&raw, more, policy)
    }

    /// Whether `ROOT/PID` exists. Thread ids have (hidden) entries too, so a tid also counts;
    /// a zombie exists until it is reaped (and holds no fds).
    pub fn exists(&self, pid: u32) -> bool {
        self.pid_path(pid).exists()
    }

    /// Whether the process still runs: it exists and is not a zombie (exited, not yet reaped)
    /// or dead. A zombie holds no file descriptors.
    pub fn alive(&self, pid: u32) -> bool {
        let Ok(stat) = std::fs::read_to_string(self.pid_path(pid).join("stat")) else {
            return false;
        };
        // The state follows the parenthesised comm, which may itself contain ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X" | "x"))
    }
}

/// Walks `/proc/*/fd` (or only `/proc/PID/fd`) and indexes every socket inode by holder.
pub fn scan_inodes(only_pid: Option<u32>) -> InodeIndex {
    ProcFs::default().scan_inodes(only_pid)
}

/// `/proc/PID/comm`.
pub fn process_comm(pid: u32) -> Option<Comm> {
    ProcFs::default().comm(pid)
}

/// `/proc/PID/cmdline` under `policy` ([`ProcFs::cmdline`]).
pub fn process_cmdline(pid: u32, policy: CmdlinePolicy) -> Option<Cmdline> {
    ProcFs::default().cmdline(pid, policy)
}

/// Whether `/proc/PID` exists.
pub fn process_exists(pid: u32) -> bool {
    ProcFs::default().exists(pid)
}

/// Whether `pid` still runs (exists and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    ProcFs::default().alive(pid)
}

/// Attributes the startup baseline in one pass over a fresh [`InodeIndex`]: one entry per
/// socket, in order. Inode 0 (TIME_WAIT, orphans) and inodes no process holds give `None`.
/// Each process's comm is read once.
pub fn owners_of_baseline(diag_sockets: &[DiagSocket], index: &InodeIndex) -> Vec<Option<Owner>> {
    owners_of_baseline_in(&ProcFs::default(), diag_sockets, index)
}

/// [`owners_of_baseline`] over another procfs.
pub fn owners_of_baseline_in(
    proc: &ProcFs,
    diag_sockets: &[DiagSocket],
    index: &InodeIndex,
) -> Vec<Option<Owner>> {
    let mut comms: HashMap<u32, Option<Comm>> = HashMap::new();
    diag_sockets
        .iter()
        .map(|s| {
            if s.inode == 0 {
                return None;
            }
            let (pid, source) = index.owner_pid(s.inode)?;
            let comm = (*comms.entry(pid).or_insert_with(|| proc.comm(pid)))?;
            Some(Owner { pid, comm, source })
        })
        .collect()
}

/// Tuning of an [`Attributor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttributorConfig {
    /// Most inodes whose owner is remembered.
    pub cache_capacity: usize,
    /// Least time between two full `/proc` scans.
    pub min_rescan_interval: Duration,
}

impl Default for AttributorConfig {
    fn default() -> Self {
        AttributorConfig {
            cache_capacity: 65_536,
            min_rescan_interval: Duration::from_millis(100),
        }
    }
}

/// Counters of an [`Attributor`], all since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttributionStats {
    /// Calls to `resolve` / `resolve_inode`.
    pub lookups: u64,
    /// Answered from the owner cache (after a one-`readlink` check).
    pub cache_hits: u64,
    /// Answered from the last scan's index without a new scan.
    pub index_hits: u64,
    /// Full `/proc` scans.
    pub rescans: u64,
    /// A scan was wanted but the last one was too recent.
    pub rate_limited: u64,
    /// No owner found (after the scan, or because the scan was rate-limited).
    pub misses: u64,
    /// sock_diag found the socket but with inode 0 (TIME_WAIT, orphan).
    pub no_inode: u64,
    /// sock_diag did not find the socket (already gone).
    pub not_found: u64,
    /// sock_diag lookups that failed.
    pub diag_errors: u64,
}

/// A cached answer: the owner and the fd it was seen under, to check it cheaply.
#[derive(Clone, Copy, Debug)]
struct Cached {
    owner: Owner,
    fd: u32,
}

/// Bounded map in two generations: inserts go to `young`; when it is half the capacity it
/// becomes `old` (the previous `old` is dropped). A hit in `old` is promoted. O(1), no
/// per-entry bookkeeping, at most `capacity` entries.
#[derive(Debug)]
struct GenCache {
    young: HashMap<u64, Cached>,
    old: HashMap<u64, Cached>,
    half: usize,
}

impl GenCache {
    fn new(capacity: usize) -> Self {
        GenCache {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    fn get(&mut self, k: u64) -> Option<Cached> {
        if let Some(v) = self.young.get(&k) {
            return Some(*v);
        }
        let v = self.old.remove(&k)?;
        self.insert(k, v);
        Some(v)
    }

    fn insert(&mut self, k: u64, v: Cached) {
        if self.young.len() >= self.half && !self.young.contains_key(&k) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }

    fn remove(&mut self, k: u64) {
        self.young.remove(&k);
        self.old.remove(&k);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// Resolves sockets to owners, with a bounded owner cache and a rate-limited `/proc` index.
#[derive(Debug)]
pub struct Attributor {
    config: AttributorConfig,
    proc: ProcFs,
    cache: GenCache,
    index: InodeIndex,
    last_scan: Option<Instant>,
    stats: AttributionStats,
}

impl Attributor {
    /// An attributor over `/proc`, with an empty index (the first miss scans).
    pub fn new(config: AttributorConfig) -> Self {
        Attributor::with_proc(config, ProcFs::default())
    }

    /// An attributor over another procfs mount.
    pub fn with_proc(config: AttributorConfig, proc: ProcFs) -> Self {
        Attributor {
            cache: GenCache::new(config.cache_capacity),
            config,
            proc,
            index: InodeIndex::default(),
            last_scan: None,
            stats: AttributionStats::default(),
        }
    }

    /// Adopts a scan made elsewhere (the startup baseline's), taken at `scanned_at`, so that
    /// it is not repeated.
    pub fn adopt_index(&mut self, index: InodeIndex, scanned_at: Instant) {
        self.index = index;
        self.last_scan = Some(scanned_at);
    }

    pub fn stats(&self) -> AttributionStats {
        self.stats
    }

    /// Owners currently cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Forgets a socket's inode (call when the socket is gone, so that a recycled inode
    /// number cannot be answered from the cache; the answer is checked anyway).
    pub fn forget(&mut self, inode: u64) {
        self.cache.remove(inode);
    }

    /// Rescans `/proc` now unless the last scan is younger than `min_rescan_interval`;
    /// returns whether it scanned. Cached owners stay (each is checked when used) but a
    /// socket that gained holders since it was cached keeps its old answer until
    /// [`Attributor::forget`].
    pub fn refresh(&mut self, now: Instant) -> bool {
        if !self.scan_due(now) {
            return false;
        }
        self.rescan(now);
        true
    }

    fn scan_due(&self, now: Instant) -> bool {
        self.last_scan
            .is_none_or(|t| now.saturating_duration_since(t) >= self.config.min_rescan_interval)
    }

    fn rescan(&mut self, now: Instant) {
        self.index = self.proc.scan_inodes(None);
        self.last_scan = Some(now);
        self.stats.rescans += 1;
    }

    /// The owner of the socket `id` (its 4-tuple is looked up with sock_diag for the inode).
    /// `None` if the socket is gone, has no inode (TIME_WAIT, orphan), or no process was
    /// found holding it. `now` drives the rescan rate limit.
    pub fn resolve(&mut self, diag: &mut SockDiag, id: &SocketId, now: Instant) -> Option<Owner> {
        match diag.lookup(&FourTuple::from(id)) {
            Ok(Some(s)) if s.inode != 0 => self.resolve_inode(s.inode, now),
            Ok(Some(_)) => {
                self.stats.lookups += 1;
                self.stats.no_inode += 1;
                None
            }
            Ok(None) => {
                self.stats.lookups += 1;
                self.stats.not_found += 1;
                None
            }
            Err(_) => {
                self.stats.lookups += 1;
                self.stats.diag_errors += 1;
                None
            }
        }
    }

    /// The owner of the socket with this inode. Order: the cache (checked with one
    /// `readlink`), the last scan's index (each holder checked), then — if the last scan is at
    /// least `min_rescan_interval` old — a new scan.
    pub fn resolve_inode(&mut self, inode: u64, now: Instant) -> Option<Owner> {
        self.stats.lookups += 1;
        if inode == 0 {
            self.stats.no_inode += 1;
            return None;
        }
        if let Some(c) = self.cache.get(inode) {
            if self.proc.holds(c.owner.pid, c.fd, inode) {
                self.stats.cache_hits += 1;
                return Some(c.owner);
            }
            self.cache.remove(inode);
        }
        if let Some(owner) = self.lookup_index(inode) {
            self.stats.index_hits += 1;
            return Some(owner);
        }
        if !self.scan_due(now) {
            self.stats.rate_limited += 1;
            self.stats.misses += 1;
            return None;
        }
        self.rescan(now);
        let found = self.lookup_index(inode);
        if found.is_none() {
            self.stats.misses += 1;
        }
        found
    }

    /// The fd numbers under which `pid` holds socket `inode`, as the last scan and the cache
    /// know them, each checked with one `readlink` (for a leak record: no scan of the fd
    /// table, which can hold tens of thousands of sockets).
    pub fn fds_of(&mut self, pid: u32, inode: u64) -> Vec<u32> {
        let mut fds: Vec<u32> = self
            .index
            .holders(inode)
            .filter(|h| h.pid == pid)
            .map(|h| h.fd)
            .collect();
        if let Some(c) = self.cache.get(inode)
            && c.owner.pid == pid
        {
            fds.push(c.fd);
        }
        fds.sort_unstable();
        fds.dedup();
        fds.retain(|&fd| self.proc.holds(pid, fd, inode));
        fds
    }

    /// Looks `inode` up in the index, keeping only holders that still hold it; caches the
    /// answer.
    fn lookup_index(&mut self, inode: u64) -> Option<Owner> {
        let proc = &self.proc;
        let live = self
            .index
            .holders(inode)
            .filter(|h| proc.holds(h.pid, h.fd, inode));
        let (holder, source) = pick(live)?;
        let comm = self.proc.comm(holder.pid)?;
        let owner = Owner {
            pid: holder.pid,
            comm,
            source,
        };
        self.cache.insert(
            inode,
            Cached {
                owner,
                fd: holder.fd,
            },
        );
        Some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::untrusted::CMDLINE_SHOWN_MAX;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn parses_socket_links() {
        assert_eq!(parse_socket_link(b"socket:[123]"), Some(123));
        assert_eq!(parse_socket_link(b"socket:[0]"), Some(0));
        assert_eq!(
            parse_socket_link(b"socket:[18446744073709551615]"),
            Some(u64::MAX)
        );
        for bad in [
            &b"socket:[]"[..],
            b"socket:[18446744073709551616]",
            b"socket:[12a]",
            b"socket:[+12]",
            b"socket:[-1]",
            b"socket:123",
            b"pipe:[123]",
            b"anon_inode:[eventfd]",
            b"/dev/null",
            b"socket:[123]x",
            b"",
        ] {
            assert_eq!(
                parse_socket_link(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cmdline_reading_keeps_4_kib_counts_the_rest_and_applies_the_policy() {
        let root = std::env::temp_dir().join(format!("tracer-cmdline-{}", std::process::id()));
        let write = |pid: u32, raw: &[u8]| {
            std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
            std::fs::write(root.join(pid.to_string()).join("cmdline"), raw).unwrap();
        };
        write(1, b"python3\0-c\0pass\0");
        write(2, b"nginx: worker process");
        write(3, b"");
        let mut long = b"srv\0--token=abc\0".to_vec();
        long.extend(std::iter::repeat_n(b'x', 100 * 1024));
        write(4, &long);
        write(5, b"a\xffb\0--password=hunter2\0");
        let proc = ProcFs::new(&root);
        let get = |pid, policy| proc.cmdline(pid, policy).map(|c| c.exact().into_owned());
        assert_eq!(
            get(1, CmdlinePolicy::Redacted).as_deref(),
            Some("python3 -c pass")
        );
        assert_eq!(
            get(2, CmdlinePolicy::Redacted).as_deref(),
            Some("nginx: worker process")
        );
        assert_eq!(get(3, CmdlinePolicy::Full), None);
        assert_eq!(get(9, CmdlinePolicy::Full), None, "no such process");
        assert_eq!(get(1, CmdlinePolicy::None), None);
        let c = proc.cmdline(4, CmdlinePolicy::Redacted).unwrap();
        assert!(c.as_bytes().starts_with(b"srv --token=*** xxx"));
        let more = long.len() - CMDLINE_KEPT_MAX;
        assert!(c.exact().ends_with("x…"));
        assert!(
            c.shown().to_string().ends_with(&format!(
                "…[+{} bytes]",
                c.as_bytes().len() - CMDLINE_SHOWN_MAX + more
            )),
            "the cut counts the bytes never read too"
        );
        let c = proc.cmdline(5, CmdlinePolicy::Full).unwrap();
        assert_eq!(c.exact(), "a\u{fffd}b --password=hunter2");
        assert_eq!(c.shown().to_string(), "a\\xffb --password=hunter2");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn index_dedups_and_picks_lowest_pid() {
        let mut ix = InodeIndex::default();
        ix.insert(10, 300, 3);
        ix.insert(10, 300, 4); // dup'ed fd in the same process
        ix.finish();
        assert_eq!(
            ix.holders(10).collect::<Vec<_>>(),
            [Holder { pid: 300, fd: 3 }]
        );
        assert_eq!(ix.owner_pid(10), Some((300, OwnerSource::Inode)));
        ix.insert(10, 200, 7);
        ix.insert(10, 250, 5);
        ix.insert(10, 200, 8);
        ix.insert(u64::from(u32::MAX) + 1, 1, 1); // not a socket inode
        ix.finish();
        assert_eq!(ix.holders(10).count(), 3);
        assert_eq!(ix.owner_pid(10), Some((200, OwnerSource::Shared)));
        assert_eq!(ix.owner_pid(11), None);
        assert_eq!(ix.holders(11).count(), 0);
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn gen_cache_is_bounded_and_promotes() {
        let owner = |pid| Cached {
            owner: Owner {
                pid,
                comm: Comm::new("x"),
                source: OwnerSource::Inode,
            },
            fd: 0,
        };
        let mut c = GenCache::new(4);
        for k in 0..100 {
            c.insert(k, owner(k as u32));
            assert!(c.len() <= 4);
        }
        let mut c = GenCache::new(4);
        c.insert(1, owner(1));
        c.insert(2, owner(2));
        c.insert(3, owner(3)); // 1, 2 now old
        assert_eq!(c.get(1).map(|v| v.owner.pid), Some(1)); // promoted
        c.insert(4, owner(4));
        c.insert(5, owner(5)); // rotation drops 2
        assert!(c.get(2).is_none());
        assert!(c.get(5).is_some());
        c.remove(5);
        assert!(c.get(5).is_none());
    }

    /// A throwaway procfs-like tree: ROOT/PID/fd/N → "socket:[INODE]", ROOT/PID/comm.
    struct FakeProc {
        root: PathBuf,
    }

    impl FakeProc {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "tracer-attr-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            FakeProc { root }
        }

        fn process(&self, pid: u32, comm: &str) {
            let dir = self.root.join(pid.to_string());
            fs::create_dir_all(dir.join("fd")).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        }

        fn fd(&self, pid: u32, fd: u32, target: &str) {
            symlink(target, self.root.join(format!("{pid}/fd/{fd}"))).unwrap();
        }

        fn close(&self, pid: u32, fd: u32) {
            fs::remove_file(self.root.join(format!("{pid}/fd/{fd}"))).unwrap();
        }

        fn procfs(&self) -> ProcFs {
            ProcFs::new(&self.root)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn scans_a_proc_tree() {
        let p = FakeProc::new();
        p.process(10, "nginx");
        p.fd(10, 3, "socket:[500]");
        p.fd(10, 4, "pipe:[501]");
        p.fd(10, 5, "/dev/null");
        p.process(11, "nginx");
        p.fd(11, 3, "socket:[500]");
        p.fd(11, 6, "socket:[502]");
        p.process(12, "secret"); // fd table unreadable: no fd dir
        fs::remove_dir(p.root.join("12/fd")).unwrap();
        fs::create_dir_all(p.root.join("self")).unwrap(); // not a pid
        fs::write(p.root.join("uptime"), "1 2\n").unwrap();

        let ix = p.procfs().scan_inodes(None);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.owner_pid(500), Some((10, OwnerSource::Shared)));
        assert_eq!(ix.owner_pid(502), Some((11, OwnerSource::Inode)));
        assert_eq!(ix.owner_pid(501), None);
        assert_eq!((ix.scanned_processes, ix.skipped_processes), (2, 1));

        let one = p.procfs().scan_inodes(Some(11));
        assert_eq!(one.owner_pid(500), Some((11, OwnerSource::Inode)));
        assert_eq!(one.scanned_processes, 1);
        let gone = p.procfs().scan_inodes(Some(99));
        assert_eq!((gone.len(), gone.skipped_processes), (0, 1));

        assert_eq!(p.procfs().comm(10), Some(Comm::new("nginx")));
        assert_eq!(p.procfs().comm(99), None);
        assert!(p.procfs().exists(10) && !p.procfs().exists(99));
        assert!(p.procfs().holds(11, 6, 502));
        assert!(!p.procfs().holds(11, 6, 500));
        assert!(!p.procfs().holds(11, 7, 502));
    }

    #[test]
    fn comm_keeps_raw_bytes() {
        let p = FakeProc::new();
        p.process(1, "x");
        fs::write(p.root.join("1/comm"), b"ab\xffcdefghijklmnopq\n").unwrap();
        let c = p.procfs().comm(1).unwrap();
        assert_eq!(&c.0[..15], b"ab\xffcdefghijklmn");
        assert_eq!(c.0[15], 0);
    }

    fn sock(inode: u64) -> DiagSocket {
        use crate::event::{Family, TcpState};
        use std::net::{IpAddr, Ipv4Addr};
        DiagSocket {
            family: Family::V4,
            state: TcpState::CloseWait,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 1,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 2,
            inode,
            uid: 0,
            cookie: 0,
            recv_queue: 0,
            send_queue: 0,
            info: None,
            timer_ms: 0,
        }
    }

    #[test]
    fn baseline_attribution() {
        let p = FakeProc::new();
        p.process(10, "server");
        p.fd(10, 3, "socket:[500]");
        p.process(11, "worker");
        p.fd(11, 3, "socket:[500]");
        p.fd(11, 4, "socket:[501]");
        let ix = p.procfs().scan_inodes(None);
        let owners = owners_of_baseline_in(
            &p.procfs(),
            &[sock(500), sock(0), sock(501), sock(777)],
            &ix,
        );
        let o = |pid, comm, source| {
            Some(Owner {
                pid,
                comm: Comm::new(comm),
                source,
            })
        };
        assert_eq!(
            owners,
            [
                o(10, "server", OwnerSource::Shared),
                None,
                o(11, "worker", OwnerSource::Inode),
                None
            ]
        );
    }

    #[test]
    fn attributor_caches_validates_and_rate_limits() {
        let p = FakeProc::new();
        p.process(10, "app");
        p.fd(10, 3, "socket:[500]");
        let cfg = AttributorConfig {
            cache_capacity: 16,
            min_rescan_interval: Duration::from_millis(100),
        };
        let mut a = Attributor::with_proc(cfg, p.procfs());
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);

        // First miss scans.
        let owner = a.resolve_inode(500, t0).unwrap();
        assert_eq!(
            (owner.pid, owner.comm, owner.source),
            (10, Comm::new("app"), OwnerSource::Inode)
        );
        assert_eq!((a.stats().rescans, a.stats().misses), (1, 0));
        // Then the cache answers.
        assert_eq!(a.resolve_inode(500, ms(1)), Some(owner));
        assert_eq!(a.stats().cache_hits, 1);

        // A new socket appears; the scan is too recent: a miss, no scan.
        p.fd(10, 4, "socket:[600]");
        assert_eq!(a.resolve_inode(600, ms(50)), None);
        assert_eq!(
            (a.stats().rescans, a.stats().rate_limited, a.stats().misses),
            (1, 1, 1)
        );
        // Later, it rescans and finds it.
        assert_eq!(a.resolve_inode(600, ms(100)).map(|o| o.pid), Some(10));
        assert_eq!(a.stats().rescans, 2);
        // Unknown inode right after: rate-limited again.
        assert_eq!(a.resolve_inode(700, ms(120)), None);
        assert_eq!(a.stats().rescans, 2);

        // The socket moves to another process (fd passing): the cached answer fails its check,
        // the index is stale, a rescan (now due) finds the new holder.
        p.process(11, "receiver");
        p.fd(11, 9, "socket:[500]");
        p.close(10, 3);
        let o = a.resolve_inode(500, ms(300)).unwrap();
        assert_eq!(
            (o.pid, o.comm, o.source),
            (11, Comm::new("receiver"), OwnerSource::Inode)
        );
        assert_eq!(a.stats().rescans, 3);

        // Shared: both hold it. The index predates that: until a rescan it names 11 alone.
        p.fd(10, 3, "socket:[500]");
        a.forget(500);
        let o = a.resolve_inode(500, ms(500)).unwrap();
        assert_eq!((o.pid, o.source), (11, OwnerSource::Inode));
        assert!(!a.refresh(ms(320)), "last scan at 300 ms: rate-limited");
        assert!(a.refresh(ms(600)));
        a.forget(500);
        let o = a.resolve_inode(500, ms(600)).unwrap();
        assert_eq!((o.pid, o.source), (10, OwnerSource::Shared));
        assert_eq!(a.stats().rescans, 4);

        // Inode 0: no owner, no scan.
        let before = a.stats().rescans;
        assert_eq!(a.resolve_inode(0, ms(1000)), None);
        assert_eq!((a.stats().no_inode, a.stats().rescans), (1, before));
        assert_eq!(a.stats().lookups, 9);
    }

    #[test]
    fn adopted_index_counts_as_a_scan() {
        let p = FakeProc::new();
        p.process(10, "app");
        p.fd(10, 3, "socket:[500]");
        let mut a = Attributor::with_proc(AttributorConfig::default(), p.procfs());
        let t0 = Instant::now();
        a.adopt_index(p.procfs().scan_inodes(None), t0);
        assert_eq!(a.resolve_inode(500, t0).map(|o| o.pid), Some(10));
        assert_eq!((a.stats().rescans, a.stats().index_hits), (0, 1));
        assert_eq!(a.resolve_inode(501, t0), None);
        assert_eq!(a.stats().rate_limited, 1);
    }
}
