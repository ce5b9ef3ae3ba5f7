//! The rules of a device connection, without I/O: what a `Hello` must say
//! and what makes a `Batch` acceptable. The session feeds frames in and does
//! what the answers say.

use std::collections::HashMap;

use protocol::limits::MAX_SEQ_JUMP;
use protocol::{Batch, DeviceFrame, ENROLMENT_VERSION, Hello, PROTOCOL_VERSION, error_code};
use tokio::time::Instant;

use crate::commits::{BadBatch, Sample};
use crate::store::devices::Enrolment;

/// A broken rule: the session sends an `Error` frame with this code and
/// message, then closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub message: String,
}

impl Violation {
    fn new(code: u16, message: impl Into<String>) -> Self {
        Violation {
            code,
            message: message.into(),
        }
    }
}

/// Checks the first frame of a connection. `expected_device` is the device
/// the token belongs to, or `None` when the provisioning key was presented
/// (any valid id may then register itself).
///
/// # Errors
/// The frame is not a `Hello`, speaks another protocol version, or names
/// another device.
pub fn check_hello(frame: DeviceFrame, expected_device: Option<&str>) -> Result<Hello, Violation> {
    let DeviceFrame::Hello(hello) = frame else {
        return Err(Violation::new(
            error_code::UNEXPECTED_FRAME,
            "the first frame must be Hello",
        ));
    };
    if hello.version == 0 || hello.version > PROTOCOL_VERSION {
        return Err(Violation::new(
            error_code::UNSUPPORTED_VERSION,
            format!(
                "protocol version {} is not supported; this hub speaks 1 to {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    if expected_device.is_none() && hello.version < ENROLMENT_VERSION {
        return Err(Violation::new(
            error_code::UNSUPPORTED_VERSION,
            format!(
                "the provisioning key needs protocol version {ENROLMENT_VERSION} or later \
                 (the hub issues the device a token of its own); connect with the device's \
                 own token instead"
            ),
        ));
    }
    if let Some(expected) = expected_device
        && hello.device_id != expected
    {
        return Err(Violation::new(
            error_code::WRONG_DEVICE,
            format!(
                "Hello names device {:?} but the token belongs to {expected:?}",
                hello.device_id
            ),
        ));
    }
    Ok(hello)
}

/// What the provisioning key may do for a device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAnswer {
    /// Register it (again) and issue it a token.
    Enrol,
    /// The device is revoked.
    Revoked,
    /// The device has credentials of its own: the key does not reach it.
    Refused(Violation),
}

/// What the key may do for `device_id`, from what the database holds of
/// it (`None`: nothing, a new device).
pub fn key_answer(device_id: &str, found: Option<&Enrolment>) -> KeyAnswer {
    match found {
        None => KeyAnswer::Enrol,
        Some(device) if device.revoked => KeyAnswer::Revoked,
        Some(device) if device.key_claimable => KeyAnswer::Enrol,
        Some(_) => KeyAnswer::Refused(Violation::new(
            error_code::WRONG_DEVICE,
            format!(
                "device {device_id:?} has credentials of its own: the provisioning key only \
                 registers new devices; connect with the device's token"
            ),
        )),
    }
}

/// Whether the key's registration took: the device now holds the token
/// of `hash`. `Err` with what the device is told when it does not (it was
/// revoked meanwhile, or another connection registered it first).
///
/// # Errors
/// The answer for the device, if it is not enrolled with this token.
pub fn enrolled(
    device_id: &str,
    found: Option<&Enrolment>,
    hash: &[u8; 32],
) -> Result<i64, KeyAnswer> {
    match found {
        Some(device) if !device.revoked && device.token_hash.as_ref() == Some(hash) => {
            Ok(device.row)
        }
        Some(device) if !device.revoked => Err(KeyAnswer::Refused(Violation::new(
            error_code::WRONG_DEVICE,
            format!("device {device_id:?} was registered by another connection meanwhile"),
        ))),
        _ => Err(KeyAnswer::Revoked),
    }
}

/// The state of an established connection: which metrics it declared and
/// the highest `seq` the hub knows for its device.
#[derive(Debug, Clone)]
pub struct BatchStream {
    metric_rows: HashMap<u16, i64>,
    previous_seq: Option<u64>,
    /// The highest `seq` known: the stored one (`Welcome.last_seq`), then
    /// each accepted batch's. A batch may jump at most
    /// [`MAX_SEQ_JUMP`] past it.
    highest_seq: u64,
}

impl BatchStream {
    /// Starts a stream with the metric rows its `Hello` registered and the
    /// device's last stored `seq`.
    pub fn new(metric_rows: HashMap<u16, i64>, last_seq: u64) -> Self {
        BatchStream {
            metric_rows,
            previous_seq: None,
            highest_seq: last_seq,
        }
    }

    /// Turns a batch into samples for the writer.
    ///
    /// A seq at or below the hub's committed `last_seq` is fine (a resend,
    /// acknowledged again without being stored twice); within one connection
    /// seqs must strictly increase.
    ///
    /// # Errors
    /// The seq does not increase, or jumps too far (adopted, it would make
    /// the device's later batches "resends" that are never stored); a
    /// reading names an undeclared metric, or a timestamp does not fit.
    pub fn accept(&mut self, batch: &Batch) -> Result<Vec<Sample>, Violation> {
        if let Some(previous) = self.previous_seq
            && batch.seq <= previous
        {
            return Err(Violation::new(
                error_code::SEQ_NOT_INCREASING,
                format!("batch seq {} does not follow {previous}", batch.seq),
            ));
        }
        if batch.seq > self.highest_seq.saturating_add(MAX_SEQ_JUMP) {
            return Err(Violation::new(
                error_code::SEQ_TOO_FAR,
                format!(
                    "batch seq {} jumps more than {MAX_SEQ_JUMP} past {}; number batches on \
                     from Welcome.last_seq",
                    batch.seq, self.highest_seq
                ),
            ));
        }
        let samples = samples(&self.metric_rows, batch)?;
        self.previous_seq = Some(batch.seq);
        self.highest_seq = self.highest_seq.max(batch.seq);
        Ok(samples)
    }
}

/// A batch's readings as samples of the metric rows its `Hello` declared.
///
/// # Errors
/// A reading names an undeclared metric, or a timestamp does not fit.
fn samples(metric_rows: &HashMap<u16, i64>, batch: &Batch) -> Result<Vec<Sample>, Violation> {
    crate::commits::samples_of(metric_rows, batch).map_err(|err| {
        let code = match err {
            BadBatch::BaseOutOfRange(_) => error_code::MALFORMED,
            BadBatch::UnknownMetric(_) => error_code::UNKNOWN_METRIC,
        };
        Violation::new(code, err.to_string())
    })
}

/// A token bucket: `rate` a second, up to one second's worth at once.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes `n` tokens if there are that many.
    fn take(&mut self, n: f64, now: Instant) -> bool {
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate.max(n));
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// How much one device may send; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub frames_per_s: Option<u32>,
    pub readings_per_s: Option<u32>,
}

/// A connection's budget of frames and readings a second.
#[derive(Debug, Clone)]
pub struct Budget {
    frames: Option<Bucket>,
    readings: Option<Bucket>,
}

impl Budget {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Budget {
            frames: limits.frames_per_s.map(|rate| Bucket::new(rate, now)),
            readings: limits.readings_per_s.map(|rate| Bucket::new(rate, now)),
        }
    }

    /// Spends one control frame (a ping or a pong): each costs the hub a
    /// read and, for a ping, a pong to write, so a flood of them is a flood
    /// of frames.
    ///
    /// # Errors
    /// The device is over its frame budget (`RATE_LIMITED`).
    pub fn spend_control(&mut self, now: Instant) -> Result<(), Violation> {
        self.spend(0, now)
    }

    /// Spends one frame carrying `readings` readings.
    ///
    /// # Errors
    /// The device is over its budget (`RATE_LIMITED`).
    pub fn spend(&mut self, readings: usize, now: Instant) -> Result<(), Violation> {
        if let Some(frames) = &mut self.frames
            && !frames.take(1.0, now)
        {
            return Err(Violation::new(
                error_code::RATE_LIMITED,
                format!(
                    "more than {} frames a second; send fewer, larger batches",
                    frames.rate
                ),
            ));
        }
        if let Some(bucket) = &mut self.readings
            && !bucket.take(readings as f64, now)
        {
            return Err(Violation::new(
                error_code::RATE_LIMITED,
                format!("more than {} readings a second", bucket.rate),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use protocol::Reading;

    use super::*;

    fn hello(device_id: &str, version: u16) -> DeviceFrame {
        DeviceFrame::Hello(Hello {
            version,
            ..crate::fixtures::hello(device_id)
        })
    }

    fn batch(seq: u64, readings: &[(u16, u32, f64)]) -> Batch {
        Batch {
            seq,
            base_ms: 1_000,
            readings: readings
                .iter()
                .map(|&(metric, offset_ms, value)| Reading {
                    metric,
                    offset_ms,
                    value,
                })
                .collect(),
        }
    }

    fn stream() -> BatchStream {
        BatchStream::new(HashMap::from([(1, 10), (2, 20)]), 0)
    }

    fn found(revoked: bool, key_claimable: bool, token_hash: Option<[u8; 32]>) -> Enrolment {
        Enrolment {
            row: 7,
            revoked,
            key_claimable,
            token_hash,
        }
    }

    #[test]
    fn the_key_enrols_new_and_still_claimable_devices_only() {
        assert_eq!(key_answer("a", None), KeyAnswer::Enrol);
        assert_eq!(
            key_answer("a", Some(&found(false, true, Some([1; 32])))),
            KeyAnswer::Enrol,
            "an issued token not yet confirmed"
        );
        assert_eq!(
            key_answer("a", Some(&found(false, true, None))),
            KeyAnswer::Enrol,
            "registered with the key before tokens were issued"
        );
        assert_eq!(
            key_answer("a", Some(&found(true, true, None))),
            KeyAnswer::Revoked
        );
        for own in [
            found(false, false, Some([1; 32])),
            found(false, false, None),
        ] {
            let KeyAnswer::Refused(violation) = key_answer("a", Some(&own)) else {
                panic!("a device with credentials of its own is out of the key's reach");
            };
            assert_eq!(violation.code, error_code::WRONG_DEVICE);
        }
    }

    #[test]
    fn an_enrolment_takes_only_if_the_device_holds_this_connections_token() {
        let ours = [3; 32];
        assert_eq!(
            enrolled("a", Some(&found(false, true, Some(ours))), &ours),
            Ok(7)
        );
        assert!(matches!(
            enrolled("a", Some(&found(false, true, Some([4; 32]))), &ours),
            Err(KeyAnswer::Refused(_))
        ));
        assert_eq!(
            enrolled("a", Some(&found(true, true, Some(ours))), &ours),
            Err(KeyAnswer::Revoked)
        );
    }

    #[test]
    fn the_key_needs_a_device_that_can_keep_its_token() {
        let err = check_hello(hello("new-device", 1), None).unwrap_err();
        assert_eq!(err.code, error_code::UNSUPPORTED_VERSION);
        assert!(check_hello(hello("own-token", 1), Some("own-token")).is_ok());
    }

    #[test]
    fn a_seq_far_past_the_stored_one_is_refused_not_adopted() {
        let mut stream = BatchStream::new(HashMap::from([(1, 10)]), 100);
        let err = stream
            .accept(&batch(100 + MAX_SEQ_JUMP + 1, &[(1, 0, 1.0)]))
            .unwrap_err();
        assert_eq!(err.code, error_code::SEQ_TOO_FAR);
        assert!(
            stream
                .accept(&batch(100 + MAX_SEQ_JUMP, &[(1, 0, 1.0)]))
                .is_ok()
        );
        // The jump is measured from the highest seq known, batch by batch.
        assert!(
            stream
                .accept(&batch(100 + 2 * MAX_SEQ_JUMP, &[(1, 0, 1.0)]))
                .is_ok()
        );
    }

    #[test]
    fn pings_spend_the_frame_budget() {
        let start = Instant::now();
        let mut budget = Budget::new(limits(Some(3), None), start);
        for _ in 0..3 {
            assert!(budget.spend_control(start).is_ok());
        }
        assert_eq!(
            budget.spend_control(start).unwrap_err().code,
            error_code::RATE_LIMITED
        );
    }

    #[test]
    fn hello_for_the_tokens_device_is_accepted() {
        assert!(check_hello(hello("a", 1), Some("a")).is_ok());
    }

    #[test]
    fn hello_for_another_device_is_refused() {
        let err = check_hello(hello("b", 1), Some("a")).unwrap_err();
        assert_eq!(err.code, error_code::WRONG_DEVICE);
    }

    #[test]
    fn provisioning_accepts_any_device_id() {
        assert!(check_hello(hello("new-device", PROTOCOL_VERSION), None).is_ok());
    }

    #[test]
    fn unknown_protocol_versions_are_refused() {
        for version in [0, PROTOCOL_VERSION + 1] {
            let err = check_hello(hello("a", version), Some("a")).unwrap_err();
            assert_eq!(err.code, error_code::UNSUPPORTED_VERSION);
        }
    }

    #[test]
    fn a_batch_before_hello_is_an_unexpected_frame() {
        let err = check_hello(DeviceFrame::Batch(batch(1, &[(1, 0, 1.0)])), Some("a")).unwrap_err();
        assert_eq!(err.code, error_code::UNEXPECTED_FRAME);
    }

    #[test]
    fn readings_become_samples_with_absolute_time_and_metric_rows() {
        let samples = stream()
            .accept(&batch(1, &[(1, 0, 20.5), (2, 250, 3.0)]))
            .unwrap();
        assert_eq!(
            samples,
            vec![
                Sample {
                    metric: 10,
                    ts_ms: 1_000,
                    value: Some(20.5)
                },
                Sample {
                    metric: 20,
                    ts_ms: 1_250,
                    value: Some(3.0)
                },
            ]
        );
    }

    #[test]
    fn non_finite_values_become_missing_values() {
        let samples = stream()
            .accept(&batch(1, &[(1, 0, f64::NAN), (1, 1, f64::INFINITY)]))
            .unwrap();
        assert!(samples.iter().all(|s| s.value.is_none()));
    }

    #[test]
    fn seq_must_increase_within_a_connection() {
        let mut stream = stream();
        stream.accept(&batch(5, &[(1, 0, 1.0)])).unwrap();
        stream.accept(&batch(9, &[(1, 0, 1.0)])).unwrap();
        let err = stream.accept(&batch(9, &[(1, 0, 1.0)])).unwrap_err();
        assert_eq!(err.code, error_code::SEQ_NOT_INCREASING);
    }

    #[test]
    fn a_resend_below_the_committed_seq_is_not_a_violation() {
        // The first batch of a connection may repeat an old seq: the writer
        // recognises it and acknowledges it again.
        assert!(stream().accept(&batch(1, &[(1, 0, 1.0)])).is_ok());
    }

    #[test]
    fn an_undeclared_metric_is_refused() {
        let err = stream().accept(&batch(1, &[(7, 0, 1.0)])).unwrap_err();
        assert_eq!(err.code, error_code::UNKNOWN_METRIC);
    }

    #[test]
    fn a_refused_batch_does_not_advance_the_seq() {
        let mut stream = stream();
        assert!(stream.accept(&batch(3, &[(7, 0, 1.0)])).is_err());
        assert!(stream.accept(&batch(3, &[(1, 0, 1.0)])).is_ok());
    }

    #[test]
    fn a_base_time_past_the_storable_range_is_refused() {
        let mut huge = batch(1, &[(1, 0, 1.0)]);
        huge.base_ms = u64::MAX;
        assert_eq!(
            stream().accept(&huge).unwrap_err().code,
            error_code::MALFORMED
        );
    }

    fn limits(frames: Option<u32>, readings: Option<u32>) -> Limits {
        Limits {
            frames_per_s: frames,
            readings_per_s: readings,
        }
    }

    #[test]
    fn a_second_of_frames_may_come_at_once_and_then_one_more_is_refused() {
        let start = Instant::now();
        let mut budget = Budget::new(limits(Some(10), None), start);
        for _ in 0..10 {
            assert!(budget.spend(1, start).is_ok());
        }
        let refused = budget.spend(1, start).unwrap_err();
        assert_eq!(refused.code, error_code::RATE_LIMITED);
        assert!(refused.message.contains("10 frames"), "{}", refused.message);
    }

    #[test]
    fn the_budget_refills_at_its_rate() {
        let start = Instant::now();
        let mut budget = Budget::new(limits(Some(10), None), start);
        for _ in 0..10 {
            budget.spend(1, start).unwrap();
        }
        let later = start + std::time::Duration::from_millis(500);
        for _ in 0..5 {
            assert!(budget.spend(1, later).is_ok());
        }
        assert!(budget.spend(1, later).is_err());
    }

    #[test]
    fn readings_are_counted_apart_from_frames() {
        let start = Instant::now();
        let mut budget = Budget::new(limits(None, Some(1_000)), start);
        assert!(budget.spend(600, start).is_ok());
        assert!(
            budget.spend(600, start).is_err(),
            "1,200 readings in no time"
        );
        // A single batch larger than a second's worth still fits once full.
        let mut budget = Budget::new(limits(None, Some(100)), start);
        let later = start + std::time::Duration::from_secs(5);
        assert!(budget.spend(150, later).is_ok());
    }

    #[test]
    fn no_limits_refuse_nothing() {
        let start = Instant::now();
        let mut budget = Budget::new(limits(None, None), start);
        for _ in 0..10_000 {
            assert!(budget.spend(4_096, start).is_ok());
        }
    }
}
