//! The command line's answers to people: help, and bad input that names the
//! flag or argument at fault.

use std::process::{Command, Output};

fn hub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hub"))
        .args(args)
        .output()
        .expect("run hub")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_describes_the_commands_and_flags() {
    let out = hub(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serve") && text.contains("device"), "{text}");

    let out = hub(&["serve", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--db",
        "--log",
        "--provision-key",
        "--hello-timeout",
        "--retention",
        "[env: HUB_DB=",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }
}

#[test]
fn a_bad_flag_value_names_the_flag() {
    for (flag, value) in [
        ("--hello-timeout", "10x"),
        ("--retention", "soon"),
        ("--rollup-retention", "forever"),
        ("--compact-after", "soon"),
        ("--compact-after", "12"),
        ("--log", "hub=loud"),
        ("--mqtt-url", "http://broker"),
        ("--mqtt-url", "ws://broker"),
        ("--mqtt-prefix", "a/+/b"),
        ("--mqtt-prefix", "a//b"),
        ("--mqtt-qos", "2"),
        ("--mqtt-discovery", "zigbee"),
        ("--mqtt-ingest", "sensors/{device}"),
        ("--mqtt-ingest", "sensors/#"),
        ("--nats-url", "http://nats:4222"),
        ("--nats-url", "nats://a:4222,localhost"),
        // A token the hub_token cookie could not carry whole.
        ("--monitor-token", "secret;part"),
        ("--monitor-token", "two words"),
        ("--monitor-token", "quote\"d"),
        ("--monitor-token", "tab\tbed"),
        ("--allowed-host", "hub.example:8080"),
        ("--allowed-host", "a b"),
        ("--max-connections", "0"),
    ] {
        let out = hub(&[
            "serve",
            flag,
            value,
            "--db",
            "/nonexistent/never-created.db",
        ]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
    }
}

#[test]
fn an_ingest_template_inside_the_bridges_own_topics_is_refused() {
    let out = hub(&[
        "serve",
        "--mqtt-url",
        "mqtt://127.0.0.1:1",
        "--mqtt-ingest",
        "telemetry/{device}/{metric}",
        "--db",
        "/nonexistent/never-created.db",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains("--mqtt-ingest") && text.contains("--mqtt-prefix"),
        "{text}"
    );
}

#[test]
fn cluster_flags_are_checked_before_the_hub_starts() {
    let nats = ["--nats-url", "nats://127.0.0.1:1"];
    for (flag, value) in [
        ("--nats-stream", "tele.metry"),
        ("--nats-stream", ""),
        ("--hub-id", "hub one"),
        ("--nats-replicas", "0"),
        ("--nats-replicas", "7"),
        ("--nats-max-age", "a while"),
    ] {
        let mut args = vec![
            "serve",
            flag,
            value,
            "--db",
            "/nonexistent/never-created.db",
        ];
        args.extend(nats);
        let out = hub(&args);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
    }
    // Cluster flags mean nothing without the cluster.
    let out = hub(&[
        "serve",
        "--hub-id",
        "a",
        "--db",
        "/nonexistent/never-created.db",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--nats-url"), "{}", stderr(&out));
    // Readings from MQTT carry no sequence to keep them once across hubs.
    let mut args = vec![
        "serve",
        "--mqtt-url",
        "mqtt://127.0.0.1:1",
        "--mqtt-ingest",
        "sensors/{device}/{metric}",
        "--db",
        "/nonexistent/never-created.db",
    ];
    args.extend(nats);
    let out = hub(&args);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains("--mqtt-ingest") && text.contains("--nats-url"),
        "{text}"
    );
}

#[test]
fn a_bad_device_id_for_the_cluster_is_refused_before_anything_is_sent() {
    // Nothing listens on port 1: the id is refused before any connection.
    for command in ["add", "revoke"] {
        let out = hub(&["device", command, "a b", "--nats-url", "nats://127.0.0.1:1"]);
        assert!(!out.status.success(), "{command}");
        let text = stderr(&out);
        assert!(
            text.contains("not a device id") && !text.contains("cannot reach"),
            "{command}: {text}"
        );
    }
}

#[test]
fn broker_certificate_flags_are_checked_before_the_hub_starts() {
    let out = hub(&[
        "serve",
        "--mqtt-url",
        "mqtts://127.0.0.1:1",
        "--mqtt-ca-cert",
        "/nonexistent/ca.pem",
        "--db",
        "/nonexistent/never-created.db",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--mqtt-ca-cert /nonexistent/ca.pem"),
        "{}",
        stderr(&out)
    );

    let out = hub(&[
        "serve",
        "--mqtt-url",
        "mqtt://127.0.0.1:1",
        "--mqtt-ca-cert",
        "/tmp/ca.pem",
        "--db",
        "/nonexistent/never-created.db",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("mqtts://"), "{}", stderr(&out));
}

#[test]
fn hour_buckets_are_kept_at_least_as_long_as_minute_buckets() {
    for args in [
        &[
            "--rollup-retention",
            "30d",
            "--rollup-retention-hours",
            "7d",
        ][..],
        &["--rollup-retention-hours", "7d"][..],
    ] {
        let mut argv = vec!["serve", "--db", "/nonexistent/never-created.db"];
        argv.extend_from_slice(args);
        let out = hub(&argv);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("--rollup-retention-hours"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn demo_flags_are_checked_like_serves() {
    for (flag, value) in [
        ("--devices", "0"),
        ("--devices", "many"),
        ("--backfill", "soon"),
        ("--retention", "soon"),
    ] {
        let out = hub(&["demo", flag, value, "--db", "/nonexistent/never-created.db"]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
    }
}

#[test]
fn an_unopenable_database_names_the_file() {
    let out = hub(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        "/nonexistent/dir/x.db",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/dir/x.db"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn devices_are_added_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let db = db.to_str().unwrap();

    let out = hub(&[
        "device",
        "add",
        "sensor-1",
        "--name",
        "Boiler room",
        "--db",
        db,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().len(), 64, "the token alone on stdout");

    let again = hub(&["device", "add", "sensor-1", "--db", db]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists"));

    let bad = hub(&["device", "add", "bad id", "--db", db]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("device id"));

    // A device that lost its token is given a new one.
    let out = hub(&["device", "token", "sensor-1", "--db", db]);
    assert!(out.status.success(), "{}", stderr(&out));
    let renewed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(renewed.trim().len(), 64, "the token alone on stdout");
    assert_ne!(renewed, token);
    let unknown = hub(&["device", "token", "nobody", "--db", db]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("nobody"), "{}", stderr(&unknown));

    let out = hub(&["device", "revoke", "sensor-1", "--db", db]);
    assert!(out.status.success());
    let missing = hub(&["device", "revoke", "nobody", "--db", db]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("nobody"));

    let out = hub(&["device", "list", "--json", "--db", db]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], "sensor-1");
    assert_eq!(list[0]["name"], "Boiler room");
    assert!(list[0]["revoked_ms"].is_i64());
}

#[test]
fn a_listing_piped_into_a_reader_that_stops_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let db = db.to_str().unwrap();
    for i in 0..3 {
        let id = format!("sensor-{i}");
        assert!(hub(&["device", "add", &id, "--db", db]).status.success());
    }
    // `hub device list | head -0`: the reading end is closed before the
    // listing is written.
    for json in [true, false] {
        let mut args = vec!["device", "list", "--db", db];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

#[test]
fn bad_tls_files_are_refused_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let db = db.to_str().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let out = hub(&[
        "serve",
        "--db",
        db,
        "--tls-cert",
        missing,
        "--tls-key",
        missing,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--tls-cert"), "{}", stderr(&out));

    // One without the other is a usage error naming the missing flag.
    let out = hub(&["serve", "--db", db, "--tls-cert", missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--tls-key"), "{}", stderr(&out));
}
