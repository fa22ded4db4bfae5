//! A planned switchover as a job of the old leader: checkpoint, clean stop,
//! verify the candidate replayed the shutdown checkpoint, then move the
//! leader key onto the candidate's lease in one transaction.

use std::time::Duration;

use baton_core::cluster::LeaseId;

use super::{now, since, Postgres, Store};
use crate::pg::StopMode;

/// A planned handover from `me` to `candidate`, whose postgres listens on
/// `host:port` and whose member key hangs on `lease`; `limit` bounds the
/// wait for the candidate to replay our shutdown checkpoint.
pub(super) struct Handover {
    pub(super) me: String,
    pub(super) candidate: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) lease: LeaseId,
    pub(super) limit: Duration,
}

/// Runs the handover; on failure the request is cleared and the job ends.
/// The job never restarts postgres itself: the loop, woken by the job's end,
/// starts it again as primary only if the leader key is still ours on a
/// fresh lease (rule 1; the key may have expired while the handover
/// waited), and nothing is lost either way.
pub(super) async fn switchover(
    inst: &impl Postgres,
    dcs: &impl Store,
    h: &Handover,
) -> Result<(), String> {
    let result = handover(inst, dcs, h).await;
    if let Err(e) = &result {
        tracing::error!(
            "switchover to {} aborted: {e}; the loop restarts postgres as primary if the key is still ours",
            h.candidate
        );
        if let Err(ce) = dcs.clear_failover().await {
            tracing::warn!("could not clear the failover request: {ce}");
        }
    }
    result
}

async fn handover(inst: &impl Postgres, dcs: &impl Store, h: &Handover) -> Result<(), String> {
    if inst.demoted_by_candidate() {
        return handover_demoted_by_candidate(inst, dcs, h).await;
    }
    let Handover {
        me,
        candidate,
        host,
        port,
        lease,
        limit,
    } = h;
    let (port, lease, limit) = (*port, *lease, *limit);
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    // A checkpoint while writes still flow makes the shutdown checkpoint short.
    inst.checkpoint(limit)
        .await
        .map_err(|e| err("CHECKPOINT", &e))?;
    let paused_at = now();
    // Fast shutdown: walsenders send everything up to and including the
    // shutdown checkpoint before the postmaster exits.
    inst.stop(StopMode::Fast)
        .await
        .map_err(|e| err("stopping postgres", &e))?;
    let ckpt = inst
        .shutdown_checkpoint()
        .await
        .map_err(|e| err("pg_controldata", &e))?;
    // Zero loss, verified: the candidate must have replayed past it.
    let deadline = now() + limit;
    let mut last;
    loop {
        match inst
            .member_replay_lsn(host, port, Duration::from_secs(1))
            .await
        {
            Ok(replayed) => {
                if replayed.is_some_and(|r| r > ckpt) {
                    break;
                }
                last = format!("replayed {replayed:?}, shutdown checkpoint at {ckpt}");
            }
            Err(e) => last = e.to_string(),
        }
        if now() > deadline {
            return Err(format!(
                "{candidate} did not replay the shutdown checkpoint within {limit:?} ({last})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !dcs
        .transfer_leader(me, candidate, lease)
        .await
        .map_err(|e| err("handing over the leader key", &e))?
    {
        return Err(format!(
            "could not hand the leader key to {candidate} (its lease changed: did it die?)"
        ));
    }
    tracing::info!(
        "leader key handed to {candidate} {} ms after writes stopped; it promotes now",
        since(paused_at).as_millis()
    );
    Ok(())
}

/// The handover of a system whose candidate demotes the primary itself as
/// it promotes (openGauss's `gs_ctl switchover`: the primary stops taking
/// writes, sends the rest of its WAL, becomes a standby; zero loss is the
/// system's own). The key moves first, onto the candidate's lease, while
/// this primary still runs: the candidate, seeing the old primary's member
/// key still running, promotes only that way, never by failover, so there
/// is one writer at every moment. Then this job waits for its own instance
/// to be demoted; if that does not happen in time, it stops it (it holds
/// no key any more), and the candidate, seeing it stopped, fails over.
async fn handover_demoted_by_candidate(
    inst: &impl Postgres,
    dcs: &impl Store,
    h: &Handover,
) -> Result<(), String> {
    let Handover {
        me,
        candidate,
        lease,
        limit,
        ..
    } = h;
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    inst.checkpoint(*limit)
        .await
        .map_err(|e| err("CHECKPOINT", &e))?;
    if !dcs
        .transfer_leader(me, candidate, *lease)
        .await
        .map_err(|e| err("handing over the leader key", &e))?
    {
        return Err(format!(
            "could not hand the leader key to {candidate} (its lease changed: did it die?)"
        ));
    }
    let handed = now();
    tracing::info!("leader key handed to {candidate}; it switches over, demoting this primary");
    // The candidate's next tick promotes; the demotion restarts this
    // instance as a standby of it. Bounded: a start's worth past a ttl.
    let deadline = handed + *limit * 4;
    loop {
        if let Ok(true) = inst.in_recovery(Duration::from_secs(1)).await {
            tracing::info!(
                "demoted by {candidate}'s switchover {} ms after the handover",
                since(handed).as_millis()
            );
            return Ok(());
        }
        if now() > deadline {
            let _ = inst.stop(StopMode::Fast).await;
            return Err(format!(
                "{candidate} did not switch over within {:?}: this instance is stopped (the key is \
                 {candidate}'s, which fails over instead)",
                *limit * 4
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
