//! Events in the stream: what happens to a device besides its readings
//! (its status, as the hub it is connected to sees it) as entries on
//! `{stream}.events.{device}`. Every hub's applier stores each at the
//! entry's first position, as it does readings, so an event has the same
//! id on every hub and a browser resumes past it on any of them.

use async_nats::jetstream::message::PublishMessage;
use serde::{Deserialize, Serialize};

use super::Journal;
use crate::commits::EventKind;

/// An event entry's payload: `{"ts_ms":…,"event":{"kind":"status",…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct EventEntry {
    /// The time of the hub that saw it, ms since the epoch.
    pub ts_ms: i64,
    pub event: EventKind,
}

impl Journal {
    /// Appends an event of `device` to the stream and waits for the
    /// stream's acknowledgement. With an `id`, hubs that tell the same
    /// event (each saw another hub go silent) make one entry of it, inside
    /// the stream's duplicate window.
    ///
    /// # Errors
    /// The stream did not take it.
    pub async fn append_event(
        &self,
        device: &str,
        ts_ms: i64,
        event: EventKind,
        id: Option<String>,
    ) -> Result<u64, async_nats::Error> {
        let entry = serde_json::to_vec(&EventEntry { ts_ms, event })?;
        let mut message = PublishMessage::build().payload(entry.into());
        if let Some(id) = id {
            message = message.message_id(id);
        }
        let ack = self
            .jetstream
            .send_publish(self.event_subject(device), message)
            .await?
            .await?;
        self.status.saw(ack.sequence);
        Ok(ack.sequence)
    }

    /// Appends an event of `device` and waits until this hub's applier has
    /// stored (or, for a change that does not apply, skipped) it: how a
    /// configuration change made here is answered only once this hub holds
    /// what every hub will. Answers the entry's sequence.
    ///
    /// # Errors
    /// The stream did not take it.
    pub async fn append_event_applied(
        &self,
        device: &str,
        ts_ms: i64,
        event: EventKind,
    ) -> Result<u64, async_nats::Error> {
        let sequence = self.append_event(device, ts_ms, event, None).await?;
        self.status.until_applied(sequence).await;
        Ok(sequence)
    }

    fn event_subject(&self, device: &str) -> String {
        format!("{}.events.{device}", self.settings.stream)
    }

    /// The device whose event an entry on `subject` holds.
    pub(super) fn event_device<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.settings.stream.as_str())?
            .strip_prefix(".events.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_entry_is_its_time_and_its_kind() {
        let entry = EventEntry {
            ts_ms: 5,
            event: EventKind::Status { online: false },
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(
            json,
            r#"{"ts_ms":5,"event":{"kind":"status","online":false}}"#
        );
        assert_eq!(serde_json::from_str::<EventEntry>(&json).unwrap(), entry);
    }
}
