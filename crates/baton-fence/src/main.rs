//! `baton-fence --data-dir DIR --socket PATH`: the process that stops a
//! leader's postgres when its agent no longer can (DESIGN.md rule 8; the
//! library's docs say why it exists).
//!
//! The agent starts it (detached, in a session of its own, so it outlives
//! the agent and `KillMode=process`) and talks to it over a unix socket, one
//! request line and one reply line at a time. The guard thread waits for
//! the deadline on `CLOCK_BOOTTIME`; when it passes unrefreshed, the
//! postmaster gets SIGQUIT, then its process group SIGKILL, and the fence
//! says so on stderr (the agent sends that to `<socket>.log`). While the
//! deadline stays passed it looks again every 50 ms: a `pg_ctl start`
//! already under way can bring a postmaster back.
//!
//! It exits on its own once it has guarded nothing and heard from no agent
//! for a while (a restarted agent starts a new one), or when a cleanly
//! stopping agent says `exit`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use baton_fence::{boottime_ms, postmaster_pid, stop_postmaster, Reply, Request, Stopped};

/// While the deadline stays passed, the postmaster is looked for this often.
const REFENCE: Duration = Duration::from_millis(50);
/// The longest the guard sleeps between looks at the clock, so a deadline
/// is met within this even if the host was suspended meanwhile.
const TICK: Duration = Duration::from_millis(100);
/// Guarding nothing and unheard from for this long, the fence exits.
const IDLE_EXIT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: baton-fence --data-dir DIR --socket PATH\n\
    Started by `baton agent`; stops the postmaster of DIR when the lease deadline \
    the agent sends over PATH passes unrefreshed.";

struct Args {
    data_dir: PathBuf,
    socket: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let (mut data_dir, mut socket) = (None, None);
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--data-dir") => data_dir = args.next().map(PathBuf::from),
            Some("--socket") => socket = args.next().map(PathBuf::from),
            Some("--version") => {
                println!("baton-fence {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            Some("--help" | "-h") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    match (data_dir, socket) {
        (Some(data_dir), Some(socket)) => Ok(Args { data_dir, socket }),
        _ => Err("--data-dir and --socket are both required".into()),
    }
}

#[derive(Default)]
struct State {
    deadline_ms: Option<u64>,
    fired: u64,
    exit: bool,
}

struct Fence {
    state: Mutex<State>,
    changed: Condvar,
    /// When an agent last sent a request.
    contact: Mutex<Instant>,
}

fn log(msg: std::fmt::Arguments<'_>) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "{}.{:03} baton-fence[{}]: {msg}",
        t.as_secs(),
        t.subsec_millis(),
        std::process::id()
    );
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("baton-fence: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // One fence per data directory: a second would only race the first.
    if UnixStream::connect(&args.socket).is_ok() {
        log(format_args!(
            "another fence answers on {}; exiting",
            args.socket.display()
        ));
        return ExitCode::SUCCESS;
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = match UnixListener::bind(&args.socket) {
        Ok(l) => l,
        Err(e) => {
            log(format_args!(
                "cannot listen on {}: {e}",
                args.socket.display()
            ));
            return ExitCode::FAILURE;
        }
    };
    // Only the agent's user may arm or lift the fence.
    let _ = std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600));
    log(format_args!(
        "guarding the postmaster of {} (socket {})",
        args.data_dir.display(),
        args.socket.display()
    ));
    let fence = Arc::new(Fence {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        contact: Mutex::new(Instant::now()),
    });
    {
        let fence = fence.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let fence = fence.clone();
                std::thread::spawn(move || serve(stream, &fence));
            }
        });
    }
    guard(&args, &fence);
    let _ = std::fs::remove_file(&args.socket);
    ExitCode::SUCCESS
}

/// One agent connection: a reply line for every request line.
fn serve(stream: UnixStream, fence: &Fence) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        *fence.contact.lock().expect("contact lock") = Instant::now();
        let req = Request::parse(&line);
        let reply = match &req {
            Ok(req) => {
                let mut st = fence.state.lock().expect("fence lock");
                match req {
                    Request::Arm { deadline_ms } => st.deadline_ms = Some(*deadline_ms),
                    Request::Keep => {}
                    Request::Disarm | Request::Exit => st.deadline_ms = None,
                }
                fence.changed.notify_all();
                Reply {
                    pid: std::process::id(),
                    deadline_ms: st.deadline_ms,
                    fired: st.fired,
                }
                .to_string()
            }
            Err(e) => format!("error: {e}"),
        };
        let sent = writeln!(out, "{reply}");
        // Exit only once the agent has its answer.
        if req == Ok(Request::Exit) {
            fence.state.lock().expect("fence lock").exit = true;
            fence.changed.notify_all();
            return;
        }
        if sent.is_err() {
            return;
        }
    }
}
/// Waits for the deadline and fences at it, until told to exit or idle.
fn guard(args: &Args, fence: &Fence) {
    let mut st = fence.state.lock().expect("fence lock");
    loop {
        if st.exit {
            log(format_args!("exiting: the agent stopped postgres itself"));
            return;
        }
        let now = boottime_ms();
        let wait = match st.deadline_ms {
            Some(d) if now >= d => {
                drop(st);
                let outcome = stop_postmaster(&args.data_dir);
                st = fence.state.lock().expect("fence lock");
                // A renewal that arrived while we signalled moved the
                // deadline on; the stop still stands, it cannot be undone.
                match outcome {
                    Ok(Some(how)) => {
                        st.fired += 1;
                        let how = match how {
                            Stopped::Quit { pid } => format!("postmaster {pid} stopped by SIGQUIT"),
                            Stopped::Killed { pid, group } => format!(
                                "postmaster {pid} ignored SIGQUIT: SIGKILL sent to its {}",
                                if group { "process group" } else { "process" }
                            ),
                        };
                        log(format_args!(
                            "lease deadline passed {} ms ago without a refresh from the agent: {how}",
                            now - d
                        ));
                    }
                    Ok(None) => {}
                    Err(e) => log(format_args!("lease deadline passed, stopping failed: {e}")),
                }
                REFENCE
            }
            Some(d) => Duration::from_millis(d - now).min(TICK),
            None => TICK * 10,
        };
        let idle = fence.contact.lock().expect("contact lock").elapsed() >= IDLE_EXIT;
        let guarding = match st.deadline_ms {
            None => false,
            Some(d) => boottime_ms() < d || postmaster_pid(&args.data_dir).is_some(),
        };
        if idle && !guarding {
            log(format_args!(
                "no agent for {} s and nothing to guard; exiting",
                IDLE_EXIT.as_secs()
            ));
            return;
        }
        st = fence.changed.wait_timeout(st, wait).expect("fence lock").0;
    }
}
