//! The recording generators of the replay tests: transition lines as `tracer --json` writes
//! them, and the leak recording of [`tracer::engine::synthetic::leak_recording`] as such lines.

/// One transition line of a server socket on 127.0.0.1:8080 (peer port from `sk`).
pub fn line(ts: u64, sk: u64, old: &str, new: &str) -> String {
    format!(
        r#"{{"type":"transition","ts_ns":{ts},"sk":"0x{sk:x}","family":4,"saddr":"127.0.0.1","sport":8080,"daddr":"127.0.0.1","dport":{},"old":"{old}","new":"{new}","dwell_ns":null,"task_pid":1,"task_tid":1,"task_comm":"srv"}}"#,
        40_000 + sk % 1000
    )
}

/// A 3 s recording from `base` (threshold 1 s): ten server sockets in CLOSE_WAIT for 3 s (ten
/// leaks), ten in CLOSE_WAIT for 2.7 µs, one entering CLOSE_WAIT just before the end.
pub fn leak_recording_lines(base: u64) -> Vec<String> {
    tracer::engine::synthetic::leak_recording(base)
        .iter()
        .map(|&(ts, sk, old, new)| line(ts, sk, old.name(), new.name()))
        .collect()
}
