//! Reading a `CheckRequest`: its headers (the lower-cased `headers` map, or
//! the raw `header_map` when Envoy's `encode_raw_headers` is on), where the
//! token is, whether it is a CORS preflight, and the per-route
//! `context_extensions`. Every scan is bounded.

use std::borrow::Cow;
use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;

use crate::config::authz::AuthzConfig;
use crate::verify::{Expectations, Reason, Rejection};

/// Most `name=value` pairs read from the cookie headers (browsers keep
/// about 180 cookies per domain).
pub const MAX_COOKIES: usize = 256;
/// Most session cookies tried (`__session` and `__session_<suffix>`,
/// distinct values only).
pub const MAX_SESSION_COOKIES: usize = 4;
/// Most values read from one `context_extensions` entry.
pub const MAX_EXTENSION_VALUES: usize = 64;

/// The keys of `context_extensions` this service reads.
pub const EXTENSION_KEYS: [&str; 3] = ["authorized_parties", "audiences", "roles"];

/// The client request's headers, as Envoy sent them.
#[derive(Clone, Copy, Debug)]
pub struct Headers<'a> {
    map: Option<&'a HashMap<String, String>>,
    raw: Option<&'a HeaderMap>,
}

impl<'a> Headers<'a> {
    /// The headers of `http` (both forms; Envoy fills one).
    pub fn of(http: Option<&'a HttpRequest>) -> Headers<'a> {
        Headers { map: http.map(|h| &h.headers), raw: http.and_then(|h| h.header_map.as_ref()) }
    }

    /// Every value of header `name` (lower case). In the `headers` map Envoy
    /// has already merged repeated headers with `,`; in `header_map` each
    /// occurrence is its own value. Keys are matched case-insensitively,
    /// for callers other than Envoy.
    pub fn values(&self, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        let from_map = self
            .map
            .and_then(|m| m.get(name).or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)));
        let from_raw =
            self.raw.into_iter().flat_map(|m| m.headers.iter()).filter(move |h| h.key.eq_ignore_ascii_case(name));
        let from_raw = from_raw.filter_map(|h| {
            if h.raw_value.is_empty() {
                Some(Cow::Borrowed(h.value.as_str()))
            } else {
                std::str::from_utf8(&h.raw_value).ok().map(Cow::Borrowed)
            }
        });
        from_map.map(|v| Cow::Borrowed(v.as_str())).into_iter().chain(from_raw)
    }

    /// The first non-empty value of `name`.
    pub fn first(&self, name: &'a str) -> Option<Cow<'a, str>> {
        self.values(name).find(|v| !v.trim().is_empty())
    }
}

/// Where a token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The token header (`authorization` by default).
    Header,
    /// A session cookie.
    Cookie,
}

impl Source {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Header => "header",
            Source::Cookie => "cookie",
        }
    }
}

/// The tokens to try, in order: one from the header, or up to
/// [`MAX_SESSION_COOKIES`] from session cookies.
#[derive(Debug, PartialEq, Eq)]
pub struct Candidates<'a> {
    /// Where they came from.
    pub source: Source,
    /// The tokens (never empty).
    pub tokens: Vec<Cow<'a, str>>,
}

/// The rejection for a request that carries no token at all.
pub fn missing(config: &AuthzConfig) -> Rejection {
    let header = match config.token_header.as_str() {
        "authorization" => "an Authorization: Bearer <token> header".to_owned(),
        other => format!("a {other} header"),
    };
    let message = match &config.session_cookie {
        Some(cookie) => format!(
            "No session token was sent: expected {header} or a {cookie} cookie holding the Clerk session token."
        ),
        None => format!("No session token was sent: expected {header} holding the Clerk session token."),
    };
    Rejection::with(Reason::Malformed, message)
}

/// Finds the token: the token header first (`Bearer <token>`, scheme in any
/// case; a header of another scheme is not a token), then the session
/// cookies. `Err` when the header is there but unusable.
pub fn find_tokens<'a>(headers: &Headers<'a>, config: &'a AuthzConfig) -> Result<Option<Candidates<'a>>, Rejection> {
    let bare_allowed = config.token_header != "authorization";
    let mut values = headers.values(&config.token_header).filter(|v| !v.trim().is_empty());
    if let Some(value) = values.next() {
        let repeated = values.next().is_some();
        if let Some(token) = bearer(value, bare_allowed) {
            if repeated || token.contains(',') {
                return Err(Rejection::with(
                    Reason::Malformed,
                    format!(
                        "The request carries more than one {} header value; send exactly one bearer token.",
                        config.token_header
                    ),
                ));
            }
            return Ok(Some(Candidates { source: Source::Header, tokens: vec![token] }));
        }
    }
    let Some(cookie) = config.session_cookie.as_deref() else {
        return Ok(None);
    };
    let tokens = session_cookies(headers.values("cookie"), cookie);
    Ok((!tokens.is_empty()).then_some(Candidates { source: Source::Cookie, tokens }))
}

