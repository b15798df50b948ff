//! Fuzz target: `tracer::fuzzing::replay_line` (what it runs and asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::replay_line(data));
