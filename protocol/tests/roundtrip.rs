//! Every valid frame survives encode → decode unchanged.

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use protocol::limits::MAX_SEQ;
use protocol::{
    Ack, Batch, Command, CommandArg, CommandResult, Config, ConfigResult, DeviceFrame, ErrorFrame,
    Hello, HubFrame, MetricDescriptor, Reading, Token, Welcome,
};

fn device_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,64}"
}

/// Up to 256 bytes: 60 characters of at most 4 bytes each.
fn text() -> impl Strategy<Value = String> {
    ".{0,60}"
}

/// A text for people without control characters (model, firmware, unit).
fn printable() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{0,60}"
}

fn metrics() -> impl Strategy<Value = Vec<MetricDescriptor>> {
    (btree_set("[a-z_]{1,20}", 0..16), any::<u16>(), printable()).prop_map(
        |(names, first, unit)| {
            names
                .into_iter()
                .enumerate()
                .map(|(i, name)| MetricDescriptor {
                    id: first.wrapping_add(i as u16),
                    name,
                    unit: unit.clone(),
                })
                .collect()
        },
    )
}

fn reading() -> impl Strategy<Value = Reading> {
    (any::<u16>(), any::<u32>(), any::<f64>()).prop_map(|(metric, offset_ms, value)| Reading {
        metric,
        offset_ms,
        value,
    })
}

fn device_frame() -> impl Strategy<Value = DeviceFrame> {
    prop_oneof![
        (
            any::<u16>(),
            device_id(),
            printable(),
            printable(),
            metrics()
        )
            .prop_map(|(version, device_id, model, firmware, metrics)| {
                DeviceFrame::Hello(Hello {
                    version,
                    device_id,
                    model,
                    firmware,
                    metrics,
                })
            }),
        (1..=MAX_SEQ, any::<u64>(), vec(reading(), 1..200)).prop_map(|(seq, base_ms, readings)| {
            DeviceFrame::Batch(Batch {
                seq,
                base_ms,
                readings,
            })
        }),
        (any::<u64>(), any::<bool>(), text()).prop_map(|(id, ok, detail)| {
            DeviceFrame::CommandResult(CommandResult { id, ok, detail })
        }),
        (any::<u64>(), any::<bool>(), text()).prop_map(|(version, ok, detail)| {
            DeviceFrame::ConfigResult(ConfigResult {
                version,
                ok,
                detail,
            })
        }),
    ]
}

fn hub_frame() -> impl Strategy<Value = HubFrame> {
    let arg = ("[a-z_]{1,20}", text()).prop_map(|(name, value)| CommandArg { name, value });
    prop_oneof![
        (any::<u16>(), any::<u64>(), any::<u32>()).prop_map(
            |(version, last_seq, sample_interval_ms)| {
                HubFrame::Welcome(Welcome {
                    version,
                    last_seq,
                    sample_interval_ms,
                })
            }
        ),
        any::<u64>().prop_map(|seq| HubFrame::Ack(Ack { seq })),
        (any::<u64>(), "[a-z_]{1,20}", vec(arg, 0..16))
            .prop_map(|(id, name, args)| HubFrame::Command(Command { id, name, args })),
        (any::<u16>(), text())
            .prop_map(|(code, message)| HubFrame::Error(ErrorFrame { code, message })),
        "[0-9a-f]{1,64}".prop_map(|token| HubFrame::Token(Token { token })),
        (any::<u64>(), "[a-z_]{1,20}", any::<i64>()).prop_map(|(version, key, value)| {
            HubFrame::Config(Config {
                version,
                json: format!("{{\"{key}\":{value}}}"),
            })
        }),
    ]
}

proptest! {
    // Compared as bytes: NaN readings are not equal to themselves.
    #[test]
    fn device_frames_round_trip(frame in device_frame()) {
        let bytes = frame.encode();
        let decoded = DeviceFrame::decode(&bytes).expect("a valid frame decodes");
        prop_assert_eq!(decoded.encode(), bytes);
    }

    #[test]
    fn hub_frames_round_trip(frame in hub_frame()) {
        let bytes = frame.encode();
        let decoded = HubFrame::decode(&bytes).expect("a valid frame decodes");
        prop_assert_eq!(decoded, frame);
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = DeviceFrame::decode(&bytes);
        let _ = HubFrame::decode(&bytes);
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_an_error(frame in device_frame()) {
        let bytes = frame.encode();
        for end in 0..bytes.len() {
            prop_assert!(DeviceFrame::decode(&bytes[..end]).is_err());
        }
    }
}