/// The credentials of a `Bearer` header value, or `None` for another
/// scheme or no credentials. With `bare_allowed` (a custom header), a value
/// without a scheme is the token itself.
pub fn bearer(value: Cow<'_, str>, bare_allowed: bool) -> Option<Cow<'_, str>> {
    fn split(v: &str, bare_allowed: bool) -> Option<(usize, usize)> {
        let start = v.len() - v.trim_start_matches([' ', '\t']).len();
        let v_trim = v.trim_matches([' ', '\t']);
        let end = start + v_trim.len();
        match v_trim.split_once([' ', '\t']) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                let token = rest.trim_start_matches([' ', '\t']);
                (!token.is_empty()).then(|| (end - token.len(), end))
            }
            Some(_) => None,
            None if v_trim.eq_ignore_ascii_case("bearer") || v_trim.is_empty() => None,
            None => bare_allowed.then_some((start, end)),
        }
    }
    let (from, to) = split(&value, bare_allowed)?;
    Some(match value {
        Cow::Borrowed(v) => Cow::Borrowed(&v[from..to]),
        Cow::Owned(v) => Cow::Owned(v[from..to].to_owned()),
    })
}

/// The values of the session cookies `name` and `name_<suffix>` (Clerk's
/// multi-app form), suffixed ones first, distinct, at most
/// [`MAX_SESSION_COOKIES`], reading at most [`MAX_COOKIES`] pairs. Pairs are
/// separated by `;` (and `,`, which Envoy uses to merge repeated headers and
/// which no cookie value may contain).
pub fn session_cookies<'a>(headers: impl Iterator<Item = Cow<'a, str>>, name: &str) -> Vec<Cow<'a, str>> {
    let mut budget = MAX_COOKIES;
    let mut suffixed = Vec::new();
    let mut plain = Vec::new();
    for header in headers {
        let found: Vec<(bool, Cow<'a, str>)> = match header {
            Cow::Borrowed(h) => scan(h, name, &mut budget).into_iter().map(|(s, v)| (s, Cow::Borrowed(v))).collect(),
            Cow::Owned(h) => {
                scan(&h, name, &mut budget).into_iter().map(|(s, v)| (s, Cow::Owned(v.to_owned()))).collect()
            }
        };
        for (is_suffixed, value) in found {
            if is_suffixed { suffixed.push(value) } else { plain.push(value) }
        }
        if budget == 0 {
            break;
        }
    }
    let mut out: Vec<Cow<'a, str>> = Vec::new();
    for v in suffixed.into_iter().chain(plain) {
        if out.len() == MAX_SESSION_COOKIES {
            break;
        }
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The session cookies in one header, as `(suffixed, value)`, reading at
/// most `budget` more pairs.
fn scan<'h>(header: &'h str, name: &str, budget: &mut usize) -> Vec<(bool, &'h str)> {
    header
        .split([';', ','])
        .take_while(|_| {
            let more = *budget > 0;
            *budget = budget.saturating_sub(1);
            more
        })
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim_matches([' ', '\t']);
            let suffixed = match key.strip_prefix(name)? {
                "" => false,
                rest => {
                    let suffix = rest.strip_prefix('_')?;
                    let ok = !suffix.is_empty()
                        && suffix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !ok {
                        return None;
                    }
                    true
                }
            };
            let value = value.trim_matches([' ', '\t']);
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            (!value.is_empty()).then_some((suffixed, value))
        })
        .collect()
}

/// A CORS preflight: `OPTIONS` with non-empty `origin` and
/// `access-control-request-method` headers (Envoy's definition).
pub fn is_cors_preflight(http: Option<&HttpRequest>) -> bool {
    let Some(http) = http else { return false };
    let headers = Headers::of(Some(http));
    let method =
        if http.method.is_empty() { headers.first(":method") } else { Some(Cow::Borrowed(http.method.as_str())) };
    method.is_some_and(|m| m.eq_ignore_ascii_case("OPTIONS"))
        && headers.first("origin").is_some()
        && headers.first("access-control-request-method").is_some()
}

