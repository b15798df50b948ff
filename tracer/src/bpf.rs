//! The only module that touches aya: loads one of the two embedded eBPF objects, attaches it to
//! the kernel event `sock:inet_sock_set_state`, creates its per-CPU ring buffers and hands them
//! out as [`Ring`]s (an fd to poll, items read in place), and reads the kernel counters, the
//! in-kernel filter maps and the program's own run-time statistics. Its errors ([`BpfError`])
//! keep aya's and the kernel's as their sources, and a failed load is classified from the error
//! itself (aya's variants, the errno).
//!
//! Two programs produce the same `TcpEvent`s:
//! - `tp_btf` (BTF tracepoint; object `tracer-btf`), preferred: the kernel calls it with
//!   `(sk, oldstate, newstate)` and fills no tracepoint record; it reads the socket and task
//!   fields itself at offsets found in `/sys/kernel/btf/vmlinux` by [`btf`]. No tracefs needed.
//! - the classic tracepoint (object `tracer`), the fallback where the kernel has no BTF (or the
//!   BTF lacks a field): reads the kernel-filled record, whose layout is checked against the
//!   tracefs format file.
//!
//! [`AttachMode`] picks one; [`Tracer::attach_kind`] says which is in use.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use tracer_common::{
    CONFIG_GLOBAL, COUNTERS_MAP, Config, Counter, EVENTS_MAP, EVENTS_RING_BYTES, FILTER_PIDS_MAP,
    FILTER_PORTS_MAP,
};

#[path = "btf.rs"]
pub mod btf;

/// The classic-tracepoint program.
static OBJECT_TRACEPOINT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
/// The BTF-tracepoint program.
static OBJECT_BTF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-btf"));

const CATEGORY: &str = "sock";
const TRACEPOINT: &str = "inet_sock_set_state";
const PROGRAM: &str = "inet_sock_set_state";
/// The `tp_btf` object's second program: handles the events the kernel skips the first for.
const PROGRAM_NESTED: &str = "inet_sock_set_state_nested";
/// The program on `tcp:tcp_send_reset` (in both objects).
const PROGRAM_RESET: &str = "tcp_send_reset";
const TRACEFS: &str = "/sys/kernel/tracing";

/// Why tracing could not start. Each message names what is missing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// Not privileged enough to load BPF programs.
    #[error(
        "missing privilege: {missing}. Run as root, or grant CAP_BPF, CAP_PERFMON and \
         CAP_SYS_RESOURCE (e.g. `sudo setcap cap_bpf,cap_perfmon,cap_sys_resource+ep tracer`)"
    )]
    Permission { missing: String },
    /// The verifier rejected the program.
    #[error(
        "the kernel's verifier rejected the eBPF program ({last}); run with TRACER_LOG=debug for its log"
    )]
    Verifier { last: String },
    /// The kernel has no such tracepoint.
    #[error(
        "the kernel has no tracepoint sock:inet_sock_set_state (needs Linux ≥ 4.16 with \
         CONFIG_TRACEPOINTS); looked in {TRACEFS}/events/sock"
    )]
    NoTracepoint,
    /// tracefs is not mounted and could not be mounted.
    #[error(
        "tracefs is not mounted and mounting it failed ({source}): mount it with \
         `mount -t tracefs nodev {TRACEFS}`"
    )]
    NoTracefs {
        #[source]
        source: std::io::Error,
    },
    /// The tracepoint's layout differs from the one the program was built for.
    #[error("tracepoint sock:inet_sock_set_state has an unexpected layout: {detail}")]
    Layout { detail: String },
    /// The kernel refused the program or a map. `detail` is the first line of the error and
    /// its causes (a verifier log stays out of the one-line message; it is in the debug log).
    #[error("loading the eBPF program failed: {detail}")]
    Load {
        detail: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Attaching failed.
    #[error("attaching to sock:inet_sock_set_state failed: {}", error_chain(.source))]
    Attach {
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map the program should have is missing or has the wrong type.
    #[error("eBPF map {name} is missing or has an unexpected type: {detail}")]
    Map {
        name: &'static str,
        detail: String,
        #[source]
        source: Option<MapError>,
    },
    /// The BTF tracepoint cannot be used: the kernel publishes no BTF, or its BTF lacks a field
    /// the program reads (or has it with an unexpected size or alignment).
    #[error("the BTF tracepoint is unavailable: {detail}")]
    NoBtf { detail: String },
    /// `TRACER_ATTACH` holds something other than `auto`, `tp_btf` or `tracepoint`.
    #[error("TRACER_ATTACH={value}: expected auto, tp_btf or tracepoint")]
    AttachEnv { value: String },
}

/// Which kernel hook delivers the events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// The BTF tracepoint where the kernel supports it, else the classic tracepoint.
    /// The environment variable `TRACER_ATTACH` (`auto`, `tp_btf`, `tracepoint`) overrides
    /// this choice, for comparisons and as an escape hatch.
    #[default]
    Auto,
    /// Only the BTF tracepoint (`tp_btf`); fail if it cannot be used.
    BtfTracepoint,
    /// Only the classic tracepoint (needs tracefs for the layout check).
    Tracepoint,
}

