//! OpenTenBase's GTM (global transaction manager) as `gtm_ctl status`
//! shows it. The GTM is no PostgreSQL server: no SQL, no pg_control, a
//! working directory with `gtm.conf` and `gtm.pid`. What the HA loop needs
//! of it (running, active or standby, how far its xlog got, which standbys
//! follow it) comes from this output, parsed to the format of OpenTenBase's
//! `src/gtm/gtm_ctl/gtm_ctl.c` (`do_status`), not to a stand-in's.

use crate::lsn::Lsn;

/// One `gtm_ctl status -Z gtm -P <port> [-H <host>] [-D <dir>]` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtmStatus {
    /// `current node [primary]` (the active GTM), not `[standby]`.
    pub primary: bool,
    /// The global timestamp it last issued (or, a standby, received).
    pub gts: u64,
    /// Its xlog position: written (active) or received (standby).
    pub xlog: Lsn,
    /// The standbys an active GTM reports.
    pub standbys: Vec<GtmStandby>,
}

/// `[standby/sync] host[<application name>] gts [<gts>] xlog[<position>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtmStandby {
    pub name: String,
    pub sync: bool,
    pub xlog: Lsn,
}

/// The text between `open` and the next `]` after it.
fn bracketed<'a>(line: &'a str, open: &str) -> Option<&'a str> {
    let start = line.find(open)? + open.len();
    let rest = &line[start..];
    Some(rest[..rest.find(']')?].trim())
}

/// Parses `gtm_ctl status`; `None` unless it says the server runs and
/// could give its timestamp (the tool then prints "server is running ...
/// but can not get timestamp", or "no server running" on stderr).
pub fn parse_status(text: &str) -> Option<GtmStatus> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|l| l.starts_with("gtm_ctl: server is running") && !l.contains("can not"))?;
    let node = lines.find(|l| l.starts_with("current node"))?;
    let primary = match bracketed(node, "current node [")? {
        "primary" => true,
        "standby" => false,
        _ => return None,
    };
    let gts = bracketed(node, "gts[")?.parse().ok()?;
    let xlog = bracketed(node, "xlog [")?.parse().ok()?;
    let standbys = lines
        .filter(|l| l.starts_with("[standby/"))
        .filter_map(|l| {
            Some(GtmStandby {
                sync: bracketed(l, "[standby/")? == "sync",
                name: bracketed(l, "host[")?.to_string(),
                xlog: bracketed(l, "xlog[")?.parse().ok()?,
            })
        })
        .collect();
    Some(GtmStatus {
        primary,
        gts,
        xlog,
        standbys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_active_gtm_and_its_standbys() {
        // do_status with -D: the PID line, the node line, a line per
        // standby, then the options the server was started with.
        let text = "gtm_ctl: server is running (PID: 4242)\n\
                    current node [primary] gts[760381234567] xlog [0/3A0001F8]\n\
                    [standby/sync] host[gtm_slave] gts [760381234560] xlog[0/3A0001C0]\n\
                    [standby/async] host[gtm_s2] gts [760381234500] xlog[0/39000000]\n\
                    \"-D\" \"/data/gtm\"";
        let s = parse_status(text).unwrap();
        assert!(s.primary);
        assert_eq!(s.gts, 760381234567);
        assert_eq!(s.xlog, "0/3A0001F8".parse().unwrap());
        assert_eq!(
            s.standbys,
            vec![
                GtmStandby {
                    name: "gtm_slave".into(),
                    sync: true,
                    xlog: "0/3A0001C0".parse().unwrap()
                },
                GtmStandby {
                    name: "gtm_s2".into(),
                    sync: false,
                    xlog: "0/39000000".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn reads_a_standby_asked_over_the_network() {
        // Without -D: no PID.
        let s = parse_status(
            "gtm_ctl: server is running\ncurrent node [standby] gts[12] xlog [1/FF]\n",
        )
        .unwrap();
        assert!(!s.primary);
        assert_eq!(s.xlog, Lsn((1 << 32) | 0xFF));
        assert!(s.standbys.is_empty());
    }

    #[test]
    fn a_gtm_that_cannot_give_a_timestamp_is_not_running_for_us() {
        for text in [
            "gtm_ctl: server is running (PID: 7) but can not get timestamp, please check gtm status!\n\"-D\" \"/d\"",
            "gtm_ctl: Can not get timestamp, please check gtm status!\n",
            "",
            "gtm_ctl: server is running (PID: 7)\ncurrent node [confused] gts[1] xlog [0/1]\n",
        ] {
            assert_eq!(parse_status(text), None, "{text}");
        }
    }
}
