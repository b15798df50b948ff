//! Types that cross the kernel/userspace boundary.
//!
//! The eBPF program (`tracer-ebpf`) writes [`TcpEvent`] records into the ring buffer named
//! [`EVENTS_MAP`]; the daemon (`tracer`) copies them out and decodes them. Everything here is
//! `#[repr(C)]`, `Copy`, free of `bool` and of hidden padding, and its size is asserted at
//! compile time, so both sides agree on the layout byte for byte.
#![no_std]
#![warn(unused_crate_dependencies)]

/// One TCP state transition, as seen by the tracepoint `sock:inet_sock_set_state`.
///
/// Layout: 104 bytes, 8-byte aligned, no implicit padding. It carries no dwell time: the
/// kernel keeps no per-socket state (so no per-socket capacity limit); userspace sees every
/// transition of a socket and takes the time in a state from the difference of its events'
/// timestamps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// Kernel monotonic time of the transition (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Address of the kernel `struct sock`: the socket's identity while it lives. The kernel
    /// recycles addresses for new sockets.
    pub skaddr: u64,
    /// Local address: IPv4 in the first 4 bytes when `family == AF_INET`, else IPv6.
    pub saddr: [u8; 16],
    /// Remote address, laid out like `saddr`.
    pub daddr: [u8; 16],
    /// Thread-group id of the task on CPU (often not the socket's owner).
    pub tgid: u32,
    /// Thread id of the task on CPU.
    pub tid: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// State before the transition (`TCP_*` numbering of include/net/tcp_states.h).
    pub oldstate: u8,
    /// State after the transition.
    pub newstate: u8,
    /// `comm` of the task on CPU, NUL-padded.
    pub comm: [u8; 16],
    /// The socket's pending error (`sk->sk_err`) when the transition ran, 0 when none or not
    /// read. Set by the kernel before a reset or a timeout takes the socket to CLOSE
    /// (ECONNRESET, EPIPE, ECONNREFUSED, ETIMEDOUT, ECONNABORTED…); a close this side starts
    /// (close(), SO_LINGER 0, a listener dropping its queue) leaves it 0.
    pub sk_err: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
    /// Inode number of the socket's network namespace (`sk->__sk_common.skc_net->ns.inum`,
    /// what `readlink /proc/PID/ns/net` shows as `net:[N]`); 0 when the program could not read
    /// it (classic tracepoint on a kernel without BTF).
    pub netns: u32,
    /// The kernel's tick counter (`jiffies_64`, `bpf_jiffies64`) at a transition to CLOSE, for
    /// [`TcpEvent::rcv_tstamp`] and [`TcpEvent::lsndtime`]; 0 on other transitions and when
    /// the socket offsets are unknown.
    pub jiffies: u64,
    /// `tcp_sock.rcv_tstamp` at a transition to CLOSE: the tick (low 32 bits of jiffies) of
    /// the last segment received that carried an ACK (a RST does not move it). 0 when not read.
    pub rcv_tstamp: u32,
    /// `tcp_sock.lsndtime` at a transition to CLOSE: the tick of the last data segment sent.
    pub lsndtime: u32,
}

const _: () = assert!(core::mem::size_of::<TcpEvent>() == 104);
const _: () = assert!(core::mem::align_of::<TcpEvent>() == 8);

#[cfg(feature = "user")]
// SAFETY: `TcpEvent` is `repr(C)`, `Copy`, made only of integers and byte arrays, and has no
// implicit padding (asserted above), so every bit pattern is a valid value.
unsafe impl aya::Pod for TcpEvent {}

