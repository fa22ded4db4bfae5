//! Operator commands: they read the cluster from etcd and call the agents'
//! REST API. `anyhow` lives here, at the binary's edge.

pub mod config;
pub mod ops;
pub mod show;
pub mod tools;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use baton::agent::Store as _;
use baton::config::NodeConfig;
use baton::dcs::Dcs;
use baton_core::cluster::ClusterView;

/// Which cluster an operator command talks to: a node config, or etcd + scope.
#[derive(clap::Args)]
pub struct Target {
    /// A node configuration file to take etcd endpoints, scope and namespace from.
    #[arg(short, long, conflicts_with_all = ["etcd", "scope"])]
    config: Option<PathBuf>,
    /// etcd endpoint(s), comma separated.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Cluster name (the node files' `scope`).
    #[arg(long)]
    scope: Option<String>,
    /// etcd key prefix (the node files' `namespace`).
    #[arg(long, default_value = baton::config::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The group of a multi-group cluster (default: from --config; `baton
    /// list` without one shows every group).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=baton::config::MAX_GROUP))]
    group: Option<u32>,
    /// REST API user for control commands (default: from --config).
    #[arg(long)]
    username: Option<String>,
    /// REST API password (or BATON_API_PASSWORD).
    #[arg(long, env = "BATON_API_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// CA (PEM) to trust for agents served over HTTPS (default: from --config).
    #[arg(long)]
    cafile: Option<PathBuf>,
}

impl Target {
    /// Credentials for the agents' control endpoints.
    pub fn credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        if let Some(u) = &self.username {
            return Ok(Some((u.clone(), self.password.clone().unwrap_or_default())));
        }
        if let Some(path) = &self.config {
            let c = NodeConfig::load(path)?;
            return Ok(c
                .api
                .auth
                .map(|a| (a.username, a.password.unwrap_or_default())));
        }
        Ok(None)
    }

    pub fn http(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        let cafile = match (&self.cafile, &self.config) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(path)) => NodeConfig::load(path)?.api.cafile,
            (None, None) => None,
        };
        Ok(baton::tls::http_client(timeout, cafile.as_deref())?)
    }

    /// The cluster, or the group named (`--group`, the node file's
    /// `group`). A multi-group cluster without a group named is refused
    /// with the groups it has: its top level holds no members.
    pub async fn view(&self) -> anyhow::Result<(String, ClusterView)> {
        let (endpoints, scope, namespace, group) = self.cluster()?;
        let prefix = baton::config::prefix(&namespace, &scope, group);
        let view = read(&endpoints, &scope, prefix.clone(), |dcs| async move {
            dcs.load().await
        })
        .await?;
        if group.is_none() && view.members.is_empty() && view.initialize.is_none() {
            let groups = read(&endpoints, &scope, prefix, |dcs| async move {
                dcs.load_groups().await
            })
            .await?;
            if !groups.is_empty() {
                let names: Vec<String> = groups.keys().map(u32::to_string).collect();
                anyhow::bail!(
                    "{scope} is a multi-group cluster (groups {}): name one with --group N",
                    names.join(", ")
                );
            }
        }
        Ok((scope, view))
    }

    /// The cluster's groups: the one named (`--group`, or the node file's
    /// `group`), else every group of a multi-group cluster, else the
    /// one-group cluster as `None`.
    pub async fn views(&self) -> anyhow::Result<(String, Vec<(Option<u32>, ClusterView)>)> {
        let (endpoints, scope, namespace, group) = self.cluster()?;
        if group.is_some() {
            let (scope, view) = self.view().await?;
            return Ok((scope, vec![(group, view)]));
        }
        let prefix = baton::config::prefix(&namespace, &scope, None);
        let groups = read(&endpoints, &scope, prefix, |dcs| async move {
            dcs.load_groups().await
        })
        .await?;
        if groups.is_empty() {
            let (scope, view) = self.view().await?;
            return Ok((scope, vec![(None, view)]));
        }
        Ok((
            scope,
            groups.into_iter().map(|(g, v)| (Some(g), v)).collect(),
        ))
    }

    /// etcd endpoints and the prefix of the cluster's (or group's) keys.
    pub fn resolve(&self) -> anyhow::Result<(Vec<String>, String, String)> {
        let (endpoints, scope, namespace, group) = self.cluster()?;
        let prefix = baton::config::prefix(&namespace, &scope, group);
        Ok((endpoints, scope, prefix))
    }

    /// etcd endpoints, scope, namespace and group, from the flags or the
    /// node file (`--group` wins over the file's).
    fn cluster(&self) -> anyhow::Result<(Vec<String>, String, String, Option<u32>)> {
        if let Some(path) = &self.config {
            let c = NodeConfig::load(path)?;
            return Ok((
                c.etcd.endpoints,
                c.scope,
                c.namespace,
                self.group.or(c.group),
            ));
        }
        let scope = self
            .scope
            .clone()
            .context("give --config FILE, or --etcd URL and --scope NAME")?;
        if self.etcd.is_empty() {
            anyhow::bail!("give --config FILE, or --etcd URL and --scope NAME");
        }
        Ok((self.etcd.clone(), scope, self.namespace.clone(), self.group))
    }
}

/// One read of `prefix` in etcd, its errors saying where and what.
async fn read<T, F, Fut>(
    endpoints: &[String],
    scope: &str,
    prefix: String,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Dcs) -> Fut,
    Fut: std::future::Future<Output = Result<T, baton::dcs::DcsError>>,
{
    let dcs = Dcs::connect(endpoints, prefix, Duration::from_secs(3))
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    f(dcs).await.with_context(|| {
        format!(
            "reading cluster {scope} from etcd at {}",
            endpoints.join(",")
        )
    })
}

pub fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Calls a control endpoint on `member`'s REST API and reports the answer.
pub async fn control(
    target: &Target,
    view: &ClusterView,
    member: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    let Some(m) = view.members.get(member) else {
        anyhow::bail!(
            "no member {member:?} (members: {})",
            view.members.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let base = m.api_url.trim_end_matches("/patroni");
    // Switchovers wait for the outcome; the agent bounds every step.
    let client = target.http(Duration::from_secs(330))?;
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some((u, p)) = target.credentials()? {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("calling {base}{path}"))?;
    let (code, text) = baton::tls::read_answer(resp).await;
    if code.is_success() {
        println!("{member}: {text}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{member} refused ({code}): {text}");
        Ok(ExitCode::FAILURE)
    }
}