impl AttachMode {
    /// Parses `auto`, `tp_btf` (or `btf`) and `tracepoint` (or `tp`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(Self::Auto),
            "tp_btf" | "btf" | "btf_tracepoint" => Some(Self::BtfTracepoint),
            "tracepoint" | "tp" => Some(Self::Tracepoint),
            _ => None,
        }
    }
}

/// Environment variable that overrides [`AttachMode::Auto`].
pub const ATTACH_ENV: &str = "TRACER_ATTACH";

/// The hook in use, as [`Tracer::attach_kind`] names it.
const KIND_BTF: &str = "tp_btf";
const KIND_TRACEPOINT: &str = "tracepoint";

/// Load-time options.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Pass only sockets matching the filter maps (for `--pid`).
    pub filter: bool,
    /// Ring-buffer fill level at which the kernel wakes the reader.
    pub wakeup_bytes: u32,
    /// Ring-buffer memory in bytes, all rings together: `ring_bytes / EVENTS_RING_BYTES` rings
    /// (at least one, at most one per online CPU). See [`ring_count`].
    pub ring_bytes: u32,
    /// Which hook to attach to.
    pub attach: AttachMode,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            filter: false,
            wakeup_bytes: 256 * 1024,
            ring_bytes: default_ring_bytes(),
            attach: AttachMode::Auto,
        }
    }
}

/// A loaded and attached program. Dropping it detaches the program.
pub struct Tracer {
    ebpf: Ebpf,
    /// The per-CPU slots of the ring buffers, held open for as long as the program runs.
    _slots: ArrayOfMaps<MapData, MapData>,
    /// The rings, until [`Tracer::take_rings`].
    rings: Option<Vec<Ring>>,
    counters: PerCpuArray<MapData, u64>,
    kind: &'static str,
    /// The program reads each socket's network namespace (else events carry 0).
    netns: bool,
    /// Close events carry the idle stamps.
    idle: bool,
    /// The reset program is attached, and how to decode its records.
    resets: Option<ResetDecoder>,
    _stats: Option<OwnedFd>,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// TCP transitions the program saw.
    pub seen: u64,
    /// Events dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Transitions dropped by the in-kernel filter.
    pub filtered: u64,
    /// Events submitted to the ring buffer.
    pub submitted: u64,
    /// Transitions the kernel did not run the program for because it was already running on
    /// that CPU, and that the nested-event program did not handle either (the main program's
    /// `recursion_misses`, 5.12+, less [`KernelCounters::recovered`]; 0 where the kernel does
    /// not count them). A state change in softirq that interrupts the program mid-run on the
    /// same CPU (a packet for another socket) is skipped by the kernel's recursion guard.
    pub skipped: u64,
    /// Transitions the kernel skipped the main program for that the nested-event program
    /// handled instead (`tp_btf` only): not lost.
    pub recovered: u64,
    /// Resets the `tcp_send_reset` program saw.
    pub resets_seen: u64,
}

impl KernelCounters {
    /// Events that never reached userspace: ring full, or skipped by the kernel.
    pub fn lost(&self) -> u64 {
        self.ring_full + self.skipped
    }
}

/// The program's own cost, from the kernel's BPF statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_time: Duration,
    pub run_count: u64,
}

impl Tracer {
    /// Loads the program `opts.attach` selects and attaches it. With [`AttachMode::Auto`] (and
    /// no `TRACER_ATTACH`), the BTF tracepoint is tried first and any failure other than a
    /// missing privilege falls back to the classic tracepoint.
    pub fn load(opts: &LoadOptions) -> Result<Self, BpfError> {
        check_privileges()?;
        raise_memlock();
        let mode = match (opts.attach, std::env::var(ATTACH_ENV)) {
            (AttachMode::Auto, Ok(v)) => {
                AttachMode::parse(&v).ok_or(BpfError::AttachEnv { value: v })?
            }
            (mode, _) => mode,
        };
        match mode {
            AttachMode::Tracepoint => Self::load_tracepoint(opts),
            AttachMode::BtfTracepoint => Self::load_btf(opts),
            AttachMode::Auto => match Self::load_btf(opts) {
                Ok(t) => Ok(t),
                Err(e @ BpfError::Permission { .. }) => Err(e),
                Err(e) => {
                    if matches!(e, BpfError::NoBtf { .. }) {
                        tracing::info!("{e}; using the classic tracepoint");
                    } else {
                        tracing::warn!("{e}; using the classic tracepoint");
                    }
                    Self::load_tracepoint(opts)
                }
            },
        }
    }

