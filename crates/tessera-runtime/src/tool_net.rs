//! Where tools may connect: the SSRF guard of `Api` tools.
//!
//! A target host is resolved here, every address it resolves to is checked, and the connection
//! is then pinned to the checked addresses (reqwest `resolve_to_addrs`), so a DNS answer that
//! changes between the check and the connection (rebinding) cannot reach anything else.
//! Loopback, private (RFC 1918, ULA), link-local (the 169.254.169.254 metadata service
//! included), unspecified, CGNAT, multicast, broadcast, documentation and other special ranges
//! are refused, for IPv4, IPv6 and IPv4 embedded in IPv6 (mapped, NAT64, 6to4), unless the
//! operator allow-lists the host name or a CIDR range containing the address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One entry of `[tools] allow_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    /// A host name (or IP literal), compared case-insensitively with the URL's host.
    Host(String),
    /// An address range: addresses inside it are allowed.
    Net(IpAddr, u8),
}

/// The operator's allow-list of otherwise refused targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPolicy {
    allow: Vec<Allow>,
}

impl NetPolicy {
    /// Parses entries such as `localhost`, `127.0.0.1`, `[::1]`, `10.0.0.0/8`, `fd00::/8`.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut allow = Vec::with_capacity(entries.len());
        for raw in entries {
            let entry = raw.trim();
            if let Some((addr, len)) = entry.split_once('/') {
                let ip: IpAddr = addr
                    .trim_matches(['[', ']'])
                    .parse()
                    .map_err(|_| format!("`{raw}`: not an address range"))?;
                let len: u8 = len
                    .parse()
                    .map_err(|_| format!("`{raw}`: bad prefix length"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if len > max {
                    return Err(format!("`{raw}`: prefix length above {max}"));
                }
                allow.push(Allow::Net(ip, len));
            } else if entry.is_empty() {
                return Err("empty entry".to_owned());
            } else {
                allow.push(Allow::Host(
                    entry.trim_matches(['[', ']']).to_ascii_lowercase(),
                ));
            }
        }
        Ok(Self { allow })
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']);
        self.allow
            .iter()
            .any(|a| matches!(a, Allow::Host(h) if h.eq_ignore_ascii_case(host)))
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|a| match a {
            Allow::Net(net, len) => in_net(ip, *net, *len),
            Allow::Host(h) => h.parse::<IpAddr>().is_ok_and(|allowed| allowed == ip),
        })
    }

    /// Resolves `host` and checks every address; the addresses to pin the connection to.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_matches(['[', ']']);
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| format!("cannot resolve {bare}: {e}"))?
                .collect(),
        };
        self.check(host, addrs)
    }

    /// The check itself, on addresses already resolved: all must be allowed.
    pub fn check(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        if self.host_allowed(host) {
            return Ok(addrs);
        }
        for a in &addrs {
            if is_forbidden(a.ip()) && !self.ip_allowed(a.ip()) {
                return Err(format!(
                    "refused: {host} resolves to {}, a private, loopback, link-local or otherwise \
                     internal address (the operator can allow it in [tools] allow_hosts)",
                    a.ip()
                ));
            }
        }
        Ok(addrs)
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => prefix_eq(&ip.octets(), &net.octets(), len),
        (IpAddr::V6(ip), IpAddr::V6(net)) => prefix_eq(&ip.octets(), &net.octets(), len),
        (IpAddr::V6(ip), IpAddr::V4(_)) => ip
            .to_ipv4_mapped()
            .is_some_and(|v4| in_net(IpAddr::V4(v4), net, len)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let full = usize::from(len / 8);
    let rest = len % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

const V4_FORBIDDEN: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network", unspecified
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // CGNAT
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local, cloud metadata
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation
    ([203, 0, 113, 0], 24),  // documentation
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, broadcast
];

/// Whether an address is one a tool may not reach without the operator's allow-list.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_forbidden(v4),
        IpAddr::V6(v6) => v6_forbidden(v6),
    }
}

fn v4_forbidden(ip: Ipv4Addr) -> bool {
    V4_FORBIDDEN
        .iter()
        .any(|(net, len)| prefix_eq(&ip.octets(), net, *len))
}

fn v6_forbidden(ip: Ipv6Addr) -> bool {
    let o = ip.octets();
    let seg = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible (::a.b.c.d).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_forbidden(v4);
    }
    if seg[..6] == [0; 6] {
        return true;
    }
    // NAT64 (64:ff9b::/96): the embedded IPv4 address decides.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_forbidden(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // 6to4 (2002::/16): the embedded IPv4 address decides.
    if seg[0] == 0x2002 {
        return v4_forbidden(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    let in6 = |net: [u8; 16], len: u8| prefix_eq(&o, &net, len);
    let mut ula = [0u8; 16];
    ula[0] = 0xfc;
    let mut link = [0u8; 16];
    link[0] = 0xfe;
    link[1] = 0x80;
    let mut site = [0u8; 16];
    site[0] = 0xfe;
    site[1] = 0xc0;
    let mut multicast = [0u8; 16];
    multicast[0] = 0xff;
    let mut doc = [0u8; 16];
    doc[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    let mut teredo = [0u8; 16];
    teredo[..2].copy_from_slice(&[0x20, 0x01]);
    let mut discard = [0u8; 16];
    discard[..2].copy_from_slice(&[0x01, 0x00]);
    in6(ula, 7)
        || in6(link, 10)
        || in6(site, 10)
        || in6(multicast, 8)
        || in6(doc, 32)
        || in6(teredo, 32)
        || in6(discard, 64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(is_forbidden(ip(bad)), "{bad}");
        }
        for good in [
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!is_forbidden(ip(good)), "{good}");
        }
    }

    #[test]
    fn the_allow_list_admits_hosts_and_ranges() {
        let p = NetPolicy::new(&["LocalHost".into(), "10.0.0.0/8".into(), "[::1]".into()]).unwrap();
        let at = |s: &str| vec![SocketAddr::new(ip(s), 80)];
        assert!(p.check("localhost", at("127.0.0.1")).is_ok());
        assert!(p.check("internal.example", at("10.9.8.7")).is_ok());
        assert!(p.check("internal.example", at("::ffff:10.9.8.7")).is_ok());
        assert!(p.check("[::1]", at("::1")).is_ok());
        assert!(p.check("other.example", at("127.0.0.1")).is_err());
        assert!(p.check("other.example", at("192.168.0.1")).is_err());
        // Without the allow-list, a name resolving to a private address is refused.
        assert!(NetPolicy::default()
            .check("internal.example", at("10.9.8.7"))
            .is_err());
        // One forbidden address among several refuses the host.
        let mixed = vec![
            SocketAddr::new(ip("1.1.1.1"), 80),
            SocketAddr::new(ip("169.254.169.254"), 80),
        ];
        assert!(NetPolicy::default().check("mixed.example", mixed).is_err());
        assert!(NetPolicy::new(&["10.0.0.0/33".into()]).is_err());
        assert!(NetPolicy::new(&["x/8".into()]).is_err());
    }

    #[tokio::test]
    async fn literals_and_names_are_checked_after_resolution() {
        let p = NetPolicy::default();
        assert!(p.resolve("127.0.0.1", 80).await.is_err());
        assert!(p.resolve("[::1]", 80).await.is_err());
        assert!(p.resolve("localhost", 80).await.is_err());
        assert!(p.resolve("169.254.169.254", 80).await.is_err());
        assert!(p.resolve("10.0.0.1", 80).await.is_err());
    }
}
