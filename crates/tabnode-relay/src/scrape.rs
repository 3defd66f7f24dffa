//! Scraping for flows' `scrape` nodes (issue #15): a web page's readable
//! text, title and links, fetched by the relay behind a guard against
//! server-side request forgery.
//!
//! The guard: only `http`/`https` URLs on ports 80 and 443 or above 1023;
//! a literal IP in a URL and every address a host name resolves to must be
//! public ([`allowed`]: loopback, private, link-local, CGNAT, ULA,
//! IPv4-mapped and -translated, multicast, unspecified, broadcast and
//! documentation ranges are refused) — the resolver is reqwest's own hook,
//! so the connection goes to an address that was checked; redirects are
//! followed by hand, each hop checked the same way; no proxy. Caps: the
//! page's bytes (streamed, cut off past the cap), the time, 5 redirects,
//! HTML only. robots.txt is fetched once per origin (through the same
//! guard), cached for an hour and obeyed for tabnode's user agent. The text
//! is extracted by `dom_smoothie` (a port of Mozilla's Readability), the
//! whole body's text where it finds no article; links are the page's
//! `<a href>`s, made absolute.
//!
//! Loopback is allowed only by [`ScrapeConfig::allow_loopback`], a setting
//! for tests (no command-line flag sets it).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// The user agent robots.txt is read for.
pub const USER_AGENT: &str = "tabnode-scraper";

/// How the relay scrapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeConfig {
    /// Loopback addresses may be fetched: for tests only.
    pub allow_loopback: bool,
    /// Longest a page (with its redirects) may take.
    pub timeout: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            allow_loopback: false,
            timeout: Duration::from_secs(20),
            max_redirects: 5,
        }
    }
}

/// Why a page was not scraped.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Not a URL the scraper fetches.
    #[error("{0}")]
    Url(String),
    /// The URL, or what its host resolves to, is not a public address.
    #[error("{host} is {addr}, not a public address: refused")]
    Forbidden {
        /// The host of the URL.
        host: String,
        /// The address refused.
        addr: IpAddr,
    },
    /// The request failed (resolution, connection, TLS, a refused address
    /// found by the resolver).
    #[error("fetching {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Not a success.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Not HTML.
    #[error("{url} is {kind}, not HTML")]
    NotHtml {
        /// The URL.
        url: String,
        /// Its content type.
        kind: String,
    },
    /// Larger than the cap.
    #[error("{url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        limit: u64,
    },
    /// robots.txt disallows it.
    #[error("{0} is disallowed by its site's robots.txt")]
    Robots(String),
    /// Too many redirects.
    #[error("more than {0} redirects")]
    Redirects(usize),
    /// Out of time.
    #[error("the page took longer than {0} ms")]
    Timeout(u128),
    /// The client could not be built.
    #[error("the HTTP client: {0}")]
    Client(String),
}

/// Whether the scraper may connect to `ip`.
pub fn allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let loopback = v4.is_loopback();
            !(v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (loopback && !allow_loopback)
                || a == 0
                // CGNAT 100.64/10, benchmarking 198.18/15, reserved 240/4.
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
                // IETF protocol assignments 192.0.0/24.
                || (a == 192 && b == 0 && v4.octets()[2] == 0))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return allowed(IpAddr::V4(v4), allow_loopback);
            }
            let s = v6.segments();
            let loopback = v6.is_loopback();
            !(v6.is_unspecified()
                || v6.is_multicast()
                || (loopback && !allow_loopback)
                // ULA fc00::/7, link-local fe80::/10, site-local fec0::/10.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // IPv4-compatible ::/96, NAT64 64:ff9b::/96 and 64:ff9b:1::/48,
                // documentation 2001:db8::/32.
                || (s[..6] == [0; 6] && !loopback)
                || (s[0] == 0x64 && s[1] == 0xff9b)
                || (s[0] == 0x2001 && s[1] == 0xdb8))
        }
    }
}

