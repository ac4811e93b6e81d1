//! Who is on the other end of a connection. Behind a load balancer every
//! connection comes from the balancer's address, so limits per IP would
//! count all clients as one. A proxy listed in `TRUSTED_PROXIES` may say
//! who its client is (`X-Forwarded-For`, or `Forwarded: for=`); nobody else
//! may, so a client cannot pick its own address by sending the header.

use std::{net::IpAddr, str::FromStr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The networks whose `X-Forwarded-For` / `Forwarded` headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of CIDRs or addresses (`10.0.0.0/8, 127.0.0.1`).
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{part:?} is not a CIDR (10.0.0.0/8) or an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy;
    /// then the nearest address in the forwarding chain that is not one.
    /// (Walking from the right: entries further left were written by
    /// whoever came before, and only the trusted hops vouch for them.)
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return canonical(peer);
        }
        let chain = forwarded_for(headers);
        let mut client = canonical(peer);
        for hop in chain.iter().rev() {
            client = canonical(*hop);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// IPv4 clients of a dual-stack listener arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The forwarding chain, left (first hop) to right (last hop), from
/// `X-Forwarded-For`, or `Forwarded` when that is absent. Unreadable
/// entries end the chain there, so they cannot hide a hop to their right.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let entries: Vec<String> = if xff.is_empty() {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    key.eq_ignore_ascii_case("for")
                        .then(|| value.trim_matches('"').to_owned())
                })
            })
            .collect()
    } else {
        xff.into_iter().map(str::to_owned).collect()
    };
    let parsed: Vec<Option<IpAddr>> = entries.iter().map(|e| parse_node(e)).collect();
    // Keep only the readable suffix: the hops nearest to us.
    let readable = parsed.iter().rev().take_while(|ip| ip.is_some()).count();
    parsed[parsed.len() - readable..]
        .iter()
        .filter_map(|ip| *ip)
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_may_name_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8, 127.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9")]);
        assert_eq!(proxies.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.9"));
        // A client sending the header itself is not believed.
        assert_eq!(proxies.client_ip(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        // Trusted hops in the chain are skipped; a spoofed left entry is not reached.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.9.9.9")]);
        assert_eq!(proxies.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.9"));
        // Forwarded (RFC 7239), with ports and IPv6.
        let h = headers(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=https, for="[2001:db8::1]:4711""#,
        )]);
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &h), ip("2001:db8::1"));
        // Garbage ends the chain: the proxy's own address is what is left.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, not-an-ip")]);
        assert_eq!(proxies.client_ip(ip("10.1.2.3"), &h), ip("10.1.2.3"));
        // No proxies configured: the header is ignored.
        let none = TrustedProxies::default();
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(none.client_ip(ip("10.1.2.3"), &h), ip("10.1.2.3"));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
    }
}
