//! Calling a command on a connected device and waiting for its answer: the
//! one path both `POST /v1/devices/{id}/commands` and the MQTT bridge's
//! `{prefix}/{device}/cmd` take, so both refuse the same things with the
//! same codes.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::{Command, CommandArg, DecodeError, HubFrame};
use serde_json::Value;

pub use super::outcome::{Answer, Failure};
use super::registry::{CommandRefused, Registry};
use crate::store::Store;

/// An argument whose value is not text, a number or `true`/`false`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument {name:?} must be text, a number or true/false, not {found}")]
pub struct BadArg {
    pub name: String,
    found: &'static str,
}

impl BadArg {
    /// Where it is in a request body: `args.interval_ms`.
    pub fn field(&self) -> String {
        format!("args.{}", self.name)
    }
}

/// A request's `args` as the protocol carries them, every value as text:
/// a number or a boolean as its JSON text (`250`, `2.5`, `true`), as a
/// person typing `{"interval_ms": 250}` means it.
///
/// # Errors
/// The first argument whose value is `null`, an array or an object.
pub fn args_of(args: BTreeMap<String, Value>) -> Result<Vec<CommandArg>, BadArg> {
    args.into_iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(text) => text,
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                Value::Null => {
                    return Err(BadArg {
                        name,
                        found: "null",
                    });
                }
                Value::Array(_) => {
                    return Err(BadArg {
                        name,
                        found: "an array",
                    });
                }
                Value::Object(_) => {
                    return Err(BadArg {
                        name,
                        found: "an object",
                    });
                }
            };
            Ok(CommandArg { name, value })
        })
        .collect()
}

/// Sends `name(args)` to `device` and waits up to `timeout` for its answer:
/// on this hub if the device is connected here, else, in a cluster, on the
/// hub that has it.
///
/// # Errors
/// See [`Failure`].
pub async fn call(
    registry: &Registry,
    store: &Store,
    device: &str,
    name: String,
    args: Vec<CommandArg>,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let Some(elsewhere) = registry.elsewhere() else {
        return call_here(registry, store, device, name, args, timeout).await;
    };
    let here = call_here(registry, store, device, name.clone(), args.clone(), timeout).await;
    match here {
        Err(Failure::Offline(_) | Failure::UnknownDevice(_)) => {
            match elsewhere.call(device, name, args, timeout).await {
                // No hub has it: what this hub knows of the device.
                Err(Failure::Offline(_)) => here,
                there => there,
            }
        }
        here => here,
    }
}

/// [`call`] for a device connected to this hub only: what other hubs of a
/// cluster ask of this one.
///
/// # Errors
/// See [`Failure`].
pub async fn call_here(
    registry: &Registry,
    store: &Store,
    device: &str,
    name: String,
    args: Vec<CommandArg>,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let probe = HubFrame::Command(Command {
        id: 0,
        name: name.clone(),
        args: args.clone(),
    });
    if let Err(error) = probe.validate() {
        return Err(Failure::Invalid {
            field: field_at_fault(&error),
            error,
        });
    }
    let (id, result) = match registry.send_command(device, name, args) {
        Ok(sent) => sent,
        Err(CommandRefused::QueueFull) => return Err(Failure::QueueFull(device.into())),
        Err(CommandRefused::Offline) => {
            return Err(if store.find_device(device).await?.is_some() {
                Failure::Offline(device.into())
            } else {
                Failure::UnknownDevice(device.into())
            });
        }
    };
    match tokio::time::timeout(timeout, result).await {
        Ok(Ok(result)) => Ok(Answer {
            id,
            ok: result.ok,
            detail: result.detail,
        }),
        Ok(Err(_)) => Err(Failure::Disconnected {
            device: device.into(),
            id,
        }),
        Err(_) => Err(Failure::TimedOut {
            device: device.into(),
            id,
            ms: timeout.as_millis(),
        }),
    }
}

/// The field a protocol limit was broken in: the name, or the args.
fn field_at_fault(err: &DecodeError) -> &'static str {
    match err {
        DecodeError::TooLong { field, .. }
        | DecodeError::TooMany { field, .. }
        | DecodeError::Empty { field }
            if *field == "command name" =>
        {
            "name"
        }
        _ => "args",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PoolDurability;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db"), PoolDurability::WithWriter)
            .await
            .unwrap();
        store.add_device("known", None).await.unwrap();
        (store, dir)
    }

    async fn failure(registry: &Registry, store: &Store, device: &str, name: &str) -> Failure {
        call(
            registry,
            store,
            device,
            name.into(),
            vec![],
            Duration::from_millis(20),
        )
        .await
        .unwrap_err()
    }

    #[tokio::test]
    async fn each_refusal_has_its_own_code() {
        let (store, _dir) = store().await;
        let registry = Registry::default();
        let code = |f: Failure| f.code();
        assert_eq!(
            code(failure(&registry, &store, "known", "").await),
            "bad_command"
        );
        assert_eq!(
            code(failure(&registry, &store, "nobody", "ping").await),
            "unknown_device"
        );
        assert_eq!(
            code(failure(&registry, &store, "known", "ping").await),
            "device_offline"
        );
        let (_presence, _inbox) = registry.register("known");
        assert_eq!(
            code(failure(&registry, &store, "known", "ping").await),
            "command_timeout"
        );
    }

    #[tokio::test]
    async fn an_answer_comes_back_with_the_command_id() {
        let (store, _dir) = store().await;
        let registry = Registry::default();
        let (_presence, mut inbox) = registry.register("known");
        let device = tokio::spawn(async move {
            let pending = inbox.commands.recv().await.unwrap();
            let _ = pending.reply.send(protocol::CommandResult {
                id: pending.command.id,
                ok: true,
                detail: "done".into(),
            });
        });
        let answer = call(
            &registry,
            &store,
            "known",
            "ping".into(),
            vec![],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(answer.ok);
        assert_eq!(answer.detail, "done");
        device.await.unwrap();
    }
}