/// Host names to addresses (the system's resolver in the relay; tests
/// give their own).
pub trait Resolver: Send + Sync {
    /// The addresses of `host`.
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// reqwest's resolver hook: every address checked, a host with any
/// refused address refused whole (a name answering both a public and a
/// private address is a rebinding attempt).
struct Guarded {
    inner: Arc<dyn Resolver>,
    allow_loopback: bool,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = self.inner.lookup(host.clone());
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let ips = lookup.await?;
            if let Some(bad) = ips.iter().find(|ip| !allowed(**ip, allow_loopback)) {
                return Err(Box::new(ScrapeError::Forbidden { host, addr: *bad })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            if ips.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// A scraped page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Where it was fetched from, after redirects.
    pub url: String,
    /// Its title.
    pub title: String,
    /// Its readable text.
    pub text: String,
    /// Its links, absolute, in order, without repeats.
    pub links: Vec<String>,
}

/// How long a site's robots.txt is kept.
const ROBOTS_TTL: Duration = Duration::from_secs(3600);
/// Bytes of robots.txt read at most.
const ROBOTS_BYTES: u64 = 512 << 10;

/// A site's robots.txt rules; `None`: everything allowed.
type Rules = Option<Arc<texting_robots::Robot>>;

/// The relay's scraper.
pub struct Scraper {
    client: reqwest::Client,
    config: ScrapeConfig,
    /// Per origin: when read, and its rules.
    robots: Mutex<HashMap<String, (Instant, Rules)>>,
}

impl std::fmt::Debug for Scraper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraper")
            .field("config", &self.config)
            .finish()
    }
}

impl Scraper {
    /// A scraper resolving names with `resolver`.
    ///
    /// # Errors
    /// [`ScrapeError::Client`] when the TLS set-up fails.
    pub fn new(config: ScrapeConfig, resolver: Arc<dyn Resolver>) -> Result<Self, ScrapeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ScrapeError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(Arc::new(Guarded {
                inner: resolver,
                allow_loopback: config.allow_loopback,
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(format!(
                "{USER_AGENT}/0.1 (+https://example.invalid/tabnode)"
            ))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ScrapeError::Client(e.to_string()))?;
        Ok(Self {
            client,
            config,
            robots: Mutex::new(HashMap::new()),
        })
    }

    /// `url` checked before any connection: scheme, port, literal address.
    fn check(&self, url: &str) -> Result<Url, ScrapeError> {
        let u = Url::parse(url).map_err(|e| ScrapeError::Url(format!("{url:?}: {e}")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(ScrapeError::Url(format!(
                "{url}: only http and https pages are scraped"
            )));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(ScrapeError::Url(format!(
                "{url}: URLs with credentials are not fetched"
            )));
        }
        let Some(host) = u.host() else {
            return Err(ScrapeError::Url(format!("{url}: no host")));
        };
        let port = u.port_or_known_default().unwrap_or(0);
        if port != 80 && port != 443 && port < 1024 {
            return Err(ScrapeError::Url(format!(
                "{url}: port {port} is not a web port"
            )));
        }
        let literal = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = literal.filter(|ip| !allowed(*ip, self.config.allow_loopback)) {
            return Err(ScrapeError::Forbidden {
                host: u.host_str().unwrap_or_default().to_owned(),
                addr: ip,
            });
        }
        Ok(u)
    }

    /// One GET of a checked URL: the response, or a redirect's target.
    async fn get(&self, url: &Url) -> Result<reqwest::Response, ScrapeError> {
        self.client.get(url.clone()).send().await.map_err(|e| {
            // A refusal by the resolver comes back inside the error chain.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if let Some(ScrapeError::Forbidden { host, addr }) = s.downcast_ref() {
                    return ScrapeError::Forbidden {
                        host: host.clone(),
                        addr: *addr,
                    };
                }
                source = s.source();
            }
            ScrapeError::Fetch {
                url: url.to_string(),
                reason: e.without_url().to_string(),
            }
        })
    }

    /// Follows redirects by hand from `url`, each hop checked.
    async fn follow(&self, url: &str) -> Result<(Url, reqwest::Response), ScrapeError> {
        let mut at = self.check(url)?;
        for _ in 0..=self.config.max_redirects {
            let r = self.get(&at).await?;
            if r.status().is_redirection() {
                let Some(next) = r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                else {
                    return Err(ScrapeError::Status {
                        url: at.to_string(),
                        status: r.status().as_u16(),
                    });
                };
                let next = at
                    .join(next)
                    .map_err(|e| ScrapeError::Url(format!("redirect to {next:?}: {e}")))?;
                at = self.check(next.as_str())?;
                continue;
            }
            return Ok((at, r));
        }
        Err(ScrapeError::Redirects(self.config.max_redirects))
    }

