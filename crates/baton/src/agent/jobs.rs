//! Long actions (bootstrap, clone, start, promote, rewind, rebuild,
//! switchover, restart) run as one owned task at a time; the loop keeps
//! ticking, and renewing its lease, while one runs.

use std::time::{Duration, Instant};

use super::{now, since, Peers, Postgres, Store};

use tokio::task::JoinHandle;
use tracing::Instrument as _;

use baton_core::ha::{JobKind, JobStatus};
use baton_core::instance::DataDir;

use super::Agent;

pub(super) struct Job {
    pub(super) kind: JobKind,
    pub(super) started: Instant,
    pub(super) handle: JoinHandle<Result<(), JobError>>,
}

/// Why a job failed, and whether the member it worked against was simply
/// unreachable (then the job is retried instead of escalated).
#[derive(Debug, Clone)]
pub(super) struct JobError {
    pub(super) message: String,
    pub(super) source_down: bool,
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        JobError {
            message,
            source_down: false,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// After a failed job, the same job is not retried for this long.
pub(super) const JOB_RETRY_BACKOFF: Duration = Duration::from_secs(5);

impl<S: Store, P: Postgres, H: Peers> Agent<S, P, H> {
    pub(super) async fn poll_job(&mut self) -> JobStatus {
        if let Some(job) = &self.job {
            if !job.handle.is_finished() {
                return JobStatus::Running(job.kind, since(job.started));
            }
            let job = self.job.take().expect("checked");
            let result = match job.handle.await {
                Ok(r) => r,
                Err(e) => Err(JobError::from(format!("job panicked or was aborted: {e}"))),
            };
            let took = since(job.started).as_secs_f64();
            match &result {
                Ok(()) => {
                    tracing::info!("{} finished in {took:.1} s", job.kind);
                    let c = &self.inbox.counters;
                    match job.kind {
                        JobKind::Promote => {
                            c.promotions
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        JobKind::Switchover => {
                            c.switchovers
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    self.handle.events().push(
                        "job_finished",
                        job.kind.code(),
                        format!("{} finished in {took:.1} s", job.kind),
                    );
                }
                Err(e) => {
                    tracing::error!("{} failed: {e}", job.kind);
                    self.handle.events().push(
                        "job_failed",
                        job.kind.code(),
                        format!("{} failed after {took:.1} s: {e}", job.kind),
                    );
                }
            }
            if result.is_err() && job.kind == JobKind::Bootstrap {
                self.undo_bootstrap_claim().await;
            }
            if job.kind == JobKind::Restart {
                let outcome = result.as_ref().map_err(|e| e.message.clone()).copied();
                for w in self.restart_job_waiters.drain(..) {
                    let _ = w.send(outcome.clone());
                }
            }
            self.last_job = Some((job.kind, result, now()));
        }
        match &self.last_job {
            Some((k, Err(e), _)) => JobStatus::Failed(*k, e.message.clone(), e.source_down),
            Some((k, Ok(()), _)) => JobStatus::Done(*k),
            None => JobStatus::Idle,
        }
    }

    /// After a failed bootstrap, let another member try, unless initdb
    /// completed here (then this node retries starting it).
    pub(super) async fn undo_bootstrap_claim(&mut self) {
        let _ = self.dcs.release_leader(&self.cfg.name).await;
        if self.inst.inspect().await == DataDir::Empty {
            let _ = self.dcs.release_initialize().await;
        }
    }

    /// Whether `spawn_job` would start a job of `kind` now: none runs, and
    /// the last one of that kind did not fail less than the back-off ago.
    pub(super) fn may_spawn(&self, kind: JobKind) -> bool {
        let backing_off = matches!(&self.last_job,
            Some((k, Err(_), at)) if *k == kind && since(*at) < JOB_RETRY_BACKOFF);
        self.job.is_none() && !backing_off
    }

    pub(super) fn spawn_job<F, E>(&mut self, kind: JobKind, fut: F)
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: Into<JobError>,
    {
        if !self.may_spawn(kind) {
            return;
        }
        tracing::info!("starting job: {kind}");
        self.handle
            .events()
            .push("job_started", kind.code(), format!("starting {kind}"));
        let wake = self.wake.clone();
        let handle = tokio::spawn(
            async move {
                let r = fut.await.map_err(Into::into);
                wake.notify_one();
                r
            }
            .instrument(tracing::info_span!("job", kind = %kind)),
        );
        self.job = Some(Job {
            kind,
            started: now(),
            handle,
        });
    }
}
