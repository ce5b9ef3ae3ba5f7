//! One journal entry's bytes: the device's `Hello` (who it is and what its
//! metric ids mean) and one `Batch`, each as the protocol's own frame, so
//! every hub decodes and checks them as it would from a device:
//!
//! ```text
//! [hello length: u32, big-endian][Hello frame][Batch frame]
//! ```
//!
//! The `Hello` travels with every entry so that an entry means the same on
//! a hub that never saw the device connect (a few dozen bytes a batch).

use bytes::{BufMut, Bytes, BytesMut};
use protocol::{Batch, DeviceFrame, Hello};

/// An entry that does not decode (not written by a hub of this version).
#[derive(Debug, thiserror::Error)]
#[error("not a journal entry: {0}")]
pub struct Malformed(String);

/// The `Hello` part of a device's entries, encoded once per connection.
pub fn hello_part(hello: &Hello) -> Bytes {
    Bytes::from(DeviceFrame::Hello(hello.clone()).encode())
}

/// An entry of `batch`, after its device's encoded `Hello`.
pub fn encode(hello: &Bytes, batch: Batch) -> Bytes {
    let batch = DeviceFrame::Batch(batch).encode();
    let mut entry = BytesMut::with_capacity(4 + hello.len() + batch.len());
    entry.put_u32(u32::try_from(hello.len()).unwrap_or(u32::MAX));
    entry.put_slice(hello);
    entry.put_slice(&batch);
    entry.freeze()
}

/// An entry's `Hello`, still encoded (a device's entries all repeat it,
/// so a reader decodes it only when it changes), and its `Batch`.
///
/// # Errors
/// The bytes are not an entry, or the batch breaks the protocol's limits.
pub fn split(entry: &[u8]) -> Result<(&[u8], Batch), Malformed> {
    let (length, rest) = entry
        .split_first_chunk::<4>()
        .ok_or_else(|| Malformed("shorter than its header".into()))?;
    let length = usize::try_from(u32::from_be_bytes(*length)).unwrap_or(usize::MAX);
    if length > rest.len() {
        return Err(Malformed("the Hello runs past the end".into()));
    }
    let (hello, batch) = rest.split_at(length);
    match frame(batch)? {
        DeviceFrame::Batch(batch) => Ok((hello, batch)),
        _ => Err(Malformed("expected a Batch after the Hello".into())),
    }
}

/// The `Hello` part of an entry, decoded.
///
/// # Errors
/// It is not a `Hello`, or breaks the protocol's limits.
pub fn hello(part: &[u8]) -> Result<Hello, Malformed> {
    match frame(part)? {
        DeviceFrame::Hello(hello) => Ok(hello),
        _ => Err(Malformed("expected a Hello".into())),
    }
}

fn frame(bytes: &[u8]) -> Result<DeviceFrame, Malformed> {
    DeviceFrame::decode(bytes).map_err(|err| Malformed(err.to_string()))
}

#[cfg(test)]
mod tests {
    use protocol::Reading;

    use super::*;

    fn hello() -> Hello {
        crate::fixtures::hello("dev-1")
    }

    /// Both parts, decoded.
    fn decode(entry: &[u8]) -> Result<(Hello, Batch), Malformed> {
        let (part, batch) = split(entry)?;
        Ok((super::hello(part)?, batch))
    }

    #[test]
    fn an_entry_decodes_to_the_hello_and_batch_it_was_made_of() {
        let batch = Batch {
            seq: 9,
            base_ms: 1_700_000_000_000,
            readings: vec![Reading {
                metric: 3,
                offset_ms: 5,
                value: 21.5,
            }],
        };
        let part = hello_part(&hello());
        let entry = encode(&part, batch.clone());
        assert_eq!(decode(&entry).unwrap(), (hello(), batch));
        assert_eq!(
            split(&entry).unwrap().0,
            &part[..],
            "the Hello as it was encoded"
        );
    }

    #[test]
    fn truncated_or_foreign_bytes_are_refused() {
        assert!(decode(b"").is_err());
        assert!(decode(&[0, 0, 0, 200, 1]).is_err());
        assert!(decode(b"{\"json\":true}").is_err());
        let hello = hello_part(&hello());
        let mut two_hellos = encode(
            &hello,
            Batch {
                seq: 1,
                base_ms: 0,
                readings: vec![],
            },
        )
        .to_vec();
        two_hellos.truncate(4 + hello.len());
        two_hellos.extend_from_slice(&hello);
        assert!(decode(&two_hellos).is_err());
    }
}
