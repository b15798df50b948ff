//! Fuzz target: `tracer::fuzzing::sockdiag_reply` (what it runs and asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::sockdiag_reply(data));
