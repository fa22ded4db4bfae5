//! The fence that does not need the agent (DESIGN.md rule 8).
//!
//! A leader's agent can stall (SIGSTOP, swapped out, stuck in I/O), panic
//! or be killed while its postgres runs on. Its lease then expires in etcd
//! and another member promotes, but nothing stops the old primary: two
//! members accept writes. The `baton-fence` process closes that hole: the
//! agent starts one beside postgres and hands it the lease deadline after
//! every renewal; when the deadline passes unrefreshed, the fence stops the
//! postmaster by signal, whatever the agent is doing.
//!
//! It links std and nix only: no async runtime, no etcd or postgres
//! client, nothing that stalls with the agent. The agent links this library
//! for the wire format ([`Request`], [`Reply`]) and for
//! [`stop_postmaster`], so both fences stop postgres the same way.
//!
//! Deadlines travel as milliseconds of `CLOCK_BOOTTIME`: one clock for
//! every process on the host, which keeps counting while the host is
//! suspended (the lease in etcd does too, on another host).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;

/// Milliseconds on `CLOCK_BOOTTIME`.
pub fn boottime_ms() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME exists on Linux");
    (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000
}

/// `at` (on the monotonic clock `Instant` uses) as milliseconds on
/// [`boottime_ms`]'s clock.
pub fn instant_to_boottime_ms(at: Instant) -> u64 {
    let (now_i, now_b) = (Instant::now(), boottime_ms());
    match at.checked_duration_since(now_i) {
        Some(ahead) => now_b.saturating_add(ahead.as_millis() as u64),
        None => now_b.saturating_sub(now_i.duration_since(at).as_millis() as u64),
    }
}

/// What the agent tells its fence, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Stop the postmaster once `CLOCK_BOOTTIME` passes this (ms), unless
    /// a later request moves or lifts it.
    Arm { deadline_ms: u64 },
    /// Nothing changes; answers whether the fence is alive and what it
    /// guards. A restarted agent that does not yet know the lease its
    /// leader key hangs on sends this, so the old deadline stands.
    Keep,
    /// Postgres is not and cannot become a primary: guard nothing.
    Disarm,
    /// The agent stopped postgres on a clean shutdown: the fence exits.
    Exit,
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_whitespace();
        let req = match (words.next(), words.next()) {
            (Some("arm"), Some(ms)) => Request::Arm {
                deadline_ms: ms.parse().map_err(|e| format!("arm {ms:?}: {e}"))?,
            },
            (Some("keep"), None) => Request::Keep,
            (Some("disarm"), None) => Request::Disarm,
            (Some("exit"), None) => Request::Exit,
            _ => return Err(format!("unknown request {line:?}")),
        };
        match words.next() {
            None => Ok(req),
            Some(_) => Err(format!("trailing words in {line:?}")),
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Arm { deadline_ms } => write!(f, "arm {deadline_ms}"),
            Request::Keep => f.write_str("keep"),
            Request::Disarm => f.write_str("disarm"),
            Request::Exit => f.write_str("exit"),
        }
    }
}

/// The fence's answer to every request: what it guards after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub pid: u32,
    /// The deadline it enforces, if armed.
    pub deadline_ms: Option<u64>,
    /// How many times it has stopped a postmaster.
    pub fired: u64,
}

impl Reply {
    pub fn parse(line: &str) -> Result<Reply, String> {
        let bad = || format!("malformed reply {line:?}");
        let mut words = line.split_whitespace();
        if words.next() != Some("ok") {
            return Err(line.trim().to_string());
        }
        let mut field = |name: &str| {
            words
                .next()
                .and_then(|w| w.strip_prefix(name))
                .and_then(|w| w.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(bad)
        };
        let pid = field("pid")?.parse().map_err(|_| bad())?;
        let deadline_ms = match field("deadline")?.as_str() {
            "-" => None,
            ms => Some(ms.parse().map_err(|_| bad())?),
        };
        let fired = field("fired")?.parse().map_err(|_| bad())?;
        Ok(Reply {
            pid,
            deadline_ms,
            fired,
        })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok pid={} deadline=", self.pid)?;
        match self.deadline_ms {
            Some(ms) => write!(f, "{ms}")?,
            None => f.write_str("-")?,
        }
        write!(f, " fired={}", self.fired)
    }
}

/// The files naming a data directory's server process on their first
/// line: PostgreSQL's postmaster, or an OpenTenBase GTM (whose working
/// directory has `gtm.pid` instead). A directory holds one or the other.
pub const PID_FILES: [&str; 2] = ["postmaster.pid", "gtm.pid"];

/// The live server process of `data_dir` (its postmaster, or its GTM),
/// from its PID file.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = PID_FILES
        .iter()
        .find_map(|f| std::fs::read_to_string(data_dir.join(f)).ok())?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // Signal 0 probes existence; EPERM still means the process exists.
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) if !is_zombie(pid) => Some(pid),
        _ => None,
    }
}

