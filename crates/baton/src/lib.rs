//! Baton's I/O layer: everything that talks to etcd, postgres, peers and
//! operators. The protocol itself is the pure `baton-core` crate.
//!
//! Module map: `config` (the node file), `dcs` (the etcd client, Patroni's
//! layout), `pg` (control of the local instance), `agent` (the loop that
//! observes, calls `baton_core::ha::decide` and acts), `api` (REST),
//! `router` (`baton router`: clients to the primary or a replica), `hooks`
//! (callbacks and routing statements on role changes),
//! `tls` (the HTTP client for peers and operators, the TLS listener).

pub mod agent;
pub mod api;
pub mod config;
pub mod dcs;
pub mod hooks;
pub mod pg;
pub mod router;
pub mod tls;
