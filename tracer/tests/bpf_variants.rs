//! The two kernel programs (BTF tracepoint and classic tracepoint) report the same events.
//!
//! Loads both through the library at the same time (each has its own maps and ring buffers),
//! drives one loopback connection (IPv4, then IPv6), reads both sets of rings directly and
//! compares, socket by socket, every field except the timestamps: states, family, addresses,
//! ports, the network namespace, the socket error, and the task on CPU. Also checks the exact sequences, that
//! `Auto` picks the BTF tracepoint on a kernel with BTF, and the offsets found in the running
//! kernel's BTF. Needs root (CAP_BPF, CAP_PERFMON); fails, never skips, without it.
//!
//! Tier: root

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tracer::bpf::btf::Btf;
use tracer::bpf::{AttachMode, LoadOptions, Ring, Tracer};
use tracer::event::{Family, TcpState, Transition, decode};

use common::sockets::one_connection;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs and need root (CAP_BPF, CAP_PERFMON)"
    );
}

/// A loaded program and its rings (one per CPU with the default ring memory).
fn load(mode: AttachMode) -> (Tracer, Vec<Ring>) {
    let opts = LoadOptions {
        attach: mode,
        ..LoadOptions::default()
    };
    let mut t = Tracer::load(&opts).unwrap_or_else(|e| panic!("loading {mode:?}: {e}"));
    let rings = t.take_rings().expect("ring buffers");
    (t, rings)
}

/// Reads the rings until `want` events on the test's ports have arrived, then a little longer
/// to catch any extra ones.
fn collect(rings: &mut [Ring], lport: u16, cport: u16, want: usize) -> Vec<Transition> {
    collect_where(rings, want, |t| {
        [t.sport, t.dport]
            .iter()
            .any(|p| *p == lport || *p == cport)
    })
}

