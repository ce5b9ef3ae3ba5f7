//! Receivers for fan-out: SSE subscribers of the hub and MQTT subscribers of
//! Mosquitto. Both count the readings they receive and sample end-to-end
//! latency from the value (the sender's clock in microseconds).

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::{latency_histogram, now_us, record_since};

impl Default for Received {
    fn default() -> Self {
        Received {
            count: 0,
            latency_us: latency_histogram(),
            done_at_us: 0.0,
        }
    }
}

/// What one subscriber saw.
#[derive(Debug)]
pub struct Received {
    pub count: u64,
    pub latency_us: Histogram<u64>,
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

/// Whether an SSE block is a reading (`id: …` then `event: reading`):
/// devices' statuses have ids too, and are not what is counted.
fn is_reading(event: &[u8]) -> bool {
    event.starts_with(b"id: ")
        && event
            .iter()
            .position(|&b| b == b'\n')
            .is_some_and(|end| event[end + 1..].starts_with(b"event: reading\n"))
}

/// Subscribes to the hub's `/v1/events?<query>`, reads until `expected`
/// readings arrived, and keeps every `stride`-th latency. The subscription
/// is open when `ready` is sent.
///
/// The body comes from reqwest (which undoes the chunking); events are
/// counted by looking at the start of each block rather than parsed, so
/// the receiving side costs what the MQTT one does.
pub async fn sse(
    addr: String,
    query: String,
    expected: u64,
    stride: u64,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Received> {
    let path = format!("/v1/events?{query}");
    let mut body_stream = match crate::hubproc::client_tls() {
        Some(tls) => https_stream(&addr, &path, tls).await?,
        None => {
            let response = testkit::http::client()
                .get(format!("http://{addr}{path}"))
                .timeout(Duration::MAX)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "the hub answered {}",
                response.status()
            );
            response
                .bytes_stream()
                .map(|chunk| chunk.map_err(anyhow::Error::from))
                .boxed()
        }
    };
    let _ = ready.send(()).await;
    let mut body: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut received = Received::default();
    // Keep-alive comments arrive on an idle stream: only events count.
    let mut last_event = tokio::time::Instant::now();
    while received.count < expected {
        let chunk =
            tokio::time::timeout_at(last_event + Duration::from_secs(60), body_stream.next())
                .await
                .with_context(|| format!("no events for 60 s after {}", received.count))?
                .with_context(|| format!("stream ended after {} events", received.count))??;
        body.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(end) = body[consumed..].windows(2).position(|w| w == b"\n\n") {
            let event = &body[consumed..consumed + end];
            consumed += end + 2;
            if is_reading(event) {
                received.count += 1;
                last_event = tokio::time::Instant::now();
                if received.count % stride == 0
                    && let Some(sent) = value_of(event)
                {
                    record_since(&mut received.latency_us, sent);
                }
            }
        }
        body.drain(..consumed);
    }
    received.done_at_us = now_us();
    Ok(received)
}

/// A body as it arrives, whichever client reads it.
type Body = futures_util::stream::BoxStream<'static, anyhow::Result<bytes::Bytes>>;

/// `GET https://localhost{path}` on a new HTTP/1.1 connection to `addr`:
/// the body's bytes as they come. hyper's client on tokio-rustls, the same
/// TLS the hub uses, since the kit's reqwest has none.
async fn https_stream(
    addr: &str,
    path: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<Body> {
    use http_body_util::BodyExt;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "the hub answered {}",
        response.status()
    );
    // Dropping the sender would close the connection once the body ends;
    // the body holds it open for as long as it is read.
    let body = response.into_body().into_data_stream();
    Ok(body
        .map(move |chunk| {
            let _connection_kept = &sender;
            chunk.map_err(anyhow::Error::from)
        })
        .boxed())
}

/// Subscribes to `topic` on the broker at `port` over a plain TCP MQTT 3.1.1
/// session, reads until `expected` messages arrived, keeping every
/// `stride`-th latency.
///
/// Written against the wire format rather than with rumqttc so that the
/// receiving side costs the same as the SSE subscriber's (scan bytes, count
/// messages): a client library decoding every message into its own structs
/// would make the broker look slower than it is.
pub async fn mqtt(
    port: u16,
    id: String,
    topic: String,
    expected: u64,
    stride: u64,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Received> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&mqtt_connect(&id)).await?;
    stream.write_all(&mqtt_subscribe(&topic)).await?;
    let mut raw: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = Received::default();
    while received.count < expected {
        let n = tokio::time::timeout(Duration::from_secs(120), stream.read(&mut buf))
            .await
            .context("no MQTT messages for 120 s")??;
        anyhow::ensure!(
            n > 0,
            "broker closed the connection after {} messages",
            received.count
        );
        raw.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while let Some((kind, body, next)) = mqtt_packet(&raw, at) {
            match kind >> 4 {
                // SUBACK: the subscription is in place.
                9 => {
                    let _ = ready.send(()).await;
                }
                // PUBLISH at QoS 0: topic length, topic, payload.
                3 => {
                    received.count += 1;
                    if received.count % stride == 0 {
                        let topic_len = usize::from(u16::from_be_bytes([raw[body], raw[body + 1]]));
                        if let Some(sent) = value_of(&raw[body + 2 + topic_len..next]) {
                            record_since(&mut received.latency_us, sent);
                        }
                    }
                }
                _ => {}
            }
            at = next;
        }
        raw.drain(..at);
    }
    received.done_at_us = now_us();
    Ok(received)
}

/// The packet starting at `at`: its first byte, where its body starts and
/// where the next packet starts; `None` while incomplete.
fn mqtt_packet(raw: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let kind = *raw.get(at)?;
    let mut length = 0usize;
    let mut shift = 0;
    let mut i = at + 1;
    loop {
        let byte = *raw.get(i)?;
        length |= usize::from(byte & 0x7f) << shift;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    (raw.len() >= i + length).then_some((kind, i, i + length))
}

fn mqtt_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn mqtt_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut length = body.len();
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 0 (off).
fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(&mut body, "MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    mqtt_string(&mut body, client_id);
    mqtt_frame(0x10, &body)
}

/// SUBSCRIBE to one topic at QoS 0, packet id 1.
fn mqtt_subscribe(topic: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    mqtt_string(&mut body, topic);
    body.push(0);
    mqtt_frame(0x82, &body)
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
    fn only_readings_are_counted() {
        assert!(is_reading(b"id: 3\nevent: reading\ndata: {}"));
        assert!(!is_reading(b"id: 4\nevent: status\ndata: {}"));
        assert!(!is_reading(b"event: reset\ndata: {}"));
        assert!(!is_reading(b": keep-alive"));
    }

    #[test]
    fn mqtt_packets_are_split_by_their_remaining_length() {
        let publish = mqtt_frame(0x30, &[0, 1, b't', b'x', b'y']);
        let mut raw = publish.clone();
        raw.extend_from_slice(&publish[..3]);
        let (kind, body, next) = mqtt_packet(&raw, 0).unwrap();
        assert_eq!((kind, body, next), (0x30, 2, 7));
        assert_eq!(
            mqtt_packet(&raw, next),
            None,
            "the second packet is incomplete"
        );
    }

    #[test]
    fn long_mqtt_lengths_take_several_bytes() {
        let frame = mqtt_frame(0x30, &[0; 200]);
        assert_eq!(&frame[..3], &[0x30, 0xc8, 0x01]);
    }
}
