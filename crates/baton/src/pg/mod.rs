//! Control of the local PostgreSQL instance: every initdb, start, stop,
//! promote, clone and query goes through here.
//!
//! Decision: postgres is **detached** from the agent (started by `pg_ctl`,
//! which puts the postmaster in its own session). An agent crash or upgrade
//! therefore costs no downtime: the next agent adopts the running instance,
//! found through `postmaster.pid`. A *clean* agent shutdown stops postgres
//! itself (DESIGN.md rule 6).
//!
//! When the agent runs as root, each postgres binary is spawned with the uid
//! and gid of the configured OS user (only the child switches), because
//! initdb and postgres refuse to run as root.
//!
//! Per-node settings live in files Baton rewrites before every start
//! (`postgresql.conf`, `pg_hba.conf`, `standby.signal`), so a clone or a
//! pg_rewind that copied another node's files cannot leave this node with
//! that node's port.
//!
//! Files: `datadir.rs` (inspect, move aside), `process.rs` (initdb, start,
//! stop, promote), `clone.rs` (pg_basebackup, pg_rewind, peers), `query.rs`
//! (the status query, slots), `conf.rs` (the files Baton owns), `flavor.rs`
//! (what differs for the PostgreSQL-derived systems).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::unistd::User;
use tokio::process::Command;

use crate::config::PgConfig;

mod clone;
mod conf;
mod datadir;
mod fence;
mod flavor;
mod gauss;
mod gtm;
mod process;
mod query;

pub use baton_fence::postmaster_pid as read_postmaster_pid;
pub use conf::{render_pg_hba, render_postgresql_conf};
pub use fence::{FenceLink, FenceOrder};
pub use flavor::{query_segments, Flavor, MirroringReader, NodeType};
pub use gauss::{query_running_opengauss, render_opengauss_conf, Peer};
pub use gtm::{render_gtm_conf, GTM_SYSTEM_ID};
pub use query::{
    create_replication_role, create_slot, drop_inactive_slot, query_running, set_sync_standbys,
    timeline_history, PgClient,
};

/// What went wrong with the local instance or a peer's postgres. The
/// sources are kept (SQLSTATE, the I/O error and its path) so that callers
/// branch on what happened, never on message text.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A postgres tool ran and failed.
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// Connecting to `target` did not complete in time: as good as down.
    #[error("connect to {target} timed out after {after:?}")]
    ConnectTimeout { target: String, after: Duration },
    /// A file-system step; `what` names the step and the path.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The server answered with an error, or the connection failed.
    #[error("postgres: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// Baton refuses to act (configuration that cannot be made safe).
    #[error("{0}")]
    Refused(String),
}

impl PgError {
    fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> PgError {
        PgError::Io {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The server's SQLSTATE, when it answered with an error.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            PgError::Db(e) => e.code(),
            _ => None,
        }
    }

    /// The server itself answered SQLSTATE 08006 on an open session: what
    /// an OpenTenBase node says to every query while its GTM is out of
    /// reach ("GTM error, could not obtain global timestamp"). The node is
    /// up; a connection that failed carries no server answer at all.
    pub fn is_gtm_unreachable(&self) -> bool {
        matches!(self, PgError::Db(e) if e
            .as_db_error()
            .is_some_and(|d| *d.code() == tokio_postgres::error::SqlState::CONNECTION_FAILURE))
    }

    /// The server could not be reached at all: refused, reset or timed-out
    /// connections, and the SQLSTATEs of a server that is not accepting
    /// connections (class 08; 57P01-57P03: shutting down, crashed, starting).
    /// A caller retries these instead of escalating: a peer that is merely
    /// down must not trigger a rebuild.
    pub fn is_unreachable(&self) -> bool {
        match self {
            PgError::ConnectTimeout { .. } => true,
            PgError::Db(e) => match e.code() {
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
                }
                None => {
                    e.is_closed()
                        || std::iter::successors(std::error::Error::source(e), |s| s.source())
                            .any(|s| s.is::<std::io::Error>())
                }
            },
            _ => false,
        }
    }
}

/// tokio-postgres errors display as just "db error"; this shows the
/// server's SQLSTATE and message, or the client-side cause.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// How this instance should run: the two ways Baton writes its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    Primary,
    /// Read-only with no upstream: recovery without streaming, so the node
    /// can take part in an election without accepting writes.
    ReadOnly,
    /// Stream from `host:port` using `slot`.
    Replica {
        host: String,
        port: u16,
        slot: String,
    },
}

