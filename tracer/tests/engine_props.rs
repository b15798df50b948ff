//! The engine allocates nothing per event in the steady state: replaying a synthetic stream
//! after a warm-up performs zero heap allocations on this thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tracer::engine::{Engine, EngineConfig, synthetic_stream};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

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