    /// The classic tracepoint: the kernel fills the record, the program copies it.
    fn load_tracepoint(opts: &LoadOptions) -> Result<Self, BpfError> {
        check_layout()?;
        // The record has no namespace or error field: with the kernel's BTF the program reads
        // them from the socket; without it they are reported as 0 (unknown).
        let (net, resets) = match btf::Btf::from_sys() {
            Ok(b) => {
                let c = net_config(&b);
                let r = reset_decoder(Some(&b));
                drop(b);
                release_parse_memory();
                (c, r)
            }
            Err(e) => {
                tracing::warn!(
                    "no kernel BTF ({e}): network namespaces and socket errors will not be reported"
                );
                (Config::default(), reset_decoder(None))
            }
        };
        let (rst_len, rst_skaddr) = reset_config(resets.as_ref());
        let config = Config {
            filter: u32::from(opts.filter),
            wakeup_bytes: opts.wakeup_bytes,
            rst_len,
            rst_skaddr,
            ..net
        };
        let mut loader = EbpfLoader::new();
        configure(&mut loader, &config);
        let mut ebpf = loader
            .load(OBJECT_TRACEPOINT)
            .map_err(classify_load_error)?;
        // The rings go in before the program is attached: an event on a CPU without one is
        // lost.
        let rings = make_rings(&mut ebpf, opts.ring_bytes)?;
        let program: &mut TracePoint = program_mut(&mut ebpf, PROGRAM)?;
        program.load().map_err(classify_load_error)?;
        program
            .attach(CATEGORY, TRACEPOINT)
            .map_err(|source| BpfError::Attach { source })?;
        let resets = attach_resets(&mut ebpf, resets);
        // The loader holds aya's parse of the kernel's BTF: free it before trimming.
        drop(loader);
        Self::finish(ebpf, rings, KIND_TRACEPOINT, &config, resets)
    }

