//! A load device: sends batches as fast as its in-flight window allows, or
//! at a set rate, each reading's value being its send time in microseconds
//! since the Unix epoch, so receivers can measure end-to-end latency.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use protocol::{Batch, DeviceFrame, Hello, HubFrame, MetricDescriptor, PROTOCOL_VERSION, Reading};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::{latency_histogram, now_us, record_since};

/// Batches a probe keeps unacknowledged; the hub reads at most 32.
const WINDOW: usize = 32;

/// What a probe is told to do.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub url: String,
    pub device_id: String,
    pub batch: usize,
    pub batches: u64,
    /// A fixed schedule; `None` sends as fast as acks allow.
    pub pace: Option<Pace>,
}

/// A probe's sending schedule.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub batches_per_s: f64,
    /// When the first batch is due, after the start: probes of one run are
    /// spread over the interval, as a real fleet's devices are, rather than
    /// sending in lockstep bursts.
    pub offset: Duration,
}

/// Waits for `due`; at once when there is no schedule.
async fn sleep_until_due(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// What a probe measured.
#[derive(Debug)]
pub struct ProbeResult {
    /// Send-to-ack times, in microseconds.
    pub rtt_us: Histogram<u64>,
    pub readings: u64,
}

/// Runs one probe device to the end: every batch sent and acknowledged.
pub async fn run(spec: ProbeSpec) -> anyhow::Result<ProbeResult> {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        device_id: spec.device_id.clone(),
        model: "bench".into(),
        firmware: String::new(),
        metrics: vec![MetricDescriptor {
            id: 1,
            name: "latency".into(),
            unit: "us".into(),
        }],
    };
    let (mut ws, greeting) = telemetry_device::link::handshake(
        spec.url.clone(),
        crate::hubproc::client_tls(),
        "bench".into(),
        std::sync::Arc::from([]),
        hello,
    )
    .await?;
    let first_seq = greeting.welcome.last_seq + 1;

    let mut result = ProbeResult {
        rtt_us: latency_histogram(),
        readings: 0,
    };
    let mut in_flight: VecDeque<(u64, f64)> = VecDeque::with_capacity(WINDOW);
    let mut next = 0u64;
    let started = Instant::now();
    while next < spec.batches || !in_flight.is_empty() {
        let room = next < spec.batches && in_flight.len() < WINDOW;
        // Paced probes send on their schedule whether or not acks have come
        // back, so a slow hub cannot hide its latency by delaying the sends
        // (coordinated omission); unpaced ones fill the window first.
        let due = spec.pace.map(|pace| {
            started + pace.offset + Duration::from_secs_f64(next as f64 / pace.batches_per_s)
        });
        let send_now = tokio::select! {
            biased;
            () = sleep_until_due(due), if room => true,
            frame = next_frame(&mut ws), if !in_flight.is_empty() => {
                match frame? {
                    HubFrame::Ack(ack) => {
                        while let Some(&(seq, sent)) = in_flight.front() {
                            if seq > ack.seq {
                                break;
                            }
                            in_flight.pop_front();
                            record_since(&mut result.rtt_us, sent);
                            result.readings += spec.batch as u64;
                        }
                    }
                    HubFrame::Error(error) => bail!("hub error {}: {}", error.code, error.message),
                    _ => {}
                }
                false
            }
        };
        if send_now {
            let sent = now_us();
            let seq = first_seq + next;
            let batch = DeviceFrame::Batch(Batch {
                seq,
                base_ms: (sent / 1_000.0) as u64,
                readings: (0..spec.batch)
                    .map(|_| Reading {
                        metric: 1,
                        offset_ms: 0,
                        value: sent,
                    })
                    .collect(),
            });
            ws.send(Message::Binary(batch.encode().into())).await?;
            in_flight.push_back((seq, sent));
            next += 1;
        }
    }
    let _ = (*ws).close(None).await;
    Ok(result)
}

async fn next_frame<S>(ws: &mut S) -> anyhow::Result<HubFrame>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("no frame from the hub for 60 s")?
            .context("connection closed")??;
        if let Message::Binary(bytes) = message {
            return Ok(HubFrame::decode(&bytes)?);
        }
    }
}
