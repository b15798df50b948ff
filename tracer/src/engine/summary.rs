//! End-of-run (or on-demand) summary of the engine: counters, close kinds and roles, per-state
//! dwell quantiles, sockets per state now, CLOSE_WAIT and leaks.
//!
//! Produces a [`Summary`], serialised as one JSON object with `"type":"summary"`, or rendered as
//! a text table for the terminal ([`Summary::render_text`]).

use std::fmt::Write as _;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::Engine;
use crate::event::TcpState;
use crate::record::{CloseKind, Role};

/// Dwell quantiles of one state (ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DwellSummary {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// A value per close kind; serialised as `{"active": n, …}` with every kind, in
/// [`CloseKind::ALL`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KindCounts(pub [u64; 9]);

impl KindCounts {
    pub fn get(&self, k: CloseKind) -> u64 {
        self.0[k as usize]
    }
}

impl Serialize for KindCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(CloseKind::ALL.len()))?;
        for k in CloseKind::ALL {
            m.serialize_entry(k.name(), &self.get(k))?;
        }
        m.end()
    }
}

/// A value per role; serialised as `{"client": n, …}` with every role, in [`Role::ALL`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RoleCounts(pub [u64; 4]);

impl RoleCounts {
    pub fn get(&self, r: Role) -> u64 {
        self.0[r as usize]
    }
}

impl Serialize for RoleCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        for r in Role::ALL {
            m.serialize_entry(r.name(), &self.get(r))?;
        }
        m.end()
    }
}

/// An optional value per TCP state, indexed by [`TcpState::index`]; serialised as a map from
/// state name to value, in kernel order, leaving out `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerState<T>(pub [Option<T>; 12]);

impl<T: Copy> PerState<T> {
    pub fn get(&self, st: TcpState) -> Option<T> {
        self.0[st.index()]
    }
}

impl<T: Serialize> Serialize for PerState<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0.iter().filter(|v| v.is_some()).count();
        let mut m = s.serialize_map(Some(n))?;
        for (st, v) in TcpState::ALL.iter().zip(&self.0) {
            if let Some(v) = v {
                m.serialize_entry(st.name(), v)?;
            }
        }
        m.end()
    }
}

/// What the engine saw. Serialised (JSON) as one object with `"type":"summary"`; times in ns.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Always `"summary"`.
    #[serde(rename = "type")]
    pub record_type: &'static str,
    /// From the first clock reading (event or tick) to `now`.
    pub duration_ns: u64,
    pub transitions: u64,
    pub closes: u64,
    pub closes_by_kind: KindCounts,
    pub closes_by_role: RoleCounts,
    /// Closes handed to a timewait socket.
    pub closes_time_wait: u64,
    /// Leak records emitted.
    pub leaks: u64,
    /// Dwell quantiles of every state with at least one sample.
    pub dwell: PerState<DwellSummary>,
    /// Tracked sockets per state now (states with none left out).
    pub sockets_now: PerState<u64>,
    pub close_wait_now: u64,
    /// In CLOSE_WAIT and reported leaking now.
    pub leaking_now: u64,
    pub oldest_close_wait_ns: Option<u64>,
    pub tracked: u64,
    pub capacity: u64,
    pub evicted: u64,
    pub evicted_leaking: u64,
    pub recycled: u64,
    pub seeded: u64,
    pub first_seen_midlife: u64,
    pub gaps: u64,
    pub out_of_order: u64,
    pub stale_dropped: u64,
    /// Sockets the kernel no longer had when asked (a leak check, a reconciliation): closed
    /// while their events were lost, each left as a close of kind `unknown`.
    pub closed_unseen: u64,
    /// Sockets the kernel had in another state than the engine believed, when asked.
    pub state_corrected: u64,
    /// Events the kernel could not deliver (filled in by the app).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_lost: Option<u64>,
    /// Input lines that could not be used (filled in by replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_lines: Option<u64>,
    /// Of the skipped lines, those longer than the line limit (filled in by replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_lines: Option<u64>,
    /// Transitions whose timestamp jumped far ahead of the input's clock and back; fed at the
    /// clock instead (filled in by replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_jumps: Option<u64>,
    /// Times the input started over: a meta line after transitions, or the clock going back
    /// (filled in by replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
    /// Sockets still tracked when the input started over, forgotten without a record (filled
    /// in by replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_forgotten: Option<u64>,
    /// What the startup baseline read (filled in by the live path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSummary>,
    /// What reconciliation with the kernel did (filled in by the live path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileSummary>,
    /// What holder confirmation did (filled in by the live path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holders: Option<HolderSummary>,
    /// The remote endpoints with the most TIME_WAIT sockets now (at most 5; filled in by the
    /// pipeline). Left out when there is none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub time_wait_top: Vec<RemoteSummary>,
    /// Idle time before close (since the last segment received) per close kind, for the kinds
    /// that had one. Left out when none had.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub idle_before_close: Vec<IdleSummary>,
    /// The (reason, remote) pairs this host sent the most RSTs to (at most 5; filled in by the
    /// pipeline). Left out when it sent none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resets_top: Vec<ResetSummary>,
}