    /// The BTF tracepoint: offsets from the kernel's BTF, no tracefs.
    fn load_btf(opts: &LoadOptions) -> Result<Self, BpfError> {
        if !Path::new(btf::VMLINUX).exists() {
            return Err(BpfError::NoBtf {
                detail: format!("{} does not exist", btf::VMLINUX),
            });
        }
        // `EbpfLoader::new` parses the kernel's BTF with aya (~20 MB at its peak). The object
        // needs no relocation against it (Rust emits no CO-RE relocations; the offsets go in
        // `config`), so that copy is dropped at once; aya needs the kernel's BTF only to find
        // the tracepoint's type id, parsed again below after the object is loaded and dropped
        // right after. Each parse (aya's and ours) is released before the next begins, so that
        // they never add up.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        release_parse_memory();
        let ours = btf::Btf::from_sys().map_err(|e| BpfError::NoBtf {
            detail: e.to_string(),
        })?;
        let mut config = btf_config(&ours)?;
        let resets = reset_decoder(Some(&ours));
        drop(ours);
        release_parse_memory();
        config.filter = u32::from(opts.filter);
        config.wakeup_bytes = opts.wakeup_bytes;
        (config.rst_len, config.rst_skaddr) = reset_config(resets.as_ref());
        configure(&mut loader, &config);
        let mut ebpf = loader.load(OBJECT_BTF).map_err(classify_load_error)?;
        let rings = make_rings(&mut ebpf, opts.ring_bytes)?;
        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| BpfError::NoBtf {
            detail: format!("parsing {}: {e}", btf::VMLINUX),
        })?;
        // The main program first, then the nested-event program: the kernel calls a
        // tracepoint's programs in attach order, which the nested-event program relies on
        // where the kernel has no recursion guard (tp_btf.rs).
        for name in [PROGRAM, PROGRAM_NESTED] {
            let program: &mut BtfTracePoint = program_mut(&mut ebpf, name)?;
            program
                .load(TRACEPOINT, &kernel_btf)
                .map_err(classify_load_error)?;
            program
                .attach()
                .map_err(|source| BpfError::Attach { source })?;
        }
        drop(kernel_btf);
        let resets = attach_resets(&mut ebpf, resets);
        drop(loader);
        Self::finish(ebpf, rings, KIND_BTF, &config, resets)
    }

    fn finish(
        mut ebpf: Ebpf,
        rings: Rings,
        kind: &'static str,
        config: &Config,
        resets: Option<ResetDecoder>,
    ) -> Result<Self, BpfError> {
        release_parse_memory();
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or_else(|| map_missing(COUNTERS_MAP, "not found"))?
            .try_into()
            .map_err(|e: MapError| map_error(COUNTERS_MAP, e.to_string(), e))?;
        Ok(Self {
            ebpf,
            _slots: rings.slots,
            rings: Some(map_rings(rings.rings)?),
            counters,
            kind,
            netns: config.sk_has_net != 0,
            idle: config.sk_has_idle != 0,
            resets,
            _stats: None,
        })
    }

    /// How to decode the resets in the rings; `None` when resets sent are not traced.
    pub fn reset_decoder(&self) -> Option<&ResetDecoder> {
        self.resets.as_ref()
    }

    /// Whether close events carry the idle stamps.
    pub fn reports_idle(&self) -> bool {
        self.idle
    }

    /// The reset program's cost: `(run time, runs)`, when the kernel's accounting is on.
    pub fn reset_program_stats(&self) -> Option<ProgramStats> {
        let info = self.ebpf.program(PROGRAM_RESET)?.info().ok()?;
        (info.run_count() > 0).then(|| ProgramStats {
            run_time: info.run_time(),
            run_count: info.run_count(),
        })
    }

    /// Which hook delivers the events: `"tp_btf"` or `"tracepoint"`.
    pub fn attach_kind(&self) -> &'static str {
        self.kind
    }

    /// Whether events carry the socket's network namespace (0 when not: the classic
    /// tracepoint on a kernel without BTF).
    pub fn reports_netns(&self) -> bool {
        self.netns
    }

    /// Takes the ring buffers (once): ring `i` serves the CPUs `c` with `c % rings == i`. The
    /// program writes each event to its CPU's ring, so each ring is in time order and the
    /// reader merges them.
    pub fn take_rings(&mut self) -> Result<Vec<Ring>, BpfError> {
        self.rings
            .take()
            .ok_or_else(|| map_missing(EVENTS_MAP, "already taken"))
    }

    /// Reads the kernel counters (one syscall).
    pub fn counters(&self) -> KernelCounters {
        let sum = |c: Counter| -> u64 {
            self.counters
                .get(&(c as u32), 0)
                .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
                .unwrap_or(0)
        };
        KernelCounters {
            seen: sum(Counter::Seen),
            ring_full: sum(Counter::RingFull),
            filtered: sum(Counter::Filtered),
            submitted: sum(Counter::Submitted),
            skipped: self
                .recursion_misses()
                .unwrap_or(0)
                .saturating_sub(sum(Counter::Recovered)),
            recovered: sum(Counter::Recovered),
            resets_seen: sum(Counter::ResetsSeen),
        }
    }

    /// The program's `recursion_misses` from `BPF_OBJ_GET_INFO_BY_FD` (aya does not expose
    /// it). A kernel older than 5.12 fills a shorter struct and the field stays 0.
    fn recursion_misses(&self) -> Option<u64> {
        use std::os::fd::AsFd as _;
        const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
        #[repr(C)]
        struct InfoAttr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        let program = self.ebpf.program(PROGRAM)?;
        let fd = program.fd().ok()?.as_fd().as_raw_fd();
        // SAFETY: `bpf_prog_info` is plain integers and pointers; all-zero is a valid value
        // (and the kernel requires the pointer fields to be zero).
        let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
        let mut attr = InfoAttr {
            bpf_fd: fd as u32,
            info_len: size_of::<aya_obj::generated::bpf_prog_info>() as u32,
            info: (&raw mut info) as u64,
        };
        // SAFETY: `attr` points at `info`, whose size it states; both outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                &raw mut attr,
                size_of::<InfoAttr>() as u32,
            )
        };
        (rc == 0).then_some(info.recursion_misses)
    }

    /// Turns on the kernel's BPF run-time accounting for as long as this tracer lives.
    /// It costs a little per event, so it is opt-in (metrics, benchmarks).
    pub fn enable_stats(&mut self) -> Result<(), BpfError> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| BpfError::Load {
            detail: format!("enabling BPF run-time statistics: {e}"),
            source: Some(Box::new(e)),
        })?;
        self._stats = Some(fd);
        Ok(())
    }

    /// The programs' cumulative run time and the main program's run count; `None` unless the
    /// kernel's accounting is on ([`Tracer::enable_stats`] or `sysctl
    /// kernel.bpf_stats_enabled=1`).
    pub fn program_stats(&self) -> Option<ProgramStats> {
        let info = self.ebpf.program(PROGRAM)?.info().ok()?;
        // The nested-event program runs on every event too: its time is part of each event's
        // cost (its runs are the same events).
        let nested = self
            .ebpf
            .program(PROGRAM_NESTED)
            .and_then(|p| p.info().ok())
            .map_or(Duration::ZERO, |i| i.run_time());
        // No runs counted: the kernel's accounting is off (not "no cost").
        (info.run_count() > 0).then(|| ProgramStats {
            run_time: info.run_time() + nested,
            run_count: info.run_count(),
        })
    }

    /// Adds a process to the in-kernel filter.
    pub fn filter_pid(&mut self, tgid: u32) -> Result<(), BpfError> {
        let mut map: HashMap<_, u32, u8> = self.filter_map(FILTER_PIDS_MAP)?;
        map.insert(tgid, 1, 0)
            .map_err(|e| map_error(FILTER_PIDS_MAP, e.to_string(), e))
    }

    /// Adds a local port of one network namespace to the in-kernel filter (listeners and
    /// pre-existing sockets of a filtered process).
    pub fn filter_port(&mut self, netns: u32, port: u16) -> Result<(), BpfError> {
        let mut map: HashMap<_, u64, u8> = self.filter_map(FILTER_PORTS_MAP)?;
        let key = tracer_common::filter_port_key(netns, port);
        map.insert(key, 1, 0)
            .map_err(|e| map_error(FILTER_PORTS_MAP, e.to_string(), e))
    }

    fn filter_map<K: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, u8>, BpfError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| map_missing(name, "not found"))?;
        HashMap::try_from(map).map_err(|e| map_error(name, e.to_string(), e))
    }
}

/// Parsing the kernel's BTF (ours and aya's) takes tens of MB in many small allocations that
/// glibc keeps after they are freed; hand them back so that the daemon's footprint is its own.
fn release_parse_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The array of per-CPU ring slots and the rings in it (not yet mapped into this process).
struct Rings {
    slots: ArrayOfMaps<MapData, MapData>,
    rings: Vec<MapData>,
}

