//! What the binary generates about itself (completions, man pages) and the
//! hand-over to `baton-demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// The demo's harness is not linked into the product: hand over to
/// `baton-demo` beside this binary, telling it which agent binary to run.
pub fn demo(args: Vec<String>) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let me = std::env::current_exe().context("locating the baton binary")?;
    let demo = me.with_file_name("baton-demo");
    if !demo.is_file() {
        anyhow::bail!(
            "`baton demo` runs {}, which is not there: it is built from the source tree \
             (scripts/demo, or `cargo build --release -p baton-local`), not shipped in the package",
            demo.display()
        );
    }
    let err = std::process::Command::new(&demo)
        .arg("--baton")
        .arg(&me)
        .args(args)
        .exec();
    Err(anyhow::Error::new(err).context(format!("running {}", demo.display())))
}

/// `baton.1` lists the commands; each command's flags are on its own page
/// (`man baton-switchover`), as git and cargo do.
pub fn man_pages(cmd: clap::Command, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let Some(dir) = dir else {
        return clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("writing the man page");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd, &dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}

/// Completions generated from the same definitions the parser uses, so they
/// can never drift from the real flags.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut cmd, "baton", &mut std::io::stdout());
}
