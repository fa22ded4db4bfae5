//! Once the faults stop, the cluster converges: `baton list` would say
//! Normal (the real status code over the simulated etcd), the leader runs
//! as primary and every other member streams from it.

use baton_core::status::{ClusterState, ClusterStatus};

use crate::world::{Mode, World};

pub fn check(w: &World) -> Result<(), String> {
    let view = w.etcd.view();
    let l = w.leader().ok_or("no leader")?;
    if w.nodes[l].pg.running != Some(Mode::Primary) {
        return Err(format!("leader {} not running as primary", w.nodes[l].name));
    }
    for (i, n) in w.nodes.iter().enumerate() {
        if i != l && w.streaming_from(i) != Some(l) {
            return Err(format!(
                "{} not streaming from {}: {:?} {:?}; leader's {:?}; history key {:?}; members {:?}",
                n.name, w.nodes[l].name, n.pg.running, n.pg.data, w.nodes[l].pg.data, view.history, view.members.values().map(|m| (m.timeline, m.xlog_location)).collect::<Vec<_>>()
            ));
        }
    }
    let status = ClusterStatus::from_view("sim", &view, u64::MAX);
    if status.state != ClusterState::Normal {
        return Err(format!("cluster {:?}: {}", status.state, status.render()));
    }
    Ok(())
}
