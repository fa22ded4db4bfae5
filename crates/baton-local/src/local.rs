//! Throw-away local clusters: an etcd and N agents on free loopback ports in
//! one directory. Used by `baton demo` and by the integration tests, so the
//! tests run Baton exactly as a user would: real etcd, real `baton agent`
//! processes, real PostgreSQL.
//!
//! Only processes started here are ever signalled, by PID: the agents and
//! etcd we spawned, and the postmasters whose `postmaster.pid` lies in a data
//! directory under our own directory.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use baton::agent::Store as _;
use baton_core::cluster::ClusterView;
use baton_core::status::ClusterStatus;

/// Polls `f` every 100 ms until it yields, at most `limit`.
pub async fn poll_until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(what, limit, Duration::from_millis(100), || {
        let fut = f();
        async move { fut.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
}

/// Polls `f` every `every` until it returns `Ok`, for at most `limit`; the
/// error names `what` and the last reason `f` gave.
pub async fn poll<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if start.elapsed() > limit {
            bail!("no {what} after {limit:?}; last: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A free TCP port on 127.0.0.1, taken from *below* the kernel's ephemeral
/// range: a port handed out by binding port 0 comes from that range, and
/// until our server binds it an outgoing connection (a WAL receiver, a
/// client) may be given the same port, which then fails with "address
/// already in use". Each process walks its own stretch of the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u32>().ok())
        })
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.clamp(10_001, 65_535));
    let span = high - low;
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id() * 7_919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = low + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Makes a directory the postgres OS user can traverse (temp dirs are 0700).
pub fn open_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

pub struct LocalEtcd {
    pub endpoint: String,
    dir: PathBuf,
    client_port: u16,
    child: Option<Child>,
}

impl LocalEtcd {
    /// Picks ports and a data dir; nothing runs until [`LocalEtcd::start`].
    pub fn planned(dir: &Path) -> LocalEtcd {
        let client_port = free_port();
        LocalEtcd {
            endpoint: format!("http://127.0.0.1:{client_port}"),
            dir: dir.to_path_buf(),
            client_port,
            child: None,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let peer = free_port();
        let endpoint = &self.endpoint;
        let data = self.dir.join("etcd");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))?;
        let child = Command::new("etcd")
            .arg("--name=baton-local")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!(
                "--initial-cluster=baton-local=http://127.0.0.1:{peer}"
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (is the etcd-server package installed?)")?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20))
    }

    fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let url = format!("{}/health", self.endpoint);
        loop {
            if http_get_status(&url) == Ok(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd at {} not healthy after {limit:?}", self.endpoint);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The etcd process, while it runs (tests freeze it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn stop(&mut self) {
        end(&mut self.child);
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `baton <command> -c <config>`, its output appended to `log`, with the
/// caller's RUST_LOG (default `info`).
fn spawn_baton(baton: &Path, command: &str, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(baton)
        .arg(command)
        .arg("-c")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} {command}", baton.display()))
}

/// SIGKILL to a child we started, and reap it.
fn end(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Status code of a plain HTTP GET on loopback (no TLS, no redirects).
pub fn http_get_status(url: &str) -> Result<u16, String> {
    http_get(url).map_err(|e| e.to_string())
}

fn http_get(url: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("only http:// URLs"))?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))
}

/// One agent of a local cluster.
pub struct LocalNode {
    pub name: String,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub pg_port: u16,
    pub api_port: u16,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl LocalNode {
    pub fn agent_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        baton::pg::read_postmaster_pid(&self.data_dir)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }
}

pub struct LocalCluster {
    pub dir: PathBuf,
    pub scope: String,
    pub group: Option<u32>,
    pub etcd: LocalEtcd,
    pub nodes: Vec<LocalNode>,
    baton: PathBuf,
}

pub struct ClusterOptions {
    pub scope: String,
    pub nodes: usize,
    /// Extra TOML appended to every node config.
    pub extra_toml: String,
    pub ttl: u64,
    /// Start etcd right away (tests of an unreachable etcd start it later).
    pub start_etcd: bool,
    /// Extra TOML inside every node's `[api]` table (e.g. TLS files).
    pub api_toml: String,
    /// The group of a multi-group cluster these nodes form (`group` in
    /// their files).
    pub group: Option<u32>,
    /// Join an etcd someone else runs (another group's) instead of
    /// starting one.
    pub etcd_endpoint: Option<String>,
    /// Node names are this followed by 1, 2, ...
    pub node_prefix: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            scope: "demo".into(),
            nodes: 3,
            extra_toml: String::new(),
            ttl: 4,
            start_etcd: true,
            api_toml: String::new(),
            group: None,
            etcd_endpoint: None,
            node_prefix: "node".into(),
        }
    }
}

