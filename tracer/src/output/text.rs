//! The text sink: a readable table of transitions (header line first), one line per close and
//! per leak, and the summary as a table at the end. Columns are padded on the stack; lines go
//! into one reused buffer.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::{
    Batched, Dur, FormatSink, Meta, Show, StackStr, dec_into, dec_zeros_into, dur_into, dwell_pairs,
};
use crate::engine::Summary;
use crate::event::{EndpointFmt, Transition};
use crate::pipeline::{RecordContext, Sink};
use crate::record::{AgeSource, CloseKind, CloseRecord, LeakRecord, Owner};

/// Writes the table text.
pub struct TextSink<W: Write> {
    lines: Batched<W, String>,
    show: Show,
    /// Wall-clock minus monotonic time (ns), to print readable times.
    realtime_offset_ns: i128,
    header_done: bool,
    /// The tracer's own network namespace: a socket's namespace is named only when it is
    /// another one.
    own_netns: u32,
    /// The time of day's `HH:MM:SS.` for the last second printed.
    clock: Clock,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, show: Show, realtime_offset_ns: i128) -> Self {
        Self {
            lines: Batched::new(out, String::with_capacity(64 * 1024)),
            show,
            realtime_offset_ns,
            header_done: false,
            own_netns: 0,
            clock: Clock::default(),
        }
    }

    /// Sets the tracer's own network namespace (a line names a socket's namespace only when
    /// it is another one).
    #[must_use]
    pub fn with_own_netns(mut self, netns: u32) -> Self {
        self.own_netns = netns;
        self
    }

    /// Sets the wall-clock minus monotonic offset used to print times (a replay learns it from
    /// the recording's meta line).
    pub fn set_realtime_offset_ns(&mut self, offset_ns: i128) {
        self.realtime_offset_ns = offset_ns;
    }

    /// Gives back the writer (tests).
    pub fn into_inner(self) -> W {
        self.lines.into_inner()
    }

    /// The column titles, once, before the first transition.
    fn header(&mut self) {
        if !self.header_done && self.show.transitions {
            self.header_done = true;
            let _ = writeln!(
                self.lines.buf,
                "{:<15} {:>7} {:<15} {:<23} {:<23} {:<27} {:>9}",
                "TIME", "PID", "COMM", "LOCAL", "REMOTE", "TRANSITION", "IN OLD"
            );
        }
    }

    fn time(&self, ts_ns: u64) -> WallTime {
        WallTime(ts_ns, self.realtime_offset_ns)
    }
}

impl<W: Write> FormatSink for TextSink<W> {
    fn show(&self) -> Show {
        self.show
    }

    /// Nothing: the settings are written in JSON recordings only.
    fn meta(&mut self, _meta: &Meta) -> io::Result<()> {
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.raw_line(&summary.render_text())
    }

    fn raw_line(&mut self, line: &str) -> io::Result<()> {
        let buf = &mut self.lines.buf;
        buf.push_str(line);
        if !line.ends_with('\n') {
            buf.push('\n');
        }
        self.lines.end_line()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lines.flush()
    }
}

