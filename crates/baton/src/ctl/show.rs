//! `baton list` and `baton history`.

use std::process::ExitCode;

use baton_core::status::ClusterStatus;

use super::Target;

pub async fn list(target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let (scope, view) = target.view().await?;
    let status = ClusterStatus::from_view(&scope, &view, view.max_lag());
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
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
