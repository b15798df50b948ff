//! Root integration tests for `sockdiag` and `attribution`: real sockets on loopback, the real
//! kernel socket table, the real `/proc`.
//!
//! Other processes make TCP traffic too, so every assertion matches only this test's own ports.
//! Nothing is skipped: a missing privilege or facility fails the test.
//!
//! Tier: root

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tracer::attribution::{
    Attributor, AttributorConfig, owners_of_baseline, process_cmdline, process_comm,
    process_exists, scan_inodes,
};
use tracer::event::{Comm, Family, TcpState};
use tracer::record::{OwnerSource, SocketId};
use tracer::sockdiag::{DiagSocket, FourTuple, SockDiag, StateMask};
use tracer::untrusted::CmdlinePolicy;

const LO4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Tests that fork children or assert on the exact set of holders of a socket. A fork made by
/// one test briefly holds every fd of this process (until exec closes them), so they must not
/// overlap.
static FORKS: Mutex<()> = Mutex::new(());

fn fork_lock() -> std::sync::MutexGuard<'static, ()> {
    FORKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn diag() -> SockDiag {
    SockDiag::open().unwrap_or_else(|e| panic!("sock_diag must be available (run as root): {e}"))
}

/// `st_ino` from fstat(2) on (a duplicate of) the socket's fd.
fn fstat_ino(s: &impl AsFd) -> u64 {
    let dup = s.as_fd().try_clone_to_owned().expect("dup socket fd");
    std::fs::File::from(dup)
        .metadata()
        .expect("fstat socket")
        .ino()
}

fn listen(addr: &str) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let a = l.local_addr().unwrap();
    (l, a)
}

/// A connected pair: (client, server side as accepted).
fn connect(l: &TcpListener, to: SocketAddr) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(to).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    let (s, _) = l.accept().expect("accept");
    (c, s)
}

fn family_of(a: &SocketAddr) -> Family {
    if a.is_ipv4() { Family::V4 } else { Family::V6 }
}

/// The 4-tuple of a stream as this side sees it.
fn tuple_of(s: &TcpStream) -> FourTuple {
    let (l, p) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    FourTuple {
        family: family_of(&l),
        saddr: l.ip(),
        sport: l.port(),
        daddr: p.ip(),
        dport: p.port(),
    }
}

fn socket_id_of(s: &TcpStream) -> SocketId {
    let t = tuple_of(s);
    SocketId {
        sk: 0,
        netns: 0,
        family: t.family,
        saddr: t.saddr,
        sport: t.sport,
        daddr: t.daddr,
        dport: t.dport,
    }
}

fn find(all: &[DiagSocket], t: &FourTuple) -> Option<DiagSocket> {
    all.iter().copied().find(|s| s.tuple() == *t)
}

