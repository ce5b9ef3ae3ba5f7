//! Receivers for fan-out: SSE subscribers of the hub and MQTT subscribers of
//! Mosquitto. Both count the readings they receive and sample end-to-end
//! latency from the value (the sender's clock in microseconds).

use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::now_us;

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Received {
    pub count: u64,
    pub latency_us: Vec<f64>,
    /// When the last expected event arrived (µs since the epoch).
    pub done_at_us: f64,
}

/// The number after `"value":` in a JSON reading.
fn value_of(json: &[u8]) -> Option<f64> {
    let key = b"\"value\":";
    let at = json.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &json[at..];
    let end = rest.iter().position(|&b| b == b'}' || b == b',')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Subscribes to the hub's `/v1/events?<query>`, reads until `expected`
/// readings arrived, and keeps every `stride`-th latency. The subscription
/// is open when `ready` is sent.
pub async fn sse(
    addr: String,
    query: String,
    expected: u64,
    stride: u64,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Received> {
    let mut stream = TcpStream::connect(&addr).await?;
    stream
        .write_all(format!("GET /v1/events?{query} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut body: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = Received::default();
    let mut head_done = false;
    while received.count < expected {
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
            .await
            .context("no events for 60 s")??;
        anyhow::ensure!(n > 0, "stream ended after {} events", received.count);
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            anyhow::ensure!(
                raw.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&raw[..end])
            );
            raw.drain(..end + 4);
            head_done = true;
            let _ = ready.send(()).await;
        }
        dechunk(&mut raw, &mut body)?;
        let mut consumed = 0;
        while let Some(end) = body[consumed..].windows(2).position(|w| w == b"\n\n") {
            let event = &body[consumed..consumed + end];
            consumed += end + 2;
            if event.starts_with(b"id: ") {
                received.count += 1;
                if received.count % stride == 0
                    && let Some(sent) = value_of(event)
                {
                    received.latency_us.push(now_us() - sent);
                }
            }
        }
        body.drain(..consumed);
    }
    received.done_at_us = now_us();
    Ok(received)
}

/// Moves complete HTTP chunks from `raw` into `body`.
fn dechunk(raw: &mut Vec<u8>, body: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut at = 0;
    while let Some(line) = raw[at..].windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&raw[at..at + line])?.trim(), 16)?;
        let start = at + line + 2;
        if raw.len() < start + size + 2 {
            break;
        }
        body.extend_from_slice(&raw[start..start + size]);
        at = start + size + 2;
    }
    raw.drain(..at);
    Ok(())
}

/// Subscribes to `topic` on the broker at `port`, reads until `expected`
/// messages arrived, keeping every `stride`-th latency.
pub async fn mqtt(
    port: u16,
    id: String,
    topic: String,
    expected: u64,
    stride: u64,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Received> {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut events) = AsyncClient::new(options, 16);
    client.subscribe(&topic, QoS::AtMostOnce).await?;
    let mut received = Received::default();
    while received.count < expected {
        let event = tokio::time::timeout(Duration::from_secs(60), events.poll())
            .await
            .context("no MQTT messages for 60 s")??;
        match event {
            Event::Incoming(Packet::SubAck(_)) => {
                let _ = ready.send(()).await;
            }
            Event::Incoming(Packet::Publish(publish)) => {
                received.count += 1;
                if received.count % stride == 0
                    && let Some(sent) = value_of(&publish.payload)
                {
                    received.latency_us.push(now_us() - sent);
                }
            }
            _ => {}
        }
    }
    received.done_at_us = now_us();
    let _ = client.disconnect().await;
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_read_from_a_reading() {
        let data = br#"id: 3\nevent: reading\ndata: {"device":"d","metric":"m","unit":"","ts_ms":1,"value":1795852306386123.0}"#;
        assert_eq!(value_of(data), Some(1_795_852_306_386_123.0));
    }

    #[test]
    fn chunks_are_joined_across_reads() {
        let mut raw = b"5\r\nhello\r\n6\r\n wor".to_vec();
        let mut body = Vec::new();
        dechunk(&mut raw, &mut body).unwrap();
        assert_eq!(body, b"hello");
        raw.extend_from_slice(b"ld!\r\n");
        dechunk(&mut raw, &mut body).unwrap();
        assert_eq!(body, b"hello world!");
        assert!(raw.is_empty());
    }
}
