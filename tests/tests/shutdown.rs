//! SIGTERM with batches in flight: the hub commits and acknowledges what it
//! read, closes with 1001 and exits 0; nothing acknowledged is lost.

use std::collections::BTreeSet;

use e2e::{TestHub, batch};

const READINGS_PER_BATCH: u32 = 100;

#[tokio::test]
async fn graceful_shutdown_loses_nothing_that_was_acknowledged() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();

    // Stream without waiting for acks, then stop the hub mid-stream.
    for seq in 1..=300 {
        device
            .send(&batch(seq, 0, READINGS_PER_BATCH))
            .await
            .unwrap();
    }
    let stopping = tokio::spawn(hub.terminate());
    let (closed, acks) = device.until_closed().await.unwrap();
    let (status, dir) = stopping.await.unwrap().unwrap();
    assert!(status.success(), "hub exited with {status}");
    assert_eq!(closed.close_code, Some(1001), "closed as going away");
    assert!(!acks.is_empty());

    // Every acknowledged batch is stored whole; nothing stored went unacknowledged.
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();
    let db = hub.db().await.unwrap();
    let per_seq: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT CAST(value AS INTEGER) / 1000 AS seq, count(*) FROM readings GROUP BY seq ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let stored: BTreeSet<u64> = per_seq.iter().map(|&(seq, _)| seq as u64).collect();
    let acked: BTreeSet<u64> = acks.iter().copied().collect();
    assert_eq!(
        stored, acked,
        "stored batches and acknowledged batches differ"
    );
    assert!(
        per_seq
            .iter()
            .all(|&(_, n)| n == i64::from(READINGS_PER_BATCH)),
        "a batch was stored in part"
    );

    // After the restart the device learns where to resume.
    let mut device = hub.connect(&token).await.unwrap();
    let welcome = device.hello("dev-1").await.unwrap();
    assert_eq!(Some(&welcome.last_seq), acked.last());
}