/// A reset this host sent, as the tracepoint `tcp:tcp_send_reset` recorded it: the record's
/// bytes after the 8-byte common header, copied as they are. Their layout differs between
/// kernels (separate address and port fields before 6.10; `struct sockaddr_in6`-sized
/// address buffers and `enum sk_rst_reason reason` since), so userspace decodes them with the
/// offsets of the tracepoint's format file. A different size from [`TcpEvent`] tells the two
/// apart in the ring.
///
/// Layout: 112 bytes, 8-byte aligned, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetEvent {
    /// Kernel monotonic time (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Network namespace of the sending socket (full or timewait: both start with `struct
    /// sock_common`); 0 without a socket or when unknown.
    pub netns: u32,
    /// Bytes of `raw` that hold the record (the format's size minus the common header).
    pub raw_len: u32,
    /// The tracepoint record from byte 8 on.
    pub raw: [u8; RESET_RAW_BYTES],
}

/// Most bytes of a `tcp_send_reset` record a [`ResetEvent`] carries (80 on 6.18).
pub const RESET_RAW_BYTES: usize = 96;

const _: () = assert!(core::mem::size_of::<ResetEvent>() == 112);
const _: () = assert!(core::mem::align_of::<ResetEvent>() == 8);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, integers and a byte array only, no implicit padding (asserted above).
unsafe impl aya::Pod for ResetEvent {}

/// `AF_INET` from the kernel's socket.h.
pub const AF_INET: u16 = 2;
/// `AF_INET6` from the kernel's socket.h.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

/// `TCP_CLOSE` from include/net/tcp_states.h.
pub const TCP_CLOSE: u8 = 7;

/// Name of the array of ring buffers carrying [`TcpEvent`]s, indexed by CPU id.
pub const EVENTS_MAP: &str = "EVENTS";
/// Size of each ring buffer in bytes (a power of two, a multiple of the page size). Fixed when
/// the program is built: the kernel requires every ring of the array to match the template.
pub const EVENTS_RING_BYTES: u32 = 4 << 20;
/// Slots of [`EVENTS_MAP`] in the object; the loader sets the number of possible CPUs.
pub const EVENTS_CPUS: u32 = 1024;

/// Name of the per-CPU array of [`Counter`]s.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Name of the set of thread-group ids whose sockets pass the in-kernel filter.
pub const FILTER_PIDS_MAP: &str = "FILTER_PIDS";
/// Name of the set of (network namespace, local port) keys whose sockets pass the in-kernel
/// filter; keys are made by [`filter_port_key`].
pub const FILTER_PORTS_MAP: &str = "FILTER_PORTS";
/// Key of [`FILTER_PORTS_MAP`]: a local port in one network namespace (ports repeat across
/// namespaces, so a port alone would let other containers' sockets through).
#[inline(always)]
pub const fn filter_port_key(netns: u32, port: u16) -> u64 {
    ((netns as u64) << 32) | port as u64
}

/// Name of the set of socket addresses already known to belong to a filtered process.
pub const FILTER_SOCKS_MAP: &str = "FILTER_SOCKS";
/// Capacity of [`FILTER_PIDS_MAP`].
pub const FILTER_PIDS_ENTRIES: u32 = 64;
/// Capacity of [`FILTER_PORTS_MAP`].
pub const FILTER_PORTS_ENTRIES: u32 = 4096;
/// Capacity of [`FILTER_SOCKS_MAP`].
pub const FILTER_SOCKS_ENTRIES: u32 = 1 << 16;

