//! The postmaster's life: initdb, start in a role, stop, promote, re-point.
//! Every pg_ctl call waits (`-w`) within `start_timeout`.

use std::time::Duration;

use super::conf::{render_pg_hba, render_postgresql_conf, render_recovery_conf, write_owned};
use super::{Instance, PgError, RunAs, StopMode};

impl Instance {
    /// Where a bootstrap's initdb runs: beside the data directory, which it
    /// replaces only once the new cluster's identifier is in etcd.
    fn staging_dir(&self) -> std::path::PathBuf {
        let mut d = self.cfg.data_dir.clone().into_os_string();
        d.push(".baton-initdb");
        d.into()
    }

    /// initdb into the staging directory (a leftover of ours is replaced);
    /// the new cluster's system identifier.
    pub async fn initdb_staged(&self) -> Result<String, PgError> {
        let staging = self.staging_dir();
        self.remove_leftover(&staging)?;
        tracing::info!("running initdb in {}", staging.display());
        self.initdb(&staging).await?;
        self.system_id_of(&staging).await
    }

    /// The system identifier of a staged initdb, if one is there.
    pub async fn staged_system_id(&self) -> Option<String> {
        let staging = self.staging_dir();
        if !staging.join("global/pg_control").exists() {
            return None;
        }
        self.system_id_of(&staging).await.ok()
    }

    /// The staged cluster becomes the (empty) data directory.
    pub fn adopt_staged(&self) -> Result<(), PgError> {
        self.put_in_place(&self.staging_dir(), "the staged initdb")
    }

    /// The staged cluster is dropped: it never ran and holds nothing.
    pub fn discard_staged(&self) -> Result<(), PgError> {
        self.remove_leftover(&self.staging_dir())
    }

