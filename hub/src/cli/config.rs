//! `hub device config ID [key=value…]`: shows or changes a device's
//! configuration through a running hub's API (any hub of a cluster), so
//! the change is stored, audited and delivered like one made over HTTP.
//! Values are JSON scalars or text (`document::patch_of_settings`);
//! `key=null` removes a key.

use clap::Args;
use serde_json::Value;

use super::{UsageError, print_out};
use crate::configuration::document;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The device id.
    id: String,
    /// Settings to change, `key=value` (a number, true, false, null to
    /// remove the key, or text); none: show the configuration.
    settings: Vec<String>,
    /// The running hub's address.
    #[arg(long, env = "HUB_URL", default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// An operator's key (or the monitor token), when the hub needs one.
    #[arg(long, env = "HUB_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Change only if the configuration is at this version.
    #[arg(long)]
    if_version: Option<u64>,
}

/// Runs `hub device config`.
///
/// # Errors
/// Bad settings ([`UsageError`], naming the setting), a hub that cannot
/// be reached, or its refusal, with its reason.
pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let patch = document::patch_of_settings(args.settings.iter().map(String::as_str))
        .map_err(|refused| UsageError(format!("setting {}: {}", refused.path, refused.problem)))?;
    let base = args.hub.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(UsageError(format!(
            "--hub {:?}: the hub's HTTP address, such as http://127.0.0.1:8080",
            args.hub
        ))
        .into());
    }
    let url = format!("{base}/v1/devices/{}/config", args.id);
    let client = reqwest::Client::new();
    let mut request = if args.settings.is_empty() {
        client.get(&url)
    } else {
        client
            .patch(&url)
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
    };
    if let Some(key) = &args.key {
        request = request.bearer_auth(key);
    }
    if let Some(version) = args.if_version {
        request = request.header("if-match", format!("\"{version}\""));
    }
    let response = request
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach the hub at {base} (--hub): {err}"))?;
    let status = response.status();
    let text = response.text().await?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let message = body["message"].as_str().unwrap_or("no reason given");
        anyhow::bail!("the hub answered {status}: {message}");
    }
    print_out(&format!("{}\n", serde_json::to_string_pretty(&body)?))
}
