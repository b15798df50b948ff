//! tracer: follows every TCP connection of a host through its close sequence.
//!
//! Layers, kernel to user: `bpf` (the only module that touches aya: load, attach, ring buffer,
//! kernel counters) → `event` (bytes → [`event::Transition`]) → `engine` (pure state machine:
//! transitions and ticks in, [`record::Record`]s out) → `output` (text, JSON Lines) and
//! `metrics`/`server` (Prometheus). `attribution` names the process that holds a socket;
//! `app` wires it together.

pub mod event;
pub mod record;
pub mod engine;
pub mod replay;
pub mod attribution;
pub mod sockdiag;
pub mod metrics;
pub mod server;
