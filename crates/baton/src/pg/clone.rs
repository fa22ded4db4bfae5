//! Copies between members: pg_basebackup (clone, rebuild beside the data
//! directory), pg_rewind, and superuser sessions on another member.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use baton_core::lsn::Lsn;

use super::conf::{quote_conninfo, replication_conninfo};
use super::datadir::empty_dir;
use super::{Instance, PgError, StopMode};

impl Instance {
    /// Clones `host:port` into the (empty) data directory with pg_basebackup,
    /// logging its progress. On failure the partial copy is removed, since
    /// the directory was empty before.
    pub async fn basebackup_from(&self, host: &str, port: u16) -> Result<(), PgError> {
        if self.cfg.flavor.is_gtm() {
            return self.gtm_clone(host, port);
        }
        self.basebackup_into(host, port, &self.cfg.data_dir, "clone")
            .await?;
        self.clear_rewind_marker()
    }

    /// pg_basebackup of `host:port` into `target` (empty or missing); on
    /// failure the partial copy is removed from `target`. Its progress is
    /// published under `job` while it runs (`Instance::progress`).
    pub(super) async fn basebackup_into(
        &self,
        host: &str,
        port: u16,
        target: &Path,
        job: &str,
    ) -> Result<(), PgError> {
        let flavor_args = self.basebackup_args(host, port).await?;
        self.prepare_dir(target)?;
        let tool = if self.cfg.flavor == super::Flavor::OpenGauss {
            "gs_basebackup"
        } else {
            "pg_basebackup"
        };
        let mut cmd = self.command(tool);
        if self.cfg.flavor == super::Flavor::OpenGauss {
            cmd.args(self.gs_basebackup_args(host, port, target));
        } else {
            cmd.arg("-D")
                .arg(target)
                .arg("-d")
                .arg(self.replication_conninfo(host, port))
                .args(["-X", "stream", "-c", "fast", "--progress", "--verbose"])
                .args(flavor_args);
        }
        if let Some(rate) = &self.cfg.basebackup_max_rate {
            cmd.arg(format!("--max-rate={rate}"));
        }
        if let Some(pw) = &self.cfg.replication.password {
            cmd.env("PGPASSWORD", pw);
        }
        let (status, _, log) = self.run_with_progress(tool, cmd, job, None).await?;
        if !status.success() {
            empty_dir(target);
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            return Err(PgError::Command {
                what: tool.into(),
                detail: format!(
                    "{} ({status})",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            });
        }
        super::conf::forget_leader_settings(target)
    }

    /// Runs a copy that reports `N/M kB (P%)` on stderr with `--progress`
    /// (pg_basebackup, pg_rewind) and publishes it under `job` until it
    /// ends. Returns its exit status, stdout, and its stderr lines (the
    /// redrawn progress line only as it last stood). Killed after `limit`.
    async fn run_with_progress(
        &self,
        what: &str,
        mut cmd: tokio::process::Command,
        job: &str,
        limit: Option<Duration>,
    ) -> Result<(std::process::ExitStatus, String, String), PgError> {
        let progress = self.progress.clone();
        *progress.lock().expect("progress lock") = Some(baton_core::instance::Progress {
            job: job.to_string(),
            ..Default::default()
        });
        let r = self.run_reporting(what, &mut cmd, limit).await;
        *progress.lock().expect("progress lock") = None;
        r
    }

    async fn run_reporting(
        &self,
        what: &str,
        cmd: &mut tokio::process::Command,
        limit: Option<Duration>,
    ) -> Result<(std::process::ExitStatus, String, String), PgError> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| PgError::Command {
            what: what.into(),
            detail: format!("cannot spawn: {e}"),
        })?;
        let mut stderr = child.stderr.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let out_reader = tokio::spawn(async move {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out).await;
            out
        });
        let (name, tool) = (self.name.clone(), what.to_string());
        let progress = self.progress.clone();
        let started = std::time::Instant::now();
        let reader = tokio::spawn(async move {
            // Progress is redrawn with '\r'; log it at most once a second.
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
                        if let Some((done, total, pct)) =
                            baton_core::instance::parse_copy_progress(l)
                        {
                            let secs = started.elapsed().as_secs_f64();
                            let rate = (secs > 0.5).then(|| (done as f64 * 1024.0 / secs) as u64);
                            if let Some(p) = progress.lock().expect("progress lock").as_mut() {
                                p.done_bytes = done * 1024;
                                p.total_bytes = total * 1024;
                                p.percent = pct.min(100);
                                p.rate_bytes_per_s = rate;
                                p.eta_s = rate
                                    .filter(|r| *r > 0)
                                    .map(|r| total.saturating_sub(done) * 1024 / r);
                            }
                        }
                        if !l.is_empty() {
                            if ch == '\n' || last.elapsed() >= Duration::from_secs(1) {
                                tracing::info!(member = %name, "{tool}: {l}");
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
        let status = match limit {
            None => child.wait().await.map_err(|e| PgError::io(what, e))?,
            Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
                Ok(s) => s.map_err(|e| PgError::io(what, e))?,
                Err(_) => {
                    let _ = child.kill().await;
                    return Err(PgError::Timeout {
                        what: what.into(),
                        after: limit,
                    });
                }
            },
        };
        let log = reader.await.unwrap_or_default();
        let out = out_reader.await.unwrap_or_default();
        Ok((status, out, log))
    }

    /// Rebuilds this member from `host:port` without ever being left with
    /// nothing: the clone goes into `<data_dir>.baton-new` while the old data
    /// (and postgres, if running) stay as they are; only a complete clone is
    /// swapped in, and the old directory is moved aside, never deleted
    /// (`<data_dir>.baton-old-<unix time>`). Returns where it went.
    pub async fn rebuild_from(&self, host: &str, port: u16) -> Result<PathBuf, PgError> {
        if self.cfg.flavor.is_gtm() {
            // Nothing to copy: a new standby directory takes the active's
            // state when it starts; the old one is kept aside (rule 7).
            self.stop(StopMode::Fast).await?;
            let aside = self.move_aside()?;
            self.gtm_keep_conf(&aside)?;
            self.gtm_clone(host, port)?;
            return Ok(aside);
        }
        let mut new = self.cfg.data_dir.clone().into_os_string();
        new.push(".baton-new");
        let new = PathBuf::from(new);
        // A leftover of an interrupted rebuild is our own partial copy.
        self.remove_leftover(&new)?;
        if let Err(e) = self.basebackup_into(host, port, &new, "rebuild").await {
            let _ = std::fs::remove_dir_all(&new);
            return Err(e);
        }
        self.stop(StopMode::Fast).await?;
        let aside = self.move_aside()?;
        // move_aside left an empty data dir; the clone takes its place.
        self.put_in_place(
            &new,
            &format!("the clone (old data is in {})", aside.display()),
        )?;
        self.clear_rewind_marker()?;
        Ok(aside)
    }

    /// Beside the data directory while a pg_rewind may have copied part of
    /// it: pg_rewind removes target files the source lacks, so a marker
    /// inside would not survive, and the control file is rewritten last,
    /// so nothing in the directory itself tells a half-copied one apart.
    fn rewind_marker(&self) -> PathBuf {
        let mut m = self.cfg.data_dir.clone().into_os_string();
        m.push(".baton-rewind-incomplete");
        m.into()
    }

    /// A pg_rewind began copying into the data directory and did not finish.
    pub fn rewind_incomplete(&self) -> bool {
        self.rewind_marker().exists()
    }

    fn clear_rewind_marker(&self) -> Result<(), PgError> {
        match std::fs::remove_file(self.rewind_marker()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PgError::io(
                format!("removing {}", self.rewind_marker().display()),
                e,
            )),
        }
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
    pub(super) fn superuser_conninfo(&self, host: &str, port: u16) -> String {
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
    /// Where this stopped data directory's WAL ends: pg_waldump reads from
    /// the last checkpoint's redo point to the first invalid record and
    /// names that position. `None` when it cannot tell.
    pub async fn end_of_wal(&self) -> Option<Lsn> {
        if self.cfg.flavor.no_timelines() {
            return None;
        }
        let cd = self.controldata().await.ok()?;
        let redo = cd.get("Latest checkpoint's REDO location")?;
        let tli = cd.get("Latest checkpoint's TimeLineID")?;
        let mut cmd = self.command("pg_waldump");
        cmd.arg("--quiet")
            .arg("-p")
            .arg(self.cfg.data_dir.join("pg_wal"))
            .args(["-s", redo, "-t", tli]);
        let text = match self
            .run_all("pg_waldump", cmd, Duration::from_secs(60))
            .await
        {
            Ok((out, err)) => format!("{err} {out}"),
            Err(PgError::Command { detail, .. }) => detail,
            Err(_) => return None,
        };
        last_lsn(text.split("invalid record length at").nth(1)?)
    }

    /// pg_rewind from `host:port`; where the histories diverged (and on
    /// which timeline), when it had anything to rewind.
    pub async fn rewind_from(&self, host: &str, port: u16) -> Result<Option<(Lsn, u32)>, PgError> {
        if self.cfg.flavor.is_gtm() {
            return Err(PgError::Refused(
                "a GTM is never rewound: started as a standby, it takes its active's state".into(),
            ));
        }
        if self.cfg.flavor == super::Flavor::OpenGauss {
            self.clear_stale_lock().await?;
            self.gs_build_incremental(host, port).await?;
            return Ok(None);
        }
        // pg_rewind first runs the target's crash recovery in single-user
        // mode, which refuses to start beside the lock file of a killed
        // postmaster whose PID is not reaped yet (seen after a failover:
        // a rewind failed for it, and the member was rebuilt instead).
        self.clear_stale_lock().await?;
        self.prepare_rewind_target().await?;
        // pg_rewind recovers an unclean target in single-user mode first,
        // which refuses standby mode ("standby mode is not supported by
        // single-user servers"): a replica stopped at once after it
        // diverged would always be rebuilt instead. The next start writes
        // the file again for the role it starts in.
        let signal = self.cfg.data_dir.join("standby.signal");
        if !self.cfg.flavor.recovery_conf() && signal.exists() {
            std::fs::remove_file(&signal)
                .map_err(|e| PgError::io(format!("removing {}", signal.display()), e))?;
        }
        let mut cmd = self.command("pg_rewind");
        cmd.arg("-D")
            .arg(&self.cfg.data_dir)
            .arg(format!(
                "--source-server={}{}",
                self.superuser_conninfo(host, port),
                self.rewind_source_options()
            ))
            .arg("--progress");
        if let Some(pw) = &self.cfg.superuser.password {
            cmd.env("PGPASSWORD", pw);
        }
        let marker = self.rewind_marker();
        std::fs::write(&marker, "pg_rewind started; a rebuild clears this\n")
            .map_err(|e| PgError::io(format!("writing {}", marker.display()), e))?;
        let limit = self.cfg.start_timeout.saturating_mul(10);
        let ran = match self
            .run_with_progress("pg_rewind", cmd, "rewind", Some(limit))
            .await
        {
            Ok((status, out, err)) if status.success() => Ok((out, err)),
            Ok((status, out, err)) => Err(PgError::Command {
                what: "pg_rewind".into(),
                detail: format!("{} {} ({status})", err.trim(), out.trim())
                    .trim()
                    .to_string(),
            }),
            Err(e) => Err(e),
        };
        match ran {
            Ok((out, err)) => {
                self.clear_rewind_marker()?;
                super::conf::forget_leader_settings(&self.cfg.data_dir)?;
                let all = format!("{err}\n{out}");
                // How much it copied is what tells a rewind from a rebuild.
                let copied = all
                    .lines()
                    .find(|l| l.contains("need to copy"))
                    .map(|l| format!("{}; ", l.trim().trim_start_matches("pg_rewind: ")))
                    .unwrap_or_default();
                tracing::info!(member = %self.name, "pg_rewind: {copied}{}", all.trim().lines().last().unwrap_or("done"));
                Ok(diverged_at(&all))
            }
            // pg_rewind prints "need to copy N MB" right before it starts
            // writing into the target; one that failed before that left the
            // data directory as it was (crash recovery, which it may have
            // run, leaves it consistent). One that timed out may have been
            // anywhere: the marker stays.
            Err(PgError::Command { detail, what }) if !detail.contains("need to copy") => {
                self.clear_rewind_marker()?;
                Err(PgError::Command { what, detail })
            }
            Err(e) => {
                tracing::error!(
                    member = %self.name,
                    "pg_rewind failed while copying: the data directory is half-copied and \
                     will not be started ({} stays until a rebuild)",
                    marker.display()
                );
                Err(e)
            }
        }
    }

    pub(super) fn replication_conninfo(&self, host: &str, port: u16) -> String {
        replication_conninfo(&self.cfg, &self.name, host, port)
    }
}

/// The first `X/Y` LSN at the start of `text` (after spaces).
fn last_lsn(text: &str) -> Option<Lsn> {
    let token = text.split_whitespace().next()?;
    token.trim_end_matches([':', ',', '.']).parse().ok()
}

/// pg_rewind's "servers diverged at WAL location X/Y on timeline N".
fn diverged_at(output: &str) -> Option<(Lsn, u32)> {
    let rest = output.split("diverged at WAL location").nth(1)?;
    let lsn = last_lsn(rest)?;
    let tl = rest
        .split("on timeline")
        .nth(1)?
        .split_whitespace()
        .next()?;
    Some((lsn, tl.trim_end_matches('.').parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_where_wal_ends_and_where_histories_diverged() {
        let waldump = "pg_waldump: error: error in WAL record at 0/3000148: invalid record length at 0/30001C0: expected at least 24, got 0 (exit status: 1)";
        assert_eq!(
            last_lsn(waldump.split("invalid record length at").nth(1).unwrap()),
            Some(Lsn(0x300_01C0))
        );
        let rewind = "pg_rewind: servers diverged at WAL location 0/3000148 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\npg_rewind: Done!";
        assert_eq!(diverged_at(rewind), Some((Lsn(0x300_0148), 1)));
        assert_eq!(diverged_at("pg_rewind: no rewind required"), None);
    }
}
