//! Tollgate's contract: the protobuf services every process speaks (`tollgate.v1`), the OpenAI
//! JSON wire types the REST facade and the OpenAI-style upstreams share, the one table that maps
//! failures to gRPC codes, HTTP statuses and OpenAI error types, and exact money.

pub mod admin_token;
pub mod auth;
pub mod caller;
pub mod error;
pub mod money;
pub mod native;
pub mod openai;
pub mod passthrough;
pub mod peer;
mod replicas;
pub mod trace_context;
pub mod transport;

/// The generated protobuf messages, clients and servers of package `tollgate.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tollgate.v1");
}

/// The encoded `FileDescriptorSet` of every proto in `proto/`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_descriptor.bin"));
