//! Fuzz target: `tracer::fuzzing::web_config` (what it runs and asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::web_config(data));
