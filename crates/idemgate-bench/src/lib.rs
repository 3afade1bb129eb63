//! Criterion micro-benchmarks of the per-request hot path; see `benches/hot_path.rs`.
//!
//! ```text
//! cargo bench -p idemgate-bench                      # all
//! cargo bench -p idemgate-bench -- fingerprint       # one group
//! ```
