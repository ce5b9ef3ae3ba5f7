//! [`Invalid`]: why a value from outside the hub (a flag, an MQTT payload
//! or topic template, a provisioning entry) was refused, in words for
//! whoever sent it. Those who refuse such values only ever show why, so
//! one type serves them all.

/// A refused value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(why: String) -> Self {
        Invalid(why)
    }
}

impl From<&str> for Invalid {
    fn from(why: &str) -> Self {
        Invalid(why.to_owned())
    }
}
