//! Unit tests of the per-event path and its views, offline (no /proc, no sock_diag).

use super::*;
use crate::event::{Comm, Family};
use std::net::{IpAddr, Ipv4Addr};

#[derive(Default)]
struct Collect {
    transitions: Vec<(Transition, Option<Owner>)>,
    closes: Vec<CloseRecord>,
    leaks: Vec<LeakRecord>,
}

impl Sink for Collect {
    fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        self.transitions.push((*t, owner.copied()));
        Ok(())
    }
    fn close(&mut self, c: &CloseRecord, _: &RecordContext) -> io::Result<()> {
        self.closes.push(*c);
        Ok(())
    }
    fn leak(&mut self, l: &LeakRecord, _: &RecordContext) -> io::Result<()> {
        self.leaks.push(*l);
        Ok(())
    }
}

fn tr(ts: u64, sk: u64, netns: u32, old: TcpState, new: TcpState, pid: u32) -> Transition {
    Transition {
        ts_ns: ts,
        sk,
        family: Family::V4,
        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport: 8080,
        daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dport: 40000,
        old,
        new,
        dwell_ns: None,
        netns,
        sk_err: 0,
        task_pid: pid,
        task_tid: pid,
        task_comm: Comm::new(&format!("p{pid}")),
        idle: crate::event::Idle::NONE,
    }
}

/// Two listeners on the same port in two namespaces: each child takes its own
/// namespace's listener owner.
#[test]
fn listener_owners_are_per_namespace() {
    use TcpState::*;
    let mut p = Pipeline::offline(PipelineConfig::default());
    let mut s = Collect::default();
    p.on_transition(&tr(1, 0xa, 100, Close, Listen, 11), None, &mut s)
        .unwrap();
    p.on_transition(&tr(2, 0xb, 200, Close, Listen, 22), None, &mut s)
        .unwrap();
    p.on_transition(&tr(3, 0xc, 200, Listen, SynRecv, 0), None, &mut s)
        .unwrap();
    p.on_transition(&tr(4, 0xd, 100, Listen, SynRecv, 0), None, &mut s)
        .unwrap();
    assert_eq!(p.engine().owner(0xc).unwrap().pid, 22);
    assert_eq!(p.engine().owner(0xd).unwrap().pid, 11);
    assert_eq!(p.engine().owner(0xd).unwrap().source, OwnerSource::Listener);
    // The first listener closes: the other namespace's listener keeps its owner.
    p.on_transition(&tr(5, 0xa, 100, Listen, Close, 11), None, &mut s)
        .unwrap();
    p.on_transition(&tr(6, 0xe, 200, Listen, SynRecv, 0), None, &mut s)
        .unwrap();
    p.on_transition(&tr(7, 0xf, 100, Listen, SynRecv, 0), None, &mut s)
        .unwrap();
    assert_eq!(p.engine().owner(0xe).unwrap().pid, 22);
    assert_eq!(p.engine().owner(0xf), None);
    assert_eq!(p.counts().events, 7);
}

#[test]
fn pid_filter_passes_only_its_owner() {
    use TcpState::*;
    let mut p = Pipeline::offline(PipelineConfig {
        pid: Some(11),
        ..PipelineConfig::default()
    });
    let mut s = Collect::default();
    p.on_transition(&tr(1, 0xa, 1, Close, SynSent, 11), None, &mut s)
        .unwrap();
    p.on_transition(&tr(2, 0xb, 1, Close, SynSent, 22), None, &mut s)
        .unwrap();
    p.on_transition(&tr(3, 0xa, 1, SynSent, Close, 0), None, &mut s)
        .unwrap();
    p.on_transition(&tr(4, 0xb, 1, SynSent, Close, 0), None, &mut s)
        .unwrap();
    assert_eq!(s.transitions.len(), 2);
    assert!(s.transitions.iter().all(|(_, o)| o.unwrap().pid == 11));
    assert_eq!(s.closes.len(), 1);
    assert_eq!(s.closes[0].id.sk, 0xa);
    assert_eq!(s.closes[0].id.netns, 1);
}

#[test]
fn hints_name_owners_and_undecodable_bytes_are_counted() {
    use TcpState::*;
    let mut p = Pipeline::offline(PipelineConfig::default());
    let mut s = Collect::default();
    let hint = Owner {
        pid: 77,
        comm: Comm::new("hinted"),
        source: OwnerSource::Inode,
    };
    p.on_transition(
        &tr(1, 0xa, 1, Established, CloseWait, 0),
        Some(hint),
        &mut s,
    )
    .unwrap();
    assert_eq!(p.engine().owner(0xa), Some(hint));
    p.on_bytes(&[1, 2, 3], &mut s).unwrap();
    assert_eq!(p.counts().undecodable, 1);
}

/// Active closes are counted per remote endpoint, in the summary (JSON and text) and in
/// the metrics, with the rest of the remotes summed under `other`.
#[test]
fn time_wait_per_remote_in_summary_and_metrics() {
    use TcpState::*;
    let mut p = Pipeline::offline(PipelineConfig::default());
    p.set_time_wait_config(TimeWaitConfig {
        series: 1,
        ..TimeWaitConfig::default()
    });
    let mut s = Collect::default();
    let mut sk = 0x100;
    for (dport, n) in [(5432u16, 3u64), (80, 1)] {
        for i in 0..n {
            sk += 1;
            let mut t = tr(1_000 + sk, sk, 0, FinWait1, FinWait2, 0);
            (t.sport, t.dport) = (40_000 + i as u16, dport);
            p.on_transition(&t, None, &mut s).unwrap();
            t.ts_ns += 1;
            (t.old, t.new) = (FinWait2, Close);
            p.on_transition(&t, None, &mut s).unwrap();
        }
    }
    let sum = p.summary(2_000 + sk);
    assert_eq!(sum.time_wait_top.len(), 2);
    assert_eq!(
        (
            sum.time_wait_top[0].remote.as_str(),
            sum.time_wait_top[0].time_wait
        ),
        ("127.0.0.1:5432", 3)
    );
    assert_eq!(sum.time_wait_top[0].ephemeral_ports_used, 3);
    let json = serde_json::to_value(&sum).unwrap();
    assert_eq!(json["time_wait_top"][1]["remote"], "127.0.0.1:80");
    assert!(json["time_wait_top"][0].get("netns").is_none());
    let text = sum.render_text();
    assert!(text.contains("TIME_WAIT by remote (top 2):"), "{text}");
    assert!(text.contains("127.0.0.1:5432"), "{text}");
    let m = p.metrics(2_000 + sk);
    let got: Vec<_> = m
        .time_wait_remotes
        .iter()
        .map(|r| (r.remote.as_str(), r.sockets))
        .collect();
    assert_eq!(got, [("127.0.0.1:5432", 3), ("other", 1)]);
    // 60 s later they are gone.
    assert!(
        p.summary(2_000 + sk + 62_000_000_000)
            .time_wait_top
            .is_empty()
    );
}
