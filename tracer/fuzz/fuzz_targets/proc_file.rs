//! Fuzz target: `tracer::fuzzing::proc_file` (what it runs and asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::proc_file(data));