impl LocalCluster {
    /// Writes configs and starts etcd; agents are started with [`start_agent`].
    pub fn create(dir: &Path, baton: &Path, opts: &ClusterOptions) -> anyhow::Result<LocalCluster> {
        open_dir(dir)?;
        let mut etcd = LocalEtcd::planned(dir);
        if let Some(endpoint) = &opts.etcd_endpoint {
            etcd.endpoint = endpoint.clone();
        } else if opts.start_etcd {
            etcd.start()?;
        }
        let mut nodes = vec![];
        for i in 1..=opts.nodes {
            let name = format!("{}{i}", opts.node_prefix);
            let pg_port = free_port();
            let api_port = free_port();
            let data_dir = dir.join(&name);
            let config_path = dir.join(format!("{name}.toml"));
            let toml = format!(
                r#"scope = "{scope}"
name = "{name}"
{group}

[etcd]
endpoints = ["{etcd}"]

[api]
listen = "127.0.0.1:{api_port}"
{api_extra}

[postgresql]
data_dir = "{data}"
listen = "127.0.0.1:{pg_port}"
start_timeout = 30

[postgresql.parameters]
shared_buffers = "32MB"
max_connections = 40

[bootstrap.dcs]
ttl = {ttl}
loop_wait = 1
retry_timeout = 1
{extra}
"#,
                scope = opts.scope,
                etcd = etcd.endpoint,
                data = data_dir.display(),
                ttl = opts.ttl,
                extra = opts.extra_toml,
                api_extra = opts.api_toml,
                group = opts
                    .group
                    .map(|g| format!("group = {g}"))
                    .unwrap_or_default(),
            );
            std::fs::write(&config_path, toml)?;
            nodes.push(LocalNode {
                log_path: dir.join(format!("{name}.agent.log")),
                name,
                config_path,
                data_dir,
                pg_port,
                api_port,
                child: None,
            });
        }
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            scope: opts.scope.clone(),
            group: opts.group,
            etcd,
            nodes,
            baton: baton.to_path_buf(),
        })
    }

    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            bail!("{} is already running", node.name);
        }
        let child = spawn_baton(&self.baton, "agent", &node.config_path, &node.log_path)?;
        node.child = Some(child);
        Ok(())
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.start_agent(i)?;
        }
        Ok(())
    }

    /// SIGKILL to the agent only: postgres (detached) keeps running.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to the agent and wait (bounded) for it to exit.
    pub fn stop_agent(&mut self, i: usize, limit: Duration) -> anyhow::Result<()> {
        let Some(mut c) = self.nodes[i].child.take() else {
            return Ok(());
        };
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + limit;
        loop {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "{} did not exit within {limit:?} of SIGTERM",
                    self.nodes[i].name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to this node's postmaster (the agent lives on).
    pub fn kill_postgres(&self, i: usize) -> Option<i32> {
        let pid = self.nodes[i].postmaster_pid()?;
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        Some(pid)
    }

    /// Appends TOML to a node's config (before its agent starts), e.g. tags.
    pub fn append_config(&self, i: usize, toml: &str) -> anyhow::Result<()> {
        let path = &self.nodes[i].config_path;
        let mut text = std::fs::read_to_string(path)?;
        text.push('\n');
        text.push_str(toml);
        std::fs::write(path, text)?;
        Ok(())
    }

    /// Points one node's agent at another etcd endpoint (e.g. a relay).
    pub fn set_etcd_endpoint(&self, i: usize, endpoint: &str) -> anyhow::Result<()> {
        let path = &self.nodes[i].config_path;
        let text = std::fs::read_to_string(path)?;
        let from = format!("endpoints = [\"{}\"]", self.etcd.endpoint);
        if !text.contains(&from) {
            bail!("{} has no endpoints line to replace", path.display());
        }
        std::fs::write(
            path,
            text.replace(&from, &format!("endpoints = [\"{endpoint}\"]")),
        )?;
        Ok(())
    }

    /// (host, port) of every node's postgres, for multi-host clients.
    pub fn pg_hosts(&self) -> Vec<(String, u16)> {
        self.nodes
            .iter()
            .map(|n| ("127.0.0.1".to_string(), n.pg_port))
            .collect()
    }

    /// A libpq multi-host connection string for all nodes.
    pub fn dsn(&self, attrs: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.pg_port))
            .collect();
        format!("postgresql://postgres@{}/postgres?{attrs}", hosts.join(","))
    }

    /// Stops everything we started: agents (SIGTERM, then SIGKILL), any
    /// postmaster left in our data dirs (SIGQUIT), then etcd.
    pub fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.stop_agent(i, Duration::from_secs(20));
        }
        self.kill_leftover_postgres();
    }

    fn kill_leftover_postgres(&self) {
        for n in &self.nodes {
            if let Some(pid) = n.postmaster_pid() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
                let deadline = Instant::now() + Duration::from_secs(10);
                while n.postmaster_pid().is_some() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        let dcs = baton::dcs::Dcs::connect(
            std::slice::from_ref(&self.etcd.endpoint),
            baton::config::prefix("/service", &self.scope, self.group),
            Duration::from_secs(2),
        )
        .await?;
        Ok(dcs.load().await?)
    }

    /// `POST /switchover` to the current leader (no candidate: the healthiest
    /// replica); returns the old leader and the agent's answer.
    pub async fn switchover_via_api(&self) -> anyhow::Result<(String, String)> {
        let v = self.view().await?;
        let leader = v.leader_name().context("no leader")?.to_string();
        let api = v
            .leader_member()
            .context("no leader member")?
            .api_url
            .clone();
        let resp = baton::tls::http_client(Duration::from_secs(330), None)?
            .post(format!("{}/switchover", api.trim_end_matches("/patroni")))
            .json(&serde_json::json!({"leader": leader}))
            .send()
            .await?;
        let (code, text) = baton::tls::read_answer(resp).await;
        if !code.is_success() {
            bail!("switchover refused ({code}): {text}");
        }
        Ok((leader, text))
    }

    /// Waits until every node is a member of a Normal cluster.
    pub async fn wait_normal(&self, limit: Duration) -> anyhow::Result<ClusterStatus> {
        let n = self.nodes.len();
        poll_until("Normal cluster", limit, || async {
            self.status().await.ok().filter(|s| {
                s.state == baton_core::status::ClusterState::Normal && s.members.len() == n
            })
        })
        .await
    }

    /// Waits until a member other than `not` leads and runs as primary; the
    /// error shows who leads and every member's last reason.
    pub async fn wait_new_leader(&self, not: &str, limit: Duration) -> anyhow::Result<String> {
        poll(
            "a new leader running as primary",
            limit,
            Duration::from_millis(100),
            || async {
                let v = self.view().await.map_err(|e| format!("{e:#}"))?;
                match (v.leader_name(), v.leader_member()) {
                    (Some(l), Some(m)) if l != not && m.is_running_primary() => Ok(l.to_string()),
                    _ => Err(format!(
                        "leader {:?}; reasons {:?}",
                        v.leader_name(),
                        v.members
                            .iter()
                            .map(|(n, m)| (n.as_str(), m.baton_reason.as_deref().unwrap_or("")))
                            .collect::<Vec<_>>()
                    )),
                }
            },
        )
        .await
    }

    pub async fn status(&self) -> anyhow::Result<ClusterStatus> {
        let v = self.view().await?;
        Ok(ClusterStatus::from_view(&self.scope, &v, v.max_lag()))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.kill_leftover_postgres();
    }
}

