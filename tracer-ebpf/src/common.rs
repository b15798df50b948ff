//! What both programs share: the load-time [`Config`], the per-CPU ring buffers, the per-CPU
//! counters, the in-kernel `--pid` filter, and the event write (reserve in this CPU's ring →
//! fill → submit, waking the reader only past `wakeup_bytes`). Each program's crate root includes this module once, so each
//! object file gets its own copy of the maps.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    btf_maps::{ArrayOfMaps, RingBuf},
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_ringbuf_query, generated::bpf_jiffies64,
    },
    macros::{btf_map, map, tracepoint},
    maps::{HashMap, PerCpuArray, ring_buf::RingBufEntry},
    programs::TracePointContext,
};
use tracer_common::{
    COUNTERS, Config, Counter, EVENTS_CPUS, EVENTS_RING_BYTES, FILTER_PIDS_ENTRIES,
    FILTER_PORTS_ENTRIES, FILTER_SOCKS_ENTRIES, RESET_RAW_BYTES, ResetEvent, TCP_CLOSE, TcpEvent,
    filter_port_key,
};

#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
    filter: 0,
    wakeup_bytes: 256 * 1024,
    sk_family: 0,
    sk_sport: 0,
    sk_dport: 0,
    sk_saddr: 0,
    sk_daddr: 0,
    sk_saddr_v6: 0,
    sk_daddr_v6: 0,
    sk_has_v6: 0,
    task_pid: 0,
    task_tgid: 0,
    task_comm: 0,
    sk_has_net: 0,
    sk_net: 0,
    net_inum: 0,
    sk_err: 0,
    task_btf: 1,
    sk_has_idle: 0,
    sk_rcv_tstamp: 0,
    sk_lsndtime: 0,
    rst_len: 0,
    rst_skaddr: 0,
    _pad: 0,
};

/// Reads one field of the loader-set [`Config`]. One load per field, not a copy of the
/// struct: the verifier then knows each value as a constant (the global lives in a frozen
/// read-only map), prunes the branches it disables, and accepts it as a fixed offset into a
/// BTF-typed kernel pointer.
macro_rules! config {
    ($field:ident) => {
        // SAFETY: a plain read of a static; `read_volatile` keeps the compiler from folding the
        // default value, so the value the loader wrote is used.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::common::CONFIG.$field)) }
    };
}
pub(crate) use config;

/// One ring buffer per CPU (or per group of CPUs), by CPU id: userspace creates the rings and
/// fills every slot. A ring shared by CPUs that write at once costs each writer the ring's
/// lock and its cache lines (measured: 370 against 220 ns per event with two CPUs on one
/// ring); a CPU writing to its own ring never waits. Userspace merges the rings by timestamp.
#[btf_map]
static EVENTS: ArrayOfMaps<
    RingBuf<TcpEvent, { EVENTS_RING_BYTES as usize }>,
    { EVENTS_CPUS as usize },
> = ArrayOfMaps::new();

#[map(name = "COUNTERS")]
static COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// tgid → 1: processes whose sockets pass the filter.
#[map(name = "FILTER_PIDS")]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_PIDS_ENTRIES, 0);

/// (netns, local port) → 1: listeners and pre-existing sockets of the filtered processes
/// (`filter_port_key`).
#[map(name = "FILTER_PORTS")]
static FILTER_PORTS: HashMap<u64, u8> = HashMap::with_max_entries(FILTER_PORTS_ENTRIES, 0);

/// skaddr → 1: sockets seen in a filtered process's own context.
#[map(name = "FILTER_SOCKS")]
static FILTER_SOCKS: HashMap<u64, u8> = HashMap::with_max_entries(FILTER_SOCKS_ENTRIES, 0);

