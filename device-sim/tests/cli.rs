//! The simulator's command line: bad input names the flag, and the exit
//! code tells whether `--count` was delivered.

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .args(args)
        .output()
        .expect("run device-sim")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    for (args, flag) in [
        (&["--provision-key", "k", "--rate", "-1"][..], "--rate"),
        (&["--provision-key", "k", "--rate", "0"], "--rate"),
        (
            &["--provision-key", "k", "--metrics", "temperature,colour"],
            "--metrics",
        ),
        (&["--provision-key", "k", "--batch", "0"], "--batch"),
        (&["--provision-key", "k", "--batch", "5000"], "--batch"),
        (&["--provision-key", "k", "--flush", "soon"], "--flush"),
        (
            &["--provision-key", "k", "--backfill", "yesterday"],
            "--backfill",
        ),
        (
            &["--provision-key", "k", "--clock-skew", "-x"],
            "--clock-skew",
        ),
        (&["--token", "t", "--devices", "3"], "--token"),
        // Issued tokens come only with the key.
        (&["--token", "t", "--token-file", "x"], "--provision-key"),
        // A folder is no token file.
        (
            &["--provision-key", "k", "--token-file", "/"],
            "--token-file",
        ),
        (
            &["--provision-key", "k", "--id", "a", "--devices", "2"],
            "--id",
        ),
        (&[][..], "--token"),
        (
            &["--provision-key", "k", "--hub", "http://hub:8080"],
            "--hub",
        ),
        (
            &["--provision-key", "k", "--hub", "ws://a:8080,http://b:8080"],
            "--hub",
        ),
        (
            &["--provision-key", "k", "--ca-cert", "ca.pem"],
            "--ca-cert",
        ),
        (
            &[
                "--provision-key",
                "k",
                "--hub",
                "wss://hub",
                "--ca-cert",
                "/nonexistent/ca.pem",
            ],
            "--ca-cert",
        ),
        (
            &[
                "--hub",
                "wss://hub",
                "--id",
                "d",
                "--client-cert",
                "/nonexistent/d.pem",
                "--client-key",
                "/nonexistent/d.key",
            ],
            "--client-cert",
        ),
        (
            &[
                "--hub",
                "wss://hub",
                "--devices",
                "2",
                "--client-ca-cert",
                "/nonexistent/ca.pem",
                "--client-ca-key",
                "/nonexistent/ca.key",
            ],
            "--client-ca-cert",
        ),
        (
            &["--hub", "wss://hub", "--id", "d", "--client-cert", "d.pem"],
            "--client-key",
        ),
        (
            &[
                "--id",
                "d",
                "--client-cert",
                "d.pem",
                "--client-key",
                "d.key",
            ],
            "--hub",
        ),
    ] {
        let out = sim(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(flag), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn an_undelivered_count_exits_non_zero_with_a_summary() {
    // Nothing listens on port 1 of loopback: the readings cannot be delivered.
    let out = sim(&[
        "--hub",
        "ws://127.0.0.1:1",
        "--provision-key",
        "k",
        "--count",
        "3",
        "--rate",
        "50",
        "--duration",
        "300ms",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["acked"], 0);
    assert_eq!(summary["delivered_devices"], 0);
    assert!(
        summary["last_error"].as_str().unwrap().contains("sim-1"),
        "{summary}"
    );
}

#[test]
fn a_token_file_that_holds_something_else_is_refused_naming_the_flag_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "sim-1 0123\nlonely\n").unwrap();
    let out = sim(&[
        "--provision-key",
        "k",
        "--token-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--token-file") && err.contains("line 2"),
        "{err}"
    );
}
