//! Drawing `tracer top` with ratatui: a header line, the host strip, the process table (or one
//! process's CLOSE_WAIT sockets), dwell per state with a sparkline, and a key line. Pure: it
//! draws a [`View`] and a [`UiState`] into a frame, and is tested on ratatui's test backend.
//!
//! Small terminals: the dwell panel goes first (below 24 lines), then the host strip (below
//! 10), and table columns are dropped by priority as the width shrinks (container, then the
//! closes/s columns, ...); below 20×3 a single line asks for a larger terminal.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row as TRow, Table, TableState, Wrap};

use super::model::{Column, DWELL_WINDOW, OwnerId, Row, SPARK_LEN, View};
use super::state::{Mode, UiState};
use crate::engine::CloseWaitSocket;
use crate::event::{Comm, EndpointFmt, TcpState};
use crate::output::Dur;
use crate::pipeline::SocketForensics;
use crate::record::AgeSource;

/// What the header line says besides the view.
pub struct Status<'a> {
    /// Wall-clock time of the view (HH:MM:SS).
    pub clock: &'a str,
    pub refresh: Duration,
    pub threshold_ns: u64,
    /// `--pid`.
    pub pid: Option<u32>,
    /// A note (a warning logged while the screen is up, `--pid`'s process exited).
    pub note: Option<&'a str>,
}

/// One process's CLOSE_WAIT sockets, read from the engine for the sockets screen.
pub struct SocketsView {
    pub owner: OwnerId,
    pub comm: Comm,
    /// Oldest first.
    pub sockets: Vec<CloseWaitSocket>,
    /// Their fd numbers and unread bytes, in the same order (empty when not read).
    pub forensics: Vec<SocketForensics>,
    /// The tracer's own network namespace (another one is named).
    pub own_netns: u32,
    /// The process's command line, while it runs.
    pub cmdline: Option<crate::untrusted::Cmdline>,
    /// The process has exited (its sockets are gone or going).
    pub exited: bool,
}

/// Smallest terminal anything but the "too small" line is drawn on.
pub const MIN_WIDTH: u16 = 20;
pub const MIN_HEIGHT: u16 = 3;

/// Draws one frame.
pub fn draw(
    f: &mut Frame,
    view: &View,
    ui: &UiState,
    sockets: Option<&SocketsView>,
    status: &Status,
) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small ({}x{}): tracer top needs {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        );
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let host_h = if area.height >= 10 { 2 } else { 0 };
    let panel = view.time_wait_by_remote.as_ref();
    let dwell_rows = view.dwell.len() as u16 + 2;
    let tw_rows = panel.map_or(0, |p| p.rows.len() as u16 + 2);
    // The TIME_WAIT panel sits beside the time-in-state panel from 100 columns, below it on a
    // narrower terminal with room (34 lines), and is left out otherwise.
    let beside = area.width >= 100 && panel.is_some();
    let (dwell_h, tw_h) = match area.height {
        h if h < 24 => (0, 0),
        _ if beside => (dwell_rows.max(tw_rows).clamp(3, 12), 0),
        h if h >= 34 && panel.is_some() => (dwell_rows.clamp(3, 12), tw_rows.clamp(3, 12)),
        _ => (dwell_rows.clamp(3, 12), 0),
    };
    let [header, host, body, dwell, below, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(host_h),
        Constraint::Min(1),
        Constraint::Length(dwell_h),
        Constraint::Length(tw_h),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(header_line(status)), header);
    if host_h > 0 {
        f.render_widget(Paragraph::new(host_lines(view)), host);
    }
    match (&ui.mode, sockets) {
        (Mode::Sockets { .. }, Some(s)) => draw_sockets(f, body, s, ui.scroll),
        _ => draw_table(f, body, view, ui),
    }
    match panel {
        Some(p) if dwell_h > 0 && beside => {
            let [left, right] =
                Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)])
                    .areas(dwell);
            draw_dwell(f, left, view);
            draw_time_wait(f, right, p);
        }
        _ if dwell_h > 0 => draw_dwell(f, dwell, view),
        _ => {}
    }
    if let Some(p) = panel.filter(|_| tw_h > 0) {
        draw_time_wait(f, below, p);
    }
    f.render_widget(Paragraph::new(key_line(ui)), footer);
}

fn header_line(s: &Status) -> Line<'static> {
    let mut spans = vec![
        Span::from("tracer top").bold(),
        Span::from(format!(
            "  {}  every {}  leak threshold {}",
            s.clock,
            Dur(s.refresh.as_nanos() as u64),
            Dur(s.threshold_ns)
        )),
    ];
    if let Some(pid) = s.pid {
        spans.push(Span::from(format!("  --pid {pid}")));
    }
    if let Some(n) = s.note {
        spans.push(Span::from(format!("  {n}")).yellow());
    }
    Line::from(spans)
}

