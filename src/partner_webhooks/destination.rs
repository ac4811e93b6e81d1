//! Where a POST may go. A partner chooses the URL, so without rules the
//! service would POST wherever it is told: to the cloud's metadata address,
//! to the database, to an admin port on the node's own network (SSRF).
//!
//! What is checked:
//! - at registration and again before every POST ([`check`]): `https://`
//!   only (`http://` only to loopback, with `PARTNER_WEBHOOKS_ALLOW_HTTP_LOOPBACK`),
//!   no `user:password@`, at most [`MAX_URL_LEN`] characters, and a host
//!   that is not an IP literal of a non-public range nor `localhost`;
//! - at every connection ([`PublicOnly`], the HTTP client's resolver): the
//!   addresses a host name resolves to, so a name that points (or is
//!   re-pointed, DNS rebinding) at a private address is never connected to.
//!
//! What is not: redirects are never followed (the client has none), so a
//! public endpoint cannot bounce the POST inward; no proxy is used (one
//! would resolve names itself). Ranges refused are listed in [`is_public`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    Url,
};

use super::Error;

/// The longest endpoint URL accepted (the database checks the same).
pub const MAX_URL_LEN: usize = 2048;

/// Checks an endpoint URL against the rules above and returns it parsed.
pub fn check(url: &str, allow_http_loopback: bool) -> Result<Url, Error> {
    if url.chars().count() > MAX_URL_LEN {
        return Err(Error::TooLong(MAX_URL_LEN));
    }
    let parsed = Url::parse(url).map_err(|_| Error::Malformed)?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::Credentials);
    }
    let host = parsed.host().ok_or(Error::Malformed)?;
    let loopback = match &host {
        url::Host::Domain(name) => is_localhost(name),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback && allow_http_loopback => {}
        _ => return Err(Error::Scheme),
    }
    if loopback {
        if !allow_http_loopback {
            return Err(Error::PrivateHost(host.to_string()));
        }
        return Ok(parsed);
    }
    let ip = match host {
        url::Host::Domain(_) => return Ok(parsed),
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
    };
    if is_public(ip) {
        Ok(parsed)
    } else {
        Err(Error::PrivateHost(ip.to_string()))
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// An address on the public internet: not loopback, private (10/8,
/// 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16, where cloud
/// metadata lives; fe80::/10), shared (100.64/10), unspecified, "this
/// network" (0/8), benchmarking (198.18/15), documentation, reserved
/// (240/4), broadcast or multicast; IPv4-mapped and -compatible IPv6
/// addresses are judged as their IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4() {
            Some(v4) if !ip.is_loopback() && !ip.is_unspecified() => is_public_v4(v4),
            _ => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8)
}

/// The HTTP client's resolver: resolves as the system does, then keeps only
/// public addresses (and loopback where allowed), so the client can only
/// connect to those. A name with none left fails the POST, which is logged
/// and retried like any other failure.
#[derive(Debug, Clone)]
pub struct PublicOnly {
    pub allow_loopback: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found
                .filter(|a| is_public(a.ip()) || (allow_loopback && a.ip().is_loopback()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Error::NoPublicAddress(host)) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

impl PublicOnly {
    pub fn shared(allow_loopback: bool) -> Arc<Self> {
        Arc::new(Self { allow_loopback })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_https_urls_pass() {
        for url in [
            "https://hooks.example.com/commissions",
            "https://93.184.215.14:8443/x?y=1",
            "https://[2606:4700::6810:85e5]/hook",
        ] {
            assert!(check(url, false).is_ok(), "{url}");
        }
    }

    #[test]
    fn private_loopback_and_plain_http_are_refused() {
        for url in [
            "http://hooks.example.com/",
            "ftp://hooks.example.com/",
            "https://127.0.0.1/",
            "https://localhost/",
            "https://api.localhost/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://user:pass@hooks.example.com/",
            "not a url",
        ] {
            assert!(check(url, false).is_err(), "{url}");
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(check(&long, false), Err(Error::TooLong(_))));
    }

    #[test]
    fn loopback_over_http_only_when_allowed() {
        assert!(check("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check("http://localhost:8080/hook", true).is_ok());
        assert!(check("http://127.0.0.1:8080/hook", false).is_err());
        // The flag opens loopback, not the private network.
        assert!(check("http://10.0.0.1/hook", true).is_err());
        assert!(check("https://10.0.0.1/hook", true).is_err());
    }
}
