//! The member's event log: the last [`CAPACITY`] decisions whose reason
//! changed and every job started, finished or failed, kept in memory and
//! served by `GET /events` (`baton events` merges every member's).

use std::collections::VecDeque;
use std::sync::Mutex;

use baton_core::event::Event;

/// Enough for several failovers' worth of decisions; a few hundred KB.
pub const CAPACITY: usize = 1000;

pub struct EventLog {
    member: String,
    inner: Mutex<(u64, VecDeque<Event>)>,
}

impl EventLog {
    pub fn new(member: String) -> EventLog {
        EventLog {
            member,
            inner: Mutex::new((0, VecDeque::new())),
        }
    }

    pub fn push(&self, kind: &str, code: &str, detail: impl Into<String>) {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut g = self.inner.lock().expect("event log lock");
        g.0 += 1;
        let e = Event {
            seq: g.0,
            at,
            member: self.member.clone(),
            kind: kind.into(),
            code: code.into(),
            detail: detail.into(),
        };
        if g.1.len() == CAPACITY {
            g.1.pop_front();
        }
        g.1.push_back(e);
    }

    /// The entries after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<Event> {
        let g = self.inner.lock().expect("event log lock");
        g.1.iter().filter(|e| e.seq > seq).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_entries_in_order() {
        let log = EventLog::new("n1".into());
        for i in 0..CAPACITY + 5 {
            log.push("decision", "leader", format!("tick {i}"));
        }
        let all = log.after(0);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 6);
        assert_eq!(all.last().unwrap().detail, format!("tick {}", CAPACITY + 4));
        assert_eq!(log.after(CAPACITY as u64 + 3).len(), 2);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}
