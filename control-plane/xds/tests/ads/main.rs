//! End-to-end tests of snapshots and the ADS server over real gRPC on 127.0.0.1.

// Test helpers outside `#[test]` fns are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod delta;
mod fixtures;
mod harness;
mod lifecycle;
mod scale;
mod snapshot;
mod sotw;
