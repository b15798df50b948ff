//! TIME_WAIT sockets and ephemeral-port use per remote endpoint.
//!
//! The tracepoint never shows TIME_WAIT: the kernel hands the active (or simultaneous) closer
//! to a separate timewait socket, which lives `TCP_TIMEWAIT_LEN` (60 s) and then goes away
//! without an event. This module keeps, per (network namespace, local address, remote
//! address, remote port), how many timewait sockets exist now:
//!
//! - from close records with `time_wait: true` (one timewait socket that expires 60 s after
//!   the hand-over), O(1) per close: one hash lookup and a counter in a ring of 64 one-second
//!   slots keyed by expiry second;
//! - from sock_diag dumps (at start, then re-synced periodically by the caller, rate-limited),
//!   which replace a namespace's counts with the kernel's own, with each socket's remaining
//!   time (`idiag_expires`). That corrects what the trace cannot see: a timewait socket
//!   recycled by a new connection (`tcp_tw_reuse`) or killed by an RST, hand-overs refused
//!   when `tcp_max_tw_buckets` is reached, and an `SO_LINGER {1,0}` close in FIN_WAIT2, which
//!   looks like a hand-over on the tracepoint.
//!
//! The same dump counts, per (namespace, local address, remote endpoint), the sockets in any
//! other state whose local port lies in the namespace's ephemeral range
//! (`net.ipv4.ip_local_port_range`, read inside the namespace by the caller); with the
//! timewait sockets of that tuple whose local port is ephemeral, that is the share of the range
//! the tuple uses: when it reaches 1, `connect()` to that remote from that address fails with
//! EADDRNOTAVAIL.
//!
//! Memory is bounded: at most `capacity` tuples; a close for a new tuple when the table is
//! full is counted ([`TimeWaitStats::table_full`]) and not tracked until a re-sync frees room
//! (tuples whose sockets have all expired are dropped then). See [`TimeWait::bytes_per_tuple`].

use std::collections::HashMap;

/// A hash map with foldhash's randomly seeded fast hasher (remote endpoints are chosen by
/// peers, so the seed stays random).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::net::IpAddr;

use crate::sockdiag::DiagSocket;

/// `TCP_TIMEWAIT_LEN`: how long a timewait socket lives on Linux (not tunable).
pub const TIME_WAIT_NS: u64 = 60 * 1_000_000_000;

/// The kernel's default `ip_local_port_range`, used for a namespace until its own is read.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);

/// One slot per second of expiry time; more than the 60 s a timewait socket lives.
const SLOTS: usize = 64;

/// A (namespace, local address, remote endpoint) tuple. `ephemeral`: the local port is in the
/// namespace's ephemeral range (only those use up the range).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub netns: u32,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub rport: u16,
    pub ephemeral: bool,
}

/// Timewait sockets of one tuple by expiry second: `count[i]` sockets expire in second
/// `sec[i]` (kernel monotonic seconds, `sec[i] % 64 == i`).
#[derive(Clone, Copy, Debug)]
struct Slots {
    sec: [u32; SLOTS],
    count: [u16; SLOTS],
}

impl Slots {
    const EMPTY: Slots = Slots {
        sec: [0; SLOTS],
        count: [0; SLOTS],
    };

    fn add(&mut self, expiry_sec: u32) {
        let i = expiry_sec as usize % SLOTS;
        if self.sec[i] != expiry_sec {
            self.sec[i] = expiry_sec;
            self.count[i] = 0;
        }
        self.count[i] = self.count[i].saturating_add(1);
    }

    /// Sockets that have not expired by `now_sec`.
    fn live(&self, now_sec: u32) -> u64 {
        self.sec
            .iter()
            .zip(self.count)
            .filter(|(s, _)| **s > now_sec)
            .map(|(_, c)| u64::from(c))
            .sum()
    }
}

/// Counters of a [`TimeWait`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TimeWaitStats {
    /// Hand-overs counted from close records.
    pub handovers: u64,
    /// Hand-overs not counted because the tuple table was full.
    pub table_full: u64,
    /// Namespace re-syncs from a sock_diag dump.
    pub resyncs: u64,
    /// Re-syncs that failed (namespace unreachable, sock_diag error): counts kept as traced.
    pub resync_failures: u64,
    /// At the last re-sync: timewait sockets the kernel had minus those the trace had counted
    /// (how far the trace had drifted).
    pub last_drift: i64,
}

/// A re-sync in progress ([`TimeWait::begin_resync`]).
#[derive(Debug)]
pub struct Resync {
    netns: u32,
    now_ns: u64,
    before: u64,
    after: u64,
}

