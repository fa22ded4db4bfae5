//! Issue 14: the `/ui` dashboard of a live 3-node cluster, in a real
//! headless browser (Debian's chromium, driven by chromedriver over
//! WebDriver). With authentication configured, a switchover clicked without
//! credentials is refused and the refusal is shown; with them, the new
//! leader and the event appear. Screenshots of each step go under
//! target/ui-screenshots/ for humans.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_local::local::{free_port, ClusterOptions};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

const AUTH: &str = "[api.authentication]\nusername = \"admin\"\npassword = \"s3cret\"\n";

/// chromedriver and the chromium it starts, in a process group of their
/// own, ended together (by that group's id) when the test ends.
struct Browser {
    driver: Child,
    client: Option<Client>,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting chromedriver (scripts/test installs chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        wait_for(
            "chromedriver answering",
            Duration::from_secs(20),
            || async {
                http_status(reqwest::Method::GET, &format!("{url}/status"))
                    .await
                    .map(|_| ())
            },
        )
        .await;
        let profile = tempfile::tempdir().expect("chromium profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": [
                    "--headless=new",
                    // CI runs as root, where chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session with headless chromium");
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser {
            driver,
            client: Some(client),
            shots,
            _profile: profile,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("browser session")
    }

    async fn shot(&self, name: &str) {
        let png = self.c().screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("writing screenshot");
    }

    async fn text(&self, css: &str) -> Result<String, String> {
        let e = self
            .c()
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("{css}: {e}"))?;
        e.text().await.map_err(|e| format!("{css}: {e}"))
    }

    async fn click(&self, css: &str) {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    /// The member names of the table's rows, and the one shown as leader.
    async fn rows(&self) -> Result<(Vec<String>, Option<String>), String> {
        let rows = self
            .c()
            .find_all(Locator::Css("#members tbody tr"))
            .await
            .map_err(|e| e.to_string())?;
        let (mut names, mut leader) = (vec![], None);
        for r in rows {
            let name = r
                .attr("data-member")
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            if r.attr("data-role")
                .await
                .map_err(|e| e.to_string())?
                .as_deref()
                == Some("leader")
            {
                leader = Some(name.clone());
            }
            names.push(name);
        }
        Ok((names, leader))
    }

    /// Clicks switchover, checks the confirmation names the candidate, confirms.
    async fn switchover_to(&self, candidate: &str, shot: &str) {
        self.c()
            .find(Locator::Css("#candidate"))
            .await
            .expect("candidate select")
            .select_by_value(candidate)
            .await
            .expect("choosing the candidate");
        self.click("#switchover").await;
        let asked = wait_for(
            "the confirmation dialog",
            Duration::from_secs(5),
            || async {
                let t = self.text("#confirm-text").await?;
                if t.is_empty() {
                    Err("not shown".into())
                } else {
                    Ok(t)
                }
            },
        )
        .await;
        assert!(asked.contains(candidate), "the dialog asks {asked:?}");
        self.shot(shot).await;
        self.click("#confirm-yes").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group holds chromedriver and every chromium process it began.
        let pgid = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_switches_over_with_credentials_only() {
    let opts = ClusterOptions {
        extra_toml: AUTH.into(),
        ..ClusterOptions::default()
    };
    let t = TestCluster::led_by_node1("ui", opts, &[]).await;
    let b = Browser::start().await;
    b.c()
        .goto(&t.c.nodes[0].api_url("/ui"))
        .await
        .expect("opening /ui");

    wait_for(
        "Normal and three members on the page",
        Duration::from_secs(30),
        || async {
            let state = b.text("#state").await?;
            let (names, leader) = b.rows().await?;
            if state == "Normal" && names.len() == 3 && leader.as_deref() == Some("node1") {
                Ok(())
            } else {
                Err(format!(
                    "state {state:?}, rows {names:?}, leader {leader:?}"
                ))
            }
        },
    )
    .await;
    let (names, _) = b.rows().await.unwrap();
    assert_eq!(names, ["node1", "node2", "node3"]);
    b.shot("1-normal").await;

    // Without credentials: refused, the page says so, nothing moved.
    b.switchover_to("node2", "2-confirm").await;
    let refusal = wait_for(
        "the refusal on the page",
        Duration::from_secs(10),
        || async {
            let r = b.text("#result").await?;
            if r.starts_with("refused") {
                Ok(r)
            } else {
                Err(r)
            }
        },
    )
    .await;
    assert!(
        refusal.contains("401") && refusal.contains("unauthorized"),
        "{refusal}"
    );
    b.shot("3-refused").await;
    let v = t.c.view().await.unwrap();
    assert_eq!(
        v.leader_name(),
        Some("node1"),
        "a refused switchover moved the leader"
    );
    assert!(
        v.failover.is_none(),
        "a refused switchover left a request: {:?}",
        v.failover
    );

    // With credentials, a refusal on the merits shows the API's reason and
    // its code: no failover while the leader is healthy.
    b.type_into("#user", "admin").await;
    b.type_into("#pass", "s3cret").await;
    b.c()
        .find(Locator::Css("#candidate"))
        .await
        .expect("candidate select")
        .select_by_value("node3")
        .await
        .expect("choosing node3");
    b.click("#failover").await;
    b.click("#confirm-yes").await;
    let refusal = wait_for("the failover refusal", Duration::from_secs(10), || async {
        let r = b.text("#result").await?;
        if r.starts_with("refused (412") {
            Ok(r)
        } else {
            Err(r)
        }
    })
    .await;
    assert!(
        refusal.contains("leader_healthy") && refusal.contains("use switchover"),
        "{refusal}"
    );
    b.shot("3b-failover-refused").await;

    // With credentials: done, the new leader and the switchover's events shown.
    b.switchover_to("node2", "4-confirm-with-credentials").await;
    wait_for(
        "node2 leading on the page, with the switchover in the events",
        Duration::from_secs(30),
        || async {
            let result = b.text("#result").await?;
            let (_, leader) = b.rows().await?;
            let events = b
                .c()
                .find_all(Locator::Css(
                    "#events tbody tr[data-code=\"switching_over\"]",
                ))
                .await
                .map_err(|e| e.to_string())?
                .len();
            if result.contains("Successfully switched over to node2")
                && leader.as_deref() == Some("node2")
                && events > 0
            {
                Ok(())
            } else {
                Err(format!(
                    "result {result:?}, leader {leader:?}, {events} switching_over events"
                ))
            }
        },
    )
    .await;
    assert_eq!(t.c.view().await.unwrap().leader_name(), Some("node2"));
    // Settled: Normal again, each replica's lag shown in bytes and seconds.
    wait_for(
        "Normal under node2, replica lag in bytes and seconds",
        Duration::from_secs(30),
        || async {
            let state = b.text("#state").await?;
            let lags = b
                .c()
                .find_all(Locator::Css("#members tbody tr[data-role=\"replica\"] td.lag, #members tbody tr[data-role=\"sync_standby\"] td.lag"))
                .await
                .map_err(|e| e.to_string())?;
            let mut texts = vec![];
            for l in lags {
                texts.push(l.text().await.map_err(|e| e.to_string())?);
            }
            let both = texts.len() == 2 && texts.iter().all(|t| t.contains(" B · ") && t.ends_with(" s"));
            if state == "Normal" && both {
                Ok(())
            } else {
                Err(format!("state {state:?}, replica lag {texts:?}"))
            }
        },
    )
    .await;
    b.shot("5-switched-over").await;

    // The same page at a phone's width, for the humans reading screenshots.
    b.c()
        .set_window_size(390, 844)
        .await
        .expect("phone-sized window");
    b.shot("6-phone").await;
    b.c()
        .set_window_size(1280, 1100)
        .await
        .expect("desktop-sized window");

    // The router serves the page too, its calls handed to the agents: the
    // cluster as the agents see it, and an action (pause, then resume)
    // that needs the same credentials.
    let router = t.c.start_router("router", "", "").unwrap();
    b.c()
        .goto(&format!("http://127.0.0.1:{}/ui", router.api_port))
        .await
        .expect("opening the router's /ui");
    wait_for(
        "the router's page: Normal under node2, three members",
        Duration::from_secs(20),
        || async {
            let state = b.text("#state").await?;
            let (names, leader) = b.rows().await?;
            if state == "Normal" && names.len() == 3 && leader.as_deref() == Some("node2") {
                Ok(())
            } else {
                Err(format!(
                    "state {state:?}, rows {names:?}, leader {leader:?}"
                ))
            }
        },
    )
    .await;
    b.type_into("#user", "admin").await;
    b.type_into("#pass", "s3cret").await;
    for (want, button) in [(true, "Pause"), (false, "Resume")] {
        wait_for(
            &format!("the {button} button"),
            Duration::from_secs(10),
            || async {
                let t = b.text("#pause").await?;
                if t == button {
                    Ok(())
                } else {
                    Err(t)
                }
            },
        )
        .await;
        b.click("#pause").await;
        b.click("#confirm-yes").await;
        wait_for(
            &format!("paused = {want} in etcd and on the router's page"),
            Duration::from_secs(10),
            || async {
                let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
                let shown = b
                    .c()
                    .find(Locator::Css("#paused"))
                    .await
                    .map_err(|e| e.to_string())?
                    .attr("hidden")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_none();
                if v.paused() == want && shown == want {
                    Ok(())
                } else {
                    Err(format!("etcd paused {}, page shows {shown}", v.paused()))
                }
            },
        )
        .await;
        if want {
            b.shot("7-router-paused").await;
        }
    }
}
