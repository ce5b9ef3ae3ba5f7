//! The publisher for the side-by-side fan-out measurement against
//! Mosquitto (the broker itself is the kit's, on a free port).

use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};

use crate::stats::now_us;

/// Publishes `messages` readings to `topic` at QoS 0, in the same JSON as the
/// hub's SSE data, each carrying its send time. `batch` messages are sent
/// back to back, like one device frame; `rate` limits frames per second.
pub async fn publish(
    port: u16,
    topic: &str,
    messages: u64,
    batch: u64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let mut options = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut events) = AsyncClient::new(options, 1024);
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    let mut frame = 0u64;
    while sent < messages {
        if let Some(rate) = rate {
            tokio::time::sleep_until(started + Duration::from_secs_f64(frame as f64 / rate)).await;
        }
        let now = now_us();
        for _ in 0..batch.min(messages - sent) {
            let payload = format!(
                "{{\"device\":\"probe-1\",\"metric\":\"latency\",\"unit\":\"us\",\"ts_ms\":{},\"value\":{now:?}}}",
                (now / 1_000.0) as u64
            );
            client
                .publish(topic, QoS::AtMostOnce, false, payload)
                .await?;
            sent += 1;
        }
        frame += 1;
    }
    // Let the event loop flush what is queued before disconnecting.
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(30), driver).await;
    Ok(())
}

/// Publishes `payload` `messages` times at QoS 1 with at most `inflight`
/// unacknowledged, as the hub's bridge does, and returns the seconds until
/// the broker acknowledged the last one.
pub async fn publish_acked(
    port: u16,
    topic: &str,
    payload: Vec<u8>,
    messages: u64,
    inflight: u16,
) -> anyhow::Result<f64> {
    let mut options = MqttOptions::new("bench-acked", "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(60))
        .set_inflight(inflight)
        .set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(options, usize::from(inflight) * 2);
    let started = tokio::time::Instant::now();
    let topic = topic.to_owned();
    let publisher = tokio::spawn(async move {
        for _ in 0..messages {
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < messages {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = events.poll().await? {
            acked += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let client = publisher.await??;
    let _ = client.disconnect().await;
    Ok(elapsed)
}
