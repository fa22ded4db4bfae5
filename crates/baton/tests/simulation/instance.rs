//! The agent's `Postgres` over a simulated instance: what `pg_ctl`,
//! `pg_basebackup`, `pg_rewind` and the status query would do, with their
//! durations drawn from the seed. Effects land when the step ends and
//! check their preconditions then (a clone whose source died fails); a
//! promotion, once signalled, happens unless postgres stops first, killed
//! agent or not, as with `pg_ctl promote`.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use baton::agent::Postgres;
use baton::config::PgConfig;
use baton::pg::{FenceOrder, PgError, RunAs, StopMode};
use baton_core::instance::{DataDir, ReplicationRow, Running};
use baton_core::lsn::Lsn;

use crate::world::{host_of, Mode, Shared, SimFence, Wal, World, PG_PORT};

pub struct SimPg {
    pub world: Shared,
    pub node: usize,
    pub epoch: u64,
}

fn failed(what: &str, detail: impl Into<String>) -> PgError {
    PgError::Command {
        what: what.into(),
        detail: detail.into(),
    }
}

fn unreachable(host: &str, port: u16) -> PgError {
    PgError::ConnectTimeout {
        target: format!("{host}:{port}"),
        after: Duration::from_secs(1),
    }
}

impl SimPg {
    /// A step that takes `lo..=hi` ms (or up to `slow` ms when the run has
    /// slow steps), then `effect` on the world.
    async fn step<T>(
        &self,
        lo: u64,
        hi: u64,
        slow: u64,
        effect: impl FnOnce(&mut World, usize) -> Result<T, PgError>,
    ) -> Result<T, PgError> {
        self.world.gate(self.node, self.epoch).await;
        let d = {
            let mut w = self.world.lock();
            if w.faults.slow_steps && w.rng.chance(10) {
                w.rng.ms(hi, slow)
            } else {
                w.step_ms(lo, hi)
            }
        };
        tokio::time::sleep(d).await;
        self.world.gate(self.node, self.epoch).await;
        let mut w = self.world.lock();
        let r = effect(&mut w, self.node);
        w.check();
        r
    }

    fn running_as(run_as: &RunAs) -> Mode {
        match run_as {
            RunAs::Primary => Mode::Primary,
            RunAs::ReadOnly => Mode::Replica(None),
            RunAs::Replica { host, port, slot } => {
                Mode::Replica(Some((host.clone(), *port, slot.clone())))
            }
        }
    }

    /// `host:port` is a member's postgres that answers us now.
    fn reachable(w: &World, me: usize, host: &str, port: u16) -> Option<usize> {
        let i = w.index(host).filter(|_| port == PG_PORT)?;
        let n = &w.nodes[i];
        (n.pg.running.is_some() && !n.pg.hung && !n.isolated && !w.nodes[me].isolated).then_some(i)
    }
}

/// The status query's answer for node `i`, as `query_running` builds it.
fn running(w: &World, i: usize) -> Running {
    let n = &w.nodes[i];
    let wal = n.pg.data.clone().expect("a running instance has data");
    let primary = n.pg.running == Some(Mode::Primary);
    let (conninfo, slot) = match &n.pg.running {
        Some(Mode::Replica(Some((host, port, slot)))) => (
            format!(
                "host={host} port={port} user=replicator application_name={}",
                n.name
            ),
            slot.clone(),
        ),
        _ => (String::new(), String::new()),
    };
    let replication = if primary {
        (0..w.nodes.len())
            .filter(|r| w.streaming_from(*r) == Some(i))
            .map(|r| {
                let at = w.nodes[r].pg.data.as_ref().map(|d| Lsn(d.lsn));
                ReplicationRow {
                    application_name: w.nodes[r].name.clone(),
                    client_addr: Some(host_of(r)),
                    state: "streaming".into(),
                    sent_lsn: at,
                    flush_lsn: at,
                    replay_lsn: at,
                    sync_state: "async".into(),
                    replay_lag_ms: None,
                }
            })
            .collect()
    } else {
        vec![]
    };
    Running {
        in_recovery: !primary,
        system_id: wal.system_id(),
        timeline: Some(wal.timeline),
        wal_lsn: primary.then_some(Lsn(wal.lsn)),
        receive_lsn: (!primary).then_some(Lsn(wal.lsn)),
        replay_lsn: (!primary).then_some(Lsn(wal.lsn)),
        timeline_lsn: (!primary).then_some(Lsn(wal.lsn)),
        receiver_streaming: w.streaming_from(i).is_some(),
        primary_conninfo: conninfo,
        primary_slot_name: slot,
        server_version: 150000,
        slots: n.pg.slots.iter().map(|s| (s.clone(), None)).collect(),
        replication,
        history: wal.history.iter().map(|(t, l)| (*t, Lsn(*l))).collect(),
        synchronous_standby_names: n.pg.sync_standbys.clone(),
        segments: vec![],
        mirroring_error: None,
        needs_repair: None,
    }
}

