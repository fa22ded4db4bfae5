//! The data directory: what it holds (never changed by looking), its
//! control data, and moving it aside instead of deleting it (rule 7).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::instance::{parse_controldata, parse_history, DataDir, Unusable};

use super::{Instance, PgError};

impl Instance {
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
        if self.cfg.flavor.is_gtm() {
            return self.gtm_inspect();
        }
        if !dir.join("PG_VERSION").exists() || !dir.join("global/pg_control").exists() {
            return DataDir::Unusable(Unusable::NotPostgres(dir.clone()));
        }
        match self.controldata().await {
            Ok(cd) => match cd.get("Database system identifier") {
                Some(id) => {
                    // A flavor without usable timelines reports none: its
                    // lineage is the system's own to judge (`pg/gauss.rs`).
                    let timeline: Option<u32> = cd
                        .get("Latest checkpoint's TimeLineID")
                        .and_then(|t| t.parse().ok())
                        .filter(|_| !self.cfg.flavor.no_timelines());
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
                        standby: dir.join(self.cfg.flavor.standby_file()).exists(),
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
        self.controldata_of(&self.cfg.data_dir).await
    }

    pub async fn controldata_of(&self, dir: &Path) -> Result<BTreeMap<String, String>, PgError> {
        let mut cmd = self.command("pg_controldata");
        cmd.arg("-D").arg(dir);
        let out = self
            .run("pg_controldata", cmd, Duration::from_secs(10))
            .await?;
        Ok(parse_controldata(&out))
    }

    /// The system identifier `pg_controldata` shows for `dir`.
    pub(super) async fn system_id_of(&self, dir: &Path) -> Result<String, PgError> {
        let cd = self.controldata_of(dir).await?;
        cd.get("Database system identifier")
            .cloned()
            .ok_or_else(|| PgError::Refused(format!("{}: no system identifier", dir.display())))
    }

    /// Removes a leftover of ours beside the data directory (a partial
    /// clone, an initdb whose identifier never got out).
    pub(super) fn remove_leftover(&self, dir: &Path) -> Result<(), PgError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| PgError::io(format!("removing stale {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// Puts the complete directory `new` where the (empty, or absent) data
    /// directory is; `what` names it in the error.
    pub(super) fn put_in_place(&self, new: &Path, what: &str) -> Result<(), PgError> {
        let data = &self.cfg.data_dir;
        if data.exists() {
            std::fs::remove_dir(data)
                .map_err(|e| PgError::io(format!("removing empty {}", data.display()), e))?;
        }
        std::fs::rename(new, data)
            .map_err(|e| PgError::io(format!("moving {what} {} into place", new.display()), e))
    }

    /// PID of the postmaster, if `postmaster.pid` names a live process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        baton_fence::postmaster_pid(&self.cfg.data_dir)
    }

    /// Resolves when the postmaster running now exits, waiting for one to
    /// start first. The postmaster is not our child (pg_ctl starts it
    /// detached), so its exit is watched through a pidfd, which costs
    /// nothing while it runs; without pidfd (Linux before 5.3), by polling.
    pub async fn postmaster_exit(&self) {
        const POLL: Duration = Duration::from_millis(100);
        loop {
            let Some(pid) = self.postmaster_pid() else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let fd = rustix::process::Pid::from_raw(pid).and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
            });
            // The pid might have been reused between reading the file and
            // opening the pidfd: only a pidfd opened while the file still
            // names that live process is our postmaster's.
            if self.postmaster_pid() != Some(pid) {
                continue;
            }
            // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which owns it
            // from registration to deregistration: it stays open and is
            // the same descriptor all along, which is all tokio requires.
            let watched = fd.and_then(|fd| unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
                    .ok()
            });
            match watched {
                Some(fd) => {
                    // Readable once the process has exited.
                    let _ = fd.readable().await;
                }
                None => {
                    while baton_fence::postmaster_pid(&self.cfg.data_dir) == Some(pid) {
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
            return;
        }
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
}

/// Removes everything inside `dir` (a partial copy of ours).
pub(super) fn empty_dir(dir: &Path) {
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
