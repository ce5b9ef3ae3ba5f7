//! Sequence decoding that never trusts the length prefix.
//!
//! serde's stock `Vec` decoding preallocates from the declared length (capped
//! at 1 MiB), so a five-byte frame could make the hub reserve a megabyte.
//! These helpers reserve at most the protocol limit, and past the limit they
//! decode and drop elements instead of keeping them, so memory stays at
//! `limit + 1` elements whatever the frame claims. Keeping one element too
//! many lets validation report the limit as a typed error.

use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use serde::Deserializer;
use serde::de::{Deserialize, SeqAccess, Visitor};

use crate::frames::{CommandArg, MetricDescriptor, Reading};
use crate::limits::{MAX_COMMAND_ARGS, MAX_METRICS, MAX_READINGS_PER_BATCH};

struct AtMost<T, const LIMIT: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const LIMIT: usize> Visitor<'de> for AtMost<T, LIMIT> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let keep = LIMIT + 1;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(keep));
        while let Some(item) = seq.next_element::<T>()? {
            if items.len() < keep {
                items.push(item);
            }
        }
        Ok(items)
    }
}

fn at_most<'de, D, T, const LIMIT: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(AtMost::<T, LIMIT>(PhantomData))
}

pub(crate) fn readings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Reading>, D::Error> {
    at_most::<D, Reading, MAX_READINGS_PER_BATCH>(d)
}

pub(crate) fn metrics<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MetricDescriptor>, D::Error> {
    at_most::<D, MetricDescriptor, MAX_METRICS>(d)
}

pub(crate) fn args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CommandArg>, D::Error> {
    at_most::<D, CommandArg, MAX_COMMAND_ARGS>(d)
}
