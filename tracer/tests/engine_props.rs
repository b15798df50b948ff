//! The engine allocates nothing per event in the steady state: replaying a synthetic stream
//! after a warm-up performs zero heap allocations on this thread.
//!
//! Tier: offline

mod common;

use tracer::engine::{Engine, EngineConfig, synthetic_stream};

use common::alloc::{Counting, allocs};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn no_allocation_per_event_in_steady_state() {
    let mut engine = Engine::new(EngineConfig::default());
    let mut out = Vec::with_capacity(16);
    let mut stream = synthetic_stream(200_000, 512, 3);
    // Warm-up: the table, index and CLOSE_WAIT heap grow to their working size.
    for t in stream.by_ref().take(500_000) {
        out.clear();
        engine.on_transition(&t, &mut out);
    }
    let before = allocs();
    let mut n = 0u64;
    let mut ts = 0;
    for t in stream.by_ref().take(1_000_000) {
        out.clear();
        engine.on_transition(&t, &mut out);
        ts = t.ts_ns;
        n += 1;
    }
    // Ticks with nothing due are free too.
    for k in 0..1000 {
        engine.tick(ts + k, &mut out);
    }
    let during = allocs() - before;
    assert_eq!(n, 1_000_000);
    assert_eq!(during, 0, "{during} allocations in {n} events");
    assert!(engine.stats().closes > 0);
}