impl<W: Write> Sink for TextSink<W> {
    fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
        if !self.show.transitions {
            return Ok(());
        }
        self.header();
        // `{time} {pid:>7} {comm:<15} {local:<23} {remote:<23} {old -> new:<27} {dwell:>9}`,
        // written by hand: this is most of what text mode prints (ten lines per connection).
        let b = &mut self.lines.buf;
        self.clock.push(b, t.ts_ns, self.realtime_offset_ns);
        b.push(' ');
        spaces(b, 7usize.saturating_sub(digits(u64::from(t.task_pid))));
        let _ = dec_into(b, u64::from(t.task_pid));
        b.push(' ');
        let start = b.len();
        // Comm's Display is `untrusted::Escaped`.
        let _ = write!(b, "{}", t.task_comm);
        pad_left(b, start, 15);
        b.push(' ');
        let start = b.len();
        endpoint_into(b, t.saddr, t.sport);
        pad_ascii(b, start, 23);
        b.push(' ');
        let start = b.len();
        endpoint_into(b, t.daddr, t.dport);
        pad_ascii(b, start, 23);
        b.push(' ');
        let start = b.len();
        b.push_str(t.old.name());
        b.push_str(" -> ");
        b.push_str(t.new.name());
        pad_ascii(b, start, 27);
        b.push(' ');
        match t.dwell_ns {
            Some(d) => {
                let mut s = StackStr::new();
                let _ = dur_into(&mut s, d);
                // `µ` is two bytes and one column.
                spaces(b, 9usize.saturating_sub(s.as_str().chars().count()));
                b.push_str(s.as_str());
            }
            None => b.push_str("        -"),
        }
        if let Some(o) = owner
            && o.pid != t.task_pid
        {
            b.push_str("  owner ");
            let _ = dec_into(b, u64::from(o.pid));
            let _ = write!(b, " {}", o.comm);
        }
        netns_text(b, t.netns, self.own_netns);
        b.push('\n');
        self.lines.end_line()
    }

    fn close(&mut self, r: &CloseRecord, cx: &RecordContext) -> io::Result<()> {
        if !self.show.closes {
            return Ok(());
        }
        // `{time} CLOSE {kind:<14} {role:<8} {local} -> {remote} `, by hand.
        let b = &mut self.lines.buf;
        self.clock.push(b, r.ts_ns, self.realtime_offset_ns);
        b.push_str(" CLOSE ");
        let start = b.len();
        b.push_str(r.kind.name());
        pad_ascii(b, start, 14);
        b.push(' ');
        let start = b.len();
        b.push_str(r.role.name());
        pad_ascii(b, start, 8);
        b.push(' ');
        endpoint_into(b, r.id.saddr, r.id.sport);
        b.push_str(" -> ");
        endpoint_into(b, r.id.daddr, r.id.dport);
        b.push(' ');
        close_path_text(b, r);
        close_end_text(b, r);
        owner_text(b, r.owner.as_ref());
        container_text(b, cx);
        netns_text(b, r.id.netns, self.own_netns);
        b.push('\n');
        self.lines.end_line()
    }

    /// A reset this host sent, among the transitions: `RST → remote  reason (state)`.
    fn reset(&mut self, r: &crate::rst::ResetSent) -> io::Result<()> {
        if !self.show.transitions {
            return Ok(());
        }
        self.header();
        // Laid out like a transition line: `{time}       - -  {local:<23} {remote:<23} RST sent: …`.
        let b = &mut self.lines.buf;
        self.clock.push(b, r.ts_ns, self.realtime_offset_ns);
        b.push_str("       - -               ");
        let start = b.len();
        endpoint_into(b, r.saddr, r.sport);
        pad_ascii(b, start, 23);
        b.push(' ');
        let start = b.len();
        endpoint_into(b, r.daddr, r.dport);
        pad_ascii(b, start, 23);
        b.push_str(" RST sent: ");
        b.push_str(r.reason.name());
        match r.state {
            Some(st) => {
                let _ = write!(b, " (from {})", st.name());
            }
            None => b.push_str(" (no socket)"),
        }
        netns_text(b, r.netns, self.own_netns);
        b.push('\n');
        self.lines.end_line()
    }

    fn leak(&mut self, r: &LeakRecord, cx: &RecordContext) -> io::Result<()> {
        if !self.show.leaks {
            return Ok(());
        }
        let time = self.time(r.ts_ns);
        let b = &mut self.lines.buf;
        let _ = write!(
            b,
            "{} LEAK  CLOSE_WAIT for {}{}",
            time,
            Dur(r.age_ns),
            if r.age_source == AgeSource::Estimate {
                " (estimated)"
            } else {
                ""
            },
        );
        if let Some(idle) = r.idle_ns {
            let _ = write!(b, "  idle {}", Dur(idle));
        }
        if r.accepted == Some(false) {
            never_accepted_text(b, cx);
        } else {
            leak_owner_text(b, r.owner.as_ref(), cx);
            fds_text(b, &cx.fds);
        }
        let _ = write!(
            b,
            "  local {}  peer {} closed",
            EndpointFmt(r.id.saddr, r.id.sport),
            EndpointFmt(r.id.daddr, r.id.dport)
        );
        if let Some(n) = cx.unread_bytes.filter(|&n| n > 0) {
            let _ = write!(b, "  {n} bytes never read");
        }
        if let Some(n) = cx.unsent_bytes.filter(|&n| n > 0) {
            let _ = write!(b, "  {n} bytes unacknowledged");
        }
        if let Some(n) = cx.close_wait_held {
            let _ = write!(
                b,
                "  — it holds {n} CLOSE_WAIT socket{} now",
                if n == 1 { "" } else { "s" }
            );
        }
        container_text(b, cx);
        netns_text(b, r.id.netns, self.own_netns);
        b.push('\n');
        self.lines.end_line()
    }
}

