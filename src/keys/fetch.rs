//! HTTP side of key discovery: the OIDC discovery document and the JWKS,
//! fetched with bounded time and size, no redirects, https unless loopback.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_LENGTH};
use serde::Deserialize;

/// Largest discovery or JWKS body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Time allowed to open a connection to the issuer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for one whole request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a discovery or JWKS fetch failed. Messages name the URL and the
/// problem in plain words; they are written to logs and to `check-issuer`.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Could not connect, or the connection broke.
    #[error("request to {url} failed: {detail}")]
    Transport {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The request took longer than allowed.
    #[error("request to {url} timed out")]
    Timeout {
        /// The URL.
        url: String,
    },
    /// A non-2xx status (redirects are reported here too; they are never followed).
    #[error("{url} answered HTTP {status}{}", if (300..400).contains(status) { " (redirects are not followed)" } else { "" })]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body was larger than [`MAX_BODY_BYTES`].
    #[error("{url} sent more than {MAX_BODY_BYTES} bytes")]
    TooLarge {
        /// The URL.
        url: String,
    },
    /// The discovery document is not valid JSON of the right shape.
    #[error("{url} is not an OpenID discovery document: {detail}")]
    BadDiscovery {
        /// The URL.
        url: String,
        /// The parse error.
        detail: String,
    },
    /// The discovery document names another issuer (OIDC Discovery §4.3).
    #[error(
        "the discovery document says issuer {found:?}, but the configured issuer is {expected:?}; they must be equal"
    )]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The `issuer` in the document.
        found: String,
    },
    /// `jwks_uri` is missing, not a URL, or plain http off loopback.
    #[error("jwks_uri {uri:?} is not usable: {why}")]
    BadJwksUri {
        /// The value found.
        uri: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// The JWKS document was refused.
    #[error("JWKS at {url}: {source}")]
    Jwks {
        /// The URL.
        url: String,
        /// What is wrong with it.
        #[source]
        source: super::jwk::JwksError,
    },
}

/// A fetched JWKS body and how long the issuer says it may be cached.
#[derive(Debug)]
pub struct JwksBody {
    /// The raw body.
    pub body: Vec<u8>,
    /// `Cache-Control: max-age`, if the response had one.
    pub max_age: Option<Duration>,
    /// The raw Cache-Control header, for `check-issuer`.
    pub cache_control: Option<String>,
}

/// The discovery document fields we use.
#[derive(Debug, Deserialize)]
struct DiscoveryDoc {
    issuer: String,
    jwks_uri: Option<String>,
}

/// An HTTP client for discovery and JWKS: one per process, reused.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    /// Builds the shared client: no redirects, connect and total timeouts.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("clerk-introspect/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }

    /// Fetches `<issuer>/.well-known/openid-configuration`, checks that its
    /// `issuer` equals `issuer` exactly, and returns its `jwks_uri`.
    pub async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let url = discovery_url(issuer);
        let (body, _) = self.get(&url).await?;
        parse_discovery(&url, issuer, &body)
    }

    /// Fetches a JWKS document.
    pub async fn jwks(&self, uri: &str) -> Result<JwksBody, FetchError> {
        let (body, cache_control) = self.get(uri).await?;
        let max_age = cache_control.as_deref().and_then(parse_max_age);
        Ok(JwksBody { body, max_age, cache_control })
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<String>), FetchError> {
        let map_err = |e: reqwest::Error| {
            if e.is_timeout() {
                FetchError::Timeout { url: url.to_owned() }
            } else {
                FetchError::Transport { url: url.to_owned(), detail: crate::error_chain(&e) }
            }
        };
        let mut response =
            self.client.get(url).header(http::header::ACCEPT, "application/json").send().await.map_err(map_err)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status { url: url.to_owned(), status: status.as_u16() });
        }
        let declared =
            response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(FetchError::TooLarge { url: url.to_owned() });
        }
        let cache_control = response.headers().get(CACHE_CONTROL).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut body = Vec::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
        while let Some(chunk) = response.chunk().await.map_err(map_err)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge { url: url.to_owned() });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, cache_control))
    }
}

/// Reads a discovery document fetched from `url` for `issuer`: its
/// `issuer` must equal `issuer` exactly, and its `jwks_uri` must pass
/// [`check_key_url`]. Returns the `jwks_uri`.
pub fn parse_discovery(url: &str, issuer: &str, body: &[u8]) -> Result<String, FetchError> {
    let doc: DiscoveryDoc = serde_json::from_slice(body)
        .map_err(|e| FetchError::BadDiscovery { url: url.to_owned(), detail: e.to_string() })?;
    if doc.issuer != issuer {
        return Err(FetchError::IssuerMismatch { expected: issuer.to_owned(), found: doc.issuer });
    }
    let uri = doc
        .jwks_uri
        .ok_or(FetchError::BadJwksUri { uri: String::new(), why: "the discovery document has no jwks_uri" })?;
    check_key_url(&uri).map_err(|why| FetchError::BadJwksUri { uri: uri.clone(), why })?;
    Ok(uri)
}

/// `<issuer>/.well-known/openid-configuration` (a trailing slash on the
/// issuer is not doubled).
pub fn discovery_url(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

/// Checks a URL we will fetch keys from: `https`, or `http` on a loopback
/// host only. Returns why not, in words.
pub fn check_key_url(url: &str) -> Result<(), &'static str> {
    let parsed: http::Uri = url.parse().map_err(|_| "it is not a valid URL")?;
    let host = parsed.host().ok_or("it has no host")?;
    match parsed.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback_host(host) => Ok(()),
        Some("http") => Err("plain http is allowed only on a loopback host (127.0.0.0/8, ::1, localhost); use https"),
        _ => Err("the scheme must be https"),
    }
}

/// Whether `host` (as in a URL: IPv6 may be bracketed) is loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `max-age` from a Cache-Control value; `no-store`/`no-cache` mean zero.
pub fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some((name, v)) = directive.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
            && let Ok(secs) = v.trim().trim_matches('"').parse::<u64>()
        {
            max_age = Some(Duration::from_secs(secs));
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_rule() {
        assert!(check_key_url("https://clerk.example.com/.well-known/jwks.json").is_ok());
        assert!(check_key_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_key_url("http://127.3.4.5/jwks").is_ok());
        assert!(check_key_url("http://[::1]:9/jwks").is_ok());
        assert!(check_key_url("http://localhost/jwks").is_ok());
        assert!(check_key_url("http://clerk.example.com/jwks").unwrap_err().contains("loopback"));
        assert!(check_key_url("http://10.0.0.1/jwks").is_err());
        assert!(check_key_url("http://localhost.evil.com/jwks").is_err());
        assert!(check_key_url("ftp://clerk.example.com/jwks").is_err());
        assert!(check_key_url("not a url").is_err());
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(parse_max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(parse_max_age("max-age=\"60\", must-revalidate"), Some(Duration::from_secs(60)));
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }

    #[test]
    fn discovery_url_does_not_double_slashes() {
        assert_eq!(discovery_url("https://a.b"), "https://a.b/.well-known/openid-configuration");
        assert_eq!(discovery_url("https://a.b/"), "https://a.b/.well-known/openid-configuration");
    }
}
