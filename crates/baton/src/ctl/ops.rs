//! `baton reinit`, `switchover`, `failover`, `restart`, `reload`: requests
//! to an agent's control endpoints, confirmed first unless `--force`.

use std::process::ExitCode;

use super::{confirm, control, Target};

pub async fn reinit(target: Target, member: String, force: bool) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    if !force
        && !confirm(&format!(
            "Rebuild {member} from the leader? Its data directory is moved aside."
        ))?
    {
        eprintln!("aborted");
        return Ok(ExitCode::FAILURE);
    }
    let body = serde_json::json!({"force": true});
    control(
        &target,
        &view,
        &member,
        reqwest::Method::POST,
        "/reinitialize",
        Some(body),
    )
    .await
}

pub async fn switchover(
    target: Target,
    leader: Option<String>,
    candidate: Option<String>,
    scheduled_at: Option<String>,
    cancel: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let (scope, view) = target.view().await?;
    let Some(current) = view.leader_name().map(str::to_string) else {
        anyhow::bail!("cluster {scope} has no leader: use `baton failover --candidate NAME`");
    };
    if cancel {
        return control(
            &target,
            &view,
            &current,
            reqwest::Method::DELETE,
            "/switchover",
            None,
        )
        .await;
    }
    let leader = leader.unwrap_or_else(|| current.clone());
    if !force {
        let to = candidate.as_deref().unwrap_or("the healthiest replica");
        let when = scheduled_at
            .as_deref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_default();
        if !confirm(&format!("Switch over from {leader} to {to}{when}?"))? {
            eprintln!("aborted");
            return Ok(ExitCode::FAILURE);
        }
    }
    let body =
        serde_json::json!({"leader": leader, "candidate": candidate, "scheduled_at": scheduled_at});
    control(
        &target,
        &view,
        &current,
        reqwest::Method::POST,
        "/switchover",
        Some(body),
    )
    .await
}

pub async fn failover(target: Target, candidate: String, force: bool) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    if !force && !confirm(&format!("Promote {candidate} by manual failover?"))? {
        eprintln!("aborted");
        return Ok(ExitCode::FAILURE);
    }
    let body = serde_json::json!({"candidate": candidate});
    control(
        &target,
        &view,
        &candidate,
        reqwest::Method::POST,
        "/failover",
        Some(body),
    )
    .await
}

/// Restarts `member`'s postgres in its current role.
pub async fn restart(target: Target, member: String) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    control(
        &target,
        &view,
        &member,
        reqwest::Method::POST,
        "/restart",
        None,
    )
    .await
}

/// Every agent re-reads its node file; fails if any refused.
pub async fn reload(target: Target) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    let mut code = ExitCode::SUCCESS;
    for m in view.members.keys() {
        if control(&target, &view, m, reqwest::Method::POST, "/reload", None).await?
            != ExitCode::SUCCESS
        {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}
