//! Alert rules for a whole cluster: `hub alert add|remove --nats-url` and
//! the HTTP API of any hub publish the change on `{stream}.rules.{name}`,
//! and every hub's applier writes it through its writer in stream order,
//! so every hub evaluates the same rules from the same point of the log.
//! A rule is its JSON definition as checked by whoever sent it; each hub's
//! evaluator checks it again and skips one that does not hold.

use serde::{Deserialize, Serialize};

use super::JournalError;
use crate::store::writer::RuleChange;

/// A rule entry: the definition, or `null` for a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    pub definition: Option<String>,
}

/// Whether `name` can be a rule's name (and one subject token).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The write an entry on `{stream}.rules.{name}` makes, or why it is
/// skipped.
pub(super) fn change_of(name: &str, payload: &[u8]) -> Result<RuleChange, String> {
    if !valid_name(name) {
        return Err(format!("{name:?} is not a rule name a cluster carries"));
    }
    let entry: RuleEntry = serde_json::from_slice(payload).map_err(|err| err.to_string())?;
    Ok(match entry.definition {
        None => RuleChange::Remove { name: name.into() },
        Some(definition) => {
            let json: serde_json::Value =
                serde_json::from_str(&definition).map_err(|err| err.to_string())?;
            if json.get("name").and_then(|n| n.as_str()) != Some(name) {
                return Err("its definition names another rule".into());
            }
            RuleChange::Put {
                name: name.into(),
                definition,
            }
        }
    })
}

/// Where a rule's entries go. Names with a `.` would split the subject:
/// a cluster's rules are named without one.
fn rule_subject(stream: &str, name: &str) -> Result<String, JournalError> {
    if !valid_name(name) {
        return Err(JournalError::BadChange(
            format!("{name:?}: a cluster's rule names are A-Z a-z 0-9 - _ (no `.`)").into(),
        ));
    }
    Ok(format!("{stream}.rules.{name}"))
}

/// Publishes a rule change to the cluster at `url`, stream `stream`, and
/// waits for the stream to hold it. For the command line.
///
/// # Errors
/// A name the stream cannot carry, NATS out of reach, or the stream
/// refusing it.
pub async fn announce(
    url: &str,
    stream: &str,
    name: &str,
    definition: Option<String>,
) -> Result<(), JournalError> {
    let subject = rule_subject(stream, name)?;
    let payload =
        serde_json::to_vec(&RuleEntry { definition }).map_err(|err| JournalError::Stream {
            stream: stream.to_owned(),
            detail: err.to_string(),
        })?;
    super::publish_once(url, stream, subject, payload).await?;
    Ok(())
}

impl super::Journal {
    /// Publishes a rule change and waits until this hub's applier has
    /// written it (and every entry before it).
    ///
    /// # Errors
    /// A name the stream cannot carry, or NATS refusing or not answering
    /// in time.
    pub async fn change_rule(
        &self,
        name: &str,
        definition: Option<String>,
    ) -> Result<(), JournalError> {
        let subject = rule_subject(&self.settings.stream, name)?;
        self.publish_applied(subject, &RuleEntry { definition })
            .await
    }

    /// The rule an entry on `subject` changes.
    pub(super) fn rule_name<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.settings.stream.as_str())?
            .strip_prefix(".rules.")
    }

    /// Waits until this hub has applied the stream's entries up to
    /// `sequence`.
    pub async fn until_applied(&self, sequence: u64) {
        self.status.until_applied(sequence).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_entry_becomes_a_write_and_a_broken_one_is_skipped() {
        let put = br#"{"definition":"{\"name\":\"warm\",\"kind\":\"offline\"}"}"#;
        assert!(matches!(change_of("warm", put), Ok(RuleChange::Put { .. })));
        assert_eq!(
            change_of("warm", br#"{"definition":null}"#),
            Ok(RuleChange::Remove {
                name: "warm".into()
            })
        );
        assert!(
            change_of("cold", put).is_err(),
            "a definition of another rule"
        );
        assert!(change_of("a b", br#"{"definition":null}"#).is_err());
        assert!(change_of("warm", b"[]").is_err());
        assert!(change_of("warm", br#"{"definition":"not json"}"#).is_err());
    }
}
