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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal;
use nix::unistd::{Pid, User};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use baton_core::instance::{
    parse_controldata, parse_history, DataDir, ReplicationRow, Running, Unusable,
};
use baton_core::lsn::Lsn;

use crate::config::PgConfig;

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
        Ok(Instance { cfg, name, owner })
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
    async fn run(
        &self,
        what: &str,
        mut cmd: Command,
        timeout: Duration,
    ) -> Result<String, PgError> {
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
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

    /// Classifies the data directory without changing it.
    pub async fn inspect(&self) -> DataDir {
        let dir = &self.cfg.data_dir;
        let meta = match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DataDir::Empty,
            Err(e) => {
                return DataDir::Unusable(Unusable::Unreadable {
                    path: dir.clone(),
                    error: e.to_string(),
                })
            }
        };
        if !meta.is_dir() {
            return DataDir::Unusable(Unusable::NotADirectory(dir.clone()));
        }
        if let Some((uid, _)) = self.owner {
            if meta.uid() != uid {
                return DataDir::Unusable(Unusable::WrongOwner {
                    path: dir.clone(),
                    owner_uid: meta.uid(),
                    user: self.cfg.os_user.clone(),
                    uid,
                });
            }
        }
        let mut entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return DataDir::Unusable(Unusable::Unreadable {
                    path: dir.clone(),
                    error: e.to_string(),
                })
            }
        };
        if entries.next().is_none() {
            return DataDir::Empty;
        }
        if !dir.join("PG_VERSION").exists() || !dir.join("global/pg_control").exists() {
            return DataDir::Unusable(Unusable::NotPostgres(dir.clone()));
        }
        match self.controldata().await {
            Ok(cd) => match cd.get("Database system identifier") {
                Some(id) => {
                    let timeline: Option<u32> = cd
                        .get("Latest checkpoint's TimeLineID")
                        .and_then(|t| t.parse().ok());
                    let history = timeline
                        .filter(|t| *t > 1)
                        .and_then(|t| {
                            std::fs::read_to_string(dir.join(format!("pg_wal/{t:08X}.history")))
                                .ok()
                        })
                        .map(|text| {
                            parse_history(&text)
                                .into_iter()
                                .map(|(t, l, _)| (t, l))
                                .collect()
                        })
                        .unwrap_or_default();
                    DataDir::Valid {
                        system_id: id.clone(),
                        standby: dir.join("standby.signal").exists(),
                        timeline,
                        history,
                        clean_shutdown: cd.get("Database cluster state").map(String::as_str)
                            == Some("shut down"),
                        checkpoint: cd
                            .get("Latest checkpoint location")
                            .and_then(|l| l.parse().ok()),
                    }
                }
                None => DataDir::Unusable(Unusable::NoSystemIdentifier),
            },
            Err(e) => DataDir::Unusable(Unusable::Controldata(e.to_string())),
        }
    }

    /// `pg_controldata` as a map of its "Name: value" lines.
    pub async fn controldata(&self) -> Result<BTreeMap<String, String>, PgError> {
        let mut cmd = self.command("pg_controldata");
        cmd.arg("-D").arg(&self.cfg.data_dir);
        let out = self
            .run("pg_controldata", cmd, Duration::from_secs(10))
            .await?;
        Ok(parse_controldata(&out))
    }

    /// PID of the postmaster, if `postmaster.pid` names a live process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        read_postmaster_pid(&self.cfg.data_dir)
    }

    pub async fn initdb(&self) -> Result<(), PgError> {
        self.prepare_dir(&self.cfg.data_dir)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.cfg.data_dir)
            // Checksums make pg_rewind possible later without wal_log_hints.
            .arg("--data-checksums")
            .arg("--encoding=UTF8")
            .arg("--locale=C.UTF-8")
            .arg("--auth=trust")
            .arg("-U")
            .arg(&self.cfg.superuser.username);
        let mut pwfile = None;
        if let Some(pw) = &self.cfg.superuser.password {
            let path = self.cfg.data_dir.with_extension("pwfile");
            std::fs::write(&path, pw).map_err(|e| PgError::io("writing pwfile", e))?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).ok();
            }
            cmd.arg(format!("--pwfile={}", path.display()));
            pwfile = Some(path);
        }
        let r = self.run("initdb", cmd, self.cfg.start_timeout * 2).await;
        if let Some(p) = pwfile {
            std::fs::remove_file(p).ok();
        }
        r.map(|_| ())
    }

    /// Writes Baton's configuration files for `run_as`.
    pub fn write_config(&self, run_as: &RunAs) -> Result<(), PgError> {
        let dir = &self.cfg.data_dir;
        let conf = render_postgresql_conf(&self.cfg, &self.name, run_as);
        write_owned(&dir.join("postgresql.conf"), &conf, self.owner)?;
        write_owned(
            &dir.join("pg_hba.conf"),
            &render_pg_hba(&self.cfg),
            self.owner,
        )?;
        let signal = dir.join("standby.signal");
        match run_as {
            RunAs::Primary => {
                if signal.exists() {
                    std::fs::remove_file(&signal)
                        .map_err(|e| PgError::io("removing standby.signal", e))?;
                }
            }
            RunAs::Replica { .. } | RunAs::ReadOnly => write_owned(&signal, "", self.owner)?,
        }
        Ok(())
    }

    /// Starts postgres detached and waits until it accepts connections.
    pub async fn start(&self, run_as: &RunAs) -> Result<(), PgError> {
        // A socket dir the operator chose keeps its permissions; one we
        // create is private to the OS user.
        if !self.cfg.socket_dir.exists() {
            self.prepare_dir(&self.cfg.socket_dir)?;
        }
        self.prepare_log_file()?;
        self.write_config(run_as)?;
        let mut cmd = self.command("pg_ctl");
        let t = self.cfg.start_timeout;
        cmd.arg("start")
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-l")
            .arg(&self.cfg.log_file)
            .arg("-w")
            .arg("-t")
            .arg(t.as_secs().max(1).to_string())
            .arg("-s");
        // pg_ctl's daemonized postmaster must not be killed with our handle.
        cmd.kill_on_drop(false);
        self.run("pg_ctl start", cmd, t + Duration::from_secs(5))
            .await
            .map_err(|e| self.with_log_tail(e))?;
        Ok(())
    }

    fn with_log_tail(&self, e: PgError) -> PgError {
        let tail = std::fs::read_to_string(&self.cfg.log_file)
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(5)..].join(" | ")
            })
            .unwrap_or_default();
        match e {
            PgError::Command { what, detail } if !tail.is_empty() => PgError::Command {
                what,
                detail: format!("{detail}; log {}: {tail}", self.cfg.log_file.display()),
            },
            other => other,
        }
    }

    /// Stops postgres. `fast` (SIGINT) rolls back sessions and checkpoints;
    /// `immediate` (SIGQUIT) is for fencing, when seconds matter more than a
    /// checkpoint (crash recovery replays the WAL on the next start).
    pub async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-m")
            .arg(mode.as_str())
            .arg("-w")
            .arg("-t")
            .arg(self.cfg.start_timeout.as_secs().max(1).to_string())
            .arg("-s");
        cmd.kill_on_drop(false);
        match self
            .run(
                "pg_ctl stop",
                cmd,
                self.cfg.start_timeout + Duration::from_secs(5),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Lost a race with the postmaster exiting on its own.
            Err(_) if self.postmaster_pid().is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn promote(&self) -> Result<(), PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("promote")
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-w")
            .arg("-t")
            .arg(self.cfg.start_timeout.as_secs().max(1).to_string())
            .arg("-s");
        self.run(
            "pg_ctl promote",
            cmd,
            self.cfg.start_timeout + Duration::from_secs(5),
        )
        .await
        .map(|_| ())
    }

    /// Clones `host:port` into the (empty) data directory with pg_basebackup,
    /// logging its progress. On failure the partial copy is removed, since
    /// the directory was empty before.
    pub async fn basebackup_from(&self, host: &str, port: u16) -> Result<(), PgError> {
        self.basebackup_into(host, port, &self.cfg.data_dir).await
    }

    /// pg_basebackup of `host:port` into `target` (empty or missing); on
    /// failure the partial copy is removed from `target`.
    async fn basebackup_into(&self, host: &str, port: u16, target: &Path) -> Result<(), PgError> {
        self.prepare_dir(target)?;
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(target)
            .arg("-d")
            .arg(self.replication_conninfo(host, port))
            .args(["-X", "stream", "-c", "fast", "--progress", "--verbose"]);
        if let Some(pw) = &self.cfg.replication.password {
            cmd.env("PGPASSWORD", pw);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| PgError::Command {
            what: "pg_basebackup".into(),
            detail: format!("cannot spawn: {e}"),
        })?;
        let mut stderr = child.stderr.take().expect("piped");
        let name = self.name.clone();
        let reader = tokio::spawn(async move {
            // pg_basebackup redraws progress with '\r'; log at most once a second.
            let mut buf = [0u8; 4096];
            let mut line = String::new();
            let mut all = String::new();
            let mut last = std::time::Instant::now() - Duration::from_secs(2);
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                for ch in String::from_utf8_lossy(&buf[..n]).chars() {
                    if ch == '\r' || ch == '\n' {
                        let l = line.trim();
                        if !l.is_empty() {
                            if ch == '\n' || last.elapsed() >= Duration::from_secs(1) {
                                tracing::info!(member = %name, "pg_basebackup: {l}");
                                last = std::time::Instant::now();
                            }
                            if ch == '\n' {
                                all.push_str(l);
                                all.push('\n');
                            }
                        }
                        line.clear();
                    } else {
                        line.push(ch);
                    }
                }
            }
            all
        });
        let status = child
            .wait()
            .await
            .map_err(|e| PgError::io("pg_basebackup", e))?;
        let log = reader.await.unwrap_or_default();
        if !status.success() {
            empty_dir(target);
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            return Err(PgError::Command {
                what: "pg_basebackup".into(),
                detail: format!(
                    "{} ({status})",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            });
        }
        Ok(())
    }

    /// Rebuilds this member from `host:port` without ever being left with
    /// nothing: the clone goes into `<data_dir>.baton-new` while the old data
    /// (and postgres, if running) stay as they are; only a complete clone is
    /// swapped in, and the old directory is moved aside, never deleted
    /// (`<data_dir>.baton-old-<unix time>`). Returns where it went.
    pub async fn rebuild_from(&self, host: &str, port: u16) -> Result<PathBuf, PgError> {
        let mut new = self.cfg.data_dir.clone().into_os_string();
        new.push(".baton-new");
        let new = PathBuf::from(new);
        // A leftover of an interrupted rebuild is our own partial copy.
        if new.exists() {
            std::fs::remove_dir_all(&new)
                .map_err(|e| PgError::io(format!("removing stale {}", new.display()), e))?;
        }
        if let Err(e) = self.basebackup_into(host, port, &new).await {
            let _ = std::fs::remove_dir_all(&new);
            return Err(e);
        }
        self.stop(StopMode::Fast).await?;
        let aside = self.move_aside()?;
        // move_aside left an empty data dir; the clone takes its place.
        std::fs::remove_dir(&self.cfg.data_dir).map_err(|e| {
            PgError::io(format!("removing empty {}", self.cfg.data_dir.display()), e)
        })?;
        std::fs::rename(&new, &self.cfg.data_dir).map_err(|e| {
            PgError::io(
                format!(
                    "moving the clone {} into place (old data is in {})",
                    new.display(),
                    aside.display()
                ),
                e,
            )
        })?;
        Ok(aside)
    }

    /// Asks another member for a CHECKPOINT, so its control file carries
    /// its current timeline (pg_rewind reads it). Fails when it is down.
    pub async fn checkpoint_member(&self, host: &str, port: u16) -> Result<(), PgError> {
        let client = self
            .connect_member(host, port, Duration::from_secs(10))
            .await?;
        client.batch_execute("CHECKPOINT").await?;
        Ok(())
    }

    /// A superuser session on another member's postgres.
    pub async fn connect_member(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio_postgres::Client, PgError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(host)
            .port(port)
            .user(&self.cfg.superuser.username)
            .dbname("postgres")
            .connect_timeout(timeout);
        if let Some(pw) = &self.cfg.superuser.password {
            cfg.password(pw);
        }
        let (client, conn) = tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| PgError::ConnectTimeout {
                target: format!("{host}:{port}"),
                after: timeout,
            })??;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Superuser connection string to another member (pg_rewind's source).
    fn superuser_conninfo(&self, host: &str, port: u16) -> String {
        format!(
            "host={} port={port} user={} dbname=postgres connect_timeout=5",
            quote_conninfo(host),
            quote_conninfo(&self.cfg.superuser.username),
        )
    }

    /// Makes this (stopped) data directory a prefix of `host:port`'s
    /// history. Checkpoints the source first, so its control file carries
    /// its new timeline; pg_rewind itself runs crash recovery on a target
    /// that was not shut down cleanly (PostgreSQL 13+).
    /// pg_rewind from `host:port`. The caller checkpoints the source first
    /// (`checkpoint_member`), so the source's control file shows its latest
    /// timeline.
    pub async fn rewind_from(&self, host: &str, port: u16) -> Result<(), PgError> {
        let mut cmd = self.command("pg_rewind");
        cmd.arg("-D")
            .arg(&self.cfg.data_dir)
            .arg(format!(
                "--source-server={}",
                self.superuser_conninfo(host, port)
            ))
            .arg("--progress");
        if let Some(pw) = &self.cfg.superuser.password {
            cmd.env("PGPASSWORD", pw);
        }
        let out = self
            .run("pg_rewind", cmd, self.cfg.start_timeout * 10)
            .await?;
        tracing::info!(member = %self.name, "pg_rewind: {}", out.trim().lines().last().unwrap_or("done"));
        Ok(())
    }

    /// Renames the data directory to `<data_dir>.baton-old-<unix time>` and
    /// leaves an empty one: a rebuild never deletes data (rule 7).
    pub fn move_aside(&self) -> Result<PathBuf, PgError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut aside = self.cfg.data_dir.clone().into_os_string();
        aside.push(format!(".baton-old-{stamp}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(&self.cfg.data_dir, &aside).map_err(|e| {
            PgError::io(
                format!(
                    "moving {} aside to {}",
                    self.cfg.data_dir.display(),
                    aside.display()
                ),
                e,
            )
        })?;
        self.prepare_dir(&self.cfg.data_dir)?;
        Ok(aside)
    }

    fn replication_conninfo(&self, host: &str, port: u16) -> String {
        format!(
            "host={} port={port} user={} application_name={} connect_timeout=5",
            quote_conninfo(host),
            quote_conninfo(&self.cfg.replication.username),
            quote_conninfo(&self.name),
        )
    }

    /// Points a running replica at another upstream: rewrite, then reload
    /// (`primary_conninfo` is reloadable since PostgreSQL 13, no restart).
    pub async fn follow(
        &self,
        client: &tokio_postgres::Client,
        run_as: &RunAs,
    ) -> Result<(), PgError> {
        self.write_config(run_as)?;
        client.execute("SELECT pg_reload_conf()", &[]).await?;
        Ok(())
    }

    pub fn local_conn_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.cfg.socket_dir)
            .port(self.cfg.listen.port())
            .user(&self.cfg.superuser.username)
            .dbname("postgres")
            .application_name("baton")
            .connect_timeout(Duration::from_secs(2));
        if let Some(pw) = &self.cfg.superuser.password {
            c.password(pw);
        }
        c
    }

    pub async fn connect(&self, timeout: Duration) -> Result<tokio_postgres::Client, PgError> {
        let cfg = self.local_conn_config();
        let (client, conn) = tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| PgError::ConnectTimeout {
                target: "local postgres".into(),
                after: timeout,
            })??;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
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

