//! Throw-away local Baton clusters: a real etcd, real `baton agent`
//! processes and real PostgreSQL on free loopback ports, for `baton demo`,
//! the integration tests and the benches. The product binary does not link
//! this crate; `baton demo` runs the `baton-demo` binary built from it.
//!
//! Module map: `local` (LocalEtcd, LocalCluster, ports, polling), `workload`
//! (a write loop that records every acknowledged write), `demo` (the demo
//! and its scenarios).

pub mod demo;
pub mod local;
pub mod workload;
