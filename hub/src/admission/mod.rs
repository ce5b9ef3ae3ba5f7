//! The one way in for a device and its metrics, whichever door it comes
//! through: a WebSocket session's `Hello`, an entry of the cluster's
//! stream, or readings from MQTT. Each finds the device and its metric
//! rows in SQLite, has the writer register what is new, and tells the
//! metrics' [`Names`] before any of their readings can be committed.

mod names;

pub use names::{MetricNames, Names};

use std::collections::HashMap;
use std::sync::Arc;

use protocol::Hello;

use crate::store::writer::{WriteError, WriterHandle};
use crate::store::{Store, StoreError};

/// Why a device or its metrics could not be admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("reading devices: {0}")]
    Read(#[from] StoreError),
    #[error("registering: {0}")]
    Write(#[from] WriteError),
}

/// A device's row, as the database holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub row: i64,
    pub revoked: bool,
}

/// The admission path: reads on the pool, writes through the writer.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    store: Store,
    writer: WriterHandle,
    names: Arc<Names>,
}

impl Admission {
    pub fn new(store: Store, writer: WriterHandle, names: Arc<Names>) -> Self {
        Admission {
            store,
            writer,
            names,
        }
    }

    /// The device's row, if the database knows it.
    ///
    /// # Errors
    /// Storage could not be read.
    pub async fn find(&self, device_id: &str) -> Result<Option<Admitted>, AdmitError> {
        let found = self.store.find_device(device_id).await?;
        Ok(found.map(|(row, revoked)| Admitted { row, revoked }))
    }

    /// The rows of those of `device_ids` that are registered (one read for
    /// all: presence records a fleet's connects together).
    ///
    /// # Errors
    /// A database failure.
    pub async fn rows(&self, device_ids: &[&str]) -> Result<HashMap<String, i64>, AdmitError> {
        Ok(self.store.device_rows(device_ids).await?)
    }

    /// The device's row, registered by the writer if it is unknown (a
    /// certificate, the cluster's stream or `--mqtt-ingest-register`
    /// vouches for it).
    ///
    /// # Errors
    /// Storage could not be read or written.
    pub async fn find_or_register(&self, device_id: &str) -> Result<Admitted, AdmitError> {
        if let Some(found) = self.find(device_id).await? {
            return Ok(found);
        }
        let (row, revoked) = self.writer.register_device(device_id).await?;
        Ok(Admitted { row, revoked })
    }

    /// A `Hello`'s metric rows by the device's metric ids, and the last
    /// `seq` stored for the device. The writer writes the `Hello` only when
    /// it brings something new (model, firmware, a metric or a unit); a
    /// device at its metric limit gets fewer rows than it named.
    ///
    /// # Errors
    /// Storage could not be read or written.
    pub async fn hello(
        &self,
        device_row: i64,
        hello: &Hello,
    ) -> Result<(u64, HashMap<u16, i64>), AdmitError> {
        let (last_seq, known) = self.store.known_hello(device_row, hello).await?;
        let rows = match known {
            Some(rows) => rows,
            None => self.writer.register_hello(device_row, hello).await?,
        };
        let named = hello.metrics.iter().filter_map(|metric| {
            let row = *rows.get(&metric.id)?;
            Some((row, metric.name.as_str(), metric.unit.as_str()))
        });
        self.names.tell(&hello.device_id, named);
        Ok((last_seq, rows))
    }

    /// A device's stored metrics by name: their rows and units.
    ///
    /// # Errors
    /// Storage could not be read.
    pub async fn metrics(
        &self,
        device_id: &str,
        device_row: i64,
    ) -> Result<HashMap<String, (i64, String)>, AdmitError> {
        let rows = self.store.metric_rows(device_row).await?;
        self.names.tell(
            device_id,
            rows.iter()
                .map(|(row, name, unit)| (*row, name.as_str(), unit.as_str())),
        );
        Ok(rows
            .into_iter()
            .map(|(row, name, unit)| (name, (row, unit)))
            .collect())
    }

    /// Registers one metric of a device by name (created, or its unit
    /// changed) and answers its row.
    ///
    /// # Errors
    /// Storage could not be written.
    pub async fn metric(
        &self,
        device_id: &str,
        device_row: i64,
        name: &str,
        unit: &str,
    ) -> Result<i64, AdmitError> {
        let rows = self
            .writer
            .register_metrics(device_row, vec![(name.to_owned(), unit.to_owned())])
            .await?;
        let row = *rows.first().ok_or(WriteError::Failed(
            "the writer registered no metric row".into(),
        ))?;
        self.names.tell(device_id, [(row, name, unit)]);
        Ok(row)
    }
}