/// Creates the ring buffers (`ring_bytes` of them, see [`ring_count`]) and puts one in the slot
/// of every possible CPU: CPU `c` gets ring `c % rings`.
fn make_rings(ebpf: &mut Ebpf, ring_bytes: u32) -> Result<Rings, BpfError> {
    let mut slots: ArrayOfMaps<MapData, MapData> = ebpf
        .take_map(EVENTS_MAP)
        .ok_or_else(|| map_missing(EVENTS_MAP, "not found"))?
        .try_into()
        .map_err(|e: MapError| map_error(EVENTS_MAP, e.to_string(), e))?;
    let online = aya::util::online_cpus()
        .map(|c| c.len())
        .unwrap_or(slots.len() as usize);
    let rings = ring_count(ring_bytes, online);
    let mut data = Vec::with_capacity(rings);
    for i in 0..rings {
        let def = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
            0,
            0,
            EVENTS_RING_BYTES,
            0,
        );
        data.push(
            MapData::create(def, &format!("EVENTS_{i}"), None).map_err(|e| {
                map_error(
                    EVENTS_MAP,
                    format!("creating ring {i}: {}", error_chain(&e)),
                    e,
                )
            })?,
        );
    }
    for cpu in 0..slots.len() {
        slots
            .set(cpu, &data[cpu as usize % rings], 0)
            .map_err(|e| {
                map_error(
                    EVENTS_MAP,
                    format!("ring of CPU {cpu}: {}", error_chain(&e)),
                    e,
                )
            })?;
    }
    Ok(Rings { slots, rings: data })
}

/// Maps the rings into this process (after the loader's BTF parses are freed: the mappings
/// and those parses would otherwise add up in the peak RSS).
fn map_rings(rings: Vec<MapData>) -> Result<Vec<Ring>, BpfError> {
    rings
        .into_iter()
        .map(|d| {
            RingBuf::try_from(Map::RingBuf(d))
                .map(|ring| Ring { ring })
                .map_err(|e: MapError| map_error(EVENTS_MAP, e.to_string(), e))
        })
        .collect()
}

/// A map the program should have is not there.
fn map_missing(name: &'static str, detail: &str) -> BpfError {
    BpfError::Map {
        name,
        detail: detail.into(),
        source: None,
    }
}

/// aya could not use a map of the program (`detail` says what was being done).
fn map_error(name: &'static str, detail: String, source: MapError) -> BpfError {
    BpfError::Map {
        name,
        detail,
        source: Some(source),
    }
}

/// One ring buffer of the program's events, mapped into this process. Items are read in place
/// and handed back to the kernel when dropped: the reader copies what it keeps (no allocation).
pub struct Ring {
    ring: RingBuf<MapData>,
}

impl Ring {
    /// The oldest event not yet read, if any: its bytes, borrowed from ring memory until the
    /// item is dropped.
    pub fn read(&mut self) -> Option<impl std::ops::Deref<Target = [u8]> + '_> {
        self.ring.next()
    }
}

impl AsRawFd for Ring {
    /// The ring's fd, readable (epoll) when the kernel wakes the reader.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// Applies the [`Config`] to an object loader; the array of rings gets a slot per possible CPU.
fn configure<'a>(loader: &mut EbpfLoader<'a>, config: &'a Config) {
    loader.override_global(CONFIG_GLOBAL, config, true);
    if let Ok(cpus) = aya::util::nr_cpus() {
        loader.map_max_entries(EVENTS_MAP, u32::try_from(cpus).unwrap_or(u32::MAX));
    }
}

/// How many rings `ring_bytes` of ring memory makes for `online` CPUs: one per
/// [`EVENTS_RING_BYTES`], at least one, at most one per CPU.
pub fn ring_count(ring_bytes: u32, online: usize) -> usize {
    ((ring_bytes / EVENTS_RING_BYTES) as usize).clamp(1, online.max(1))
}

/// Most rings the default gives: 16 rings of 4 MiB (64 MiB) on a host of 16 or more CPUs.
const DEFAULT_MAX_RINGS: usize = 16;

/// The default ring memory: a ring per online CPU, at most [`DEFAULT_MAX_RINGS`].
pub fn default_ring_bytes() -> u32 {
    let online = aya::util::online_cpus().map_or(1, |c| c.len());
    EVENTS_RING_BYTES * online.clamp(1, DEFAULT_MAX_RINGS) as u32
}

/// The object's one program, as the expected program type.
fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, BpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| BpfError::Load {
            detail: format!("program {name} not in the object"),
            source: None,
        })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| BpfError::Load {
            detail: e.to_string(),
            source: Some(Box::new(e)),
        })
}

/// A member the `tp_btf` program reads: the `Config` field it goes to, where it is, and the
/// size and alignment the program's loads assume.
struct Field {
    ty: &'static str,
    path: &'static str,
    size: u32,
    align: u32,
}

const fn field(ty: &'static str, path: &'static str, size: u32, align: u32) -> Field {
    Field {
        ty,
        path,
        size,
        align,
    }
}

