//! `tracer` binary: parse, validate, run; errors become one line on stderr and an exit code
//! (2 for usage, 1 for everything else).
use clap::Parser as _;

fn main() {
    std::process::exit(tracer::main_with(&tracer::cli::Cli::parse()));
}
