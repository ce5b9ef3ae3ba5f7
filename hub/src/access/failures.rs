//! Wrong keys, counted per address: after [`LIMIT`] within [`WINDOW`], the
//! address gets 429 with `Retry-After` for [`BLOCK`], whatever it
//! presents. A key has 256 random bits, so this is not what keeps one from
//! being guessed; it keeps a guesser from costing the hub (and a weak
//! `--monitor-token` from being guessed) and makes the attempt visible.
//!
//! Behind a reverse proxy every request comes from the proxy's address:
//! there, one client's wrong keys hold up every client of the proxy, and
//! the proxy should limit by the real address itself (docs/deploy).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong keys an address may present within [`WINDOW`].
pub const LIMIT: u32 = 10;
/// The window wrong keys are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long an address that reached [`LIMIT`] is refused.
pub const BLOCK: Duration = Duration::from_secs(60);
/// Most addresses tracked. Full, addresses whose window is over are
/// forgotten; if none is, a new address is not tracked (it is not
/// limited, and the hub's memory is).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

/// Wrong keys per address.
#[derive(Debug, Default)]
pub struct Failures {
    addresses: Mutex<HashMap<IpAddr, Entry>>,
}

impl Failures {
    /// How much longer `address` is refused, if it is.
    pub fn blocked(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let until = addresses.get(&address)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a wrong key from `address`; returns how long it is refused
    /// now, if this one reached the limit.
    pub fn failed(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if addresses.len() >= MAX_ADDRESSES && !addresses.contains_key(&address) {
            addresses.retain(|_, entry| !over(entry, now));
            if addresses.len() >= MAX_ADDRESSES {
                return None;
            }
        }
        let entry = addresses.entry(address).or_insert(Entry {
            count: 0,
            since: now,
            blocked_until: None,
        });
        if over(entry, now) {
            *entry = Entry {
                count: 0,
                since: now,
                blocked_until: None,
            };
        }
        entry.count += 1;
        if entry.count >= LIMIT {
            entry.blocked_until = Some(now + BLOCK);
            return Some(BLOCK);
        }
        None
    }
}

/// Whether an entry's window and block are both behind `now`.
fn over(entry: &Entry, now: Instant) -> bool {
    now.duration_since(entry.since) >= WINDOW && entry.blocked_until.is_none_or(|t| t <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_limit_blocks_one_address_for_a_while() {
        let failures = Failures::default();
        let start = Instant::now();
        for _ in 1..LIMIT {
            assert_eq!(failures.failed(A, start), None);
        }
        assert_eq!(failures.blocked(A, start), None);
        assert_eq!(failures.failed(A, start), Some(BLOCK));
        assert_eq!(
            failures.blocked(A, start + Duration::from_secs(1)),
            Some(BLOCK - Duration::from_secs(1))
        );
        assert_eq!(failures.blocked(B, start), None, "others are not blocked");
        assert_eq!(failures.blocked(A, start + BLOCK), None);
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_block() {
        let failures = Failures::default();
        let start = Instant::now();
        for i in 0..LIMIT * 3 {
            let at = start + WINDOW / (LIMIT - 2) * i;
            assert_eq!(failures.failed(A, at), None, "failure {i}");
        }
    }
}
