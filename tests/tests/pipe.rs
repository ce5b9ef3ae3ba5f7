//! `device-sim pipe` as a script's user runs it: lines in, readings on the
//! hub; bad lines reported with their number and skipped; the end of input
//! waits for the last acknowledgement; run again (a cron job), its
//! readings are new ones, not taken for resends of the last run's.

use std::process::Stdio;

use e2e::TestHub;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs the pipe with `args`, `input` on its standard input: whether it
/// exited 0, its stdout and its stderr.
async fn pipe(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(testkit::binary("device-sim-under-test"))
        .arg("pipe")
        .args(args)
        .env_remove("SIM_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(e2e::PATIENCE, child.wait_with_output())
        .await
        .expect("the pipe ends after its input")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_pipe_sends_good_lines_skips_bad_ones_by_number_and_waits_for_its_acks() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("boiler-3").await.unwrap();
    let url = format!("ws://{}", hub.addr);
    let outbox = tempfile::tempdir().unwrap();
    let outbox_dir = outbox.path().to_str().unwrap();
    let device = [
        "--hub",
        &url,
        "--id",
        "boiler-3",
        "--token",
        &token,
        "--metric",
        "temperature:°C",
        "--metric",
        "humidity:%",
    ];
    let input = "# boiler-3, every minute\n\
                 temperature 21.5\n\
                 temperature,21.5\n\
                 humidity 40 % 1765119600\n\
                 \n\
                 pressure 1013\n\
                 temperature warm\n\
                 temperature 22.25 °C 2026-12-07T15:00:00Z\n";
    let mut args = device.to_vec();
    args.extend(["--outbox", outbox_dir, "--durability", "process"]);
    let (code, stdout, stderr) = pipe(&args, input).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "8 lines: 3 readings, 3 bad lines skipped, 0 dropped (outbox full), 0 not acknowledged"
        ),
        "{stdout}"
    );
    for expected in [
        "line 3: not CSV or JSON",
        "line 6: unknown metric \"pressure\" (--metric gives temperature, humidity)",
        "line 7: the value \"warm\" is not a number",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in {stderr}");
    }

    let db = hub.db().await.unwrap();
    let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(
        "SELECT metric, unit, ts_ms, value FROM readings WHERE device = 'boiler-3' ORDER BY pos",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].3), ("temperature", 21.5));
    assert_eq!(
        rows[1],
        ("humidity".into(), "%".into(), 1_765_119_600_000, 40.0)
    );
    assert_eq!(
        rows[2],
        ("temperature".into(), "°C".into(), 1_796_655_600_000, 22.25)
    );

    // Again, as a cron job would, with its outbox in memory this time: a
    // new outbox numbers its batches on after the hub's, so nothing is
    // taken for a resend and dropped.
    let (code, stdout, _) = pipe(&device, "temperature 23\ntemperature 24\n").await;
    assert_eq!(code, Some(0), "{stdout}");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings WHERE device = 'boiler-3'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count, 5);
}

#[tokio::test]
async fn bad_pipe_flags_are_refused_naming_them() {
    for (args, named) in [
        (vec!["--id", "b", "--token", "t"], "--metric"),
        (
            vec!["--id", "b", "--token", "t", "--metric", "a b"],
            "--metric",
        ),
        (vec!["--id", "b c", "--token", "t", "--metric", "a"], "--id"),
        (
            vec![
                "--id",
                "b",
                "--token",
                "t",
                "--metric",
                "a",
                "--outbox",
                "/tmp/x",
                "--outbox-max",
                "1KiB",
            ],
            "--outbox-max",
        ),
        (vec!["--id", "b", "--metric", "a"], "--token"),
    ] {
        let (code, stdout, stderr) = pipe(&args, "").await;
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}
