//! Replay of a JSON Lines recording (`tracer --json > FILE`) through the engine.
//!
//! Consumes lines; `"type":"transition"` lines are parsed into [`Transition`]s (plus the owner,
//! when the line names one) and fed to an [`Engine`]; lines of other types (close,
//! close_wait_leak, summary, …) are not input and are skipped silently; malformed lines are
//! reported with their line number and skipped. Produces the engine's records through a
//! callback, and [`ReplayStats`]. Never panics on any input.
//!
//! Time: the engine advances with each transition's `ts_ns`. Before feeding a transition, the
//! replayer ticks the engine at every leak due time up to that transition's `ts_ns`, so a leak
//! record carries the exact moment its threshold was crossed (live, a leak fires at the first
//! tick after it, so within one tick interval of the same moment). At the end of the input no
//! time is invented: sockets not yet over the threshold at the last event do not leak.

use std::borrow::Cow;
use std::io::BufRead;
use std::net::IpAddr;

use serde::Deserialize;

use crate::event::{Comm, Family, TcpState, Transition};
use crate::pipeline::{Pipeline, Sink};
use crate::record::{Owner, OwnerSource};

/// Counts of one replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    /// Lines read (including blank ones).
    pub lines: u64,
    /// Transition lines fed to the engine.
    pub transitions: u64,
    /// Lines that are not input: other record types, and blank lines.
    pub other_lines: u64,
    /// Malformed lines (reported through `on_error`).
    pub skipped: u64,
}

/// Why a line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not JSON, not an object, or a field of the wrong type (or missing).
    #[error("invalid json: {0}")]
    Json(#[source] serde_json::Error),
    /// A JSON object without a string `"type"`.
    #[error("missing \"type\" field")]
    MissingType,
    /// `sk` is not a `0x`-prefixed hexadecimal u64.
    #[error("invalid sk {value:?}: expected a 0x-prefixed hex number")]
    Sk { value: String },
    /// `family` is neither 4 nor 6.
    #[error("invalid family {value}: expected 4 or 6")]
    Family { value: u64 },
    /// An address field does not parse as IPv4 or IPv6.
    #[error("invalid address in {field}: {value:?}")]
    Addr { field: &'static str, value: String },
    /// A state field is not a TCP state name.
    #[error("unknown TCP state in {field}: {value:?}")]
    State { field: &'static str, value: String },
    /// `owner_source` is not a known source name.
    #[error("unknown owner_source {value:?}")]
    OwnerSource { value: String },
}

/// Just the type of a line.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// The transition line contract (output.rs). Unknown fields are ignored.
#[derive(Deserialize)]
struct Line<'a> {
    ts_ns: u64,
    #[serde(borrow)]
    sk: Cow<'a, str>,
    family: u64,
    #[serde(borrow)]
    saddr: Cow<'a, str>,
    sport: u16,
    #[serde(borrow)]
    daddr: Cow<'a, str>,
    dport: u16,
    #[serde(borrow)]
    old: Cow<'a, str>,
    #[serde(borrow)]
    new: Cow<'a, str>,
    dwell_ns: Option<u64>,
    #[serde(default)]
    dwell_table_full: bool,
    /// Absent from recordings made before namespaces were reported: 0 (unknown).
    #[serde(default)]
    netns: u32,
    #[serde(default)]
    sk_err: u16,
    task_pid: u32,
    task_tid: u32,
    #[serde(borrow)]
    task_comm: Cow<'a, str>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(borrow, default)]
    comm: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    owner_source: Option<Cow<'a, str>>,
}

/// Parses one line: `Ok(Some)` for a transition, `Ok(None)` for any other record type (or a
/// blank line), `Err` when malformed.
pub fn parse_transition_line(line: &str) -> Result<Option<Transition>, LineError> {
    parse_line(line.as_bytes()).map(|o| o.map(|(t, _)| t))
}

/// Like [`parse_transition_line`], also returning the owner the line names (`pid`, `comm`,
/// optional `owner_source`, default `context`), if any.
pub fn parse_line(line: &[u8]) -> Result<Option<(Transition, Option<Owner>)>, LineError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let probe: Probe<'_> = serde_json::from_slice(line).map_err(LineError::Json)?;
    match probe.kind.as_deref() {
        None => return Err(LineError::MissingType),
        Some("transition") => {}
        Some(_) => return Ok(None),
    }
    let l: Line<'_> = serde_json::from_slice(line).map_err(LineError::Json)?;
    let family = match l.family {
        4 => Family::V4,
        6 => Family::V6,
        value => return Err(LineError::Family { value }),
    };
    let sk = parse_sk(&l.sk).ok_or_else(|| LineError::Sk {
        value: l.sk.clone().into_owned(),
    })?;
    let addr = |field: &'static str, v: &Cow<'_, str>| {
        v.parse::<IpAddr>().map_err(|_| LineError::Addr {
            field,
            value: v.clone().into_owned(),
        })
    };
    let state = |field: &'static str, v: &Cow<'_, str>| {
        TcpState::from_name(v).ok_or_else(|| LineError::State {
            field,
            value: v.clone().into_owned(),
        })
    };
    let t = Transition {
        ts_ns: l.ts_ns,
        sk,
        family,
        saddr: addr("saddr", &l.saddr)?,
        sport: l.sport,
        daddr: addr("daddr", &l.daddr)?,
        dport: l.dport,
        old: state("old", &l.old)?,
        new: state("new", &l.new)?,
        dwell_ns: l.dwell_ns,
        dwell_table_full: l.dwell_table_full,
        netns: l.netns,
        sk_err: l.sk_err,
        task_pid: l.task_pid,
        task_tid: l.task_tid,
        task_comm: Comm::new(&l.task_comm),
    };
    let owner = match l.pid {
        None => None,
        Some(pid) => {
            let source = match l.owner_source.as_deref() {
                None | Some("context") => OwnerSource::Context,
                Some("listener") => OwnerSource::Listener,
                Some("inode") => OwnerSource::Inode,
                Some("shared") => OwnerSource::Shared,
                Some(other) => {
                    return Err(LineError::OwnerSource {
                        value: other.to_owned(),
                    });
                }
            };
            Some(Owner {
                pid,
                comm: Comm::new(l.comm.as_deref().unwrap_or("")),
                source,
            })
        }
    };
    Ok(Some((t, owner)))
}

