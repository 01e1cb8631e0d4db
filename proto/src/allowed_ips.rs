//! Cryptokey routing's table: IP prefixes to peers, with longest-prefix match.
//!
//! Each address family keeps one hash map per prefix length in use, longest first; a lookup
//! masks the address to each length in turn and stops at the first hit. Deployments use a
//! handful of distinct lengths (/32, /24, /128, /64, /0 ...), so this is a few hash probes, and
//! it is simple enough to check against a linear scan (see the tests).

// The keys come from the configuration (or `wg set`), never from packets: a fast non-keyed hash
// is safe, and every packet looks up here.
use rustc_hash::FxHashMap as HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix such as `10.99.0.0/24` or `fd99::/64`. Host bits are cleared on construction,
/// as `wg` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not an IP address")]
    Address(String),
    #[error("'{0}' is not a prefix length (0-32 for IPv4, 0-128 for IPv6)")]
    Length(String),
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn mask(width: u8, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let ones = u128::MAX << (128 - u32::from(len));
        ones >> (128 - u32::from(width))
    }
}

impl Cidr {
    /// None when `len` is longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        let (value, width) = bits(addr);
        if len > width {
            return None;
        }
        let masked = value & mask(width, len);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(masked as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(masked)),
        };
        Some(Cidr { addr, len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let (value, width) = bits(ip);
        let (net, _) = bits(self.addr);
        value & mask(width, self.len) == net
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(addr.to_string()))?;
        let width = bits(addr).1;
        let len = match len {
            None => width,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= width)
                .ok_or_else(|| CidrError::Length(l.to_string()))?,
        };
        Cidr::new(addr, len).ok_or_else(|| CidrError::Length(len.to_string()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One address family's prefixes: (length, masked address -> value), longest length first.
#[derive(Clone, Debug)]
struct Table<T> {
    width: u8,
    by_len: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Table<T> {
    fn new(width: u8) -> Self {
        Table {
            width,
            by_len: Vec::new(),
        }
    }

    fn insert(&mut self, key: u128, len: u8, value: T) -> Option<T> {
        let pos = match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(pos) => pos,
            Err(pos) => {
                self.by_len.insert(pos, (len, HashMap::default()));
                pos
            }
        };
        self.by_len[pos].1.insert(key, value)
    }

    fn lookup(&self, value: u128) -> Option<&T> {
        self.by_len
            .iter()
            .find_map(|(len, map)| map.get(&(value & mask(self.width, *len))))
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for (_, map) in &mut self.by_len {
            map.retain(|_, v| keep(v));
        }
        self.by_len.retain(|(_, map)| !map.is_empty());
    }
}

/// The device-wide table. `T` is whatever names a peer (an id).
#[derive(Clone, Debug)]
pub struct AllowedIps<T> {
    v4: Table<T>,
    v6: Table<T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            v4: Table::new(32),
            v6: Table::new(128),
        }
    }
}

impl<T: Clone + PartialEq> AllowedIps<T> {
    /// Maps `cidr` to `value`, returning what it mapped to before (a prefix belongs to exactly
    /// one peer, as in WireGuard: inserting it again moves it).
    pub fn insert(&mut self, cidr: Cidr, value: T) -> Option<T> {
        let (key, _) = bits(cidr.addr);
        match cidr.addr {
            IpAddr::V4(_) => self.v4.insert(key, cidr.len, value),
            IpAddr::V6(_) => self.v6.insert(key, cidr.len, value),
        }
    }