/// TIME_WAIT count of one remote endpoint (summed over local addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteCount {
    pub netns: u32,
    pub remote: IpAddr,
    pub rport: u16,
    pub time_wait: u64,
}

/// Ephemeral ports of one (namespace, local address, remote endpoint) in use now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortUse {
    pub netns: u32,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub rport: u16,
    /// Sockets of the tuple with an ephemeral local port: timewait now plus the other states at
    /// the last dump.
    pub used: u64,
    /// Size of the namespace's ephemeral range.
    pub range: u64,
}

impl PortUse {
    pub fn ratio(&self) -> f64 {
        self.used as f64 / self.range.max(1) as f64
    }
}

/// Per-tuple TIME_WAIT counts and ephemeral-port use. See the module documentation.
#[derive(Debug)]
pub struct TimeWait {
    tw: FastMap<TupleKey, Slots>,
    /// Sockets in other states with an ephemeral local port, per tuple, at the last dump.
    others: FastMap<TupleKey, u32>,
    ranges: FastMap<u32, (u16, u16)>,
    /// Namespaces that handed over a socket before their range was known, not yet asked for
    /// ([`TimeWait::take_unranged`]); and those asked for since the last prune (each is asked
    /// for once between two full re-syncs, even when its range cannot be read).
    unranged: Vec<u32>,
    asked: std::collections::HashSet<u32>,
    capacity: usize,
    stats: TimeWaitStats,
}

/// A v4-mapped IPv6 address as the IPv4 address it is (dual-stack sockets report both forms).
fn plain(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

fn secs(ns: u64) -> u32 {
    u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX)
}

impl TimeWait {
    /// Default most tuples tracked.
    pub const DEFAULT_CAPACITY: usize = 16_384;

    pub fn new(capacity: usize) -> Self {
        TimeWait {
            tw: FastMap::default(),
            others: FastMap::default(),
            ranges: FastMap::default(),
            unranged: Vec::new(),
            asked: std::collections::HashSet::new(),
            capacity: capacity.max(1),
            stats: TimeWaitStats::default(),
        }
    }

    pub fn stats(&self) -> TimeWaitStats {
        self.stats
    }

    /// Tuples tracked now.
    pub fn tuples(&self) -> usize {
        self.tw.len()
    }

    /// Bytes one tracked tuple costs: key and slots, plus the hash table's control byte and
    /// its load-factor slack (hashbrown keeps at most 7/8 of its buckets full).
    pub fn bytes_per_tuple() -> usize {
        (size_of::<(TupleKey, Slots)>() + 1) * 8 / 7
    }

    /// Allocated bytes of the TIME_WAIT table now (capacity, not just what is used).
    pub fn heap_bytes(&self) -> usize {
        self.tw.capacity() * (size_of::<(TupleKey, Slots)>() + 1)
            + self.others.capacity() * (size_of::<(TupleKey, u32)>() + 1)
    }

    /// Sets a namespace's ephemeral port range (`ip_local_port_range`: "LOW HIGH").
    pub fn set_range(&mut self, netns: u32, low: u16, high: u16) {
        self.ranges.insert(netns, (low.min(high), high.max(low)));
    }

    /// Parses the text of `ip_local_port_range`.
    pub fn parse_range(text: &str) -> Option<(u16, u16)> {
        let mut it = text.split_whitespace().map(str::parse::<u16>);
        match (it.next(), it.next()) {
            (Some(Ok(l)), Some(Ok(h))) => Some((l, h)),
            _ => None,
        }
    }

    /// The namespace's ephemeral range (the kernel's default until it is read).
    pub fn range(&self, netns: u32) -> (u16, u16) {
        self.ranges
            .get(&netns)
            .copied()
            .unwrap_or(DEFAULT_PORT_RANGE)
    }

    fn key(&self, netns: u32, local: IpAddr, lport: u16, remote: IpAddr, rport: u16) -> TupleKey {
        let (lo, hi) = self.range(netns);
        TupleKey {
            netns,
            local: plain(local),
            remote: plain(remote),
            rport,
            ephemeral: (lo..=hi).contains(&lport),
        }
    }

