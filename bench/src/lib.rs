//! Tollgate's benchmark. A run (`tollgate-bench run`) starts a lean mock upstream
//! (`upstream.rs`), a bare hyper pass-through proxy as the floor (`proxy.rs`) and the real
//! `tollgate` binary with a generated config and keys (`gateway.rs`) side by side
//! (`process.rs`), drives them with its own hyper client (`client.rs`, `load.rs`) and reports
//! every figure as a ratio to the floor (`report.rs`). `profile.rs` runs the gateway under
//! callgrind over a fixed number of requests and sums where the instructions go.

pub mod callgrind;
pub mod client;
pub mod gateway;
pub mod load;
pub mod process;
pub mod profile;
pub mod proxy;
pub mod report;
pub mod run;
pub mod upstream;

/// Errors of the benchmark tool: a message for the operator.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
