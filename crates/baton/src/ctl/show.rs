//! `baton list`, `baton events` and `baton history`.

use std::process::ExitCode;

use baton_core::status::ClusterStatus;

use super::Target;

/// What `baton list` prints once: the cluster, or each group of a
/// multi-group cluster in turn.
async fn render_list(
    target: &Target,
    json: bool,
    verbose: bool,
    gs_om: bool,
    colour: bool,
) -> anyhow::Result<String> {
    let (scope, views) = target.views().await?;
    if let [(None, view)] = &views[..] {
        return render_group(&scope, view, json, verbose, gs_om, colour);
    }
    if gs_om {
        anyhow::bail!(
            "{scope} has {} groups and gs_om's layout shows one: add --group N",
            views.len()
        );
    }
    if json {
        let mut groups = serde_json::Map::new();
        for (g, view) in &views {
            let text = render_group(&scope, view, true, verbose, false, false)?;
            let key = g.map(|g| g.to_string()).unwrap_or_default();
            groups.insert(key, serde_json::from_str(&text)?);
        }
        let v = serde_json::json!({ "scope": scope, "groups": groups });
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let mut out = String::new();
    for (i, (g, view)) in views.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let name = match g {
            Some(g) => format!("{scope} group {g}"),
            None => scope.clone(),
        };
        out.push_str(&render_group(&name, view, false, verbose, false, colour)?);
    }
    Ok(out)
}

