//! The two kernel programs (BTF tracepoint and classic tracepoint) report the same events.
//!
//! Loads both through the library at the same time (each has its own maps and ring buffer),
//! drives one loopback connection (IPv4, then IPv6), reads both ring buffers directly and
//! compares, socket by socket, every field except the timestamps: states, family, addresses,
//! ports, the task on CPU and whether the dwell is known. Also checks the exact sequences, that
//! `Auto` picks the BTF tracepoint on a kernel with BTF, and the offsets found in the running
//! kernel's BTF. Needs root (CAP_BPF, CAP_PERFMON); fails, never skips, without it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use tracer::bpf::btf::Btf;
use tracer::bpf::{AttachMode, LoadOptions, Tracer};
use tracer::event::{Family, TcpState, Transition, decode};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs and need root (CAP_BPF, CAP_PERFMON)"
    );
}

fn load(mode: AttachMode, kernel_dwell: bool) -> (Tracer, RingBuf<MapData>) {
    let mut t = Tracer::load(&LoadOptions {
        attach: mode,
        kernel_dwell,
        ..LoadOptions::default()
    })
    .unwrap_or_else(|e| panic!("loading {mode:?}: {e}"));
    let ring = t.take_ring().expect("ring buffer");
    (t, ring)
}

/// Active close by the client, passive by the server; returns (listener port, client port).
fn one_connection(bind: &str) -> (u16, u16) {
    let listener = TcpListener::bind(bind).unwrap();
    let lport = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let cport = client.local_addr().unwrap().port();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    drop(client);
    assert_eq!(server.read(&mut buf).unwrap(), 0);
    drop(server);
    drop(listener);
    (lport, cport)
}

/// Reads `ring` until `want` events on the test's ports have arrived (or 5 s pass), then a
/// little longer to catch any extra ones.
fn collect(ring: &mut RingBuf<MapData>, lport: u16, cport: u16, want: usize) -> Vec<Transition> {
    let mine = |t: &Transition| {
        [t.sport, t.dport]
            .iter()
            .any(|p| *p == lport || *p == cport)
    };
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut extra_until: Option<Instant> = None;
    loop {
        while let Some(item) = ring.next() {
            let t = decode(&item).expect("decodable event");
            if mine(&t) {
                out.push(t);
            }
        }
        let now = Instant::now();
        if out.len() >= want && extra_until.is_none() {
            extra_until = Some(now + Duration::from_millis(200));
        }
        if extra_until.is_some_and(|u| now >= u) || now >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What must agree between the two programs for one event (everything but the timestamps and
/// the dwell's exact value).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    old: TcpState,
    new: TcpState,
    v6: bool,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    dwell_known: bool,
    table_full: bool,
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
        dwell_known: t.dwell_ns.is_some(),
        table_full: t.dwell_table_full,
        task_pid: t.task_pid,
        task_tid: t.task_tid,
        task_comm: t.task_comm.as_str().into_owned(),
    }
}

/// Events grouped by socket address, each socket's events in ring order.
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

fn both_programs_agree(bind: &str, v6: bool, kernel_dwell: bool) {
    require_root();
    let (btf, mut btf_ring) = load(AttachMode::BtfTracepoint, kernel_dwell);
    assert_eq!(btf.attach_kind(), "tp_btf");
    let (tp, mut tp_ring) = load(AttachMode::Tracepoint, kernel_dwell);
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
                assert_eq!((est.sport, est.dport, est.daddr), (cport, lport, addr))
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
    // With the kernel's table, every socket's first transition has no known dwell and every
    // later one has; without it, none has.
    for life in a.values() {
        assert!(!life[0].dwell_known, "{life:?}");
        assert!(
            life[1..].iter().all(|s| s.dwell_known == kernel_dwell),
            "{life:?}"
        );
    }

    let (ca, cb) = (btf.counters(), tp.counters());
    assert_eq!((ca.ring_full, cb.ring_full), (0, 0));
    assert_eq!((ca.socket_table_full, cb.socket_table_full), (0, 0));
    assert!(ca.seen >= 12 && cb.seen >= 12, "{ca:?} {cb:?}");
    // Nothing filtered; at least this test's events submitted (other sockets of the host may
    // be between their Seen and Submitted counts right now).
    for c in [ca, cb] {
        assert_eq!(c.filtered, 0, "{c:?}");
        assert!(c.submitted >= 12 && c.submitted <= c.seen, "{c:?}");
    }
}

#[test]
fn ipv4_same_events_from_both_programs() {
    both_programs_agree("127.0.0.1:0", false, true);
}

#[test]
fn ipv6_same_events_from_both_programs() {
    both_programs_agree("[::1]:0", true, true);
}

#[test]
fn without_kernel_dwell_same_events_and_no_dwell() {
    both_programs_agree("127.0.0.1:0", false, false);
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
        let (t, _ring) = load(AttachMode::Auto, true);
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
    let cases: [(&str, String, u32); 10] = [
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
