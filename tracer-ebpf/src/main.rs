//! Hook: tracepoint `sock:inet_sock_set_state` (include/trace/events/sock.h), the classic one.
//! The fallback where the kernel has no BTF; `tp_btf.rs` is the faster program for the same
//! tracepoint.
//!
//! For every TCP state change: apply the optional pid/port filter and copy one `TcpEvent` from
//! the tracepoint record (plus the socket's namespace and error, read through
//! `bpf_probe_read_kernel`) into the ring buffer. O(1) per event: no per-socket state, one
//! ring-buffer reservation, no loops. Every failure is counted in a per-CPU array that
//! userspace reads.
#![no_std]
#![no_main]
#![warn(unused_crate_dependencies)]

// The package's (empty) library is there for tracer's build-dependency only; cargo hands it to
// every bin, so name it to keep `unused_crate_dependencies` for the real dependencies.
use tracer_ebpf as _;

mod common;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use common::{config, count, idle_stamps, passes_filter, probe_netns, reserve};
use tracer_common::{AF_INET, Counter, IPPROTO_TCP, TcpEvent};

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

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
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
    let netns = probe_netns(sk);

    if config!(filter) != 0 && !passes_filter(sk, tgid, netns, sport, newstate) {
        count(Counter::Filtered);
        return;
    }

    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let oldstate = ctx_read!(args, oldstate) as u8;

    let Some(mut entry) = reserve() else {
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
    let (jiffies, rcv_tstamp, lsndtime) = idle_stamps(newstate, |off| probe_u32(sk, off));
    entry.write(TcpEvent {
        ts_ns: now,
        skaddr: sk,
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
        sk_err: sk_err_of(sk) as u16,
        _pad: 0,
        netns,
        jiffies,
        rcv_tstamp,
        lsndtime,
    });
    entry.submit();
}

/// `sk->sk_err`, read like the namespace ([`probe_netns`]); 0 when unknown.
#[inline(always)]
fn sk_err_of(sk: u64) -> i32 {
    if config!(sk_has_net) == 0 {
        return 0;
    }
    let off = u64::from(config!(sk_err));
    // SAFETY: as in `netns_of`.
    unsafe { bpf_probe_read_kernel((sk + off) as *const i32) }.unwrap_or(0)
}

/// Reads one `u32` at byte `off` of the socket at kernel address `sk` (0 on failure).
#[inline(always)]
fn probe_u32(sk: u64, off: u32) -> u32 {
    // SAFETY: a probe read; a bad address makes the helper fail, not fault.
    unsafe { bpf_probe_read_kernel((sk + u64::from(off)) as *const u32) }.unwrap_or(0)
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
