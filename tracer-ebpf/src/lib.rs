#![no_std]
// This file exists so that `tracer` can name `tracer-ebpf` as a build-dependency (cargo then
// rebuilds the eBPF object when it changes); the program itself is src/main.rs.
