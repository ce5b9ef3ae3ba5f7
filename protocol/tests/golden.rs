//! The hex vectors in docs/protocol.md are the contract for device authors:
//! each must decode to the frame named here and re-encode to the same bytes.

use protocol::{
    Ack, Batch, Command, CommandArg, CommandResult, Config, ConfigResult, DeviceFrame, ErrorFrame,
    Hello, HubFrame, MetricDescriptor, Reading, Token, Welcome, error_code,
};

const DOC: &str = include_str!("../../docs/protocol.md");

enum Frame {
    Device(DeviceFrame),
    Hub(HubFrame),
}

fn expected() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "hello",
            Frame::Device(DeviceFrame::Hello(Hello {
                version: 1,
                device_id: "dev-1".into(),
                model: "sim".into(),
                firmware: "1.0".into(),
                metrics: vec![MetricDescriptor {
                    id: 1,
                    name: "temperature".into(),
                    unit: "°C".into(),
                }],
            })),
        ),
        (
            "batch",
            Frame::Device(DeviceFrame::Batch(Batch {
                seq: 1,
                base_ms: 1_700_000_000_000,
                readings: vec![
                    Reading {
                        metric: 1,
                        offset_ms: 0,
                        value: 21.5,
                    },
                    Reading {
                        metric: 1,
                        offset_ms: 1_000,
                        value: 21.75,
                    },
                ],
            })),
        ),
        (
            "command_result",
            Frame::Device(DeviceFrame::CommandResult(CommandResult {
                id: 7,
                ok: true,
                detail: "interval set".into(),
            })),
        ),
        (
            "welcome",
            Frame::Hub(HubFrame::Welcome(Welcome {
                version: 1,
                last_seq: 41,
                sample_interval_ms: 1_000,
            })),
        ),
        ("ack", Frame::Hub(HubFrame::Ack(Ack { seq: 42 }))),
        (
            "token",
            Frame::Hub(HubFrame::Token(Token {
                token: "t0k3n".into(),
            })),
        ),
        (
            "command",
            Frame::Hub(HubFrame::Command(Command {
                id: 7,
                name: "set_interval".into(),
                args: vec![CommandArg {
                    name: "interval_ms".into(),
                    value: "500".into(),
                }],
            })),
        ),
        (
            "config",
            Frame::Hub(HubFrame::Config(Config {
                version: 3,
                json: r#"{"sample_interval_ms":5000}"#.into(),
            })),
        ),
        (
            "config_result",
            Frame::Device(DeviceFrame::ConfigResult(ConfigResult {
                version: 3,
                ok: false,
                detail: "unknown key: colour".into(),
            })),
        ),
        (
            "error",
            Frame::Hub(HubFrame::Error(ErrorFrame {
                code: error_code::SEQ_NOT_INCREASING,
                message: "batch seq 3 does not follow 5".into(),
            })),
        ),
    ]
}

/// The vectors in the document: `<!-- vector: NAME -->` followed by a
/// ```hex block of space-separated bytes.
fn vectors_in_doc() -> Vec<(String, Vec<u8>)> {
    let mut vectors = Vec::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- vector:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let opening = lines.next().expect("a hex block after the vector marker");
        assert_eq!(
            opening.trim(),
            "```hex",
            "vector {name} must be a ```hex block"
        );
        let mut bytes = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            for byte in line.split_whitespace() {
                bytes.push(u8::from_str_radix(byte, 16).expect("hex byte"));
            }
        }
        vectors.push((name.trim().to_owned(), bytes));
    }
    vectors
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_frame_kind_has_a_vector_in_the_document() {
    let documented: Vec<String> = vectors_in_doc().into_iter().map(|(name, _)| name).collect();
    for (name, _) in expected() {
        assert!(
            documented.iter().any(|d| d == name),
            "docs/protocol.md lacks vector {name}"
        );
    }
    assert_eq!(
        documented.len(),
        expected().len(),
        "unknown vectors in docs/protocol.md"
    );
}

#[test]
fn documented_vectors_match_the_code_both_ways() {
    let documented = vectors_in_doc();
    for (name, frame) in expected() {
        let Some((_, bytes)) = documented.iter().find(|(n, _)| n == name) else {
            continue; // reported by the test above
        };
        match frame {
            Frame::Device(frame) => {
                assert_eq!(hex(&frame.encode()), hex(bytes), "encoding of {name}");
                assert_eq!(DeviceFrame::decode(bytes), Ok(frame), "decoding of {name}");
            }
            Frame::Hub(frame) => {
                assert_eq!(hex(&frame.encode()), hex(bytes), "encoding of {name}");
                assert_eq!(HubFrame::decode(bytes), Ok(frame), "decoding of {name}");
            }
        }
    }
}