    /// A socket handed over to a timewait socket at `ts_ns` (kernel monotonic). O(1).
    pub fn on_handover(
        &mut self,
        netns: u32,
        local: IpAddr,
        lport: u16,
        remote: IpAddr,
        rport: u16,
        ts_ns: u64,
    ) {
        if !self.ranges.contains_key(&netns) && self.asked.insert(netns) {
            self.unranged.push(netns);
        }
        let key = self.key(netns, local, lport, remote, rport);
        let expiry = secs(ts_ns.saturating_add(TIME_WAIT_NS)).saturating_add(1);
        let full = self.tw.len() >= self.capacity;
        match self.tw.get_mut(&key) {
            Some(s) => s.add(expiry),
            None if full => {
                self.stats.table_full += 1;
                return;
            }
            None => self.tw.entry(key).or_insert(Slots::EMPTY).add(expiry),
        }
        self.stats.handovers += 1;
    }

    /// Replaces what is known of namespace `netns` with a dump of its sockets (every state),
    /// taken at `now_ns`. Call [`TimeWait::set_range`] first when the range is known.
    pub fn resync<'a>(
        &mut self,
        netns: u32,
        now_ns: u64,
        sockets: impl IntoIterator<Item = &'a DiagSocket>,
    ) {
        let mut r = self.begin_resync(netns, now_ns);
        for s in sockets {
            self.feed(&mut r, s);
        }
        self.finish_resync(r);
    }

    /// Starts replacing namespace `netns` with a dump taken at `now_ns`: forgets what was
    /// known of it. Feed every dumped socket with [`TimeWait::feed`], then
    /// [`TimeWait::finish_resync`] (a dump streamed one datagram at a time never needs to be
    /// held whole).
    pub fn begin_resync(&mut self, netns: u32, now_ns: u64) -> Resync {
        let now_sec = secs(now_ns);
        let before: u64 = self
            .tw
            .iter()
            .filter(|(k, _)| k.netns == netns)
            .map(|(_, s)| s.live(now_sec))
            .sum();
        self.tw.retain(|k, _| k.netns != netns);
        self.others.retain(|k, _| k.netns != netns);
        Resync {
            netns,
            now_ns,
            before,
            after: 0,
        }
    }

    /// One dumped socket of a re-sync.
    pub fn feed(&mut self, r: &mut Resync, s: &DiagSocket) {
        if let Some(expiry_ns) = time_wait_expiry(s, r.now_ns) {
            let key = self.key(r.netns, s.saddr, s.sport, s.daddr, s.dport);
            let full = self.tw.len() >= self.capacity;
            let expiry = secs(expiry_ns).saturating_add(1);
            match self.tw.get_mut(&key) {
                Some(slots) => slots.add(expiry),
                None if full => {
                    self.stats.table_full += 1;
                    return;
                }
                None => self.tw.entry(key).or_insert(Slots::EMPTY).add(expiry),
            }
            r.after += 1;
        } else if uses_a_port(s) {
            let key = self.key(r.netns, s.saddr, s.sport, s.daddr, s.dport);
            if key.ephemeral {
                *self.others.entry(key).or_insert(0) += 1;
            }
        }
    }

    /// Ends a re-sync.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the re-sync token is taken so that one re-sync cannot be finished twice"
    )]
    pub fn finish_resync(&mut self, r: Resync) {
        self.stats.resyncs += 1;
        self.stats.last_drift = r.after as i64 - r.before as i64;
    }

    /// A re-sync that could not be made (counted; the traced counts stay).
    pub fn resync_failed(&mut self) {
        self.stats.resync_failures += 1;
    }

    /// Drops tuples whose timewait sockets have all expired (and that have nothing else), and
    /// forgets which namespaces were asked for their range.
    pub fn prune(&mut self, now_ns: u64) {
        let now_sec = secs(now_ns);
        self.tw.retain(|_, s| s.live(now_sec) > 0);
        self.asked.clear();
    }

    /// The namespaces that handed over a socket before their port range was known, since the
    /// last call: the caller reads their range (and re-syncs them) now.
    pub fn take_unranged(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.unranged)
    }

    /// TIME_WAIT sockets counted now, over every tuple.
    pub fn total(&self, now_ns: u64) -> u64 {
        let now_sec = secs(now_ns);
        self.tw.values().map(|s| s.live(now_sec)).sum()
    }

    /// TIME_WAIT sockets per remote endpoint now (summed over local addresses), most first.
    pub fn remotes(&self, now_ns: u64) -> Vec<RemoteCount> {
        let now_sec = secs(now_ns);
        let mut by: HashMap<(u32, IpAddr, u16), u64> = HashMap::new();
        for (k, s) in &self.tw {
            let n = s.live(now_sec);
            if n > 0 {
                *by.entry((k.netns, k.remote, k.rport)).or_insert(0) += n;
            }
        }
        let mut v: Vec<RemoteCount> = by
            .into_iter()
            .map(|((netns, remote, rport), time_wait)| RemoteCount {
                netns,
                remote,
                rport,
                time_wait,
            })
            .collect();
        v.sort_unstable_by(|a, b| {
            b.time_wait
                .cmp(&a.time_wait)
                .then((a.netns, a.remote, a.rport).cmp(&(b.netns, b.remote, b.rport)))
        });
        v
    }

    /// Ephemeral-port use per (namespace, local address, remote endpoint) now, highest share
    /// first.
    pub fn port_use(&self, now_ns: u64) -> Vec<PortUse> {
        let now_sec = secs(now_ns);
        let mut by: HashMap<TupleKey, u64> = HashMap::new();
        for (k, s) in self.tw.iter().filter(|(k, _)| k.ephemeral) {
            let n = s.live(now_sec);
            if n > 0 {
                *by.entry(*k).or_insert(0) += n;
            }
        }
        for (k, n) in &self.others {
            *by.entry(*k).or_insert(0) += u64::from(*n);
        }
        let mut v: Vec<PortUse> = by
            .into_iter()
            .map(|(k, used)| {
                let (lo, hi) = self.range(k.netns);
                PortUse {
                    netns: k.netns,
                    local: k.local,
                    remote: k.remote,
                    rport: k.rport,
                    used,
                    range: u64::from(hi - lo) + 1,
                }
            })
            .collect();
        v.sort_unstable_by(|a, b| {
            b.ratio().total_cmp(&a.ratio()).then(
                (a.netns, a.local, a.remote, a.rport).cmp(&(b.netns, b.local, b.remote, b.rport)),
            )
        });
        v
    }
}