/// Per-route expectations from `context_extensions` (`authorized_parties`,
/// `audiences`, `roles`: comma-separated, blanks ignored). Like
/// [`Expectations`], they can only narrow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteExpectations {
    /// `authorized_parties`.
    pub authorized_parties: Vec<String>,
    /// `audiences`.
    pub audiences: Vec<String>,
    /// `roles`.
    pub roles: Vec<String>,
}

impl RouteExpectations {
    /// Reads the three keys of `context_extensions`; other keys are ignored.
    pub fn from_extensions(extensions: Option<&HashMap<String, String>>) -> RouteExpectations {
        let Some(ext) = extensions else { return RouteExpectations::default() };
        let list = |key: &str| -> Vec<String> {
            ext.get(key)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .take(MAX_EXTENSION_VALUES)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        RouteExpectations {
            authorized_parties: list(EXTENSION_KEYS[0]),
            audiences: list(EXTENSION_KEYS[1]),
            roles: list(EXTENSION_KEYS[2]),
        }
    }

    /// As [`Expectations`] for the verifier.
    pub fn as_expectations(&self) -> Expectations<'_> {
        Expectations { authorized_parties: &self.authorized_parties, audiences: &self.audiences, roles: &self.roles }
    }
}

/// The HTTP request inside a `CheckRequest`, if Envoy sent one.
pub fn http_request(request: &CheckRequest) -> Option<&HttpRequest> {
    request.attributes.as_ref()?.request.as_ref()?.http.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;

    fn b(s: &str) -> Cow<'_, str> {
        Cow::Borrowed(s)
    }

    fn cookies<'a>(headers: &[&'a str], name: &str) -> Vec<Cow<'a, str>> {
        session_cookies(headers.iter().map(|h| Cow::Borrowed(*h)), name)
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        assert_eq!(bearer(b("Bearer abc.def.ghi"), false).as_deref(), Some("abc.def.ghi"));
        assert_eq!(bearer(b("bearer abc"), false).as_deref(), Some("abc"));
        assert_eq!(bearer(b("BEARER \t abc "), false).as_deref(), Some("abc"));
        assert_eq!(bearer(b("  Bearer abc"), false).as_deref(), Some("abc"));
        assert_eq!(bearer(Cow::Owned("Bearer xyz".into()), false).as_deref(), Some("xyz"));
    }

    #[test]
    fn other_schemes_are_not_tokens() {
        assert_eq!(bearer(b("Basic dXNlcjpwYXNz"), false), None);
        assert_eq!(bearer(b("Bearer"), false), None);
        assert_eq!(bearer(b("Bearer   "), false), None);
        assert_eq!(bearer(b("Bearerabc"), false), None);
        assert_eq!(bearer(b("abc.def.ghi"), false), None, "no scheme in Authorization");
        // In a custom header a bare token is the token.
        assert_eq!(bearer(b(" abc.def.ghi "), true).as_deref(), Some("abc.def.ghi"));
        assert_eq!(bearer(b("Bearer abc"), true).as_deref(), Some("abc"));
        assert_eq!(bearer(b("Basic abc"), true), None);
    }

    #[test]
    fn session_cookie_among_others() {
        assert_eq!(cookies(&["a=1; __session=tok; b=2"], "__session"), vec!["tok"]);
        assert_eq!(cookies(&["__session=tok"], "__session"), vec!["tok"]);
        assert_eq!(cookies(&["a=1;__session = tok ;b"], "__session"), vec!["tok"]);
        assert_eq!(cookies(&["__session=\"tok\""], "__session"), vec!["tok"], "quoted value");
        assert!(cookies(&["a=1; b=2"], "__session").is_empty());
        assert!(cookies(&["__session="], "__session").is_empty(), "empty value");
        assert!(cookies(&["__sessionx=tok; x__session=tok; __session_=tok"], "__session").is_empty());
        assert!(cookies(&["__session_a.b=tok"], "__session").is_empty(), "suffix is alphanumeric, - or _");
        assert!(cookies(&[""], "__session").is_empty());
    }

    #[test]
    fn suffixed_session_cookies_come_first_and_repeat_once() {
        let got = cookies(&["__session=plain; __client_uat=1; __session_Ab-9_z=suffixed"], "__session");
        assert_eq!(got, vec!["suffixed", "plain"]);
        let got = cookies(&["__session=same; __session_abc=same"], "__session");
        assert_eq!(got, vec!["same"]);
        // Repeated headers, merged by Envoy with "," or sent apart.
        assert_eq!(cookies(&["a=1; __session=one,__session_x=two"], "__session"), vec!["two", "one"]);
        assert_eq!(cookies(&["a=1", "__session=one"], "__session"), vec!["one"]);
        assert_eq!(cookies(&["token=t"], "token"), vec!["t"], "configured name");
    }

    #[test]
    fn cookie_scans_are_bounded() {
        let many: String = (0..10_000).map(|i| format!("c{i}=v; ")).collect::<String>() + "__session=late";
        assert!(cookies(&[&many], "__session").is_empty(), "only the first {MAX_COOKIES} pairs are read");
        let early = format!("__session=early; {many}");
        assert_eq!(cookies(&[&early], "__session"), vec!["early"]);
        let lots: String = (0..100).map(|i| format!("__session_s{i}=v{i}; ")).collect();
        assert_eq!(cookies(&[&lots], "__session").len(), MAX_SESSION_COOKIES);
    }

    fn http(method: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..HttpRequest::default()
        }
    }

    #[test]
    fn tokens_from_header_then_cookie() {
        let config = AuthzConfig::default();
        let req = http("GET", &[("authorization", "Bearer h.h.h"), ("cookie", "__session=c.c.c")]);
        let found = find_tokens(&Headers::of(Some(&req)), &config).unwrap().unwrap();
        assert_eq!((found.source, found.tokens), (Source::Header, vec![b("h.h.h")]));

        let req = http("GET", &[("authorization", "Basic dXNlcg=="), ("cookie", "__session=c.c.c")]);
        let found = find_tokens(&Headers::of(Some(&req)), &config).unwrap().unwrap();
        assert_eq!((found.source, found.tokens), (Source::Cookie, vec![b("c.c.c")]));

        let req = http("GET", &[("accept", "*/*")]);
        assert_eq!(find_tokens(&Headers::of(Some(&req)), &config).unwrap(), None);
        assert_eq!(find_tokens(&Headers::of(None), &config).unwrap(), None);

        let merged = http("GET", &[("authorization", "Bearer a.a.a,Bearer b.b.b")]);
        let err = find_tokens(&Headers::of(Some(&merged)), &config).unwrap_err();
        assert_eq!(err.reason, Reason::Malformed);
        assert!(!err.message.contains("a.a.a"), "{}", err.message);
    }

    #[test]
    fn raw_header_map_is_read_too() {
        let config = AuthzConfig::default();
        let raw =
            |k: &str, v: &str| HeaderValue { key: k.into(), value: String::new(), raw_value: v.as_bytes().to_vec() };
        let mut req = http("GET", &[]);
        req.header_map = Some(HeaderMap { headers: vec![raw("cookie", "a=1"), raw("cookie", "__session=r.r.r")] });
        let found = find_tokens(&Headers::of(Some(&req)), &config).unwrap().unwrap();
        assert_eq!(found.tokens, vec![b("r.r.r")]);
        req.header_map =
            Some(HeaderMap { headers: vec![raw("authorization", "Bearer x"), raw("authorization", "Bearer y")] });
        assert!(find_tokens(&Headers::of(Some(&req)), &config).is_err(), "two Authorization headers");
    }

    #[test]
    fn cookies_can_be_turned_off() {
        let config = AuthzConfig { session_cookie: None, ..AuthzConfig::default() };
        let req = http("GET", &[("cookie", "__session=c.c.c")]);
        assert_eq!(find_tokens(&Headers::of(Some(&req)), &config).unwrap(), None);
        assert!(!missing(&config).message.contains("cookie"));
        assert!(missing(&AuthzConfig::default()).message.contains("__session cookie"));
    }

    #[test]
    fn preflight_needs_all_three() {
        let pre = [("origin", "https://app.example.com"), ("access-control-request-method", "POST")];
        assert!(is_cors_preflight(Some(&http("OPTIONS", &pre))));
        assert!(is_cors_preflight(Some(&http("options", &pre))));
        assert!(!is_cors_preflight(Some(&http("GET", &pre))));
        assert!(!is_cors_preflight(Some(&http("OPTIONS", &pre[..1]))));
        assert!(!is_cors_preflight(Some(&http("OPTIONS", &[("origin", ""), pre[1]]))));
        assert!(!is_cors_preflight(None));
    }

    #[test]
    fn context_extensions_narrow() {
        let ext: HashMap<String, String> = [
            ("authorized_parties", " https://a.example.com , ,https://b.example.com"),
            ("roles", ""),
            ("unrelated", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = RouteExpectations::from_extensions(Some(&ext));
        assert_eq!(r.authorized_parties, vec!["https://a.example.com", "https://b.example.com"]);
        assert!(r.audiences.is_empty() && r.roles.is_empty());
        assert_eq!(RouteExpectations::from_extensions(None), RouteExpectations::default());
    }
}
