//! The web console at `/console`: static assets (plain ES modules, one stylesheet, no build step)
//! embedded in the binary and served from memory. The console is a client of the public REST
//! routes only (`/v1/dashboard/...`, `/v1/models`, `/admin/...`); nothing here knows about keys
//! or money.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from this origin
//! only, no inline code, `fetch` to this origin only, no framing), `nosniff` and
//! `no-referrer`. Assets are cached by ETag (the SHA-256 of the content): `no-cache` makes the
//! browser revalidate, and a matching `If-None-Match` is a bodiless 304, so a new binary's
//! assets are picked up at once and an unchanged one costs a round trip of headers.
//!
//! To change the console, edit the files in `src/console/assets/` and rebuild; a new file is
//! listed once in [`ASSETS`].

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Path,
    http::{
        HeaderMap, HeaderName, HeaderValue, StatusCode,
        header::{
            CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION,
            REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
        },
    },
    response::{IntoResponse, Response},
    routing::get,
};
use sha2::{Digest, Sha256};
use tollgate::error::{ApiError, ErrorKind};

use crate::{app::AppState, error::RestError};

/// Scripts, styles and calls from this origin only; no inline code, plugins, frames or forms
/// posted elsewhere. SVG charts are drawn through the DOM, images only as `data:` (none yet).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The embedded files: name under `/console/`, content type, content.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/console.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/api.js"),
    ),
    (
        "format.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/format.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/chart.js"),
    ),
    (
        "holder.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/holder.js"),
    ),
    (
        "operator.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/operator.js"),
    ),
];

/// One embedded file with its strong ETag.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: HeaderValue,
}

static EMBEDDED: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .filter_map(|&(name, content_type, body)| {
            let digest = hex::encode(&Sha256::digest(body)[..16]);
            let etag = HeaderValue::from_str(&format!("\"{digest}\"")).ok()?;
            Some(Asset {
                name,
                content_type,
                body,
                etag,
            })
        })
        .collect()
});

/// `/console` (redirected to `/console/` so relative module URLs resolve), the page, and its
/// assets.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(redirect_to_page))
        .route("/console/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/console/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
}

async fn redirect_to_page() -> Response {
    let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/console/"));
    response
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = EMBEDDED.iter().find(|a| a.name == name) else {
        return RestError(ApiError::new(
            ErrorKind::NotFound,
            format!("The console has no file {name:?}"),
        ))
        .into_response();
    };
    let fresh = request
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(ETAG, asset.etag.clone());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        CROSS_ORIGIN_OPENER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

const CROSS_ORIGIN_OPENER_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-opener-policy");

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_etag_and_the_policy() {
        assert_eq!(EMBEDDED.len(), ASSETS.len());
        for asset in EMBEDDED.iter() {
            let response = serve(asset.name, &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.name);
            let headers = response.headers();
            assert_eq!(headers[ETAG], asset.etag);
            assert_eq!(headers[CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(headers[CACHE_CONTROL], "no-cache");
            let mut revalidate = HeaderMap::new();
            revalidate.insert(IF_NONE_MATCH, asset.etag.clone());
            assert_eq!(
                serve(asset.name, &revalidate).status(),
                StatusCode::NOT_MODIFIED
            );
        }
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_page_loads_no_inline_script_or_style() {
        let page = std::str::from_utf8(ASSETS[0].2).unwrap();
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("style="), "inline style");
        assert!(!page.contains("<style"), "inline style");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "remote URL"
        );
    }
}