/// Idle time before close of one close kind (ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IdleSummary {
    pub kind: &'static str,
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// RSTs sent for one reason to one remote address (or to `other` ones).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ResetSummary {
    pub reason: &'static str,
    /// The address, or `other` (remotes past the per-remote table).
    pub remote: String,
    /// The sender's namespace, when it is not the tracer's own and is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    pub resets: u64,
}

/// The startup baseline: sockets that existed before tracing began, read with sock_diag in
/// every network namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BaselineSummary {
    /// Sockets seeded into the engine.
    pub sockets: u64,
    /// Network namespaces read.
    pub namespaces: u64,
    /// Network namespaces that could not be entered or read.
    pub namespaces_failed: u64,
    /// How long it took (wall clock, µs).
    pub took_us: u64,
}

/// What reconciliation with the kernel did over the run (live only): the engine's CLOSE_WAIT
/// sockets checked against sock_diag after events were lost and periodically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileSummary {
    /// Runs (dump and confirmation).
    pub runs: u64,
    /// Of those, started because events were lost.
    pub after_loss: u64,
    /// Wall time of every run's dump and confirmation, added up (µs).
    pub total_us: u64,
    /// The slowest run (µs).
    pub max_us: u64,
    /// Suspects found by the dumps.
    pub suspects: u64,
    /// Sockets the kernel no longer had: closed out (`closed_unseen`).
    pub closed_unseen: u64,
    /// Sockets the kernel had in another state: corrected.
    pub state_corrected: u64,
    /// CLOSE_WAIT sockets the kernel had and the engine did not: seeded.
    pub seeded: u64,
    /// Namespaces that could not be asked (entered or dumped).
    pub unreachable: u64,
}

/// What holder confirmation did over the run (live only): CLOSE_WAIT sockets' holders looked
/// up by inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HolderSummary {
    /// Rounds with at least one socket due.
    pub rounds: u64,
    /// Sockets looked at.
    pub sockets: u64,
    /// sock_diag questions asked: single lookups and filtered dumps.
    pub lookups: u64,
    pub dumps: u64,
    /// Holders confirmed by inode.
    pub confirmed: u64,
    /// Of those, a different process than the trace had named.
    pub corrected: u64,
    /// Sockets found still in their listener's accept queue (never accepted).
    pub not_accepted: u64,
    /// Sockets whose holder could not be learnt this round (namespace unreachable, sock_diag
    /// error, `/proc` rescan rate-limited): asked again next round.
    pub unanswered: u64,
    /// Wall time of every round, added up (µs).
    pub total_us: u64,
}

