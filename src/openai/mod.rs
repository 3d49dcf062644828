//! OpenAI Chat Completions JSON, as serde types, and their conversion to and from the
//! `tollgate.v1` messages. The REST facade parses clients' JSON with these types and renders the
//! service's answers with them; OpenAI-style upstream adapters use the same types the other way
//! round, so the mapping is written once. `body` parses request bodies into these types with
//! errors that name the field.

pub mod body;
mod request;
mod response;

pub use request::*;
pub use response::*;
