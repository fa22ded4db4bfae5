//! `baton reinit`, `switchover`, `failover`, `restart`, `reload`: requests
//! to an agent's control endpoints, confirmed first unless `--force`.

use std::process::ExitCode;

use anyhow::Context as _;

use baton::api::client::member_events;

use super::{confirm, control, Target};

pub async fn reinit(
    target: Target,
    member: String,
    force: bool,
    wait: bool,
) -> anyhow::Result<ExitCode> {
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
    // Events after this one are the rebuild's (seq, not wall time: the
    // member's clock need not agree with ours).
    let http = target.http(std::time::Duration::from_secs(3))?;
    let seen = match view.members.get(&member) {
        Some(m) if wait => member_events(&http, &m.api_url, 0, None)
            .await
            .unwrap_or_default()
            .iter()
            .map(|e| e.seq)
            .max()
            .unwrap_or(0),
        _ => 0,
    };
    let code = control(
        &target,
        &view,
        &member,
        reqwest::Method::POST,
        "/reinitialize",
        Some(body),
    )
    .await?;
    if !wait || code != ExitCode::SUCCESS {
        return Ok(code);
    }
    wait_rebuilt(&target, &http, &member, seen).await
}

/// After `POST /reinitialize`: the copy's progress (a bar on a terminal, a
/// line per change elsewhere) until the member's rebuild job ended (its
/// event log says so, however fast it was) and it streams again; at most
/// an hour.
async fn wait_rebuilt(
    target: &Target,
    http: &reqwest::Client,
    member: &str,
    seen: u64,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(100);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:<28} [{wide_bar}] {pos:>3}%")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    let (mut ended, mut last) = (false, String::new());
    loop {
        let (_, view) = target.view().await?;
        let m = view
            .members
            .get(member)
            .with_context(|| format!("{member} is no longer a member"))?;
        let mut line = match &m.baton_progress {
            Some(p) => {
                bar.set_position(p.percent.into());
                bar.set_message(format!(
                    "{} {} / {} MB",
                    p.job,
                    p.done_bytes >> 20,
                    p.total_bytes >> 20
                ));
                format!(
                    "{} {}% ({} / {} MB{})",
                    p.job,
                    p.percent,
                    p.done_bytes >> 20,
                    p.total_bytes >> 20,
                    p.eta_s.map(|s| format!(", {s} s left")).unwrap_or_default()
                )
            }
            None => m.state.clone(),
        };
        if !ended {
            let events = member_events(http, &m.api_url, seen, None)
                .await
                .unwrap_or_default();
            if let Some(e) = events.iter().find(|e| {
                e.code == "rebuild" && matches!(e.kind.as_str(), "job_finished" | "job_failed")
            }) {
                if e.kind == "job_failed" {
                    bar.abandon();
                    anyhow::bail!("{member}: {}", e.detail);
                }
                ended = true;
            }
        }
        let streaming =
            m.is_running_replica() && m.replication_state.as_deref() == Some("streaming");
        if ended && streaming {
            line = "streaming".into();
        }
        if !tty && line != last {
            println!("{member}: {line}");
        }
        last = line;
        if ended && streaming {
            bar.finish_with_message(format!("{member} streams again"));
            return Ok(ExitCode::SUCCESS);
        }
        if std::time::Instant::now() > deadline {
            bar.abandon();
            anyhow::bail!("{member} does not stream an hour after the rebuild was asked for");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