/// Reads the rings until `want` events that are `mine` have arrived, then a little longer to
/// catch any extra ones; returns them in time order (each ring is; the rings are merged).
/// Ports repeat across network namespaces (other processes' load runs in namespaces of their
/// own), so only events of this test's namespace count.
fn collect_where(
    rings: &mut [Ring],
    want: usize,
    mine: impl Fn(&Transition) -> bool,
) -> Vec<Transition> {
    let own = common::own_netns() as u32;
    let mine = |t: &Transition| t.netns == own && mine(t);
    let mut out = Vec::new();
    // A failure bound only (a slow VM takes a while); done as soon as `want` are in.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut extra_until: Option<Instant> = None;
    loop {
        for ring in rings.iter_mut() {
            while let Some(item) = ring.read() {
                let t = match decode(&item) {
                    Ok(t) => t,
                    // The reset program writes to the same rings.
                    Err(tracer::event::DecodeError::Reset) => continue,
                    Err(e) => panic!("undecodable event: {e}"),
                };
                if mine(&t) {
                    out.push(t);
                }
            }
        }
        let now = Instant::now();
        if out.len() >= want && extra_until.is_none() {
            extra_until = Some(now + Duration::from_millis(200));
        }
        if extra_until.is_some_and(|u| now >= u) || now >= deadline {
            out.sort_by_key(|t| t.ts_ns);
            return out;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What must agree between the two programs for one event (everything but the timestamps).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    old: TcpState,
    new: TcpState,
    v6: bool,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    netns: u32,
    sk_err: u16,
    task_pid: u32,
    task_tid: u32,
    task_comm: String,
}

fn seen(t: &Transition) -> Seen {
    Seen {
        old: t.old,
        new: t.new,
        v6: t.family == Family::V6,
        saddr: t.saddr,
        sport: t.sport,
        daddr: t.daddr,
        dport: t.dport,
        netns: t.netns,
        sk_err: t.sk_err,
        task_pid: t.task_pid,
        task_tid: t.task_tid,
        task_comm: t.task_comm.as_str().into_owned(),
    }
}

/// Events grouped by socket address, each socket's events in time order.
fn by_socket(events: &[Transition]) -> BTreeMap<u64, Vec<Seen>> {
    let mut m: BTreeMap<u64, Vec<Seen>> = BTreeMap::new();
    for t in events {
        m.entry(t.sk).or_default().push(seen(t));
    }
    m
}

fn states(v: &[Seen]) -> Vec<(TcpState, TcpState)> {
    v.iter().map(|s| (s.old, s.new)).collect()
}

fn both_programs_agree(bind: &str, v6: bool) {
    require_root();
    let (btf, mut btf_ring) = load(AttachMode::BtfTracepoint);
    assert_eq!(btf.attach_kind(), "tp_btf");
    let (tp, mut tp_ring) = load(AttachMode::Tracepoint);
    assert_eq!(tp.attach_kind(), "tracepoint");

    let (lport, cport) = one_connection(bind);
    // 5 client events, 5 for the accepted socket, 2 for the listener.
    let a = collect(&mut btf_ring, lport, cport, 12);
    let b = collect(&mut tp_ring, lport, cport, 12);
    let (a, b) = (by_socket(&a), by_socket(&b));
    assert_eq!(
        a, b,
        "tp_btf and tracepoint disagree (left tp_btf, right tracepoint)"
    );

    use TcpState::*;
    let client = vec![
        (Close, SynSent),
        (SynSent, Established),
        (Established, FinWait1),
        (FinWait1, FinWait2),
        (FinWait2, Close),
    ];
    let child = vec![
        (Listen, SynRecv),
        (SynRecv, Established),
        (Established, CloseWait),
        (CloseWait, LastAck),
        (LastAck, Close),
    ];
    let listener = vec![(Close, Listen), (Listen, Close)];
    let mut lives: Vec<_> = a.values().map(|v| states(v)).collect();
    lives.sort();
    let mut expected = vec![client.clone(), child, listener];
    expected.sort();
    assert_eq!(lives, expected, "sequences: {a:#?}");

    let addr: IpAddr = bind
        .rsplit_once(':')
        .unwrap()
        .0
        .trim_matches(['[', ']'])
        .parse()
        .unwrap();
    for life in a.values() {
        for s in life {
            assert_eq!(s.v6, v6, "{s:?}");
            assert_eq!(s.saddr, addr, "{s:?}");
        }
        // Established sockets carry the full 4-tuple.
        let est = life
            .iter()
            .find(|s| s.new == Established)
            .or_else(|| life.iter().find(|s| s.new == Listen));
        let est = est.expect("an ESTABLISHED or LISTEN transition");
        match est.new {
            Listen => assert_eq!((est.sport, est.dport), (lport, 0), "{est:?}"),
            _ if states(life) == client => {
                assert_eq!((est.sport, est.dport, est.daddr), (cport, lport, addr));
            }
            _ => assert_eq!((est.sport, est.dport, est.daddr), (lport, cport, addr)),
        }
    }
    // An unbound client has no port yet when it enters SYN_SENT, in both programs.
    let syn_sent = a
        .values()
        .find(|v| states(v) == client)
        .map(|v| &v[0])
        .unwrap();
    assert_eq!((syn_sent.sport, syn_sent.dport), (0, lport));
    // Every event names this test's network namespace (the kernel reads it from the socket),
    // and an orderly close leaves no socket error.
    let own = common::own_netns() as u32;
    for life in a.values() {
        for s in life {
            assert_eq!(s.netns, own, "{s:?}");
            assert_eq!(s.sk_err, 0, "{s:?}");
        }
    }

    let (ca, cb) = (btf.counters(), tp.counters());
    assert_eq!((ca.ring_full, cb.ring_full), (0, 0));
    assert!(ca.seen >= 12 && cb.seen >= 12, "{ca:?} {cb:?}");
    // Nothing filtered; at least this test's events submitted (other sockets of the host may
    // be between their Seen and Submitted counts right now; the reset program's records are
    // submitted too).
    for c in [ca, cb] {
        assert_eq!(c.filtered, 0, "{c:?}");
        assert!(
            c.submitted >= 12 && c.submitted <= c.seen + c.resets_seen,
            "{c:?}"
        );
    }
}

#[test]
fn ipv4_same_events_from_both_programs() {
    both_programs_agree("127.0.0.1:0", false);
}

#[test]
fn ipv6_same_events_from_both_programs() {
    both_programs_agree("[::1]:0", true);
}

/// A connection refused and a connection reset: both programs report the socket errors the
/// kernel set before taking the sockets to CLOSE (ECONNREFUSED on the refused client; on a
/// SO_LINGER-0 close, 0 on the closer and ECONNRESET on its peer).
#[test]
fn both_programs_report_socket_errors() {
    require_root();
    let (_btf, mut btf_ring) = load(AttachMode::BtfTracepoint);
    let (_tp, mut tp_ring) = load(AttachMode::Tracepoint);
    // Refused: a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = closed.local_addr().unwrap().port();
    drop(closed);
    assert!(TcpStream::connect(("127.0.0.1", refused_port)).is_err());
    // Reset: the client closes with SO_LINGER {1, 0}.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let cport = client.local_addr().unwrap().port();
    let (server, _) = listener.accept().unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized option.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(client);
    let mut buf = [0u8; 1];
    assert!(
        (&server).read(&mut buf).is_err(),
        "the server sees the reset"
    );
    drop(server);
    drop(listener);
    for ring in [&mut btf_ring[..], &mut tp_ring[..]] {
        // One read of the ring for both: what is read and not kept is gone.
        let all = collect_where(ring, 9, |t| {
            [t.sport, t.dport]
                .iter()
                .any(|p| [refused_port, lport, cport].contains(p))
        });
        let refused: Vec<&Transition> = all
            .iter()
            .filter(|t| t.dport == refused_port || t.sport == refused_port)
            .collect();
        let closing = refused
            .iter()
            .find(|t| (t.old, t.new) == (TcpState::SynSent, TcpState::Close))
            .unwrap_or_else(|| panic!("no SYN_SENT→CLOSE: {refused:#?}"));
        assert_eq!(closing.sk_err, libc::ECONNREFUSED as u16, "{closing:?}");
        let reset: Vec<&Transition> = all
            .iter()
            .filter(|t| {
                [t.sport, t.dport]
                    .iter()
                    .any(|p| *p == lport || *p == cport)
            })
            .collect();
        let to_close: Vec<&Transition> = reset
            .iter()
            .copied()
            .filter(|t| (t.old, t.new) == (TcpState::Established, TcpState::Close))
            .collect();
        assert_eq!(to_close.len(), 2, "{reset:#?}");
        for t in to_close {
            let want = if t.sport == cport {
                0
            } else {
                libc::ECONNRESET as u16
            };
            assert_eq!(t.sk_err, want, "{t:?}");
        }
    }
}

#[test]
fn auto_prefers_the_btf_tracepoint() {
    require_root();
    assert!(
        std::path::Path::new(tracer::bpf::btf::VMLINUX).exists(),
        "this kernel publishes no BTF"
    );
    // Only when nothing overrides the choice.
    if std::env::var_os(tracer::bpf::ATTACH_ENV).is_none() {
        let (t, _ring) = load(AttachMode::Auto);
        assert_eq!(t.attach_kind(), "tp_btf");
    }
}

/// The members the BTF tracepoint reads exist in the running kernel's BTF, at whole-byte,
/// naturally aligned offsets of the expected sizes.
#[test]
fn finds_the_members_in_this_kernels_btf() {
    let btf = Btf::from_sys().expect("parsing /sys/kernel/btf/vmlinux");
    assert!(btf.len() > 1000, "suspiciously few types: {}", btf.len());
    let common = "inet_conn.icsk_inet.sk.__sk_common";
    let cases: [(&str, String, u32); 13] = [
        ("tcp_sock", format!("{common}.skc_family"), 2),
        ("tcp_sock", format!("{common}.skc_dport"), 2),
        ("tcp_sock", format!("{common}.skc_daddr"), 4),
        ("tcp_sock", format!("{common}.skc_v6_daddr"), 16),
        ("tcp_sock", format!("{common}.skc_v6_rcv_saddr"), 16),
        ("tcp_sock", "inet_conn.icsk_inet.inet_sport".into(), 2),
        ("tcp_sock", "inet_conn.icsk_inet.inet_saddr".into(), 4),
        ("task_struct", "pid".into(), 4),
        ("task_struct", "tgid".into(), 4),
        ("task_struct", "comm".into(), 16),
        ("sock", "__sk_common.skc_net.net".into(), 8),
        ("net", "ns.inum".into(), 4),
        ("sock", "sk_err".into(), 4),
    ];
    for (ty, path, size) in &cases {
        let m = btf
            .member(ty, path)
            .unwrap_or_else(|e| panic!("{ty}.{path}: {e}"));
        let off = m.byte_offset().expect("not a bitfield");
        assert_eq!(m.size, Some(*size), "{ty}.{path}");
        assert_eq!(off % size.min(&4), 0, "{ty}.{path} at {off}");
    }
    // struct sock_common's layout is the same through struct sock and through tcp_sock, where
    // the socket is the first member of the first member of the first member.
    for f in ["skc_daddr", "skc_dport", "skc_family", "skc_v6_daddr"] {
        let direct = btf.member("sock_common", f).unwrap();
        let nested = btf.member("tcp_sock", &format!("{common}.{f}")).unwrap();
        let via_sock = btf.member("sock", &format!("__sk_common.{f}")).unwrap();
        assert_eq!(direct.bit_offset, nested.bit_offset, "{f}");
        assert_eq!(direct.bit_offset, via_sock.bit_offset, "{f}");
    }
    // skc_daddr and skc_dport are reached through anonymous unions and structs.
    assert_eq!(
        btf.member("sock_common", "skc_daddr").unwrap().bit_offset,
        0
    );
    let protocol = btf.member("sock", "sk_protocol").unwrap();
    assert_eq!(protocol.size, Some(2));
}

/// `tp_btf` reads the current task through `bpf_get_current_task_btf` only where the kernel
/// has that helper (5.11+); the loader asks the kernel's BTF (`enum bpf_func_id`).
#[test]
fn task_helper_detection_follows_the_kernel_version() {
    let btf = Btf::from_sys().expect("parsing /sys/kernel/btf/vmlinux");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    assert_eq!(
        btf.has_enumerator("BPF_FUNC_get_current_task_btf"),
        (major, minor) >= (5, 11),
        "kernel {release}"
    );
    assert!(
        btf.has_enumerator("BPF_FUNC_ringbuf_reserve"),
        "ring buffer (5.8+)"
    );
    assert!(!btf.has_enumerator("BPF_FUNC_no_such_helper"));
}
