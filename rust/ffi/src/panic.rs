//! The panic boundary: no panic ever unwinds into C.
//!
//! Every export runs its body through [`catch`] (functions without a handle) or
//! [`crate::engine::Shared::call`] (functions on a handle), which also poisons the handle. The
//! workspace keeps `panic = "unwind"`: with `abort`, `catch_unwind` could not catch anything
//! and any bug would kill the host process (the collector).

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::status::scale_status;

/// Run `f`; a panic becomes [`scale_status::Panic`].
///
/// `AssertUnwindSafe` is sound here because callers that hold state across the boundary
/// (handles) poison it on panic, so nobody observes the broken invariants.
pub(crate) fn catch(f: impl FnOnce() -> scale_status) -> scale_status {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(scale_status::Panic)
}

/// Run `f`; a panic gives `fallback` (for exports that return a value, not a status).
pub(crate) fn catch_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Flatten an inner `Result` whose error is already a status.
pub(crate) fn status(r: Result<scale_status, scale_status>) -> scale_status {
    r.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status() {
        assert_eq!(catch(|| panic!("boom")), scale_status::Panic);
        assert_eq!(catch(|| scale_status::Ok), scale_status::Ok);
        assert_eq!(catch_or(7, || panic!("boom")), 7);
    }
}