    /// Longest-prefix match.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        let (key, _) = bits(ip);
        match ip {
            IpAddr::V4(_) => self.v4.lookup(key),
            IpAddr::V6(_) => self.v6.lookup(key),
        }
    }

    /// Removes every prefix that maps to `value` (or to what equals it: a value may be
    /// compared by an id it holds).
    pub fn remove_value<Q: ?Sized>(&mut self, value: &Q)
    where
        T: PartialEq<Q>,
    {
        self.v4.retain(|v| v != value);
        self.v6.retain(|v| v != value);
    }

    /// Every prefix that maps to `value` (or to what equals it).
    pub fn prefixes_of<Q: ?Sized>(&self, value: &Q) -> Vec<Cidr>
    where
        T: PartialEq<Q>,
    {
        let mut out = Vec::new();
        for (table, v6) in [(&self.v4, false), (&self.v6, true)] {
            for (len, map) in &table.by_len {
                for (key, v) in map {
                    if v == value {
                        let addr = if v6 {
                            IpAddr::V6(Ipv6Addr::from(*key))
                        } else {
                            IpAddr::V4(Ipv4Addr::from(*key as u32))
                        };
                        out.extend(Cidr::new(addr, *len));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn parse_and_display() {
        let c: Cidr = "10.99.0.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.99.0.0/24");
        assert_eq!(
            "fd99::1/64".parse::<Cidr>().unwrap().to_string(),
            "fd99::/64"
        );
        assert_eq!("10.0.0.1".parse::<Cidr>().unwrap().prefix_len(), 32);
        assert_eq!("::/0".parse::<Cidr>().unwrap().prefix_len(), 0);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd::/129".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::default();
        t.insert("0.0.0.0/0".parse().unwrap(), 0);
        t.insert("10.0.0.0/8".parse().unwrap(), 1);
        t.insert("10.1.0.0/16".parse().unwrap(), 2);
        t.insert("10.1.2.3/32".parse().unwrap(), 3);
        t.insert("fd00::/8".parse().unwrap(), 4);
        fn at(t: &AllowedIps<i32>, s: &str) -> Option<i32> {
            t.lookup(s.parse().unwrap()).copied()
        }
        assert_eq!(at(&t, "10.1.2.3"), Some(3));
        assert_eq!(at(&t, "10.1.2.4"), Some(2));
        assert_eq!(at(&t, "10.2.0.0"), Some(1));
        assert_eq!(at(&t, "192.0.2.1"), Some(0));
        assert_eq!(at(&t, "fd12::1"), Some(4));
        assert_eq!(at(&t, "2001:db8::1"), None);
        t.remove_value(&2);
        assert_eq!(at(&t, "10.1.2.4"), Some(1));
        assert_eq!(t.prefixes_of(&3), vec!["10.1.2.3/32".parse().unwrap()]);
        // Inserting a prefix again moves it to the new owner.
        assert_eq!(t.insert("10.0.0.0/8".parse().unwrap(), 9), Some(1));
        assert_eq!(at(&t, "10.2.0.0"), Some(9));
    }

    /// Against a naive model: a list of (prefix, value) scanned for the longest match.
    #[test]
    fn matches_linear_scan_on_random_queries() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0xa11e);
        let mut table = AllowedIps::default();
        let mut naive: Vec<(Cidr, u32)> = Vec::new();
        // Prefixes clustered under a few roots so that nesting really happens.
        let roots4 = [0x0a00_0000u32, 0xc0a8_0000, 0xc612_0000];
        let roots6 = [0xfd00u128 << 112, 0x2001_0db8u128 << 96];
        for value in 0..400u32 {
            let cidr = if rng.gen_bool(0.5) {
                let root = roots4[rng.gen_range(0..roots4.len())];
                let addr = root | (rng.gen::<u32>() & 0x00ff_ffff);
                Cidr::new(IpAddr::V4(addr.into()), rng.gen_range(0..=32)).unwrap()
            } else {
                let root = roots6[rng.gen_range(0..roots6.len())];
                let addr = root | (rng.gen::<u128>() >> 24);
                Cidr::new(IpAddr::V6(addr.into()), rng.gen_range(0..=128)).unwrap()
            };
            table.insert(cidr, value);
            naive.retain(|(c, _)| *c != cidr);
            naive.push((cidr, value));
        }
        for _ in 0..100_000 {
            let ip = if rng.gen_bool(0.5) {
                let root = roots4[rng.gen_range(0..roots4.len())];
                let noise = if rng.gen_bool(0.9) {
                    rng.gen::<u32>() & 0x00ff_ffff
                } else {
                    rng.gen()
                };
                IpAddr::V4((root ^ noise).into())
            } else {
                let root = roots6[rng.gen_range(0..roots6.len())];
                let noise = if rng.gen_bool(0.9) {
                    rng.gen::<u128>() >> 24
                } else {
                    rng.gen()
                };
                IpAddr::V6((root ^ noise).into())
            };
            let expected = naive
                .iter()
                .filter(|(c, _)| c.contains(ip))
                .max_by_key(|(c, _)| c.prefix_len())
                .map(|(_, v)| *v);
            assert_eq!(table.lookup(ip).copied(), expected, "{ip}");
        }
    }
}
