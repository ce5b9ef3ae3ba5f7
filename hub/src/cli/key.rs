//! `hub key add|list|revoke`: API keys in the database file, while the hub
//! runs or not (it reads its keys again every half second). A key is
//! printed once, alone on standard output; the file keeps its hash.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use super::{ClusterArg, DbArg, UsageError, open, parse_duration, print_out};
use crate::access::{self, Role};
use crate::auth;
use crate::journal::access::{AccessEntry, announce};
use crate::store::access::{AddKeyError, NewKey};
use crate::store::now_ms;

#[derive(Debug, Subcommand)]
pub(super) enum KeyCommand {
    /// Make a key and print it (alone on standard output, this once).
    /// With --nats-url: for every hub of the cluster.
    Add {
        /// viewer (read devices, readings, alerts, the live stream),
        /// operator (also commands and acknowledgements) or admin (also
        /// devices, groups, keys and alert rules).
        #[arg(long)]
        role: String,
        /// Limit the key to the devices of this group (repeat for more);
        /// without it the key sees every device.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A name to list and revoke it by (default: key-<8 hex>).
        #[arg(long)]
        name: Option<String>,
        /// The key stops working after this long (90d, 12h).
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// List keys (never the keys themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Revoke a key: a running hub refuses it within a second and closes
    /// its live streams. With --nats-url: on every hub of the cluster.
    Revoke {
        name: String,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        cluster: ClusterArg,
    },
}

pub(super) async fn run(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Add {
            role,
            groups,
            name,
            expires,
            db,
            cluster,
        } => {
            let role = Role::parse(&role)
                .ok_or_else(|| UsageError(format!("--role {role:?}: a role is {}", Role::NAMES)))?;
            super::check_groups("--group", &groups)?;
            let key = access::generate_key()?;
            let name = match name {
                Some(name) if access::is_valid_group(&name) => name,
                Some(name) => {
                    return Err(UsageError(format!(
                        "--name {name:?}: a key's name is 1 to 64 of A-Z a-z 0-9 - _ . :"
                    ))
                    .into());
                }
                None => format!("key-{}", &auth::generate_token()?[..8]),
            };
            let expires_ms = expires.map(|after| {
                now_ms().saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX))
            });
            if let Some(url) = &cluster.nats_url {
                // A name taken keeps its key: every hub applies the first.
                let entry = AccessEntry::AddKey {
                    name: name.clone(),
                    key_sha256: auth::hash_token(&key).to_vec(),
                    role: role.as_str().to_owned(),
                    groups,
                    expires_ms,
                };
                announce(url, &cluster.nats_stream, &entry).await?;
                print_out(&format!("{key}\n"))?;
                eprintln!(
                    "added key {name} ({role}) for every hub of stream {} (unless the name was taken); \
                     it is shown this once",
                    cluster.nats_stream
                );
                return Ok(());
            }
            let store = open(&db).await?;
            let added = store
                .add_key(&NewKey {
                    name: &name,
                    key_sha256: auth::hash_token(&key),
                    role: role.as_str(),
                    groups: &groups,
                    expires_ms,
                })
                .await;
            store.close().await;
            match added {
                Ok(()) => {}
                Err(err @ AddKeyError::Exists(_)) => return Err(UsageError(err.to_string()).into()),
                Err(err) => return Err(err).context("adding the key"),
            }
            print_out(&format!("{key}\n"))?;
            eprintln!("added key {name} ({role}); it is shown this once");
        }
        KeyCommand::List { json, db } => {
            let store = open(&db).await?;
            let keys = store.keys().await?;
            store.close().await;
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&keys)?)
            } else {
                let now = now_ms();
                let mut text =
                    format!("{:<24} {:<9} {:<9} {}\n", "NAME", "ROLE", "STATE", "GROUPS");
                for key in keys {
                    let state = match (key.revoked_ms, key.expires_ms) {
                        (Some(_), _) => "revoked",
                        (None, Some(at)) if at <= now => "expired",
                        _ => "active",
                    };
                    let groups = if key.groups.is_empty() {
                        "(every device)".to_owned()
                    } else {
                        key.groups.join(",")
                    };
                    text.push_str(&format!(
                        "{:<24} {:<9} {:<9} {groups}\n",
                        key.name, key.role, state
                    ));
                }
                text
            };
            print_out(&text)?;
        }
        KeyCommand::Revoke {
            name,
            cluster:
                ClusterArg {
                    nats_url: Some(url),
                    nats_stream,
                },
            ..
        } => {
            announce(
                &url,
                &nats_stream,
                &AccessEntry::RevokeKey { name: name.clone() },
            )
            .await?;
            eprintln!("revoked key {name} on every hub of stream {nats_stream}");
        }
        KeyCommand::Revoke { name, db, .. } => {
            let store = open(&db).await?;
            let found = store.revoke_key(&name).await?;
            store.close().await;
            if !found {
                anyhow::bail!("no key {name:?} in {}", db.db.display());
            }
            eprintln!("revoked key {name}");
        }
    }
    Ok(())
}
