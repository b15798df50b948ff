//! `tracer top` adds no allocation per event: the per-event path (offline here; the live
//! front-ends drive the same code) with top's sink performs zero heap allocations on this
//! thread once warm. The view is built once per redraw, outside the event path, from top's own
//! snapshot ([`tracer::top::snapshot`]).
//!
//! Tier: offline

mod common;

use tracer::engine::{Histogram, synthetic_stream};
use tracer::pipeline::{Pipeline, PipelineConfig};
use tracer::top::model::{Model, TopSink};
use tracer::top::snapshot;

use common::alloc::{Counting, allocs};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn top_sink_allocates_nothing_per_event() {
    let mut path = Pipeline::offline(PipelineConfig::default());
    let mut sink = TopSink::new(4096);
    let empty: [Histogram; 12] = std::array::from_fn(|_| Histogram::new());
    let mut model = Model::new(0, 0, 0, &empty);
    let mut stream = synthetic_stream(200_000, 512, 3);
    // Warm-up: the engine's table and the sink's owner map grow to their working size.
    for t in stream.by_ref().take(500_000) {
        path.on_transition(&t, None, &mut sink).unwrap();
    }
    let clock = path.engine().clock_ns();
    let warm = snapshot(&mut path, 0, clock);
    model.update(&warm, &mut sink, |_| None);
    let closes_before = path.engine().stats().closes;

    let before = allocs();
    let mut n = 0u64;
    for t in stream.by_ref().take(1_000_000) {
        path.on_transition(&t, None, &mut sink).unwrap();
        n += 1;
    }
    let during = allocs() - before;
    assert_eq!(n, 1_000_000);
    assert_eq!(during, 0, "{during} allocations in {n} events");

    // And the sink did see them: one redraw shows the synthetic owner's closes per second.
    let now = path.engine().clock_ns();
    let view = model.update(&snapshot(&mut path, 0, now), &mut sink, |_| None);
    let closes = path.engine().stats().closes - closes_before;
    assert!(closes > 0);
    let row = view
        .rows
        .iter()
        .find(|r| r.owner == Some(4242))
        .unwrap_or_else(|| panic!("no row for the synthetic owner: {:?}", view.rows));
    let per_s: f64 = row.rates.iter().sum();
    assert!(per_s > 0.0, "{row:?}");
}
