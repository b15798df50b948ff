//! Deterministic synthetic transition streams for tests and benchmarks.
//!
//! Produces [`Transition`]s of normal loopback connections, 10 events each (client
//! `CLOSE→SYN_SENT→ESTABLISHED→FIN_WAIT1→FIN_WAIT2→CLOSE`, server child
//! `LISTEN→SYN_RECV→ESTABLISHED→CLOSE_WAIT→LAST_ACK→CLOSE`), in the order docs/kernel.md
//! shows, with `concurrency` connections interleaved pseudo-randomly. Socket addresses are
//! recycled per slot, as the kernel recycles them. No allocation per event.

use std::net::{IpAddr, Ipv4Addr};

use crate::event::{Comm, Family, TcpState, Transition};

use TcpState::*;

/// One step of a connection: (client side?, old, new).
const STEPS: [(bool, TcpState, TcpState); 10] = [
    (true, Close, SynSent),
    (false, Listen, SynRecv),
    (false, SynRecv, Established),
    (true, SynSent, Established),
    (true, Established, FinWait1),
    (false, Established, CloseWait),
    (true, FinWait1, FinWait2),
    (false, CloseWait, LastAck),
    (false, LastAck, Close),
    (true, FinWait2, Close),
];

/// Events per synthetic connection.
pub const EVENTS_PER_CONNECTION: u64 = STEPS.len() as u64;

const IDLE: u8 = STEPS.len() as u8;
const SERVER_PORT: u16 = 8080;

#[derive(Clone, Copy)]
struct Slot {
    step: u8,
    port: u16,
    last_client_ns: u64,
    last_server_ns: u64,
}

/// Iterator returned by [`synthetic_stream`].
pub struct SyntheticStream {
    remaining: u64,
    events_left: u64,
    slots: Vec<Slot>,
    live: usize,
    next_port: u16,
    ts: u64,
    rng: u64,
}

/// `n_connections` normal connections (10 events each), at most `concurrency` (≥ 1) in flight,
/// interleaved by a xorshift generator seeded with `seed`. Time starts at 1 s and advances
/// 200–1200 ns per event. Slot `i` uses client socket `0xffff_8880_0000_0000 + i·0x1000` and
/// server child `… + 0x800`, reused by every connection of that slot.
pub fn synthetic_stream(n_connections: u64, concurrency: usize, seed: u64) -> SyntheticStream {
    let concurrency = concurrency.max(1);
    SyntheticStream {
        remaining: n_connections,
        events_left: n_connections.saturating_mul(EVENTS_PER_CONNECTION),
        slots: vec![
            Slot {
                step: IDLE,
                port: 0,
                last_client_ns: 0,
                last_server_ns: 0,
            };
            concurrency
        ],
        live: 0,
        next_port: 32768,
        ts: 1_000_000_000,
        rng: seed | 1,
    }
}

impl SyntheticStream {
    fn rand(&mut self) -> u64 {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Client socket address of slot `i`.
    pub fn client_sk(i: usize) -> u64 {
        0xffff_8880_0000_0000 + (i as u64) * 0x1000
    }

    /// Server child socket address of slot `i`.
    pub fn server_sk(i: usize) -> u64 {
        Self::client_sk(i) + 0x800
    }
}

impl Iterator for SyntheticStream {
    type Item = Transition;

    fn next(&mut self) -> Option<Transition> {
        let n = self.slots.len();
        let mut j = (self.rand() % n as u64) as usize;
        if self.slots[j].step == IDLE {
            if self.remaining > 0 {
                self.remaining -= 1;
                self.live += 1;
                self.next_port = if self.next_port == u16::MAX {
                    32768
                } else {
                    self.next_port + 1
                };
                self.slots[j] = Slot {
                    step: 0,
                    port: self.next_port,
                    last_client_ns: 0,
                    last_server_ns: 0,
                };
            } else if self.live == 0 {
                return None;
            } else {
                j = (0..n)
                    .map(|k| (j + k) % n)
                    .find(|&k| self.slots[k].step != IDLE)?;
            }
        }
        self.ts += 200 + self.rand() % 1000;
        let ts = self.ts;
        let slot = &mut self.slots[j];
        let (client, old, new) = STEPS[usize::from(slot.step)];
        let last = if client {
            &mut slot.last_client_ns
        } else {
            &mut slot.last_server_ns
        };
        let dwell_ns = (*last != 0).then(|| ts - *last);
        *last = ts;
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (sk, sport, dport) = if client {
            // An unbound client's port is 0 at CLOSE→SYN_SENT.
            let sport = if slot.step == 0 { 0 } else { slot.port };
            (Self::client_sk(j), sport, SERVER_PORT)
        } else {
            (Self::server_sk(j), SERVER_PORT, slot.port)
        };
        slot.step += 1;
        if slot.step == IDLE {
            self.live -= 1;
        }
        self.events_left -= 1;
        Some(Transition {
            ts_ns: ts,
            sk,
            family: Family::V4,
            saddr: lo,
            sport,
            daddr: lo,
            dport,
            old,
            new,
            dwell_ns,
            netns: 0,
            sk_err: 0,
            task_pid: 4242,
            task_tid: 4242,
            task_comm: Comm(*b"synthetic\0\0\0\0\0\0\0"),
            idle: crate::event::Idle::NONE,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.events_left).unwrap_or(usize::MAX);
        (n, usize::try_from(self.events_left).ok())
    }
}

/// A leak recording for replay tests: 3 s of server sockets starting at `base` (meant for a
/// 1 s threshold), as (ts_ns, sk, old, new) in time order. Ten sockets sit in CLOSE_WAIT 3 s
/// (ten leaks), ten sit there 2.7 µs, and one enters CLOSE_WAIT just before the end (not a
/// leak: no time is invented after the last event). The lib's replay tests and
/// tests/replay.rs format it as lines of their own.
pub fn leak_recording(base: u64) -> Vec<(u64, u64, TcpState, TcpState)> {
    const S: u64 = 1_000_000_000;
    let mut ev: Vec<(u64, u64, TcpState, TcpState)> = Vec::new();
    for i in 0..10u64 {
        let (leaky, quick) = (0x100 + i, 0x200 + i);
        let t = base + i * 1_000;
        ev.push((t, leaky, Listen, SynRecv));
        ev.push((t + 10, leaky, SynRecv, Established));
        ev.push((t + 1_000_000, leaky, Established, CloseWait));
        ev.push((t + 3 * S, leaky, CloseWait, LastAck));
        ev.push((t + 3 * S + 10_000, leaky, LastAck, Close));
        let q = base + 2 * S + i * 1_000;
        ev.push((q, quick, Listen, SynRecv));
        ev.push((q + 10, quick, SynRecv, Established));
        ev.push((q + 100, quick, Established, CloseWait));
        ev.push((q + 2_800, quick, CloseWait, LastAck));
        ev.push((q + 3_000, quick, LastAck, Close));
    }
    ev.push((base + 3 * S - 5_000, 0x300, Established, CloseWait));
    ev.sort_by_key(|e| e.0);
    ev
}
