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
    /// The addresses are not both IPv4 (or v4-mapped): they are in the table's [`V6Pairs`],
    /// at index `saddr`.
    pub const V6_SIDE: u16 = 1 << 15;
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

/// Dwell slots kept per socket: one per state a socket can be in between two traced
/// transitions. CLOSE has none (a socket's time before its birth is not a state it was in),
/// and the tracepoint never reports TIME_WAIT (a separate timewait socket takes over) or
/// NEW_SYN_RECV (request sockets): a replayed recording that has them keeps their time in
/// the dwell histograms, not in the socket's close record.
pub(crate) const DWELL_SLOTS: usize = 9;

/// Dwell slot of each state (by [`TcpState::index`]); `NO_SLOT` for the three above.
const DWELL_SLOT: [u8; 12] = [0, 1, 2, 3, 4, NO_SLOT, NO_SLOT, 5, 6, 7, 8, NO_SLOT];
const NO_SLOT: u8 = u8::MAX;

/// One tracked socket. Kept compact: see [`Engine::approx_bytes_per_socket`](super::Engine).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub sk: u64,
    /// Time of the first transition seen in this life (unused when SEEDED and none seen).
    pub first_ns: u64,
    /// When the current state was entered (for CLOSE_WAIT: the leak clock's start).
    pub since_ns: u64,
    /// IPv4 source and destination (v4-mapped IPv6 ones too: `SADDR_V6`/`DADDR_V6` say which
    /// form), or with `V6_SIDE` the index of the pair in the table's [`V6Pairs`].
    saddr: u32,
    daddr: u32,
    /// Time per state, by [`DWELL_SLOT`].
    dwell: [CompactDwell; DWELL_SLOTS],
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
            saddr: 0,
            daddr: 0,
            dwell: [CompactDwell::NONE; DWELL_SLOTS],
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

    /// The socket's identity and endpoints (`v6`: its table's IPv6 pairs).
    pub fn id(&self, v6: &V6Pairs) -> SocketId {
        let (saddr, daddr) = if self.has(flag::V6_SIDE) {
            let [s, d] = v6.pairs[self.saddr as usize];
            (
                load_v6(s, self.has(flag::SADDR_V6)),
                load_v6(d, self.has(flag::DADDR_V6)),
            )
        } else {
            (
                load_v4(self.saddr, self.has(flag::SADDR_V6)),
                load_v4(self.daddr, self.has(flag::DADDR_V6)),
            )
        };
        SocketId {
            sk: self.sk,
            netns: self.netns,
            family: self.family,
            saddr,
            sport: self.sport,
            daddr,
            dport: self.dport,
        }
    }

    pub fn dwell_record(&self) -> Dwell {
        let mut d: Dwell = [None; 12];
        for (o, &slot) in d.iter_mut().zip(&DWELL_SLOT) {
            if let Some(c) = self.dwell.get(usize::from(slot)) {
                *o = c.decode();
            }
        }
        d
    }

    /// Whether a dwell is known for state `st`.
    pub fn has_dwell(&self, st: TcpState) -> bool {
        self.dwell
            .get(usize::from(DWELL_SLOT[st.index()]))
            .is_some_and(|c| *c != CompactDwell::NONE)
    }

    /// Adds `ns` to the time in state `st` (nothing for a state without a slot).
    pub fn add_dwell(&mut self, st: TcpState, ns: u64) {
        if let Some(c) = self.dwell.get_mut(usize::from(DWELL_SLOT[st.index()])) {
            c.add(ns);
        }
    }
}

/// An address as IPv4 bits, and whether it was in the v4-mapped IPv6 form; `None` for an
/// IPv6 address that is not v4-mapped.
fn as_v4(a: IpAddr) -> Option<(u32, bool)> {
    match a {
        IpAddr::V4(v4) => Some((u32::from(v4), false)),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| (u32::from(v4), true)),
    }
}

fn load_v4(bits: u32, v6_form: bool) -> IpAddr {
    let v4 = Ipv4Addr::from(bits);
    if v6_form {
        IpAddr::V6(v4.to_ipv6_mapped())
    } else {
        IpAddr::V4(v4)
    }
}

/// An address as 16 bytes (IPv4 ones v4-mapped).
fn v6_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn load_v6(bytes: [u8; 16], v6_form: bool) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) if !v6_form => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// The address pairs of the sockets whose addresses are not both IPv4 (or v4-mapped), out of
/// the slot so that an IPv4 socket's slot holds 8 bytes of addresses instead of 32: a slab of
/// 32-byte pairs with a free list. It grows to the most such sockets tracked at once and is
/// then reused without allocation.
#[derive(Default)]
pub(crate) struct V6Pairs {
    pairs: Vec<[[u8; 16]; 2]>,
    free: Vec<u32>,
}

