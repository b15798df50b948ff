//! tracer: follows every TCP connection of a host through its close sequence.
//!
//! Layers, kernel to user: `bpf` (the only module that touches aya: load, attach, the ring buffers
//! as [`bpf::Ring`]s, kernel counters) → `event` (bytes → [`event::Transition`]) → `engine` (pure
//! state machine: transitions and ticks in, [`record::Record`]s out) → `output` (text, JSON Lines)
//! and `metrics`/`server` (Prometheus; `webconfig`: its TLS and authentication). `attribution`
//! names the process that holds a socket, `netns` reaches each network namespace's sock_diag,
//! `container` names the owner's cgroup and container. `pipeline` is the per-event path (decode →
//! owners → engine → records → attribution) that every front-end drives. `live` reads and merges
//! the rings; `driver` is the one live driver (kernel, path, drains, `--pid`'s exit, loss reports)
//! that the live front-ends share; `app` (stream, daemon) and `top` are its loops and sinks, and
//! `replay` the offline loop around the path.
#![warn(unused_crate_dependencies)]

pub mod app;
pub mod assets;
pub mod attribution;
pub mod bpf;
pub mod cli;
pub mod container;
pub mod driver;
pub mod engine;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod hz;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod output;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod rst;
pub mod server;
pub mod sockdiag;
pub mod timewait;
pub mod top;
pub mod untrusted;
pub mod webconfig;

/// Runs the parsed command line and returns the process exit code.
pub fn main_with(cli: &cli::Cli) -> i32 {
    init_logging();
    let result = match &cli.command {
        Some(cli::Command::Replay { file, common }) => match cli::validate_replay(file, common) {
            Ok(cfg) => replay::run(&cfg).map(drop).map_err(anyhow::Error::from),
            Err(e) => return usage(&e),
        },
        Some(cli::Command::Top(args)) => match args.validate() {
            Ok(cfg) => return run_top(cfg),
            Err(e) => return usage(&e),
        },
        Some(cli::Command::BenchEngine {
            connections,
            sockets,
        }) => app::bench_engine(*connections, *sockets),
        Some(cli::Command::DistAssets { dir }) => assets::write(dir),
        None => match cli.live.validate() {
            Ok(cfg) => run_live(cfg),
            Err(e) => return usage(&e),
        },
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tracer: error: {}", one_line(&e));
            1
        }
    }
}

fn usage(e: &cli::UsageError) -> i32 {
    eprintln!("tracer: error: {e}\nFor more information, try '--help'.");
    2
}

fn run_live(cfg: cli::LiveConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    rt.block_on(app::live(cfg))
}

/// `tracer top`: needs a terminal on stdout (else one line and exit status 2).
fn run_top(cfg: cli::TopConfig) -> i32 {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        eprintln!("{}", top::NOT_A_TERMINAL);
        return 2;
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))
        .and_then(|rt| rt.block_on(top::run(cfg)));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tracer: error: {}", one_line(&e));
            1
        }
    }
}

/// The error and its causes on one line, without repeating a cause already in the message.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s.replace('\n', " ")
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TRACER_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: a journal or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(logs::LogWriter)
        .with_target(false)
        .try_init();
}