/// `A>B>C  life D  A=d B=d`: the states a close went through, its lifetime and its time per
/// state.
fn close_path_text(b: &mut String, r: &CloseRecord) {
    for (i, s) in r.states.iter().enumerate() {
        if i > 0 {
            b.push('>');
        }
        b.push_str(s.name());
    }
    if let Some(l) = r.lifetime_ns {
        b.push_str("  life ");
        let _ = dur_into(b, l);
    }
    for (st, d) in dwell_pairs(&r.dwell_ns) {
        b.push(' ');
        b.push_str(st);
        b.push('=');
        let _ = dur_into(b, d);
    }
}

/// Shortest idle time before close a text close line shows.
const TEXT_IDLE_MIN_NS: u64 = 1_000_000_000;

/// `  →TIME_WAIT`, `  RST by …`, `  idle …`, `  LEAKED`: how a close ended.
fn close_end_text(b: &mut String, r: &CloseRecord) {
    if r.time_wait {
        b.push_str("  →TIME_WAIT");
    }
    match r.reset_by {
        Some(by) => {
            let _ = write!(b, "  RST by {}", by.name());
            if let Some(why) = r.rst_reason {
                let _ = write!(b, " ({})", why.name());
            }
        }
        None if r.kind == CloseKind::Reset => {
            b.push_str("  RST by ?");
        }
        None => {}
    }
    // The silence before the end, when it is long enough to matter (an idle timeout); JSON
    // carries every value.
    if let Some(rx) = r.idle.rx_ns.filter(|&ns| ns >= TEXT_IDLE_MIN_NS) {
        let _ = write!(b, "  idle {}", Dur(rx));
    }
    if r.leaked {
        b.push_str("  LEAKED");
    }
    if r.closed_unseen {
        b.push_str("  CLOSE UNSEEN (events lost; gone from the kernel)");
    }
}

/// `  pid N (comm) `cmdline``, or `  owner unknown`: who holds a leaked socket.
fn leak_owner_text(b: &mut String, owner: Option<&Owner>, cx: &RecordContext) {
    match owner {
        Some(o) => {
            let _ = write!(b, "  pid {} ({})", o.pid, o.comm);
            if let Some(c) = &cx.cmdline {
                let _ = write!(b, " `{}`", c.shown());
            }
        }
        None => b.push_str("  owner unknown"),
    }
}

/// `  NEVER ACCEPTED: in the accept queue of 0.0.0.0:8080 (pid N (comm)), 129/128 queued`: a
/// stalled accept loop, not a forgotten socket.
fn never_accepted_text(b: &mut String, cx: &RecordContext) {
    b.push_str("  NEVER ACCEPTED: in the accept queue of ");
    match &cx.listener {
        Some(l) => {
            let _ = write!(b, "{}", EndpointFmt(l.addr, l.port));
            if let Some(o) = l.owner {
                let _ = write!(b, " (pid {} ({}))", o.pid, o.comm);
            }
            let _ = write!(b, ", {}/{} queued", l.accept_queue, l.backlog);
        }
        None => b.push_str("its listener"),
    }
}

