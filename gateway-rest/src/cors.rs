//! Cross-origin access for browsers (`[server] cors_allowed_origins`): which origins may call the
//! REST routes and the grpc-web API, and the CORS layers (tower-http) both listeners wear. By
//! default no origin is allowed (same-origin only); `"*"` allows any, explicitly. Preflights are
//! answered by the layer itself, before load shedding and routing; request headers are mirrored
//! (a key travels in `Authorization`, never in cookies, so credentials are never allowed), and the
//! answer headers clients read are exposed.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// REST answer headers a browser script may read: the request id, OpenAI's rate-limit headers
/// and `retry-after`.
const REST_EXPOSED: &[&str] = &[
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

/// grpc-web answer headers a browser client must read: a call's status when it comes in the
/// headers (a trailers-only answer, i.e. every error before the first message), and the request id.
const GRPC_WEB_EXPOSED: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

/// The origins allowed to call from a browser, as `[server] cors_allowed_origins` lists them:
/// `[]` (none: same-origin only), `["*"]` (any), or exact origins (`"https://app.example.com"`,
/// `"http://localhost:5173"`: scheme, host and port, no path).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub enum AllowedOrigins {
    #[default]
    None,
    Any,
    Exact(Vec<HeaderValue>),
}

impl TryFrom<Vec<String>> for AllowedOrigins {
    type Error = String;

    fn try_from(origins: Vec<String>) -> Result<Self, String> {
        if origins.iter().any(|o| o == "*") {
            return if origins.len() == 1 {
                Ok(Self::Any)
            } else {
                Err("\"*\" allows every origin; list it alone".to_owned())
            };
        }
        if origins.is_empty() {
            return Ok(Self::None);
        }
        origins
            .iter()
            .map(|origin| parse_origin(origin))
            .collect::<Result<_, _>>()
            .map(Self::Exact)
    }
}

impl From<AllowedOrigins> for Vec<String> {
    fn from(origins: AllowedOrigins) -> Self {
        match origins {
            AllowedOrigins::None => Vec::new(),
            AllowedOrigins::Any => vec!["*".to_owned()],
            AllowedOrigins::Exact(list) => list
                .iter()
                .filter_map(|o| o.to_str().ok().map(str::to_owned))
                .collect(),
        }
    }
}

/// An origin as browsers send it in `Origin`: `scheme://host[:port]`, nothing after.
fn parse_origin(origin: &str) -> Result<HeaderValue, String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("{origin:?} is not an http(s) origin"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "{origin:?} is not an origin (scheme://host[:port], no path or trailing slash)"
        ));
    }
    HeaderValue::from_str(origin).map_err(|_| format!("{origin:?} is not a valid header value"))
}

impl AllowedOrigins {
    fn layer(&self, methods: &[Method], exposed: &[&'static str]) -> CorsLayer {
        let origin = match self {
            Self::None => AllowOrigin::list(std::iter::empty::<HeaderValue>()),
            Self::Any => AllowOrigin::any(),
            Self::Exact(list) => AllowOrigin::list(list.iter().cloned()),
        };
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(AllowMethods::list(methods.iter().cloned()))
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(ExposeHeaders::list(
                exposed.iter().map(|h| HeaderName::from_static(h)),
            ))
            .max_age(PREFLIGHT_MAX_AGE)
    }

    /// The REST listener's CORS layer.
    pub fn rest_layer(&self) -> CorsLayer {
        self.layer(
            &[Method::GET, Method::POST, Method::PATCH, Method::OPTIONS],
            REST_EXPOSED,
        )
    }

    /// The public gRPC listener's CORS layer, for grpc-web (every call is a POST).
    pub fn grpc_web_layer(&self) -> CorsLayer {
        self.layer(&[Method::POST, Method::OPTIONS], GRPC_WEB_EXPOSED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<AllowedOrigins, String> {
        AllowedOrigins::try_from(list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn none_any_and_exact() {
        assert_eq!(parse(&[]), Ok(AllowedOrigins::None));
        assert_eq!(parse(&["*"]), Ok(AllowedOrigins::Any));
        assert_eq!(
            parse(&["http://localhost:5173", "https://app.example.com"]),
            Ok(AllowedOrigins::Exact(vec![
                HeaderValue::from_static("http://localhost:5173"),
                HeaderValue::from_static("https://app.example.com"),
            ]))
        );
    }

    #[test]
    fn what_is_not_an_origin_is_refused() {
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://app.example.com",
            "https://",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad}");
        }
        assert!(parse(&["*", "https://app.example.com"]).is_err());
    }
}
