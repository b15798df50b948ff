//! Hook: BTF tracepoint (`tp_btf`) `inet_sock_set_state` (include/trace/events/sock.h), the
//! same kernel event as the classic tracepoint in main.rs, without its record: the kernel
//! passes `(struct sock *sk, int oldstate, int newstate)` and fills nothing. The program reads
//! the socket and task fields itself, with plain loads at offsets the loader found in the
//! running kernel's BTF (passed in the read-only `Config`), and the socket's network namespace
//! through `skc_net`. The filter is the classic program's (common.rs).
//!
//! The event is identical to the classic program's: the fields are the ones the tracepoint's
//! `TP_fast_assign` copies (`inet_sport`/`inet_saddr` of `struct inet_sock`, `skc_dport`,
//! `skc_daddr`, `skc_v6_*`), so the two can be swapped under the same userspace.
//! O(1) per event: no per-socket state (no capacity limit; dwell is computed in userspace from
//! event timestamps), one ring-buffer reservation, no loops; with `--pid`, at most three hash
//! operations.
#![no_std]
#![no_main]
#![warn(unused_crate_dependencies)]

// The package's (empty) library is there for tracer's build-dependency only; cargo hands it to
// every bin, so name it to keep `unused_crate_dependencies` for the real dependencies.
use tracer_ebpf as _;

mod common;

use core::ffi::c_void;
use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_task_btf, bpf_skc_to_tcp_sock},
    },
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use common::{config, count, idle_stamps, passes_filter, reserve};
use tracer_common::{AF_INET, Counter, TcpEvent};

/// Loads a `T` at byte offset `off` of a BTF-typed kernel pointer. The verifier checks the
/// access against the kernel's BTF (the offset is a known constant: it comes from `Config`)
/// and turns it into a fault-tolerant load.
#[inline(always)]
fn load<T>(base: *const u8, off: u32) -> T {
    // SAFETY: `base` is a kernel object the verifier typed from BTF, `off` its member's offset
    // as found in that BTF by the loader (which checked size and alignment); the JIT makes the
    // load fault-tolerant.
    unsafe { read_volatile(base.add(off as usize).cast::<T>()) }
}

/// 16 bytes (an IPv6 address) at `off`, as four 4-byte loads (`in6_addr` is 4-aligned).
#[inline(always)]
fn load16(base: *const u8, off: u32) -> [u8; 16] {
    let w: [u32; 4] = [
        load(base, off),
        load(base, off + 4),
        load(base, off + 8),
        load(base, off + 12),
    ];
    let mut b = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let x = w[i].to_ne_bytes();
        b[4 * i] = x[0];
        b[4 * i + 1] = x[1];
        b[4 * i + 2] = x[2];
        b[4 * i + 3] = x[3];
        i += 1;
    }
    b
}

/// Per CPU: what the nested-event program needs to know about runs of the main program.
#[repr(C)]
struct Running {
    /// Runs of [`inet_sock_set_state`] in progress on this CPU.
    depth: u64,
    /// Runs started on this CPU.
    started: u64,
    /// `started` when the outermost run in progress began.
    outer: u64,
}

#[map(name = "RUNNING")]
static RUNNING: PerCpuArray<Running> = PerCpuArray::with_max_entries(1, 0);

/// The program: handles the event, and marks itself running on this CPU for
/// [`inet_sock_set_state_nested`].
#[btf_tracepoint(function = "inet_sock_set_state")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let running = RUNNING.get_ptr_mut(0);
    if let Some(r) = running {
        // SAFETY: this CPU's slot; runs on one CPU touch it one at a time (a nested run
        // finishes before the run it interrupted goes on).
        unsafe {
            (*r).started += 1;
            if (*r).depth == 0 {
                (*r).outer = (*r).started;
            }
            (*r).depth += 1;
        }
    }
    on_event(&ctx);
    if let Some(r) = running {
        // SAFETY: as above.
        unsafe { (*r).depth -= 1 };
    }
    0
}

/// The nested-event program, attached after [`inet_sock_set_state`]. The kernel does not run a
/// tracing program on a CPU where it is already running (6.2+, and Debian's 6.1): a state
/// change in softirq — a packet for another socket — that interrupts the program mid-run is
/// skipped for it and only counted in its `recursion_misses`. This program has its own guard,
/// so the kernel runs it then. It handles the event exactly when the main program is mid-run
/// on this CPU and no run of it has started since the outermost one began — that is, when the
/// kernel skipped the main program for this event. Otherwise (no nesting; or a kernel without
/// the guard, where the nested run of the main program, called first in attach order, has
/// already handled it) it returns at once.
#[btf_tracepoint(function = "inet_sock_set_state")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn inet_sock_set_state_nested(ctx: BtfTracePointContext) -> u32 {
    if let Some(r) = RUNNING.get_ptr(0) {
        // SAFETY: this CPU's slot, read only.
        let skipped = unsafe { (*r).depth > 0 && (*r).started == (*r).outer };
        if skipped {
            count(Counter::Recovered);
            on_event(&ctx);
        }
    }
    0
}

