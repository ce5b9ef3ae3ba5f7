//! The device library's outbox on disk, from outside: a device process
//! (the library's `sequence` example, which prints each number once `send`
//! has returned) killed with SIGKILL mid-stream and started again on the
//! same outbox, with the hub up and with the hub down meanwhile: the hub
//! ends up holding every reading the device had stored, each once. And an
//! outbox that fills drops its oldest readings and counts them.

use std::collections::BTreeMap;
use std::process::Stdio;

use e2e::{PATIENCE, TestHub};
use protocol::MetricDescriptor;
use telemetry_device::{Credential, Device, Durability, Options, Storage};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// A running `sequence` device and what it has printed so far.
struct Sequence {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    last: u64,
}

impl Sequence {
    fn start(
        hub: &str,
        token: &str,
        outbox: &std::path::Path,
        range: (u64, u64),
        durability: &str,
    ) -> Sequence {
        let mut child = Command::new(testkit::binary("device-sequence"))
            .args([
                "--hub",
                &format!("ws://{hub}"),
                "--id",
                "counter-1",
                "--token",
                token,
            ])
            .arg("--outbox")
            .arg(outbox)
            .args(["--from", &range.0.to_string(), "--to", &range.1.to_string()])
            .args(["--every-us", "200", "--durability", durability])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the sequence example runs");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Sequence {
            child,
            lines,
            last: 0,
        }
    }

    /// Reads what it printed until it has stored `n` (or printed `done`,
    /// for `None`).
    async fn until(&mut self, n: Option<u64>) {
        timeout(PATIENCE * 2, async {
            while let Some(line) = self.lines.next_line().await.expect("its stdout") {
                if line == "done" {
                    assert!(n.is_none(), "done before {n:?}");
                    return;
                }
                self.last = line.parse().expect("a number per line");
                if Some(self.last) == n {
                    return;
                }
            }
            panic!("the device ended at {} without done", self.last);
        })
        .await
        .unwrap_or_else(|_| panic!("stuck at {} waiting for {n:?}", self.last));
    }

    /// SIGKILL; returns the last number it had printed (stored) by then.
    async fn kill(mut self) -> u64 {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("it exits");
        // What it printed before dying is still in the pipe.
        while let Ok(Some(line)) = self.lines.next_line().await {
            if let Ok(n) = line.parse() {
                self.last = n;
            }
        }
        self.last
    }
}

/// How many times the hub holds each number counter-1 sent.
async fn stored(hub: &TestHub) -> BTreeMap<u64, u32> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT CAST(value AS INTEGER), COUNT(*) FROM readings WHERE device = 'counter-1' GROUP BY 1",
    )
    .fetch_all(&hub.db().await.unwrap())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(n, count)| (n as u64, count as u32))
        .collect()
}

/// Every number of the first run up to some `end` at least `printed`, and
/// every number of the second, each exactly once, and nothing else.
fn exactly_once(stored: &BTreeMap<u64, u32>, printed: u64, second: (u64, u64)) {
    let twice: Vec<_> = stored.iter().filter(|(_, c)| **c != 1).take(10).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}…");
    let end = stored.range(..second.0).next_back().map_or(0, |(n, _)| *n);
    assert!(
        end >= printed,
        "the first run stored up to {printed}, the hub holds up to {end}"
    );
    let missing = |range: std::ops::RangeInclusive<u64>| -> Vec<u64> {
        range.filter(|n| !stored.contains_key(n)).take(10).collect()
    };
    assert_eq!(
        missing(1..=end),
        [0; 0],
        "missing from the first run (the first ten)"
    );
    assert_eq!(
        missing(second.0..=second.1),
        [0; 0],
        "missing from the second run"
    );
    assert_eq!(
        stored.len() as u64,
        end + second.1 + 1 - second.0,
        "numbers no run sent"
    );
}

