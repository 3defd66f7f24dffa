//! The client's address behind reverse proxies the operator trusts.
//!
//! Every per-address decision of the relay (the rate limit, the anonymous
//! allowance, the flow and vector limits) reads the connection's address
//! from axum's `ConnectInfo`. Behind a reverse proxy that is the proxy's
//! address for everyone, so `real_client` replaces it, before any handler
//! runs, with the address the proxies report: `Forwarded` (RFC 7239) or
//! else `X-Forwarded-For`. Only a connection from a configured proxy is
//! believed (anyone else could name any address and get a fresh
//! allowance with each request), and the chain is read from the right:
//! each hop a trusted proxy appended is believed in turn, and the first
//! address that is not itself a trusted proxy is the client. A hop that is
//! not an address (`unknown`, an obfuscated name, garbage) stops the walk
//! at the last proxy believed.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// A trusted proxy that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("trusted proxy {0:?}: not an IP address or network (e.g. 10.0.0.1 or 10.0.0.0/8)")]
pub struct BadProxy(pub String);

/// The reverse proxies whose forwarding headers the relay believes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Networks or single addresses (`10.0.0.0/8`, `::1`).
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, BadProxy> {
        list.iter()
            .map(|s| {
                let s = s.as_ref().trim();
                IpNet::from_str(s)
                    .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
                    .map_err(|_| BadProxy(s.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// No proxy is trusted: forwarding headers are ignored.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a connection from `peer` carrying `headers`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let hops = forwarded_for(headers);
        let mut believed = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop_address(hop) else {
                return believed;
            };
            believed = SocketAddr::new(ip, 0);
            if !self.trusts(ip) {
                return believed;
            }
        }
        believed
    }
}

/// An IPv4 address mapped into IPv6 (a dual-stack listener's view) as the
/// IPv4 address it is, so `10.0.0.0/8` matches `::ffff:10.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The hops the proxies report, client first: every `for=` of the
/// `Forwarded` headers, or where there is none, the entries of the
/// `X-Forwarded-For` headers (several header lines read as one list).
fn forwarded_for(headers: &HeaderMap) -> Vec<String> {
    let lines = |name: &str| {
        headers
            .get_all(name)
            .iter()
            // A value that is not text is a hop that cannot be read.
            .map(|v| v.to_str().map(str::to_owned).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let forwarded = lines("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                    // An element without `for=` names no client.
                    .unwrap_or_default()
            })
            .collect();
    }
    lines("x-forwarded-for")
        .iter()
        .flat_map(|line| line.split(','))
        .map(|hop| hop.trim().to_owned())
        .collect()
}

/// A hop as an address: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn hop_address(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(hop) {
        return Some(canonical(ip));
    }
    if let Ok(sa) = SocketAddr::from_str(hop) {
        return Some(canonical(sa.ip()));
    }
    let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
    IpAddr::from_str(inner).ok().map(canonical)
}

/// Middleware: the request's `ConnectInfo` becomes the client's address
/// (see the module). Without trusted proxies it changes nothing.
pub(crate) async fn real_client(
    State(proxies): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    if !proxies.is_empty() {
        if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
            let client = proxies.client(*peer, request.headers());
            request.extensions_mut().insert(ConnectInfo(client));
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn ip(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().expect("ip"), 0)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let p = TrustedProxies::parse(&["10.0.0.0/8"]).expect("parse");
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(
            p.client(peer("203.0.113.9:5000"), &h),
            peer("203.0.113.9:5000")
        );
        let none = TrustedProxies::default();
        assert_eq!(none.client(peer("10.0.0.1:1"), &h), peer("10.0.0.1:1"));
    }

    #[test]
    fn the_chain_is_read_from_the_right_up_to_the_first_untrusted_hop() {
        let p = TrustedProxies::parse(&["10.0.0.0/8", "192.168.1.1"]).expect("parse");
        // The client put a forged hop first; the proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 192.168.1.1")]);
        assert_eq!(p.client(peer("10.1.2.3:443"), &h), ip("198.51.100.7"));
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(p.client(peer("10.1.2.3:443"), &h), ip("198.51.100.7"));
        // Only proxies: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 192.168.1.1")]);
        assert_eq!(p.client(peer("10.1.2.3:443"), &h), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(
            p.client(peer("10.1.2.3:443"), &HeaderMap::new()),
            peer("10.1.2.3:443")
        );
    }

    #[test]
    fn forwarded_takes_precedence_and_its_forms_are_read() {
        let p = TrustedProxies::parse(&["::1", "127.0.0.1"]).expect("parse");
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            (
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
            ),
        ]);
        assert_eq!(p.client(peer("[::1]:80"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "for=\"192.0.2.60:8080\"")]);
        assert_eq!(p.client(peer("127.0.0.1:80"), &h), ip("192.0.2.60"));
        // A dual-stack listener's mapped address is its IPv4 address.
        assert_eq!(
            p.client(peer("[::ffff:127.0.0.1]:80"), &h),
            ip("192.0.2.60")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_last_believed_proxy() {
        let p = TrustedProxies::parse(&["10.0.0.0/8"]).expect("parse");
        for bad in ["unknown", "_hidden", "not an address", ""] {
            let h = headers(&[("x-forwarded-for", &format!("1.2.3.4, {bad}, 10.0.0.7"))]);
            assert_eq!(p.client(peer("10.0.0.1:1"), &h), ip("10.0.0.7"), "{bad:?}");
        }
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(p.client(peer("10.0.0.1:1"), &h), peer("10.0.0.1:1"));
        let h = headers(&[("forwarded", "proto=https")]);
        assert_eq!(p.client(peer("10.0.0.1:1"), &h), peer("10.0.0.1:1"));
    }

    #[test]
    fn bad_proxies_are_named() {
        let e = TrustedProxies::parse(&["10.0.0.0/8", "ten"]).expect_err("bad");
        assert!(e.to_string().contains("\"ten\""), "{e}");
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse::<&str>(&[])
            .expect("empty")
            .is_empty());
    }
}
