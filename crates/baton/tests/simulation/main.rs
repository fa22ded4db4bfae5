//! Deterministic simulation of the **real agent**: three `baton::agent::Agent`
//! loops, their lease renewal, fencing deadline, jobs and back-off, over an
//! in-memory etcd with leases (`store.rs`), simulated postgres instances
//! (`instance.rs`) and peers answering with the real `/patroni` body
//! (`peers.rs`), on tokio's paused clock (`driver.rs`). Faults: kills of
//! nodes, agents and postgres; etcd links that hang, refuse or lose
//! answers; isolated nodes; etcd outages; hung postgres; slow steps.
//!
//! Invariants, one per file under `invariants/`: never two members that
//! may accept writes; no member streams WAL off the leader's history; the
//! cluster converges to Normal once the faults stop.
//!
//! Replay one seed: `BATON_SIM_SEED=1234 cargo test -p baton --test simulation`
//! (add `BATON_SIM_TRACE=1` for the agents' own log on virtual time);
//! a longer hunt: `BATON_SIM_SEEDS=100000 cargo test --release -p baton --test simulation`.

mod driver;
mod instance;
mod invariants;
mod peers;
mod scale;
mod store;
mod world;

use driver::{Faults, Plan};

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("BATON_SIM_SEED") {
        return vec![s.parse().expect("BATON_SIM_SEED is a number")];
    }
    let n = std::env::var("BATON_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

/// The agents' log lines carry virtual milliseconds since the seed began.
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let ms = driver::START.with(|s| {
            s.get()
                .map(|t| tokio::time::Instant::now().duration_since(t).as_millis())
                .unwrap_or(0)
        });
        write!(w, "{ms:>7} ms")
    }
}

fn trace() {
    if std::env::var_os("BATON_SIM_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_timer(VirtualTime)
            .with_test_writer()
            .try_init();
    }
}

fn report(test: &str, seed: u64, f: &driver::Failure) -> String {
    let tail: Vec<&String> = f.log.iter().rev().take(40).collect();
    format!(
        "seed {seed}: {}\nreplay: BATON_SIM_SEED={seed} BATON_SIM_TRACE=1 cargo test -p baton --test simulation -- {test} --exact --nocapture\nlast events (newest first):\n{tail:#?}",
        f.what
    )
}

/// Runs `seeds` (independent: a runtime each) on every core, each under
/// every fault with `plan(seed)`; the failures, by seed. `BATON_SIM_ALL=1`
/// runs on past a failure and lists them all.
fn run_seeds(seeds: &[u64], plan: impl Fn(u64) -> Plan + Sync) -> Vec<(u64, driver::Failure)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all = std::env::var_os("BATON_SIM_ALL").is_some();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut failed: Vec<(u64, driver::Failure)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, plan) = (&stop, &plan);
                s.spawn(move || {
                    trace();
                    let mut failed = vec![];
                    for &seed in seeds.iter().skip(t).step_by(threads) {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        if let Err(f) = driver::run(seed, Faults::all(), plan(seed)) {
                            stop.store(!all, std::sync::atomic::Ordering::Relaxed);
                            failed.push((seed, f));
                        }
                    }
                    failed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a seed thread panicked"))
            .collect()
    });
    failed.sort_by_key(|(seed, _)| *seed);
    failed
}

const PLAN: Plan = Plan {
    fault_secs: 120,
    calm_secs: 120,
    sync: baton_core::config::SyncMode::Off,
};

/// CI runs 2,000 seeds of every fault.
#[test]
fn real_agents_stay_safe_and_converge_under_faults() {
    trace();
    let started = std::time::Instant::now();
    let seeds = seeds(2000);
    let failed = run_seeds(&seeds, |_| PLAN);
    verdict(
        "real_agents_stay_safe_and_converge_under_faults",
        "seeds",
        &seeds,
        &failed,
        started,
    );
}