/// `  fd 7` / `  fds 3,9`: where the owner holds the socket.
fn fds_text(b: &mut String, fds: &[u32]) {
    if fds.is_empty() {
        return;
    }
    b.push_str(if fds.len() == 1 { "  fd " } else { "  fds " });
    for (i, fd) in fds.iter().enumerate() {
        if i > 0 {
            b.push(',');
        }
        let _ = write!(b, "{fd}");
    }
}

/// `  container ID12` when the owner runs in a container.
fn container_text(b: &mut String, cx: &RecordContext) {
    if let Some(id) = cx.cgroup.as_ref().and_then(|c| c.container_id) {
        let _ = write!(b, "  container {}", id.short());
    }
}

/// `  netns N` when the socket is in another network namespace than the tracer.
fn netns_text(b: &mut String, netns: u32, own: u32) {
    if netns != 0 && netns != own {
        let _ = write!(b, "  netns {netns}");
    }
}

fn owner_text(b: &mut String, owner: Option<&Owner>) {
    if let Some(o) = owner {
        b.push_str("  pid ");
        let _ = dec_into(b, u64::from(o.pid));
        // Comm's Display is `untrusted::Escaped`.
        let _ = write!(b, " ({})", o.comm);
    }
}

const SPACES: &str = "                                                                ";

/// Characters written to `b` since `start` (the columns count characters, as `{:<N}` does).
fn written_chars(b: &str, start: usize) -> usize {
    let s = &b[start..];
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// Pads what was written since `start` to `width` characters with spaces after it (`{:<N}`).
fn pad_left(b: &mut String, start: usize, width: usize) {
    let n = written_chars(b, start);
    if n < width {
        b.push_str(&SPACES[..(width - n).min(SPACES.len())]);
    }
}

/// Pads what was written since `start`, ASCII only, to `width` with spaces after it.
fn pad_ascii(b: &mut String, start: usize, width: usize) {
    spaces(b, width.saturating_sub(b.len() - start));
}

/// `n` spaces.
fn spaces(b: &mut String, n: usize) {
    b.push_str(&SPACES[..n.min(SPACES.len())]);
}

/// Decimal digits of `n`.
fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// `addr:port` (`[addr]:port` for IPv6) as [`EndpointFmt`] writes it, IPv4 by hand.
fn endpoint_into(b: &mut String, addr: std::net::IpAddr, port: u16) {
    match addr {
        std::net::IpAddr::V4(a) => {
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    b.push('.');
                }
                let _ = dec_into(b, u64::from(o));
            }
            b.push(':');
            let _ = dec_into(b, u64::from(port));
        }
        std::net::IpAddr::V6(_) => {
            let _ = write!(b, "{}", EndpointFmt(addr, port));
        }
    }
}

/// The time of day of kernel monotonic timestamps, `HH:MM:SS.ffffff` (UTC) as [`WallTime`]
/// prints it, written by hand: the `HH:MM:SS.` part is kept for the second it was made for.
#[derive(Default)]
struct Clock {
    /// Seconds of the day the prefix is for.
    sec: Option<u64>,
    prefix: StackStr,
}

impl Clock {
    fn push(&mut self, b: &mut String, ts_ns: u64, offset_ns: i128) {
        let real = i128::from(ts_ns) + offset_ns;
        let day_ns = real.rem_euclid(86_400 * 1_000_000_000) as u64;
        let secs = day_ns / 1_000_000_000;
        if self.sec != Some(secs) {
            self.sec = Some(secs);
            self.prefix = StackStr::new();
            let p = &mut self.prefix;
            let _ = dec_zeros_into(p, secs / 3600, 2);
            let _ = p.write_str(":");
            let _ = dec_zeros_into(p, secs / 60 % 60, 2);
            let _ = p.write_str(":");
            let _ = dec_zeros_into(p, secs % 60, 2);
            let _ = p.write_str(".");
        }
        b.push_str(self.prefix.as_str());
        let _ = dec_zeros_into(b, day_ns % 1_000_000_000 / 1_000, 6);
    }
}

