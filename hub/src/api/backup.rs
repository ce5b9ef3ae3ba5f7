//! `POST /v1/admin/backup`: the database as one SQLite file, consistent as
//! of one commit and made while the hub goes on ([`crate::store::backup`]),
//! sent as the answer. The copy is made beside the database (it needs that
//! much free space there), then unlinked as soon as it is open, so the
//! folder never keeps it, whatever becomes of the download. An admin of
//! every device only; one backup at a time.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::admin::{Admin, admin_of_everything};
use crate::access::Principal;
use crate::http_error::ApiError;
use crate::store::backup::BackupError;
use crate::store::{Store, now_ms};

/// The size of the chunks the copy is sent in.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks read ahead of the connection: when they are all waiting, the
/// reading thread waits for the client to take one.
const CHUNKS_AHEAD: usize = 4;

/// Whether a backup is being made: a second one waits for no one, it is
/// refused (each holds a read snapshot and a copy's worth of disk).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Clears [`RUNNING`] however the request ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// The database as a file: `application/vnd.sqlite3`, its last storage
/// position in `Backup-Last-Position`.
#[utoipa::path(
    post,
    path = "/v1/admin/backup",
    tag = "admin",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The SQLite file, consistent as of one commit; `Backup-Last-Position` is the last storage position it holds", content_type = "application/vnd.sqlite3", body = Vec<u8>),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key of every device (`forbidden`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 409, description = "Another backup is being made (`backup_running`)", body = ApiError),
        (status = 503, description = "The copy could not be made (`backup_failed`: the disk beside the database, or the database)", body = ApiError),
    ),
)]
pub async fn backup(
    State(store): State<Store>,
    State(admin): State<Admin>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    admin_of_everything(&principal, "a backup")?;
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backup_running",
            "another backup is being made; try again when it is done",
        ));
    }
    let running = Running;
    let copy = beside(store.path());
    let made = store.backup_to(&copy).await.map_err(failed)?;
    let file = std::fs::File::open(&copy).map_err(|err| {
        let _ = std::fs::remove_file(&copy);
        failed(BackupError::Io {
            path: copy.clone(),
            source: err,
        })
    })?;
    // Open: the folder need not keep it any longer.
    if let Err(err) = std::fs::remove_file(&copy) {
        tracing::warn!(path = %copy.display(), error = %err, "cannot remove the backup's copy");
    }
    admin
        .audit(
            &principal,
            "backup",
            None,
            serde_json::json!({"bytes": made.bytes, "last_pos": made.last_pos, "took_ms": made.took_ms}),
        )
        .await;
    tracing::info!(
        bytes = made.bytes,
        last_pos = made.last_pos,
        took_ms = made.took_ms,
        "backup made"
    );
    let position = HeaderValue::from(made.last_pos);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.sqlite3"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(made.bytes)),
            (
                header::HeaderName::from_static("backup-last-position"),
                position,
            ),
        ],
        Body::from_stream(chunks(file, running)),
    )
        .into_response())
}

/// Where the copy is made: beside the database, named after it and now.
fn beside(db: &std::path::Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".backup-{}", now_ms()));
    PathBuf::from(name)
}

fn failed(err: BackupError) -> ApiError {
    tracing::error!(error = %err, "a backup failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "backup_failed",
        err.to_string(),
    )
}

/// The file's bytes, read on a blocking thread `CHUNKS_AHEAD` chunks ahead
/// of the client; `running` is held until the last is sent.
fn chunks(
    mut file: std::fs::File,
    running: Running,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let (chunks, received) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut chunk = vec![0; CHUNK_BYTES];
            let read = match file.read(&mut chunk) {
                Ok(0) => return,
                Ok(read) => read,
                Err(err) => {
                    let _ = chunks.blocking_send(Err(err));
                    return;
                }
            };
            chunk.truncate(read);
            // The client went away: stop reading.
            if chunks.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                return;
            }
        }
    });
    futures_util::stream::unfold((received, running), |(mut received, running)| async move {
        let chunk = received.recv().await?;
        Some((chunk, (received, running)))
    })
}