/// Adds one to a per-CPU counter and returns its new value on this CPU (0 if the slot is
/// missing, which cannot happen for an index below `COUNTERS`). The per-CPU array lookup is
/// inlined by the verifier: no helper call.
#[inline(always)]
pub fn count(counter: Counter) -> u64 {
    match COUNTERS_MAP.get_ptr_mut(counter as u32) {
        Some(slot) => {
            // SAFETY: per-CPU slot; nothing else runs on this CPU while the program does.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    }
}

/// Asking the ring buffer for its fill level is a helper call that touches the consumer's
/// cache line; do it on every this-many-th event of a CPU only. The threshold is coarse
/// (hundreds of KiB), so the reader is woken at most a few KiB late.
const WAKE_CHECK_EVERY: u64 = 32;

/// An event reserved in this CPU's ring: [`Slot::write`] it, then [`Slot::submit`] it. (Not a
/// closure: with two programs in one object the compiler would outline a closure into a
/// BPF-to-BPF call, whose stack adds to the caller's past the verifier's 512-byte limit.)
pub struct Slot {
    entry: RingBufEntry<TcpEvent>,
    ring: *mut core::ffi::c_void,
}

/// Reserves one event in this CPU's ring; `None` (counted) when it is full or missing.
#[inline(always)]
pub fn reserve() -> Option<Slot> {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // A CPU without a ring (a slot userspace did not fill: more CPUs than `EVENTS_CPUS`) loses
    // its events, counted like a full ring.
    let Some(ring) = EVENTS.get(cpu) else {
        count(Counter::RingFull);
        return None;
    };
    let Some(entry) = ring.reserve(0) else {
        count(Counter::RingFull);
        return None;
    };
    Some(Slot {
        entry,
        ring: core::ptr::from_ref(ring).cast_mut().cast(),
    })
}

impl Slot {
    #[inline(always)]
    pub fn write(&mut self, event: TcpEvent) {
        self.entry.write(event);
    }

    /// Submits the event, waking the reader only when enough has piled up; below that it
    /// drains on its own timer, so a burst costs one wakeup per `wakeup_bytes`, not one per
    /// event.
    #[inline(always)]
    pub fn submit(self) {
        let submitted = count(Counter::Submitted);
        self.entry.submit(wake_flag(submitted, self.ring).into());
    }
}

/// The idle stamps of a socket reaching CLOSE: `(jiffies, rcv_tstamp, lsndtime)`, read with
/// `read(offset)` (a direct BTF load in tp_btf, a probe read in the classic program); zeros
/// on other transitions or without the offsets. One helper call and two loads, at one
/// transition per connection.
#[inline(always)]
pub fn idle_stamps(newstate: u8, read: impl Fn(u32) -> u32) -> (u64, u32, u32) {
    if newstate != TCP_CLOSE || config!(sk_has_idle) == 0 {
        return (0, 0, 0);
    }
    // SAFETY: helper without arguments (5.5+; allowed in tracing programs).
    let now = unsafe { bpf_jiffies64() };
    (
        now,
        read(config!(sk_rcv_tstamp)),
        read(config!(sk_lsndtime)),
    )
}

/// Network namespace inode of the socket (full or timewait: both begin with `struct
/// sock_common`) at kernel address `sk`, through probe reads at the loader's offsets; 0 when
/// unknown.
#[inline(always)]
pub fn probe_netns(sk: u64) -> u32 {
    if sk == 0 || config!(sk_has_net) == 0 {
        return 0;
    }
    let (sk_net, net_inum) = (u64::from(config!(sk_net)), u64::from(config!(net_inum)));
    // SAFETY: probe reads of kernel memory; a bad address makes the helper fail, not fault.
    unsafe {
        let Ok(net) = bpf_probe_read_kernel((sk + sk_net) as *const u64) else {
            return 0;
        };
        if net == 0 {
            return 0;
        }
        bpf_probe_read_kernel((net + net_inum) as *const u32).unwrap_or(0)
    }
}

/// Hook: tracepoint `tcp:tcp_send_reset`. Runs only when this host sends a RST (from a full
/// socket, a timewait socket or no socket at all): copies the record as it is (userspace
/// decodes it with the format file's offsets, which differ between kernels) with the
/// sender's namespace into this CPU's ring. Not filtered by `--pid`: a reset without a socket
/// belongs to no process, and userspace attributes the others.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    count(Counter::ResetsSeen);
    let len = config!(rst_len) as usize;
    if len == 0 || len > RESET_RAW_BYTES {
        return 0;
    }
    let Some(mut slot) = reserve_reset() else {
        return 0;
    };
    let base = ctx.as_ptr() as u64;
    let skaddr_at = base + u64::from(config!(rst_skaddr));
    let entry = slot.entry.as_mut_ptr();
    // SAFETY: `entry` is this reservation's memory, `raw` within it; the source is the
    // tracepoint record (probe reads fail rather than fault).
    unsafe {
        (*entry).ts_ns = bpf_ktime_get_ns();
        (*entry).raw_len = len as u32;
        let raw = &mut (*entry).raw;
        if bpf_probe_read_kernel_buf((base + 8) as *const u8, &mut raw[..len]).is_err() {
            (*entry).raw_len = 0;
        }
        let sk = bpf_probe_read_kernel(skaddr_at as *const u64).unwrap_or(0);
        (*entry).netns = probe_netns(sk);
    }
    slot.submit();
    0
}

/// A [`ResetEvent`] reserved in this CPU's ring (see [`Slot`]).
pub struct ResetSlot {
    entry: RingBufEntry<ResetEvent>,
    ring: *mut core::ffi::c_void,
}

#[inline(always)]
fn reserve_reset() -> Option<ResetSlot> {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(ring) = EVENTS.get(cpu) else {
        count(Counter::RingFull);
        return None;
    };
    let Some(entry) = ring.reserve_untyped::<ResetEvent>(0) else {
        count(Counter::RingFull);
        return None;
    };
    Some(ResetSlot {
        entry,
        ring: core::ptr::from_ref(ring).cast_mut().cast(),
    })
}

impl ResetSlot {
    #[inline(always)]
    fn submit(self) {
        let submitted = count(Counter::Submitted);
        self.entry.submit(wake_flag(submitted, self.ring).into());
    }
}

/// `BPF_RB_FORCE_WAKEUP` past the wakeup threshold (checked every `WAKE_CHECK_EVERY`-th
/// event), else `BPF_RB_NO_WAKEUP`.
#[inline(always)]
fn wake_flag(submitted: u64, ring: *mut core::ffi::c_void) -> u32 {
    if submitted.is_multiple_of(WAKE_CHECK_EVERY)
        // SAFETY: `ring` is the inner map the lookup returned; the helper only reads it.
        && unsafe { bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA.into()) }
            >= u64::from(config!(wakeup_bytes))
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// In-kernel filter for `--pid`: a socket passes when the task on CPU is a filtered process
/// (and then the socket is remembered, and a new listener's port too), when it was remembered
/// before, or when its local port in its network namespace belongs to a filtered listener or
/// pre-existing socket.
#[inline(always)]
pub fn passes_filter(sk: u64, tgid: u32, netns: u32, sport: u16, newstate: u8) -> bool {
    const TCP_LISTEN: u8 = 10;
    // SAFETY: lookups return pointers into map values that we only test for presence.
    if unsafe { FILTER_PIDS.get(tgid) }.is_some() {
        if newstate == TCP_CLOSE {
            let _ = FILTER_SOCKS.remove(sk);
        } else {
            let _ = FILTER_SOCKS.insert(sk, 1, 0);
            if newstate == TCP_LISTEN {
                let _ = FILTER_PORTS.insert(filter_port_key(netns, sport), 1, 0);
            }
        }
        return true;
    }
    // SAFETY: as above.
    if unsafe { FILTER_SOCKS.get(sk) }.is_some() {
        if newstate == TCP_CLOSE {
            let _ = FILTER_SOCKS.remove(sk);
        }
        return true;
    }
    // SAFETY: as above.
    unsafe { FILTER_PORTS.get(filter_port_key(netns, sport)) }.is_some()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
