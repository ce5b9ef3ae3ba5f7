//! `hub demo`, the README's run command: the hub with a simulated fleet in
//! one process, history backfilled, and Ctrl-C stopping both cleanly; and
//! the hub's logs, plain text wherever they are not read on a terminal.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn hub_demo_serves_a_backfilled_fleet_and_stops_at_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let mut child = Command::new(e2e::hub_binary())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--devices",
            "3",
        ])
        .args(["--backfill", "10m", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let addr = testkit::hub::listening_addr(&first).unwrap().to_owned();
    let second = lines.next_line().await.unwrap().unwrap();
    assert!(
        second.starts_with(&format!("monitor: http://{addr}/")),
        "{second}"
    );

    // Every device online, with ten minutes of every metric behind it.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = testkit::http::get(&addr, "/v1/devices", &[]).await.unwrap();
        let devices: serde_json::Value = serde_json::from_str(&body).unwrap();
        let online = devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["online"] == true)
            .count();
        let minutes: i64 = sqlx::query_scalar("SELECT count(*) FROM readings_1m")
            .fetch_one(&pool)
            .await
            .unwrap();
        // 3 devices × 5 metrics × at least 10 minutes.
        if online == 3 && minutes >= 3 * 5 * 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{online} online, {minutes} minute buckets"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It comes with alert rules, for the misbehaving device to break.
    let (_, body) = testkit::http::get(&addr, "/v1/alert-rules", &[])
        .await
        .unwrap();
    let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["offline", "quiet", "temperature-band"]);

    // Ctrl-C: the devices deliver what they sampled, then the hub stops.
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the demo stopped")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// What the hub writes in its first three seconds of `serve`, with
/// `NO_COLOR` set or not, through a terminal (`script` gives it one) or not.
async fn first_logs(terminal: bool, no_color: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let serve = format!(
        "timeout -s INT 3 {} serve --listen 127.0.0.1:0 --db {}",
        e2e::hub_binary().display(),
        dir.path().join("hub.db").display()
    );
    let mut command = if terminal {
        let mut script = Command::new("script");
        script.args(["-q", "-e", "-c", &serve, "/dev/null"]);
        script
    } else {
        let mut shell = Command::new("sh");
        shell.args(["-c", &format!("{serve} 2>&1")]);
        shell
    };
    if no_color {
        command.env("NO_COLOR", "1");
    } else {
        command.env_remove("NO_COLOR");
    }
    let out = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("listening"), "{text}");
    text
}

#[tokio::test]
async fn logs_carry_colour_only_on_a_terminal_and_never_with_no_color() {
    let (to_file, on_terminal, no_color) = tokio::join!(
        first_logs(false, false),
        first_logs(true, false),
        first_logs(true, true)
    );
    assert!(!to_file.contains('\x1b'), "{to_file:?}");
    assert!(on_terminal.contains("\x1b["), "{on_terminal:?}");
    assert!(!no_color.contains('\x1b'), "{no_color:?}");
}
