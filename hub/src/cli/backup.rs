//! `hub backup --to FILE`: a copy of the database, consistent as of one
//! commit, while the hub runs or not. From the file itself (`--db`: on the
//! hub's machine; WAL lets it read beside the running writer), or from a
//! running hub over its admin API (`--hub`, an admin key of every device).
//! Either way the copy is written as `FILE.partial` and renamed once whole.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{DbArg, UsageError, open, print_out};
use crate::store::backup::{BackupError, partial_of};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where the copy goes; it must not exist.
    #[arg(long)]
    to: PathBuf,
    #[command(flatten)]
    db: DbArg,
    /// Copy from a running hub over its admin API instead of from --db (its
    /// HTTP address, http://host:port).
    #[arg(long)]
    hub: Option<String>,
    /// An admin key of every device, for --hub.
    #[arg(long, env = "HUB_KEY", hide_env_values = true, requires = "hub")]
    key: Option<String>,
}

/// Runs `hub backup`.
///
/// # Errors
/// `--to` exists or `--db` does not ([`UsageError`]); the copy cannot be
/// made or written; the hub cannot be reached or refuses, with its reason.
pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    if args.to.exists() {
        return Err(exists(&args.to));
    }
    match &args.hub {
        Some(hub) => from_hub(hub, args.key.as_deref(), &args.to).await,
        None => from_file(&args.db, &args.to).await,
    }
}

fn exists(to: &Path) -> anyhow::Error {
    UsageError(format!(
        "--to {}: the file exists; a backup never replaces one",
        to.display()
    ))
    .into()
}

async fn from_file(db: &DbArg, to: &Path) -> anyhow::Result<()> {
    if !db.db.exists() {
        return Err(UsageError(format!("--db {}: no such database", db.db.display())).into());
    }
    let store = open(db).await?;
    let made = store.backup_to(to).await;
    store.close().await;
    let made = match made {
        Err(BackupError::Exists(path)) => {
            return Err(exists(&path));
        }
        made => made?,
    };
    print_out(&format!(
        "backed up {} to {}: {} bytes, up to position {}, in {} ms\n",
        db.db.display(),
        to.display(),
        made.bytes,
        made.last_pos,
        made.took_ms
    ))
}

async fn from_hub(hub: &str, key: Option<&str>, to: &Path) -> anyhow::Result<()> {
    let base = hub.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(UsageError(format!(
            "--hub {hub:?}: the hub's HTTP address, such as http://127.0.0.1:8080"
        ))
        .into());
    }
    let mut request = reqwest::Client::new().post(format!("{base}/v1/admin/backup"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut response = request
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach the hub at {base} (--hub): {err}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|body| body["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        anyhow::bail!("the hub answered {status}: {message}");
    }
    let last_pos = response
        .headers()
        .get("backup-last-position")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let expected = response.content_length();
    let partial = partial_of(to);
    let written = async {
        let mut file = std::fs::File::create(&partial)?;
        let mut bytes = 0_u64;
        while let Some(chunk) = response.chunk().await? {
            file.write_all(&chunk)?;
            bytes += chunk.len() as u64;
        }
        // A connection cut short is not a backup.
        if let Some(expected) = expected
            && expected != bytes
        {
            anyhow::bail!("the hub sent {bytes} of {expected} bytes");
        }
        file.sync_all()?;
        anyhow::Ok(bytes)
    }
    .await;
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            return Err(err.context(format!("writing {}", partial.display())));
        }
    };
    std::fs::rename(&partial, to)?;
    if let Some(folder) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(folder).and_then(|dir| dir.sync_all())?;
    }
    print_out(&format!(
        "backed up the hub at {base} to {}: {bytes} bytes, up to position {last_pos}\n",
        to.display()
    ))
}