impl Postgres for SimPg {
    async fn postmaster_exit(&self) {
        // The simulated loop is driven by its ticks alone.
        std::future::pending().await
    }
    fn postmaster_running(&self) -> bool {
        let w = self.world.lock();
        let pg = &w.nodes[self.node].pg;
        pg.running.is_some() || pg.starting.is_some()
    }

    async fn inspect(&self) -> DataDir {
        self.world.gate(self.node, self.epoch).await;
        let w = self.world.lock();
        let pg = &w.nodes[self.node].pg;
        match &pg.data {
            None => DataDir::Empty,
            Some(d) => DataDir::Valid {
                system_id: d.system_id(),
                standby: pg.standby,
                timeline: Some(d.timeline),
                history: d.history.iter().map(|(t, l)| (*t, Lsn(*l))).collect(),
                clean_shutdown: pg.clean_checkpoint.is_some() && !pg.standby,
                checkpoint: pg.clean_checkpoint.map(Lsn),
            },
        }
    }

    async fn status(&self, timeout: Duration) -> Result<Running, PgError> {
        self.world.gate(self.node, self.epoch).await;
        let hung = self.world.lock().nodes[self.node].pg.hung;
        if hung {
            tokio::time::sleep(timeout).await;
            return Err(PgError::Timeout {
                what: "status query".into(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.world.gate(self.node, self.epoch).await;
        let w = self.world.lock();
        if w.nodes[self.node].pg.running.is_none() {
            return Err(failed("connect", "connection refused or starting up"));
        }
        Ok(running(&w, self.node))
    }

    fn disconnect(&self) {}

    async fn timeline_history(&self, tl: u32) -> Result<Vec<(u32, Lsn, String)>, PgError> {
        self.world.gate(self.node, self.epoch).await;
        let w = self.world.lock();
        let d = w.nodes[self.node].pg.data.as_ref();
        match d.filter(|d| d.timeline >= tl) {
            Some(d) => Ok(d
                .history
                .iter()
                .filter(|(t, _)| *t < tl)
                .map(|(t, l)| (*t, Lsn(*l), "promoted".to_string()))
                .collect()),
            None => Err(failed("pg_read_file", "no such history file")),
        }
    }

    async fn follow(&self, run_as: &RunAs) -> Result<(), PgError> {
        let mode = Self::running_as(run_as);
        self.step(1, 5, 5, move |w, i| match &w.nodes[i].pg.running {
            Some(Mode::Replica(_)) => {
                w.nodes[i].pg.running = Some(mode);
                Ok(())
            }
            _ => Err(failed("follow", "not a running replica")),
        })
        .await
    }

    async fn create_slot(&self, slot: &str) -> Result<(), PgError> {
        let slot = slot.to_string();
        self.step(1, 3, 3, move |w, i| {
            w.nodes[i].pg.slots.insert(slot);
            Ok(())
        })
        .await
    }

    async fn drop_inactive_slot(&self, slot: &str) -> Result<bool, PgError> {
        let slot = slot.to_string();
        self.step(1, 3, 3, move |w, i| Ok(w.nodes[i].pg.slots.remove(&slot)))
            .await
    }

    async fn set_sync_standbys(&self, value: Option<&str>, _: Duration) -> Result<(), PgError> {
        let value = value.unwrap_or("").to_string();
        self.step(1, 3, 3, move |w, i| {
            w.nodes[i].pg.sync_standbys = value;
            Ok(())
        })
        .await
    }

    async fn initdb(&self) -> Result<String, PgError> {
        self.step(300, 1500, 6000, |w, i| {
            w.last_id += 1;
            let wal = Wal {
                timeline: 1,
                lsn: 100,
                history: vec![],
                ids: vec![(1, w.last_id)],
            };
            let system_id = wal.system_id();
            w.nodes[i].pg.staging = Some(wal);
            let name = w.nodes[i].name.clone();
            w.event(format!("{name} ran initdb: {system_id}"));
            Ok(system_id)
        })
        .await
    }

    async fn staged_initdb(&self) -> Option<String> {
        self.world.gate(self.node, self.epoch).await;
        let w = self.world.lock();
        w.nodes[self.node]
            .pg
            .staging
            .as_ref()
            .map(|s| s.system_id())
    }

    async fn adopt_initdb(&self) -> Result<(), PgError> {
        self.step(1, 5, 5, |w, i| {
            let pg = &mut w.nodes[i].pg;
            if pg.data.is_some() {
                return Err(failed("adopt initdb", "data directory not empty"));
            }
            pg.data = pg.staging.take();
            pg.standby = false;
            pg.clean_checkpoint = None;
            Ok(())
        })
        .await
    }

    async fn discard_initdb(&self) -> Result<(), PgError> {
        self.step(1, 5, 5, |w, i| {
            w.nodes[i].pg.staging = None;
            Ok(())
        })
        .await
    }

    async fn first_start(&self) -> Result<(), PgError> {
        self.start(&RunAs::Primary).await
    }

    async fn start(&self, run_as: &RunAs) -> Result<(), PgError> {
        let mode = Self::running_as(run_as);
        // The postmaster exists from the start of `pg_ctl start` and comes
        // up by itself (the driver's physics), stalled or killed agent or
        // not; pg_ctl waits for it.
        self.step(1, 5, 5, |w, i| {
            let d = if w.faults.slow_steps && w.rng.chance(10) {
                w.rng.ms(600, 5000)
            } else {
                w.step_ms(100, 600)
            };
            let pg = &mut w.nodes[i].pg;
            if pg.data.is_none() {
                return Err(failed("pg_ctl start", "no data directory"));
            }
            if pg.running.is_some() || pg.starting.is_some() {
                return Err(failed("pg_ctl start", "another server might be running"));
            }
            if pg.rewind_incomplete {
                let line = format!(
                    "at {} ms: {} started postgres on a half-copied data directory (interrupted pg_rewind)",
                    w.ms(),
                    w.nodes[i].name
                );
                w.violation.get_or_insert(line);
                return Err(failed("pg_ctl start", "half-copied data directory"));
            }
            // Baton's config files (standby.signal) are written before
            // pg_ctl start runs.
            pg.standby = mode != Mode::Primary;
            pg.starting = Some((Instant::now() + d, mode));
            Ok(())
        })
        .await?;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            self.world.gate(self.node, self.epoch).await;
            let w = self.world.lock();
            let pg = &w.nodes[self.node].pg;
            match (&pg.starting, &pg.running) {
                (Some(_), _) => continue,
                (None, Some(_)) => return Ok(()),
                (None, None) => {
                    return Err(failed(
                        "pg_ctl start",
                        "the postmaster exited during startup",
                    ))
                }
            }
        }
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        let (lo, hi, slow) = match mode {
            StopMode::Fast => (50, 300, 4000),
            StopMode::Immediate => (5, 30, 30),
        };
        self.step(lo, hi, slow, move |w, i| {
            let pg = &mut w.nodes[i].pg;
            let was = pg.running.take();
            pg.starting = None;
            pg.promote_at = None;
            pg.hung = false;
            // A fast stop of a primary ends its WAL with a shutdown checkpoint.
            pg.clean_checkpoint = None;
            if mode == StopMode::Fast && was == Some(Mode::Primary) {
                if let Some(d) = &mut pg.data {
                    pg.clean_checkpoint = Some(d.lsn);
                    d.lsn += 1;
                }
            }
            if was.is_some() {
                let name = w.nodes[i].name.clone();
                w.event(format!("{name} stopped ({mode:?})"));
            }
            Ok(())
        })
        .await
    }

    async fn promote(&self, from: u32, to: u32, _old_primary_running: bool) -> Result<(), PgError> {
        let at = self
            .step(1, 5, 5, |w, i| {
                let d = if w.faults.slow_steps && w.rng.chance(10) {
                    w.rng.ms(500, 6000)
                } else {
                    w.step_ms(50, 500)
                };
                let pg = &mut w.nodes[i].pg;
                if !matches!(pg.running, Some(Mode::Replica(_))) {
                    return Err(failed("pg_ctl promote", "server is not in standby mode"));
                }
                // Postgres takes the newest timeline with a history file
                // plus one; Baton's placeholders make that `to`.
                let on = pg.data.as_ref().map(|d| d.timeline);
                if on != Some(from) || to <= from {
                    return Err(failed(
                        "promote",
                        format!("on timeline {on:?}, asked {from} -> {to}"),
                    ));
                }
                let at = Instant::now() + d;
                pg.promote_at = Some((at, to));
                Ok(at)
            })
            .await?;
        tokio::time::sleep_until(at).await;
        // The driver lands the promotion at `at`; wait until it has.
        for _ in 0..100 {
            self.world.gate(self.node, self.epoch).await;
            {
                let w = self.world.lock();
                let pg = &w.nodes[self.node].pg;
                if pg.running == Some(Mode::Primary) {
                    return Ok(());
                }
                if pg.promote_at.is_none() {
                    return Err(failed("pg_ctl promote", "server stopped while promoting"));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(failed("pg_ctl promote", "timed out"))
    }

    async fn basebackup_from(&self, host: &str, port: u16) -> Result<(), PgError> {
        let host = host.to_string();
        self.step(300, 3000, 10_000, move |w, i| {
            let Some(src) = Self::reachable(w, i, &host, port) else {
                return Err(unreachable(&host, port));
            };
            if w.nodes[i].pg.data.is_some() {
                return Err(failed("pg_basebackup", "directory exists but is not empty"));
            }
            let data = w.nodes[src].pg.data.clone();
            let pg = &mut w.nodes[i].pg;
            pg.data = data;
            pg.standby = true;
            pg.clean_checkpoint = None;
            pg.rewind_incomplete = false;
            Ok(())
        })
        .await
    }

    async fn rebuild_from(&self, host: &str, port: u16) -> Result<PathBuf, PgError> {
        let host = host.to_string();
        self.step(300, 3000, 10_000, move |w, i| {
            let Some(src) = Self::reachable(w, i, &host, port) else {
                return Err(unreachable(&host, port));
            };
            if w.nodes[i].pg.running.is_some() {
                return Err(failed("rebuild", "postgres is running"));
            }
            let data = w.nodes[src].pg.data.clone();
            let pg = &mut w.nodes[i].pg;
            pg.data = data;
            pg.standby = true;
            pg.clean_checkpoint = None;
            pg.rewind_incomplete = false;
            Ok(PathBuf::from("/sim/data.baton-old"))
        })
        .await
    }

    async fn end_of_wal(&self) -> Option<Lsn> {
        None
    }

    async fn rewind_from(&self, host: &str, port: u16) -> Result<Option<(Lsn, u32)>, PgError> {
        let host = host.to_string();
        // It connects, then copies: a source that dies meanwhile (or an
        // agent killed meanwhile) leaves the target half-copied.
        let h = host.clone();
        self.step(5, 50, 50, move |w, i| {
            if Self::reachable(w, i, &h, port).is_none() {
                return Err(unreachable(&h, port));
            }
            if w.nodes[i].pg.running.is_some() {
                return Err(failed(
                    "pg_rewind",
                    "target server must be shut down cleanly",
                ));
            }
            w.nodes[i].pg.rewind_incomplete = true;
            Ok(())
        })
        .await?;
        self.step(200, 2000, 8000, move |w, i| {
            let Some(src) = Self::reachable(w, i, &host, port) else {
                return Err(unreachable(&host, port));
            };
            if w.nodes[i].pg.running.is_some() {
                return Err(failed(
                    "pg_rewind",
                    "target server must be shut down cleanly",
                ));
            }
            let data = w.nodes[src].pg.data.clone();
            let pg = &mut w.nodes[i].pg;
            pg.data = data;
            pg.standby = true;
            pg.clean_checkpoint = None;
            pg.rewind_incomplete = false;
            let name = w.nodes[i].name.clone();
            w.event(format!("{name} rewound from {host}"));
            // The simulator does not measure what a rewind discards.
            Ok(None)
        })
        .await
    }

    async fn checkpoint_member(&self, host: &str, port: u16) -> Result<(), PgError> {
        let host = host.to_string();
        self.step(5, 50, 50, move |w, i| {
            Self::reachable(w, i, &host, port)
                .map(|_| ())
                .ok_or_else(|| unreachable(&host, port))
        })
        .await
    }

    async fn checkpoint(&self, _timeout: Duration) -> Result<(), PgError> {
        self.step(5, 50, 500, |w, i| match w.nodes[i].pg.running {
            Some(_) => Ok(()),
            None => Err(failed("CHECKPOINT", "connection refused")),
        })
        .await
    }

    async fn shutdown_checkpoint(&self) -> Result<Lsn, PgError> {
        self.step(5, 20, 20, |w, i| {
            w.nodes[i]
                .pg
                .clean_checkpoint
                .map(Lsn)
                .ok_or_else(|| PgError::Refused("postgres did not shut down cleanly".into()))
        })
        .await
    }

    async fn member_replay_lsn(
        &self,
        host: &str,
        port: u16,
        _timeout: Duration,
    ) -> Result<Option<Lsn>, PgError> {
        let host = host.to_string();
        self.step(1, 5, 5, move |w, i| {
            let src = Self::reachable(w, i, &host, port).ok_or_else(|| unreachable(&host, port))?;
            Ok(w.nodes[src].pg.data.as_ref().map(|d| Lsn(d.lsn)))
        })
        .await
    }

    async fn member_wal_position(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Option<Lsn>, PgError> {
        let host = host.to_string();
        let hung = {
            let w = self.world.lock();
            Self::reachable(&w, self.node, &host, port).is_some_and(|t| w.nodes[t].pg.hung)
        };
        if hung {
            tokio::time::sleep(timeout).await;
            return Err(PgError::Timeout {
                what: format!("WAL position of {host}:{port}"),
                after: timeout,
            });
        }
        self.step(1, 5, 5, move |w, i| {
            let src = Self::reachable(w, i, &host, port).ok_or_else(|| unreachable(&host, port))?;
            let pg = &w.nodes[src].pg;
            if pg.running.is_none() {
                return Err(failed("connect", "connection refused or starting up"));
            }
            Ok(pg.data.as_ref().map(|d| Lsn(d.lsn)))
        })
        .await
    }

    fn rewind_incomplete(&self) -> bool {
        self.world.lock().nodes[self.node].pg.rewind_incomplete
    }
    fn promotion_pending(&self, _pg: &baton_core::ha::PgStatus) -> bool {
        self.world.lock().nodes[self.node].pg.promote_at.is_some()
    }
    async fn order_fence(&self, order: FenceOrder) -> Result<(), PgError> {
        self.world.gate(self.node, self.epoch).await;
        let mut w = self.world.lock();
        let fence = &mut w.nodes[self.node].fence;
        match order {
            FenceOrder::Arm { deadline } => {
                fence.get_or_insert_with(SimFence::default).deadline = Some(deadline.into());
            }
            // Starts one if none runs, as the real link does.
            FenceOrder::Keep => {
                fence.get_or_insert_with(SimFence::default);
            }
            FenceOrder::Disarm => *fence = Some(SimFence::default()),
            FenceOrder::Exit => *fence = None,
        }
        Ok(())
    }
    fn reconfigured(&self, _cfg: PgConfig, _name: String) -> Result<SimPg, PgError> {
        Ok(SimPg {
            world: self.world.clone(),
            node: self.node,
            epoch: self.epoch,
        })
    }
}
