//! The addresses a relay announces, apart from those it listens on: a relay
//! on a public machine listens on `0.0.0.0` or `::` (or a private address
//! behind a NAT with forwarded ports) and must tell browsers and nodes an
//! address they can reach. `--external-address` gives them: an IP (every
//! transport at its listen port, as a NAT forwarding the same ports does)
//! or a full multiaddr of one transport (its port as the NAT forwards it).
//! They go first in `/api/bootstrap`, and they alone are announced over
//! identify and in circuit reservations.

use std::net::IpAddr;
use std::str::FromStr;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// One `--external-address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalAddress {
    /// Every transport at this IP, on its listen port.
    Ip(IpAddr),
    /// Exactly this address of one transport (a webrtc-direct one gets the
    /// relay's certhash when it names none).
    Multiaddr(Multiaddr),
}

/// Why an external address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Neither an IP nor a multiaddr.
    #[error("{0:?} is neither an IP address nor a multiaddr (/ip4/…/tcp/…)")]
    Unreadable(String),
    /// A multiaddr of no transport the relay listens on.
    #[error("{0} names no transport of the relay (tcp, udp/quic-v1 or udp/webrtc-direct)")]
    NoTransport(Multiaddr),
    /// An IP no one can reach (unspecified or multicast).
    #[error("{0} cannot be reached from anywhere")]
    Unreachable(IpAddr),
    /// A multiaddr that names a peer (the relay adds its own).
    #[error("{0} names a peer id: give the address alone")]
    HasPeer(Multiaddr),
}

impl FromStr for ExternalAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with('/') {
            let m: Multiaddr = s
                .parse()
                .map_err(|_| AddressError::Unreadable(s.to_owned()))?;
            if m.iter().any(|p| matches!(p, Protocol::P2p(_))) {
                return Err(AddressError::HasPeer(m));
            }
            if transport(&m).is_none() {
                return Err(AddressError::NoTransport(m));
            }
            return Ok(Self::Multiaddr(m));
        }
        let ip: IpAddr = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| AddressError::Unreadable(s.to_owned()))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(AddressError::Unreachable(ip));
        }
        Ok(Self::Ip(ip))
    }
}

impl std::fmt::Display for ExternalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Multiaddr(m) => write!(f, "{m}"),
        }
    }
}

/// The relay transport an address is for: `tcp`, `quic` or
/// `webrtc-direct` (a host first, then the transport's protocols).
pub fn transport(addr: &Multiaddr) -> Option<&'static str> {
    let host = addr.iter().next().is_some_and(|p| {
        matches!(
            p,
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
        )
    });
    match tabnode_core::driver::transport_name(addr) {
        name @ ("tcp" | "quic" | "webrtc-direct") if host => Some(name),
        _ => None,
    }
}

impl ExternalAddress {
    /// What this external address announces for the relay's listen address
    /// `listen` (of one transport, certhash included for webrtc-direct);
    /// `None` when it is for another transport.
    pub fn announce(&self, listen: &Multiaddr) -> Option<Multiaddr> {
        let kind = transport(listen)?;
        match self {
            Self::Ip(ip) => {
                // The listen address with its IP replaced: port and certhash
                // stay.
                let host = match ip {
                    IpAddr::V4(v4) => Protocol::Ip4(*v4),
                    IpAddr::V6(v6) => Protocol::Ip6(*v6),
                };
                Some(std::iter::once(host).chain(listen.iter().skip(1)).collect())
            }
            Self::Multiaddr(m) => {
                if transport(m) != Some(kind) {
                    return None;
                }
                let certhash = listen.iter().find(|p| matches!(p, Protocol::Certhash(_)));
                let has_certhash = m.iter().any(|p| matches!(p, Protocol::Certhash(_)));
                Some(match certhash {
                    Some(c) if !has_certhash => m.clone().with(c),
                    _ => m.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    const CERTHASH: &str = "uEiBkgohSFRJ_TKMfIzHrCmZx9CnpYeroWNkIQJrJZYZgow";

    #[test]
    fn an_ip_announces_every_transport_at_its_listen_port() {
        let ext: ExternalAddress = "203.0.113.7".parse().expect("ip");
        assert_eq!(
            ext.announce(&ma("/ip4/0.0.0.0/tcp/4001")),
            Some(ma("/ip4/203.0.113.7/tcp/4001"))
        );
        assert_eq!(
            ext.announce(&ma("/ip4/10.0.0.2/udp/4001/quic-v1")),
            Some(ma("/ip4/203.0.113.7/udp/4001/quic-v1"))
        );
        let webrtc = format!("/ip4/10.0.0.2/udp/4002/webrtc-direct/certhash/{CERTHASH}");
        assert_eq!(
            ext.announce(&ma(&webrtc)),
            Some(ma(&format!(
                "/ip4/203.0.113.7/udp/4002/webrtc-direct/certhash/{CERTHASH}"
            )))
        );
        let v6: ExternalAddress = "[2001:db8::7]".parse().expect("ip6");
        assert_eq!(
            v6.announce(&ma("/ip6/::/tcp/4001")),
            Some(ma("/ip6/2001:db8::7/tcp/4001"))
        );
    }

    #[test]
    fn a_multiaddr_is_for_its_transport_and_gets_the_certhash() {
        let ext: ExternalAddress = "/ip4/203.0.113.7/udp/443/webrtc-direct"
            .parse()
            .expect("multiaddr");
        let listen = ma(&format!(
            "/ip4/10.0.0.2/udp/4002/webrtc-direct/certhash/{CERTHASH}"
        ));
        assert_eq!(
            ext.announce(&listen),
            Some(ma(&format!(
                "/ip4/203.0.113.7/udp/443/webrtc-direct/certhash/{CERTHASH}"
            )))
        );
        assert_eq!(ext.announce(&ma("/ip4/10.0.0.2/tcp/4001")), None);
        let dns: ExternalAddress = "/dns4/relay.example.com/tcp/4001".parse().expect("dns");
        assert_eq!(
            dns.announce(&ma("/ip4/0.0.0.0/tcp/4001")),
            Some(ma("/dns4/relay.example.com/tcp/4001"))
        );
    }

    #[test]
    fn unreadable_unreachable_and_odd_addresses_are_clear_errors() {
        for (input, want) in [
            ("relay.example.com", "neither an IP address nor a multiaddr"),
            ("203.0.113.7:4001", "neither an IP address nor a multiaddr"),
            ("/ip4/1.2.3.4/udp/9/utp", "names no transport"),
            ("/nonsense", "neither an IP address nor a multiaddr"),
            ("0.0.0.0", "cannot be reached"),
            ("::", "cannot be reached"),
            (
                "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWL4Qy6jGQMuhGJdW6YhpThByHWLZhayJyjzzNNhymuCa9",
                "names a peer id",
            ),
        ] {
            let e = input
                .parse::<ExternalAddress>()
                .expect_err(input)
                .to_string();
            assert!(e.contains(want), "{input}: {e}");
        }
    }
}