/// TIME_WAIT and ephemeral ports of one remote endpoint, for the summary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RemoteSummary {
    /// `addr:port` (`[v6]:port`).
    pub remote: String,
    /// The network namespace, when it is not the tracer's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// TIME_WAIT sockets to it now.
    pub time_wait: u64,
    /// Ephemeral ports in use towards it from the busiest local address (any state).
    pub ephemeral_ports_used: u64,
    /// Size of the namespace's ephemeral port range.
    pub ephemeral_port_range: u64,
}

impl Engine {
    /// A summary as of `now_ns` (ages and duration are measured to it).
    pub fn summary(&self, now_ns: u64) -> Summary {
        let s = &self.stats;
        let mut dwell = [None; 12];
        let mut sockets_now = [None; 12];
        for st in TcpState::ALL {
            let h = self.dwell_histogram(st);
            if let (Some(max_ns), Some(p50), Some(p90), Some(p99)) = (
                h.max_ns(),
                h.quantile(0.5),
                h.quantile(0.9),
                h.quantile(0.99),
            ) {
                dwell[st.index()] = Some(DwellSummary {
                    count: h.count(),
                    p50_ns: p50,
                    p90_ns: p90,
                    p99_ns: p99,
                    max_ns,
                });
            }
            let n = self.per_state[st.index()];
            if n > 0 {
                sockets_now[st.index()] = Some(n);
            }
        }
        Summary {
            record_type: "summary",
            duration_ns: self
                .start_ns
                .map_or(0, |start| now_ns.saturating_sub(start)),
            transitions: s.transitions,
            closes: s.closes,
            closes_by_kind: KindCounts(s.closes_by_kind),
            closes_by_role: RoleCounts(s.closes_by_role),
            closes_time_wait: s.closes_time_wait,
            leaks: s.leaks,
            dwell: PerState(dwell),
            sockets_now: PerState(sockets_now),
            close_wait_now: self.close_wait_now(),
            leaking_now: self.leaking_now(),
            oldest_close_wait_ns: self.oldest_close_wait_ns(now_ns),
            tracked: self.tracked() as u64,
            capacity: self.cfg.capacity as u64,
            evicted: s.evicted,
            evicted_leaking: s.evicted_leaking,
            recycled: s.recycled,
            seeded: s.seeded,
            first_seen_midlife: s.first_seen_midlife,
            gaps: s.gaps,
            out_of_order: s.out_of_order,
            stale_dropped: s.stale_dropped,
            closed_unseen: s.closed_unseen,
            state_corrected: s.state_corrected,
            events_lost: None,
            skipped_lines: None,
            baseline: None,
            reconcile: None,
            holders: None,
            long_lines: None,
            time_jumps: None,
            restarts: None,
            restart_forgotten: None,
            time_wait_top: Vec::new(),
            idle_before_close: CloseKind::ALL
                .into_iter()
                .filter_map(|k| {
                    let h = self.idle_histogram(k);
                    Some(IdleSummary {
                        kind: k.name(),
                        count: h.count(),
                        p50_ns: h.quantile(0.5)?,
                        p90_ns: h.quantile(0.9)?,
                        p99_ns: h.quantile(0.99)?,
                        max_ns: h.max_ns()?,
                    })
                })
                .collect(),
            resets_top: Vec::new(),
        }
    }
}

