//! Decoding arbitrary bytes must never panic, and whatever decodes must
//! re-encode to bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{DeviceFrame, HubFrame};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(frame) = DeviceFrame::decode(bytes) {
        let again = frame.encode();
        assert_eq!(DeviceFrame::decode(&again).map(|f| f.encode()), Ok(again));
    }
    if let Ok(frame) = HubFrame::decode(bytes) {
        let again = frame.encode();
        assert_eq!(HubFrame::decode(&again).map(|f| f.encode()), Ok(again));
    }
});