/// Fails the test with the first failing seed's report, or prints the
/// RESULT line (`label=<seeds>`).
fn verdict(
    test: &str,
    label: &str,
    seeds: &[u64],
    failed: &[(u64, driver::Failure)],
    started: std::time::Instant,
) {
    for (seed, f) in failed {
        eprintln!("seed {seed}: {}", f.what);
    }
    if let Some((seed, f)) = failed.first() {
        panic!(
            "{} failing seed(s); the first:\n{}",
            failed.len(),
            report(test, *seed, f)
        );
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "RESULT {label}={} seconds={secs:.1} seeds_per_s={:.1} violations=0",
        seeds.len(),
        seeds.len() as f64 / secs
    );
}

/// Even seeds run `synchronous_mode: on`, odd ones `quorum`.
fn sync_plan(seed: u64) -> Plan {
    use baton_core::config::SyncMode;
    Plan {
        sync: if seed % 2 == 0 {
            SyncMode::On
        } else {
            SyncMode::Quorum
        },
        ..PLAN
    }
}

/// Synchronous mode under every fault, seeds alternating `on` and
/// `quorum`: besides the safety invariants, no acknowledged commit is ever
/// missing from a primary, and the `sync` key never promises an election
/// that could miss one (`invariants::acknowledged`). CI runs 300 seeds;
/// `BATON_SIM_SYNC_SEEDS=100000` for the long hunt.
#[test]
fn in_synchronous_mode_no_acknowledged_commit_is_lost() {
    trace();
    let started = std::time::Instant::now();
    let n: u64 = std::env::var("BATON_SIM_SYNC_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seeds: Vec<u64> = match std::env::var("BATON_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("BATON_SIM_SEED is a number")],
        Err(_) => (1..=n).collect(),
    };
    let failed = run_seeds(&seeds, sync_plan);
    verdict(
        "in_synchronous_mode_no_acknowledged_commit_is_lost",
        "sync_seeds",
        &seeds,
        &failed,
        started,
    );
}

/// Seeds that once found a bug in the agent, beyond the first 2,000 that
/// CI runs anyway: each stays fixed.
/// - 19568: a primary's slow start was disarmed by a tick that could not
///   read etcd, and landed after the leader key had expired.
/// - 23006: a primary's slow start went on after the key expired (its
///   agent stalled meanwhile) and came up beside the new leader.
/// - 6028: an agent killed after signalling a promotion; its successor,
///   not yet knowing the key, disarmed the fence and the promotion landed.
/// - 23651, 26402: a bootstrap whose agent stalled past its lease went on
///   to start the primary without the key.
const REGRESSIONS: &[u64] = &[19568, 23006, 6028, 23651, 26402];

/// The same, in synchronous mode (`sync_plan`):
/// - 11: the first leader fenced before its first tick wrote the `sync`
///   key; with no key nobody was eligible, for good.
/// - 1991: a quorum election compared a voter's position from its last
///   tick (its postgres had hung since), and the candidate lacked the
///   commit that voter had acknowledged.
const SYNC_REGRESSIONS: &[u64] = &[11, 1991];

#[test]
fn seeds_that_once_found_bugs_stay_fixed() {
    trace();
    let runs = REGRESSIONS
        .iter()
        .map(|s| (*s, PLAN))
        .chain(SYNC_REGRESSIONS.iter().map(|s| (*s, sync_plan(*s))));
    for (seed, plan) in runs {
        if let Err(f) = driver::run(seed, Faults::all(), plan) {
            panic!(
                "{}",
                report("seeds_that_once_found_bugs_stay_fixed", seed, &f)
            );
        }
    }
}

/// The simulator's teeth for rule 8: with the fence processes switched
/// off, the stalled and killed agents of the main run do leave a writable
/// primary beside a new leader, so the main run's 0 violations come from
/// the fence process, not from faults too mild to matter.
#[test]
fn without_the_fence_process_a_stalled_or_killed_agent_leaves_a_writable_primary() {
    trace();
    let faults = Faults {
        fence_processes_off: true,
        ..Faults::all()
    };
    let found = seeds(200).into_iter().find_map(|seed| {
        driver::run(seed, faults, PLAN)
            .err()
            .filter(|f| f.what.contains("may accept writes"))
            .map(|f| (seed, f))
    });
    let (seed, f) = found.expect(
        "no stalled or killed agent left a writable primary even without fence processes: \
         the stall and agent-kill faults no longer test rule 8",
    );
    eprintln!("without fence processes, seed {seed}: {}", f.what);
}

