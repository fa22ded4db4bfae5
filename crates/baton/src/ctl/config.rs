//! `baton config show | set | edit`, `baton pause | resume`: the dynamic
//! config in etcd, validated before it is stored and stored only with a
//! compare-and-set on the revision it was read at.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use baton::dcs::Dcs;

use super::Target;

/// Prints the stored dynamic config.
pub async fn show(target: Target) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    match (&view.config, &view.config_error) {
        (Some(c), _) => println!("{}", serde_json::to_string_pretty(c)?),
        (None, Some(e)) => anyhow::bail!("the stored config is invalid: {e}"),
        (None, None) => anyhow::bail!("no config stored (cluster not bootstrapped?)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies `key=value` pairs (values parsed as JSON, else taken as strings;
/// `null` deletes) to the stored config, validated, compare-and-set.
pub async fn set(target: Target, pairs: Vec<String>) -> anyhow::Result<ExitCode> {
    let patch = patch_from_pairs(&pairs)?;
    let (_, view) = target.view().await?;
    let mut current = view
        .config
        .as_ref()
        .map(serde_json::to_value)
        .transpose()?
        .context("no valid config stored to change")?;
    baton_core::config::merge_patch(&mut current, &patch);
    store(&target, current, view.config_revision).await
}

async fn store(
    target: &Target,
    value: serde_json::Value,
    revision: i64,
) -> anyhow::Result<ExitCode> {
    let cfg: baton_core::config::DynamicConfig =
        serde_json::from_value(value).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    if let Err(e) = cfg.validate() {
        eprintln!("error: invalid config, nothing stored: {e}");
        return Ok(ExitCode::from(2));
    }
    let (endpoints, _, prefix) = target.resolve()?;
    let dcs = Dcs::connect(&endpoints, prefix, Duration::from_secs(3)).await?;
    if !dcs.cas_config(&cfg, revision).await? {
        eprintln!("error: the config changed since it was read (another edit won); nothing stored, try again");
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", serde_json::to_string_pretty(&cfg)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn edit(target: Target) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    let current = view
        .config
        .as_ref()
        .context("no valid config stored to edit")?;
    let file = std::env::temp_dir().join(format!("baton-config-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_string_pretty(current)?)?;
    // $EDITOR may carry arguments ("code --wait"): let the shell split it.
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("baton-config-edit")
        .arg(&file)
        .status()
        .with_context(|| format!("running {editor}"))?;
    let text = std::fs::read_to_string(&file)?;
    let _ = std::fs::remove_file(&file);
    if !status.success() {
        anyhow::bail!("{editor} exited with {status}; nothing stored");
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("edited config is not JSON ({e}); nothing stored"))?;
    store(&target, value, view.config_revision).await
}

/// `a.b=1 c=x` as the JSON merge patch `{"a": {"b": 1}, "c": "x"}`. A key
/// that is both a value and a level (`a=1 a.b=2`) is refused, not guessed.
fn patch_from_pairs(pairs: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut patch = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("{p:?} is not KEY=VALUE"))?;
        let value: serde_json::Value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        let parts: Vec<&str> = k.split('.').collect();
        if parts.iter().any(|part| part.is_empty()) {
            anyhow::bail!("{p:?}: {k:?} is not a key (empty part)");
        }
        let (last, levels) = parts.split_last().expect("split yields at least one part");
        let mut slot = &mut patch;
        for (i, part) in levels.iter().enumerate() {
            let entry = slot
                .entry(part.to_string())
                .or_insert_with(|| serde_json::json!({}));
            slot = entry.as_object_mut().with_context(|| {
                format!(
                    "{p:?}: {} was already given a value, so it cannot also hold keys",
                    parts[..=i].join(".")
                )
            })?;
        }
        if slot.get(*last).is_some_and(|v| v.is_object()) && !value.is_object() {
            anyhow::bail!("{p:?}: {k} already holds keys, so it cannot also be a value");
        }
        slot.insert(last.to_string(), value);
    }
    Ok(serde_json::Value::Object(patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pairs_become_a_nested_merge_patch() {
        let p = patch_from_pairs(&pairs(&[
            "ttl=5",
            "postgresql.parameters.work_mem=64MB",
            "pause=null",
        ]))
        .unwrap();
        assert_eq!(
            p,
            serde_json::json!({"ttl": 5, "postgresql": {"parameters": {"work_mem": "64MB"}}, "pause": null})
        );
    }

    #[test]
    fn a_key_that_is_both_value_and_level_is_refused() {
        let e = patch_from_pairs(&pairs(&["a=1", "a.b=2"])).unwrap_err();
        assert!(e.to_string().contains("already given a value"), "{e}");
        let e = patch_from_pairs(&pairs(&["a.b=2", "a=1"])).unwrap_err();
        assert!(e.to_string().contains("already holds keys"), "{e}");
        assert!(patch_from_pairs(&pairs(&["ttl"])).is_err());
        assert!(patch_from_pairs(&pairs(&["a..b=1"])).is_err());
    }
}