/// Removes everything inside `dir` (a partial copy of ours).
fn empty_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// One round trip of status queries against a running instance.
pub async fn query_running(client: &tokio_postgres::Client) -> Result<Running, PgError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    current_setting('server_version_num')::int,
                    current_setting('primary_conninfo'),
                    current_setting('primary_slot_name')",
            &[],
        )
        .await?;
    let in_recovery: bool = row.get(0);
    let mut r = Running {
        in_recovery,
        system_id: row.get(1),
        timeline: None,
        wal_lsn: None,
        receive_lsn: None,
        replay_lsn: None,
        receiver_streaming: false,
        primary_conninfo: row.get(3),
        primary_slot_name: row.get(4),
        server_version: row.get(2),
        slots: BTreeMap::new(),
        replication: vec![],
        history: vec![],
    };
    type PgLsn = tokio_postgres::types::PgLsn;
    let lsn = |l: PgLsn| Lsn(u64::from(l));
    // Slots exist on replicas too: a member about to promote creates the
    // others' slots before it does.
    for row in client
        .query(
            "SELECT slot_name::text, restart_lsn FROM pg_replication_slots WHERE slot_type = 'physical'",
            &[],
        )
        .await?
    {
        r.slots
            .insert(row.get(0), row.get::<_, Option<PgLsn>>(1).map(lsn));
    }
    if in_recovery {
        let row = client
            .query_one(
                // The replay timeline is not exposed directly: the WAL
                // receiver knows it while streaming; otherwise the larger of
                // the last restartpoint's and the minimum recovery point's
                // (pg_rewind sets the latter to the source's timeline).
                "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(),
                        (SELECT status FROM pg_stat_wal_receiver),
                        (SELECT received_tli FROM pg_stat_wal_receiver),
                        GREATEST((SELECT timeline_id FROM pg_control_checkpoint()),
                                 (SELECT min_recovery_end_timeline FROM pg_control_recovery()))",
                &[],
            )
            .await?;
        r.receive_lsn = row.get::<_, Option<PgLsn>>(0).map(lsn);
        r.replay_lsn = row.get::<_, Option<PgLsn>>(1).map(lsn);
        r.receiver_streaming = row.get::<_, Option<String>>(2).as_deref() == Some("streaming");
        let tli: Option<i32> = row
            .get::<_, Option<i32>>(3)
            .or(row.get::<_, Option<i32>>(4));
        r.timeline = tli.map(|t| t as u32);
    } else {
        // pg_control_checkpoint() lags a promotion by seconds; the current
        // WAL file name carries the live timeline.
        let row = client
            .query_one(
                "SELECT pg_current_wal_lsn(), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
                &[],
            )
            .await?;
        r.wal_lsn = Some(lsn(row.get::<_, PgLsn>(0)));
        let tli: String = row.get(1);
        r.timeline = u32::from_str_radix(&tli, 16).ok();
        for row in client
            .query(
                "SELECT application_name, client_addr::text, state, sent_lsn, flush_lsn, replay_lsn, sync_state
                   FROM pg_stat_replication ORDER BY application_name",
                &[],
            )
            .await?
        {
            r.replication.push(ReplicationRow {
                application_name: row.get(0),
                client_addr: row.get(1),
                state: row.get::<_, Option<String>>(2).unwrap_or_default(),
                sent_lsn: row.get::<_, Option<PgLsn>>(3).map(lsn),
                flush_lsn: row.get::<_, Option<PgLsn>>(4).map(lsn),
                replay_lsn: row.get::<_, Option<PgLsn>>(5).map(lsn),
                sync_state: row.get::<_, Option<String>>(6).unwrap_or_default(),
            });
        }
    }
    Ok(r)
}

