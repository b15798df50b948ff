//! `cargo xtask dist`: the release artefacts, in `target/dist`:
//!
//! - `tracer-VERSION-x86_64-linux/tracer`: one statically linked binary (glibc's `crt-static`:
//!   no interpreter, no shared library, so it runs on any distribution's userland and from an
//!   empty root). It is built for the explicit target `x86_64-unknown-linux-gnu` in its own
//!   target directory (`target/dist-build`), so the flag does not invalidate the host build.
//! - `tracer-VERSION-x86_64-linux.tar.gz`: the binary, its man page and bash/zsh/fish
//!   completions (written by the binary itself, `tracer dist-assets`, from its clap
//!   definitions), the systemd unit, the licences and the README.
//! - `tracer_VERSION_amd64.deb` (dpkg-deb): /usr/bin/tracer, the man page, the completions, the
//!   systemd unit (disabled: the package has no maintainer scripts), no `Depends`.
//! - `tracer-VERSION-oci.tar`: an OCI archive of the image `localhost/tracer:VERSION`, built
//!   offline by buildah `FROM scratch` with the binary alone; `podman load` / `docker load` /
//!   `ctr import` read it.
//! - `SHA256SUMS` of the four.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{Tools, exec, output, workspace_root};

/// The version every artefact carries: the workspace's.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The target of the static build.
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The image name `dist` gives the OCI archive (and the Kubernetes manifest's `image:`).
pub const IMAGE: &str = concat!("localhost/tracer:", env!("CARGO_PKG_VERSION"));

/// The Debian tools `dist` runs: buildah builds the image.
pub const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("buildah", "buildah"),
    ("dpkg-deb", "dpkg"),
    ("sha256sum", "coreutils"),
];

/// What tests/dist.rs and tests/container.rs drive: the package checks (file, lintian), the
/// container runtime (podman with runc: crun refuses hybrid cgroup hosts, docs/daemon.md),
/// bpftool to find BPF objects left behind, and gcc with the static C library for the leaky
/// fixture (a static program in a `FROM scratch` image).
pub fn ensure_test_tools() -> Result<()> {
    crate::ensure_debian_tools(DEBIAN_TOOLS)?;
    crate::ensure_debian_tools(&[
        ("podman", "podman"),
        ("runc", "runc"),
        ("bpftool", "bpftool"),
        ("file", "file"),
        ("lintian", "lintian"),
        ("gcc", "gcc"),
    ])?;
    let libc_a = Path::new("/usr/lib/x86_64-linux-gnu/libc.a");
    if !libc_a.is_file() {
        // gcc only recommends it; `gcc -static` needs it.
        eprintln!("xtask: installing libc6-dev with apt-get (for gcc -static)");
        exec(Command::new("apt-get").args(["update", "-qq"]))?;
        exec(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "libc6-dev",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if !libc_a.is_file() {
            bail!(
                "libc6-dev installed but {} is still missing",
                libc_a.display()
            );
        }
    }
    Ok(())
}

/// Builds every artefact into `target/dist` and returns that directory.
pub fn run(tools: &Tools) -> Result<PathBuf> {
    crate::ensure_debian_tools(DEBIAN_TOOLS)?;
    let root = workspace_root();
    let dist = root.join("target/dist");
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;

    let binary = build_static(tools)?;
    let name = format!("tracer-{VERSION}-x86_64-linux");
    let stage = dist.join(&name);
    fs::create_dir_all(&stage)?;
    copy(&binary, &stage.join("tracer"))?;
    exec(
        Command::new(stage.join("tracer"))
            .arg("dist-assets")
            .arg(&stage),
    )?;
    for file in [
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "dist/tracer.service",
    ] {
        let from = root.join(file);
        copy(&from, &stage.join(from.file_name().context("file name")?))?;
    }

    // Every file's time is the commit's (reproducible, and not "ancient" for lintian).
    let epoch = commit_time(&root)?;
    let tarball = format!("{name}.tar.gz");
    exec(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                &format!("--mtime=@{epoch}"),
                "-czf",
                &tarball,
                &name,
            ])
            .current_dir(&dist),
    )?;
    let deb = deb(&root, &stage, &dist, epoch)?;
    let oci = oci(&stage.join("tracer"), &dist)?;

    let sums = output(
        Command::new("sha256sum")
            .args([&format!("{name}/tracer"), &tarball, &deb, &oci])
            .current_dir(&dist),
    )?;
    fs::write(dist.join("SHA256SUMS"), &sums)?;
    eprintln!("xtask: dist artefacts in {}:", dist.display());
    for f in [format!("{name}/tracer"), tarball, deb, oci] {
        let size = fs::metadata(dist.join(&f))?.len();
        eprintln!("  {f:<44} {size:>10} bytes");
    }
    Ok(dist)
}