/// Kernel monotonic ns printed as local wall-clock time `HH:MM:SS.ffffff` (UTC).
struct WallTime(u64, i128);

impl std::fmt::Display for WallTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let real = i128::from(self.0) + self.1;
        let day_ns = real.rem_euclid(86_400 * 1_000_000_000);
        let secs = day_ns / 1_000_000_000;
        let micros = (day_ns % 1_000_000_000) / 1_000;
        write!(
            f,
            "{:02}:{:02}:{:02}.{:06}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            micros
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures;

    /// What the text output writes for the fixtures (the same bytes as before it moved to its own
    /// sink, plus what #18 added: `CLOSE UNSEEN`, the kernel checks and reconciliation).
    const GOLDEN: &str = concat!(
        "TIME                PID COMM            LOCAL                   REMOTE                  TRANSITION                     IN OLD\n",
        "18:33:55.567890   12347 python3         127.0.0.1:40000         10.1.2.3:8080           CLOSE -> SYN_SENT                   -  owner 1000 python3\n",
        "18:33:55.567890   12348 a\"b\\\\c\\x01      [::1]:40001             [2001:db8::42]:8080     ESTABLISHED -> CLOSE_WAIT      73.9µs  owner 1001 a\"b\\\\c\\x01\n",
        "18:33:55.567890   12349 t\\tn\\nr\\r\\x08\\x0c\\x7f [::ffff:127.0.0.1]:40002 [::ffff:192.168.1.9]:8080 FIN_WAIT1 -> FIN_WAIT1              -\n",
        "18:33:55.567890   12350 héllo/ü         127.0.0.1:40003         10.1.2.3:8080           LISTEN -> CLOSE               221.7µs  owner 1003 héllo/ü\n",
        "18:33:55.567890   12351 python3         [::1]:40004             [2001:db8::42]:8080     CLOSE -> SYN_SENT                   -  owner 1004 python3\n",
        "18:33:55.567890   12352 a\"b\\\\c\\x01      [::ffff:127.0.0.1]:40005 [::ffff:192.168.1.9]:8080 ESTABLISHED -> CLOSE_WAIT     369.6µs\n",
        "18:33:55.567890   12353 t\\tn\\nr\\r\\x08\\x0c\\x7f 127.0.0.1:40006         10.1.2.3:8080           FIN_WAIT1 -> FIN_WAIT1              -  owner 1006 t\\tn\\nr\\r\\x08\\x0c\\x7f\n",
        "18:33:55.567890   12354 héllo/ü         [::1]:40007             [2001:db8::42]:8080     LISTEN -> CLOSE               517.4µs  owner 1007 héllo/ü\n",
        "18:33:56.067890       - -               127.0.0.1:8080          10.1.2.3:50004          RST sent: TCP_ABORT_ON_CLOSE (from CLOSE)  netns 4026532301\n",
        "18:33:56.067890       - -               [::1]:9                 [2001:db8::42]:41000    RST sent: NO_SOCKET (no socket)\n",
        "18:33:56.067890       - -               127.0.0.1:8080          192.168.1.9:50006       RST sent: unknown (from TIME_WAIT)  netns 4026532301\n",
        "18:33:56.567890 CLOSE active         client   127.0.0.1:8080 -> 10.1.2.3:50000 SYN_SENT>ESTABLISHED>FIN_WAIT1>FIN_WAIT2>CLOSE  life 20.56ms ESTABLISHED=20.31ms SYN_SENT=202.3µs CLOSE_WAIT=0ns  →TIME_WAIT  pid 1000 (python3)  netns 4026532301\n",
        "18:33:56.567890 CLOSE passive        server   [::1]:8080 -> [2001:db8::42]:50001   idle 3.00s  LEAKED  netns 4026532301\n",
        "18:33:56.567890 CLOSE simultaneous   listener [::ffff:127.0.0.1]:8080 -> [::ffff:192.168.1.9]:50002 ESTABLISHED>CLOSE_WAIT>LAST_ACK>CLOSE  life 20.56ms ESTABLISHED=20.31ms SYN_SENT=202.3µs CLOSE_WAIT=2ns  idle 5m50s  pid 1002 (t\\tn\\nr\\r\\x08\\x0c\\x7f)  container 4f1c2a9b8d7e  netns 4026532301\n",
        "18:33:56.567890 CLOSE reset          unknown  127.0.0.1:8080 -> 10.1.2.3:50003 SYN_SENT>ESTABLISHED>FIN_WAIT1>FIN_WAIT2>CLOSE ESTABLISHED=20.31ms SYN_SENT=202.3µs CLOSE_WAIT=3ns  RST by peer  pid 1003 (héllo/ü)  netns 4026532301\n",
        "18:33:56.567890 CLOSE abort          client   [::1]:8080 -> [2001:db8::42]:50004   life 20.56ms  RST by local (TCP_ABORT_ON_CLOSE)  idle 3.00s\n",
        "18:33:56.567890 CLOSE timeout        server   [::ffff:127.0.0.1]:8080 -> [::ffff:192.168.1.9]:50005 ESTABLISHED>CLOSE_WAIT>LAST_ACK>CLOSE ESTABLISHED=20.31ms SYN_SENT=202.3µs CLOSE_WAIT=5ns  idle 5m50s  pid 1005 (a\"b\\\\c\\x01)  netns 4026532301\n",
        "18:33:56.567890 CLOSE connect_failed listener 127.0.0.1:8080 -> 10.1.2.3:50006 SYN_SENT>ESTABLISHED>FIN_WAIT1>FIN_WAIT2>CLOSE  life 20.56ms ESTABLISHED=20.31ms SYN_SENT=202.3µs CLOSE_WAIT=6ns  pid 1006 (t\\tn\\nr\\r\\x08\\x0c\\x7f)  container 4f1c2a9b8d7e  netns 4026532301\n",
        "18:33:56.567890 CLOSE listener       unknown  [::1]:8080 -> [2001:db8::42]:50007   idle 3.00s  netns 4026532301\n",
        "18:33:56.567890 CLOSE unknown        client   [::ffff:127.0.0.1]:8080 -> [::ffff:192.168.1.9]:50008 ESTABLISHED>CLOSE_WAIT>LAST_ACK>CLOSE  life 20.56ms ESTABLISHED=20.31ms SYN_SENT=202.3µs CLOSE_WAIT=8ns  idle 5m50s  CLOSE UNSEEN (events lost; gone from the kernel)  pid 1008 (python3)  netns 4026532301\n",
        "18:33:57.567890 LEAK  CLOSE_WAIT for 30.00s  idle 30.00s  pid 1000 (python3)  local [::1]:8080  peer [2001:db8::42]:50001 closed  netns 4026532301\n",
        "18:33:57.567890 LEAK  CLOSE_WAIT for 30.00s (estimated)  pid 1001 (a\"b\\\\c\\x01)  fd 7  local [::ffff:127.0.0.1]:8080  peer [::ffff:192.168.1.9]:50002 closed  5 bytes never read  — it holds 1 CLOSE_WAIT socket now  netns 4026532301\n",
        "18:33:57.567890 LEAK  CLOSE_WAIT for 30.00s  idle 30.00s  NEVER ACCEPTED: in the accept queue of its listener  local 127.0.0.1:8080  peer 10.1.2.3:50003 closed  1448 bytes unacknowledged  — it holds 17 CLOSE_WAIT sockets now  container 4f1c2a9b8d7e  netns 4026532301\n",
        "18:33:57.567890 LEAK  CLOSE_WAIT for 30.00s (estimated)  NEVER ACCEPTED: in the accept queue of 0.0.0.0:8080 (pid 1009 (a\"b\\\\c\\x01)), 129/128 queued  local [::1]:8080  peer [2001:db8::42]:50004 closed  120 bytes never read\n",
        "18:33:57.567890 LEAK  CLOSE_WAIT for 30.00s  idle 30.00s  pid 1004 (python3)  local [::ffff:127.0.0.1]:8080  peer [::ffff:192.168.1.9]:50005 closed  netns 4026532301\n",
        "18:33:57.567890 LEAK  CLOSE_WAIT for 30.00s (estimated)  owner unknown  fd 7  local 127.0.0.1:8080  peer 10.1.2.3:50006 closed  5 bytes never read  — it holds 1 CLOSE_WAIT socket now  netns 4026532301\n",
        "summary over 0ns: 0 transitions, 0 closes (0 handed to TIME_WAIT), 0 CLOSE_WAIT leaks\n",
        "closes by kind: active 0, passive 0, simultaneous 0, reset 0, abort 0, timeout 0, connect_failed 0, listener 0, unknown 0\n",
        "closes by role: client 0, server 0, listener 0, unknown 0\n",
        "now: 0 tracked (capacity 1000000)\n",
        "CLOSE_WAIT now: 0, leaking 0\n",
        "bookkeeping: evicted 0 (leaking 0), recycled addresses 0, seeded 0, first seen mid-life 0, gaps 0, out of order 0, stale 0\n",
        "summary over 0ns: 0 transitions, 0 closes (0 handed to TIME_WAIT), 0 CLOSE_WAIT leaks\n",
        "closes by kind: active 0, passive 0, simultaneous 0, reset 0, abort 0, timeout 0, connect_failed 0, listener 0, unknown 0\n",
        "closes by role: client 0, server 0, listener 0, unknown 0\n",
        "now: 0 tracked (capacity 1000000)\n",
        "TIME_WAIT by remote (top 1):\n",
        "  127.0.0.1:5432                      9 TIME_WAIT, ephemeral ports 10/28232 (0.0%)  netns 4026532301\n",
        "idle/close        count        p50        p90        p99        max\n",
        "reset                 7      5m49s      5m50s      5m50s      5m50s\n",
        "RSTs sent (top 2):\n",
        "  10.0.0.7                           50 NO_SOCKET\n",
        "  ::1                                 2 TCP_ABORT_ON_CLOSE  netns 4026532301\n",
        "CLOSE_WAIT now: 0, leaking 0\n",
        "bookkeeping: evicted 0 (leaking 0), recycled addresses 0, seeded 0, first seen mid-life 0, gaps 0, out of order 0, stale 0\n",
        "checked against the kernel: 20 sockets closed while events were lost, 3 states corrected\n",
        "events lost 1, skipped lines 2 (3 too long), time jumps ignored 4, input restarts 5 (6 sockets forgotten), startup baseline 7 sockets in 2 network namespaces (0 unreadable) in 1.23ms, reconciled with the kernel 12 times (2 after lost events, 48.50ms in all): 20 closed unseen, 3 states corrected, 1 seeded\n",
    );

    #[test]
    fn lines_are_the_golden_bytes() {
        let off = 1_764_441_234_567_890_123;
        let mut sink = TextSink::new(Vec::new(), Show::ALL, off).with_own_netns(4_026_531_840);
        fixtures::render(&mut sink);
        for s in [fixtures::summary_plain(), fixtures::summary_full()] {
            sink.summary(&s).unwrap();
        }
        let out = String::from_utf8(sink.into_inner()).unwrap();
        if let Ok(p) = std::env::var("TRACER_DUMP_GOLDEN") {
            std::fs::write(p, &out).unwrap();
        }
        for (got, want) in out.split_inclusive('\n').zip(GOLDEN.split_inclusive('\n')) {
            assert_eq!(got, want);
        }
        assert_eq!(out, GOLDEN);
    }
}