    /// initdb into `dir`.
    async fn initdb(&self, dir: &std::path::Path) -> Result<(), PgError> {
        self.check_initdb_allowed()?;
        self.prepare_dir(dir)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(dir)
            // Checksums make pg_rewind possible later without wal_log_hints.
            .arg("--data-checksums")
            .arg("--encoding=UTF8")
            .arg("--locale=C.UTF-8")
            .arg("--auth=trust")
            .arg("-U")
            .arg(&self.cfg.superuser.username);
        let mut pwfile = None;
        if let Some(pw) = &self.cfg.superuser.password {
            let path = dir.with_extension("pwfile");
            std::fs::write(&path, pw).map_err(|e| PgError::io("writing pwfile", e))?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).ok();
            }
            cmd.arg(format!("--pwfile={}", path.display()));
            pwfile = Some(path);
        }
        let r = self
            .run("initdb", cmd, self.cfg.start_timeout.saturating_mul(2))
            .await;
        if let Some(p) = pwfile {
            std::fs::remove_file(p).ok();
        }
        r.map(|_| ())
    }

    /// Writes Baton's configuration files for `run_as`.
    pub fn write_config(&self, run_as: &RunAs) -> Result<(), PgError> {
        let dir = &self.cfg.data_dir;
        let conf = if self.cfg.flavor == super::Flavor::OpenGauss {
            self.opengauss_conf(run_as)
        } else {
            render_postgresql_conf(&self.cfg, &self.name, run_as)
        };
        write_owned(&dir.join("postgresql.conf"), &conf, self.owner)?;
        write_owned(
            &dir.join("pg_hba.conf"),
            &render_pg_hba(&self.cfg),
            self.owner,
        )?;
        // Only this flavor's standby file may be there: the other kind,
        // copied in by a clone or a rewind, would mean nothing to postgres
        // but mislead `inspect`.
        let standby = self.cfg.flavor.standby_file();
        for file in ["standby.signal", "recovery.conf"] {
            let path = dir.join(file);
            let wanted = file == standby && !matches!(run_as, RunAs::Primary);
            if wanted {
                let text = if self.cfg.flavor.recovery_conf() {
                    render_recovery_conf(&self.cfg, &self.name, run_as)
                } else {
                    String::new()
                };
                write_owned(&path, &text, self.owner)?;
            } else if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(|e| PgError::io(format!("removing {file}"), e))?;
            }
        }
        Ok(())
    }

    /// Starts postgres detached and waits until it accepts connections.
    pub async fn start(&self, run_as: &RunAs) -> Result<(), PgError> {
        if self.cfg.flavor.is_gtm() {
            return self.gtm_start(run_as).await;
        }
        // A socket dir the operator chose keeps its permissions; one we
        // create is private to the OS user.
        if !self.cfg.socket_dir.exists() {
            self.prepare_dir(&self.cfg.socket_dir)?;
        }
        self.prepare_log_file()?;
        if let RunAs::Replica { host, port, .. } = run_as {
            self.prepare_standby_start(host, *port).await?;
        }
        self.write_config(run_as)?;
        self.clear_stale_lock().await?;
        if self.cfg.flavor == super::Flavor::OpenGauss {
            return self.gs_start(run_as).await;
        }
        let mut cmd = self.pg_ctl("start");
        cmd.args(self.start_args())
            .arg("-l")
            .arg(&self.cfg.log_file);
        self.run("pg_ctl start", cmd, self.pg_ctl_limit())
            .await
            .map_err(|e| self.with_log_tail(e))?;
        Ok(())
    }

    /// A postmaster that died (a crash, kill -9) leaves `postmaster.pid`
    /// and its socket's lock file behind, and postgres refuses to start
    /// while the PID in them exists,
    /// which a zombie does until its parent reaps it (not every init does at
    /// once: here it took seconds). So they go once that PID is gone
    /// or a zombie. Its orphaned backends, if any, still hold the old
    /// shared memory segment, which postgres checks by itself (found by the
    /// data directory, not through this file); they are waited for here,
    /// bounded, rather than failing the start and waiting a retry.
    pub(super) async fn clear_stale_lock(&self) -> Result<(), PgError> {
        let path = self.cfg.data_dir.join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let Some(pid) = lock_owner(&text) else {
            return Ok(());
        };
        if self.postmaster_pid().is_some() {
            // Alive: pg_ctl says so itself.
            return Ok(());
        }
        if let Some(shmid) = stale_lock_shmid(&text) {
            let deadline = std::time::Instant::now() + ORPHANS_LIMIT;
            while shm_attached(shmid) && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // The socket's lock file names the same dead postmaster.
        let socket_lock = self
            .cfg
            .socket_dir
            .join(format!(".s.PGSQL.{}.lock", self.cfg.listen.port()));
        for file in [&socket_lock, &path] {
            let owner = std::fs::read_to_string(file).ok();
            if owner.as_deref().and_then(lock_owner) != Some(pid) {
                continue;
            }
            match std::fs::remove_file(file) {
                Ok(()) => tracing::info!(
                    member = %self.name,
                    pid,
                    "removed {} of a postmaster that is gone",
                    file.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PgError::io(format!("removing stale {}", file.display()), e)),
            }
        }
        Ok(())
    }

    /// `pg_ctl ACTION -D <data_dir> -w -t <start_timeout> -s`: every call
    /// waits for its outcome, bounded by `start_timeout`. Not killed with our
    /// handle: pg_ctl start daemonizes the postmaster, and a half-done stop
    /// or promote is worse than a finished one.
    fn pg_ctl(&self, action: &str) -> tokio::process::Command {
        let mut cmd = self.control("pg_ctl", action, &[]);
        cmd.arg("-s");
        cmd
    }

    /// `TOOL ACTION [ARGS] -D <data_dir> -w -t <start_timeout>`: the shape
    /// of pg_ctl and of the systems' own (`gs_ctl`, `gtm_ctl`).
    pub(super) fn control(
        &self,
        tool: &str,
        action: &str,
        args: &[&str],
    ) -> tokio::process::Command {
        let mut cmd = self.command(tool);
        cmd.arg(action)
            .args(args)
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-w")
            .arg("-t")
            .arg(self.cfg.start_timeout.as_secs().max(1).to_string());
        cmd.kill_on_drop(false);
        cmd
    }

    /// How long a pg_ctl call may take in all: its own `-t` and some.
    pub(super) fn pg_ctl_limit(&self) -> Duration {
        self.cfg
            .start_timeout
            .saturating_add(Duration::from_secs(5))
    }

    pub(super) fn with_log_tail(&self, e: PgError) -> PgError {
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
        if mode == StopMode::Immediate {
            return self.fence().await;
        }
        let (what, mut cmd) = match self.cfg.flavor {
            f if f.is_gtm() => (
                "gtm_ctl stop",
                self.control("gtm_ctl", "stop", &["-Z", "gtm"]),
            ),
            super::Flavor::OpenGauss => ("gs_ctl stop", self.control("gs_ctl", "stop", &[])),
            _ => ("pg_ctl stop", self.pg_ctl("stop")),
        };
        cmd.arg("-m").arg(mode.as_str());
        match self.run(what, cmd, self.pg_ctl_limit()).await {
            Ok(_) => Ok(()),
            // Lost a race with the postmaster exiting on its own.
            Err(_) if self.postmaster_pid().is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Immediate stop for fencing, exactly as the fence process stops it
    /// ([`baton_fence::stop_postmaster`]: SIGQUIT, then SIGKILL of the
    /// process group of a postmaster that cannot act on it).
    async fn fence(&self) -> Result<(), PgError> {
        let dir = self.cfg.data_dir.clone();
        let outcome = tokio::task::spawn_blocking(move || baton_fence::stop_postmaster(&dir))
            .await
            .map_err(|e| PgError::Refused(format!("the fencing task failed: {e}")))?;
        match outcome {
            Ok(Some(baton_fence::Stopped::Killed { pid, group })) => {
                tracing::warn!(
                    pid,
                    group,
                    "postmaster did not exit within {:?} of SIGQUIT: sent SIGKILL",
                    baton_fence::GRACE
                );
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(PgError::Refused(e)),
        }
    }

    /// Makes postgres promote onto timeline `to` rather than `from + 1`:
    /// it takes the newest timeline with a history file in `pg_wal`, plus
    /// one, so a placeholder for each timeline in between (a comment line
    /// only) makes it skip them. Those numbers were used, or reserved, by a
    /// promotion this member never saw.
    pub fn skip_timelines(&self, from: u32, to: u32) -> Result<(), PgError> {
        if self.cfg.flavor.no_timelines() {
            return Ok(());
        }
        for tl in from.saturating_add(1)..to {
            let path = self.cfg.data_dir.join(format!("pg_wal/{tl:08X}.history"));
            if !path.exists() {
                let text =
                    format!("# Baton: timeline {tl} skipped; promotion goes to timeline {to}\n");
                super::conf::write_owned(&path, &text, self.owner)?;
            }
        }
        Ok(())
    }

    /// Beside the data directory from before `pg_ctl promote` until it has
    /// returned: an agent killed in between leaves a promotion that
    /// postgres still carries out (after replaying what it received, which
    /// can take long), and its successor must know.
    fn promote_marker(&self) -> std::path::PathBuf {
        let mut m = self.cfg.data_dir.clone().into_os_string();
        m.push(".baton-promoting");
        m.into()
    }

    pub async fn promote(&self) -> Result<(), PgError> {
        if self.cfg.flavor.is_gtm() {
            return self.gtm_promote().await;
        }
        let marker = self.promote_marker();
        std::fs::write(&marker, "pg_ctl promote signalled\n")
            .map_err(|e| PgError::io(format!("writing {}", marker.display()), e))?;
        let r = if self.cfg.flavor == super::Flavor::OpenGauss {
            self.gs_failover().await
        } else {
            let cmd = self.pg_ctl("promote");
            self.run("pg_ctl promote", cmd, self.pg_ctl_limit())
                .await
                .map(|_| ())
        };
        if r.is_ok() {
            let _ = std::fs::remove_file(&marker);
        }
        r
    }

    /// See [`Instance::promote_marker`]: pending while postgres still
    /// recovers (or does not answer); a primary finished it, and a stopped
    /// postmaster drops the signal file when it next starts.
    pub fn promotion_pending(&self, pg: &baton_core::ha::PgStatus) -> bool {
        use baton_core::ha::PgStatus;
        let marker = self.promote_marker();
        if !marker.exists() {
            return false;
        }
        match pg {
            PgStatus::Running(r) if r.in_recovery => true,
            PgStatus::Unresponsive => true,
            _ => {
                let _ = std::fs::remove_file(&marker);
                false
            }
        }
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
}

/// How long a start waits for the backends a dead postmaster left behind
/// to notice and exit (they do within milliseconds unless busy).
const ORPHANS_LIMIT: Duration = Duration::from_secs(5);

/// The PID a lock file (`postmaster.pid`, `.s.PGSQL.<port>.lock`) names
/// on its first line.
fn lock_owner(text: &str) -> Option<i32> {
    text.lines().next()?.trim().parse().ok()
}

/// The System V shared memory id in `postmaster.pid` (line 7: key, id).
fn stale_lock_shmid(text: &str) -> Option<u64> {
    text.lines().nth(6)?.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a process still attaches segment `shmid` (`/proc/sysvipc/shm`:
/// key, shmid, perms, size, cpid, lpid, nattch, ...).
fn shm_attached(shmid: u64) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return false;
    };
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1).and_then(|v| v.parse::<u64>().ok()) == Some(shmid)
            && f.get(6).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) > 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_memory_id_is_read_from_postmaster_pid() {
        let pid_file = "30109\n/tmp/pgc/node3\n1764639476\n25611\n/tmp/pgc/node3.sock\n127.0.0.1\n  6383901         3\nready   \n";
        assert_eq!(stale_lock_shmid(pid_file), Some(3));
        assert_eq!(stale_lock_shmid("30109\n/tmp/x\n"), None);
    }
}