/// States in the host strip, most telling first.
const HOST_STATES: [(TcpState, &str); 11] = [
    (TcpState::Established, "ESTAB"),
    (TcpState::CloseWait, "CLOSE_WAIT"),
    (TcpState::TimeWait, "TIME_WAIT"),
    (TcpState::Listen, "LISTEN"),
    (TcpState::SynSent, "SYN_SENT"),
    (TcpState::SynRecv, "SYN_RECV"),
    (TcpState::FinWait1, "FIN_WAIT1"),
    (TcpState::FinWait2, "FIN_WAIT2"),
    (TcpState::LastAck, "LAST_ACK"),
    (TcpState::Closing, "CLOSING"),
    (TcpState::NewSynRecv, "NEW_SYN_RECV"),
];

fn host_lines(v: &View) -> Vec<Line<'static>> {
    let h = &v.host;
    let mut states = vec![Span::from("sockets ").bold()];
    for (st, name) in HOST_STATES {
        let n = h.sockets[st.index()];
        if n == 0 && !matches!(st, TcpState::Established | TcpState::CloseWait) {
            continue;
        }
        let text = if st == TcpState::CloseWait && h.leaking > 0 {
            format!("{name} {n} ({} leaking)  ", h.leaking)
        } else {
            format!("{name} {n}  ")
        };
        let span = Span::from(text);
        states.push(if st == TcpState::CloseWait && h.leaking > 0 {
            span.red()
        } else {
            span
        });
    }
    let lost = Span::from(format!("lost {}  ", h.lost));
    let mut rates = vec![
        Span::from(format!(
            "closes {:.1}/s  events {:.1}/s  ",
            h.closes_per_s, h.events_per_s
        )),
        if h.lost > 0 { lost.red().bold() } else { lost },
    ];
    if h.undecodable > 0 {
        rates.push(Span::from(format!("undecodable {}  ", h.undecodable)).red());
    }
    rates.push(Span::from(format!("tracked {}/{}", h.tracked, h.capacity)));
    if let Some(rate) = h.resets_per_s {
        // The RST strip: what this host resets, and to whom (docs/close-kinds.md).
        rates.push(Span::from(format!("  RST sent {rate:.1}/s")));
        for r in &h.resets_top {
            rates.push(Span::from(format!(
                "  {}→{} {}",
                r.reason, r.remote, r.resets
            )));
        }
    }
    if v.unfollowed > 0 {
        rates.push(Span::from(format!("  records of unfollowed owners {}", v.unfollowed)).red());
    }
    vec![Line::from(states), Line::from(rates)]
}

/// Columns kept first when the width is short.
const PRIORITY: [Column; 13] = [
    Column::Pid,
    Column::Comm,
    Column::CloseWait,
    Column::Leaking,
    Column::Oldest,
    Column::P99CloseWait,
    Column::Rate(0),
    Column::Rate(1),
    Column::Rate(2),
    Column::Rate(3),
    Column::Rate(4),
    Column::P50Idle,
    Column::Container,
];

fn width_of(c: Column) -> u16 {
    match c {
        Column::Pid => 7,
        Column::Comm => 16,
        Column::Container => 12,
        Column::CloseWait => 11,
        Column::Leaking => 8,
        Column::Oldest => 8,
        Column::Rate(_) => 6,
        Column::P99CloseWait => 8,
        Column::P50Idle => 8,
    }
}

/// The columns that fit `width`, in display order. The container column only when some row
/// has a container.
pub fn columns_for(width: u16, containers: bool) -> Vec<Column> {
    let mut used = 0u16;
    let mut keep = Vec::new();
    for c in PRIORITY {
        if c == Column::Container && !containers {
            continue;
        }
        let w = width_of(c) + u16::from(!keep.is_empty());
        if used + w > width {
            break;
        }
        used += w;
        keep.push(c);
    }
    Column::ALL
        .into_iter()
        .filter(|c| keep.contains(c))
        .collect()
}

fn cell(r: &Row, c: Column) -> String {
    let w = usize::from(width_of(c));
    match c {
        Column::Pid => match r.owner {
            Some(p) => format!("{p:>w$}"),
            None => format!("{:>w$}", "?"),
        },
        Column::Comm => match r.owner {
            Some(_) => fit(r.comm.to_string(), w),
            // Never accepted: no process holds them, a stalled accept loop (docs/close-kinds.md).
            None if r.not_accepted > 0 && r.not_accepted == r.close_wait => {
                "(never accepted)".to_owned()
            }
            None if r.not_accepted > 0 => format!("(no owner; {} never accepted)", r.not_accepted),
            None => "(unknown owner)".to_owned(),
        },
        Column::Container => r
            .container
            .map(|c| c.short().to_owned())
            .unwrap_or_default(),
        Column::CloseWait => format!("{:>w$}", r.close_wait),
        Column::Leaking => format!("{:>w$}", r.leaking),
        Column::Oldest => format!("{:>w$}", opt_dur(r.oldest_ns)),
        Column::Rate(k) => format!("{:>w$.1}", r.rates[k]),
        Column::P99CloseWait => format!("{:>w$}", opt_dur(r.p99_close_wait_ns)),
        Column::P50Idle => format!("{:>w$}", opt_dur(r.p50_idle_ns)),
    }
}