pub struct Instance {
    pub cfg: PgConfig,
    /// Application name used by this node when streaming (its member name).
    pub name: String,
    owner: Option<(u32, u32)>,
    /// The clone or rebuild under way, as its pg_basebackup reports it.
    progress: std::sync::Arc<std::sync::Mutex<Option<baton_core::instance::Progress>>>,
    /// The cluster's other members, for systems that list them in their
    /// configuration (openGauss's `replconninfo`).
    members: std::sync::Mutex<Vec<Peer>>,
    /// Which of `replay_position`'s two ways in answered last: it is tried
    /// first, so a pg_hba.conf without `local replication` costs one psql
    /// per tick, not two.
    replay_via_tcp: std::sync::atomic::AtomicBool,
}

impl Instance {
    /// Resolves the OS user; fails when running as root with no such user,
    /// since postgres must never run as root.
    pub fn new(cfg: PgConfig, name: String) -> Result<Instance, PgError> {
        let owner = if nix::unistd::geteuid().is_root() {
            let user = User::from_name(&cfg.os_user)
                .map_err(|e| PgError::io(format!("looking up OS user {:?}", cfg.os_user), e))?
                .ok_or_else(|| {
                    PgError::Refused(format!(
                        "running as root and OS user {:?} (postgresql.os_user) does not exist; \
                         postgres refuses to run as root",
                        cfg.os_user
                    ))
                })?;
            if user.uid.is_root() {
                return Err(PgError::Refused(
                    "postgresql.os_user must not be root: postgres refuses to run as root".into(),
                ));
            }
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        Ok(Instance {
            cfg,
            name,
            owner,
            progress: Default::default(),
            members: Default::default(),
            replay_via_tcp: Default::default(),
        })
    }

    /// How far the clone or rebuild under way got, if one is.
    pub fn progress(&self) -> Option<baton_core::instance::Progress> {
        self.progress.lock().expect("progress lock").clone()
    }

    fn bin(&self, tool: &str) -> PathBuf {
        self.cfg.bin_dir.join(tool)
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin(tool));
        c.current_dir(self.cfg.data_dir.parent().unwrap_or(Path::new("/")));
        c.env("LC_ALL", "C.UTF-8").env_remove("PGDATA");
        c.stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
            if let Ok(Some(u)) = User::from_uid(uid.into()) {
                c.env("HOME", u.dir).env("USER", &u.name);
            }
        }
        c.kill_on_drop(true);
        c
    }

    /// Runs a tool to completion within `timeout`, returning its stdout.
    async fn run(&self, what: &str, cmd: Command, timeout: Duration) -> Result<String, PgError> {
        self.run_all(what, cmd, timeout).await.map(|(out, _)| out)
    }

    /// Like `run`, with stderr too (pg_rewind reports there).
    async fn run_all(
        &self,
        what: &str,
        mut cmd: Command,
        timeout: Duration,
    ) -> Result<(String, String), PgError> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| PgError::Command {
            what: what.to_string(),
            detail: format!("cannot spawn: {e}"),
        })?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| PgError::Timeout {
                what: what.to_string(),
                after: timeout,
            })?
            .map_err(|e| PgError::io(what, e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let detail = format!("{} {}", stderr.trim(), stdout.trim());
            return Err(PgError::Command {
                what: what.to_string(),
                detail: format!("{} ({})", detail.trim(), out.status),
            });
        }
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Makes `dir` exist, owned by the OS user, mode 0700.
    fn prepare_dir(&self, dir: &Path) -> Result<(), PgError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| PgError::io(format!("creating {}", dir.display()), e))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(|e| PgError::io(format!("chown {}", dir.display()), e))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PgError::io(format!("chmod {}", dir.display()), e))
    }

    fn prepare_log_file(&self) -> Result<(), PgError> {
        let f = &self.cfg.log_file;
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).ok();
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
            .map_err(|e| PgError::io(format!("opening log file {}", f.display()), e))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(f, Some(uid), Some(gid))
                .map_err(|e| PgError::io(format!("chown {}", f.display()), e))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connections_are_unreachable_failed_tools_are_not() {
        // Nothing listens on port 1 of loopback: the connection is refused.
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1").port(1).user("postgres");
        let e = PgError::from(cfg.connect(tokio_postgres::NoTls).await.err().unwrap());
        assert!(e.is_unreachable(), "{e}");
        assert!(e.sqlstate().is_none());
        let timeout = PgError::ConnectTimeout {
            target: "10.0.0.1:5432".into(),
            after: Duration::from_secs(1),
        };
        assert!(timeout.is_unreachable());
        let failed = PgError::Command {
            what: "pg_rewind".into(),
            detail: "could not find common ancestor".into(),
        };
        assert!(!failed.is_unreachable());
        let io = PgError::io(
            "creating /x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(!io.is_unreachable());
        assert!(
            std::error::Error::source(&io).is_some(),
            "the I/O source is kept"
        );
    }
}
