//! A device with its outbox on disk that sends the numbers `--from` to
//! `--to` as readings of one metric, `n`, one every `--every-us` µs (default 1,000), printing
//! each number once `send` has returned (once it is in the outbox), then
//! waits until the hub has acknowledged everything and prints `done`.
//!
//! ```text
//! cargo run -p telemetry-device --example sequence -- \
//!     --hub ws://127.0.0.1:8080 --id counter-1 --token "$TOKEN" \
//!     --outbox /tmp/counter-1 --from 1 --to 20000
//! ```
//!
//! Kill it (even with `kill -9`) and start it again on the same `--outbox`:
//! what it printed reaches the hub, each number once. The end-to-end tests
//! do exactly that (`tests/tests/outbox.rs`).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use protocol::MetricDescriptor;
use telemetry_device::{Credential, Device, Durability, Event, Options, Storage};

fn usage() -> ! {
    eprintln!(
        "usage: sequence --hub URL --id ID --token TOKEN --outbox DIR --from N --to M \
         [--every-us µS] [--durability power-cut|process]"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags: HashMap<&str, &str> = args
        .chunks(2)
        .map(|pair| match pair {
            [flag, value] => (flag.as_str(), value.as_str()),
            _ => usage(),
        })
        .collect();
    let get = |flag: &str| flags.get(flag).copied().unwrap_or_else(|| usage());
    let number = |flag: &str| get(flag).parse::<u64>().unwrap_or_else(|_| usage());
    let (from, to) = (number("--from"), number("--to"));
    let every = flags
        .get("--every-us")
        .map_or(1_000, |_| number("--every-us"));

    let mut options = Options::new(
        get("--id"),
        telemetry_device::endpoint(get("--hub"))?,
        Credential::Token(get("--token").to_owned()),
    );
    options.metrics = vec![MetricDescriptor {
        id: 1,
        name: "n".into(),
        unit: String::new(),
    }];
    options.batch = 50;
    options.flush = Duration::from_millis(100);
    options.backoff.cap = Duration::from_secs(1);
    options.storage = Storage::Disk {
        dir: get("--outbox").into(),
        max_bytes: 64 << 20,
        durability: match flags.get("--durability").copied() {
            None | Some("power-cut") => Durability::PowerCut,
            Some("process") => Durability::Process,
            Some(_) => usage(),
        },
    };
    let mut device = Device::open(options)?;

    let mut next = from;
    let mut pace = tokio::time::interval(Duration::from_micros(every.max(1)));
    let mut out = std::io::stdout().lock();
    loop {
        if next > to && device.unacknowledged() == 0 {
            break;
        }
        // Act after the select: both branches need the device.
        let event = tokio::select! {
            event = device.poll() => Some(event?),
            _ = pace.tick(), if next <= to => None,
        };
        match event {
            None => {
                device.send(1, next as f64, telemetry_device::now_ms())?;
                writeln!(out, "{next}")?;
                out.flush()?;
                next += 1;
                if next > to {
                    device.seal()?;
                }
            }
            Some(Event::Refused(why) | Event::Lost(Some(why))) => eprintln!("{why}"),
            Some(_) => {}
        }
    }
    writeln!(out, "done")?;
    Ok(())
}