#[tokio::test]
async fn a_device_killed_mid_stream_sends_what_it_had_stored_exactly_once() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("counter-1").await.unwrap();
    let outbox = tempfile::tempdir().unwrap();

    let mut device = Sequence::start(&hub.addr, &token, outbox.path(), (1, 20_000), "power-cut");
    device.until(Some(8_000)).await;
    let printed = device.kill().await;
    assert!(printed < 20_000, "killed mid-stream, at {printed}");

    let second = (100_001, 110_000);
    let mut device = Sequence::start(&hub.addr, &token, outbox.path(), second, "power-cut");
    device.until(None).await;
    exactly_once(&stored(&hub).await, printed, second);
}

#[tokio::test]
async fn a_device_restarted_while_the_hub_is_down_delivers_everything_when_it_returns() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("counter-1").await.unwrap();
    let listen = hub.addr.clone();
    let outbox = tempfile::tempdir().unwrap();

    let mut device = Sequence::start(&listen, &token, outbox.path(), (1, 20_000), "process");
    device.until(Some(4_000)).await;
    let before = stored(&hub).await.len() as u64;
    let dir = hub.kill().await.unwrap();
    // Sampling goes on into the outbox while the hub is gone.
    device.until(Some(10_000)).await;
    let printed = device.kill().await;

    // Started again, still without a hub: it stores its new readings too.
    let second = (100_001, 105_000);
    let mut device = Sequence::start(&listen, &token, outbox.path(), second, "process");
    device.until(Some(second.1)).await;
    let hub = TestHub::start_in(dir, &listen, &[]).await.unwrap();
    device.until(None).await;

    let stored = stored(&hub).await;
    exactly_once(&stored, printed, second);
    assert!(
        before + 5_000 < printed,
        "the outbox carried readings the hub never had: {before} stored before, {printed} printed"
    );
}

#[tokio::test]
async fn a_full_outbox_drops_its_oldest_readings_and_counts_them() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("counter-1").await.unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let options = || {
        let mut options = Options::new(
            "counter-1",
            format!("ws://{}/v1/ws", hub.addr),
            Credential::Token(token.clone()),
        );
        options.metrics = vec![MetricDescriptor {
            id: 1,
            name: "n".into(),
            unit: String::new(),
        }];
        options.batch = 50;
        options.storage = Storage::Disk {
            dir: outbox.path().to_owned(),
            max_bytes: telemetry_device::journal::MIN_BYTES,
            durability: Durability::Process,
        };
        options
    };

    // Not polled: offline, as far as the outbox knows.
    let mut device = Device::open(options()).unwrap();
    let sent = 10_000;
    for n in 1..=sent {
        device
            .send(1, n as f64, telemetry_device::now_ms())
            .unwrap();
    }
    device.seal().unwrap();
    let dropped = device.dropped();
    assert!(dropped > 0, "10,000 readings do not fit in 64 KiB");
    assert!(device.outbox_bytes() <= telemetry_device::journal::MIN_BYTES);
    assert_eq!(device.unacknowledged() as u64 + dropped, sent);
    assert_eq!(
        device.send(2, 0.0, 0).unwrap_err().to_string(),
        "metric 2 is not one of the device's metrics"
    );

    // What is left is on disk: opened again, it is all there.
    let kept = device.unacknowledged();
    drop(device);
    let mut device = Device::open(options()).unwrap();
    assert_eq!(device.unacknowledged(), kept);
    timeout(PATIENCE, async {
        while device.unacknowledged() > 0 {
            device.poll().await.unwrap();
        }
    })
    .await
    .expect("delivered");

    let stored = stored(&hub).await;
    assert!(stored.values().all(|count| *count == 1));
    // The oldest went: what is stored is the newest, without a gap.
    assert_eq!(stored.keys().next(), Some(&(dropped + 1)));
    assert_eq!(stored.keys().next_back(), Some(&sent));
    assert_eq!(stored.len() as u64, sent - dropped, "a gap");
    assert!(std::fs::read_dir(outbox.path()).unwrap().count() <= 2);
}