/// When a dumped socket's timewait socket expires (kernel monotonic ns), or `None` when it is
/// not a timewait socket. Timewait sockets report their sub-state: TIME_WAIT, or FIN_WAIT2
/// while an orphaned closer still waits for the peer's FIN; full sockets carry `tcp_info`,
/// timewait sockets do not.
fn time_wait_expiry(s: &DiagSocket, now_ns: u64) -> Option<u64> {
    use crate::event::TcpState;
    let tw = s.state == TcpState::TimeWait || (s.state == TcpState::FinWait2 && s.info.is_none());
    tw.then(|| now_ns.saturating_add(u64::from(s.timer_ms) * 1_000_000))
}

/// Whether a (non-timewait) socket holds a local port for a connection: not a listener, not a
/// request socket, not closed.
fn uses_a_port(s: &DiagSocket) -> bool {
    use crate::event::TcpState;
    !matches!(
        s.state,
        TcpState::Listen | TcpState::SynRecv | TcpState::Close | TcpState::NewSynRecv
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Family, TcpState};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const S: u64 = 1_000_000_000;
    const L: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const R1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

    fn dumped(state: TcpState, sport: u16, dport: u16, timer_ms: u32) -> DiagSocket {
        DiagSocket {
            family: Family::V4,
            state,
            saddr: L,
            sport,
            daddr: R1,
            dport,
            inode: 0,
            uid: 0,
            cookie: 0,
            recv_queue: 0,
            send_queue: 0,
            info: None,
            timer_ms,
        }
    }

    #[test]
    fn a_namespace_without_a_range_is_asked_for_once_and_counted_in_the_total() {
        let a = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let mut tw = TimeWait::new(100);
        tw.set_range(1, 10_000, 10_099);
        tw.on_handover(1, a, 10_050, a, 80, 0);
        assert!(tw.take_unranged().is_empty(), "its range is known");
        tw.on_handover(7, a, 40_000, a, 80, 0);
        tw.on_handover(7, a, 40_001, a, 80, 0);
        assert_eq!(tw.take_unranged(), vec![7]);
        tw.on_handover(7, a, 40_002, a, 80, 0);
        assert!(tw.take_unranged().is_empty(), "asked for once");
        assert_eq!(tw.total(1_000_000_000), 4);
        // Gone 60 s later (and asked for again after a prune).
        assert_eq!(tw.total(62_000_000_000), 0);
        tw.prune(62_000_000_000);
        tw.on_handover(7, a, 40_003, a, 80, 62_000_000_000);
        assert_eq!(tw.take_unranged(), vec![7]);
    }

    #[test]
    fn handovers_count_per_remote_and_expire_after_60_s() {
        let mut t = TimeWait::new(100);
        for i in 0..30 {
            t.on_handover(1, L, 40_000 + i, R1, 5432, 100 * S);
        }
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        t.on_handover(1, L, 40_100, mapped, 5432, 101 * S);
        t.on_handover(1, L, 40_101, R1, 80, 101 * S);
        t.on_handover(2, L, 40_102, R1, 5432, 101 * S);
        let r = t.remotes(120 * S);
        assert_eq!(
            r.iter()
                .map(|c| (c.netns, c.rport, c.time_wait))
                .collect::<Vec<_>>(),
            [(1, 5432, 31), (1, 80, 1), (2, 5432, 1)]
        );
        // Still there just before 60 s, gone after (one-second slots, rounded up).
        assert_eq!(t.remotes(159 * S)[0].time_wait, 31);
        assert_eq!(t.remotes(161 * S)[0].time_wait, 1);
        assert!(t.remotes(163 * S).is_empty());
        t.prune(163 * S);
        assert_eq!(t.tuples(), 0);
        assert_eq!(t.stats().handovers, 33);
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_drops() {
        let mut t = TimeWait::new(2);
        t.on_handover(1, L, 40_000, R1, 1, S);
        t.on_handover(1, L, 40_000, R1, 2, S);
        t.on_handover(1, L, 40_000, R1, 3, S);
        t.on_handover(1, L, 40_001, R1, 1, S);
        assert_eq!(t.tuples(), 2);
        assert_eq!(t.stats().table_full, 1);
        assert_eq!(t.stats().handovers, 3);
    }

    #[test]
    fn a_dump_replaces_the_namespace_and_counts_ports() {
        let mut t = TimeWait::new(100);
        t.set_range(1, 40_000, 40_099);
        for i in 0..10 {
            t.on_handover(1, L, 40_000 + i, R1, 5432, 10 * S);
        }
        t.on_handover(2, L, 40_000, R1, 5432, 10 * S);
        let dump = [
            dumped(TcpState::TimeWait, 40_000, 5432, 30_000),
            dumped(TcpState::TimeWait, 40_001, 5432, 30_000),
            dumped(TcpState::TimeWait, 80, 5432, 1_000),
            dumped(TcpState::Established, 40_002, 5432, 0),
            dumped(TcpState::Listen, 40_003, 0, 0),
            dumped(TcpState::Established, 50_000, 5432, 0),
        ];
        t.resync(1, 20 * S, &dump);
        assert_eq!(t.stats().last_drift, 3 - 10);
        let r = t.remotes(20 * S);
        assert_eq!(r[0].time_wait, 3, "{r:?}");
        assert_eq!(
            r.iter().map(|c| c.time_wait).sum::<u64>(),
            4,
            "the other namespace stays"
        );
        let p = t.port_use(20 * S);
        assert_eq!(p.len(), 2, "{p:?}");
        // Namespace 1: 2 ephemeral timewait + 1 established of 100 ports.
        assert_eq!((p[0].netns, p[0].used, p[0].range), (1, 3, 100));
        assert!((p[0].ratio() - 0.03).abs() < 1e-9);
        // The timer: the short one is gone after 1 s.
        assert_eq!(t.remotes(22 * S)[0].time_wait, 2);
    }

    #[test]
    fn ranges_parse_and_ipv6_keys_stay_apart() {
        assert_eq!(
            TimeWait::parse_range("32768\t60999\n"),
            Some((32768, 60999))
        );
        assert_eq!(TimeWait::parse_range("x"), None);
        let mut t = TimeWait::new(10);
        t.on_handover(1, L, 40_000, IpAddr::V6(Ipv6Addr::LOCALHOST), 5432, S);
        t.on_handover(1, L, 40_000, R1, 5432, S);
        assert_eq!(t.remotes(2 * S).len(), 2);
        assert!(
            TimeWait::bytes_per_tuple() < 600,
            "{}",
            TimeWait::bytes_per_tuple()
        );
    }

    /// Memory per tracked tuple, measured on a full table (allocated capacity, so growth slack
    /// is included): `cargo test -p tracer --lib memory_per_tuple -- --nocapture`.
    #[test]
    fn memory_per_tuple() {
        let cap = TimeWait::DEFAULT_CAPACITY;
        let mut t = TimeWait::new(cap);
        for i in 0..cap as u32 {
            let remote = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            t.on_handover(1, L, 40_000, remote, 443, S);
        }
        assert_eq!(t.tuples(), cap);
        let measured = t.heap_bytes() / cap;
        println!(
            "TIME_WAIT table: {} bytes per tuple at {cap} tuples (entry {} bytes, formula {})",
            measured,
            size_of::<(TupleKey, Slots)>(),
            TimeWait::bytes_per_tuple()
        );
        assert!(measured <= 2 * TimeWait::bytes_per_tuple(), "{measured}");
    }
}
