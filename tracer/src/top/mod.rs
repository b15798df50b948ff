//! `tracer top`: a live full-screen view, another front-end of the per-event path.
//!
//! Its loop is the stream's ([`crate::live::Kernel`]: the kernel's wakeups and a drain timer
//! feed the ring buffer down the [`Pipeline`]), plus a redraw timer, keys and signals. Its sink
//! is [`model::TopSink`], which keeps per-owner counters and nothing per event beyond them.
//! Once per redraw the front-end reads a [`model::Snapshot`] of the path (CLOSE_WAIT per
//! owner, sockets per state, dwell histograms, counters), builds the [`model::View`], and
//! draws it ([`ui`]); keys change only the [`state::UiState`] and redraw the same view.
//!
//! The terminal is restored on every way out: `q`, Ctrl-C (a key in raw mode), SIGINT, SIGTERM
//! and SIGHUP, an error (the guard's drop) and a panic (a hook that restores first). Log lines
//! are held while the screen is up ([`crate::logs`]) and printed after.

pub mod model;
pub mod state;
pub mod ui;

use std::io::{self, Stdout, Write as _};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::Event;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::cli::TopConfig;
use crate::engine::{EngineConfig, Histogram};
use crate::event::TcpState;
use crate::live::{Kernel, KernelOptions};
use crate::pipeline::{Pipeline, PipelineConfig};
use model::{Model, RemoteTimeWait, Snapshot, TopSink, View};
use state::{Action, Mode, UiState};
use ui::{SocketsView, Status};

/// Most owners followed at once by the sink (closes/s and CLOSE_WAIT dwell per owner).
const MAX_OWNERS: usize = 4096;

/// The one-line answer when standard output is not a terminal (exit status 2).
pub const NOT_A_TERMINAL: &str = "tracer: error: `tracer top` draws a full-screen view and standard output is not a terminal (for a pipe or a file use `tracer --json`)";

