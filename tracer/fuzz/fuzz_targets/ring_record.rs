//! Fuzz target: `tracer::fuzzing::ring_record` (what it runs and asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::ring_record(data));
