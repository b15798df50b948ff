//! The release artefacts of `cargo xtask dist` (target/dist; `cargo xtask test` builds them
//! first): the binary is static (no interpreter, no shared library: `file`, `ldd`) and runs from
//! an empty root; the tarball holds the binary, the man page and the bash/zsh/fish completions
//! (identical to what this source's clap definitions generate now), the systemd unit, the
//! licences and the README; the .deb has no Depends and no maintainer scripts, passes lintian,
//! installs with `dpkg -i` into a clean root, runs (it traces), and leaves nothing behind when
//! purged; the OCI archive is one; SHA256SUMS matches. Needs root, dpkg, lintian and file
//! (`cargo xtask setup`); fails, never skips, without them.
//!
//! Tier: host

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::prometheus::TempDir;

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dist");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn dist(name: &str) -> PathBuf {
    let p = Path::new(DIST).join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask dist` (cargo xtask test runs it first)",
        p.display()
    );
    p
}

fn stage() -> PathBuf {
    dist(&format!("tracer-{VERSION}-x86_64-linux"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}): run `cargo xtask setup`"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_binary_is_static_and_runs_from_an_empty_root() {
    let bin = stage().join("tracer");
    let file = text(&run(Command::new("file").arg(&bin)));
    eprintln!("file: {}", file.trim());
    assert!(
        file.contains("static-pie linked") || file.contains("statically linked"),
        "{file}"
    );
    assert!(!file.contains("interpreter"), "{file}");
    // ldd exits non-zero for a static binary on some glibc versions: read what it says.
    let ldd = Command::new("ldd")
        .arg(&bin)
        .output()
        .expect("cannot run ldd");
    let ldd = text(&ldd);
    eprintln!("ldd: {}", ldd.trim());
    assert!(
        ldd.contains("statically linked") || ldd.contains("not a dynamic executable"),
        "{ldd}"
    );
    assert!(!ldd.contains("=>"), "ldd lists libraries: {ldd}");

    // A root holding nothing but the binary: no loader, no libc, no /etc.
    let root = TempDir::new("empty-root");
    // cp, not fs::copy: a write descriptor open in this process while another test thread
    // forks would make the exec fail with ETXTBSY.
    run(Command::new("cp").arg(&bin).arg(root.path("tracer")));
    let version = run(Command::new("chroot")
        .arg(&root.0)
        .arg("/tracer")
        .arg("--version"));
    assert_eq!(text(&version).trim(), format!("tracer {VERSION}"));
    let bad = Command::new("chroot")
        .arg(&root.0)
        .args(["/tracer", "--close-wait-threshold", "soon"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.starts_with("error: invalid value 'soon'"), "{err}");
    // Offline analysis from the empty root: a recording on stdin, the summary out.
    let replay = Command::new("chroot")
        .arg(&root.0)
        .args([
            "/tracer",
            "replay",
            "--json",
            "--close-wait-threshold",
            "1s",
            "-",
        ])
        .stdin(std::fs::File::open(recording(&root)).unwrap())
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(
        String::from_utf8_lossy(&replay.stdout).contains(r#""type":"close_wait_leak""#),
        "{}",
        text(&replay)
    );
}

/// A recording with leaks (tests/common/recordings.rs, the replay tests' generator).
fn recording(dir: &TempDir) -> PathBuf {
    let mut text = common::recordings::leak_recording_lines(1_000_000_000).join("\n");
    text.push('\n');
    dir.write("rec.jsonl", &text)
}

#[test]
fn the_tarball_holds_what_it_should_and_the_generated_pages_match_the_cli() {
    let tarball = dist(&format!("tracer-{VERSION}-x86_64-linux.tar.gz"));
    let listing = text(&run(Command::new("tar").arg("-tzf").arg(&tarball)));
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort_unstable();
    let top = format!("tracer-{VERSION}-x86_64-linux/");
    let want: Vec<String> = [
        "",
        "LICENSE-APACHE",
        "LICENSE-MIT",
        "README.md",
        "completions/",
        "completions/_tracer",
        "completions/tracer.bash",
        "completions/tracer.fish",
        "tracer",
        "tracer.1",
        "tracer.service",
    ]
    .iter()
    .map(|n| format!("{top}{n}"))
    .collect();
    assert_eq!(names, want);

    // What this source's clap definitions generate now is what was shipped.
    let fresh = TempDir::new("dist-assets");
    run(Command::new(env!("CARGO_BIN_EXE_tracer"))
        .arg("dist-assets")
        .arg(&fresh.0));
    for f in [
        "tracer.1",
        "completions/tracer.bash",
        "completions/_tracer",
        "completions/tracer.fish",
    ] {
        let shipped = std::fs::read(stage().join(f)).unwrap();
        assert!(
            shipped == std::fs::read(fresh.path(f)).unwrap(),
            "{f} in target/dist differs from what the CLI generates: run `cargo xtask dist`"
        );
    }
    // Every long option of --help is in the man page and the completions.
    let help = text(&run(
        Command::new(env!("CARGO_BIN_EXE_tracer")).arg("--help")
    ));
    let man = std::fs::read_to_string(stage().join("tracer.1")).unwrap();
    let bash = std::fs::read_to_string(stage().join("completions/tracer.bash")).unwrap();
    // The long option each line of the option list starts with.
    let options: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            let at = l.find("--")?;
            let end = l[at + 2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(l.len(), |e| at + 2 + e);
            Some(&l[at..end])
        })
        .collect();
    assert!(options.contains(&"--close-wait-threshold"), "{help}");
    for o in &options {
        assert!(
            man.contains(&o.replace('-', "\\-")),
            "{o} not in the man page"
        );
        assert!(bash.contains(o), "{o} not in the bash completion");
    }
    run(Command::new("bash")
        .arg("-n")
        .arg(stage().join("completions/tracer.bash")));
    assert!(man.starts_with(".ie"), "not a roff page");
    assert!(man.contains(".TH tracer 1"), "no .TH header");
}

#[test]
fn the_deb_passes_lintian_installs_into_a_clean_root_runs_and_leaves_nothing() {
    let deb = dist(&format!("tracer_{VERSION}_amd64.deb"));
    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    eprintln!("{info}");
    assert!(
        !info.contains("Depends"),
        "a static binary depends on nothing:\n{info}"
    );
    assert!(info.contains("Package: tracer") && info.contains(&format!("Version: {VERSION}")));
    // The control archive holds control and md5sums only: no maintainer scripts.
    let ctrl_dir = TempDir::new("deb-control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(ctrl_dir.path("DEBIAN")));
    let mut scripts: Vec<String> = std::fs::read_dir(ctrl_dir.path("DEBIAN"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    scripts.sort();
    assert_eq!(scripts, ["control", "md5sums"]);

    let contents = text(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    for path in [
        "./usr/bin/tracer",
        "./usr/share/man/man1/tracer.1.gz",
        "./usr/share/bash-completion/completions/tracer",
        "./usr/share/zsh/vendor-completions/_tracer",
        "./usr/share/fish/vendor_completions.d/tracer.fish",
        "./lib/systemd/system/tracer.service",
        "./usr/share/doc/tracer/copyright",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }
    assert!(
        !contents.contains("/etc/"),
        "nothing in /etc: the unit is not enabled by the package"
    );

    // lintian: nothing above the informational level (overrides in dist/debian say why).
    let lint = Command::new("lintian")
        .arg(&deb)
        .output()
        .expect("cannot run lintian: run `cargo xtask setup`");
    let report = text(&lint);
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        lint.status.success() && problems.is_empty(),
        "lintian:\n{report}"
    );

    // dpkg -i into a clean root: an empty dpkg database and nothing else.
    let root = TempDir::new("deb-root");
    let admin = root.path("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.0.display()))
            .arg("--log=/dev/null")
            .args(args))
    };
    dpkg(&["-i", deb.to_str().unwrap()]);
    let status = text(&dpkg(&["-s", "tracer"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    let unit = std::fs::read_to_string(root.path("lib/systemd/system/tracer.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tracer "), "{unit}");
    assert!(
        !root.path("etc").exists(),
        "installing enabled or configured something in /etc"
    );
    // The installed binary, in the clean root (nothing else there) and on this host, tracing.
    let v = run(Command::new("chroot")
        .arg(&root.0)
        .args(["/usr/bin/tracer", "--version"]));
    assert_eq!(text(&v).trim(), format!("tracer {VERSION}"));
    let traced = run(Command::new(root.path("usr/bin/tracer")).args([
        "--duration",
        "1s",
        "--json",
        "--show",
        "none",
    ]));
    let out = String::from_utf8_lossy(&traced.stdout);
    assert!(
        out.lines().any(|l| l.contains(r#""type":"summary""#))
            && out.lines().any(|l| l.contains(r#""type":"meta""#)),
        "the installed tracer did not trace:\n{}",
        text(&traced)
    );

    dpkg(&["--purge", "tracer"]);
    let mut left = Vec::new();
    collect(&root.0, &root.0, &mut left);
    left.retain(|p| !p.starts_with("var/lib/dpkg"));
    assert_eq!(
        left,
        ["var", "var/lib"],
        "left behind after dpkg --purge (besides dpkg's own database)"
    );
    let db = std::fs::read_dir(admin.join("info"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tracer"))
        .collect::<Vec<_>>();
    assert!(db.is_empty(), "dpkg still knows {db:?}");
}

/// Every path under `dir`, relative to `root`, sorted.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        if p.is_dir() {
            collect(root, &p, out);
        }
    }
}

#[test]
fn the_oci_archive_is_an_oci_layout_and_the_sums_match() {
    let archive = dist(&format!("tracer-{VERSION}-oci.tar"));
    let listing = text(&run(Command::new("tar").arg("-tf").arg(&archive)));
    for entry in ["oci-layout", "index.json"] {
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == entry),
            "no {entry} in the OCI archive:\n{listing}"
        );
    }
    let index = run(Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("index.json"));
    let index: serde_json::Value = serde_json::from_slice(&index.stdout).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        format!("localhost/tracer:{VERSION}"),
        "{index}"
    );
    // Small: the binary and almost nothing else.
    let size = std::fs::metadata(&archive).unwrap().len();
    let binary = std::fs::metadata(stage().join("tracer")).unwrap().len();
    eprintln!("OCI archive: {size} bytes (binary {binary} bytes)");
    assert!(
        size < binary,
        "the image ({size} bytes) is more than its binary"
    );

    let sums = run(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(DIST));
    let checked = text(&sums);
    assert_eq!(
        checked.lines().filter(|l| l.ends_with(": OK")).count(),
        4,
        "{checked}"
    );
}
