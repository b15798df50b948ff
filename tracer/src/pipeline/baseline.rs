//! The startup baseline: the TCP sockets that exist when the tracer starts, read once from
//! sock_diag in every network namespace with their owners from one /proc scan, seeded into
//! the engine under stand-in keys until their first traced event names their kernel address.
//!
//! Schedule: once at startup, after the program is attached.

use std::time::{Duration, Instant};

use crate::attribution;
use crate::engine::{BaselineSummary, Seed};
use std::net::IpAddr;

use crate::event::{Family, TcpState};
use crate::record::{Owner, SocketId};
use crate::sockdiag::{DiagSocket, FourTuple, SockDiagError, StateMask};

use super::Pipeline;
use super::timewait_sync::read_port_range;

/// What the startup baseline found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaselineReport {
    /// Sockets seeded into the engine.
    pub seeded: usize,
    /// Network namespaces dumped (the tracer's own included).
    pub namespaces: usize,
    /// Namespaces that could not be entered or dumped (counted, never silent).
    pub namespaces_failed: usize,
    /// With `--pid`: the (netns, local port) pairs of that process's sockets, for the
    /// in-kernel filter.
    pub pid_ports: Vec<(u32, u16)>,
    /// Wall time the baseline took.
    pub elapsed: Duration,
}

/// Stand-in keys for baseline sockets are below 2^63, so never a kernel address (those are in
/// the upper half). A socket is seeded under [`stand_in_key`], a hash of its namespace and
/// 4-tuple in [2^62, 2^63), so that its first traced event finds it in the engine's own index
/// with no second table (which cost ~100 bytes per baseline socket); the few whose key is taken
/// already (a 62-bit hash collision) get a sequential key from here, below 2^62, and are
/// matched to their kernel address by no event (counted, and logged once after the baseline).
pub(super) const STAND_IN_BASE: u64 = 0x3000_0000_0000_0000;

/// The stand-in key of a socket with 4-tuple `t` (normalized) in namespace `ns`: splitmix64
/// over its fields, in [2^62, 2^63).
pub(super) fn stand_in_key(ns: u32, t: &FourTuple) -> u64 {
    fn mix(h: u64, x: u64) -> u64 {
        let mut z = h ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let v6 = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits(),
    };
    let (s, d) = (v6(t.saddr), v6(t.daddr));
    let mut h = mix(
        0,
        u64::from(ns) << 32 | u64::from(t.sport) << 16 | u64::from(t.dport),
    );
    h = mix(h, u64::from(matches!(t.family, Family::V6)));
    for w in [s as u64, (s >> 64) as u64, d as u64, (d >> 64) as u64] {
        h = mix(h, w);
    }
    (1 << 62) | (h & ((1 << 62) - 1))
}

