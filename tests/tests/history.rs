//! History that lasts: devices backfilled two hours into the past fill
//! their one-minute and one-hour roll-ups, `step` queries over the API agree
//! with SQL over the raw rows, raw retention leaves the roll-ups whole, and
//! a late reading lands in its old bucket.

use std::time::Duration;

use device_sim::sensors::SensorKind;
use e2e::fleets::backfill;
use e2e::{TestHub, batch};
use sqlx::SqlitePool;

/// Samples per device: one a second for two hours.
const SAMPLES: u64 = 7_200;

/// Two devices with temperature and humidity, backfilled two hours.
async fn backfill_two_hours(hub: &TestHub) {
    let kinds = vec![SensorKind::Temperature, SensorKind::Humidity];
    backfill(hub, kinds, SAMPLES, 100).await;
}

/// `(device, metric, bucket start, n, mean, min, max)` rows.
type Buckets = Vec<(
    String,
    String,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
)>;

async fn buckets(db: &SqlitePool, sql: &str) -> Buckets {
    // Test SQL, written here.
    sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(db)
        .await
        .unwrap()
}

/// The same buckets computed from the raw readings.
async fn from_raw(db: &SqlitePool, step_ms: i64) -> Buckets {
    buckets(
        db,
        &format!(
            "SELECT device, metric, ts_ms - ts_ms % {step_ms} AS b, count(*), avg(value), min(value), max(value)
             FROM readings GROUP BY device, metric, b ORDER BY device, metric, b"
        ),
    )
    .await
}

/// Three hours ago, in ms since the Unix epoch: before every backfilled
/// reading.
fn three_hours_ago() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.as_millis()).unwrap() - 3 * 3_600_000
}

/// The API's buckets of every metric of sim-1 and sim-2, as rows.
async fn from_api(hub: &TestHub, step: &str) -> Buckets {
    let mut rows = Vec::new();
    let from = three_hours_ago();
    for device in ["sim-1", "sim-2"] {
        let (status, body) = hub
            .get(&format!(
                "/v1/readings?device={device}&from={from}&step={step}"
            ))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        for bucket in body["buckets"].as_array().unwrap() {
            rows.push((
                device.to_owned(),
                bucket["metric"].as_str().unwrap().to_owned(),
                bucket["ts_ms"].as_i64().unwrap(),
                bucket["n"].as_i64().unwrap(),
                bucket["mean"].as_f64(),
                bucket["min"].as_f64(),
                bucket["max"].as_f64(),
            ));
        }
    }
    rows
}

/// Buckets equal but for the last bits of a mean (summed in another order).
fn assert_same(got: &Buckets, want: &Buckets, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: bucket counts");
    for (got, want) in got.iter().zip(want) {
        assert_eq!(
            (&got.0, &got.1, got.2, got.3),
            (&want.0, &want.1, want.2, want.3),
            "{what}"
        );
        assert_eq!((got.5, got.6), (want.5, want.6), "{what}: min and max");
        let (Some(a), Some(b)) = (got.4, want.4) else {
            panic!("{what}: a mean is missing: {got:?} {want:?}");
        };
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{what}: mean {a} against {b}"
        );
    }
}

#[tokio::test]
async fn backfilled_history_rolls_up_and_step_queries_agree_with_the_raw_rows() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    backfill_two_hours(&hub).await;
    let db = hub.db().await.unwrap();

    // 120 (±1: the hour rarely starts on a minute) minute buckets per
    // metric, holding every reading.
    let per_metric: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT device, metric, count(*), sum(n) FROM readings_1m GROUP BY device, metric ORDER BY device, metric",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(per_metric.len(), 4, "{per_metric:?}");
    for (device, metric, count, n) in &per_metric {
        assert!(
            (120..=121).contains(count),
            "{device} {metric}: {count} buckets"
        );
        assert_eq!(*n, SAMPLES as i64, "{device} {metric}");
    }

    // Over the API: minutes and hours from the roll-ups, 10 s from the raw
    // rows, each as SQL over the raw rows says.
    for (step, step_ms) in [
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("10s", 10_000),
        ("15m", 900_000),
    ] {
        assert_same(
            &from_api(&hub, step).await,
            &from_raw(&db, step_ms).await,
            step,
        );
    }
    let (_, csv) = hub
        .get(&format!(
            "/v1/readings?device=sim-1&metric=temperature&from={}&step=1h&format=csv",
            three_hours_ago()
        ))
        .await
        .unwrap();
    assert!(
        csv.starts_with("metric,unit,ts_ms,n,mean,min,max\ntemperature,°C,"),
        "{csv}"
    );

    // Raw retention of 30 minutes leaves the roll-ups whole.
    let minutes_before = buckets(
        &db,
        "SELECT device, metric, ts_ms, n, mean, min, max FROM readings_1m ORDER BY 1, 2, 3",
    )
    .await;
    let listen = hub.addr.clone();
    let (_, dir) = hub.terminate().await.unwrap();
    let hub = TestHub::start_in(
        dir,
        &listen,
        &[
            "--provision-key",
            "k",
            "--retention",
            "30m",
            "--retention-sweep",
            "1s",
        ],
    )
    .await
    .unwrap();
    let db = hub.db().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM samples")
            .fetch_one(&db)
            .await
            .unwrap();
        if raw <= 4 * 31 * 60 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention left {raw} readings"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let minutes_after = buckets(
        &db,
        "SELECT device, metric, ts_ms, n, mean, min, max FROM readings_1m ORDER BY 1, 2, 3",
    )
    .await;
    assert_eq!(
        minutes_after, minutes_before,
        "retention deletes raw rows only"
    );
    let (_, body) = hub
        .get(&format!(
            "/v1/readings?device=sim-1&metric=humidity&from={}&step=1h",
            three_hours_ago()
        ))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let n: i64 = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["n"].as_i64().unwrap())
        .sum();
    assert_eq!(n, SAMPLES as i64, "hours still count every reading: {body}");

    // Minute buckets kept an hour: the older ones go, the hours stay.
    let (_, dir) = hub.terminate().await.unwrap();
    let hub = TestHub::start_in(
        dir,
        &listen,
        &["--rollup-retention", "1h", "--retention-sweep", "1s"],
    )
    .await
    .unwrap();
    let db = hub.db().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let oldest: i64 = sqlx::query_scalar("SELECT min(ts_ms) FROM readings_1m")
            .fetch_one(&db)
            .await
            .unwrap();
        if oldest >= three_hours_ago() + 2 * 3_600_000 - 120_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "minute buckets from {oldest} remain"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let minutes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM readings_1m WHERE metric = 'humidity' AND device = 'sim-1'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        (59..=62).contains(&minutes),
        "an hour of minute buckets: {minutes}"
    );
    let hours: i64 = sqlx::query_scalar(
        "SELECT sum(n) FROM readings_1h WHERE metric = 'humidity' AND device = 'sim-1'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(hours, SAMPLES as i64, "hour buckets are kept");
}