/// A killed postmaster stays a zombie until its parent (init, since pg_ctl
/// exited) reaps it; signal 0 still finds it, yet it holds no port, no
/// shared memory and accepts nothing. Not every init reaps at once.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // "pid (comm) state ...": comm may hold spaces and parentheses.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}

/// How long a fence waits for the postmaster to act on SIGQUIT, and then
/// on SIGKILL. Both together stay well inside the default safety margin.
pub const GRACE: Duration = Duration::from_millis(300);

/// How a postmaster was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It acted on SIGQUIT (an immediate shutdown).
    Quit { pid: i32 },
    /// It did not within [`GRACE`]: its process group got SIGKILL.
    Killed { pid: i32, group: bool },
}

/// Stops the postmaster of `data_dir` now: SIGQUIT, as `pg_ctl stop -m
/// immediate` sends, without waiting on a postmaster that cannot act on it
/// (SIGSTOPped, wedged in I/O) and would accept writes again once it could.
/// After [`GRACE`] its whole process group, which holds every backend since
/// `pg_ctl` starts the postmaster in a session of its own, gets SIGKILL.
/// Crash recovery replays the WAL on the next start. `Ok(None)`: none ran.
///
/// Blocking, for up to twice [`GRACE`]: the agent runs it off its runtime.
pub fn stop_postmaster(data_dir: &Path) -> Result<Option<Stopped>, String> {
    let Some(pid) = postmaster_pid(data_dir) else {
        return Ok(None);
    };
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGQUIT);
    if wait_gone(data_dir, pid, GRACE) {
        return Ok(Some(Stopped::Quit { pid }));
    }
    let group = nix::unistd::getpgid(Some(p)).is_ok_and(|g| g == p);
    let _ = if group {
        killpg(p, Signal::SIGKILL)
    } else {
        kill(p, Signal::SIGKILL)
    };
    if wait_gone(data_dir, pid, GRACE) {
        return Ok(Some(Stopped::Killed { pid, group }));
    }
    Err(format!(
        "postmaster {pid} still exists after SIGQUIT and SIGKILL"
    ))
}

/// Whether postmaster `pid` is gone within `limit`.
fn wait_gone(data_dir: &Path, pid: i32, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if postmaster_pid(data_dir) != Some(pid) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        for r in [
            Request::Arm { deadline_ms: 42 },
            Request::Keep,
            Request::Disarm,
            Request::Exit,
        ] {
            assert_eq!(Request::parse(&r.to_string()), Ok(r));
        }
        for r in [
            Reply {
                pid: 7,
                deadline_ms: Some(1234),
                fired: 2,
            },
            Reply {
                pid: 7,
                deadline_ms: None,
                fired: 0,
            },
        ] {
            assert_eq!(Reply::parse(&r.to_string()), Ok(r));
        }
    }

    #[test]
    fn malformed_lines_are_refused_with_the_line() {
        for bad in ["", "arm", "arm x", "arm 1 2", "keep now", "fire"] {
            let e = Request::parse(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) || e.contains("arm"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            Reply::parse("error: unknown request").unwrap_err(),
            "error: unknown request"
        );
        assert!(Reply::parse("ok pid=1").is_err());
    }

    #[test]
    fn instants_map_onto_boottime_both_ways() {
        let b = boottime_ms();
        let ahead = instant_to_boottime_ms(Instant::now() + Duration::from_secs(3));
        assert!((b + 2_990..=b + 3_100).contains(&ahead), "{b} {ahead}");
        if let Some(past) = Instant::now().checked_sub(Duration::from_secs(1)) {
            let behind = instant_to_boottime_ms(past);
            assert!(behind + 900 <= b + 100 && behind <= b, "{b} {behind}");
        }
    }

    #[test]
    fn a_gtm_is_found_by_its_own_pid_file() {
        let dir = std::env::temp_dir().join(format!("baton-fence-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(postmaster_pid(&dir), None);
        let me = std::process::id() as i32;
        // gtm.pid: PID, working directory, mode.
        std::fs::write(dir.join("gtm.pid"), format!("{me}\n{}\n0\n", dir.display())).unwrap();
        assert_eq!(postmaster_pid(&dir), Some(me));
        std::fs::write(dir.join("gtm.pid"), "999999999\n").unwrap();
        assert_eq!(postmaster_pid(&dir), None, "a PID that does not exist");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
