//! The socket table: compact per-socket entries in a slab, a hash index by socket address, and
//! two intrusive doubly linked lists threaded through the slab (least-recently-updated order for
//! eviction, and leaking sockets in leak order).
//!
//! Consumes and produces nothing by itself: the engine drives it. O(1) per operation; the slab
//! and index grow up to the engine's capacity and are then reused without allocation.

use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::event::{Family, TcpState, Transition};
use crate::record::{Dwell, Owner, Role, SocketId, StatePath};

/// "No index" in the linked lists and free list.
pub(crate) const NIL: u32 = u32::MAX;

/// Flag bits of [`Entry::flags`].
pub(crate) mod flag {
    /// Slot is on the free list.
    pub const FREE: u16 = 1 << 0;
    /// Seeded from the startup baseline: birth not seen, no lifetime.
    pub const SEEDED: u16 = 1 << 1;
    /// The birth transition (`CLOSE→X`, `LISTEN→SYN_RECV`) was seen.
    pub const BORN_TRACED: u16 = 1 << 2;
    /// `since_ns` is not an observed transition time (seeded state): no ts-based dwell for the
    /// current state, and no "late event" check against it.
    pub const SINCE_UNKNOWN: u16 = 1 << 3;
    /// The CLOSE_WAIT entry time is an estimate (seeded).
    pub const AGE_ESTIMATE: u16 = 1 << 4;
    /// In CLOSE_WAIT, in the pending heap, not yet over the threshold.
    pub const CW_PENDING: u16 = 1 << 5;
    /// In CLOSE_WAIT over the threshold: on the leak list, protected from ordinary eviction.
    pub const LEAKING: u16 = 1 << 6;
    /// A leak record was emitted during this life (stays set after CLOSE_WAIT is left).
    pub const LEAKED: u16 = 1 << 7;
    /// Seeded into CLOSE_WAIT without an estimate before the engine had a clock: its age starts
    /// at the first clock reading.
    pub const CW_UNCLOCKED: u16 = 1 << 8;
    /// `saddr` holds an IPv6 address (else IPv4 in the first 4 bytes).
    pub const SADDR_V6: u16 = 1 << 9;
    /// `daddr` holds an IPv6 address.
    pub const DADDR_V6: u16 = 1 << 10;
    /// In CLOSE_WAIT past its due time, waiting for the caller's leak decision (off the heap).
    pub const CW_CHECKING: u16 = 1 << 11;
    /// In CLOSE_WAIT past the threshold, but its owner was still sending: back on the heap for
    /// a re-check.
    pub const CW_DEFERRED: u16 = 1 << 12;
    /// In CLOSE_WAIT, and its holder was looked up by inode during this stay (the holder
    /// confirmation): not looked up again until it enters CLOSE_WAIT anew.
    pub const HOLDER_CHECKED: u16 = 1 << 13;
    /// In CLOSE_WAIT and never accepted: still in its listener's accept queue (no process has
    /// an fd for it), as of the last holder confirmation.
    pub const NOT_ACCEPTED: u16 = 1 << 14;
}

/// Per-state dwell, compact: 2 unit bits (ns, µs, ms, s) + 30-bit mantissa. Exact to the ns
/// below 1.07 s, to the µs below 17.9 min, to the ms below 12.4 days, then seconds.
/// `u32::MAX` = not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompactDwell(u32);

impl CompactDwell {
    pub const NONE: CompactDwell = CompactDwell(u32::MAX);
    const MANT: u64 = (1 << 30) - 1;

    pub fn encode(ns: u64) -> Self {
        const UNITS: [u64; 3] = [1, 1_000, 1_000_000];
        for (u, div) in UNITS.into_iter().enumerate() {
            let m = ns / div;
            if m <= Self::MANT {
                return CompactDwell(((u as u32) << 30) | m as u32);
            }
        }
        // Seconds; one below the mantissa maximum so that it never collides with NONE.
        let m = (ns / 1_000_000_000).min(Self::MANT - 1);
        CompactDwell((3 << 30) | m as u32)
    }

    pub fn decode(self) -> Option<u64> {
        if self == Self::NONE {
            return None;
        }
        let m = u64::from(self.0) & Self::MANT;
        Some(match self.0 >> 30 {
            0 => m,
            1 => m * 1_000,
            2 => m * 1_000_000,
            _ => m * 1_000_000_000,
        })
    }

