//! Criterion micro-benchmarks of the per-request hot path; see `benches/hot_path.rs`. The crate
//! also builds `idemgate-load` (`src/bin/idemgate-load.rs`), the open-loop load generator of the
//! harness's fixed-rate pass.
//!
//! ```text
//! cargo bench -p idemgate-bench                      # all
//! cargo bench -p idemgate-bench -- fingerprint       # one group
//! ```
