//! `x-request-id`: the ledger id of a chat request (`chatcmpl-...`), which Inference sends as gRPC
//! response metadata and REST returns as a response header, so a client can name the request an
//! operator finds in the logs and the ledger.

use axum::{http::HeaderValue, response::Response};
use tollgate_inference::service::REQUEST_ID_METADATA;

/// The request id an Inference answer carries.
pub(crate) fn of<T>(answered: &tonic::Response<T>) -> Option<HeaderValue> {
    let value = answered.metadata().get(REQUEST_ID_METADATA)?;
    HeaderValue::from_bytes(value.as_bytes()).ok()
}

/// `response` with the `x-request-id` header, when there is an id.
pub(crate) fn on(mut response: Response, request_id: Option<HeaderValue>) -> Response {
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID_METADATA, id);
    }
    response
}