    /// Adds `ns` (a state seen twice in one life sums its dwells).
    pub fn add(&mut self, ns: u64) {
        *self = Self::encode(self.decode().unwrap_or(0).saturating_add(ns));
    }
}

/// One tracked socket. Kept compact: see [`Engine::approx_bytes_per_socket`](super::Engine).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub sk: u64,
    /// Time of the first transition seen in this life (unused when SEEDED and none seen).
    pub first_ns: u64,
    /// When the current state was entered (for CLOSE_WAIT: the leak clock's start).
    pub since_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub dwell: [CompactDwell; 12],
    pub owner: Option<Owner>,
    pub path: StatePath,
    /// Linked list neighbours (LRU list, leak list, or free list via `next`).
    pub prev: u32,
    pub next: u32,
    /// Ticket of this entry's current CLOSE_WAIT heap item.
    pub cw_ticket: u32,
    /// Network namespace inode (0: unknown).
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    pub state: TcpState,
    pub role: Role,
    pub family: Family,
    pub flags: u16,
}

impl Entry {
    /// Whether a process had accepted it, as the holder confirmation last found: `Some(false)`
    /// still in an accept queue, `Some(true)` held by an fd, `None` not looked at.
    pub(crate) fn accepted(&self) -> Option<bool> {
        if self.has(flag::NOT_ACCEPTED) {
            Some(false)
        } else if self.has(flag::HOLDER_CHECKED) {
            Some(true)
        } else {
            None
        }
    }

    pub fn new(sk: u64, state: TcpState, role: Role) -> Self {
        Entry {
            sk,
            first_ns: 0,
            since_ns: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            dwell: [CompactDwell::NONE; 12],
            owner: None,
            path: StatePath::default(),
            prev: NIL,
            next: NIL,
            cw_ticket: 0,
            netns: 0,
            sport: 0,
            dport: 0,
            state,
            role,
            family: Family::V4,
            flags: 0,
        }
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    /// Copies the endpoints of `t` (the 4-tuple can change during a life: an unbound client's
    /// port appears only after CLOSE→SYN_SENT).
    pub fn set_endpoints(&mut self, t: &Transition) {
        self.netns = t.netns;
        self.family = t.family;
        self.sport = t.sport;
        self.dport = t.dport;
        self.flags &= !(flag::SADDR_V6 | flag::DADDR_V6);
        self.flags |= store_addr(&mut self.saddr, t.saddr, flag::SADDR_V6);
        self.flags |= store_addr(&mut self.daddr, t.daddr, flag::DADDR_V6);
    }

    pub fn set_id(&mut self, id: &SocketId) {
        self.netns = id.netns;
        self.family = id.family;
        self.sport = id.sport;
        self.dport = id.dport;
        self.flags &= !(flag::SADDR_V6 | flag::DADDR_V6);
        self.flags |= store_addr(&mut self.saddr, id.saddr, flag::SADDR_V6);
        self.flags |= store_addr(&mut self.daddr, id.daddr, flag::DADDR_V6);
    }

    pub fn id(&self) -> SocketId {
        SocketId {
            sk: self.sk,
            netns: self.netns,
            family: self.family,
            saddr: load_addr(&self.saddr, self.has(flag::SADDR_V6)),
            sport: self.sport,
            daddr: load_addr(&self.daddr, self.has(flag::DADDR_V6)),
            dport: self.dport,
        }
    }

    pub fn dwell_record(&self) -> Dwell {
        let mut d: Dwell = [None; 12];
        for (o, c) in d.iter_mut().zip(self.dwell) {
            *o = c.decode();
        }
        d
    }
}

fn store_addr(dst: &mut [u8; 16], a: IpAddr, v6_flag: u16) -> u16 {
    match a {
        IpAddr::V4(v4) => {
            *dst = [0; 16];
            dst[..4].copy_from_slice(&v4.octets());
            0
        }
        IpAddr::V6(v6) => {
            *dst = v6.octets();
            v6_flag
        }
    }
}

fn load_addr(src: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*src))
    } else {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    }
}

/// Hasher for socket addresses (kernel pointers: high bits constant, low bits aligned), using
/// the splitmix64 finaliser so every input bit reaches the bits hashbrown uses.
#[derive(Default, Clone, Copy)]
pub(crate) struct SkHasher(u64);

