//! `allow_ips` and `deny_ips`: which client addresses may use the proxy (top level) or a
//! route. Each list is compiled at reload into sorted, merged address ranges, one set for
//! IPv4 and one for IPv6, so that a lookup is one binary search however long the list is.
//!
//! The rules, as nginx's `allow`/`deny` ends with a catch-all and Traefik's and Kong's IP
//! filters read: a client in `deny_ips` is refused, whatever `allow_ips` says; a non-empty
//! `allow_ips` refuses every client not in it; two empty lists let everyone through. An
//! IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is the IPv4 address, on either side.
//! This module only decides; the proxy turns a refusal into 403 `ip_denied`.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::Issues;

/// A set of addresses: sorted ranges that neither overlap nor touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// The address as IPv4 when it is an IPv4-mapped IPv6 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Sort and merge ranges, so that a binary search finds the only candidate.
fn merge<T: Ord + Copy>(ranges: &mut Vec<(T, T)>, next: impl Fn(T) -> Option<T>) {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if next(last.1).is_none_or(|after| start <= after) => {
                last.1 = last.1.max(end);
            }
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|r| r.0 <= x);
    after > 0 && ranges[after - 1].1 >= x
}

impl IpSet {
    /// The set of `nets`.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> IpSet {
        let mut set = IpSet::default();
        for net in nets {
            let net = match net {
                // `::ffff:a.b.c.d/n` with n >= 96 is the IPv4 network `a.b.c.d/(n - 96)`.
                IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
                    Some(v4) => {
                        ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
                    }
                    None => net,
                },
                other => other,
            };
            match net {
                IpNet::V4(n) => set
                    .v4
                    .push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => set
                    .v6
                    .push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        merge(&mut set.v4, |x| x.checked_add(1));
        merge(&mut set.v6, |x| x.checked_add(1));
        set
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => find(&self.v6, u128::from(v6)),
        }
    }
}

/// One place's `allow_ips` and `deny_ips`, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    allow: IpSet,
    deny: IpSet,
}

impl IpRules {
    /// Compile `allow` and `deny` (written at `{at}allow_ips` and `{at}deny_ips`, `at` empty
    /// at the top level or `routes[2].`): every entry that is neither an address nor a CIDR
    /// is an issue at its index.
    pub fn compile(
        allow: &[String],
        deny: &[String],
        at: &str,
        issues: &mut Issues<'_>,
    ) -> IpRules {
        let mut parse = |list: &[String], field: &str| {
            let mut nets = Vec::with_capacity(list.len());
            for (i, entry) in list.iter().enumerate() {
                let text = entry.trim();
                match text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                {
                    // `10.1.2.3/8`: the host bits are set, the intent unclear.
                    Ok(net) if net.trunc() != net => issues.push(
                        format!("{at}{field}[{i}]"),
                        format!(
                            "`{entry}` has bits set past its prefix: write `{}`",
                            net.trunc()
                        ),
                    ),
                    Ok(net) => nets.push(net),
                    Err(_) => issues.push(
                        format!("{at}{field}[{i}]"),
                        format!("`{entry}` is not an IP address or CIDR"),
                    ),
                }
            }
            IpSet::new(nets)
        };
        IpRules {
            allow: parse(allow, "allow_ips"),
            deny: parse(deny, "deny_ips"),
        }
    }

    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether a request from `client` may pass. A client of unknown address (not an
    /// internet socket) is refused by a non-empty allow list and passes a deny list.
    pub fn permits(&self, client: Option<IpAddr>) -> bool {
        if self.is_empty() {
            return true;
        }
        match client {
            Some(ip) => {
                !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
            }
            None => self.allow.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LineIndex;

    fn rules(allow: &[&str], deny: &[&str]) -> Result<IpRules, Vec<String>> {
        let index = LineIndex::new("");
        let mut issues = Issues::new(&index);
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = IpRules::compile(&own(allow), &own(deny), "routes[0].", &mut issues);
        match issues.finish(r) {
            Ok(r) => Ok(r),
            Err(e) => Err(e.issues().iter().map(|i| i.to_string()).collect()),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn deny_wins_and_a_non_empty_allow_list_refuses_the_rest() {
        let r = rules(
            &["10.0.0.0/8", "2001:db8::/32"],
            &["10.1.0.0/16", "10.9.9.9"],
        )
        .unwrap();
        assert!(r.permits(ip("10.2.3.4")));
        assert!(!r.permits(ip("10.1.2.3")));
        assert!(!r.permits(ip("10.9.9.9")));
        assert!(r.permits(ip("10.9.9.10")));
        assert!(!r.permits(ip("192.0.2.1")));
        assert!(r.permits(ip("2001:db8:1::1")));
        assert!(!r.permits(ip("2001:db9::1")));
        assert!(!r.permits(None));
        let deny_only = rules(&[], &["192.0.2.0/24"]).unwrap();
        assert!(deny_only.permits(ip("198.51.100.1")));
        assert!(!deny_only.permits(ip("192.0.2.200")));
        assert!(deny_only.permits(None));
        assert!(rules(&[], &[]).unwrap().permits(ip("1.2.3.4")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4_on_both_sides() {
        let r = rules(&[], &["192.0.2.0/24", "::ffff:198.51.100.0/120"]).unwrap();
        assert!(!r.permits(ip("::ffff:192.0.2.7")));
        assert!(!r.permits(ip("198.51.100.9")));
        assert!(r.permits(ip("::ffff:203.0.113.1")));
    }

    #[test]
    fn ranges_merge_and_edges_hold() {
        let set = IpSet::new(
            [
                "10.0.0.0/24",
                "10.0.1.0/24",
                "10.0.0.128/25",
                "0.0.0.0/32",
                "255.255.255.255/32",
            ]
            .iter()
            .map(|s| s.parse().unwrap()),
        );
        assert_eq!(
            set.v4,
            vec![(0, 0), (0x0a00_0000, 0x0a00_01ff), (u32::MAX, u32::MAX)]
        );
        for (addr, inside) in [
            ("9.255.255.255", false),
            ("10.0.0.0", true),
            ("10.0.1.255", true),
            ("10.0.2.0", false),
            ("0.0.0.0", true),
            ("0.0.0.1", false),
            ("255.255.255.255", true),
        ] {
            assert_eq!(set.contains(addr.parse().unwrap()), inside, "{addr}");
        }
        let all = IpSet::new(["::/0".parse().unwrap()]);
        assert!(all.contains("::1".parse().unwrap()));
        assert!(!all.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn bad_entries_name_their_index() {
        let errors = rules(&["10.0.0.0/8", "nope"], &["10.1.2.3/8", "::1/129"]).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("routes[0].allow_ips[1]"), "{errors:?}");
        assert!(errors[1].contains("routes[0].deny_ips[0]") && errors[1].contains("10.0.0.0/8"));
        assert!(errors[2].contains("routes[0].deny_ips[1]"), "{errors:?}");
    }

    #[test]
    fn many_entries_stay_one_search() {
        let nets: Vec<IpNet> = (0..100_000u32)
            .map(|i| IpNet::V4(ipnet::Ipv4Net::new((i << 8).into(), 24).unwrap()))
            .filter(|_| true)
            .step_by(2)
            .collect();
        let set = IpSet::new(nets);
        assert_eq!(set.v4.len(), 50_000);
        assert!(set.contains("0.0.2.5".parse().unwrap()));
        assert!(!set.contains("0.0.1.5".parse().unwrap()));
    }
}
