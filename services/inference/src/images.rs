//! Fetching an image by URL for providers that only take image bytes (Gemini's `inlineData`),
//! provider-neutral so any adapter can use it. The gateway becomes an HTTP client of whatever URL
//! a caller sends, so it defends itself against server-side request forgery:
//!
//! - only `http` and `https` URLs;
//! - the host is resolved here and every resolved address is checked: loopback, private,
//!   link-local, unspecified, multicast, shared, documentation and other non-public ranges are
//!   refused (unless `[images] allow_private_networks`, which tests use to reach a mock on
//!   127.0.0.1);
//! - the connection is pinned to the checked address (reqwest's `resolve`), so a second DNS
//!   answer cannot swap in another address (DNS rebinding);
//! - redirects are followed by hand, at most [`MAX_REDIRECTS`], each hop checked the same way;
//! - a size limit (Content-Length and the bytes actually read) and one deadline for the whole
//!   fetch, redirects included;
//! - the answer must be an image: an `image/*` content type, or, when the type is missing or
//!   generic, bytes that start like PNG, JPEG, GIF or WebP;
//! - per request: at most `max_per_request` image parts and `max_total_bytes` of image bytes,
//!   fetched `fetch_concurrency` at a time (the adapter applies these; see Gemini's request.rs).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use futures::StreamExt;
use reqwest::{StatusCode, Url, header};
use serde::{Deserialize, Serialize};

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// The `[images]` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Largest image the gateway downloads, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Deadline of one fetch, redirects included.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Let image URLs reach loopback and private addresses. Off in production: only for tests
    /// and closed networks.
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Most image parts (URLs and data URLs) in one request sent to a provider that takes bytes.
    #[serde(default = "default_max_per_request")]
    pub max_per_request: usize,
    /// Most image bytes (fetched and data URLs, decoded) in one such request; Gemini takes at
    /// most 20 MB of inline data per request.
    #[serde(default = "default_max_total_bytes")]
    pub max_total_bytes: u64,
    /// Images of one request fetched at the same time.
    #[serde(default = "default_fetch_concurrency")]
    pub fetch_concurrency: usize,
}

fn default_max_per_request() -> usize {
    32
}

fn default_max_total_bytes() -> u64 {
    20 * 1024 * 1024
}

fn default_fetch_concurrency() -> usize {
    4
}

fn default_max_bytes() -> u64 {
    20 * 1024 * 1024
}

fn default_timeout_secs() -> u64 {
    10
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            timeout_secs: default_timeout_secs(),
            allow_private_networks: false,
            max_per_request: default_max_per_request(),
            max_total_bytes: default_max_total_bytes(),
            fetch_concurrency: default_fetch_concurrency(),
        }
    }
}

/// A downloaded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedImage {
    /// `image/png`, `image/jpeg`, ... (parameters stripped).
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

/// Why an image URL could not be used. Every case is the caller's problem (a 400 naming the
/// message part); the messages never carry anything of the gateway's own.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("the image URL is not a valid URL")]
    InvalidUrl,
    #[error("the image URL must use http or https, not {0:?}")]
    Scheme(String),
    #[error("the image URL's host {0:?} could not be resolved")]
    Unresolvable(String),
    #[error(
        "the image URL's host {host:?} resolves to {addr}, a non-public address the gateway does not fetch from"
    )]
    ForbiddenAddress { host: String, addr: IpAddr },
    #[error("the image URL redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects,
    #[error("fetching the image URL failed: HTTP {0}")]
    Status(u16),
    #[error("fetching the image URL failed: {0}")]
    Transport(String),
    #[error("the image at the URL is larger than {0} bytes")]
    TooLarge(u64),
    #[error("fetching the image URL took longer than {0} s")]
    Timeout(u64),
    #[error("the image URL did not return an image (content type {0:?})")]
    NotAnImage(String),
}

/// Fetches images under one [`ImagesConfig`]. Cheap to share.
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    max_bytes: u64,
    timeout: Duration,
    allowed: AddressPolicy,
    /// Most image parts in one request.
    pub max_per_request: usize,
    /// Most image bytes in one request.
    pub max_total_bytes: u64,
    /// Images of one request fetched at the same time.
    pub fetch_concurrency: usize,
}

/// Which resolved addresses may be connected to.
#[derive(Debug, Clone, Copy)]
enum AddressPolicy {
    PublicOnly,
    Any,
    /// Tests: only this one address (to show that a redirect elsewhere is re-checked).
    #[cfg(test)]
    Only(IpAddr),
}

