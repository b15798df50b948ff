//! `tracer top` adds no allocation per event: the per-event path (offline here; the live
//! front-ends drive the same code) with top's sink performs zero heap allocations on this
//! thread once warm. The view is built once per redraw, outside the event path.
//!
//! Tier: offline

mod common;

use tracer::engine::{Histogram, synthetic_stream};
use tracer::event::TcpState;
use tracer::pipeline::{Pipeline, PipelineConfig};
use tracer::top::model::{Model, Snapshot, TopSink};

use common::alloc::{Counting, allocs};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn snapshot(path: &mut Pipeline, now_ns: u64) -> Snapshot {
    let sockets = path.sockets_now(now_ns);
    let e = path.engine();
    Snapshot {
        now_ns,
        close_wait: e.close_wait_by_owner(now_ns),
        sockets,
        leaking_now: e.leaking_now(),
        closes_total: e.stats().closes,
        events_total: path.counts().events,
        lost: 0,
        undecodable: 0,
        tracked: e.tracked() as u64,
        capacity: e.config().capacity as u64,
        dwell: std::array::from_fn(|i| e.dwell_histogram(TcpState::ALL[i]).clone()),
        time_wait_by_remote: None,
    }
}

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
    let warm = snapshot(&mut path, clock);
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
    let view = model.update(&snapshot(&mut path, now), &mut sink, |_| None);
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