/// Name of the read-only global holding the [`Config`].
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// Load-time configuration of the eBPF program, set as a read-only global before loading so
/// that the verifier sees it as a constant and prunes the branches it disables.
///
/// The `sk_*` and `task_*` fields are used only by the `tp_btf` program, which has no
/// tracepoint record and reads the kernel structs itself: they are byte offsets found in the
/// running kernel's BTF by the loader (zero for the classic tracepoint program).
///
/// Layout: 96 bytes, `u32`s only, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Non-zero: only sockets matching the filter maps are reported.
    pub filter: u32,
    /// Ring-buffer fill level (bytes) at which the program wakes the reader; below it, events
    /// are submitted without a wakeup and the reader drains on its own timer.
    pub wakeup_bytes: u32,
    /// `struct tcp_sock` → `sk.__sk_common.skc_family` (u16).
    pub sk_family: u32,
    /// `struct tcp_sock` → `inet_sock.inet_sport` (__be16), what the tracepoint reports as sport.
    pub sk_sport: u32,
    /// `struct tcp_sock` → `sk.__sk_common.skc_dport` (__be16).
    pub sk_dport: u32,
    /// `struct tcp_sock` → `inet_sock.inet_saddr` (__be32).
    pub sk_saddr: u32,
    /// `struct tcp_sock` → `sk.__sk_common.skc_daddr` (__be32).
    pub sk_daddr: u32,
    /// `struct tcp_sock` → `sk.__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub sk_saddr_v6: u32,
    /// `struct tcp_sock` → `sk.__sk_common.skc_v6_daddr` (16 bytes).
    pub sk_daddr_v6: u32,
    /// Non-zero when the kernel has the IPv6 fields (CONFIG_IPV6).
    pub sk_has_v6: u32,
    /// `struct task_struct` → `pid` (thread id, i32).
    pub task_pid: u32,
    /// `struct task_struct` → `tgid` (i32).
    pub task_tgid: u32,
    /// `struct task_struct` → `comm` (16 bytes); 0: call `bpf_get_current_comm` instead.
    pub task_comm: u32,
    /// Non-zero when the socket offsets below are valid (both programs use them: `tp_btf`
    /// with direct loads, the classic tracepoint through `bpf_probe_read_kernel` from the
    /// record's `skaddr`).
    pub sk_has_net: u32,
    /// `struct sock` (= start of `struct tcp_sock`) → `__sk_common.skc_net.net` (pointer).
    pub sk_net: u32,
    /// `struct net` → `ns.inum` (u32).
    pub net_inum: u32,
    /// `struct sock` → `sk_err` (int).
    pub sk_err: u32,
    /// Non-zero: `tp_btf` reads the current task through `bpf_get_current_task_btf` (5.11+);
    /// zero: it calls `bpf_get_current_pid_tgid` and `bpf_get_current_comm` (5.10). The
    /// branch not taken is pruned by the verifier, so 5.10 never sees the newer helper.
    pub task_btf: u32,
    /// Non-zero when the two offsets below are valid: the programs then read the idle
    /// stamps at a transition to CLOSE.
    pub sk_has_idle: u32,
    /// `struct tcp_sock` → `rcv_tstamp` (u32).
    pub sk_rcv_tstamp: u32,
    /// `struct tcp_sock` → `lsndtime` (u32).
    pub sk_lsndtime: u32,
    /// Bytes of the `tcp_send_reset` record after its common header (at most
    /// [`RESET_RAW_BYTES`]), from its format file.
    pub rst_len: u32,
    /// Offset of `skaddr` in the `tcp_send_reset` record, for the sender's namespace.
    pub rst_skaddr: u32,
    /// Explicit padding; zero.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Config>() == 96);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, only `u32`s, no padding (size asserted above).
unsafe impl aya::Pod for Config {}

/// Indices into the per-CPU [`COUNTERS_MAP`]. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP transitions the program saw (before filtering).
    Seen = 0,
    /// Events lost because the ring buffer had no room.
    RingFull = 1,
    // 2 was the per-socket dwell table's "full" count; that table is gone. Ids are not reused.
    /// Transitions dropped by the in-kernel filter.
    Filtered = 3,
    /// Records submitted to the ring buffer: transitions and resets.
    Submitted = 4,
    /// Transitions the kernel skipped the main `tp_btf` program for (it was mid-run on the
    /// CPU) and the nested-event program handled instead.
    Recovered = 5,
    /// Resets the `tcp_send_reset` program saw (each one submitted or counted as ring-full).
    ResetsSeen = 6,
}

/// Number of [`Counter`] slots.
pub const COUNTERS: u32 = 7;