/// The program gets a `struct tcp_sock *` (from `bpf_skc_to_tcp_sock`), so every socket offset
/// is taken from there: `struct sock` and `struct inet_sock` sit at offset 0 inside it today,
/// but the program does not rely on that.
const SK_FAMILY: Field = field(
    "tcp_sock",
    "inet_conn.icsk_inet.sk.__sk_common.skc_family",
    2,
    2,
);
/// What the tracepoint reports as sport: `inet_sport`, not `skc_num` (which is zeroed when the
/// port is released on the way to CLOSE, before the tracepoint fires).
const SK_SPORT: Field = field("tcp_sock", "inet_conn.icsk_inet.inet_sport", 2, 2);
const SK_DPORT: Field = field(
    "tcp_sock",
    "inet_conn.icsk_inet.sk.__sk_common.skc_dport",
    2,
    2,
);
/// What the tracepoint reports as the v4 saddr: `inet_saddr` (not `skc_rcv_saddr`).
const SK_SADDR: Field = field("tcp_sock", "inet_conn.icsk_inet.inet_saddr", 4, 4);
const SK_DADDR: Field = field(
    "tcp_sock",
    "inet_conn.icsk_inet.sk.__sk_common.skc_daddr",
    4,
    4,
);
/// Absent from kernels built without CONFIG_IPV6 (then AF_INET6 sockets cannot exist).
const SK_SADDR_V6: Field = field(
    "tcp_sock",
    "inet_conn.icsk_inet.sk.__sk_common.skc_v6_rcv_saddr",
    16,
    4,
);
const SK_DADDR_V6: Field = field(
    "tcp_sock",
    "inet_conn.icsk_inet.sk.__sk_common.skc_v6_daddr",
    16,
    4,
);
/// The socket's network namespace: the `struct net *` in `possible_net_t`, then the namespace's
/// inode number. Absent without CONFIG_NET_NS (one namespace: the program then reports 0).
const SK_NET: Field = field("sock", "__sk_common.skc_net.net", 8, 8);
const NET_INUM: Field = field("net", "ns.inum", 4, 4);
const SK_ERR: Field = field("sock", "sk_err", 4, 4);
/// The idle stamps read at a transition to CLOSE (jiffies, low 32 bits): the last segment
/// received with an ACK, and the last data sent.
const SK_RCV_TSTAMP: Field = field("tcp_sock", "rcv_tstamp", 4, 4);
const SK_LSNDTIME: Field = field("tcp_sock", "lsndtime", 4, 4);
/// The enum whose names say why the kernel sent a reset (6.10+).
const RST_REASON_ENUM: &str = "sk_rst_reason";
/// The helper `tp_btf` uses to read the current task (5.11+); older kernels lack it, and the
/// program then uses `bpf_get_current_pid_tgid` and `bpf_get_current_comm`.
const TASK_BTF_HELPER: &str = "BPF_FUNC_get_current_task_btf";
const TASK_PID: Field = field("task_struct", "pid", 4, 4);
const TASK_TGID: Field = field("task_struct", "tgid", 4, 4);
/// Read as two 8-byte loads when 8-aligned; otherwise the program calls
/// `bpf_get_current_comm` (offset 0 tells it to).
const TASK_COMM: Field = field("task_struct", "comm", 16, 1);

/// Looks a [`Field`] up and checks its size and alignment.
fn find_field(btf: &btf::Btf, f: &Field) -> Result<u32, BpfError> {
    let m = btf.member(f.ty, f.path).map_err(|e| BpfError::NoBtf {
        detail: e.to_string(),
    })?;
    let off = m.byte_offset().ok_or_else(|| BpfError::NoBtf {
        detail: format!("{}.{} is a bitfield", f.ty, f.path),
    })?;
    if m.size != Some(f.size) || !off.is_multiple_of(f.align) {
        return Err(BpfError::NoBtf {
            detail: format!(
                "{}.{} has size {:?} at offset {off}, expected size {} aligned to {}",
                f.ty, f.path, m.size, f.size, f.align
            ),
        });
    }
    Ok(off)
}

/// The offsets both programs use to read the socket's network namespace and pending error
/// (`sk_has_net` and the three offsets), or a config without them when the kernel's BTF
/// lacks one (a kernel without CONFIG_NET_NS has a single namespace).
fn net_config(btf: &btf::Btf) -> Config {
    match (
        find_field(btf, &SK_NET),
        find_field(btf, &NET_INUM),
        find_field(btf, &SK_ERR),
    ) {
        (Ok(sk_net), Ok(net_inum), Ok(sk_err)) => Config {
            sk_has_net: 1,
            sk_net,
            net_inum,
            sk_err,
            ..idle_config(btf)
        },
        (a, b, c) => {
            let why = [a.err(), b.err(), c.err()]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!("network namespaces and socket errors will not be reported: {why}");
            Config::default()
        }
    }
}

/// The offsets of the idle stamps (`sk_has_idle`), or none: close records then carry no idle
/// time.
fn idle_config(btf: &btf::Btf) -> Config {
    match (
        find_field(btf, &SK_RCV_TSTAMP),
        find_field(btf, &SK_LSNDTIME),
    ) {
        (Ok(sk_rcv_tstamp), Ok(sk_lsndtime)) => Config {
            sk_has_idle: 1,
            sk_rcv_tstamp,
            sk_lsndtime,
            ..Config::default()
        },
        (a, b) => {
            let why = [a.err(), b.err()]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!("idle time before close will not be reported: {why}");
            Config::default()
        }
    }
}

pub use crate::rst::ResetDecoder;

