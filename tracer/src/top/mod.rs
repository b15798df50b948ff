//! `tracer top`: a live full-screen view, another front-end of the per-event path.
//!
//! Its loop is the stream's ([`crate::driver::Driver`]: the kernel's wakeups and a drain timer
//! feed the ring buffer down the [`Pipeline`], `--pid`'s exit is followed, lost events are
//! reported), plus a redraw timer, keys and signals. Its sink
//! is [`model::TopSink`], which keeps per-owner counters and nothing per event beyond them.
//! Once per redraw the front-end reads a [`model::Snapshot`] of the path (CLOSE_WAIT per
//! owner, sockets per state, dwell histograms, counters), builds the [`model::View`], and
//! draws it ([`ui`]); keys change only the [`state::UiState`] and redraw the same view.
//!
//! The terminal is restored on every way out: `q`, Ctrl-C (a key in raw mode), SIGINT, SIGTERM
//! and SIGHUP, an error (the guard's drop) and a panic (a hook that restores first). Log lines
//! (and the driver's loss reports) are held while the screen is up ([`crate::logs`]) and printed
//! after.

pub mod model;
pub mod state;
pub mod ui;

use std::io::{self, Stdout, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::Event;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::cli::TopConfig;
use crate::driver::{Driver, DriverOptions};
use crate::engine::Histogram;
use crate::event::TcpState;
use crate::pipeline::Pipeline;
use model::{Model, Snapshot, TimeWaitPanel, TopSink, View};
use state::{Action, Mode, UiState};
use ui::{SocketsView, Status};

/// Most owners followed at once by the sink (closes/s and CLOSE_WAIT dwell per owner).
const MAX_OWNERS: usize = 4096;

/// The one-line answer when standard output is not a terminal (exit status 2).
pub const NOT_A_TERMINAL: &str = "tracer: error: `tracer top` draws a full-screen view and standard output is not a terminal (for a pipe or a file use `tracer --json`)";

/// Runs `tracer top` until `q`, Ctrl-C or a signal.
pub async fn run(mut cfg: TopConfig) -> anyhow::Result<()> {
    cfg.kernel.pid = crate::live::resolve_pid(cfg.kernel.pid)?;
    let mut top = Top::open(cfg)?;
    let mut signals = Signals::install()?;
    let mut screen = Screen::enter().context("setting up the terminal")?;
    crate::logs::hold();
    let mut keys = KeyReader::spawn();
    let result = top.run(&mut screen, &mut keys, &mut signals).await;
    keys.stop();
    drop(screen);
    let (held, dropped) = crate::logs::release();
    for line in held {
        eprintln!("{line}");
    }
    if dropped > 0 {
        eprintln!("tracer: {dropped} earlier log lines were dropped while the screen was up");
    }
    result?;
    top.exit_line();
    Ok(())
}

/// The front-end: the live driver with top's sink, the model, and what is shown.
struct Top {
    cfg: TopConfig,
    driver: Driver,
    sink: TopSink,
    model: Model,
    view: View,
    ui: UiState,
    /// Periodic redraws (snapshot, view, frame) and the slowest of them, for the exit line.
    redraws: u64,
    slowest_redraw: Duration,
}

impl Top {
    /// Loads the kernel side, opens the path, reads the baseline, and builds the first view at
    /// once (CLOSE_WAIT held now; no rates yet).
    fn open(cfg: TopConfig) -> anyhow::Result<Top> {
        let mut driver = Driver::open(
            cfg.kernel,
            DriverOptions {
                time_wait: cfg.time_wait,
                run_time_stats: false,
                program_stats: false,
            },
        )?;
        let mut sink = TopSink::new(MAX_OWNERS);
        driver.baseline()?;
        let now = driver.tick(&mut sink)?;
        let lost = driver.counters().lost();
        let (model, view) = {
            let mut sh = driver.lock();
            let snap = snapshot(&mut sh.path, lost, now);
            let mut model = Model::new(now, snap.events_total, snap.closes_total, &snap.dwell);
            let view = model.update(&snap, &mut sink, |pid| sh.path.container_id(pid));
            (model, view)
        };
        Ok(Top {
            cfg,
            driver,
            sink,
            model,
            view,
            ui: UiState::default(),
            redraws: 0,
            slowest_redraw: Duration::ZERO,
        })
    }

    /// The loop: the driver feeds the path (kernel wakeups, the drain timer, `--pid`'s exit:
    /// top keeps showing what is left); the redraw timer rebuilds the view; keys change what is
    /// shown; a signal ends it.
    async fn run(
        &mut self,
        screen: &mut Screen,
        keys: &mut KeyReader,
        signals: &mut Signals,
    ) -> anyhow::Result<()> {
        let mut redraw_timer = tokio::time::interval(self.cfg.refresh);
        redraw_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // An interval's first tick is immediate: the next redraw is one interval from now.
        redraw_timer.tick().await;
        let panic_at_first_redraw = std::env::var_os("TRACER_TOP_TEST_PANIC").is_some();
        self.draw(screen)?;
        loop {
            tokio::select! {
                wake = self.driver.wait() => {
                    // `--pid`'s exit is shown by the status line (`followed_exited`).
                    self.driver.handle(wake?, &mut self.sink)?;
                }
                _ = redraw_timer.tick() => {
                    if panic_at_first_redraw {
                        panic!("TRACER_TOP_TEST_PANIC is set: panicking to test the terminal restore");
                    }
                    let started = std::time::Instant::now();
                    self.rebuild()?;
                    self.draw(screen)?;
                    self.redraws += 1;
                    self.slowest_redraw = self.slowest_redraw.max(started.elapsed());
                }
                event = keys.next() => match self.on_event(&event?) {
                    Action::Quit => return Ok(()),
                    Action::Redraw => self.draw(screen)?,
                    Action::None => {}
                },
                _ = signals.next() => return Ok(()),
            }
        }
    }

    /// A clock reading for the path (leaks due reach the sink), then the view rebuilt from a
    /// snapshot.
    fn rebuild(&mut self) -> anyhow::Result<()> {
        let now = self.driver.tick(&mut self.sink)?;
        let lost = self.driver.counters().lost();
        let mut sh = self.driver.lock();
        let snap = snapshot(&mut sh.path, lost, now);
        self.view = self
            .model
            .update(&snap, &mut self.sink, |pid| sh.path.container_id(pid));
        Ok(())
    }

    fn on_event(&mut self, event: &Event) -> Action {
        match event {
            Event::Key(k) => self.ui.on_key(*k, &self.view.rows),
            Event::Resize(..) => Action::Redraw,
            _ => Action::None,
        }
    }

    fn draw(&mut self, screen: &mut Screen) -> anyhow::Result<()> {
        let sockets = match self.ui.mode {
            Mode::Sockets { owner } => {
                Some(sockets_of(&mut self.driver.lock().path, &self.view, owner))
            }
            _ => None,
        };
        if let Some(s) = &sockets {
            // Scrolled no further than the last socket, so that a key back up moves at once.
            self.ui.scroll = self.ui.scroll.min(s.sockets.len().saturating_sub(1));
        }
        let clock = wall_clock();
        // `--pid`'s exit, else the latest log line held (all are printed at exit).
        let note = match self.cfg.kernel.pid {
            Some(pid) if self.driver.followed_exited() => Some(format!("process {pid} exited")),
            _ => crate::logs::latest(),
        };
        let status = Status {
            clock: &clock,
            refresh: self.cfg.refresh,
            threshold_ns: self.cfg.kernel.close_wait_threshold.as_nanos() as u64,
            pid: self.cfg.kernel.pid,
            note: note.as_deref(),
        };
        screen
            .terminal
            .draw(|f| ui::draw(f, &self.view, &self.ui, sockets.as_ref(), &status))
            .context("drawing the screen")?;
        Ok(())
    }

    fn exit_line(&self) {
        let n = *self.driver.lock().path.counts();
        let (c, r) = (self.driver.counters(), self.driver.reader_stats());
        eprintln!(
            "tracer: top: {} events, {} lost, {} undecodable; read in {} kernel wakeups and {} timer drains; {} redraws, the slowest {}",
            n.events,
            c.lost(),
            n.undecodable,
            r.wakeups,
            r.timer_drains,
            self.redraws,
            crate::output::Dur(self.slowest_redraw.as_nanos() as u64)
        );
    }
}

/// SIGINT, SIGTERM and SIGHUP (Ctrl-C itself is a key in raw mode).
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let one = |k| signal(k).context("installing a signal handler");
        Ok(Signals {
            int: one(SignalKind::interrupt())?,
            term: one(SignalKind::terminate())?,
            hup: one(SignalKind::hangup())?,
        })
    }

    /// The next of them. Cancel-safe.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// What the view reads from the path (and `lost`, the kernel's count of lost events), once per
