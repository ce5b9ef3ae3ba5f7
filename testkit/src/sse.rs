//! A Server-Sent Events client that sees what a browser's `EventSource`
//! sees: the stream is parsed by eventsource-stream (spec-conforming: any
//! field spacing, multi-line data joined with `\n`, comments skipped), over
//! reqwest (which undoes the chunked encoding). The raw text is kept too,
//! for what a parser hides (keep-alive comments).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::header::HeaderMap;

use crate::PATIENCE;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event's `id`, or the last one before it (as `lastEventId` in a
    /// browser); `None` before any.
    pub id: Option<String>,
    /// `message` unless the event names its type.
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// The event's data as JSON.
    ///
    /// # Panics
    /// The data is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }

    /// The id as a storage position.
    ///
    /// # Panics
    /// The event has no numeric id.
    pub fn pos(&self) -> i64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .expect("a numeric id")
    }
}

type Events = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// An open event stream.
pub struct SseClient {
    pub status: u16,
    pub headers: HeaderMap,
    events: Events,
    raw: Arc<Mutex<String>>,
}

impl std::fmt::Debug for SseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseClient")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl SseClient {
    /// `GET http://addr/path` as an event stream. Fails unless the status is
    /// 200.
    ///
    /// # Errors
    /// No response in time, or another status.
    pub async fn connect(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<SseClient> {
        let client = Self::open(addr, path, headers).await?;
        anyhow::ensure!(
            client.status == 200,
            "expected 200 from {path}, got {}",
            client.status
        );
        Ok(client)
    }

    /// `GET http://addr/path` as an event stream, whatever the status.
    ///
    /// # Errors
    /// No response in time.
    pub async fn open(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<SseClient> {
        // No overall timeout: a stream lasts as long as the test wants it.
        let mut request = crate::http::client()
            .get(format!("http://{addr}{path}"))
            .timeout(Duration::MAX)
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(PATIENCE, request.send())
            .await
            .context("no response head in time")??;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let raw = Arc::new(Mutex::new(String::new()));
        let copy = Arc::clone(&raw);
        let events = response
            .bytes_stream()
            .inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    copy.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_str(&String::from_utf8_lossy(bytes));
                }
            })
            .eventsource();
        Ok(SseClient {
            status,
            headers,
            events: Box::pin(events),
            raw,
        })
    }

    /// The next event; `None` once the server ended the stream.
    ///
    /// # Errors
    /// Nothing arrived in time, or the stream broke.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<SseEvent>> {
        let next = tokio::time::timeout(PATIENCE, self.events.next())
            .await
            .context("no event in time")?;
        match next {
            None => Ok(None),
            Some(Err(EventStreamError::Transport(err))) if err.is_body() || err.is_decode() => {
                // The hub closing the connection mid-stream (shutdown).
                Ok(None)
            }
            Some(Err(err)) => Err(anyhow::anyhow!("event stream failed: {err}")),
            Some(Ok(event)) => Ok(Some(SseEvent {
                id: (!event.id.is_empty()).then_some(event.id),
                event: event.event,
                data: event.data,
            })),
        }
    }

    /// The next event of type `kind`, skipping others.
    ///
    /// # Errors
    /// The stream ended or broke first.
    pub async fn next_of(&mut self, kind: &str) -> anyhow::Result<SseEvent> {
        loop {
            let event = self.next_event().await?.context("stream ended")?;
            if event.event == kind {
                return Ok(event);
            }
        }
    }

    /// Reads for `duration` and returns all the text received so far,
    /// comments included.
    pub async fn read_raw_for(&mut self, duration: Duration) -> String {
        let _ = tokio::time::timeout(duration, async {
            while let Some(Ok(_)) = self.events.next().await {}
        })
        .await;
        self.raw
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