/// Reads the `tcp_send_reset` format file (mounting tracefs if needed) and, where the record
/// has a reason, the enum's names from `btf`. `None` (logged) when resets cannot be traced.
fn reset_decoder(btf: Option<&btf::Btf>) -> Option<ResetDecoder> {
    let text = match tracefs_root().map(|root| {
        std::fs::read_to_string(Path::new(root).join("events/tcp/tcp_send_reset/format"))
    }) {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(
                "resets sent will not be reported: no tracepoint tcp:tcp_send_reset ({e})"
            );
            return None;
        }
        Err(e) => {
            tracing::warn!("resets sent will not be reported: {e}");
            return None;
        }
    };
    let layout = match crate::rst::RecordLayout::from_format(&text) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("resets sent will not be reported: tcp:tcp_send_reset: {e}");
            return None;
        }
    };
    let names = match (layout.has_reason(), btf) {
        (true, Some(b)) => match b.enumerators(RST_REASON_ENUM) {
            Ok(e) => crate::rst::ReasonNames::new(e),
            Err(e) => {
                tracing::warn!("reset reasons will be reported as unknown: {e}");
                crate::rst::ReasonNames::default()
            }
        },
        _ => crate::rst::ReasonNames::default(),
    };
    Some(ResetDecoder { layout, names })
}

/// The reset program's part of the config.
fn reset_config(d: Option<&ResetDecoder>) -> (u32, u32) {
    d.map_or((0, 0), |d| {
        (d.layout.len as u32, d.layout.skaddr_in_record as u32)
    })
}

/// Attaches the reset program, if there is a decoder for its records; a failure is logged and
/// leaves resets unreported (the rest works without them).
fn attach_resets(ebpf: &mut Ebpf, decoder: Option<ResetDecoder>) -> Option<ResetDecoder> {
    let d = decoder?;
    let result = program_mut::<TracePoint>(ebpf, PROGRAM_RESET).and_then(|p| {
        p.load().map_err(classify_load_error)?;
        p.attach("tcp", "tcp_send_reset")
            .map(drop)
            .map_err(|source| BpfError::Attach { source })
    });
    match result {
        Ok(()) => Some(d),
        Err(e) => {
            tracing::warn!("resets sent will not be reported: tcp:tcp_send_reset: {e}");
            None
        }
    }
}

/// Finds every offset the `tp_btf` program needs and checks each field's size and alignment.
fn btf_config(btf: &btf::Btf) -> Result<Config, BpfError> {
    let find = |f: &Field| find_field(btf, f);
    let (sk_saddr_v6, sk_daddr_v6, sk_has_v6) = match (find(&SK_SADDR_V6), find(&SK_DADDR_V6)) {
        (Ok(s), Ok(d)) => (s, d, 1),
        _ => (0, 0, 0),
    };
    let comm = find(&TASK_COMM)?;
    Ok(Config {
        sk_family: find(&SK_FAMILY)?,
        sk_sport: find(&SK_SPORT)?,
        sk_dport: find(&SK_DPORT)?,
        sk_saddr: find(&SK_SADDR)?,
        sk_daddr: find(&SK_DADDR)?,
        sk_saddr_v6,
        sk_daddr_v6,
        sk_has_v6,
        task_pid: find(&TASK_PID)?,
        task_tgid: find(&TASK_TGID)?,
        task_comm: if comm.is_multiple_of(8) { comm } else { 0 },
        task_btf: u32::from(btf.has_enumerator(TASK_BTF_HELPER)),
        ..net_config(btf)
    })
}

/// CAP_BPF (or CAP_SYS_ADMIN) to load, CAP_PERFMON (or CAP_SYS_ADMIN) to attach to a
/// tracepoint and read kernel memory. Checked up front so the message can name what is missing.
fn check_privileges() -> Result<(), BpfError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Some(eff) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
    else {
        return Ok(()); // cannot tell; let the kernel decide
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BpfError::Permission {
            missing: format!("this process lacks {}", missing.join(" and ")),
        })
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones to the cgroup. Raising
/// the limit is harmless where it is not needed, and failure is not fatal.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// Finds the tracepoint's format file, mounting tracefs if it is not mounted (root only), and
/// checks that the fields the program reads sit where it expects them.
fn check_layout() -> Result<(), BpfError> {
    let root = tracefs_root()?;
    let format = Path::new(root).join("events/sock/inet_sock_set_state/format");
    let text = match std::fs::read_to_string(&format) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BpfError::NoTracepoint),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(BpfError::Permission {
                missing: format!("cannot read {}", format.display()),
            });
        }
        Err(e) => {
            return Err(BpfError::Layout {
                detail: format!("reading {}: {e}", format.display()),
            });
        }
    };
    verify_format(&text).map_err(|detail| BpfError::Layout { detail })
}

/// Where tracefs is, mounting it if it is not mounted (root only).
fn tracefs_root() -> Result<&'static str, BpfError> {
    let roots = [TRACEFS, "/sys/kernel/debug/tracing"];
    let mounted = |root: &str| Path::new(root).join("events").is_dir();
    if !roots.iter().any(|r| mounted(r)) {
        mount_tracefs()?;
    }
    roots
        .into_iter()
        .find(|r| mounted(r))
        .ok_or_else(|| BpfError::NoTracefs {
            source: std::io::Error::other("no events directory after mounting"),
        })
}

/// The (field, offset, size) the eBPF program's `InetSockSetState` assumes.
const EXPECTED_FIELDS: [(&str, usize, usize); 11] = [
    ("skaddr", 8, 8),
    ("oldstate", 16, 4),
    ("newstate", 20, 4),
    ("sport", 24, 2),
    ("dport", 26, 2),
    ("family", 28, 2),
    ("protocol", 30, 2),
    ("saddr", 32, 4),
    ("daddr", 36, 4),
    ("saddr_v6", 40, 16),
    ("daddr_v6", 56, 16),
];