/// Timeline history of a primary on timeline `tl`, from its history file:
/// `(timeline, switch LSN, reason)` per line.
pub async fn timeline_history(
    client: &tokio_postgres::Client,
    tl: u32,
) -> Result<Vec<(u32, Lsn, String)>, PgError> {
    let file = format!("pg_wal/{tl:08X}.history");
    let row = client
        .query_one("SELECT pg_read_file($1)", &[&file])
        .await?;
    let text: String = row.get(0);
    Ok(parse_history(&text))
}

/// Creates the replication role at bootstrap.
pub async fn create_replication_role(
    client: &tokio_postgres::Client,
    cfg: &PgConfig,
) -> Result<(), PgError> {
    let user = &cfg.replication.username;
    let ident = format!("\"{}\"", user.replace('"', "\"\""));
    let mut sql = format!("CREATE ROLE {ident} WITH REPLICATION LOGIN");
    if let Some(pw) = &cfg.replication.password {
        write!(sql, " PASSWORD '{}'", pw.replace('\'', "''")).expect("string write");
    }
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[user])
        .await?
        .is_some();
    if !exists {
        client.batch_execute(&sql).await?;
    }
    Ok(())
}

pub async fn create_slot(client: &tokio_postgres::Client, slot: &str) -> Result<(), PgError> {
    client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true)
              WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await?;
    Ok(())
}