/// A child process killed and reaped on drop, even if the test panics.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `sleep 30` holding a duplicate of `sock`'s fd (at fd 200, close-on-exec cleared).
fn spawn_holder(sock: &impl AsRawFd) -> Kid {
    const TARGET: i32 = 200;
    let raw = sock.as_raw_fd();
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = if raw == TARGET {
                libc::fcntl(TARGET, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, TARGET)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Kid(cmd.spawn().expect("spawn `sleep 30`"))
}

#[test]
fn dump_sees_own_listener() {
    let (l, addr) = listen("127.0.0.1:0");
    let all = diag()
        .dump(StateMask::only(TcpState::Listen))
        .expect("dump listeners");
    assert!(
        all.iter().all(|s| s.state == TcpState::Listen),
        "state filter"
    );
    let mine: Vec<_> = all
        .iter()
        .filter(|s| s.family == Family::V4 && s.sport == addr.port() && s.saddr == LO4)
        .collect();
    assert_eq!(mine.len(), 1, "our listener exactly once: {mine:?}");
    let s = mine[0];
    assert_eq!(s.inode, fstat_ino(&l));
    assert_eq!(s.dport, 0);
    assert_eq!(s.daddr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    // SAFETY: geteuid cannot fail.
    assert_eq!(s.uid, unsafe { libc::geteuid() });
    assert_ne!(s.cookie, 0);
    assert!(
        s.info.is_some(),
        "tcp_info requested and given for a listener"
    );
    assert_eq!(s.close_wait_since_estimate_ms(), None);
}

#[test]
fn dump_filters_by_state_and_lists_both_families() {
    let (l4, a4) = listen("127.0.0.1:0");
    let (l6, a6) = listen("[::1]:0");
    let (_c4, _s4) = connect(&l4, a4);
    let (_c6, _s6) = connect(&l6, a6);
    let mut d = diag();
    let est = d
        .dump(StateMask::only(TcpState::Established))
        .expect("dump");
    assert!(est.iter().all(|s| s.state == TcpState::Established));
    let ours = |s: &&DiagSocket| s.sport == a4.port() || s.sport == a6.port();
    let servers: Vec<_> = est.iter().filter(ours).collect();
    assert_eq!(servers.len(), 2, "{servers:?}");
    let v6 = servers
        .iter()
        .find(|s| s.family == Family::V6)
        .expect("v6 server side");
    assert_eq!(v6.saddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    let v4 = servers
        .iter()
        .find(|s| s.family == Family::V4)
        .expect("v4 server side");
    assert_eq!(v4.saddr, LO4);
    let listeners = d.dump(StateMask::only(TcpState::Listen)).expect("dump");
    assert!(
        listeners
            .iter()
            .any(|s| s.sport == a6.port() && s.family == Family::V6)
    );
    assert!(
        !listeners
            .iter()
            .any(|s| s.sport == a4.port() && s.state != TcpState::Listen)
    );
}

#[test]
fn lookup_finds_established_socket_and_its_inode() {
    let (l, addr) = listen("127.0.0.1:0");
    let (c, s) = connect(&l, addr);
    let mut d = diag();
    for (side, stream) in [("client", &c), ("server", &s)] {
        let t = tuple_of(stream);
        let got = d
            .lookup(&t)
            .expect("lookup")
            .unwrap_or_else(|| panic!("{side} socket {t:?} not found"));
        assert_eq!(got.tuple(), t);
        assert_eq!(got.state, TcpState::Established);
        assert_eq!(got.inode, fstat_ino(stream), "{side} inode");
        assert!(got.info.is_some());
    }
    // Same local port as the listener, no such peer: the kernel would answer with the listener;
    // that is not this 4-tuple.
    let ghost = FourTuple {
        dport: tuple_of(&s).dport.wrapping_add(1).max(1),
        ..tuple_of(&s)
    };
    assert_eq!(d.lookup(&ghost).expect("lookup ghost"), None);
    // Nothing on that port at all.
    let gone = {
        let (l2, a2) = listen("127.0.0.1:0");
        drop(l2);
        FourTuple {
            family: Family::V4,
            saddr: LO4,
            sport: a2.port(),
            daddr: LO4,
            dport: 9,
        }
    };
    assert_eq!(d.lookup(&gone).expect("lookup gone"), None);
    // The listener itself, by its wildcard remote end.
    let lt = FourTuple {
        family: Family::V4,
        saddr: LO4,
        sport: addr.port(),
        daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dport: 0,
    };
    let got = d
        .lookup(&lt)
        .expect("lookup listener")
        .expect("listener found");
    assert_eq!((got.state, got.inode), (TcpState::Listen, fstat_ino(&l)));
}

#[test]
fn lookup_v6_and_v4_mapped() {
    let mut d = diag();
    // Native v6.
    let (l, addr) = listen("[::1]:0");
    let (c, _s) = connect(&l, addr);
    let got = d
        .lookup(&tuple_of(&c))
        .expect("lookup")
        .expect("v6 client found");
    assert_eq!(got.family, Family::V6);
    assert_eq!(got.inode, fstat_ino(&c));

    // A dual-stack listener's child of a v4 client is AF_INET6 with v4-mapped addresses.
    let (l, addr) = listen("[::]:0");
    let (c, s) = connect(&l, SocketAddr::new(LO4, addr.port()));
    let st = tuple_of(&s);
    let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    assert_eq!(
        (st.family, st.saddr, st.daddr),
        (Family::V6, mapped, mapped)
    );
    let got = d.lookup(&st).expect("lookup").expect("mapped child found");
    assert_eq!(
        (got.family, got.saddr, got.daddr),
        (Family::V6, mapped, mapped)
    );
    assert_eq!(got.inode, fstat_ino(&s));
    let dumped = d
        .dump(StateMask::only(TcpState::Established))
        .expect("dump");
    let in_dump = find(&dumped, &st).expect("mapped child in the dump, as v6");
    assert_eq!(in_dump.inode, got.inode);
    // Its v4 client is AF_INET; asking with the wrong family does not match it.
    let ct = tuple_of(&c);
    assert_eq!(ct.family, Family::V4);
    assert!(d.lookup(&ct).expect("lookup").is_some());
    let wrong = FourTuple {
        family: Family::V6,
        ..ct
    };
    assert_eq!(d.lookup(&wrong).expect("lookup wrong family"), None);
}

/// Which `tcp_info` stamp dates the peer's FIN. Two server-side sockets go to CLOSE_WAIT at
/// the same instant, ~1500 ms before the dump; one also received data ~1000 ms before its FIN.
/// Ages are compared with the time measured here (sleeps may overshoot on a loaded host).
#[test]
fn close_wait_age_estimate() {
    const TOLERANCE_MS: u32 = 300;
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap();
    let (l, addr) = listen("127.0.0.1:0");
    let (bare_c, bare_s) = connect(&l, addr);
    let (mut data_c, mut data_s) = connect(&l, addr);
    data_c.write_all(b"request").unwrap();
    let mut buf = [0u8; 7];
    data_s.read_exact(&mut buf).unwrap();
    let data_at = Instant::now();
    sleep(Duration::from_millis(1000));
    drop(bare_c);
    drop(data_c);
    let fin_at = Instant::now();
    sleep(Duration::from_millis(1500));

    let all = diag()
        .dump(StateMask::only(TcpState::CloseWait))
        .expect("dump CLOSE_WAIT");
    let (fin_ago, data_ago) = (ms(fin_at.elapsed()), ms(data_at.elapsed()));
    for (name, s) in [("bare", &bare_s), ("data", &data_s)] {
        let t = tuple_of(s);
        let got = find(&all, &t).unwrap_or_else(|| panic!("{name} socket not in CLOSE_WAIT"));
        assert_eq!(got.state, TcpState::CloseWait);
        let info = got.info.expect("tcp_info");
        eprintln!(
            "{name}: last_ack_recv={} last_data_recv={} last_data_sent={} \
             (FIN {fin_ago} ms ago, data/handshake {data_ago} ms ago)",
            info.last_ack_recv_ms, info.last_data_recv_ms, info.last_data_sent_ms
        );
        let est = got.close_wait_since_estimate_ms().expect("estimate");
        assert!(
            est.abs_diff(fin_ago) <= TOLERANCE_MS,
            "{name}: estimate {est} ms, FIN sent {fin_ago} ms ago"
        );
        // The data stamp is not the FIN's: it dates the data (or, for `bare`, the handshake).
        assert!(
            info.last_data_recv_ms.abs_diff(data_ago) <= TOLERANCE_MS,
            "{name}: last_data_recv {} ms, data {data_ago} ms ago",
            info.last_data_recv_ms
        );
    }
}

/// The documented limit: a half-closed peer (shutdown(SHUT_WR)) still ACKs what this side
/// sends in CLOSE_WAIT, and each ACK moves the stamp: the estimate becomes a lower bound.
#[test]
fn close_wait_estimate_is_a_lower_bound_after_sending() {
    let (l, addr) = listen("127.0.0.1:0");
    let (c, mut s) = connect(&l, addr);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let fin_at = Instant::now();
    sleep(Duration::from_millis(800));
    s.write_all(b"late reply").unwrap();
    let reply_at = Instant::now();
    sleep(Duration::from_millis(400));
    let got = diag()
        .lookup(&tuple_of(&s))
        .expect("lookup")
        .expect("server side");
    let ms = |t: Instant| u32::try_from(t.elapsed().as_millis()).unwrap();
    let (fin_ago, reply_ago) = (ms(fin_at), ms(reply_at));
    assert_eq!(got.state, TcpState::CloseWait);
    let est = got.close_wait_since_estimate_ms().expect("estimate");
    eprintln!(
        "half-closed peer: estimate {est} ms, FIN {fin_ago} ms ago, our reply {reply_ago} ms ago"
    );
    assert!(
        est.abs_diff(reply_ago) <= 300,
        "the peer's ACK of our reply moved the stamp"
    );
    assert!(est < fin_ago);
    drop(c);
}

#[test]
fn time_wait_has_no_inode_and_no_owner() {
    let (l, addr) = listen("127.0.0.1:0");
    let (c, s) = connect(&l, addr);
    let t = tuple_of(&c);
    let id = socket_id_of(&c);
    drop(c); // active close: the client ends in TIME_WAIT
    drop(s);
    let mut d = diag();
    let deadline = Instant::now() + Duration::from_secs(2);
    let tw = loop {
        let got = d.lookup(&t).expect("lookup");
        if let Some(s) = got.filter(|s| s.state == TcpState::TimeWait) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "client never reached TIME_WAIT: {got:?}"
        );
        sleep(Duration::from_millis(10));
    };
    assert_eq!((tw.inode, tw.info), (0, None));
    let tws = d
        .dump(StateMask::only(TcpState::TimeWait))
        .expect("dump TIME_WAIT");
    assert_eq!(find(&tws, &t).map(|s| s.inode), Some(0));

    let mut a = Attributor::new(AttributorConfig::default());
    assert_eq!(a.resolve(&mut d, &id, Instant::now()), None);
    assert_eq!((a.stats().no_inode, a.stats().rescans), (1, 0));
}

#[test]
fn attribution_finds_child_holder() {
    let _g = fork_lock();
    let (l, addr) = listen("127.0.0.1:0");
    let (_c, s) = connect(&l, addr);
    let id = socket_id_of(&s);
    let ino = fstat_ino(&s);
    let kid = spawn_holder(&s);
    drop(s); // only the child holds it now
    let pid = kid.0.id();

    assert_eq!(process_comm(pid), Some(Comm::new("sleep")));
    assert_eq!(
        process_cmdline(pid, CmdlinePolicy::Redacted).map(|c| c.exact().into_owned()),
        Some("sleep 30".to_owned())
    );
    assert!(process_exists(pid));

    let mut d = diag();
    let mut a = Attributor::new(AttributorConfig::default());
    let t0 = Instant::now();
    let owner = a
        .resolve(&mut d, &id, t0)
        .expect("owner of the child's socket");
    assert_eq!(owner.pid, pid);
    assert_eq!(owner.comm.as_str(), "sleep");
    assert_eq!(owner.source, OwnerSource::Inode);
    assert_eq!(a.stats().rescans, 1);
    // Again: from the cache, no scan.
    assert_eq!(a.resolve(&mut d, &id, t0), Some(owner));
    assert_eq!((a.stats().cache_hits, a.stats().rescans), (1, 1));

    // The index agrees.
    let ix = scan_inodes(Some(pid));
    assert_eq!(ix.owner_pid(ino), Some((pid, OwnerSource::Inode)));
    assert_eq!(ix.scanned_processes, 1);

    // Once the child is gone, the cached answer fails its check.
    drop(kid);
    assert!(!process_exists(pid));
    assert_eq!(process_comm(pid), None);
    assert_eq!(a.resolve_inode(ino, t0 + Duration::from_secs(1)), None);
}

#[test]
fn attribution_of_shared_socket_is_lowest_pid() {
    let _g = fork_lock();
    let (l, addr) = listen("127.0.0.1:0");
    let (_c, s) = connect(&l, addr);
    let kid = spawn_holder(&s); // both this process and the child hold it
    let me = std::process::id();
    let expected = me.min(kid.0.id());

    let mut d = diag();
    let mut a = Attributor::new(AttributorConfig::default());
    let owner = a
        .resolve(&mut d, &socket_id_of(&s), Instant::now())
        .expect("owner");
    assert_eq!(owner.source, OwnerSource::Shared);
    assert_eq!(owner.pid, expected);
    assert_eq!(Some(owner.comm), process_comm(expected));

    let ix = scan_inodes(None);
    let holders: HashSet<u32> = ix.holders(fstat_ino(&s)).map(|h| h.pid).collect();
    assert_eq!(holders, HashSet::from([me, kid.0.id()]));
    // Shared listener too (pre-fork servers).
    let lkid = spawn_holder(&l);
    let lid = SocketId {
        sk: 0,
        netns: 0,
        family: Family::V4,
        saddr: LO4,
        sport: addr.port(),
        daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dport: 0,
    };
    // The attributor's index predates the second child: refresh it (due after 100 ms).
    let later = Instant::now() + Duration::from_secs(1);
    assert!(a.refresh(later));
    let o = a.resolve(&mut d, &lid, later).expect("listener owner");
    assert_eq!(
        (o.pid, o.source),
        (me.min(lkid.0.id()), OwnerSource::Shared)
    );
}

#[test]
fn baseline_owners_in_one_pass() {
    let _g = fork_lock();
    let (l, addr) = listen("127.0.0.1:0");
    let (c, s) = connect(&l, addr);
    let mut d = diag();
    let all = d.dump(StateMask::ALL).expect("dump all");
    let index = scan_inodes(None);
    assert!(index.scanned_processes > 0);
    let owners = owners_of_baseline(&all, &index);
    assert_eq!(owners.len(), all.len());
    let me = std::process::id();
    let my_comm = process_comm(me).expect("own comm");
    for (name, t) in [
        ("listener", None),
        ("client", Some(tuple_of(&c))),
        ("server", Some(tuple_of(&s))),
    ] {
        let i = all
            .iter()
            .position(|x| match t {
                Some(t) => x.tuple() == t,
                None => x.state == TcpState::Listen && x.sport == addr.port() && x.saddr == LO4,
            })
            .unwrap_or_else(|| panic!("{name} not in the dump"));
        let o = owners[i].unwrap_or_else(|| panic!("{name} has no owner"));
        assert_eq!(
            (o.pid, o.comm, o.source),
            (me, my_comm, OwnerSource::Inode),
            "{name}"
        );
    }
    for (s, o) in all.iter().zip(&owners) {
        if s.inode == 0 {
            assert_eq!(*o, None, "inode 0 never has an owner: {s:?}");
        }
    }
    let cmd = process_cmdline(me, CmdlinePolicy::Full).expect("own cmdline");
    assert!(cmd.exact().contains("sockdiag"), "{cmd:?}");
}

#[test]
fn dump_of_thousands_of_sockets() {
    const CONNS: usize = 2000;
    let (l, addr) = listen("127.0.0.1:0");
    let pairs: Vec<(TcpStream, TcpStream)> = (0..CONNS).map(|_| connect(&l, addr)).collect();
    let mut d = diag();
    let t0 = Instant::now();
    let all = d.dump(StateMask::ALL).expect("dump all");
    let took = t0.elapsed();
    let mine: Vec<&DiagSocket> = all
        .iter()
        .filter(|s| s.family == Family::V4 && s.state == TcpState::Established)
        .filter(|s| s.sport == addr.port() || s.dport == addr.port())
        .collect();
    eprintln!(
        "dump: {} sockets in total, {} ours, {:?}, {} skipped messages",
        all.len(),
        mine.len(),
        took,
        d.skipped_messages()
    );
    assert_eq!(mine.len(), 2 * CONNS);
    let cookies: HashSet<u64> = mine.iter().map(|s| s.cookie).collect();
    assert_eq!(cookies.len(), 2 * CONNS, "no duplicates");
    let by_tuple: std::collections::HashMap<FourTuple, u64> =
        mine.iter().map(|s| (s.tuple(), s.inode)).collect();
    for (c, s) in &pairs {
        assert_eq!(by_tuple.get(&tuple_of(c)), Some(&fstat_ino(c)));
        assert_eq!(by_tuple.get(&tuple_of(s)), Some(&fstat_ino(s)));
    }
    assert!(mine.iter().all(|s| s.info.is_some()));
    assert_eq!(d.skipped_messages(), 0);
    // The socket is reusable after a long dump.
    let again = d
        .lookup(&tuple_of(&pairs[CONNS - 1].0))
        .expect("lookup after dump");
    assert!(again.is_some());
}