/// A standalone postgres no agent manages: a stand-in for a coordinator or
/// any endpoint the cluster's routing statements update, or a backend the
/// tests describe to a router by writing etcd keys themselves.
pub struct LocalPostgres {
    pub port: u16,
    pub data_dir: PathBuf,
    inst: baton::pg::Instance,
}

impl LocalPostgres {
    /// initdb and start in `dir/name`, as the postgres OS user when root;
    /// `parameters`: extra lines of `[postgresql.parameters]`.
    pub async fn start(dir: &Path, name: &str, parameters: &str) -> anyhow::Result<LocalPostgres> {
        let port = free_port();
        let data_dir = dir.join(name);
        let toml = format!(
            "scope = \"standalone\"\nname = \"{name}\"\n[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n\
             [api]\nlisten = \"127.0.0.1:1\"\n[postgresql]\ndata_dir = \"{}\"\n\
             listen = \"127.0.0.1:{port}\"\n[postgresql.parameters]\nshared_buffers = \"16MB\"\n\
             max_connections = 20\n{parameters}\n",
            data_dir.display()
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml)?;
        let cfg = baton::config::NodeConfig::load(&path)?;
        let inst = baton::pg::Instance::new(cfg.postgresql, name.to_string())?;
        inst.initdb_staged().await?;
        inst.adopt_staged()?;
        inst.start(&baton::pg::RunAs::Primary).await?;
        Ok(LocalPostgres {
            port,
            data_dir,
            inst,
        })
    }

    pub async fn restart(&self) -> anyhow::Result<()> {
        self.inst.start(&baton::pg::RunAs::Primary).await?;
        Ok(())
    }