/// Runs `tracer top` until `q`, Ctrl-C or a signal.
pub async fn run(mut cfg: TopConfig) -> anyhow::Result<()> {
    cfg.pid = crate::live::resolve_pid(cfg.pid)?;
    let mut kernel = Kernel::load(&KernelOptions {
        pid: cfg.pid,
        ring_bytes: cfg.ring_bytes,
        run_time_stats: false,
    })?;
    let mut path = Pipeline::live(PipelineConfig {
        engine: EngineConfig {
            capacity: cfg.capacity,
            close_wait_threshold_ns: cfg.close_wait_threshold.as_nanos() as u64,
        },
        pid: cfg.pid,
    })
    .context("opening sock_diag")?;
    let mut sink = TopSink::new(MAX_OWNERS);
    if cfg.baseline {
        kernel.baseline(&mut path)?;
    }
    let now = kernel.tick(&mut path, &mut sink)?;
    let mut model = {
        let s = snapshot(&mut path, &kernel, now);
        Model::new(now, s.events_total, s.closes_total, &s.dwell)
    };
    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = signal(tokio::signal::unix::SignalKind::hangup())?;

    let mut screen = Screen::enter().context("setting up the terminal")?;
    crate::logs::hold();
    let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    let stop_keys = std::sync::Arc::new(AtomicBool::new(false));
    spawn_key_reader(keys_tx, stop_keys.clone());

    let mut ui = UiState::default();
    // The first view at once: CLOSE_WAIT held now (the baseline's), no rates yet.
    let mut view = model.update(&snapshot(&mut path, &kernel, now), &mut sink, |pid| {
        path.container_id(pid)
    });
    // `--pid`'s process exited (top keeps showing what is left).
    let mut exited = false;
    let mut drain_timer = tokio::time::interval(cfg.drain_interval);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut redraw_timer = tokio::time::interval(cfg.refresh);
    redraw_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is immediate: the next redraw is one interval from now.
    redraw_timer.tick().await;
    let panic_at_first_redraw = std::env::var_os("TRACER_TOP_TEST_PANIC").is_some();

    let result: anyhow::Result<()> = async {
        screen.draw(&path, &view, &ui, &cfg, exited)?;
        loop {
            tokio::select! {
                woken = kernel.wakeup() => {
                    woken?;
                    kernel.drain(&mut path, &mut sink)?;
                }
                _ = drain_timer.tick() => {
                    kernel.timer_drain(&mut path, &mut sink)?;
                    if let Some(pid) = cfg.pid
                        && !exited
                    {
                        exited = !crate::attribution::process_alive(pid);
                    }
                }
                _ = redraw_timer.tick() => {
                    if panic_at_first_redraw {
                        panic!("TRACER_TOP_TEST_PANIC is set: panicking to test the terminal restore");
                    }
                    let now = kernel.tick(&mut path, &mut sink)?;
                    let snap = snapshot(&mut path, &kernel, now);
                    view = model.update(&snap, &mut sink, |pid| path.container_id(pid));
                    screen.draw(&path, &view, &ui, &cfg, exited)?;
                }
                key = keys.recv() => {
                    let event = match key {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => return Err(anyhow::Error::new(e).context("reading keys")),
                        None => anyhow::bail!("reading keys: the terminal's input closed"),
                    };
                    let action = match event {
                        Event::Key(k) => ui.on_key(k, &view.rows),
                        Event::Resize(..) => Action::Redraw,
                        _ => Action::None,
                    };
                    match action {
                        Action::Quit => break,
                        Action::Redraw => screen.draw(&path, &view, &ui, &cfg, exited)?,
                        Action::None => {}
                    }
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = sighup.recv() => break,
            }
        }
        Ok(())
    }
    .await;
    stop_keys.store(true, Ordering::Release);
    drop(screen);
    let (held, dropped) = crate::logs::release();
    for line in held {
        eprintln!("{line}");
    }
    if dropped > 0 {
        eprintln!("tracer: {dropped} earlier log lines were dropped while the screen was up");
    }
    result?;
    let c = kernel.counters();
    let r = kernel.reader_stats();
    eprintln!(
        "tracer: top: {} events, {} lost, {} undecodable; read in {} kernel wakeups and {} timer drains",
        path.counts().events,
        c.ring_full,
        path.counts().undecodable,
        r.wakeups,
        r.timer_drains
    );
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("installing a signal handler")
}

/// What the view reads from the path and the kernel, once per redraw.
fn snapshot(path: &mut Pipeline, kernel: &Kernel, now_ns: u64) -> Snapshot {
    let e = path.engine();
    Snapshot {
        now_ns,
        close_wait: e.close_wait_by_owner(now_ns),
        sockets: path.sockets_now(),
        leaking_now: e.leaking_now(),
        closes_total: e.stats().closes,
        events_total: path.counts().events,
        lost: kernel.counters().ring_full,
        undecodable: path.counts().undecodable,
        tracked: e.tracked() as u64,
        capacity: e.config().capacity as u64,
        dwell: std::array::from_fn(|i| {
            TcpState::ALL
                .get(i)
                .map_or_else(Histogram::new, |st| e.dwell_histogram(*st).clone())
        }),
        time_wait_by_remote: time_wait_by_remote(path),
    }
}

/// Hook for the TIME_WAIT-by-remote panel. Issue #11 adds TIME_WAIT per remote endpoint to
/// the path; once it exists, return it from here (top remotes first) and the panel appears
/// beside the dwell panel. Until then there is nothing to show and no panel is drawn.
fn time_wait_by_remote(_path: &Pipeline) -> Option<Vec<RemoteTimeWait>> {
    None
}

/// Reads terminal events on a thread of its own (crossterm's reader blocks) and forwards
/// them; stops when told or when the loop has gone.
fn spawn_key_reader(
    tx: tokio::sync::mpsc::UnboundedSender<io::Result<Event>>,
    stop: std::sync::Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            match crossterm::event::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => {
                    if tx.send(crossterm::event::read()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
}

/// Whether the terminal is in top's modes (raw, alternate screen, cursor hidden).
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Puts the terminal back: cooked mode, main screen, cursor shown. Idempotent; called by the
/// guard's drop and by the panic hook.
fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::AcqRel) {
        let _ = crossterm::terminal::disable_raw_mode();
        let mut out = io::stdout();
        let _ = crossterm::execute!(
            out,
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = out.flush();
    }
}

/// The terminal while top owns it; restored on drop.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    fn enter() -> io::Result<Screen> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                // Lines held while the screen was up come before the panic message.
                let (held, _) = crate::logs::release();
                for line in held {
                    eprintln!("{line}");
                }
                previous(info);
            }));
        });
        TERMINAL_TAKEN.store(true, Ordering::Release);
        let guard = RestoreOnError;
        crossterm::terminal::enable_raw_mode()?;
        crossterm::execute!(
            io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        std::mem::forget(guard);
        Ok(Screen { terminal })
    }

    fn draw(
        &mut self,
        path: &Pipeline,
        view: &View,
        ui: &UiState,
        cfg: &TopConfig,
        exited: bool,
    ) -> anyhow::Result<()> {
        let sockets = match ui.mode {
            Mode::Sockets { owner } => Some(sockets_of(path, view, owner)),
            _ => None,
        };
        let clock = wall_clock();
        // The latest log line held while the screen is up; all of them are printed at exit.
        let note = match cfg.pid {
            Some(pid) if exited => Some(format!("process {pid} exited")),
            _ => crate::logs::latest(),
        };
        let status = Status {
            clock: &clock,
            refresh: cfg.refresh,
            threshold_ns: cfg.close_wait_threshold.as_nanos() as u64,
            pid: cfg.pid,
            note: note.as_deref(),
        };
        self.terminal
            .draw(|f| ui::draw(f, view, ui, sockets.as_ref(), &status))
            .context("drawing the screen")?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Restores the terminal if [`Screen::enter`] fails half-way.
struct RestoreOnError;

impl Drop for RestoreOnError {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// One process's CLOSE_WAIT sockets, read from the engine now (only while that screen is up).
fn sockets_of(path: &Pipeline, view: &View, owner: model::OwnerId) -> SocketsView {
    let now = crate::output::clock_ns(libc::CLOCK_MONOTONIC);
    let sockets = path
        .engine()
        .close_wait_sockets(now, |o| o.map(|o| o.pid) == owner);
    let comm = view
        .rows
        .iter()
        .find(|r| r.owner == owner)
        .map(|r| r.comm)
        .or_else(|| sockets.iter().find_map(|s| s.owner.map(|o| o.comm)))
        .unwrap_or_default();
    SocketsView {
        owner,
        comm,
        sockets,
        own_netns: path.own_netns(),
    }
}

/// Wall-clock time of day, UTC, `HH:MM:SS`.
fn wall_clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}