/// redraw.
pub fn snapshot(path: &mut Pipeline, lost: u64, now_ns: u64) -> Snapshot {
    let sockets = path.sockets_now(now_ns);
    let e = path.engine();
    Snapshot {
        now_ns,
        close_wait: e.close_wait_by_owner(now_ns),
        sockets,
        leaking_now: e.leaking_now(),
        closes_total: e.stats().closes,
        events_total: path.counts().events,
        lost,
        undecodable: path.counts().undecodable,
        tracked: e.tracked() as u64,
        capacity: e.config().capacity as u64,
        dwell: std::array::from_fn(|i| {
            TcpState::ALL
                .get(i)
                .map_or_else(Histogram::new, |st| e.dwell_histogram(*st).clone())
        }),
        time_wait_by_remote: time_wait_by_remote(path, now_ns),
        resets_top: path.resets_top(crate::cli::TOP_RESET_ROWS),
        resets_total: path.traces_resets().then(|| path.resets().stats().sent),
    }
}

/// The remote endpoints with the most TIME_WAIT sockets now (the path's per-remote count:
/// hand-overs seen in the trace, re-synced from sock_diag); no panel when there is none.
fn time_wait_by_remote(path: &Pipeline, now_ns: u64) -> Option<TimeWaitPanel> {
    let (rows, remotes) = path.time_wait_top_of(now_ns, crate::cli::TOP_TIME_WAIT_ROWS);
    let uncounted = path.time_wait_stats().table_full;
    (!rows.is_empty() || uncounted > 0).then_some(TimeWaitPanel {
        rows,
        remotes,
        uncounted,
    })
}

