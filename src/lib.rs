//! Baton: high availability for PostgreSQL, with consensus in etcd.
//!
//! Module map: `config` (node file + dynamic config), `dcs` (etcd layout),
//! `pg` (the local instance), `ha` (the pure decide function), `agent` (the
//! loop that observes, decides and acts), `api` (REST), `status` (cluster
//! state for `baton list`), `local` (throw-away local clusters for the demo
//! and tests), `demo`.

pub mod agent;
pub mod api;
pub mod config;
pub mod dcs;
pub mod demo;
pub mod ha;
pub mod local;
pub mod lsn;
pub mod pg;
pub mod status;
pub mod tls;
pub mod workload;
