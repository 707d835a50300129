//! Connection admission: how many connections one source and all sources together may hold.
//!
//! A connection over either cap is refused the moment it is accepted (a short `503` on plain
//! HTTP, a close on TLS), so an excess never waits in the listen backlog in front of other
//! clients. A source is an IPv4 address or an IPv6 /64, the block one host usually controls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A source address as the caps and the password throttle count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                // Keep the /64 prefix and tag it so it cannot collide with an IPv4 value.
                None => Source((u128::from(v6) & !u128::from(u64::MAX)) | 1),
            },
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyFromSource,
    TooManyInTotal,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_source: HashMap<Source, usize>,
}

/// Counts open connections against a total and a per-source cap.
pub struct ConnectionGate {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it gives its place back.
pub struct Ticket {
    gate: Arc<ConnectionGate>,
    source: Source,
}

impl ConnectionGate {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admits a connection from `ip`, or says which cap it would break.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let source = Source::of(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::TooManyInTotal);
        }
        let mine = counts.per_source.entry(source).or_insert(0);
        if *mine >= self.max_per_source {
            return Err(Refusal::TooManyFromSource);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Ticket {
            gate: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_source_and_in_total() {
        let gate = ConnectionGate::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t1 = gate.admit(a).unwrap();
        let _t2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::TooManyFromSource));
        let _t3 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refusal::TooManyInTotal));
        drop(t1);
        assert!(gate.admit(a).is_ok());
    }

    #[test]
    fn ipv6_sources_are_64_bit_prefixes() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of("10.0.0.1".parse().unwrap()));
    }
}