/// The process-death fast path is exercised, not only allowed: node kills
/// (agent and postgres gone, network up) of the leader make the others
/// remove its key in some of these seeds, and the main run's invariants
/// (plus the removal's own check that no primary ran) hold over them.
#[test]
fn killed_leaders_keys_are_removed_by_the_fast_path() {
    trace();
    let before = store::FAST_PATH_REMOVALS.with(|c| c.get());
    for seed in 1..=40 {
        if let Err(f) = driver::run(seed, Faults::all(), PLAN) {
            panic!(
                "{}",
                report("killed_leaders_keys_are_removed_by_the_fast_path", seed, &f)
            );
        }
    }
    let removed = store::FAST_PATH_REMOVALS.with(|c| c.get()) - before;
    assert!(
        removed > 0,
        "40 seeds of node kills and not one leader key removed by the fast path"
    );
    eprintln!("RESULT fast_path_removals={removed} seeds=40");
}

/// Steady replicas decide on the watch's copy of etcd (`ha::steady`), and
/// stale copies are handed to them (the stale-watch fault, a node's etcd
/// link down): the main run's invariants hold with both in play.
#[test]
fn steady_replicas_decide_on_the_watch_copy_stale_ones_included() {
    trace();
    let (offered, used) = (
        store::STALE_COPIES_OFFERED.with(|c| c.get()),
        store::COPIES_USED.with(|c| c.get()),
    );
    for seed in 1..=40 {
        if let Err(f) = driver::run(seed, Faults::all(), PLAN) {
            panic!(
                "{}",
                report(
                    "steady_replicas_decide_on_the_watch_copy_stale_ones_included",
                    seed,
                    &f
                )
            );
        }
    }
    let offered = store::STALE_COPIES_OFFERED.with(|c| c.get()) - offered;
    let used = store::COPIES_USED.with(|c| c.get()) - used;
    assert!(used > 0, "40 seeds and no tick decided on the watch's copy");
    assert!(offered > 0, "40 seeds and no stale copy handed to an agent");
    eprintln!("RESULT watch_copies_used={used} stale_copies_offered={offered} seeds=40");
}

/// The simulator's teeth for the fast path: a probe that takes a refused
/// REST port alone for a dead leader (its agent killed, its postgres still
/// running) removes the key of a live primary.
#[test]
fn a_fast_path_on_the_rest_port_alone_removes_a_live_primarys_key() {
    trace();
    let faults = Faults {
        probe_ignores_postgres: true,
        ..Faults::all()
    };
    let found = (1..=200).find_map(|seed| {
        driver::run(seed, faults, PLAN)
            .err()
            .filter(|f| f.what.contains("whose postgres runs as primary"))
            .map(|f| (seed, f))
    });
    let (seed, f) = found.expect(
        "trusting the REST port alone never removed a live primary's key: \
         the agent-kill fault no longer tests the fast path's rule",
    );
    eprintln!("REST port alone, seed {seed}: {}", f.what);
}

#[test]
fn wal_prefix_rule_of_the_simulator() {
    use world::Wal;
    let old = Wal {
        timeline: 1,
        lsn: 500,
        history: vec![],
        ids: vec![(1, 1)],
    };
    let new = Wal {
        timeline: 2,
        lsn: 900,
        history: vec![(1, 400)],
        ids: vec![(1, 1), (2, 2)],
    };
    assert!(!old.is_prefix_of(&new), "diverged WAL must not stream");
    let behind = Wal {
        timeline: 1,
        lsn: 300,
        history: vec![],
        ids: vec![(1, 1)],
    };
    assert!(behind.is_prefix_of(&new));
    assert!(!new.is_prefix_of(&old));
    let other_past = Wal {
        timeline: 2,
        lsn: 100,
        history: vec![(1, 350)],
        ids: vec![(1, 1), (2, 3)],
    };
    assert!(
        !other_past.is_prefix_of(&new),
        "same timeline number, other past"
    );
    let twin = Wal {
        history: vec![(1, 400)],
        ..other_past
    };
    assert!(
        !twin.is_prefix_of(&new),
        "same timeline number from the same point, another promotion"
    );
}