    /// The body of `r`, at most `limit` bytes.
    async fn body(url: &Url, mut r: reqwest::Response, limit: u64) -> Result<Vec<u8>, ScrapeError> {
        let too_large = || ScrapeError::TooLarge {
            url: url.to_string(),
            limit,
        };
        if r.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut out = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| ScrapeError::Fetch {
            url: url.to_string(),
            reason: e.without_url().to_string(),
        })? {
            if out.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Whether the site's robots.txt lets tabnode fetch `url`.
    async fn robots_allow(&self, url: &Url) -> bool {
        let origin = url.origin().ascii_serialization();
        let cached = self
            .robots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&origin)
            .filter(|(at, _)| at.elapsed() < ROBOTS_TTL)
            .map(|(_, r)| r.clone());
        let rules = match cached {
            Some(r) => r,
            None => {
                let r = self.read_robots(&origin).await;
                self.robots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(origin, (Instant::now(), r.clone()));
                r
            }
        };
        rules.is_none_or(|r| r.allowed(url.as_str()))
    }

    /// `origin`'s robots.txt rules; `None` (everything allowed) when it
    /// has none or it cannot be read.
    async fn read_robots(&self, origin: &str) -> Rules {
        let (at, r) = self.follow(&format!("{origin}/robots.txt")).await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        let bytes = Self::body(&at, r, ROBOTS_BYTES).await.ok()?;
        texting_robots::Robot::new(USER_AGENT, &bytes)
            .ok()
            .map(Arc::new)
    }

    /// The page at `url`: at most `max_bytes`, HTML, allowed by robots.txt.
    ///
    /// # Errors
    /// [`ScrapeError`], each saying why.
    pub async fn scrape(&self, url: &str, max_bytes: u64) -> Result<Page, ScrapeError> {
        let limit = self.config.timeout;
        tokio::time::timeout(limit, self.scrape_inner(url, max_bytes))
            .await
            .unwrap_or(Err(ScrapeError::Timeout(limit.as_millis())))
    }

