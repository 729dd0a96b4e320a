//! What the harness's binary and its benchmarks share: the generated mesh.

pub mod mesh;