impl AddressPolicy {
    fn allows(self, addr: IpAddr) -> bool {
        match self {
            Self::PublicOnly => is_public(addr),
            Self::Any => true,
            #[cfg(test)]
            Self::Only(only) => addr == only,
        }
    }
}

impl Default for ImageFetcher {
    fn default() -> Self {
        Self::new(&ImagesConfig::default())
    }
}

impl ImageFetcher {
    pub fn new(config: &ImagesConfig) -> Self {
        Self {
            max_bytes: config.max_bytes,
            timeout: Duration::from_secs(config.timeout_secs),
            max_per_request: config.max_per_request,
            max_total_bytes: config.max_total_bytes,
            fetch_concurrency: config.fetch_concurrency.max(1),
            allowed: if config.allow_private_networks {
                AddressPolicy::Any
            } else {
                AddressPolicy::PublicOnly
            },
        }
    }

    /// Downloads the image at `url` (http or https), within the size and time limits.
    pub async fn fetch(&self, url: &str) -> Result<FetchedImage, ImageError> {
        let seconds = self.timeout.as_secs();
        tokio::time::timeout(self.timeout, self.fetch_following_redirects(url))
            .await
            .unwrap_or(Err(ImageError::Timeout(seconds)))
    }

    async fn fetch_following_redirects(&self, url: &str) -> Result<FetchedImage, ImageError> {
        let mut url = Url::parse(url).map_err(|_| ImageError::InvalidUrl)?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self.get_pinned(&url).await?;
            if response.status().is_redirection() {
                let next = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or(ImageError::Status(response.status().as_u16()))?;
                url = next;
                continue;
            }
            return self.read_image(response).await;
        }
        Err(ImageError::TooManyRedirects)
    }

    /// One GET without redirects, connected to an address that was checked.
    async fn get_pinned(&self, url: &Url) -> Result<reqwest::Response, ImageError> {
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(ImageError::Scheme(other.to_owned())),
        }
        let port = url.port_or_known_default().ok_or(ImageError::InvalidUrl)?;
        // A client per hop, because the pinned address is a property of the client. No proxy:
        // a proxy would resolve the name again and undo the check.
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .no_proxy();
        let host = url.host_str().ok_or(ImageError::InvalidUrl)?;
        // IPv6 literals come bracketed.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.check(host, ip)?;
        } else {
            let addr = self.resolve(host, port).await?;
            // Pinned: reqwest connects to this address, not to a fresh DNS answer.
            client = client.resolve(host, addr);
        }
        let client = client
            .build()
            .map_err(|e| ImageError::Transport(e.to_string()))?;
        client
            .get(url.clone())
            .header(header::ACCEPT, "image/*")
            .send()
            .await
            .map_err(|e| transport_error(&e, self.timeout))
    }

    fn check(&self, host: &str, addr: IpAddr) -> Result<(), ImageError> {
        if self.allowed.allows(addr) {
            Ok(())
        } else {
            Err(ImageError::ForbiddenAddress {
                host: host.to_owned(),
                addr,
            })
        }
    }

    /// Resolves `domain` and checks every address it resolves to; any forbidden one refuses the
    /// host (a name that also points inside the network is not trusted with the rest).
    async fn resolve(&self, domain: &str, port: u16) -> Result<SocketAddr, ImageError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
            .await
            .map_err(|_| ImageError::Unresolvable(domain.to_owned()))?
            .collect();
        for addr in &addrs {
            self.check(domain, addr.ip())?;
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| ImageError::Unresolvable(domain.to_owned()))
    }

    async fn read_image(&self, response: reqwest::Response) -> Result<FetchedImage, ImageError> {
        if response.status() != StatusCode::OK {
            return Err(ImageError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(ImageError::TooLarge(self.max_bytes));
        }
        let declared = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let mut bytes = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| transport_error(&e, self.timeout))?;
            if (bytes.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(ImageError::TooLarge(self.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        let mime_type = if declared.starts_with("image/") {
            declared
        } else if declared.is_empty()
            || declared == "application/octet-stream"
            || declared == "binary/octet-stream"
        {
            sniff(&bytes)
                .ok_or_else(|| ImageError::NotAnImage(declared.clone()))?
                .to_owned()
        } else {
            return Err(ImageError::NotAnImage(declared));
        };
        Ok(FetchedImage { mime_type, bytes })
    }
}

fn transport_error(e: &reqwest::Error, timeout: Duration) -> ImageError {
    use std::error::Error as _;
    if e.is_timeout() {
        return ImageError::Timeout(timeout.as_secs());
    }
    let what = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match e.source() {
        Some(source) => ImageError::Transport(format!("{what}: {source}")),
        None => ImageError::Transport(what.to_owned()),
    }
}

/// The image type of well-known magic numbers.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Whether an address is on the public internet: not loopback, private, link-local,
/// unspecified, multicast, broadcast, shared (CGNAT), documentation, benchmarking or reserved,
/// and for IPv6 not unique-local, site-local, or an IPv4-mapped/NAT64 form of such an address.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT), 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18/15
        || a >= 240) // reserved, 240/4
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, hi, lo] = segments;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return is_public_v4(v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{Router, routing::get};

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn non_public_addresses_are_refused() {
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(!is_public(ip), "{addr} must be refused");
        }
        for addr in [
            "8.8.8.8",
            "142.250.185.78",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(is_public(ip), "{addr} is public");
        }
    }

    #[tokio::test]
    async fn only_http_and_https_urls_are_fetched() {
        let fetcher = ImageFetcher::default();
        for url in [
            "file:///etc/passwd",
            "ftp://example.com/a.png",
            "gopher://x/",
        ] {
            assert!(matches!(
                fetcher.fetch(url).await,
                Err(ImageError::Scheme(_))
            ));
        }
        assert_eq!(
            fetcher.fetch("not a url").await,
            Err(ImageError::InvalidUrl)
        );
    }

    #[tokio::test]
    async fn private_hosts_are_refused_before_connecting() {
        let fetcher = ImageFetcher::default();
        for url in [
            "http://127.0.0.1:9/a.png",
            "http://[::1]:9/a.png",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/a.png",
        ] {
            let err = fetcher.fetch(url).await.unwrap_err();
            assert!(
                matches!(err, ImageError::ForbiddenAddress { .. }),
                "{url}: {err:?}"
            );
        }
    }

    async fn serve(app: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn fetcher(max_bytes: u64, allowed: AddressPolicy) -> ImageFetcher {
        ImageFetcher {
            max_bytes,
            timeout: Duration::from_secs(5),
            allowed,
            ..ImageFetcher::default()
        }
    }

    fn image_server() -> Router {
        Router::new()
            .route(
                "/a.png",
                get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG) }),
            )
            .route("/untyped", get(|| async { PNG }))
            .route(
                "/page",
                get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<html>") }),
            )
            .route(
                "/big",
                get(|| async { ([(header::CONTENT_TYPE, "image/png")], vec![0u8; 4096]) }),
            )
            .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/to-a",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/a.png")]) }),
            )
            .route(
                "/to-private",
                get(|| async {
                    (
                        StatusCode::FOUND,
                        [(header::LOCATION, "http://10.255.255.1/a.png")],
                    )
                }),
            )
            .route(
                "/loop",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
            )
    }

    #[tokio::test]
    async fn images_are_fetched_within_limits() {
        let addr = serve(image_server()).await;
        let f = fetcher(1024, AddressPolicy::Only(addr.ip()));
        let url = |path: &str| format!("http://{addr}{path}");

        let image = f.fetch(&url("/a.png")).await.unwrap();
        assert_eq!(
            (image.mime_type.as_str(), image.bytes.as_slice()),
            ("image/png", PNG)
        );
        // Without a content type the bytes decide.
        assert_eq!(
            f.fetch(&url("/untyped")).await.unwrap().mime_type,
            "image/png"
        );
        // Redirects are followed, each hop checked.
        assert_eq!(f.fetch(&url("/to-a")).await.unwrap().bytes, PNG);
        assert!(matches!(
            f.fetch(&url("/to-private")).await,
            Err(ImageError::ForbiddenAddress { .. })
        ));
        assert_eq!(
            f.fetch(&url("/loop")).await,
            Err(ImageError::TooManyRedirects)
        );
        assert_eq!(
            f.fetch(&url("/page")).await,
            Err(ImageError::NotAnImage("text/html".into()))
        );
        assert_eq!(f.fetch(&url("/big")).await, Err(ImageError::TooLarge(1024)));
        assert_eq!(
            f.fetch(&url("/missing")).await,
            Err(ImageError::Status(404))
        );
    }

    #[tokio::test]
    async fn a_slow_image_times_out() {
        let app = Router::new().route(
            "/slow.png",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                PNG
            }),
        );
        let addr = serve(app).await;
        let f = ImageFetcher {
            max_bytes: 1024,
            timeout: Duration::from_millis(200),
            allowed: AddressPolicy::Any,
            ..ImageFetcher::default()
        };
        assert!(matches!(
            f.fetch(&format!("http://{addr}/slow.png")).await,
            Err(ImageError::Timeout(_))
        ));
    }
}