    async fn scrape_inner(&self, url: &str, max_bytes: u64) -> Result<Page, ScrapeError> {
        let first = self.check(url)?;
        if !self.robots_allow(&first).await {
            return Err(ScrapeError::Robots(first.to_string()));
        }
        let (at, r) = self.follow(url).await?;
        if at != first && !self.robots_allow(&at).await {
            return Err(ScrapeError::Robots(at.to_string()));
        }
        if !r.status().is_success() {
            return Err(ScrapeError::Status {
                url: at.to_string(),
                status: r.status().as_u16(),
            });
        }
        let kind = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_owned();
        let essence = kind
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_lowercase();
        if essence != "text/html" && essence != "application/xhtml+xml" {
            return Err(ScrapeError::NotHtml {
                url: at.to_string(),
                kind,
            });
        }
        let bytes = Self::body(&at, r, max_bytes).await?;
        Ok(extract(&at, &String::from_utf8_lossy(&bytes)))
    }
}

/// Title, readable text and links of `html` fetched from `url`.
pub fn extract(url: &Url, html: &str) -> Page {
    let doc = dom_query::Document::from(html);
    let mut links = Vec::new();
    for a in doc.select("a[href]").iter() {
        if let Some(href) = a.attr("href") {
            if let Ok(abs) = url.join(href.trim()) {
                let abs = abs.to_string();
                if matches!(abs.split(':').next(), Some("http" | "https")) && !links.contains(&abs)
                {
                    links.push(abs);
                }
            }
        }
    }
    let title_tag = doc.select("title").text().trim().to_owned();
    let article = dom_smoothie::Readability::new(html, Some(url.as_str()), None)
        .ok()
        .and_then(|mut r| r.parse().ok());
    let (title, text) = match article {
        Some(a) if !a.text_content.trim().is_empty() => (
            if a.title.trim().is_empty() {
                title_tag
            } else {
                a.title.trim().to_owned()
            },
            a.text_content.to_string(),
        ),
        _ => {
            doc.select("script, style, noscript, template").remove();
            (title_tag, doc.select("body").text().to_string())
        }
    };
    // Runs of blank space collapsed, paragraphs kept.
    let text = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Page {
        url: url.to_string(),
        title,
        text,
        links,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A loopback HTTP server answering each path with a canned response
    /// (`(status line, content type, body)`); unknown paths are 404.
    async fn server(pages: Vec<(&'static str, &'static str, String, String)>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pages = Arc::new(pages);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let pages = pages.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let (status, extra, body) = pages.iter().find(|(p, ..)| *p == path).map_or(
                        ("404 Not Found", String::new(), String::new()),
                        |(_, st, h, b)| (*st, h.clone(), b.clone()),
                    );
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    fn html(body: &str) -> String {
        "Content-Type: text/html; charset=utf-8\r\n".to_owned() + body
    }

    fn page(path: &'static str, content: &str) -> (&'static str, &'static str, String, String) {
        (path, "200 OK", html(""), content.to_owned())
    }

    fn scraper(allow_loopback: bool, resolver: Arc<dyn Resolver>) -> Scraper {
        Scraper::new(
            ScrapeConfig {
                allow_loopback,
                timeout: Duration::from_secs(10),
                max_redirects: 3,
            },
            resolver,
        )
        .expect("scraper")
    }

    /// A resolver answering every name with fixed addresses.
    struct Fixed(Vec<IpAddr>);

    impl Resolver for Fixed {
        fn lookup(&self, _: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
            let ips = self.0.clone();
            Box::pin(async move { Ok(ips) })
        }
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        for ip in [
            v4(127, 0, 0, 1),
            v4(10, 1, 2, 3),
            v4(172, 16, 0, 1),
            v4(192, 168, 1, 1),
            v4(169, 254, 169, 254),
            v4(100, 64, 0, 1),
            v4(100, 127, 255, 254),
            v4(0, 0, 0, 0),
            v4(0, 1, 2, 3),
            v4(255, 255, 255, 255),
            v4(224, 0, 0, 1),
            v4(192, 0, 2, 1),
            v4(198, 18, 0, 1),
            v4(240, 0, 0, 1),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            "fd00::1".parse().expect("ula"),
            "fc12::1".parse().expect("ula"),
            "fe80::1".parse().expect("link-local"),
            "ff02::1".parse().expect("multicast"),
            "::ffff:10.0.0.1".parse().expect("mapped"),
            "::ffff:127.0.0.1".parse().expect("mapped loopback"),
            "::ffff:169.254.169.254".parse().expect("mapped metadata"),
            "64:ff9b::a9fe:a9fe".parse().expect("nat64"),
            "::a9fe:a9fe".parse().expect("v4-compatible"),
            "2001:db8::1".parse().expect("documentation"),
        ] {
            assert!(!allowed(ip, false), "{ip} must be refused");
        }
        for ip in [
            v4(93, 184, 215, 14),
            v4(8, 8, 8, 8),
            v4(100, 128, 0, 1),
            v4(172, 32, 0, 1),
            "2606:4700::6810:85e5".parse().expect("public v6"),
        ] {
            assert!(allowed(ip, false), "{ip} is public");
        }
        // The test allowance opens loopback only.
        assert!(allowed(v4(127, 0, 0, 1), true));
        assert!(allowed("::1".parse().expect("v6 loopback"), true));
        assert!(!allowed(v4(10, 0, 0, 1), true));
        assert!(!allowed(
            "::ffff:192.168.0.1".parse().expect("mapped"),
            true
        ));
    }

    #[tokio::test]
    async fn literal_addresses_schemes_and_ports_are_checked_before_connecting() {
        let s = scraper(false, Arc::new(SystemResolver));
        for (url, says) in [
            (
                "http://127.0.0.1:8080/",
                "127.0.0.1 is 127.0.0.1, not a public address",
            ),
            ("http://10.0.0.1/", "10.0.0.1 is 10.0.0.1"),
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
            ),
            ("http://[::ffff:192.168.0.1]/", "not a public address"),
            ("http://[fd00::1]:8443/", "not a public address"),
            ("http://0x7f000001/", "not a public address"),
            ("http://2130706433/", "not a public address"),
            ("file:///etc/passwd", "only http and https"),
            ("gopher://example.org/", "only http and https"),
            ("http://example.org:25/", "port 25 is not a web port"),
            ("http://user:pw@example.org/", "credentials"),
            ("not a url", "relative URL without a base"),
        ] {
            let e = s.scrape(url, 1 << 20).await.expect_err(url);
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused() {
        for ips in [
            vec!["10.0.0.7".parse().expect("ip")],
            vec!["169.254.169.254".parse().expect("ip")],
            // A public and a private answer: rebinding, refused whole.
            vec![
                "93.184.215.14".parse().expect("ip"),
                "127.0.0.1".parse().expect("ip"),
            ],
        ] {
            let s = scraper(false, Arc::new(Fixed(ips.clone())));
            let e = s
                .scrape("http://evil.example:8080/", 1 << 20)
                .await
                .expect_err("private");
            assert!(
                matches!(&e, ScrapeError::Forbidden { host, .. } if host == "evil.example"),
                "{ips:?}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn a_page_is_fetched_read_and_its_redirects_checked() {
        let article = format!(
            "<html><head><title>Bees</title><script>var x = 'not text';</script></head><body>\
             <nav><a href=\"/\">Home</a></nav><article><h1>Bees</h1>{}</article>\
             <a href=\"https://example.org/more\">more</a><a href=\"mailto:a@b\">mail</a></body></html>",
            "<p>Bees make honey from the nectar of flowers, and store it in combs of wax. </p>".repeat(12)
        );
        let addr = server(vec![
            page("/bees.html", &article),
            (
                "/moved",
                "301 Moved Permanently",
                "Location: /bees.html\r\n".into(),
                String::new(),
            ),
            (
                "/to-metadata",
                "302 Found",
                "Location: http://169.254.169.254/latest/meta-data/\r\n".into(),
                String::new(),
            ),
            (
                "/data.json",
                "200 OK",
                "Content-Type: application/json\r\n".into(),
                "{}".into(),
            ),
            page("/big.html", &"x".repeat(5000)),
            (
                "/robots.txt",
                "200 OK",
                "Content-Type: text/plain\r\n".into(),
                "User-agent: *\nDisallow: /private/\n".into(),
            ),
            page("/private/secret.html", "<p>secret</p>"),
            (
                "/loop",
                "302 Found",
                "Location: /loop\r\n".into(),
                String::new(),
            ),
        ])
        .await;
        // Loopback needs the test allowance.
        let closed = scraper(false, Arc::new(SystemResolver));
        let e = closed
            .scrape(&format!("http://{addr}/bees.html"), 1 << 20)
            .await
            .expect_err("loopback");
        assert!(matches!(e, ScrapeError::Forbidden { .. }), "{e}");
        let s = scraper(true, Arc::new(SystemResolver));
        let p = s
            .scrape(&format!("http://{addr}/moved"), 1 << 20)
            .await
            .expect("page");
        assert_eq!(p.url, format!("http://{addr}/bees.html"));
        assert_eq!(p.title, "Bees");
        assert!(
            p.text
                .contains("Bees make honey from the nectar of flowers"),
            "{}",
            p.text
        );
        assert!(!p.text.contains("not text"), "{}", p.text);
        assert_eq!(
            p.links,
            [
                format!("http://{addr}/"),
                "https://example.org/more".to_owned()
            ]
        );
        // A redirect to the cloud metadata address is refused at its hop.
        let e = s
            .scrape(&format!("http://{addr}/to-metadata"), 1 << 20)
            .await
            .expect_err("metadata");
        assert!(
            matches!(&e, ScrapeError::Forbidden { addr, .. } if addr.to_string() == "169.254.169.254"),
            "{e}"
        );
        for (path, says) in [
            ("/data.json", "is application/json, not HTML"),
            ("/big.html", "is larger than 4096 bytes"),
            (
                "/private/secret.html",
                "disallowed by its site's robots.txt",
            ),
            ("/missing.html", "answered 404"),
            ("/loop", "more than 3 redirects"),
        ] {
            let e = s
                .scrape(&format!("http://{addr}{path}"), 4096)
                .await
                .expect_err(path);
            assert!(e.to_string().contains(says), "{path}: {e}");
        }
    }
}
