//! The Debian package as a user gets it: `scripts/package` builds it from the
//! current tree, then the package's metadata and file list are checked and it
//! is unpacked into a scratch root to run the binary, the completions and the
//! man page from there.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root: this crate lives in `crates/baton`.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Builds the package once and returns its path. The suite builds it
/// with light optimisation, no LTO and parallel codegen (the release
/// profile's full build took about five of the suite's 25 minutes on two
/// cores): what this test checks (files, metadata, man pages, a stripped
/// binary that runs) does not depend on them; `scripts/package` alone
/// builds exactly what users ship.
fn build_package() -> PathBuf {
    let out = run(Command::new(repo().join("scripts/package"))
        .current_dir(repo())
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1")
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"));
    let deb = out
        .lines()
        .last()
        .map(|l| repo().join(l.trim()))
        .expect("scripts/package prints the .deb path last");
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        name.starts_with(&format!("baton_{version}-")) && name.ends_with(".deb"),
        "unexpected package name {name}"
    );
    assert!(deb.is_file(), "{} was not written", deb.display());
    deb
}

fn field<'a>(info: &'a str, name: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} field in dpkg-deb --info:\n{info}"))
}

const FILES: &[&str] = &[
    "./usr/bin/baton",
    "./usr/bin/baton-fence",
    "./lib/systemd/system/baton@.service",
    "./usr/share/doc/baton/examples/node.toml",
    "./usr/share/doc/baton/install.md",
    "./usr/share/doc/baton/copyright",
    "./usr/share/man/man1/baton.1.gz",
    "./usr/share/man/man1/baton-agent.1.gz",
    "./usr/share/man/man1/baton-switchover.1.gz",
    "./usr/share/bash-completion/completions/baton",
    "./usr/share/zsh/vendor-completions/_baton",
    "./usr/share/fish/vendor_completions.d/baton.fish",
];

fn unpack(deb: &Path) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("baton-package-root-")
        .tempdir()
        .expect("temp dir");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()));
    root
}

#[test]
fn package_metadata_files_and_binary_from_a_scratch_root() {
    let deb = build_package();

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert_eq!(field(&info, "Package"), "baton");
    assert!(
        field(&info, "Version").starts_with(env!("CARGO_PKG_VERSION")),
        "{info}"
    );
    assert_eq!(field(&info, "Section"), "database");
    let depends = field(&info, "Depends");
    assert!(depends.contains("libc6"), "Depends: {depends}");
    assert!(depends.contains("postgresql-common"), "Depends: {depends}");
    assert!(info.contains("postinst"), "no postinst script:\n{info}");

    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for f in FILES {
        assert!(
            paths.contains(f),
            "{f} missing from the package:\n{listing}"
        );
    }
    let bin_line = listing
        .lines()
        .find(|l| l.ends_with(" ./usr/bin/baton"))
        .expect("binary listed");
    assert!(bin_line.starts_with("-rwxr-xr-x 0/0 "), "{bin_line}");

    let root = unpack(&deb);
    let r = root.path();

    let version = run(Command::new(r.join("usr/bin/baton")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("baton {}", env!("CARGO_PKG_VERSION"))
    );
    let fence = run(Command::new(r.join("usr/bin/baton-fence")).arg("--version"));
    assert_eq!(
        fence.trim(),
        format!("baton-fence {}", env!("CARGO_PKG_VERSION"))
    );
    // The shipped binary is stripped (profile.release).
    let file = run(Command::new("file").arg(r.join("usr/bin/baton")));
    assert!(
        file.contains("stripped") && !file.contains("not stripped"),
        "{file}"
    );

    let unit = std::fs::read_to_string(r.join("lib/systemd/system/baton@.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/baton agent -c /etc/baton/%i.toml",
        "KillMode=process",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "User=postgres",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks {line:?}:\n{unit}"
        );
    }

    // The example node file the package ships passes the agent's own
    // validation (its hosts do not exist here, which only matters once it runs).
    let example = r.join("usr/share/doc/baton/examples/node.toml");
    if let Err(e) = baton::config::NodeConfig::load(&example) {
        panic!("the shipped example config is invalid: {e}");
    }

    let man = run(Command::new("zcat").arg(r.join("usr/share/man/man1/baton-switchover.1.gz")));
    assert!(man.contains(".TH baton-switchover 1"), "{man}");
    assert!(man.contains("candidate"), "{man}");

    let bash =
        std::fs::read_to_string(r.join("usr/share/bash-completion/completions/baton")).unwrap();
    assert!(bash.contains("complete -F _baton"), "bash completion");
    let complete = run(Command::new("bash").arg("-c").arg(format!(
        "source {}; COMP_WORDS=(baton swi); COMP_CWORD=1; _baton baton swi baton; echo \"${{COMPREPLY[@]}}\"",
        r.join("usr/share/bash-completion/completions/baton").display()
    )));
    assert_eq!(complete.trim(), "switchover", "bash completes `baton swi`");
    let zsh = std::fs::read_to_string(r.join("usr/share/zsh/vendor-completions/_baton")).unwrap();
    assert!(zsh.starts_with("#compdef baton"), "zsh completion");
    let fish =
        std::fs::read_to_string(r.join("usr/share/fish/vendor_completions.d/baton.fish")).unwrap();
    assert!(fish.contains("complete -c baton"), "fish completion");
}
