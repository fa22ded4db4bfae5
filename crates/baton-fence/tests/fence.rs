//! The fence binary on its own, against stand-in postmasters: `sleep`
//! processes in a process group of their own, named in a `postmaster.pid`
//! as postgres writes it. (The agent's integration tests run it beside real
//! PostgreSQL.)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_fence::{boottime_ms, Reply, Request};

const SIGQUIT: i32 = nix::sys::signal::Signal::SIGQUIT as i32;
const SIGKILL: i32 = nix::sys::signal::Signal::SIGKILL as i32;

struct Fence {
    child: Child,
    socket: PathBuf,
    data_dir: PathBuf,
    _dir: tempfile_dir::Dir,
}

/// A scratch directory removed on drop (std only, like the fence).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Fence {
    fn start() -> Fence {
        // Tests run in parallel threads: one directory each.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("baton-fence-test-{}-{n}", std::process::id()));
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let socket = dir.join("fence.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_baton-fence"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--socket")
            .arg(&socket)
            .stderr(Stdio::null())
            .spawn()
            .expect("starting baton-fence");
        wait_for("the fence's socket", Duration::from_secs(5), || {
            UnixStream::connect(&socket).ok()
        });
        Fence {
            child,
            socket,
            data_dir,
            _dir: tempfile_dir::Dir(dir),
        }
    }

    fn send(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.socket).expect("connecting to the fence");
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        reply.trim().to_string()
    }

    fn order(&self, req: Request) -> Reply {
        Reply::parse(&self.send(&req.to_string())).expect("a well-formed reply")
    }

    /// A stand-in postmaster: `script` under sh, in its own process group.
    fn postmaster(&self, script: &str) -> StandIn {
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .spawn()
            .unwrap();
        write_pid(&self.data_dir, child.id());
        StandIn(child)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in postmaster, killed on drop if a failed test left it running.
struct StandIn(Child);

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn write_pid(data_dir: &Path, pid: u32) {
    std::fs::write(
        data_dir.join("postmaster.pid"),
        format!("{pid}\n{}\n", data_dir.display()),
    )
    .unwrap();
}

fn exit_signal(pm: &mut StandIn, limit: Duration) -> i32 {
    let status = wait_for("the stand-in postmaster to exit", limit, || {
        pm.0.try_wait().unwrap()
    });
    status
        .signal()
        .unwrap_or_else(|| panic!("exited without a signal: {status}"))
}

#[test]
fn stops_the_postmaster_with_sigquit_when_the_deadline_passes() {
    let f = Fence::start();
    let mut pm = f.postmaster("exec sleep 600");
    let deadline = boottime_ms() + 300;
    let r = f.order(Request::Arm {
        deadline_ms: deadline,
    });
    assert_eq!((r.deadline_ms, r.fired), (Some(deadline), 0));
    assert_eq!(r.pid, f.child.id());
    assert_eq!(exit_signal(&mut pm, Duration::from_secs(5)), SIGQUIT);
    assert!(boottime_ms() >= deadline, "fenced before the deadline");
    let r = wait_for(
        "the fence to count the stop",
        Duration::from_secs(2),
        || Some(f.order(Request::Keep)).filter(|r| r.fired == 1),
    );
    assert_eq!(r.deadline_ms, Some(deadline), "keep changes nothing");
}

#[test]
fn a_postmaster_that_ignores_sigquit_loses_its_process_group_to_sigkill() {
    let f = Fence::start();
    // The ignored SIGQUIT survives exec, as in a wedged postmaster.
    let mut pm = f.postmaster("trap '' QUIT; exec sleep 600");
    let comm = format!("/proc/{}/comm", pm.0.id());
    wait_for(
        "the trap to be set (sh exec'd sleep)",
        Duration::from_secs(5),
        || (std::fs::read_to_string(&comm).ok()?.trim() == "sleep").then_some(()),
    );
    f.order(Request::Arm {
        deadline_ms: boottime_ms(),
    });
    assert_eq!(exit_signal(&mut pm, Duration::from_secs(5)), SIGKILL);
}

#[test]
fn a_refreshed_or_lifted_deadline_does_not_fire() {
    let f = Fence::start();
    let mut pm = f.postmaster("exec sleep 600");
    let first = boottime_ms() + 200;
    f.order(Request::Arm { deadline_ms: first });
    // Refreshed before it passes, as every renewal does, then lifted.
    f.order(Request::Arm {
        deadline_ms: first + 60_000,
    });
    let r = f.order(Request::Disarm);
    assert_eq!(r.deadline_ms, None);
    wait_for("the first deadline to pass", Duration::from_secs(5), || {
        (boottime_ms() >= first + 300).then_some(())
    });
    assert!(
        pm.0.try_wait().unwrap().is_none(),
        "a lifted deadline fired"
    );
    assert_eq!(f.order(Request::Keep).fired, 0);
}

#[test]
fn a_postmaster_started_after_the_deadline_is_stopped_too() {
    let f = Fence::start();
    f.order(Request::Arm {
        deadline_ms: boottime_ms(),
    });
    // Nothing to stop yet; a late `pg_ctl start` then brings one up.
    let mut pm = f.postmaster("exec sleep 600");
    assert_eq!(exit_signal(&mut pm, Duration::from_secs(5)), SIGQUIT);
}

#[test]
fn bad_requests_get_an_error_line_and_exit_ends_the_fence() {
    let mut f = Fence::start();
    assert!(f.send("fire now").starts_with("error: unknown request"));
    assert!(f.send("arm soon").starts_with("error: arm \"soon\""));
    // A second fence for the same socket leaves the first alone.
    let second = Command::new(env!("CARGO_BIN_EXE_baton-fence"))
        .arg("--data-dir")
        .arg(&f.data_dir)
        .arg("--socket")
        .arg(&f.socket)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(second.success());
    assert_eq!(f.order(Request::Keep).pid, f.child.id());
    f.order(Request::Exit);
    let status = wait_for("the fence to exit", Duration::from_secs(5), || {
        f.child.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    assert!(!f.socket.exists(), "the socket is removed on exit");
    let usage = Command::new(env!("CARGO_BIN_EXE_baton-fence"))
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--data-dir and --socket"));
}