impl Pipeline {
    /// Seeds the engine with the TCP sockets that exist now in every network namespace that
    /// has a process in it or a name under /run/netns (sock_diag inside each), with their
    /// owners from one /proc scan. Call after the program is attached (a socket that changes
    /// state in between is seen by both; the traced state wins), then [`Pipeline::tick`] to
    /// emit leaks found. With `--pid`, only that process's sockets are seeded.
    pub fn baseline(&mut self, now_ns: u64) -> Result<BaselineReport, SockDiagError> {
        let started = Instant::now();
        let Some(live) = self.live.as_mut() else {
            return Ok(BaselineReport::default());
        };
        let mut report = BaselineReport::default();
        let mut sockets: Vec<(u32, DiagSocket)> = Vec::new();
        let mut buf = Vec::new();
        for ns in live.namespaces.discover(started) {
            let Some(diag) = live.namespaces.diag(ns, started) else {
                report.namespaces_failed += 1;
                continue;
            };
            buf.clear();
            match diag.dump(StateMask::ALL) {
                Ok(v) => buf = v,
                Err(e) if ns == self.own_netns => return Err(e),
                Err(e) => {
                    tracing::warn!("network namespace {ns}: reading its TCP sockets: {e}");
                    report.namespaces_failed += 1;
                    continue;
                }
            }
            report.namespaces += 1;
            read_port_range(&mut live.namespaces, &mut self.tw, ns, started);
            // With --pid the TIME_WAIT counts are that process's hand-overs only (timewait
            // sockets have no owner to filter a dump by).
            if self.pid.is_none() {
                self.tw.resync(ns, now_ns, &buf);
            }
            sockets.extend(buf.drain(..).map(|s| (ns, s)));
        }
        // With --pid only that process's fd table is read.
        let index = attribution::scan_inodes(self.pid);
        let diag_only: Vec<DiagSocket> = sockets.iter().map(|(_, s)| *s).collect();
        let found = attribution::owners_of_baseline(&diag_only, &index);
        drop(diag_only);
        self.engine.tick(now_ns, &mut self.records);
        for ((ns, s), owner) in sockets.iter().zip(found) {
            if self.pid.is_some() && owner.map(|o| o.pid) != self.pid {
                continue;
            }
            if matches!(s.state, TcpState::TimeWait | TcpState::Close) {
                continue;
            }
            if self.pid.is_some() {
                report.pid_ports.push((*ns, s.sport));
            }
            self.seed_diag(*ns, s, owner, now_ns);
            report.seeded += 1;
        }
        if self.stand_in_collisions > 0 {
            tracing::warn!(
                "startup baseline: {} sockets share a stand-in key with another (a 62-bit hash \
                 collision); each is tracked, but its first traced event will not find it",
                self.stand_in_collisions
            );
        }
        drop((sockets, buf));
        if let Some(live) = self.live.as_mut() {
            live.attributor.adopt_index(index, Instant::now());
        }
        super::release_freed_memory();
        let bytes = self.engine.heap_bytes();
        self.trimmed = super::Trimmed {
            bytes,
            at: Some(Instant::now()),
            seen: bytes,
        };
        report.elapsed = started.elapsed();
        self.baseline = Some(BaselineSummary {
            sockets: report.seeded as u64,
            namespaces: report.namespaces as u64,
            namespaces_failed: report.namespaces_failed as u64,
            took_us: report.elapsed.as_micros() as u64,
        });
        self.tw_last_resync = Some((started, report.elapsed));
        Ok(report)
    }
}

impl Pipeline {
    /// Seeds one socket that sock_diag reported in namespace `ns` (the startup baseline, and
    /// reconciliation). The engine keys sockets by kernel address, which sock_diag does not
    /// give: a stand-in key is used until the socket's first traced event.
    pub(super) fn seed_diag(&mut self, ns: u32, s: &DiagSocket, owner: Option<Owner>, now_ns: u64) {
        let mut key = stand_in_key(ns, &s.tuple().normalized());
        if self.engine.state_of(key).is_some() {
            key = self.next_stand_in;
            self.next_stand_in += 1;
            self.stand_in_collisions += 1;
        } else {
            self.stand_ins += 1;
        }
        if s.state == TcpState::Listen
            && let Some(o) = owner
        {
            self.owners.listeners.insert((ns, s.sport), o);
        }
        let since = s
            .close_wait_since_estimate_ms()
            .map(|ms| now_ns.saturating_sub(u64::from(ms) * 1_000_000));
        self.engine.seed(
            &Seed {
                id: SocketId {
                    sk: key,
                    netns: ns,
                    family: s.family,
                    saddr: s.saddr,
                    sport: s.sport,
                    daddr: s.daddr,
                    dport: s.dport,
                },
                state: s.state,
                owner,
                state_since_ns: since,
            },
            &mut self.records,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn tuple(saddr: IpAddr, sport: u16) -> FourTuple {
        FourTuple {
            family: Family::V4,
            saddr,
            sport,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 80,
        }
    }

    #[test]
    fn stand_in_keys_are_below_kernel_addresses_and_apart_from_sequential_ones() {
        let mut seen = std::collections::HashSet::new();
        for ns in [0u32, 1, 4_026_531_840] {
            for port in 0..2_000u16 {
                let k = stand_in_key(ns, &tuple(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
                assert!((1 << 62..1 << 63).contains(&k), "{k:#x}");
                assert!(seen.insert(k), "same key for two tuples");
            }
        }
        const { assert!(STAND_IN_BASE < 1 << 62) };
        // The key is of the normalized tuple: a v4 address and its v4-mapped form agree.
        let v4 = tuple(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 7);
        let mapped = tuple(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()), 7);
        assert_eq!(
            stand_in_key(5, &v4.normalized()),
            stand_in_key(5, &mapped.normalized())
        );
        let v6 = tuple(IpAddr::V6(Ipv6Addr::LOCALHOST), 7);
        assert_ne!(stand_in_key(5, &v4), stand_in_key(5, &v6));
    }
}