/// Drops a slot unless something streams through it right now.
pub async fn drop_inactive_slot(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<bool, PgError> {
    let n = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await?;
    Ok(n > 0)
}

pub fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // Signal 0 probes existence; EPERM still means the process exists.
    match signal::kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

fn quote_conninfo(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

fn quote_setting(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The `postgresql.conf` Baton owns. User parameters come first; the
/// settings HA depends on are appended last so they always win.
pub fn render_postgresql_conf(cfg: &PgConfig, name: &str, run_as: &RunAs) -> String {
    let mut s = String::from(
        "# Written by baton before every start; edits here are overwritten.\n\
         # Set parameters in the node config ([postgresql.parameters]).\n",
    );
    let mut params: BTreeMap<&str, String> = BTreeMap::new();
    params.insert("wal_keep_size", "'128MB'".into());
    params.insert("max_wal_senders", "10".into());
    params.insert("max_replication_slots", "10".into());
    params.insert("hot_standby_feedback", "on".into());
    // A replica re-pointed at a new leader retries its connection this often
    // (default 5 s, most of a failover's budget).
    params.insert("wal_retrieve_retry_interval", "'500ms'".into());
    for (k, v) in &cfg.parameters {
        params.insert(k, quote_setting(v));
    }
    params.insert(
        "listen_addresses",
        quote_setting(&cfg.listen.ip().to_string()),
    );
    params.insert("port", cfg.listen.port().to_string());
    params.insert(
        "unix_socket_directories",
        quote_setting(&cfg.socket_dir.display().to_string()),
    );
    params.insert("wal_level", "replica".into());
    params.insert("hot_standby", "on".into());
    params.insert("wal_log_hints", "on".into());
    params.insert("cluster_name", quote_setting(name));
    match run_as {
        RunAs::Primary | RunAs::ReadOnly => {
            params.insert("primary_conninfo", "''".into());
            params.insert("primary_slot_name", "''".into());
            params.insert("recovery_target_timeline", "'latest'".into());
        }
        RunAs::Replica { host, port, slot } => {
            let mut ci = format!(
                "host={} port={port} user={} application_name={} connect_timeout=5",
                quote_conninfo(host),
                quote_conninfo(&cfg.replication.username),
                quote_conninfo(name)
            );
            if let Some(pw) = &cfg.replication.password {
                write!(ci, " password={}", quote_conninfo(pw)).expect("string write");
            }
            params.insert("primary_conninfo", quote_setting(&ci));
            params.insert("primary_slot_name", quote_setting(slot));
            params.insert("recovery_target_timeline", "'latest'".into());
        }
    }
    for (k, v) in params {
        writeln!(s, "{k} = {v}").expect("string write");
    }
    s
}

pub fn render_pg_hba(cfg: &PgConfig) -> String {
    let mut s = String::from(
        "# Written by baton; set [postgresql] pg_hba in the node config to replace.\n",
    );
    if !cfg.pg_hba.is_empty() {
        for l in &cfg.pg_hba {
            s.push_str(l);
            s.push('\n');
        }
        return s;
    }
    let repl = &cfg.replication.username;
    // With passwords configured, any address may connect with scram; without
    // them, only loopback is trusted, which suits one-host clusters only.
    if cfg.superuser.password.is_some() && cfg.replication.password.is_some() {
        s.push_str("local all all trust\n");
        writeln!(s, "host replication {repl} all scram-sha-256").expect("w");
        s.push_str("host all all all scram-sha-256\n");
    } else {
        s.push_str("local all all trust\n");
        writeln!(s, "host replication {repl} 127.0.0.0/8 trust").expect("w");
        s.push_str("host all all 127.0.0.0/8 trust\n");
        writeln!(s, "host replication {repl} ::1/128 trust").expect("w");
        s.push_str("host all all ::1/128 trust\n");
    }
    s
}

fn write_owned(path: &Path, contents: &str, owner: Option<(u32, u32)>) -> Result<(), PgError> {
    let tmp = path.with_extension("baton-tmp");
    std::fs::write(&tmp, contents)
        .map_err(|e| PgError::io(format!("writing {}", tmp.display()), e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .map_err(|e| PgError::io(format!("chown {}", tmp.display()), e))?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| PgError::io(format!("renaming to {}", path.display()), e))
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

    #[test]
    fn conninfo_values_are_quoted_when_needed() {
        assert_eq!(quote_conninfo("127.0.0.1"), "127.0.0.1");
        assert_eq!(quote_conninfo("a b"), "'a b'");
        assert_eq!(quote_conninfo("it's"), "'it\\'s'");
        assert_eq!(quote_conninfo(""), "''");
    }
}
