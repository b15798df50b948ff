//! The output formats add no allocation per event: the per-event path (offline here; the live
//! front-ends drive the same code) writing text or JSON Lines through `Output` performs zero
//! heap allocations on this thread once warm.
//!
//! Tier: offline

mod common;

use std::io;

use tracer::engine::synthetic_stream;
use tracer::output::{Format, Output, Show};
use tracer::pipeline::{Pipeline, PipelineConfig};

use common::alloc::{Counting, allocs};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts what bytes go out, without keeping them.
struct Count(u64);

impl io::Write for Count {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn allocations_per_format(format: Format) {
    let mut path = Pipeline::offline(PipelineConfig::default());
    let mut out = Output::new(Count(0), format, Show::ALL, 0);
    let mut stream = synthetic_stream(200_000, 512, 3);
    // Warm-up: the engine's table grows to its working size.
    for t in stream.by_ref().take(300_000) {
        path.on_transition(&t, None, &mut out).unwrap();
    }
    let closes_before = path.engine().stats().closes;

    let before = allocs();
    let mut n = 0u64;
    for t in stream.by_ref().take(200_000) {
        path.on_transition(&t, None, &mut out).unwrap();
        n += 1;
    }
    let during = allocs() - before;
    assert_eq!(n, 200_000);
    assert_eq!(during, 0, "{format:?}: {during} allocations in {n} events");

    // And the output did get them: closes were made, and bytes went out.
    assert!(path.engine().stats().closes > closes_before);
    assert!(out.into_inner().0 > 0);
}

#[test]
fn json_output_allocates_nothing_per_event() {
    allocations_per_format(Format::Json);
}

#[test]
fn text_output_allocates_nothing_per_event() {
    allocations_per_format(Format::Text);
}