/// `text` cut to `w` characters, the cut shown (`…`): an escaped name can be longer than its
/// column.
fn fit(text: String, w: usize) -> String {
    if text.chars().count() <= w {
        return text;
    }
    let mut cut: String = text.chars().take(w.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn opt_dur(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), |n| Dur(n).to_string())
}

fn title_cell(c: Column, ui: &UiState) -> String {
    let mut t = c.title().to_owned();
    if c == ui.sort {
        t.push(if ui.descending { '▼' } else { '▲' });
    }
    if matches!(c, Column::Comm | Column::Container) {
        t
    } else {
        format!("{t:>w$}", w = usize::from(width_of(c)))
    }
}

fn draw_table(f: &mut Frame, area: Rect, view: &View, ui: &UiState) {
    let shown = ui.visible(&view.rows);
    let containers = shown.iter().any(|r| r.container.is_some());
    let cols = columns_for(area.width, containers);
    let mut title = format!(" processes: {} of {} ", shown.len(), view.rows.len());
    if !ui.filter.is_empty() || ui.mode == Mode::Filter {
        title.push_str(&format!("· filter \"{}\" ", ui.filter));
    }
    if !cols.contains(&ui.sort) {
        // Sorted by a column the width leaves out: say which.
        let arrow = if ui.descending { '▼' } else { '▲' };
        title.push_str(&format!("· sorted by {}{arrow} ", ui.sort.title()));
    }
    let header = TRow::new(cols.iter().map(|c| title_cell(*c, ui)))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let rows = shown.iter().map(|r| {
        let row = TRow::new(cols.iter().map(|c| cell(r, *c)));
        if r.leaking > 0 { row.red() } else { row }
    });
    let table = Table::new(rows, cols.iter().map(|c| Constraint::Length(width_of(*c))))
        .header(header)
        .column_spacing(1)
        .block(Block::new().borders(Borders::TOP).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(ui.selected_index(&shown));
    f.render_stateful_widget(table, area, &mut state);
}

/// Blank cells between the sockets screen's columns.
const SOCKET_COLUMN_SPACING: u16 = 2;

/// A column of the sockets screen.
#[derive(Clone, Copy, PartialEq)]
enum Col {
    Local,
    Remote,
    Age,
    Leaking,
    Fd,
    Unread,
    From,
    Netns,
}

// Columns in display order with the rank they are kept in as the width shrinks (the
// remote and the age last; "AGE FROM" first to go; a leaking row is red anyway).
fn socket_columns(s: &SocketsView, wl: u16, wr: u16, width: u16) -> Vec<(Col, u16, u8)> {
    let other_ns = s
        .sockets
        .iter()
        .any(|k| k.id.netns != 0 && k.id.netns != s.own_netns);
    let mut cols: Vec<(Col, u16, u8)> = vec![
        (Col::Local, wl, 2),
        (Col::Remote, wr, 0),
        (Col::Age, 8, 1),
        (Col::Leaking, 12, 3),
        (Col::Fd, 6, 6),
        (Col::Unread, 8, 7),
        (Col::From, 8, 5),
    ];
    if other_ns {
        cols.push((Col::Netns, 10, 4));
    }
    let spacing = SOCKET_COLUMN_SPACING;
    let total = |c: &[(Col, u16, u8)]| {
        c.iter().map(|x| x.1).sum::<u16>() + spacing * (c.len() as u16).saturating_sub(1)
    };
    while cols.len() > 1 && total(&cols) > width {
        let worst = (0..cols.len()).max_by_key(|&i| cols[i].2).unwrap_or(0);
        cols.remove(worst);
    }
    cols
}

/// The text of column `c` for socket `i` of the sockets screen.
fn socket_cell(
    c: Col,
    s: &SocketsView,
    i: usize,
    k: &CloseWaitSocket,
    local: &[String],
    remote: &[String],
) -> String {
    match c {
        Col::Local => local[i].clone(),
        Col::Remote => remote[i].clone(),
        Col::Age => format!("{:>8}", Dur(k.age_ns).to_string()),
        Col::Leaking => match (k.accepted, k.leaking) {
            (Some(false), _) => "not accepted",
            (_, true) => "yes",
            _ => "",
        }
        .to_owned(),
        Col::Fd => s
            .forensics
            .get(i)
            .map(|f| {
                f.fds
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        Col::Unread => s
            .forensics
            .get(i)
            .and_then(|f| f.unread_bytes)
            .map(|n| format!("{n:>8}"))
            .unwrap_or_default(),
        Col::From => match k.age_source {
            AgeSource::Traced => "traced",
            AgeSource::Estimate => "estimate",
        }
        .to_owned(),
        Col::Netns => k.id.netns.to_string(),
    }
}

fn draw_sockets(f: &mut Frame, area: Rect, s: &SocketsView, scroll: usize) {
    let leaking = s.sockets.iter().filter(|k| k.leaking).count();
    let who = match s.owner {
        Some(p) if s.exited => format!("{p} ({}, exited)", s.comm),
        Some(p) => format!("{p} ({})", s.comm),
        None => "unknown owners".to_owned(),
    };
    let title = format!(
        " CLOSE_WAIT sockets of {who}: {}, {leaking} leaking · Esc back ",
        s.sockets.len()
    );
    let local: Vec<String> = s
        .sockets
        .iter()
        .map(|k| EndpointFmt(k.id.saddr, k.id.sport).to_string())
        .collect();
    let remote: Vec<String> = s
        .sockets
        .iter()
        .map(|k| EndpointFmt(k.id.daddr, k.id.dport).to_string())
        .collect();
    let wl = local.iter().map(String::len).max().unwrap_or(0).max(5) as u16;
    let wr = remote.iter().map(String::len).max().unwrap_or(0).max(6) as u16;
    let cols = socket_columns(s, wl, wr, area.width);
    let head: Vec<&str> = cols
        .iter()
        .map(|c| match c.0 {
            Col::Local => "LOCAL",
            Col::Remote => "REMOTE",
            Col::Age => "     AGE",
            Col::Leaking => "LEAKING",
            Col::Fd => "FD",
            Col::Unread => "  UNREAD",
            Col::From => "AGE FROM",
            Col::Netns => "NETNS",
        })
        .collect();
    let widths: Vec<u16> = cols.iter().map(|c| c.1).collect();
    let skip = scroll.min(s.sockets.len().saturating_sub(1));
    let rows = s.sockets.iter().enumerate().skip(skip).map(|(i, k)| {
        let cells = cols
            .iter()
            .map(|c| socket_cell(c.0, s, i, k, &local, &remote));
        let row = TRow::new(cells);
        if k.leaking { row.red() } else { row }
    });
    let block = Block::new().borders(Borders::TOP).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    // The process's command line (comm alone often says only "python3" or "java").
    let cmd_h = u16::from(s.cmdline.is_some() && inner.height > 2);
    let [cmd, list] =
        Layout::vertical([Constraint::Length(cmd_h), Constraint::Min(0)]).areas(inner);
    if let Some(c) = s.cmdline.as_ref().filter(|_| cmd_h > 0) {
        let line = Line::from(vec![
            Span::from("command ").bold(),
            Span::from(c.shown().to_string()),
        ]);
        f.render_widget(Paragraph::new(line), cmd);
    }
    let table = Table::new(rows, widths.into_iter().map(Constraint::Length))
        .header(TRow::new(head).style(Style::new().add_modifier(Modifier::BOLD)))
        .column_spacing(SOCKET_COLUMN_SPACING);
    f.render_widget(table, list);
    if s.sockets.is_empty() && list.height > 1 {
        let none = Rect {
            y: list.y + 1,
            height: 1,
            ..list
        };
        f.render_widget(Paragraph::new("  none now"), none);
    }
}

fn draw_dwell(f: &mut Frame, area: Rect, view: &View) {
    let block = Block::new().borders(Borders::TOP).title(format!(
        " time in state: last {DWELL_WINDOW} redraws; p99 per redraw, log scale "
    ));
    let fixed = 12 + 7 + 9 + 9 + 2;
    let spark_w = usize::from(area.width)
        .saturating_sub(fixed + 9)
        .min(SPARK_LEN);
    let mut lines = vec![
        Line::from(format!(
            "{:<12}{:>7} {:>8} {:>8}  {}",
            "STATE", "COUNT", "p50", "p99", "p99 history"
        ))
        .bold(),
    ];
    for d in &view.dwell {
        let mut spans = vec![Span::from(format!(
            "{:<12}{:>7} {:>8} {:>8}  ",
            d.state.name(),
            d.count,
            opt_dur(d.p50_ns),
            opt_dur(d.p99_ns)
        ))];
        spans.push(Span::from(sparkline(&d.history, spark_w)).cyan());
        if d.rising {
            spans.push(Span::from(" ▲ rising").red().bold());
        }
        lines.push(Line::from(spans));
    }
    f.render_widget(Paragraph::new(lines).block(block), area);
}

/// The TIME_WAIT-by-remote panel: each remote's TIME_WAIT sockets and the ephemeral ports used
/// towards it from the busiest local address (yellow from half the range, red from 80 %); the
/// title says how many remotes there are and any hand-overs the accounting could not count. As
/// the width shrinks the network-namespace column goes, then the ports, before an IPv4
/// endpoint would be cut; a longer remote loses its head, never its port.
fn draw_time_wait(f: &mut Frame, area: Rect, panel: &super::model::TimeWaitPanel) {
    const TW: usize = 7;
    const PORTS: usize = 10;
    const NETNS: usize = 10;
    /// "255.255.255.255:65535".
    const MIN_REMOTE: usize = 21;
    let remotes = &panel.rows;
    let shown = remotes
        .len()
        .min(usize::from(area.height.saturating_sub(2)));
    let mut title = vec![Span::from(format!(
        " TIME_WAIT by remote: {shown} of {} ",
        panel.remotes
    ))];
    if panel.uncounted > 0 {
        title.push(Span::from(format!("· {} uncounted: table full ", panel.uncounted)).red());
    }
    let block = Block::new().borders(Borders::TOP).title(Line::from(title));
    let width = usize::from(area.width);
    let mut netns = remotes.iter().any(|r| r.netns.is_some());
    let mut ports = true;
    let remote_w = |ports: bool, netns: bool| {
        width
            .saturating_sub(1 + TW)
            .saturating_sub(if ports { 1 + PORTS } else { 0 })
            .saturating_sub(if netns { 1 + NETNS } else { 0 })
    };
    if netns && remote_w(ports, netns) < MIN_REMOTE {
        netns = false;
    }
    if remote_w(ports, netns) < MIN_REMOTE {
        ports = false;
    }
    let rw = remote_w(ports, netns).max(1);
    let mut head = format!("{:<rw$} {:>TW$}", "REMOTE", "SOCKETS");
    if ports {
        head.push_str(&format!(" {:>PORTS$}", "PORTS USED"));
    }
    if netns {
        head.push_str(&format!(" {:>NETNS$}", "NETNS"));
    }
    let mut lines = vec![Line::from(head).bold()];
    for r in remotes {
        let mut spans = vec![Span::from(format!(
            "{:<rw$} {:>TW$}",
            keep_tail(&r.remote, rw),
            r.time_wait
        ))];
        if ports {
            let share = r.ephemeral_ports_used as f64 / r.ephemeral_port_range.max(1) as f64;
            let text = format!(
                " {:>PORTS$}",
                format!("{} {:.0}%", r.ephemeral_ports_used, share * 100.0)
            );
            spans.push(if share >= 0.8 {
                Span::from(text).red().bold()
            } else if share >= 0.5 {
                Span::from(text).yellow()
            } else {
                Span::from(text)
            });
        }
        if netns {
            let ns = r.netns.map(|n| n.to_string()).unwrap_or_default();
            spans.push(Span::from(format!(" {ns:>NETNS$}")));
        }
        lines.push(Line::from(spans));
    }
    f.render_widget(Paragraph::new(lines).block(block), area);
}

/// `s` cut to its last `w` characters behind a '…' when it is longer.
fn keep_tail(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_owned();
    }
    let tail: String = s.chars().skip(n - w.saturating_sub(1)).collect();
    format!("…{tail}")
}

fn key_line(ui: &UiState) -> Line<'static> {
    let keys: &[(&str, &str)] = match ui.mode {
        Mode::Filter => {
            return Line::from(vec![
                Span::from("filter (comm or pid): ").bold(),
                Span::from(format!("{}▏", ui.filter)),
                Span::from("  Enter keep  Esc clear"),
            ]);
        }
        Mode::Sockets { .. } => &[("Esc", "back"), ("↑↓", "scroll"), ("q", "quit")],
        Mode::Table => &[
            ("q", "quit"),
            ("↑↓", "select"),
            ("Enter", "sockets"),
            ("/", "filter"),
            ("< >", "sort column"),
            ("r", "reverse"),
        ],
    };
    let mut spans = Vec::new();
    for (k, what) in keys {
        spans.push(Span::from(*k).reversed());
        spans.push(Span::from(format!(" {what}  ")));
    }
    Line::from(spans)
}

/// A one-line sparkline of the last `width` values, log-scaled between the smallest and the
/// largest shown; `None` (no sample) is a blank.
pub fn sparkline(values: &[Option<u64>], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let shown = &values[values.len().saturating_sub(width)..];
    let logs = || shown.iter().flatten().map(|&v| (v.max(1) as f64).ln());
    let lo = logs().fold(f64::INFINITY, f64::min);
    let hi = logs().fold(f64::NEG_INFINITY, f64::max);
    shown
        .iter()
        .map(|v| match v {
            None => ' ',
            Some(_) if hi - lo < 1e-9 => BARS[3],
            Some(v) => {
                let x = ((*v).max(1) as f64).ln();
                let i = ((x - lo) / (hi - lo) * 7.0).round() as usize;
                BARS[i.min(7)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Family;
    use crate::record::SocketId;
    use crate::top::model::{DwellLine, Host, RemoteTimeWait, TimeWaitPanel};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use std::net::{IpAddr, Ipv4Addr};

    fn row(pid: u32, comm: &str, cw: u64, leaking: u64) -> Row {
        Row {
            owner: Some(pid),
            comm: Comm::new(comm),
            container: None,
            close_wait: cw,
            leaking,
            not_accepted: 0,
            oldest_ns: Some(42_000_000_000),
            rates: [1.5, 0.0, 0.0, 0.0, 2.0],
            p99_close_wait_ns: None,
            p50_idle_ns: None,
        }
    }

    fn view() -> View {
        let mut sockets = [0; 12];
        sockets[TcpState::Established.index()] = 12;
        sockets[TcpState::CloseWait.index()] = 10;
        View {
            rows: vec![row(4242, "leaky-srv", 7, 7), row(77, "nginx", 3, 0)],
            host: Host {
                sockets,
                leaking: 7,
                closes_per_s: 3.5,
                events_per_s: 20.0,
                lost: 2,
                undecodable: 0,
                tracked: 30,
                capacity: 1000,
                resets_per_s: Some(1.5),
                resets_top: vec![crate::engine::summary::ResetSummary {
                    reason: "NO_SOCKET",
                    remote: "10.0.0.7".into(),
                    netns: None,
                    resets: 50,
                }],
            },
            dwell: vec![DwellLine {
                state: TcpState::CloseWait,
                count: 4,
                p50_ns: Some(2_000_000_000),
                p99_ns: Some(3_000_000_000),
                history: vec![Some(1_000), None, Some(3_000_000_000)],
                rising: true,
            }],
            time_wait_by_remote: None,
            unfollowed: 0,
        }
    }

    fn status() -> Status<'static> {
        Status {
            clock: "12:00:00",
            refresh: Duration::from_secs(1),
            threshold_ns: 30_000_000_000,
            pid: None,
            note: None,
        }
    }

    fn render(w: u16, h: u16, view: &View, ui: &UiState, sockets: Option<&SocketsView>) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, view, ui, sockets, &status())).unwrap();
        let buf = t.backend().buffer().clone();
        let mut s = String::new();
        for y in 0..h {
            for x in 0..w {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
        screen
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
    }

    #[test]
    fn full_screen_shows_every_part() {
        let s = render(120, 30, &view(), &UiState::default(), None);
        assert!(s.contains("tracer top"), "{s}");
        assert!(s.contains("CLOSE_WAIT 10 (7 leaking)"), "{s}");
        assert!(s.contains("lost 2"), "{s}");
        assert!(s.contains("tracked 30/1000"), "{s}");
        let head = line_with(&s, "PID");
        for t in [
            "COMM",
            "CLOSE_WAIT▼",
            "LEAKING",
            "OLDEST",
            "ACT/s",
            "REF/s",
            "P99 CW",
        ] {
            assert!(head.contains(t), "{t} missing in {head:?}");
        }
        assert!(!head.contains("CONTAINER"), "no container known: no column");
        let cols: Vec<&str> = line_with(&s, "leaky-srv").split_whitespace().collect();
        assert_eq!(
            &cols[..6],
            &["4242", "leaky-srv", "7", "7", "42.00s", "1.5"],
            "{s}"
        );
        // Sorted by CLOSE_WAIT: leaky-srv above nginx.
        assert!(s.find("leaky-srv").unwrap() < s.find("nginx").unwrap());
        let dwell = line_with(&s, "CLOSE_WAIT      ");
        assert!(
            dwell.contains("3.00s") && dwell.contains("rising"),
            "{dwell}"
        );
        assert!(s.contains("sort column"), "{s}");
    }

    #[test]
    fn small_terminals_drop_parts_then_say_so() {
        // 60 columns: the rates go, the counts stay.
        let s = render(60, 30, &view(), &UiState::default(), None);
        let head = line_with(&s, "PID");
        assert!(head.contains("OLDEST") && !head.contains("REF/s"), "{head}");
        // 15 lines: no dwell panel, table and host strip stay.
        let s = render(100, 15, &view(), &UiState::default(), None);
        assert!(!s.contains("p99 history") && s.contains("leaky-srv") && s.contains("sockets"));
        // 6 lines: header, table, keys.
        let s = render(100, 6, &view(), &UiState::default(), None);
        assert!(!s.contains("tracked") && s.contains("leaky-srv"), "{s}");
        let s = render(19, 10, &view(), &UiState::default(), None);
        assert!(s.starts_with("terminal too small"), "{s}");
    }

    #[test]
    fn a_sort_column_left_out_for_width_is_named() {
        let ui = UiState {
            sort: Column::Rate(4),
            descending: true,
            ..UiState::default()
        };
        let s = render(60, 30, &view(), &ui, None);
        assert!(!line_with(&s, "PID").contains("REF/s"), "{s}");
        assert!(s.contains("sorted by REF/s▼"), "{s}");
        let s = render(120, 30, &view(), &ui, None);
        assert!(
            line_with(&s, "PID").contains("REF/s▼") && !s.contains("sorted by"),
            "{s}"
        );
    }

    #[test]
    fn containers_get_a_column_when_known() {
        let mut v = view();
        v.rows[1].container = crate::container::ContainerId::parse(&"0f".repeat(32));
        let s = render(130, 30, &v, &UiState::default(), None);
        assert!(line_with(&s, "PID").contains("CONTAINER"));
        assert!(line_with(&s, "nginx").contains("0f0f0f0f0f0f"));
    }

    #[test]
    fn sockets_screen_lists_endpoints_and_ages() {
        let sock = |port: u16, age_s: u64, leaking: bool| CloseWaitSocket {
            id: SocketId {
                sk: u64::from(port),
                netns: 0,
                family: Family::V4,
                saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                sport: 8080,
                daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                dport: port,
            },
            owner: None,
            age_ns: age_s * 1_000_000_000,
            leaking,
            age_source: AgeSource::Traced,
            accepted: Some(true),
        };
        let sv = SocketsView {
            owner: Some(4242),
            comm: Comm::new("leaky-srv"),
            sockets: vec![sock(50001, 45, true), sock(50002, 3, false)],
            forensics: vec![
                SocketForensics {
                    fds: vec![7],
                    unread_bytes: Some(120),
                    unsent_bytes: Some(0),
                },
                SocketForensics::default(),
            ],
            own_netns: 0,
            cmdline: Some("/usr/bin/leaky-srv --port 8080".into()),
            exited: false,
        };
        let ui = UiState {
            mode: Mode::Sockets { owner: Some(4242) },
            ..UiState::default()
        };
        let s = render(100, 20, &view(), &ui, Some(&sv));
        assert!(
            s.contains("CLOSE_WAIT sockets of 4242 (leaky-srv): 2, 1 leaking"),
            "{s}"
        );
        let l = line_with(&s, "10.0.0.9:50001");
        assert!(l.contains("127.0.0.1:8080") && l.contains("45.00s") && l.contains("yes"));
        assert!(line_with(&s, "10.0.0.9:50002").contains("3.00s"));
        // Its forensics: the fd it is held under and the bytes never read.
        let head = line_with(&s, "LOCAL");
        assert!(head.contains("FD") && head.contains("UNREAD"), "{s}");
        let first: Vec<&str> = line_with(&s, "10.0.0.9:50001").split_whitespace().collect();
        assert!(first.contains(&"7") && first.contains(&"120"), "{s}");
        assert!(s.contains("Esc back"), "{s}");
        let cmd = line_with(&s, "command ");
        assert!(cmd.contains("/usr/bin/leaky-srv --port 8080"), "{s}");
        assert!(
            s.find("command ").unwrap() < s.find("LOCAL").unwrap(),
            "the command above the sockets: {s}"
        );
    }

    #[test]
    fn sockets_screen_drops_columns_before_cutting_endpoints() {
        let sock = CloseWaitSocket {
            id: SocketId {
                sk: 1,
                netns: 4026532999,
                family: Family::V4,
                saddr: IpAddr::V4(Ipv4Addr::new(192, 168, 100, 200)),
                sport: 8080,
                daddr: IpAddr::V4(Ipv4Addr::new(10, 200, 100, 9)),
                dport: 50001,
            },
            owner: None,
            age_ns: 45_000_000_000,
            leaking: true,
            age_source: AgeSource::Estimate,
            accepted: Some(true),
        };
        let sv = SocketsView {
            owner: Some(4242),
            comm: Comm::new("leaky-srv"),
            sockets: vec![sock],
            forensics: Vec::new(),
            own_netns: 1,
            cmdline: None,
            exited: true,
        };
        let ui = UiState {
            mode: Mode::Sockets { owner: Some(4242) },
            ..UiState::default()
        };
        // Wide: every column, the namespace too.
        let s = render(100, 12, &view(), &ui, Some(&sv));
        assert!(
            s.contains("CLOSE_WAIT sockets of 4242 (leaky-srv, exited)"),
            "{s}"
        );
        let l = line_with(&s, "10.200.100.9:50001");
        for t in [
            "192.168.100.200:8080",
            "45.00s",
            "yes",
            "estimate",
            "4026532999",
        ] {
            assert!(l.contains(t), "{t} missing in {l:?}");
        }
        // 50 columns: "AGE FROM", the namespace and LEAKING go; both endpoints stay whole.
        let s = render(50, 12, &view(), &ui, Some(&sv));
        let l = line_with(&s, "10.200.100.9:50001");
        assert!(
            l.contains("192.168.100.200:8080") && l.contains("45.00s"),
            "{s}"
        );
        assert!(!l.contains("estimate") && !l.contains("4026532999"), "{s}");
        // 30 columns: the remote and its age.
        let s = render(30, 12, &view(), &ui, Some(&sv));
        let l = line_with(&s, "10.200.100.9:50001");
        assert!(l.contains("45.00s") && !l.contains("192.168"), "{s}");
    }

    #[test]
    fn time_wait_panel_shows_counts_and_port_use_at_any_width() {
        let remote = |r: &str, tw: u64, used: u64, netns: Option<u32>| RemoteTimeWait {
            remote: r.to_owned(),
            netns,
            time_wait: tw,
            ephemeral_ports_used: used,
            ephemeral_port_range: 28232,
        };
        let mut v = view();
        v.time_wait_by_remote = Some(TimeWaitPanel {
            rows: vec![
                remote(
                    "[2001:db8:ffff:ffff:ffff:ffff:ffff:1]:443",
                    25000,
                    25010,
                    None,
                ),
                remote("10.0.0.7:5432", 120, 121, Some(4026532999)),
            ],
            remotes: 57,
            uncounted: 3,
        });
        let s = render(200, 30, &v, &UiState::default(), None);
        assert!(s.contains("TIME_WAIT by remote: 2 of 57"), "{s}");
        assert!(s.contains("3 uncounted: table full"), "{s}");
        let head = line_with(&s, "REMOTE");
        assert!(head.contains("SOCKETS") && head.contains("PORTS USED") && head.contains("NETNS"));
        let l = line_with(&s, ":443");
        assert!(
            l.contains("2001:db8:ffff:ffff:ffff:ffff:ffff:1]:443"),
            "{l}"
        );
        assert!(l.contains(" 25000 ") && l.contains("25010 89%"), "{l}");
        let l = line_with(&s, "10.0.0.7:5432");
        assert!(
            l.contains(" 120 ") && l.contains("121 0%") && l.contains("4026532999"),
            "{l}"
        );
        // 100 columns: the panel is 40 wide; the namespace goes, the count and ports stay,
        // the long remote keeps its tail.
        let s = render(100, 30, &v, &UiState::default(), None);
        let head = line_with(&s, "REMOTE");
        assert!(
            head.contains("PORTS USED") && !head.contains("NETNS"),
            "{s}"
        );
        let l = line_with(&s, "…");
        assert!(
            l.contains("ff:1]:443") && l.contains(" 25000 ") && l.contains("89%"),
            "{l}"
        );
        assert!(line_with(&s, "10.0.0.7:5432").contains(" 120 "), "{s}");
        // The longest IPv4 endpoint stays whole at 100 columns (its namespace column goes).
        v.time_wait_by_remote.as_mut().unwrap().rows[1].remote = "127.100.200.251:50002".into();
        let s = render(100, 30, &v, &UiState::default(), None);
        let l = line_with(&s, "127.100.200.251:50002");
        assert!(l.contains(" 120 ") && l.contains("121 0%"), "{l}");
    }

    #[test]
    fn time_wait_panel_goes_below_on_a_narrow_tall_terminal() {
        let mut v = view();
        v.time_wait_by_remote = Some(TimeWaitPanel {
            rows: (0..12)
                .map(|i| RemoteTimeWait {
                    remote: format!("10.0.0.{i}:5432"),
                    netns: None,
                    time_wait: 120 - i,
                    ephemeral_ports_used: 121,
                    ephemeral_port_range: 28232,
                })
                .collect(),
            remotes: 12,
            uncounted: 0,
        });
        let s = render(80, 40, &v, &UiState::default(), None);
        let dwell = s.find("time in state").expect("dwell panel");
        let tw = s.find("TIME_WAIT by remote").expect("TIME_WAIT panel");
        assert!(dwell < tw, "{s}");
        assert!(line_with(&s, "10.0.0.0:5432").contains(" 120 "), "{s}");
        // Ten rows below (the title and the header take two), and the title says so.
        assert!(s.contains("TIME_WAIT by remote: 10 of 12"), "{s}");
        assert!(line_with(&s, "10.0.0.9:5432").contains(" 111 "), "{s}");
        // 80x24: no room; the host strip still counts TIME_WAIT.
        let s = render(80, 24, &v, &UiState::default(), None);
        assert!(
            s.contains("time in state") && !s.contains("TIME_WAIT by remote"),
            "{s}"
        );
    }

    #[test]
    fn keep_tail_cuts_the_head() {
        assert_eq!(keep_tail("10.0.0.1:80", 20), "10.0.0.1:80");
        assert_eq!(keep_tail("10.0.0.1:80", 6), "….1:80");
        assert_eq!(keep_tail("10.0.0.1:80", 11), "10.0.0.1:80");
    }

    #[test]
    fn sparkline_is_log_scaled_with_gaps() {
        assert_eq!(sparkline(&[Some(1), None, Some(10), Some(100)], 10), "▁ ▅█");
        assert_eq!(sparkline(&[Some(5), Some(5)], 10), "▄▄");
        assert_eq!(sparkline(&[Some(1), Some(2), Some(3)], 2), "▁█");
        assert_eq!(sparkline(&[], 5), "");
    }
}