impl Hasher for SkHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let mut z = x ^ self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }
}

/// The hash of a socket address in the index.
fn sk_hash(sk: u64) -> u64 {
    let mut h = SkHasher::default();
    h.write_u64(sk);
    h.finish()
}

/// Socket address → slot: a table of slot numbers (4 bytes and a control byte per bucket),
/// hashed and compared through the slot's own `sk`, so the key is not stored twice.
pub(crate) type SkIndex = hashbrown::HashTable<u32>;

/// A doubly linked list threaded through the slab.
#[derive(Clone, Copy, Debug)]
pub(crate) struct List {
    /// Oldest.
    pub head: u32,
    /// Newest.
    pub tail: u32,
    pub len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// Slab + index + lists.
pub(crate) struct Table {
    pub slots: Vec<Entry>,
    free_head: u32,
    index: SkIndex,
    /// Non-leaking live entries, least recently updated first.
    pub lru: List,
    /// Leaking entries (in CLOSE_WAIT over the threshold), in the order they started leaking.
    pub leaks: List,
    capacity: usize,
}

/// Which list an entry is on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Which {
    Lru,
    Leaks,
}

impl Table {
    pub fn new(capacity: usize) -> Self {
        Table {
            slots: Vec::new(),
            free_head: NIL,
            index: SkIndex::default(),
            lru: List::EMPTY,
            leaks: List::EMPTY,
            capacity: capacity.max(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn find(&self, sk: u64) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(sk_hash(sk), |&i| slots[i as usize].sk == sk)
            .copied()
    }

    /// Adds `sk → i` to the index (`slots[i].sk == sk`, and `sk` not indexed yet).
    fn index_insert(&mut self, sk: u64, i: u32) {
        let slots = &self.slots;
        self.index
            .insert_unique(sk_hash(sk), i, |&j| sk_hash(slots[j as usize].sk));
    }

    /// Removes `sk` from the index; returns its slot.
    fn index_remove(&mut self, sk: u64) -> Option<u32> {
        let slots = &self.slots;
        match self
            .index
            .find_entry(sk_hash(sk), |&i| slots[i as usize].sk == sk)
        {
            Ok(e) => Some(e.remove().0),
            Err(_) => None,
        }
    }

    pub fn get(&self, i: u32) -> &Entry {
        &self.slots[i as usize]
    }

    pub fn get_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.slots[i as usize]
    }

    /// Stores a new entry (the caller made room: `len() < capacity()`) at the newest end of the
    /// LRU list.
    pub fn insert(&mut self, e: Entry) -> u32 {
        let sk = e.sk;
        let i = if self.free_head != NIL {
            let i = self.free_head;
            self.free_head = self.slots[i as usize].next;
            self.slots[i as usize] = e;
            i
        } else {
            if self.slots.len() == self.slots.capacity() {
                // Grow geometrically but never past the configured capacity.
                let len = self.slots.len();
                let want = (len * 2).max(64).min(self.capacity).max(len + 1);
                self.slots.reserve_exact(want - len);
            }
            self.slots.push(e);
            (self.slots.len() - 1) as u32
        };
        self.index_insert(sk, i);
        self.link_newest(Which::Lru, i);
        i
    }

    /// Moves the entry keyed `from` to key `to`, if `from` is tracked and `to` is not.
    pub fn rekey(&mut self, from: u64, to: u64) -> bool {
        if from == to || self.find(to).is_some() {
            return false;
        }
        let Some(i) = self.index_remove(from) else {
            return false;
        };
        self.slots[i as usize].sk = to;
        self.index_insert(to, i);
        true
    }

    /// Removes entry `i` (unlinking it from `which`) and frees its slot.
    pub fn remove(&mut self, i: u32, which: Which) {
        self.unlink(which, i);
        let sk = self.slots[i as usize].sk;
        self.index_remove(sk);
        let e = &mut self.slots[i as usize];
        e.flags = flag::FREE;
        e.owner = None;
        e.next = self.free_head;
        self.free_head = i;
    }

    fn list(&mut self, which: Which) -> &mut List {
        match which {
            Which::Lru => &mut self.lru,
            Which::Leaks => &mut self.leaks,
        }
    }

    pub fn link_newest(&mut self, which: Which, i: u32) {
        let tail = self.list(which).tail;
        {
            let e = &mut self.slots[i as usize];
            e.prev = tail;
            e.next = NIL;
        }
        if tail != NIL {
            self.slots[tail as usize].next = i;
        }
        let l = self.list(which);
        if l.head == NIL {
            l.head = i;
        }
        l.tail = i;
        l.len += 1;
    }

    pub fn unlink(&mut self, which: Which, i: u32) {
        let (prev, next) = {
            let e = &self.slots[i as usize];
            (e.prev, e.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.list(which).head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.list(which).tail = prev;
        }
        let e = &mut self.slots[i as usize];
        e.prev = NIL;
        e.next = NIL;
        let l = self.list(which);
        l.len -= 1;
    }

    /// Marks `i` as just updated (newest end of the LRU list). O(1).
    pub fn touch(&mut self, i: u32) {
        if self.lru.tail != i {
            self.unlink(Which::Lru, i);
            self.link_newest(Which::Lru, i);
        }
    }

    /// Iterates a list from oldest to newest.
    pub fn iter_list(&self, which: Which) -> impl Iterator<Item = u32> + '_ {
        let mut cur = match which {
            Which::Lru => self.lru.head,
            Which::Leaks => self.leaks.head,
        };
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let i = cur;
            cur = self.slots[i as usize].next;
            Some(i)
        })
    }

    /// Bytes held by the slab and the index (allocated capacity, not just used).
    pub fn heap_bytes(&self) -> usize {
        let slab = self.slots.capacity() * size_of::<Entry>();
        // hashbrown: buckets = next power of two ≥ capacity·8/7, each holding a u32 slot
        // number and one control byte, plus 16 trailing control bytes.
        let cap = self.index.capacity();
        let buckets = if cap == 0 {
            0
        } else {
            (cap * 8 / 7).next_power_of_two()
        };
        let index = buckets * (size_of::<u32>() + 1) + if buckets > 0 { 16 } else { 0 };
        slab + index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_dwell_round_trips() {
        for ns in [0u64, 1, 999, 1_073_741_823] {
            assert_eq!(CompactDwell::encode(ns).decode(), Some(ns));
        }
        // µs precision above ~1.07 s.
        assert_eq!(
            CompactDwell::encode(1_500_000_123).decode(),
            Some(1_500_000_000)
        );
        // ms above ~17.9 min, s above ~12.4 days.
        assert_eq!(
            CompactDwell::encode(3_600_000_000_123).decode(),
            Some(3_600_000_000_000)
        );
        assert_eq!(
            CompactDwell::encode(30 * 86_400 * 1_000_000_000 + 7).decode(),
            Some(30 * 86_400 * 1_000_000_000)
        );
        assert!(CompactDwell::encode(u64::MAX).decode().is_some());
        assert_eq!(CompactDwell::NONE.decode(), None);
        let mut d = CompactDwell::NONE;
        d.add(5);
        d.add(7);
        assert_eq!(d.decode(), Some(12));
    }

    #[test]
    fn lists_link_and_unlink() {
        let mut t = Table::new(8);
        let a = t.insert(Entry::new(1, TcpState::Established, Role::Client));
        let b = t.insert(Entry::new(2, TcpState::Established, Role::Client));
        let c = t.insert(Entry::new(3, TcpState::Established, Role::Client));
        assert_eq!(t.iter_list(Which::Lru).collect::<Vec<_>>(), [a, b, c]);
        t.touch(a);
        assert_eq!(t.iter_list(Which::Lru).collect::<Vec<_>>(), [b, c, a]);
        t.unlink(Which::Lru, c);
        t.link_newest(Which::Leaks, c);
        assert_eq!(t.iter_list(Which::Lru).collect::<Vec<_>>(), [b, a]);
        assert_eq!(t.iter_list(Which::Leaks).collect::<Vec<_>>(), [c]);
        t.remove(b, Which::Lru);
        assert_eq!(t.find(2), None);
        assert_eq!(t.len(), 2);
        let d = t.insert(Entry::new(4, TcpState::Listen, Role::Listener));
        assert_eq!(d, b, "freed slot reused");
        assert_eq!(t.iter_list(Which::Lru).collect::<Vec<_>>(), [a, d]);
        assert_eq!((t.lru.len, t.leaks.len), (2, 1));
    }
}