impl V6Pairs {
    fn alloc(&mut self, pair: [[u8; 16]; 2]) -> u32 {
        match self.free.pop() {
            Some(k) => {
                self.pairs[k as usize] = pair;
                k
            }
            None => {
                self.pairs.push(pair);
                (self.pairs.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, k: u32) {
        self.free.push(k);
    }

    /// Pairs in use.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pairs.len() - self.free.len()
    }

    fn heap_bytes(&self) -> usize {
        self.pairs.capacity() * size_of::<[[u8; 16]; 2]>() + self.free.capacity() * 4
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
    /// Address pairs of the IPv6 sockets.
    pub v6: V6Pairs,
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
            v6: V6Pairs::default(),
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

    /// The identity and endpoints of entry `i`.
    pub fn id(&self, i: u32) -> SocketId {
        self.slots[i as usize].id(&self.v6)
    }

    /// Copies the endpoints of `t` into entry `i` (the 4-tuple can change during a life: an
    /// unbound client's port appears only after CLOSE→SYN_SENT).
    pub fn set_endpoints(&mut self, i: u32, t: &Transition) {
        let e = &mut self.slots[i as usize];
        e.netns = t.netns;
        e.family = t.family;
        e.sport = t.sport;
        e.dport = t.dport;
        self.set_addrs(i, t.saddr, t.daddr);
    }

    /// Copies `id`'s endpoints (not its key) into entry `i`.
    pub fn set_id(&mut self, i: u32, id: &SocketId) {
        let e = &mut self.slots[i as usize];
        e.netns = id.netns;
        e.family = id.family;
        e.sport = id.sport;
        e.dport = id.dport;
        self.set_addrs(i, id.saddr, id.daddr);
    }

    fn set_addrs(&mut self, i: u32, saddr: IpAddr, daddr: IpAddr) {
        let e = &mut self.slots[i as usize];
        let side = e.has(flag::V6_SIDE).then_some(e.saddr);
        e.flags &= !(flag::SADDR_V6 | flag::DADDR_V6 | flag::V6_SIDE);
        if let (Some((s4, s6)), Some((d4, d6))) = (as_v4(saddr), as_v4(daddr)) {
            if let Some(k) = side {
                self.v6.release(k);
            }
            e.saddr = s4;
            e.daddr = d4;
            if s6 {
                e.flags |= flag::SADDR_V6;
            }
            if d6 {
                e.flags |= flag::DADDR_V6;
            }
            return;
        }
        let pair = [v6_bytes(saddr), v6_bytes(daddr)];
        let k = match side {
            Some(k) => {
                self.v6.pairs[k as usize] = pair;
                k
            }
            None => self.v6.alloc(pair),
        };
        e.saddr = k;
        e.daddr = 0;
        e.flags |= flag::V6_SIDE;
        if saddr.is_ipv6() {
            e.flags |= flag::SADDR_V6;
        }
        if daddr.is_ipv6() {
            e.flags |= flag::DADDR_V6;
        }
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
        if e.has(flag::V6_SIDE) {
            self.v6.release(e.saddr);
        }
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
        let slab = self.slots.capacity() * size_of::<Entry>() + self.v6.heap_bytes();
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
    fn addresses_round_trip_in_the_slot_and_aside() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        let id = |saddr, daddr| SocketId {
            sk: 1,
            netns: 9,
            family: Family::V6,
            saddr,
            sport: 1,
            daddr,
            dport: 2,
        };
        let mut t = Table::new(8);
        let i = t.insert(Entry::new(1, TcpState::Established, Role::Client));
        for (s, d, aside) in [
            (v4, v4, 0),
            (mapped, mapped, 0),
            (v4, mapped, 0),
            (v6, v4, 1),
            (mapped, v6, 1),
            (v6, v6, 1),
            (v4, v4, 0),
            (v6, mapped, 1),
        ] {
            t.set_id(i, &id(s, d));
            assert_eq!(t.id(i), id(s, d));
            assert_eq!(t.v6.len(), aside, "{s} {d}");
        }
        let j = t.insert(Entry::new(2, TcpState::Established, Role::Client));
        t.set_id(j, &id(v6, v6));
        assert_eq!(t.v6.len(), 2);
        t.remove(i, Which::Lru);
        assert_eq!(t.v6.len(), 1, "a removed slot gives its pair back");
        let k = t.insert(Entry::new(3, TcpState::Established, Role::Client));
        t.set_id(k, &id(v6, v4));
        assert_eq!(
            (t.v6.len(), t.v6.pairs.len()),
            (2, 2),
            "the freed pair reused"
        );
        assert_eq!(
            t.id(j),
            SocketId {
                sk: 2,
                ..id(v6, v6)
            }
        );
        assert_eq!(
            t.id(k),
            SocketId {
                sk: 3,
                ..id(v6, v4)
            }
        );
    }

    #[test]
    fn dwell_slots_map_to_states() {
        let mut e = Entry::new(1, TcpState::Established, Role::Client);
        for (k, st) in TcpState::ALL.into_iter().enumerate() {
            e.add_dwell(st, k as u64 + 1);
        }
        let d = e.dwell_record();
        for (k, st) in TcpState::ALL.into_iter().enumerate() {
            let kept = !matches!(
                st,
                TcpState::Close | TcpState::TimeWait | TcpState::NewSynRecv
            );
            assert_eq!(d[k], kept.then_some(k as u64 + 1), "{st:?}");
            assert_eq!(e.has_dwell(st), kept);
        }
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