fn parse_sk(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The input could not be read.
    #[error("read error")]
    Read(#[source] std::io::Error),
    /// The sink could not write.
    #[error("write error")]
    Write(#[source] std::io::Error),
}

/// Runs a recording through the per-event path. The sink gets every record (and transition,
/// if it shows them); `on_error(line_number, error)` (1-based) is called for every malformed
/// line, and the rest of the input still runs. An owner named on a transition line is given to
/// the path as a hint, so records carry it as they did live. Fails on a read or write error.
pub fn replay<R: BufRead>(
    mut input: R,
    path: &mut Pipeline,
    sink: &mut impl Sink,
    mut on_error: impl FnMut(u64, &LineError),
) -> Result<ReplayStats, ReplayError> {
    let mut stats = ReplayStats::default();
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.clear();
        if input
            .read_until(b'\n', &mut buf)
            .map_err(ReplayError::Read)?
            == 0
        {
            break;
        }
        stats.lines += 1;
        let (t, owner) = match parse_line(&buf) {
            Ok(Some(x)) => x,
            Ok(None) => {
                stats.other_lines += 1;
                continue;
            }
            Err(e) => {
                stats.skipped += 1;
                on_error(stats.lines, &e);
                continue;
            }
        };
        stats.transitions += 1;
        // Fire leaks at their exact due times up to this event. The engine fires everything
        // due at or before its clock after every call, so each `due` here is ahead of the
        // clock and each tick fires at least one leak.
        while let Some(due) = path.next_leak_due_ns() {
            let at = due.max(path.engine().clock_ns());
            if at > t.ts_ns {
                break;
            }
            path.tick(at, sink).map_err(ReplayError::Write)?;
        }
        path.on_transition(&t, owner, sink)
            .map_err(ReplayError::Write)?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::record::{CloseKind, Record};
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn line(ts: u64, sk: u64, old: &str, new: &str, extra: &str) -> String {
        format!(
            r#"{{"type":"transition","ts_ns":{ts},"sk":"0x{sk:x}","family":4,"saddr":"127.0.0.1","sport":40000,"daddr":"127.0.0.1","dport":80,"old":"{old}","new":"{new}","dwell_ns":null,"task_pid":1,"task_tid":2,"task_comm":"curl"{extra}}}"#
        )
    }

    fn config() -> EngineConfig {
        EngineConfig {
            capacity: 100,
            close_wait_threshold_ns: 30 * S,
        }
    }

    fn path() -> Pipeline {
        Pipeline::offline(crate::pipeline::PipelineConfig {
            engine: config(),
            pid: None,
        })
    }

    /// Collects the records a replay produces.
    #[derive(Default)]
    struct Recs(Vec<Record>);

    impl Sink for Recs {
        fn transition(&mut self, _: &Transition, _: Option<&Owner>) -> std::io::Result<()> {
            Ok(())
        }
        fn close(
            &mut self,
            c: &crate::record::CloseRecord,
            _: &crate::output::RecordContext,
        ) -> std::io::Result<()> {
            self.0.push(Record::Close(*c));
            Ok(())
        }
        fn leak(
            &mut self,
            l: &crate::record::LeakRecord,
            _: &crate::output::RecordContext,
        ) -> std::io::Result<()> {
            self.0.push(Record::Leak(*l));
            Ok(())
        }
    }

    fn run(input: &str) -> (ReplayStats, Vec<Record>, Vec<(u64, String)>) {
        let mut p = path();
        let mut recs = Recs::default();
        let mut errs = Vec::new();
        let st = replay(input.as_bytes(), &mut p, &mut recs, |n, err| {
            errs.push((n, err.to_string()))
        })
        .unwrap();
        (st, recs.0, errs)
    }

    #[test]
    fn parses_the_contract() {
        let l = r#"{"type":"transition","ts_ns":5,"sk":"0xffff888012345678","family":6,"saddr":"::ffff:1.2.3.4","sport":1,"daddr":"::1","dport":2,"old":"ESTABLISHED","new":"CLOSE_WAIT","dwell_ns":42,"task_pid":7,"task_tid":8,"task_comm":"nginx","pid":9,"comm":"nginx","future_field":[1,2]}"#;
        let (t, o) = parse_line(l.as_bytes()).unwrap().unwrap();
        assert_eq!(t.sk, 0xffff_8880_1234_5678);
        assert_eq!(t.family, Family::V6);
        assert_eq!(crate::event::AddrFmt(t.saddr).to_string(), "::ffff:1.2.3.4");
        assert_eq!((t.old, t.new), (TcpState::Established, TcpState::CloseWait));
        assert_eq!(t.dwell_ns, Some(42));
        assert_eq!((t.task_pid, t.task_tid), (7, 8));
        assert_eq!(t.task_comm.as_str(), "nginx");
        let o = o.unwrap();
        assert_eq!(
            (o.pid, o.comm.as_str().as_ref(), o.source),
            (9, "nginx", OwnerSource::Context)
        );
        // Owner fields may be null.
        let l2 = l.replace(r#""pid":9,"comm":"nginx""#, r#""pid":null,"comm":null"#);
        assert!(parse_line(l2.as_bytes()).unwrap().unwrap().1.is_none());
        assert!(parse_transition_line(l).unwrap().is_some());
    }

    #[test]
    fn other_types_are_not_input() {
        for l in [
            r#"{"type":"close","kind":"active","dwell_ns":{"ESTABLISHED":5}}"#,
            r#"{"type":"close_wait_leak","sk":"0x1"}"#,
            r#"{"type":"summary","transitions":3}"#,
            "",
            "   ",
        ] {
            assert!(parse_transition_line(l).unwrap().is_none(), "{l}");
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        let good = line(1, 1, "CLOSE", "SYN_SENT", "");
        let cases = [
            ("not json".to_owned(), "invalid json"),
            ("[1,2]".to_owned(), "invalid json"),
            (r#"{"ts_ns":1}"#.to_owned(), "missing \"type\""),
            (good.replace(r#""ts_ns":1,"#, ""), "missing field `ts_ns`"),
            (good.replace(r#""sk":"0x1""#, r#""sk":"12""#), "invalid sk"),
            (good.replace(r#""sk":"0x1""#, r#""sk":"0x""#), "invalid sk"),
            (
                good.replace(r#""sk":"0x1""#, r#""sk":"0x1ffffffffffffffff""#),
                "invalid sk",
            ),
            (
                good.replace(r#""family":4"#, r#""family":5"#),
                "invalid family 5",
            ),
            (
                good.replace(r#""saddr":"127.0.0.1""#, r#""saddr":"nope""#),
                "invalid address in saddr",
            ),
            (
                good.replace(r#""old":"CLOSE""#, r#""old":"OPEN""#),
                "unknown TCP state in old",
            ),
            (
                good.replace(r#""sport":40000"#, r#""sport":70000"#),
                "invalid json",
            ),
            (
                good.replace(r#""dwell_ns":null"#, r#""dwell_ns":-1"#),
                "invalid json",
            ),
        ];
        for (l, msg) in cases {
            let err = parse_transition_line(&l).unwrap_err().to_string();
            assert!(err.contains(msg), "{l}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn round_trip_with_errors_and_other_lines() {
        let input = [
            line(1_000, 1, "CLOSE", "SYN_SENT", ""),
            line(2_000, 1, "SYN_SENT", "ESTABLISHED", ""),
            r#"{"type":"summary","closes":0}"#.to_owned(),
            "garbage".to_owned(),
            line(3_000, 1, "ESTABLISHED", "FIN_WAIT1", ""),
            line(4_000, 1, "FIN_WAIT1", "FIN_WAIT2", ""),
            String::new(),
            line(5_000, 1, "FIN_WAIT2", "CLOSE", r#","pid":42,"comm":"curl""#),
            r#"{"type":"close","sk":"0x1"}"#.to_owned(),
            line(6_000, 2, "OOPS", "CLOSE", ""),
        ]
        .join("\n");
        let (st, recs, errs) = run(&input);
        assert_eq!(
            st,
            ReplayStats {
                lines: 10,
                transitions: 5,
                other_lines: 3,
                skipped: 2
            }
        );
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].0, 4);
        assert_eq!(errs[1].0, 10);
        assert!(errs[1].1.contains("OOPS"));
        assert_eq!(recs.len(), 1);
        let Record::Close(c) = recs[0] else {
            panic!("{recs:?}")
        };
        assert_eq!(c.kind, CloseKind::Active);
        assert_eq!(c.owner.map(|o| o.pid), Some(42));
        assert_eq!(c.lifetime_ns, Some(4_000));
    }

    /// What output.rs writes, replay reads back: the same records as feeding the engine
    /// directly.
    #[test]
    fn round_trip_through_output() {
        use crate::output::{Format, Output, Show};
        let events: Vec<Transition> = crate::engine::synthetic_stream(300, 16, 5)
            .map(|mut t| {
                // Mix in IPv6 and v4-mapped addresses.
                if t.sk % 3 == 0 {
                    t.family = Family::V6;
                    t.saddr = "::ffff:127.0.0.1".parse().unwrap();
                    t.daddr = "::1".parse().unwrap();
                }
                t
            })
            .collect();
        // Replay is the same path as live: its records equal the path's fed directly.
        let mut direct = path();
        let mut want = Recs::default();
        for t in &events {
            direct.on_transition(t, None, &mut want).unwrap();
        }
        let want = want.0;
        let mut o = Output::new(Vec::new(), Format::Json, Show::ALL, 0);
        for t in &events {
            o.transition(t, None).unwrap();
        }
        let text = o.into_inner();
        let mut p = path();
        let mut got = Recs::default();
        let st = replay(&text[..], &mut p, &mut got, |n, err| {
            panic!("line {n}: {err}")
        })
        .unwrap();
        assert_eq!(st.transitions, 3000);
        assert_eq!((st.skipped, st.other_lines), (0, 0));
        assert_eq!(got.0, want);
        assert_eq!(p.engine().stats(), direct.engine().stats());
    }

    #[test]
    fn leaks_fire_at_their_due_time_and_no_time_is_invented() {
        let input = [
            line(
                S,
                1,
                "ESTABLISHED",
                "CLOSE_WAIT",
                r#","pid":5,"comm":"app""#,
            ),
            line(2 * S, 2, "ESTABLISHED", "CLOSE_WAIT", ""),
            // 100 s later, another socket's event: both leaks fire, at their own due times.
            line(100 * S, 3, "CLOSE", "SYN_SENT", ""),
            line(101 * S, 4, "ESTABLISHED", "CLOSE_WAIT", ""),
        ]
        .join("\n");
        let (st, recs, errs) = run(&input);
        assert!(errs.is_empty());
        assert_eq!(st.transitions, 4);
        let leaks: Vec<_> = recs
            .iter()
            .filter_map(|r| match r {
                Record::Leak(l) => Some(*l),
                Record::Close(_) => None,
            })
            .collect();
        assert_eq!(
            leaks.len(),
            2,
            "socket 4 is not over the threshold at the end"
        );
        assert_eq!(
            (leaks[0].id.sk, leaks[0].ts_ns, leaks[0].age_ns),
            (1, 31 * S, 30 * S)
        );
        assert_eq!(leaks[0].owner.map(|o| o.pid), Some(5));
        assert_eq!((leaks[1].id.sk, leaks[1].ts_ns), (2, 32 * S));
    }

    #[test]
    fn invalid_utf8_is_a_line_error() {
        let mut input = line(1, 1, "CLOSE", "SYN_SENT", "").into_bytes();
        input.extend_from_slice(b"\n{\"type\":\"transition\",\"sk\":\"\xff\"}\n");
        let mut p = path();
        let mut errs = Vec::new();
        let st = replay(&input[..], &mut p, &mut Recs::default(), |n, _| {
            errs.push(n)
        })
        .unwrap();
        assert_eq!((st.transitions, st.skipped), (1, 1));
        assert_eq!(errs, [2]);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,400}") {
            let _ = parse_transition_line(&s);
            let mut p = path();
            let st = replay(s.as_bytes(), &mut p, &mut Recs::default(), |_, _| {}).unwrap();
            prop_assert_eq!(st.lines, st.transitions + st.other_lines + st.skipped);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_line(&b);
            let mut p = path();
            let st = replay(&b[..], &mut p, &mut Recs::default(), |_, _| {}).unwrap();
            prop_assert_eq!(st.lines, st.transitions + st.other_lines + st.skipped);
        }

        #[test]
        fn mutated_transition_lines_never_panic(
            ts in any::<u64>(),
            sk in any::<u64>(),
            old in "[A-Z_]{0,12}",
            cut in 0usize..300,
        ) {
            let l = line(ts, sk, &old, "CLOSE", "");
            let l = &l[..cut.min(l.len())];
            let mut p = path();
            let _ = replay(l.as_bytes(), &mut p, &mut Recs::default(), |_, _| {}).unwrap();
        }

        #[test]
        fn random_valid_streams_never_panic(
            evs in proptest::collection::vec((0u64..100 * S, 0u64..6, 1u8..=12, 1u8..=12), 0..100),
        ) {
            let input: Vec<String> = evs
                .iter()
                .map(|&(ts, sk, o, n)| {
                    let o = TcpState::from_kernel(o).unwrap().name();
                    let n = TcpState::from_kernel(n).unwrap().name();
                    line(ts, sk, o, n, "")
                })
                .collect();
            let (st, _, errs) = run(&input.join("\n"));
            prop_assert!(errs.is_empty());
            prop_assert_eq!(st.transitions, evs.len() as u64);
        }
    }
}
