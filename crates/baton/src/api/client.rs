//! The client side of the endpoints below, for `baton` and for the
//! dashboard, which gathers every member's events.

use anyhow::Context;

/// A member's event log after `seq` (`GET /events?after=`), oldest first;
/// with `last`, only that many of the latest.
pub async fn member_events(
    http: &reqwest::Client,
    api_url: &str,
    seq: u64,
    last: Option<usize>,
) -> anyhow::Result<Vec<baton_core::event::Event>> {
    let base = api_url.trim_end_matches("/patroni");
    let mut url = format!("{base}/events?after={seq}");
    if let Some(n) = last {
        url.push_str(&format!("&last={n}"));
    }
    let v: serde_json::Value = http
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| url.clone())?
        .json()
        .await
        .with_context(|| url.clone())?;
    serde_json::from_value(v["events"].clone()).with_context(|| format!("{url}: events"))
}
