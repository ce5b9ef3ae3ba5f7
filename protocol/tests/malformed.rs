//! Input that breaks the protocol comes back as a typed error, never a panic
//! and never an allocation sized by the sender.

use protocol::limits::{
    MAX_COMMAND_ARGS, MAX_FRAME_BYTES, MAX_METRICS, MAX_READINGS_PER_BATCH, MAX_SEQ, MAX_TEXT_LEN,
};
use protocol::{
    Batch, Command, CommandArg, DecodeError, DeviceFrame, Hello, HubFrame, MetricDescriptor,
    Reading,
};

fn hello(device_id: &str, metrics: Vec<MetricDescriptor>) -> DeviceFrame {
    DeviceFrame::Hello(Hello {
        version: 1,
        device_id: device_id.into(),
        model: "m".into(),
        firmware: "f".into(),
        metrics,
    })
}

fn metric(id: u16, name: &str) -> MetricDescriptor {
    MetricDescriptor {
        id,
        name: name.into(),
        unit: String::new(),
    }
}

fn batch(seq: u64, count: usize) -> DeviceFrame {
    DeviceFrame::Batch(Batch {
        seq,
        base_ms: 0,
        readings: vec![
            Reading {
                metric: 1,
                offset_ms: 0,
                value: 1.0
            };
            count
        ],
    })
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = batch(1, 1).encode();
    bytes.push(0);
    assert_eq!(
        DeviceFrame::decode(&bytes),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
}

#[test]
fn an_empty_message_is_truncated() {
    assert_eq!(DeviceFrame::decode(&[]), Err(DecodeError::Truncated));
}

#[test]
fn unknown_variants_are_malformed() {
    assert!(matches!(
        DeviceFrame::decode(&[4, 0]),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        HubFrame::decode(&[6, 0]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn frames_over_the_size_limit_are_refused_unread() {
    let bytes = vec![0u8; MAX_FRAME_BYTES + 1];
    assert_eq!(
        DeviceFrame::decode(&bytes),
        Err(DecodeError::TooLarge {
            len: MAX_FRAME_BYTES + 1
        })
    );
    assert_eq!(
        DecodeError::TooLarge { len: 0 }.code(),
        protocol::error_code::TOO_LARGE
    );
}

#[test]
fn too_many_readings_are_refused() {
    let bytes = batch(1, MAX_READINGS_PER_BATCH + 1).encode();
    assert!(
        bytes.len() <= MAX_FRAME_BYTES,
        "the test frame must pass the size check"
    );
    assert_eq!(
        DeviceFrame::decode(&bytes),
        Err(DecodeError::TooMany {
            field: "readings",
            limit: MAX_READINGS_PER_BATCH
        })
    );
    assert!(DeviceFrame::decode(&batch(1, MAX_READINGS_PER_BATCH).encode()).is_ok());
}

#[test]
fn too_many_metrics_are_refused() {
    let metrics = (0..=MAX_METRICS as u16)
        .map(|i| metric(i, &format!("m{i}")))
        .collect();
    assert_eq!(
        DeviceFrame::decode(&hello("d", metrics).encode()),
        Err(DecodeError::TooMany {
            field: "metrics",
            limit: MAX_METRICS
        })
    );
}

#[test]
fn too_many_command_args_are_refused() {
    let args = vec![
        CommandArg {
            name: "a".into(),
            value: String::new()
        };
        MAX_COMMAND_ARGS + 1
    ];
    let frame = HubFrame::Command(Command {
        id: 1,
        name: "x".into(),
        args,
    });
    assert_eq!(
        HubFrame::decode(&frame.encode()),
        Err(DecodeError::TooMany {
            field: "args",
            limit: MAX_COMMAND_ARGS
        })
    );
}

#[test]
fn a_huge_declared_length_with_no_data_is_just_truncated() {
    // Batch, seq 1, base 0, then "2^63 readings follow" and nothing else.
    let mut bytes = vec![1, 1, 0];
    bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert_eq!(DeviceFrame::decode(&bytes), Err(DecodeError::Truncated));
}

#[test]
fn long_texts_are_refused() {
    let mut frame = hello("d", vec![]);
    if let DeviceFrame::Hello(hello) = &mut frame {
        hello.model = "x".repeat(MAX_TEXT_LEN + 1);
    }
    assert_eq!(
        DeviceFrame::decode(&frame.encode()),
        Err(DecodeError::TooLong {
            field: "model",
            limit: MAX_TEXT_LEN
        })
    );
}

#[test]
fn device_ids_are_checked() {
    for bad in ["", "has space", "slash/y", "é", &"x".repeat(65)] {
        assert_eq!(
            DeviceFrame::decode(&hello(bad, vec![]).encode()),
            Err(DecodeError::InvalidDeviceId),
            "{bad:?}"
        );
    }
    assert!(DeviceFrame::decode(&hello("plant-3.line_2:meter", vec![]).encode()).is_ok());
}

#[test]
fn repeated_metric_ids_or_names_are_refused() {
    let same_id = hello("d", vec![metric(1, "a"), metric(1, "b")]);
    let same_name = hello("d", vec![metric(1, "a"), metric(2, "a")]);
    assert_eq!(
        DeviceFrame::decode(&same_id.encode()),
        Err(DecodeError::DuplicateMetric { id: 1 })
    );
    assert_eq!(
        DeviceFrame::decode(&same_name.encode()),
        Err(DecodeError::DuplicateMetric { id: 2 })
    );
}

#[test]
fn empty_metric_names_are_refused() {
    let frame = hello("d", vec![metric(1, "")]);
    assert_eq!(
        DeviceFrame::decode(&frame.encode()),
        Err(DecodeError::Empty {
            field: "metric name"
        })
    );
}

#[test]
fn batches_need_a_seq_and_readings() {
    assert_eq!(
        DeviceFrame::decode(&batch(0, 1).encode()),
        Err(DecodeError::ZeroSeq)
    );
    assert_eq!(
        DeviceFrame::decode(&batch(1, 0).encode()),
        Err(DecodeError::Empty { field: "readings" })
    );
}

#[test]
fn invalid_utf8_is_malformed() {
    // CommandResult id 1, ok, detail of one byte 0xff.
    assert!(matches!(
        DeviceFrame::decode(&[2, 1, 1, 1, 0xff]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn a_bad_bool_is_malformed() {
    assert!(matches!(
        DeviceFrame::decode(&[2, 1, 2, 0]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn a_non_canonical_varint_reads_as_its_value() {
    // Batch seq 1 is `01`; `81 00` spells 1 with a needless continuation.
    let bytes = batch(1, 1).encode();
    assert_eq!(&bytes[..2], &[0x01, 0x01]);
    let mut long = vec![bytes[0], 0x81, 0x00];
    long.extend_from_slice(&bytes[2..]);
    assert_eq!(DeviceFrame::decode(&long), Ok(batch(1, 1)));
}

#[test]
fn a_seq_past_the_storable_range_is_refused() {
    assert!(DeviceFrame::decode(&batch(MAX_SEQ, 1).encode()).is_ok());
    for seq in [MAX_SEQ + 1, u64::MAX] {
        assert_eq!(
            DeviceFrame::decode(&batch(seq, 1).encode()),
            Err(DecodeError::SeqOutOfRange)
        );
    }
}

#[test]
fn control_characters_and_topic_wildcards_are_refused_in_metric_names() {
    for name in [
        "tab\there",
        "nul\0",
        "esc\u{1b}[31m",
        "c1\u{85}",
        "a/b",
        "a+",
        "#",
    ] {
        assert_eq!(
            DeviceFrame::decode(&hello("d", vec![metric(1, name)]).encode()),
            Err(DecodeError::BadCharacter {
                field: "metric name"
            }),
            "{name:?}"
        );
        assert!(!protocol::is_valid_metric_name(name));
    }
    for name in [
        "temperature",
        "Außentemperatur",
        "pm2.5",
        "=SUM(A1)",
        "温度 1",
    ] {
        assert!(
            DeviceFrame::decode(&hello("d", vec![metric(1, name)]).encode()).is_ok(),
            "{name:?}"
        );
    }
}

#[test]
fn control_characters_are_refused_in_units_models_and_firmware() {
    let mut with_unit = metric(1, "t");
    with_unit.unit = "\u{7f}C".into();
    assert_eq!(
        DeviceFrame::decode(&hello("d", vec![with_unit]).encode()),
        Err(DecodeError::BadCharacter { field: "unit" })
    );
    let DeviceFrame::Hello(mut bad_model) = hello("d", vec![metric(1, "t")]) else {
        unreachable!()
    };
    bad_model.firmware = "1.0\r\n".into();
    assert_eq!(
        DeviceFrame::decode(&DeviceFrame::Hello(bad_model).encode()),
        Err(DecodeError::BadCharacter { field: "firmware" })
    );
}

#[test]
fn a_config_must_be_a_json_object_within_its_limit() {
    use protocol::{Config, limits::MAX_CONFIG_BYTES};
    let frame = |json: String| HubFrame::Config(Config { version: 1, json });
    assert!(frame(r#"{"a":1}"#.into()).validate().is_ok());
    assert!(matches!(
        frame("[1,2]".into()).validate(),
        Err(DecodeError::Malformed(_))
    ));
    let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_CONFIG_BYTES));
    assert_eq!(
        frame(long).validate(),
        Err(DecodeError::TooLong {
            field: "config",
            limit: MAX_CONFIG_BYTES
        })
    );
}
