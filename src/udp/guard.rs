//! Who may be answered: the guards that keep a UDP echo from being a weapon.
//!
//! A UDP reply goes wherever the request *says* it came from, and that is trivially forged.
//! Two classic harms follow, and the BSD inetd and xinetd guards against them are kept here:
//! - **Loops.** A datagram "from" another UDP service (chargen, echo, daytime, DNS, NTP, …,
//!   all on ports below 1024), or from echod's own port on another machine, would be
//!   answered by that service, whose answer echod would answer… forever (CERT CA-1996-01,
//!   CVE-1999-0103). So low source ports, port 0 and echod's own ports get no reply.
//! - **Reflection.** Forged sources make echod send at a victim. A reply is never larger than
//!   its request (no amplification), sources that cannot be a real sender (multicast,
//!   broadcast, unspecified, 0.0.0.0/8) get nothing, and each source address is held to a
//!   rate (a token bucket) in a table of fixed size, so forged sources cannot grow memory.
//!   Loopback senders are exempt: local benchmarks run free.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Why a datagram was dropped before any reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// From a source no reply may go to (see [`SourceGuard::check`]).
    Guard,
    /// Over its source address's rate.
    Rate,
}

/// The source-address and source-port rules.
#[derive(Clone, Debug)]
pub(crate) struct SourceGuard {
    /// `--udp-allow-low-ports`: a lab may want to answer ports below 1024.
    pub(crate) allow_low_ports: bool,
    /// The ports echod's own UDP sockets are bound to.
    pub(crate) own_ports: Vec<u16>,
}

impl SourceGuard {
    /// Whether a datagram from `source` may be answered. An IPv4-mapped IPv6 source is
    /// judged as the IPv4 address it is.
    pub(crate) fn check(&self, source: SocketAddr) -> Result<(), Refusal> {
        let port = source.port();
        if port == 0 || (port < 1024 && !self.allow_low_ports) || self.own_ports.contains(&port) {
            return Err(Refusal::Guard);
        }
        let acceptable = match source.ip().to_canonical() {
            IpAddr::V4(ip) => {
                !(ip.is_multicast()
                    || ip.is_broadcast()
                    || ip.is_unspecified()
                    || ip.octets()[0] == 0) // 0.0.0.0/8, "this network"
            }
            IpAddr::V6(ip) => !(ip.is_multicast() || ip.is_unspecified()),
        };
        if acceptable {
            Ok(())
        } else {
            Err(Refusal::Guard)
        }
    }
}

/// Source addresses the rate table remembers at once: a fixed size, whatever arrives.
const RATE_TABLE_SIZE: usize = 4096;

/// One remembered source and its bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    source: IpAddr,
    /// Datagrams it may still send now (refilled at `rate` per second, up to `burst`).
    tokens: f64,
    refilled_at: Instant,
}

/// `--udp-rate-per-ip`: a token bucket per source address, in a fixed-size table.
///
/// A source maps to one slot by a keyed hash (the key is random per process, so a sender
/// cannot aim at another's slot). A newcomer in an occupied slot takes it over with a full
/// bucket: forged sources can at worst make the limit looser for a colliding real one,
/// never consume memory or lock anyone out.
#[derive(Debug)]
pub(crate) struct SourceRates {
    /// Datagrams per second per source (also the burst allowed).
    rate: f64,
    /// Loopback sources pass without a token.
    exempt_loopback: bool,
    table: Box<[Option<Bucket>]>,
    hasher: RandomState,
}

impl SourceRates {
    pub(crate) fn new(per_second: u32, exempt_loopback: bool) -> SourceRates {
        SourceRates {
            rate: f64::from(per_second),
            exempt_loopback,
            table: vec![None; RATE_TABLE_SIZE].into_boxed_slice(),
            hasher: RandomState::new(),
        }
    }

    /// Takes a token for `source` if it has one. Loopback sources are not limited (unless
    /// the exemption is off).
    pub(crate) fn allow(&mut self, source: IpAddr, now: Instant) -> Result<(), Refusal> {
        let source = source.to_canonical();
        if self.exempt_loopback && source.is_loopback() {
            return Ok(());
        }
        let slot = (self.hasher.hash_one(source) as usize) % self.table.len();
        let bucket = match &mut self.table[slot] {
            Some(bucket) if bucket.source == source => bucket,
            entry => entry.insert(Bucket {
                source,
                tokens: self.rate,
                refilled_at: now,
            }),
        };
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.rate);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refusal::Rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn guard() -> SourceGuard {
        SourceGuard {
            allow_low_ports: false,
            own_ports: vec![50007],
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn service_ports_port_zero_and_our_own_ports_get_no_reply() {
        let guard = guard();
        for source in [
            "192.0.2.1:0",
            "192.0.2.1:7",    // echo
            "192.0.2.1:19",   // chargen
            "192.0.2.1:53",   // DNS
            "192.0.2.1:123",  // NTP
            "192.0.2.1:1023", // the last privileged port
            "192.0.2.1:50007",
            "[::ffff:192.0.2.1]:7",
            "[2001:db8::1]:53",
        ] {
            assert_eq!(guard.check(addr(source)), Err(Refusal::Guard), "{source}");
        }
        assert_eq!(guard.check(addr("192.0.2.1:1024")), Ok(()));
        assert_eq!(guard.check(addr("[2001:db8::1]:40000")), Ok(()));
    }

    #[test]
    fn low_ports_may_be_allowed_for_a_lab_but_not_port_zero() {
        let mut guard = guard();
        guard.allow_low_ports = true;
        assert_eq!(guard.check(addr("192.0.2.1:7")), Ok(()));
        assert_eq!(guard.check(addr("192.0.2.1:0")), Err(Refusal::Guard));
        assert_eq!(guard.check(addr("192.0.2.1:50007")), Err(Refusal::Guard));
    }

    #[test]
    fn impossible_senders_get_no_reply() {
        let guard = guard();
        for source in [
            "224.0.0.1:5000",
            "255.255.255.255:5000",
            "0.0.0.0:5000",
            "0.1.2.3:5000",
            "[ff02::1]:5000",
            "[::]:5000",
            "[::ffff:224.0.0.1]:5000",
            "[::ffff:0.0.0.0]:5000",
        ] {
            assert_eq!(guard.check(addr(source)), Err(Refusal::Guard), "{source}");
        }
    }

    #[test]
    fn the_rate_is_held_per_source_and_refills_with_time() {
        let mut limit = SourceRates::new(3, true);
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.allow(a, start), Ok(()));
        }
        assert_eq!(limit.allow(a, start), Err(Refusal::Rate));
        assert_eq!(
            limit.allow(b, start),
            Ok(()),
            "another source has its own bucket"
        );
        let later = start + Duration::from_millis(400); // 1.2 tokens back
        assert_eq!(limit.allow(a, later), Ok(()));
        assert_eq!(limit.allow(a, later), Err(Refusal::Rate));
    }

    #[test]
    fn loopback_is_never_limited_and_the_table_never_grows() {
        let mut limit = SourceRates::new(1, true);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(limit.allow("127.0.0.1".parse().unwrap(), now), Ok(()));
            assert_eq!(limit.allow("::1".parse().unwrap(), now), Ok(()));
        }
        // A million forged sources: memory stays the table's fixed size.
        for i in 0..1_000_000u32 {
            let _ = limit.allow(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | i)), now);
        }
        assert_eq!(limit.table.len(), RATE_TABLE_SIZE);
    }
}
