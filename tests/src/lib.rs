//! End-to-end tests of the assembled gateway, and the mock upstream LLM server they run against
//! (in-process for Rust tests through [`mock_upstream::spawn`], or as the `mock-upstream` binary
//! for the Python suite in `tests/python`).

pub mod fuzzing;
pub mod mock_upstream;
