//! Hook: tracepoint `sock:inet_sock_set_state` (include/trace/events/sock.h).
//!
//! For every TCP state change: look up when the socket last changed state (per-socket hash map,
//! bounded), apply the optional pid/port filter, and copy one `TcpEvent` into the ring buffer.
//! O(1) per event: two hash operations, one ring-buffer reservation, no loops. Every failure is
//! counted in a per-CPU array that userspace reads.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tracer_common::{
    AF_INET, COUNTERS, Config, Counter, EVENTS_RING_BYTES, FILTER_PIDS_ENTRIES,
    FILTER_PORTS_ENTRIES, FILTER_SOCKS_ENTRIES, FLAG_DWELL_KNOWN, FLAG_DWELL_TABLE_FULL,
    IPPROTO_TCP, SOCKETS_MAP_ENTRIES, TCP_CLOSE, TcpEvent,
};

/// Tracepoint arguments, as in /sys/kernel/tracing/events/sock/inet_sock_set_state/format
/// (the 8-byte common header comes first). Userspace checks these offsets against the format
/// file before attaching.
#[repr(C)]
struct InetSockSetState {
    _common: u64,
    skaddr: u64,
    oldstate: i32,
    newstate: i32,
    sport: u16,
    dport: u16,
    family: u16,
    protocol: u16,
    saddr: u32,
    daddr: u32,
    // Read as two u64 each: the verifier allows only fixed-offset loads from the context, so
    // no byte-array copies (which become memcpy through a moved pointer).
    saddr_v6: [u64; 2],
    daddr_v6: [u64; 2],
}

/// Loads a context field with one fixed-offset instruction.
macro_rules! ctx_read {
    ($args:expr, $($field:tt)+) => {
        // SAFETY: `$args` points at the tracepoint record, which holds the field.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$args).$($field)+)) }
    };
}

#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    filter: 0,
    wakeup_bytes: 256 * 1024,
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// skaddr → ktime of the socket's last transition.
#[map(name = "SOCKETS")]
static SOCKETS: HashMap<u64, u64> = HashMap::with_max_entries(SOCKETS_MAP_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// tgid → 1: processes whose sockets pass the filter.
#[map(name = "FILTER_PIDS")]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_PIDS_ENTRIES, 0);

/// local port → 1: listeners and pre-existing sockets of the filtered processes.
#[map(name = "FILTER_PORTS")]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(FILTER_PORTS_ENTRIES, 0);

/// skaddr → 1: sockets seen in a filtered process's own context.
#[map(name = "FILTER_SOCKS")]
static FILTER_SOCKS: HashMap<u64, u8> = HashMap::with_max_entries(FILTER_SOCKS_ENTRIES, 0);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS_MAP.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let args = ctx.as_ptr() as *const InetSockSetState;
    if ctx_read!(args, protocol) != IPPROTO_TCP {
        return 0;
    }
    handle(args);
    0
}

#[inline(always)]
fn handle(args: *const InetSockSetState) {
    count(Counter::Seen);
    let sk = ctx_read!(args, skaddr);
    let newstate = ctx_read!(args, newstate) as u8;
    let sport = ctx_read!(args, sport);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;

    // SAFETY: reading a plain global; `read_volatile` keeps the compiler from folding the
    // default so that the value set by the loader is used.
    let config = unsafe { core::ptr::read_volatile(&CONFIG) };
    if config.filter != 0 && !passes_filter(sk, tgid, sport, newstate) {
        count(Counter::Filtered);
        return;
    }

    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flags = 0;
    let mut dwell_ns = 0;
    let oldstate = ctx_read!(args, oldstate) as u8;
    if let Some(last) = SOCKETS.get_ptr_mut(sk) {
        // SAFETY: pointer into the map value; racing updates of one socket are serialised by
        // the socket lock in the kernel paths that change state.
        unsafe {
            dwell_ns = now.saturating_sub(*last);
            // A self-transition (close() after shutdown() while still in FIN_WAIT1 re-sets
            // FIN_WAIT1) does not start a new state: keep the state's start time.
            if oldstate != newstate {
                *last = now;
            }
        }
        flags |= FLAG_DWELL_KNOWN;
        if newstate == TCP_CLOSE {
            let _ = SOCKETS.remove(sk);
        }
    } else if newstate != TCP_CLOSE && SOCKETS.insert(sk, now, 0).is_err() {
        count(Counter::SocketTableFull);
        flags |= FLAG_DWELL_TABLE_FULL;
    }

    let Some(mut entry) = EVENTS.reserve::<TcpEvent>(0) else {
        count(Counter::RingFull);
        return;
    };
    let family = ctx_read!(args, family);
    let (saddr, daddr): ([u64; 2], [u64; 2]) = if family == AF_INET {
        (
            [u64::from(ctx_read!(args, saddr)), 0],
            [u64::from(ctx_read!(args, daddr)), 0],
        )
    } else {
        (
            [ctx_read!(args, saddr_v6[0]), ctx_read!(args, saddr_v6[1])],
            [ctx_read!(args, daddr_v6[0]), ctx_read!(args, daddr_v6[1])],
        )
    };
    entry.write(TcpEvent {
        ts_ns: now,
        skaddr: sk,
        dwell_ns,
        // Same bytes as in the record: native-endian words laid back down in memory order.
        saddr: words_to_bytes(saddr),
        daddr: words_to_bytes(daddr),
        tgid,
        tid: pid_tgid as u32,
        sport,
        dport: ctx_read!(args, dport),
        family,
        oldstate,
        newstate,
        comm: bpf_get_current_comm().unwrap_or_default(),
        flags,
        _pad: 0,
    });
    // Wake the reader only when enough has piled up; below that it drains on its own timer, so
    // a burst costs one wakeup per `wakeup_bytes`, not one per event.
    let wake = if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= u64::from(config.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake.into());
}

#[inline(always)]
fn words_to_bytes(w: [u64; 2]) -> [u8; 16] {
    let mut b = [0u8; 16];
    let lo = w[0].to_ne_bytes();
    let hi = w[1].to_ne_bytes();
    let mut i = 0;
    while i < 8 {
        b[i] = lo[i];
        b[i + 8] = hi[i];
        i += 1;
    }
    b
}

/// In-kernel filter for `--pid`: a socket passes when the task on CPU is a filtered process
/// (and then the socket is remembered, and a new listener's port too), when it was remembered
/// before, or when its local port belongs to a filtered listener or pre-existing socket.
#[inline(always)]
fn passes_filter(sk: u64, tgid: u32, sport: u16, newstate: u8) -> bool {
    const TCP_LISTEN: u8 = 10;
    // SAFETY: lookups return pointers into map values that we only test for presence.
    if unsafe { FILTER_PIDS.get(tgid) }.is_some() {
        if newstate == TCP_CLOSE {
            let _ = FILTER_SOCKS.remove(sk);
        } else {
            let _ = FILTER_SOCKS.insert(sk, 1, 0);
            if newstate == TCP_LISTEN {
                let _ = FILTER_PORTS.insert(sport, 1, 0);
            }
        }
        return true;
    }
    if unsafe { FILTER_SOCKS.get(sk) }.is_some() {
        if newstate == TCP_CLOSE {
            let _ = FILTER_SOCKS.remove(sk);
        }
        return true;
    }
    unsafe { FILTER_PORTS.get(sport) }.is_some()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
