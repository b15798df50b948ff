//! Tell cargo to rebuild when bpf-linker changes (a linker built for another LLVM fails with
//! `Invalid record`). A missing bpf-linker is not an error here: `cargo xtask setup` builds it
//! and puts it on PATH, and the link step names it if it is still missing.
#![warn(unused_crate_dependencies)]
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
