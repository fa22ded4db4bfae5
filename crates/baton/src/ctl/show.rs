//! `baton list` and `baton history`.

use std::process::ExitCode;

use baton_core::status::ClusterStatus;

use super::Target;

pub async fn list(
    target: Target,
    json: bool,
    verbose: bool,
    gs_om: bool,
) -> anyhow::Result<ExitCode> {
    let (scope, view) = target.view().await?;
    let status = ClusterStatus::from_view(&scope, &view, view.max_lag());
    if gs_om {
        print!("{}", baton_core::gauss::render_gs_om(&status, &view));
        return Ok(ExitCode::SUCCESS);
    }
    let routing = view
        .leader_member()
        .map(|m| m.baton_routing.clone())
        .unwrap_or_default();
    let segments = view
        .leader_member()
        .map(|m| m.baton_segments.clone())
        .unwrap_or_default();
    if json {
        let mut v = serde_json::to_value(&status)?;
        if verbose {
            v["routing"] = serde_json::to_value(&routing)?;
        }
        if !segments.is_empty() {
            v["segments"] = serde_json::to_value(&segments)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", status.render());
    if !segments.is_empty() {
        print!("{}", render_segments(&segments));
    }
    if verbose && !routing.is_empty() {
        println!(
            "Routing endpoints (leader {}):",
            view.leader_name().unwrap_or("?")
        );
        for (name, e) in &routing {
            let tries = if e.attempts == 1 { "try" } else { "tries" };
            print!(
                "  {name:<16} {:<8} {:<22} since {} ({} {tries})",
                e.state, e.primary, e.since, e.attempts
            );
            match &e.error {
                Some(err) => println!(": {err}"),
                None => println!(),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