/// One group (or the whole of a one-group cluster).
fn render_group(
    scope: &str,
    view: &baton_core::cluster::ClusterView,
    json: bool,
    verbose: bool,
    gs_om: bool,
    colour: bool,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let status = ClusterStatus::from_view(scope, view, view.max_lag());
    if gs_om {
        return Ok(baton_core::gauss::render_gs_om(&status, view));
    }
    let routing = view
        .leader_member()
        .map(|m| m.baton_routing.clone())
        .unwrap_or_default();
    let segments = view
        .leader_member()
        .map(|m| m.baton_segments.clone())
        .unwrap_or_default();
    let mirroring_error = view
        .leader_member()
        .and_then(|m| m.baton_mirroring_error.clone());
    if json {
        let mut v = serde_json::to_value(&status)?;
        if verbose {
            v["routing"] = serde_json::to_value(&routing)?;
        }
        if !segments.is_empty() {
            v["segments"] = serde_json::to_value(&segments)?;
        }
        if let Some(e) = &mirroring_error {
            v["mirroring_error"] = e.as_str().into();
        }
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    out.push_str(&paint(status.render(), status.state, colour));
    if !segments.is_empty() {
        out.push_str(&render_segments(&segments));
        out.push_str(&render_mirroring(&segments, mirroring_error.as_deref()));
    }
    if verbose && !routing.is_empty() {
        writeln!(
            out,
            "Routing endpoints (leader {}):",
            view.leader_name().unwrap_or("?")
        )?;
        for (name, e) in &routing {
            let tries = if e.attempts == 1 { "try" } else { "tries" };
            write!(
                out,
                "  {name:<16} {:<8} {:<22} since {} ({} {tries})",
                e.state, e.primary, e.since, e.attempts
            )?;
            match &e.error {
                Some(err) => writeln!(out, ": {err}")?,
                None => writeln!(out)?,
            }
        }
    }
    Ok(out)
}

/// `baton list [--watch SECS]`: once, or redrawn in place every `SECS`
/// (like `patronictl list -W`) until interrupted; an error while
/// watching is shown and the next refresh tried. Colour only on a
/// terminal, and never with `NO_COLOR` set.
pub async fn list(
    target: Target,
    json: bool,
    verbose: bool,
    gs_om: bool,
    watch: Option<f64>,
) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let colour = tty && !json && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let Some(every) = watch else {
        print!(
            "{}",
            render_list(&target, json, verbose, gs_om, colour).await?
        );
        return Ok(ExitCode::SUCCESS);
    };
    let every = std::time::Duration::from_secs_f64(every.clamp(0.2, 3600.0));
    loop {
        let text = render_list(&target, json, verbose, gs_om, colour)
            .await
            .unwrap_or_else(|e| format!("error: {e:#}\n"));
        if tty {
            // Home and clear: the table redraws in place.
            print!("\x1b[H\x1b[2J");
        } else {
            println!(
                "--- {}",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        print!("{text}");
        std::io::stdout().flush()?;
        tokio::time::sleep(every).await;
    }
}

/// Colours the cluster state in the first line, and the problem lines.
fn paint(text: String, state: baton_core::status::ClusterState, colour: bool) -> String {
    use baton_core::status::ClusterState;
    if !colour {
        return text;
    }
    let code = match state {
        ClusterState::Normal => "32",
        ClusterState::Degraded => "33",
        ClusterState::Unavailable => "31",
    };
    let mut lines = text.lines();
    let mut out = String::new();
    if let Some(first) = lines.next() {
        let word = format!("state: {state}");
        out.push_str(&first.replacen(&word, &format!("state: \x1b[1;{code}m{state}\x1b[0m"), 1));
        out.push('\n');
    }
    for l in lines {
        if l.starts_with("  ! ") {
            out.push_str(&format!("\x1b[{code}m{l}\x1b[0m\n"));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// A Greenplum coordinator's segments, the way `gpstate -m`/`-s` words
/// them: Greenplum's FTS manages them; this only shows what its catalog says.
fn render_segments(segments: &[baton_core::instance::Segment]) -> String {
    use std::fmt::Write as _;
    let word = |code: &str, table: &[(&str, &'static str)]| {
        table
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, w)| w.to_string())
            .unwrap_or_else(|| code.to_string())
    };
    let roles = [("p", "Primary"), ("m", "Mirror")];
    let mut out =
        String::from("Segments (gp_segment_configuration; Greenplum's FTS manages them):\n");
    writeln!(
        out,
        "  {:>7}  {:>4}  {:<22}  {:<8}  {:<9}  {:<6}  mode",
        "content", "dbid", "host:port", "role", "preferred", "status"
    )
    .expect("string write");
    for s in segments {
        writeln!(
            out,
            "  {:>7}  {:>4}  {:<22}  {:<8}  {:<9}  {:<6}  {}",
            s.content,
            s.dbid,
            format!("{}:{}", s.hostname, s.port),
            word(&s.role, &roles),
            word(&s.preferred_role, &roles),
            word(&s.status, &[("u", "Up"), ("d", "Down")]),
            word(&s.mode, &[("s", "Synced"), ("n", "Not in sync")]),
        )
        .expect("string write");
    }
    out
}

/// Each segment primary's replication to its mirror, as
/// `gp_stat_replication` last showed it (read every 10 s, off the HA
/// loop), or why it could not be read.
fn render_mirroring(segments: &[baton_core::instance::Segment], error: Option<&str>) -> String {
    use std::fmt::Write as _;
    let title = "Segment mirroring (gp_stat_replication):";
    if let Some(e) = error {
        return format!("{title} not read: {e}\n");
    }
    let primaries: Vec<_> = segments.iter().filter(|s| s.mirror.is_some()).collect();
    if primaries.is_empty() {
        return String::new();
    }
    let mut out = format!("{title}\n");
    writeln!(
        out,
        "  {:>7}  {:<10}  {:<12}  {:<12}  {:<12}  {:<6}  error",
        "content", "sender", "sent", "flush", "replay", "sync"
    )
    .expect("string write");
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let lsn = |v: Option<baton_core::lsn::Lsn>| v.map_or_else(|| "-".into(), |l| l.to_string());
    for s in primaries {
        let m = s.mirror.as_ref().expect("filtered");
        writeln!(
            out,
            "  {:>7}  {:<10}  {:<12}  {:<12}  {:<12}  {:<6}  {}",
            s.content,
            text(&m.state),
            lsn(m.sent_lsn),
            lsn(m.flush_lsn),
            lsn(m.replay_lsn),
            text(&m.sync_state),
            text(&m.sync_error),
        )
        .expect("string write");
    }
    out
}

/// `baton events`: every member's event log (`GET /events`), merged by
/// time. A member that does not answer is named on stderr, the others
/// still shown. `--follow` asks each member for what came after the last
/// entry seen, once a second, until interrupted.
pub async fn events(target: Target, json: bool, follow: bool) -> anyhow::Result<ExitCode> {
    let http = target.http(std::time::Duration::from_secs(3))?;
    let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
    let mut first = true;
    loop {
        let (_, view) = target.view().await?;
        let mut batch: Vec<baton_core::event::Event> = vec![];
        for (name, m) in &view.members {
            let after = seen.get(name).copied().unwrap_or(0);
            match baton::api::client::member_events(&http, &m.api_url, after, None).await {
                Ok(list) => {
                    if let Some(last) = list.last() {
                        seen.insert(name.clone(), last.seq);
                    }
                    batch.extend(list);
                }
                Err(e) if first => eprintln!("{name}: no events ({e:#})"),
                Err(_) => {}
            }
        }
        batch.sort_by(|a, b| (&a.at, &a.member, a.seq).cmp(&(&b.at, &b.member, b.seq)));
        if json && !follow {
            println!("{}", serde_json::to_string_pretty(&batch)?);
        } else {
            for e in &batch {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!(
                        "{}  {:<10} {:<13} {:<28} {}",
                        e.at, e.member, e.kind, e.code, e.detail
                    );
                }
            }
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        first = false;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub async fn history(target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    let h = view.history.clone().unwrap_or(serde_json::json!([]));
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>3}  {:>12}  {:<28}  {:<26}  {:<12}  Discarded",
        "TL", "LSN", "Reason", "Timestamp", "New Leader"
    );
    for e in h.as_array().into_iter().flatten() {
        let f = |i: usize| e.get(i).cloned().unwrap_or(serde_json::Value::Null);
        let text = |v: serde_json::Value| match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let lsn = f(1)
            .as_u64()
            .map(|l| baton_core::lsn::Lsn(l).to_string())
            .unwrap_or_default();
        // What former primaries had written on this timeline past the
        // switch, measured when they were rewound.
        let tl = f(0).as_u64();
        let discarded: Vec<String> = view
            .discarded
            .iter()
            .filter(|d| Some(u64::from(d.timeline)) == tl)
            .map(|d| format!("{} B by {}", d.bytes, d.member))
            .collect();
        println!(
            "{:>3}  {:>12}  {:<28}  {:<26}  {:<12}  {}",
            text(f(0)),
            lsn,
            text(f(2)),
            text(f(3)),
            text(f(4)),
            discarded.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