    pub async fn stop(&self) -> anyhow::Result<()> {
        self.inst.stop(baton::pg::StopMode::Fast).await?;
        Ok(())
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        baton::pg::read_postmaster_pid(&self.data_dir)
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.postmaster_pid().is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A `baton router` process for a local cluster: read-write, read-only
/// and API listeners on free ports.
pub struct LocalRouter {
    pub rw_port: u16,
    pub ro_port: u16,
    pub api_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl LocalRouter {
    /// Writes `dir/<name>.toml` (`top`: extra top-level keys; `read_only`:
    /// extra keys of its table) and starts the router; waits until its API
    /// answers.
    pub fn start(
        dir: &Path,
        baton: &Path,
        name: &str,
        cluster: (&str, &str),
        top: &str,
        read_only: &str,
    ) -> anyhow::Result<LocalRouter> {
        let (scope, etcd) = cluster;
        let (rw_port, ro_port, api_port) = (free_port(), free_port(), free_port());
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config_path,
            format!(
                "scope = \"{scope}\"\n{top}\n[etcd]\nendpoints = [\"{etcd}\"]\n\
                 [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
                 [read_write]\nlisten = \"127.0.0.1:{rw_port}\"\n\
                 [read_only]\nlisten = \"127.0.0.1:{ro_port}\"\n{read_only}\n"
            ),
        )?;
        let log_path = dir.join(format!("{name}.log"));
        let child = spawn_baton(baton, "router", &config_path, &log_path)?;
        let mut r = LocalRouter {
            rw_port,
            ro_port,
            api_port,
            config_path,
            log_path,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if http_get_status(&r.api_url("/routes")).is_ok() {
                return Ok(r);
            }
            if let Some(status) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "the router exited ({status}): {}",
                    std::fs::read_to_string(&r.log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("the router's API did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalRouter {
    fn drop(&mut self) {
        self.stop();
    }
}

impl LocalCluster {
    /// A router for this cluster, its files in the cluster's directory.
    pub fn start_router(
        &self,
        name: &str,
        top: &str,
        read_only: &str,
    ) -> anyhow::Result<LocalRouter> {
        LocalRouter::start(
            &self.dir,
            &self.baton,
            name,
            (&self.scope, &self.etcd.endpoint),
            top,
            read_only,
        )
    }
}

/// HAProxy (Debian's `haproxy`) run from `examples/haproxy.cfg` with that
/// file's example addresses replaced by a local cluster's: the tests and
/// `bench/router` check the documented configuration itself.
pub struct LocalHaproxy {
    pub rw_port: u16,
    pub ro_port: u16,
    pub config_path: PathBuf,
    child: Option<Child>,
}

impl LocalHaproxy {
    pub fn start(c: &LocalCluster, template: &Path) -> anyhow::Result<LocalHaproxy> {
        let mut text = std::fs::read_to_string(template)
            .with_context(|| format!("reading {}", template.display()))?;
        let (rw_port, ro_port, stats_port) = (free_port(), free_port(), free_port());
        let mut swaps = vec![
            ("127.0.0.1:5000".to_string(), format!("127.0.0.1:{rw_port}")),
            ("127.0.0.1:5001".to_string(), format!("127.0.0.1:{ro_port}")),
            (
                "127.0.0.1:7000".to_string(),
                format!("127.0.0.1:{stats_port}"),
            ),
        ];
        for (i, n) in c.nodes.iter().enumerate() {
            swaps.push((
                format!("127.0.0.1:{}", 5432 + i),
                format!("127.0.0.1:{}", n.pg_port),
            ));
            swaps.push((
                format!("check port {}", 8008 + i),
                format!("check port {}", n.api_port),
            ));
        }
        for (from, to) in &swaps {
            if !text.contains(from.as_str()) {
                bail!(
                    "{} has no {from:?} to point at the cluster",
                    template.display()
                );
            }
            text = text.replace(from.as_str(), to);
        }
        let config_path = c.dir.join("haproxy.cfg");
        std::fs::write(&config_path, text)?;
        let log = std::fs::File::create(c.dir.join("haproxy.log"))?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy (Debian package haproxy; scripts/test installs it)")?;
        let mut h = LocalHaproxy {
            rw_port,
            ro_port,
            config_path,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get_status(&format!("http://127.0.0.1:{stats_port}/")).is_err() {
            if let Some(status) = h.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "haproxy exited ({status}): {}",
                    std::fs::read_to_string(c.dir.join("haproxy.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("haproxy did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(h)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn stop(&mut self) {
        end(&mut self.child);
    }
}

impl Drop for LocalHaproxy {
    fn drop(&mut self) {
        self.stop();
    }
}
