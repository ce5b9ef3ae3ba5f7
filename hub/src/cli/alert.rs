//! `hub alert add|list|remove`: alert rules in the database file, while
//! the hub runs or not (it reads its rules again every second). A rule the
//! checks refuse exits with status 2, naming the flag at fault.

use clap::{Args, Subcommand};

use super::{ClusterArg, DbArg, UsageError, open, print_out};
use crate::alerts::definition_text;
use crate::alerts::rule::{RuleError, RuleSpec};
use crate::journal;

#[derive(Debug, Subcommand)]
pub(super) enum AlertCommand {
    /// Add a rule; a running hub evaluates it from its next readings on.
    /// With --nats-url: for every hub of the cluster (a rule of that name
    /// is replaced).
    Add(Box<AddArgs>),
    /// List the rules.
    List {
        /// Print JSON (the API's shape) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Remove a rule; a running hub resolves its alerts.
    /// With --nats-url: on every hub of the cluster.
    Remove {
        name: String,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        cluster: ClusterArg,
    },
}

#[derive(Debug, Args)]
pub(super) struct AddArgs {
    /// The rule's name: 1 to 64 characters of A-Z a-z 0-9 - _ .
    name: String,
    /// threshold (a value past a limit), silence (no reading for --for),
    /// offline (disconnected for --for).
    #[arg(long)]
    kind: String,
    /// One device id, or a pattern with * and ? (freezer-*); default: every device.
    #[arg(long)]
    device: Option<String>,
    /// The metric: required by threshold; for silence, default any metric.
    #[arg(long)]
    metric: Option<String>,
    /// threshold: fires above this value.
    #[arg(long, allow_negative_numbers = true, conflicts_with_all = ["below", "outside"])]
    above: Option<f64>,
    /// threshold: fires below this value.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "outside")]
    below: Option<f64>,
    /// threshold: fires outside the band LOW:HIGH (-10:4).
    #[arg(long, allow_hyphen_values = true)]
    outside: Option<String>,
    /// threshold: mean, min or max over --window, instead of each reading.
    #[arg(long)]
    aggregate: Option<String>,
    /// threshold with --aggregate: how far back it looks (5m).
    #[arg(long)]
    window: Option<String>,
    /// threshold: how long the condition holds before firing (default 0s);
    /// silence and offline: how long before firing (required).
    #[arg(long = "for")]
    hold: Option<String>,
    /// threshold: how far back past the limit before it resolves.
    #[arg(long, allow_negative_numbers = true)]
    dead_band: Option<f64>,
    /// info, warning (default) or critical.
    #[arg(long)]
    severity: Option<String>,
    /// The alert's message: {device}, {metric}, {value}, {limit}, {rule}.
    #[arg(long)]
    message: Option<String>,
    #[command(flatten)]
    db: DbArg,
    #[command(flatten)]
    cluster: ClusterArg,
}

impl AddArgs {
    /// The rule these flags describe.
    fn spec(&self) -> Result<RuleSpec, UsageError> {
        let (condition, limit, low, high) = match (self.above, self.below, &self.outside) {
            (Some(limit), _, _) => (Some("above"), Some(limit), None, None),
            (_, Some(limit), _) => (Some("below"), Some(limit), None, None),
            (_, _, Some(band)) => {
                let (low, high) = band_of(band)?;
                (Some("outside"), None, Some(low), Some(high))
            }
            _ => (None, None, None, None),
        };
        Ok(RuleSpec {
            name: self.name.clone(),
            kind: self.kind.clone(),
            device: self.device.clone(),
            metric: self.metric.clone(),
            condition: condition.map(str::to_owned),
            limit,
            low,
            high,
            aggregate: self.aggregate.clone(),
            window: self.window.clone(),
            hold: self.hold.clone(),
            dead_band: self.dead_band,
            severity: self.severity.clone(),
            message: self.message.clone(),
        })
    }
}

fn band_of(text: &str) -> Result<(f64, f64), UsageError> {
    let bad = || {
        UsageError(format!(
            "--outside: {text:?} is not a band LOW:HIGH, such as -10:4"
        ))
    };
    let (low, high) = text.split_once(':').ok_or_else(bad)?;
    let number = |part: &str| part.trim().parse::<f64>().map_err(|_| bad());
    Ok((number(low)?, number(high)?))
}

/// The flag that sets a definition's field.
fn flag_of(field: &str) -> &str {
    match field {
        "name" => "NAME",
        "condition" => "--above, --below or --outside",
        "limit" => "--above or --below",
        "low" | "high" => "--outside",
        "for" => "--for",
        "dead_band" => "--dead-band",
        "kind" => "--kind",
        "device" => "--device",
        "metric" => "--metric",
        "aggregate" => "--aggregate",
        "window" => "--window",
        "severity" => "--severity",
        "message" => "--message",
        other => other,
    }
}

pub(super) async fn run(command: AlertCommand) -> anyhow::Result<()> {
    match command {
        AlertCommand::Add(args) => {
            let rule = args
                .spec()?
                .check()
                .map_err(|RuleError { field, message }| {
                    UsageError(format!("{}: {message}", flag_of(field)))
                })?;
            if let Some(url) = &args.cluster.nats_url {
                let stream = &args.cluster.nats_stream;
                let definition = Some(definition_text(&rule));
                journal::rules::announce(url, stream, &rule.name, definition).await?;
                eprintln!("added rule {} for every hub of stream {stream}", rule.name);
                return Ok(());
            }
            let store = open(&args.db).await?;
            let added = store
                .add_alert_rule(&rule.name, &definition_text(&rule))
                .await?;
            store.close().await;
            if !added {
                anyhow::bail!(
                    "a rule named {:?} exists in {}: remove it first",
                    rule.name,
                    args.db.db.display()
                );
            }
            eprintln!("added rule {}", rule.name);
        }
        AlertCommand::List { json, db } => {
            let store = open(&db).await?;
            let rules = store.alert_rules().await?;
            store.close().await;
            let specs: Vec<RuleSpec> = rules
                .iter()
                .filter_map(|(_, text)| serde_json::from_str(text).ok())
                .collect();
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&specs)?)
            } else {
                let mut text = format!(
                    "{:<24} {:<10} {:<9} {:<20} {}\n",
                    "NAME", "KIND", "SEVERITY", "DEVICE", "DEFINITION"
                );
                for (spec, (_, definition)) in specs.iter().zip(&rules) {
                    text.push_str(&format!(
                        "{:<24} {:<10} {:<9} {:<20} {}\n",
                        spec.name,
                        spec.kind,
                        spec.severity.as_deref().unwrap_or("-"),
                        spec.device.as_deref().unwrap_or("*"),
                        definition
                    ));
                }
                text
            };
            print_out(&text)?;
        }
        AlertCommand::Remove {
            name,
            cluster:
                ClusterArg {
                    nats_url: Some(url),
                    nats_stream,
                },
            ..
        } => {
            journal::rules::announce(&url, &nats_stream, &name, None).await?;
            eprintln!("removed rule {name} on every hub of stream {nats_stream}");
        }
        AlertCommand::Remove { name, db, .. } => {
            let store = open(&db).await?;
            let removed = store.remove_alert_rule(&name).await?;
            store.close().await;
            if !removed {
                anyhow::bail!("no rule named {name:?} in {}", db.db.display());
            }
            eprintln!("removed rule {name}");
        }
    }
    Ok(())
}