impl Summary {
    /// A readable multi-line table for the terminal: one small writer per section, in order.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        self.text_totals(&mut o);
        self.text_dwell(&mut o);
        self.text_now(&mut o);
        self.text_time_wait(&mut o);
        self.text_idle(&mut o);
        self.text_resets(&mut o);
        self.text_close_wait(&mut o);
        self.text_bookkeeping(&mut o);
        self.text_kernel_checks(&mut o);
        self.text_extra(&mut o);
        o
    }

    // Writing to a String cannot fail: the sections ignore `fmt::Result`.

    fn text_totals(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "summary over {}: {} transitions, {} closes ({} handed to TIME_WAIT), {} CLOSE_WAIT leaks",
            fmt_ns(self.duration_ns),
            self.transitions,
            self.closes,
            self.closes_time_wait,
            self.leaks
        );
        let kinds: Vec<String> = CloseKind::ALL
            .iter()
            .map(|&k| format!("{} {}", k.name(), self.closes_by_kind.get(k)))
            .collect();
        let _ = writeln!(o, "closes by kind: {}", kinds.join(", "));
        let roles: Vec<String> = Role::ALL
            .iter()
            .map(|&r| format!("{} {}", r.name(), self.closes_by_role.get(r)))
            .collect();
        let _ = writeln!(o, "closes by role: {}", roles.join(", "));
    }

    fn text_dwell(&self, o: &mut String) {
        if !self.dwell.0.iter().any(Option::is_some) {
            return;
        }
        let _ = writeln!(
            o,
            "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "dwell", "count", "p50", "p90", "p99", "max"
        );
        for st in TcpState::ALL {
            if let Some(d) = self.dwell.get(st) {
                let _ = writeln!(
                    o,
                    "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    st.name(),
                    d.count,
                    fmt_ns(d.p50_ns),
                    fmt_ns(d.p90_ns),
                    fmt_ns(d.p99_ns),
                    fmt_ns(d.max_ns)
                );
            }
        }
    }

    fn text_now(&self, o: &mut String) {
        let now: Vec<String> = TcpState::ALL
            .iter()
            .filter_map(|&st| {
                self.sockets_now
                    .get(st)
                    .map(|n| format!("{} {n}", st.name()))
            })
            .collect();
        let _ = writeln!(
            o,
            "now: {} tracked (capacity {}){}{}",
            self.tracked,
            self.capacity,
            if now.is_empty() { "" } else { ": " },
            now.join(", ")
        );
    }

    fn text_idle(&self, o: &mut String) {
        if self.idle_before_close.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "idle/close", "count", "p50", "p90", "p99", "max"
        );
        for d in &self.idle_before_close {
            let _ = writeln!(
                o,
                "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
                d.kind,
                d.count,
                fmt_ns(d.p50_ns),
                fmt_ns(d.p90_ns),
                fmt_ns(d.p99_ns),
                fmt_ns(d.max_ns)
            );
        }
    }

    fn text_resets(&self, o: &mut String) {
        if self.resets_top.is_empty() {
            return;
        }
        let _ = writeln!(o, "RSTs sent (top {}):", self.resets_top.len());
        for r in &self.resets_top {
            let _ = write!(o, "  {:<28} {:>8} {}", r.remote, r.resets, r.reason);
            if let Some(ns) = r.netns {
                let _ = write!(o, "  netns {ns}");
            }
            o.push('\n');
        }
    }

    fn text_time_wait(&self, o: &mut String) {
        if self.time_wait_top.is_empty() {
            return;
        }
        let _ = writeln!(o, "TIME_WAIT by remote (top {}):", self.time_wait_top.len());
        for r in &self.time_wait_top {
            let _ = write!(
                o,
                "  {:<28} {:>8} TIME_WAIT, ephemeral ports {}/{} ({:.1}%)",
                r.remote,
                r.time_wait,
                r.ephemeral_ports_used,
                r.ephemeral_port_range,
                r.ephemeral_ports_used as f64 * 100.0 / r.ephemeral_port_range.max(1) as f64
            );
            if let Some(ns) = r.netns {
                let _ = write!(o, "  netns {ns}");
            }
            o.push('\n');
        }
    }

    fn text_close_wait(&self, o: &mut String) {
        let _ = write!(
            o,
            "CLOSE_WAIT now: {}, leaking {}",
            self.close_wait_now, self.leaking_now
        );
        if let Some(age) = self.oldest_close_wait_ns {
            let _ = write!(o, ", oldest {}", fmt_ns(age));
        }
        o.push('\n');
    }

    fn text_bookkeeping(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "bookkeeping: evicted {} (leaking {}), recycled addresses {}, seeded {}, first seen mid-life {}, gaps {}, out of order {}, stale {}",
            self.evicted,
            self.evicted_leaking,
            self.recycled,
            self.seeded,
            self.first_seen_midlife,
            self.gaps,
            self.out_of_order,
            self.stale_dropped
        );
    }

    /// What asking the kernel found (only when it found something).
    fn text_kernel_checks(&self, o: &mut String) {
        if self.closed_unseen == 0 && self.state_corrected == 0 {
            return;
        }
        let _ = writeln!(
            o,
            "checked against the kernel: {} sockets closed while events were lost, {} states corrected",
            self.closed_unseen, self.state_corrected
        );
    }

    fn text_extra(&self, o: &mut String) {
        let mut extra = Vec::new();
        if let Some(n) = self.events_lost {
            extra.push(format!("events lost {n}"));
        }
        if let Some(n) = self.skipped_lines {
            match self.long_lines {
                Some(long) if long > 0 => {
                    extra.push(format!("skipped lines {n} ({long} too long)"));
                }
                _ => extra.push(format!("skipped lines {n}")),
            }
        }
        if let Some(n) = self.time_jumps {
            extra.push(format!("time jumps ignored {n}"));
        }
        if let Some(n) = self.restarts {
            extra.push(format!(
                "input restarts {n} ({} sockets forgotten)",
                self.restart_forgotten.unwrap_or(0)
            ));
        }
        if let Some(b) = self.baseline {
            extra.push(format!(
                "startup baseline {} sockets in {} network namespaces ({} unreadable) in {}",
                b.sockets,
                b.namespaces,
                b.namespaces_failed,
                fmt_ns(b.took_us.saturating_mul(1_000))
            ));
        }
        if let Some(r) = self.reconcile
            && r.runs > 0
        {
            extra.push(format!(
                "reconciled with the kernel {} times ({} after lost events, {} in all): {} closed unseen, {} states corrected, {} seeded",
                r.runs,
                r.after_loss,
                fmt_ns(r.total_us.saturating_mul(1_000)),
                r.closed_unseen,
                r.state_corrected,
                r.seeded
            ));
        }
        if !extra.is_empty() {
            let _ = writeln!(o, "{}", extra.join(", "));
        }
    }
}

