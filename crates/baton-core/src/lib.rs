//! Baton's core: the HA protocol and the model it decides on, with no I/O.
//!
//! The agent observes (etcd, postgres, peers), calls [`ha::decide`] with
//! what it saw and the time, and acts on the returned actions; everything
//! here is a pure function of its arguments. The compiler guards that: this
//! crate depends on no async runtime, no etcd, postgres or HTTP client, and
//! CI fails if one creeps in (`scripts/check-core-deps`).
//!
//! Module map: `lsn` (WAL positions), `cluster` (the etcd view: leader key,
//! lease, members, status, failover, history), `instance` (data directory
//! and running-server facts, and their parsers), `config` (dynamic config,
//! tags), `ha` (the decide function, its observation, actions and reasons),
//! `status` (Normal / Degraded / Unavailable for `baton list`), `route`
//! (where `baton router` sends writers and readers), `gauss` (openGauss's
//! `gs_ctl query` and `gs_om` words), `gtm` (OpenTenBase's `gtm_ctl status`), `event` (a member's event log entry).

pub mod cluster;
pub mod config;
pub mod event;
pub mod gauss;
pub mod gtm;
pub mod ha;
pub mod instance;
pub mod lsn;
pub mod route;
pub mod status;