#[inline(always)]
fn on_event(ctx: &BtfTracePointContext) {
    let sk: *mut c_void = ctx.arg(0);
    // NULL unless a full TCP socket (IPPROTO_TCP, SOCK_STREAM): this is the protocol filter
    // (SCTP and MPTCP's own sockets use the same tracepoint), and it yields a pointer typed as
    // `struct tcp_sock`, through which the `inet_sock` fields may be read.
    // SAFETY: helper taking a BTF socket pointer (or NULL).
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) };
    if tp.is_null() {
        return;
    }
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    handle(
        sk as u64,
        tp.cast::<u8>().cast_const(),
        oldstate as u8,
        newstate as u8,
    );
}

/// The task on CPU: `(task, tgid, tid)`. With `task_btf` (5.11+) read from the BTF-typed task;
/// otherwise (5.10, where `bpf_get_current_task_btf` does not exist) through
/// `bpf_get_current_pid_tgid`, and `task` is NULL.
#[inline(always)]
fn current_task() -> (*const u8, u32, u32) {
    if config!(task_btf) != 0 {
        // SAFETY: helper without arguments; never NULL in a tracing program.
        let task = unsafe { bpf_get_current_task_btf() }
            .cast::<u8>()
            .cast_const();
        (
            task,
            load(task, config!(task_tgid)),
            load(task, config!(task_pid)),
        )
    } else {
        let pid_tgid = bpf_get_current_pid_tgid();
        (core::ptr::null(), (pid_tgid >> 32) as u32, pid_tgid as u32)
    }
}

/// The comm of the current task (`task` from [`current_task`], NULL without `task_btf`).
#[inline(always)]
fn current_comm(task: *const u8) -> [u8; 16] {
    let comm_off = config!(task_comm);
    if config!(task_btf) != 0 && comm_off != 0 {
        let lo: u64 = load(task, comm_off);
        let hi: u64 = load(task, comm_off + 8);
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&lo.to_ne_bytes());
        c[8..].copy_from_slice(&hi.to_ne_bytes());
        c
    } else {
        bpf_get_current_comm().unwrap_or_default()
    }
}

/// Inode number of the socket's network namespace: `sk->__sk_common.skc_net.net->ns.inum`,
/// two dependent loads (the first yields a BTF-typed `struct net *`).
#[inline(always)]
fn netns_of(tp: *const u8) -> u32 {
    if config!(sk_has_net) == 0 {
        return 0;
    }
    let net: *const u8 = load(tp, config!(sk_net));
    if net.is_null() {
        return 0;
    }
    load(net, config!(net_inum))
}

#[inline(always)]
fn handle(skaddr: u64, tp: *const u8, oldstate: u8, newstate: u8) {
    count(Counter::Seen);
    let (task, tgid, tid) = current_task();
    let sport = u16::from_be(load(tp, config!(sk_sport)));
    let netns = netns_of(tp);

    if config!(filter) != 0 && !passes_filter(skaddr, tgid, netns, sport, newstate) {
        count(Counter::Filtered);
        return;
    }

    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    let Some(mut entry) = reserve() else {
        return;
    };
    let family: u16 = load(tp, config!(sk_family));
    let (saddr, daddr) = if family == AF_INET {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        let sa: u32 = load(tp, config!(sk_saddr));
        let da: u32 = load(tp, config!(sk_daddr));
        s[..4].copy_from_slice(&sa.to_ne_bytes());
        d[..4].copy_from_slice(&da.to_ne_bytes());
        (s, d)
    } else if config!(sk_has_v6) != 0 {
        (
            load16(tp, config!(sk_saddr_v6)),
            load16(tp, config!(sk_daddr_v6)),
        )
    } else {
        ([0; 16], [0; 16])
    };
    let sk_err: i32 = if config!(sk_has_net) != 0 {
        load(tp, config!(sk_err))
    } else {
        0
    };
    let (jiffies, rcv_tstamp, lsndtime) = idle_stamps(newstate, |off| load::<u32>(tp, off));
    entry.write(TcpEvent {
        ts_ns: now,
        skaddr,
        saddr,
        daddr,
        tgid,
        tid,
        sport,
        dport: u16::from_be(load(tp, config!(sk_dport))),
        family,
        oldstate,
        newstate,
        comm: current_comm(task),
        sk_err: sk_err as u16,
        _pad: 0,
        netns,
        jiffies,
        rcv_tstamp,
        lsndtime,
    });
    entry.submit();
}