/// A duration for people: `850ns`, `12.3µs`, `4.56ms`, `1.23s`, `2m03s`, `1h02m`.
pub fn fmt_ns(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    match ns {
        n if n < US => format!("{n}ns"),
        n if n < MS => format!("{:.1}µs", n as f64 / US as f64),
        n if n < S => format!("{:.2}ms", n as f64 / MS as f64),
        n if n < 60 * S => format!("{:.2}s", n as f64 / S as f64),
        n if n < 3_600 * S => format!("{}m{:02}s", n / (60 * S), n / S % 60),
        n => format!("{}h{:02}m", n / (3_600 * S), n / (60 * S) % 60),
    }
}

/// Summaries with every counter set, for the golden outputs of the sinks and the metrics.
#[cfg(test)]
pub(crate) fn samples() -> (ReconcileSummary, HolderSummary) {
    (
        ReconcileSummary {
            runs: 12,
            after_loss: 2,
            total_us: 48_500,
            max_us: 9_000,
            suspects: 25,
            closed_unseen: 20,
            state_corrected: 3,
            seeded: 1,
            unreachable: 1,
        },
        HolderSummary {
            rounds: 7,
            sockets: 40,
            lookups: 30,
            dumps: 1,
            confirmed: 38,
            corrected: 9,
            not_accepted: 2,
            unanswered: 1,
            total_us: 2_100,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people() {
        assert_eq!(fmt_ns(850), "850ns");
        assert_eq!(fmt_ns(12_300), "12.3µs");
        assert_eq!(fmt_ns(4_560_000), "4.56ms");
        assert_eq!(fmt_ns(1_230_000_000), "1.23s");
        assert_eq!(fmt_ns(123_000_000_000), "2m03s");
        assert_eq!(fmt_ns(3_720_000_000_000), "1h02m");
    }
}