/// Terminal events, read on a thread of its own (crossterm's reader blocks) and forwarded.
struct KeyReader {
    events: tokio::sync::mpsc::UnboundedReceiver<io::Result<Event>>,
    stop: Arc<AtomicBool>,
}

impl KeyReader {
    fn spawn() -> KeyReader {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Acquire) {
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
        KeyReader { events, stop }
    }

    /// The next event. Cancel-safe.
    async fn next(&mut self) -> anyhow::Result<Event> {
        match self.events.recv().await {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => Err(anyhow::Error::new(e).context("reading keys")),
            None => anyhow::bail!("reading keys: the terminal's input closed"),
        }
    }

    /// Ends the reading thread (within its 100 ms poll).
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
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

/// One process's CLOSE_WAIT sockets, read from the engine now, with their forensics from the
/// kernel (only while that screen is up).
fn sockets_of(path: &mut Pipeline, view: &View, owner: model::OwnerId) -> SocketsView {
    let now = crate::output::clock_ns(libc::CLOCK_MONOTONIC);
    let sockets = path
        .engine()
        .close_wait_sockets(now, |o| o.map(|o| o.pid) == owner);
    // The leak forensics of each (fd numbers, unread bytes): one dump per namespace.
    let ids: Vec<_> = sockets.iter().map(|s| s.id).collect();
    let forensics = path.close_wait_forensics(&ids, owner);
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
        forensics,
        own_netns: path.own_netns(),
        cmdline: owner.and_then(|pid| path.cmdline_of(pid)),
        exited: owner.is_some_and(|pid| !crate::attribution::process_alive(pid)),
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