/// Checks a tracepoint format file against [`EXPECTED_FIELDS`].
fn verify_format(text: &str) -> Result<(), String> {
    for (name, offset, size) in EXPECTED_FIELDS {
        let line = text
            .lines()
            .find(|l| {
                l.trim_start().starts_with("field:")
                    && l.split(';').next().is_some_and(|decl| {
                        let decl = decl.trim_end();
                        decl.ends_with(&format!(" {name}"))
                            || decl.ends_with(&format!(" {name}[4]"))
                            || decl.ends_with(&format!(" {name}[16]"))
                            || decl.ends_with(&format!("*{name}"))
                    })
            })
            .ok_or_else(|| format!("field {name} not found"))?;
        let get = |key: &str| {
            line.split(';')
                .find_map(|p| p.trim().strip_prefix(key)?.trim().parse::<usize>().ok())
        };
        if get("offset:") != Some(offset) || get("size:") != Some(size) {
            return Err(format!(
                "field {name} is at offset {:?} size {:?}, expected offset {offset} size {size}",
                get("offset:"),
                get("size:")
            ));
        }
    }
    Ok(())
}

fn mount_tracefs() -> Result<(), BpfError> {
    let _ = std::fs::create_dir_all(TRACEFS);
    let src = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!("mounted tracefs at {TRACEFS}");
        Ok(())
    } else {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            Err(BpfError::Permission {
                missing: "CAP_SYS_ADMIN to mount tracefs (or mount it yourself: \
                          `mount -t tracefs nodev /sys/kernel/tracing`)"
                    .into(),
            })
        } else {
            Err(BpfError::NoTracefs { source: err })
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// An error and its causes, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The verifier's log, when a cause is the kernel's refusal of the program (aya's
/// `ProgramError::LoadError`).
fn verifier_log(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    causes(e).find_map(|c| match c.downcast_ref::<aya::programs::ProgramError>() {
        Some(aya::programs::ProgramError::LoadError { verifier_log, .. }) => {
            Some(verifier_log.to_string())
        }
        _ => None,
    })
}

/// The last line of a verifier log that says something (not its statistics).
fn last_verifier_line(log: &str) -> String {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed ")
                && !l.starts_with(':')
        })
        .unwrap_or("no detail")
        .to_owned()
}

/// Whether a cause is the kernel's EPERM or EACCES (an `io::Error` in the chain: a syscall's).
fn refused_by_kernel(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|errno| errno == libc::EPERM || errno == libc::EACCES)
    })
}

/// What a failed load means, from the error itself: a verifier rejection (aya's `LoadError`
/// with a log), a missing privilege (EPERM/EACCES from the kernel), or else a load error that
/// keeps it as its source.
fn classify_load_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> BpfError {
    let chain = error_chain(&e);
    tracing::debug!("load error: {chain}");
    if let Some(log) = verifier_log(&e)
        && log.lines().count() > 1
    {
        return BpfError::Verifier {
            last: last_verifier_line(&log),
        };
    }
    if refused_by_kernel(&e) {
        return BpfError::Permission {
            missing: "the kernel refused to load the program (EPERM/EACCES)".into(),
        };
    }
    // Keep the verifier log out of the one-line message; it is in the debug log.
    let detail = chain.lines().next().unwrap_or_default().to_owned();
    BpfError::Load {
        detail,
        source: Some(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_memory_makes_one_ring_per_cpu_at_most() {
        let mib = |m: u32| m << 20;
        assert_eq!(ring_count(mib(4), 8), 1);
        assert_eq!(ring_count(mib(8), 2), 2);
        assert_eq!(ring_count(mib(64), 2), 2, "no more rings than CPUs");
        assert_eq!(ring_count(mib(64), 96), 16, "CPUs share beyond the memory");
        assert_eq!(ring_count(mib(1), 4), 1, "at least one");
        assert_eq!(ring_count(mib(8), 0), 1);
    }

    const FORMAT: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn attach_modes_parse() {
        assert_eq!(AttachMode::parse("auto"), Some(AttachMode::Auto));
        assert_eq!(AttachMode::parse(""), Some(AttachMode::Auto));
        assert_eq!(AttachMode::parse("TP_BTF"), Some(AttachMode::BtfTracepoint));
        assert_eq!(AttachMode::parse(" btf "), Some(AttachMode::BtfTracepoint));
        assert_eq!(
            AttachMode::parse("tracepoint"),
            Some(AttachMode::Tracepoint)
        );
        assert_eq!(AttachMode::parse("tp"), Some(AttachMode::Tracepoint));
        assert_eq!(AttachMode::parse("kprobe"), None);
    }

    #[test]
    fn accepts_this_kernels_layout() {
        assert_eq!(verify_format(FORMAT), Ok(()));
    }

    #[test]
    fn rejects_moved_or_missing_fields() {
        let moved = FORMAT.replace("offset:26;", "offset:28;");
        assert!(verify_format(&moved).unwrap_err().contains("dport"));
        let missing = FORMAT.replace("protocol", "proto");
        assert!(verify_format(&missing).unwrap_err().contains("protocol"));
    }
}
