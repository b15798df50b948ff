//! Fuzz target: `tracer::fuzzing::replay_recording` (what it runs and asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::replay_recording(data));
