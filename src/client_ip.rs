//! Who the client is: the socket's address, or the address a trusted proxy reports in
//! `X-Forwarded-For`. A header from anyone else is ignored, so a client cannot pick its own
//! address to dodge a per-IP limit.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{ClientIpConfig, Issues};

/// Finds client addresses; built from `client_ip:` in the config.
#[derive(Debug, Clone, Default)]
pub struct ClientIps {
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl ClientIps {
    /// Compile `client_ip:`: every address or CIDR that is not one is an issue.
    pub fn compile(c: &ClientIpConfig, issues: &mut Issues<'_>) -> ClientIps {
        let mut nets = Vec::new();
        for (i, t) in c.trusted_proxies.iter().enumerate() {
            let parsed = t
                .parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => issues.push(
                    format!("client_ip.trusted_proxies[{i}]"),
                    format!("`{t}` is not an address or CIDR"),
                ),
            }
        }
        if c.ipv6_prefix > 128 {
            issues.push("client_ip.ipv6_prefix", "must be at most 128");
        }
        ClientIps::new(nets, c.ipv6_prefix)
    }

    /// Trust `X-Forwarded-For` from `trusted`; group IPv6 clients by `ipv6_prefix` bits.
    pub fn new(trusted: Vec<IpNet>, ipv6_prefix: u8) -> Self {
        Self {
            trusted,
            ipv6_prefix: ipv6_prefix.min(128),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer` carrying these `X-Forwarded-For` values.
    ///
    /// Walks the header from the right past trusted proxies; the first address that is not
    /// one is the client. A malformed entry stops the walk at the last trusted hop.
    pub fn resolve<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl Iterator<Item = &'a http::HeaderValue>,
    ) -> Option<IpAddr> {
        let peer = canonical(peer?);
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = forwarded_for
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = canonical(ip);
                    if !self.is_trusted(client) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Some(client)
    }

    /// Whether a request from `peer` came over https to the proxy in front: `peer` is a
    /// trusted proxy and its `X-Forwarded-Proto` (the last value) says `https`.
    pub fn forwarded_https(&self, peer: Option<IpAddr>, proto: Option<&http::HeaderValue>) -> bool {
        let Some(peer) = peer else { return false };
        self.is_trusted(canonical(peer))
            && proto
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }

    /// The bucket key of a client: IPv4 as is, IPv6 cut to its prefix (a /64 is one site).
    pub fn key(&self, ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => (0xffff_u128 << 32) | u128::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let keep = u32::from(self.ipv6_prefix);
                let mask = if keep == 0 {
                    0
                } else {
                    u128::MAX << (128 - keep)
                };
                // Tag v6 keys so they cannot meet a v4 key.
                (bits & mask) | 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_choose_their_address() {
        let ips = ClientIps::new(vec!["10.0.0.0/8".parse().unwrap()], 64);
        let xff = [hv("1.2.3.4")];
        assert_eq!(
            ips.resolve(Some("203.0.113.9".parse().unwrap()), xff.iter()),
            Some("203.0.113.9".parse().unwrap())
        );
        // From a trusted proxy: the rightmost untrusted hop.
        let xff = [hv("6.6.6.6, 198.51.100.2"), hv("10.1.1.1")];
        assert_eq!(
            ips.resolve(Some("10.0.0.5".parse().unwrap()), xff.iter()),
            Some("198.51.100.2".parse().unwrap())
        );
        // No trust configured: always the socket.
        let none = ClientIps::new(Vec::new(), 64);
        assert_eq!(
            none.resolve(Some("10.0.0.5".parse().unwrap()), xff.iter()),
            Some("10.0.0.5".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let ips = ClientIps::new(Vec::new(), 64);
        let a = ips.key("2001:db8:1:2::1".parse().unwrap());
        let b = ips.key("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ips.key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            ips.key("1.2.3.4".parse().unwrap()),
            ips.key("1.2.3.5".parse().unwrap())
        );
        assert_eq!(
            canonical("::ffff:1.2.3.4".parse().unwrap()),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }
}
