//! `x-request-id`: the ledger id of a chat request (`chatcmpl-...`), which Inference sends as gRPC
//! response metadata and REST returns as a response header, so a client can name the request an
//! operator finds in the logs and the ledger; with it, what served the request
//! (`x-tollgate-served-model`, `x-tollgate-deployment`), passed on the same way.

use axum::{
    http::{HeaderName, HeaderValue},
    response::Response,
};
use tollgate_inference::service::{
    DEPLOYMENT_METADATA, REQUEST_ID_METADATA, SERVED_MODEL_METADATA,
};

/// The request id and routing metadata an Inference answer carries, as response headers.
pub(crate) fn of<T>(answered: &tonic::Response<T>) -> Vec<(HeaderName, HeaderValue)> {
    [
        REQUEST_ID_METADATA,
        SERVED_MODEL_METADATA,
        DEPLOYMENT_METADATA,
    ]
    .into_iter()
    .filter_map(|name| {
        let value = answered.metadata().get(name)?;
        let value = HeaderValue::from_bytes(value.as_bytes()).ok()?;
        Some((HeaderName::from_static(name), value))
    })
    .collect()
}

/// `response` with those headers.
pub(crate) fn on(mut response: Response, headers: Vec<(HeaderName, HeaderValue)>) -> Response {
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
}