/// The release binary, statically linked against glibc. Fails when the result still has an
/// interpreter or a needed shared library.
fn build_static(tools: &Tools) -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/dist-build");
    exec(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "-p", "tracer", "--target", TARGET])
            .arg("--target-dir")
            .arg(&target_dir)
            // Only the target's artefacts get the flag (with --target, build scripts and proc
            // macros are host artefacts): the binary is static, build.rs stays as it is.
            .args([
                "--config",
                &format!("target.{TARGET}.rustflags=[\"-C\",\"target-feature=+crt-static\"]"),
                "--config",
                "profile.release.strip=\"symbols\"",
            ])
            .current_dir(&root)
            .env("PATH", tools.path()),
    )?;
    let binary = target_dir.join(TARGET).join("release/tracer");
    let elf = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    if let Some(why) = dynamic_dependency(&elf) {
        bail!("{} is not static: {why}", binary.display());
    }
    Ok(binary)
}

/// Why an x86-64 ELF file would need a dynamic loader (a `PT_INTERP` segment or a
/// `DT_NEEDED` entry), or None when it needs none.
fn dynamic_dependency(elf: &[u8]) -> Option<String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return Some("not a 64-bit ELF file".into());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Some("truncated ELF header".into());
    };
    for i in 0..usize::from(phnum) {
        let ph = usize::try_from(phoff).ok()? + i * usize::from(phentsize);
        let kind = elf
            .get(ph..ph + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match kind {
            Some(3) => return Some("it has an interpreter (PT_INTERP)".into()),
            Some(2) => {
                // PT_DYNAMIC: 16-byte entries (tag, value) up to DT_NULL.
                let (off, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
                let (off, size) = (usize::try_from(off).ok()?, usize::try_from(size).ok()?);
                for e in (off..off + size).step_by(16) {
                    match u64_at(e) {
                        Some(0) | None => break,
                        Some(1) => return Some("it needs a shared library (DT_NEEDED)".into()),
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// The Debian package, assembled under `dist/deb` and built by dpkg-deb. Returns its file name.
fn deb(root: &Path, stage: &Path, dist: &Path, epoch: u64) -> Result<String> {
    let pkg = dist.join("deb");
    let doc = pkg.join("usr/share/doc/tracer");
    let files: [(PathBuf, &str, u32); 6] = [
        (stage.join("tracer"), "usr/bin/tracer", 0o755),
        (
            stage.join("README.md"),
            "usr/share/doc/tracer/README.md",
            0o644,
        ),
        (
            stage.join("completions/tracer.bash"),
            "usr/share/bash-completion/completions/tracer",
            0o644,
        ),
        (
            stage.join("completions/_tracer"),
            "usr/share/zsh/vendor-completions/_tracer",
            0o644,
        ),
        (
            stage.join("completions/tracer.fish"),
            "usr/share/fish/vendor_completions.d/tracer.fish",
            0o644,
        ),
        (
            root.join("dist/debian/lintian-overrides"),
            "usr/share/lintian/overrides/tracer",
            0o644,
        ),
    ];
    for (from, to, mode) in &files {
        install(from, &pkg.join(to), *mode)?;
    }
    // The unit as shipped runs /usr/local/bin/tracer (a tarball install); the package's binary
    // is /usr/bin/tracer.
    let unit = fs::read_to_string(root.join("dist/tracer.service"))?;
    let from = "ExecStart=/usr/local/bin/tracer ";
    if !unit.contains(from) {
        bail!("dist/tracer.service has no `{from}` line to point at /usr/bin/tracer");
    }
    let unit = unit.replace(from, "ExecStart=/usr/bin/tracer ");
    write(&pkg.join("lib/systemd/system/tracer.service"), &unit, 0o644)?;
    gzip_into(
        &stage.join("tracer.1"),
        &pkg.join("usr/share/man/man1/tracer.1.gz"),
    )?;
    write(
        &doc.join("copyright"),
        &fs::read_to_string(root.join("dist/debian/copyright"))?,
        0o644,
    )?;
    // A native package (no Debian revision): changelog.gz.
    let changelog = doc.join("changelog");
    write(
        &changelog,
        &format!(
            "tracer ({VERSION}) unstable; urgency=medium\n\n  * Release {VERSION}: a static \
             binary, built by `cargo xtask dist`.\n\n -- tracer developers \
             <tracer@example.org>  {}\n",
            output(Command::new("date").args(["-R", "-u", "-d", &format!("@{epoch}")]))?.trim()
        ),
        0o644,
    )?;
    exec(Command::new("gzip").args(["-9n"]).arg(&changelog))?;

    // DEBIAN/: the control file (no Depends: the binary needs no library) and md5sums; no
    // maintainer scripts, so installing enables nothing and removing leaves nothing.
    let installed_kib = du_kib(&pkg)?;
    let control = format!(
        "Package: tracer\nVersion: {VERSION}\nArchitecture: amd64\nMaintainer: tracer \
         developers <tracer@example.org>\nInstalled-Size: {installed_kib}\nSection: net\n\
         Priority: optional\nHomepage: https://example.org/tracer\nDescription: TCP \
         close-sequence tracer: CLOSE_WAIT leaks and who holds them\n \
         tracer follows every TCP connection of a Linux host through its close\n sequence \
         with one eBPF program on the tracepoint sock:inet_sock_set_state: how\n each \
         connection closed, how long it spent in each state, and which process\n leaks \
         sockets in CLOSE_WAIT. It serves Prometheus metrics as a daemon (a\n systemd unit, \
         disabled by default) and has a live full-screen view\n (tracer top).\n"
    );
    write(&pkg.join("DEBIAN/control"), &control, 0o644)?;
    let mut relative: Vec<String> = files.iter().map(|(_, to, _)| (*to).to_owned()).collect();
    relative.extend(
        [
            "lib/systemd/system/tracer.service",
            "usr/share/man/man1/tracer.1.gz",
            "usr/share/doc/tracer/copyright",
            "usr/share/doc/tracer/changelog.gz",
        ]
        .map(str::to_owned),
    );
    relative.sort();
    let sums = output(Command::new("md5sum").args(&relative).current_dir(&pkg))?;
    write(&pkg.join("DEBIAN/md5sums"), &sums, 0o644)?;

    let name = format!("tracer_{VERSION}_amd64.deb");
    exec(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&pkg)
            .arg(dist.join(&name))
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    fs::remove_dir_all(&pkg)?;
    Ok(name)
}

/// The OCI archive: buildah `FROM scratch`, the binary at /tracer as the entrypoint. Returns
/// its file name.
fn oci(binary: &Path, dist: &Path) -> Result<String> {
    // The image's name is podman's, host-wide: tests/container.rs loads and runs it under the
    // same lock, so that this never removes or retags an image another checkout's test runs.
    let _lock = host_lock()?;
    let ctr = output(Command::new("buildah").args(["from", "scratch"]))?;
    let ctr = ctr.trim().to_owned();
    let built = (|| -> Result<()> {
        exec(
            Command::new("buildah")
                .args(["copy", "--chmod", "0755", &ctr])
                .arg(binary)
                .arg("/tracer"),
        )?;
        exec(Command::new("buildah").args([
            "config",
            "--entrypoint",
            r#"["/tracer"]"#,
            "--cmd",
            "",
            "--port",
            "9977/tcp",
            "--label",
            &format!("org.opencontainers.image.version={VERSION}"),
            "--label",
            "org.opencontainers.image.title=tracer",
            "--label",
            "org.opencontainers.image.licenses=MIT OR Apache-2.0",
            "--label",
            "org.opencontainers.image.description=TCP close-sequence tracer: CLOSE_WAIT leaks and who holds them",
            &ctr,
        ]))?;
        exec(Command::new("buildah").args(["commit", "--rm", "--quiet", &ctr, IMAGE]))?;
        Ok(())
    })();
    if built.is_err() {
        let _ = Command::new("buildah").args(["rm", &ctr]).output();
    }
    built?;
    let name = format!("tracer-{VERSION}-oci.tar");
    let archive = dist.join(&name);
    exec(
        Command::new("buildah")
            .args(["push", "--quiet", IMAGE])
            .arg(format!("oci-archive:{}:{IMAGE}", archive.display())),
    )?;
    // The archive is the artefact: leave nothing in the local image store (a later `dist`
    // would leave this one untagged).
    if output(Command::new("buildah").args(["rmi", IMAGE])).is_err() {
        eprintln!("xtask: {IMAGE} is in use by a container: left in the local image store");
    }
    Ok(name)
}

/// The time of the checked-out commit (seconds since the epoch).
fn commit_time(root: &Path) -> Result<u64> {
    let out = output(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(root),
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("git log printed {out:?}"))
}

/// The host-wide lock of tests/container.rs (an exclusive `flock`), held while it lives.
fn host_lock() -> Result<fs::File> {
    use std::os::fd::AsRawFd as _;
    let path = "/tmp/tracer-container-test.lock";
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock {path}: {}", std::io::Error::last_os_error());
    }
    Ok(f)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    copy(from, to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip_into(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    let out = Command::new("gzip")
        .args(["-9nc"])
        .arg(from)
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!("gzip {} failed", from.display());
    }
    fs::write(to, out.stdout)?;
    Ok(())
}

/// The size of the files under `dir` in KiB, for the control file's Installed-Size.
fn du_kib(dir: &Path) -> Result<u64> {
    let out = output(Command::new("du").args(["-sk"]).arg(dir))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sk printed {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::dynamic_dependency;

    #[test]
    fn the_host_xtask_binary_is_dynamic() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(dynamic_dependency(&exe).is_some());
        assert!(dynamic_dependency(b"#!/bin/sh\n").is_some());
    }
}