#[tokio::test]
async fn a_late_reading_lands_in_its_old_bucket() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    // Readings at 600..603 s, then one at 601.5 s arriving later.
    device.send_acked(&batch(1, 600_000, 3)).await.unwrap();
    device.send_acked(&batch(2, 3_600_000, 1)).await.unwrap();
    device.send_acked(&batch(3, 601_500, 1)).await.unwrap();
    let db = hub.db().await.unwrap();
    let minute: (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT n, min, max FROM readings_1m WHERE device = 'dev-1' AND ts_ms = 600000",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(minute, (4, Some(1_000.0), Some(3_000.0)));
}

#[tokio::test]
async fn compacted_readings_read_back_the_same_through_every_reader() {
    let hub = TestHub::start(&["--provision-key", "k", "--compact-after", "0s"])
        .await
        .unwrap();
    // Two devices with all five sensors, backfilled 10,200 s: 102,000
    // readings, a full slab of positions and some.
    let seconds = 10_200;
    backfill(&hub, SensorKind::ALL.to_vec(), seconds, 500).await;
    let db = hub.db().await.unwrap();
    let total = 2 * 5 * i64::try_from(seconds).unwrap();

    // The hub compacts the first slab.
    hub.until_compacted(100_000).await.unwrap();
    // The devices' statuses hold positions too, among the readings.
    let (in_slab, events, head): (i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(pos <= 100000), 0), count(*),
                (SELECT seq FROM sqlite_sequence WHERE name = 'samples') FROM events",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let compacted = 100_000 - in_slab;
    let (hot, blocks, in_blocks): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM samples), count(*), sum(n) FROM sample_blocks",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((hot, in_blocks), (total - compacted, compacted));
    assert_eq!(blocks, 10, "one block per metric of the slab");

    // The view holds every reading once, and with the events every
    // position.
    let (n, distinct, lo): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT pos), min(pos) FROM readings")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((n, distinct), (total, total));
    assert!(lo >= 1);
    assert_eq!(
        n + events,
        head,
        "every position is a reading's or an event's"
    );

    // A live subscriber resuming inside the compacted slab gets exactly the
    // rest, in order, across into the readings not compacted.
    let rest: Vec<i64> =
        sqlx::query_scalar("SELECT pos FROM readings WHERE pos > 60000 ORDER BY pos")
            .fetch_all(&db)
            .await
            .unwrap();
    let mut sse = e2e::SseClient::connect(&hub.addr, "/v1/events", &[("Last-Event-ID", "60000")])
        .await
        .unwrap();
    for want in rest {
        let event = sse.next_of("reading").await.unwrap();
        assert_eq!(event.pos(), want);
    }

    // The API by time equals SQL over the view.
    let want: Vec<(i64, i64, Option<f64>)> = sqlx::query_as(
        "SELECT pos, ts_ms, value FROM readings WHERE device = 'sim-1' AND metric = 'pressure'
         ORDER BY ts_ms, pos",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut path = "/v1/readings?device=sim-1&metric=pressure&limit=2000".to_owned();
    loop {
        let (status, body) = hub.get(&path).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        for row in body["readings"].as_array().unwrap() {
            got.push((
                row["pos"].as_i64().unwrap(),
                row["ts_ms"].as_i64().unwrap(),
                row["value"].as_f64(),
            ));
        }
        match body["next"].as_str() {
            Some(next) => {
                path =
                    format!("/v1/readings?device=sim-1&metric=pressure&limit=2000&cursor={next}");
            }
            None => break,
        }
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the API's pages differ from the view");

    // Raw buckets from blocks and rows agree with SQL over the view.
    assert_same(
        &from_api(&hub, "10s").await,
        &from_raw(&db, 10_000).await,
        "10s",
    );
}
