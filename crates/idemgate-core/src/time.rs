//! Wall-clock milliseconds since the Unix epoch: what records are stamped with.
//!
//! Records outlive the process (embedded, Redis, PostgreSQL stores), so expiry is wall-clock
//! time, not a monotonic instant. Callers pass `now_ms` into every store operation, which lets the
//! conformance tests move time without sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, saturating at zero before it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
