//! What runs beside the HA loop when this member's role changes: the
//! callbacks (Patroni's `on_start`, `on_stop`, `on_role_change`) and the
//! routing statements a new leader runs on every endpoint that must learn
//! where the primary is (an OpenTenBase coordinator's `ALTER NODE`, a
//! pooler's reload).
//!
//! Both follow the agent's snapshot through its handle and never hold up
//! the loop: a hook that hangs is killed at its timeout, an endpoint that
//! is down is retried on its own schedule, and fencing never waits for
//! either.

pub mod config;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use baton_core::cluster::EndpointStatus;
use baton_core::ha::PgStatus;

use crate::agent::{AgentHandle, Snapshot};
pub use config::HooksConfig;

/// Shared by the routing task (writer), the HA loop (the member key) and
/// the REST API (`/patroni`, `/metrics`).
pub type RoutingStatus = Arc<Mutex<BTreeMap<String, EndpointStatus>>>;

/// What the callbacks see of the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stopped,
    Primary,
    Replica,
}

impl Role {
    fn of(s: &Snapshot) -> Option<Role> {
        match &s.pg {
            PgStatus::Running(r) if r.in_recovery => Some(Role::Replica),
            PgStatus::Running(_) => Some(Role::Primary),
            PgStatus::Stopped => Some(Role::Stopped),
            // Starting, or hung: no transition until it is known.
            PgStatus::Unresponsive => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Stopped => "stopped",
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// The callback for a change from `from` to `to`, with Patroni's action
/// names; `ran_as` is the role postgres last ran in. A restart in another
/// role (a demoted primary back as a replica) is a role change, as in
/// Patroni, not a start.
fn transition(from: Role, to: Role, ran_as: Option<Role>) -> Option<(&'static str, Role)> {
    match (from, to) {
        (a, b) if a == b => None,
        (Role::Stopped, r) if ran_as.is_some_and(|was| was != r) => Some(("on_role_change", r)),
        (Role::Stopped, r) => Some(("on_start", r)),
        (r, Role::Stopped) => Some(("on_stop", r)),
        (_, r) => Some(("on_role_change", r)),
    }
}

/// Starts the hook tasks for an agent; they end when the agent does.
pub fn spawn(cfg: &crate::config::NodeConfig, handle: &AgentHandle) {
    let hooks = cfg.hooks.clone();
    let snapshots = handle.subscribe();
    if hooks.callbacks != config::Callbacks::default() {
        tokio::spawn(callbacks(
            hooks.callbacks,
            cfg.scope.clone(),
            snapshots.clone(),
        ));
    }
    if let Some(routing) = hooks.routing {
        let pg_address = cfg.postgresql.connect_address;
        let me = Target {
            host: pg_address.ip().to_string(),
            port: pg_address.port(),
            name: cfg.name.clone(),
            scope: cfg.scope.clone(),
            forward_port: cfg.postgresql.parameters.get("forward_port").cloned(),
        };
        let groups = (!routing.groups.is_empty()).then(|| GroupLeaders {
            etcd: cfg.etcd.endpoints.clone(),
            prefix: crate::config::prefix(&cfg.namespace, &cfg.scope, None),
            superuser: cfg.postgresql.superuser.clone(),
        });
        tokio::spawn(routing_task(
            routing,
            me,
            groups,
            snapshots,
            handle.routing(),
        ));
    }
}

/// Where the routing task finds the leaders of the groups it updates.
struct GroupLeaders {
    etcd: Vec<String>,
    /// The scope's prefix, above every group.
    prefix: String,
    /// Group leaders are reached as the superuser (the same on every
    /// group, as Patroni's Citus support requires too).
    superuser: crate::config::Credentials,
}

impl GroupLeaders {
    /// `group<N>:<member>` → how to reach it, for each group in `wanted`
    /// that has a leader now.
    async fn endpoints(
        &self,
        dcs: &mut Option<crate::dcs::Dcs>,
        wanted: &[u32],
        database: &str,
        timeout: Duration,
    ) -> Result<BTreeMap<String, tokio_postgres::Config>, String> {
        if dcs.is_none() {
            *dcs = Some(
                crate::dcs::Dcs::connect(&self.etcd, self.prefix.clone(), timeout)
                    .await
                    .map_err(|e| format!("etcd: {e}"))?,
            );
        }
        let groups = dcs
            .as_ref()
            .expect("connected above")
            .load_groups()
            .await
            .map_err(|e| format!("etcd: {e}"))?;
        let mut out = BTreeMap::new();
        for g in wanted {
            let Some(view) = groups.get(g) else { continue };
            let (Some(name), Some(m)) = (view.leader_name(), view.leader_member()) else {
                continue;
            };
            let Some((host, port)) = m.pg_address() else {
                continue;
            };
            let mut c = tokio_postgres::Config::new();
            c.host(&host)
                .port(port)
                .user(&self.superuser.username)
                .dbname(database)
                .application_name("baton routing");
            if let Some(pw) = &self.superuser.password {
                c.password(pw);
            }
            out.insert(format!("group{g}:{name}"), c);
        }
        Ok(out)
    }
}

async fn callbacks(cfg: config::Callbacks, scope: String, mut rx: watch::Receiver<Snapshot>) {
    // The role the agent found at start is the baseline: a restarted agent
    // whose postgres kept running does not announce a start.
    let mut last: Option<Role> = None;
    let mut ran_as: Option<Role> = None;
    loop {
        let role = Role::of(&rx.borrow_and_update());
        if let Some(role) = role {
            if let Some((action, r)) = last.and_then(|l| transition(l, role, ran_as)) {
                let cmd = match action {
                    "on_start" => &cfg.on_start,
                    "on_stop" => &cfg.on_stop,
                    _ => &cfg.on_role_change,
                };
                if let Some(cmd) = cmd {
                    // One at a time, in order; a later change waits for the
                    // earlier hook, bounded by its timeout.
                    run_callback(cmd, action, r.name(), &scope, cfg.timeout).await;
                }
            }
            last = Some(role);
            if role != Role::Stopped {
                ran_as = Some(role);
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// `sh -c '<cmd> "$@"' baton ACTION ROLE SCOPE`, in a process group of its
/// own so that a timeout kills what it started too.
async fn run_callback(cmd: &str, action: &str, role: &str, scope: &str, timeout: Duration) {
    let mut child = match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{cmd} \"$@\""))
        .args(["baton", action, role, scope])
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(action, "callback {cmd:?} did not start: {e}");
            return;
        }
    };
    tracing::info!(action, role, "callback {cmd:?} started");
    let mut group = Group(child.id());
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => {
            // Ended by itself: what it left running in the background
            // (a daemon it meant to start) is its business.
            group.0 = None;
            match r {
                Ok(status) if status.success() => tracing::info!(action, "callback {cmd:?} done"),
                Ok(status) => tracing::warn!(action, "callback {cmd:?} failed: {status}"),
                Err(e) => tracing::warn!(action, "callback {cmd:?}: {e}"),
            }
        }
        Err(_) => {
            drop(group);
            let _ = child.kill().await;
            tracing::error!(
                action,
                "callback {cmd:?} still running after {timeout:?}: killed with its process group"
            );
        }
    }
}

/// Kills a callback's process group when dropped: at its timeout, and when
/// the agent stops with one still running (its task is dropped then).
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let group = nix::unistd::Pid::from_raw(-(pid as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The primary every endpoint must point at: this member, once it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    name: String,
    scope: String,
    /// OpenTenBase's `forward_port` (`postgresql.parameters`), which
    /// `ALTER NODE ... FORWARD=` must follow: a coordinator left with the
    /// old one hangs on every query routed there, with no error.
    forward_port: Option<String>,
}

impl Target {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `statement` with this primary's placeholders filled in.
    fn render(&self, statement: &str) -> String {
        config::render(
            statement,
            &[
                ("{host}", &self.host),
                ("{port}", &self.port.to_string()),
                ("{name}", &self.name),
                ("{scope}", &self.scope),
                (
                    "{forward_port}",
                    self.forward_port.as_deref().unwrap_or("{forward_port}"),
                ),
            ],
        )
    }
}

/// What the routing task remembers of an endpoint it updated.
#[derive(Debug, Clone)]
struct Applied {
    /// `pg_postmaster_start_time()` when it was updated: a different one
    /// later means it restarted, and is updated again.
    started: String,
    checked: tokio::time::Instant,
}

async fn routing_task(
    cfg: config::Routing,
    me: Target,
    groups: Option<GroupLeaders>,
    mut rx: watch::Receiver<Snapshot>,
    status: RoutingStatus,
) {
    let statements: Vec<String> = cfg.statements.iter().map(|s| me.render(s)).collect();
    let verify = cfg.verify.as_deref().map(|v| me.render(v));
    let mut verify_at = tokio::time::Instant::now();
    let fixed: BTreeMap<String, tokio_postgres::Config> = cfg
        .endpoints
        .iter()
        .filter_map(|(name, dsn)| Some((name.clone(), dsn.parse().ok()?)))
        .collect();
    let mut dcs = None;
    // The group leaders as last read, and when to read them again.
    let mut leaders: BTreeMap<String, tokio_postgres::Config> = BTreeMap::new();
    let mut read_leaders_at = tokio::time::Instant::now();
    let mut leaders_error: Option<String> = None;
    let mut applied: BTreeMap<String, Applied> = BTreeMap::new();
    let mut retry_at: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    loop {
        let leading = {
            let s = rx.borrow_and_update();
            s.is_leader && matches!(&s.pg, PgStatus::Running(r) if !r.in_recovery)
        };
        if !leading {
            // Another member's promotion updates them now; what we did is
            // history, and a later promotion of ours starts over.
            applied.clear();
            retry_at.clear();
            leaders.clear();
            read_leaders_at = tokio::time::Instant::now();
            verify_at = tokio::time::Instant::now();
            status.lock().expect("routing status lock").clear();
        } else {
            let now = tokio::time::Instant::now();
            if let Some(g) = groups.as_ref().filter(|_| now >= read_leaders_at) {
                // Read again at the retry pace while the leaders are not
                // known, at the check pace once they are: a new leader of
                // another group is a new endpoint, updated when seen.
                match g
                    .endpoints(&mut dcs, &cfg.groups, &cfg.database, cfg.timeout)
                    .await
                {
                    Ok(found) => {
                        let all = found.len() == cfg.groups.len();
                        if leaders_error.take().is_some() {
                            tracing::info!("routing: group leaders readable again");
                        }
                        leaders = found;
                        read_leaders_at = now
                            + if all {
                                cfg.check_interval
                            } else {
                                cfg.retry_interval
                            };
                    }
                    Err(e) => {
                        // Once per outage, not every retry.
                        if leaders_error.as_deref() != Some(e.as_str()) {
                            tracing::warn!(
                                "routing: cannot read the group leaders: {e}; retrying every {:?}",
                                cfg.retry_interval
                            );
                        }
                        leaders_error = Some(e);
                        read_leaders_at = now + cfg.retry_interval;
                    }
                }
                let current =
                    |name: &String| fixed.contains_key(name) || leaders.contains_key(name);
                applied.retain(|name, _| current(name));
                retry_at.retain(|name, _| current(name));
                status
                    .lock()
                    .expect("routing status lock")
                    .retain(|name, _| current(name) || name == VERIFY);
            }
            for (name, endpoint) in fixed.iter().chain(&leaders) {
                if retry_at.get(name).is_some_and(|t| *t > now) {
                    continue;
                }
                let due = match applied.get(name) {
                    None => true,
                    Some(a) => now.duration_since(a.checked) >= cfg.check_interval,
                };
                if !due {
                    continue;
                }
                let outcome =
                    reconcile(endpoint, &statements, applied.get(name), cfg.timeout).await;
                let mut st = status.lock().expect("routing status lock");
                let entry = status_entry(&mut st, name, &me.address());
                match outcome {
                    Ok((started, ran)) => {
                        if ran {
                            entry.attempts += 1;
                            tracing::info!(endpoint = %name, "routing statements applied: {} is the primary", me.address());
                            entry.since = now_rfc3339();
                        }
                        entry.state = "ok".into();
                        entry.error = None;
                        applied.insert(
                            name.clone(),
                            Applied {
                                started,
                                checked: tokio::time::Instant::now(),
                            },
                        );
                        retry_at.remove(name);
                    }
                    Err(e) => {
                        entry.attempts += 1;
                        if entry.is_ok() {
                            entry.since = now_rfc3339();
                        }
                        if entry.error.as_deref() != Some(e.as_str()) {
                            tracing::warn!(endpoint = %name, "routing statements not applied yet: {e}; retrying every {:?}", cfg.retry_interval);
                        }
                        entry.state = "pending".into();
                        entry.error = Some(e);
                        applied.remove(name);
                        retry_at.insert(
                            name.clone(),
                            tokio::time::Instant::now() + cfg.retry_interval,
                        );
                    }
                }
            }
            // Every endpoint holds the new primary: does it serve?
            let all_ok = fixed
                .keys()
                .chain(leaders.keys())
                .all(|n| applied.contains_key(n));
            if let Some(v) = verify.as_deref().filter(|_| all_ok && now >= verify_at) {
                if let Some((name, endpoint)) = fixed.iter().chain(&leaders).next() {
                    let outcome = verify_on(endpoint, v, cfg.timeout).await;
                    let ok = outcome.is_ok();
                    record_verify(&status, &me.address(), name, outcome);
                    verify_at = tokio::time::Instant::now()
                        + if ok {
                            cfg.check_interval
                        } else {
                            cfg.retry_interval
                        };
                }
            }
        }
        let next = retry_at
            .values()
            .copied()
            .chain(applied.values().map(|a| a.checked + cfg.check_interval))
            .chain((leading && groups.is_some()).then_some(read_leaders_at))
            .chain((leading && verify.is_some()).then_some(verify_at))
            .min();
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// One endpoint: runs the statements, each a query of its own, unless it
/// was updated since its postmaster last started; returns that start time
/// and whether it ran.
async fn reconcile(
    endpoint: &tokio_postgres::Config,
    statements: &[String],
    applied: Option<&Applied>,
    timeout: Duration,
) -> Result<(String, bool), String> {
    let work = async {
        let client = connect(endpoint).await?;
        let before: String = client
            .query_one("SELECT pg_postmaster_start_time()::text", &[])
            .await
            .map(|r| r.get(0))
            .map_err(|e| crate::pg::describe(&e))?;
        if applied.is_some_and(|a| a.started == before) {
            return Ok((before, false));
        }
        for s in statements {
            client
                .batch_execute(s)
                .await
                .map_err(|e| crate::pg::describe(&e))?;
        }
        Ok((before, true))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// `name`'s status entry, pending for `primary` until a first outcome.
fn status_entry<'a>(
    st: &'a mut BTreeMap<String, EndpointStatus>,
    name: &str,
    primary: &str,
) -> &'a mut EndpointStatus {
    st.entry(name.to_string())
        .or_insert_with(|| EndpointStatus {
            state: "pending".into(),
            primary: primary.to_string(),
            error: None,
            since: now_rfc3339(),
            attempts: 0,
        })
}

/// The routing status entry of the verification (`VERIFY`), shown beside
/// the endpoints: `since` is when it last succeeded, or first failed.
pub const VERIFY: &str = "verify";

fn record_verify(status: &RoutingStatus, primary: &str, via: &str, outcome: Result<(), String>) {
    let mut st = status.lock().expect("routing status lock");
    let entry = status_entry(&mut st, VERIFY, primary);
    entry.attempts += 1;
    match outcome {
        Ok(()) => {
            if !entry.is_ok() {
                tracing::info!(via, "routing: the new primary verified");
                entry.since = now_rfc3339();
            }
            entry.state = "ok".into();
            entry.error = None;
        }
        Err(e) => {
            if entry.is_ok() {
                entry.since = now_rfc3339();
            }
            let e = format!("via {via}: {e}");
            if entry.error.as_deref() != Some(e.as_str()) {
                tracing::warn!("routing: verifying the new primary failed: {e}");
            }
            entry.state = "pending".into();
            entry.error = Some(e);
        }
    }
}

/// A connection to an endpoint; the error in the server's words.
async fn connect(endpoint: &tokio_postgres::Config) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = endpoint
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| crate::pg::describe(&e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Runs the verification statement on one endpoint, bounded.
async fn verify_on(
    endpoint: &tokio_postgres::Config,
    statement: &str,
    timeout: Duration,
) -> Result<(), String> {
    let work = async {
        connect(endpoint)
            .await?
            .batch_execute(statement)
            .await
            .map_err(|e| crate::pg::describe(&e))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_have_patronis_action_names() {
        use Role::*;
        assert_eq!(
            transition(Stopped, Replica, None),
            Some(("on_start", Replica))
        );
        assert_eq!(
            transition(Stopped, Replica, Some(Replica)),
            Some(("on_start", Replica))
        );
        assert_eq!(
            transition(Primary, Stopped, None),
            Some(("on_stop", Primary))
        );
        // A demoted primary restarted as a replica changed role.
        assert_eq!(
            transition(Stopped, Replica, Some(Primary)),
            Some(("on_role_change", Replica))
        );
        assert_eq!(
            transition(Replica, Primary, Some(Replica)),
            Some(("on_role_change", Primary))
        );
        assert_eq!(transition(Replica, Replica, Some(Replica)), None);
    }

    #[test]
    fn statements_get_the_new_primary() {
        let me = Target {
            host: "10.0.0.2".into(),
            port: 5433,
            name: "node2".into(),
            scope: "demo".into(),
            forward_port: Some("6433".into()),
        };
        assert_eq!(
            me.render("ALTER NODE dn01 WITH (host='{host}', port={port}, forward={forward_port}); -- {name}@{scope}"),
            "ALTER NODE dn01 WITH (host='10.0.0.2', port=5433, forward=6433); -- node2@demo"
        );
    }
}
