//! `scale_skip`: why a span got no score (the values written to `skip_out`).

use safer_ffi::prelude::*;
use scale_core::SkipReason;

/// Why a span was not scored; the values `scale_engine_process*` writes to `skip_out`. Has the
/// ABI of `uint8_t`. A span with `SCALE_SKIP_NONE` went through the model (its score may still
/// be NaN while the model warms up).
#[derive_ReprC]
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum scale_skip {
    /// Not skipped.
    None = 0,
    /// Start or end is zero.
    ZeroTimestamp = 1,
    /// End is before start.
    EndBeforeStart = 2,
    /// A timestamp before 2000 or after 2200.
    AbsurdTimestamp = 3,
    /// Duration over one day.
    AbsurdDuration = 4,
    /// A duration that is NaN, infinite or negative.
    InvalidDuration = 5,
    /// A key id that is not known to this engine, or a name that is not valid UTF-8.
    InvalidKey = 6,
}

impl From<Option<SkipReason>> for scale_skip {
    fn from(r: Option<SkipReason>) -> Self {
        match r {
            None => scale_skip::None,
            Some(SkipReason::ZeroTimestamp) => scale_skip::ZeroTimestamp,
            Some(SkipReason::EndBeforeStart) => scale_skip::EndBeforeStart,
            Some(SkipReason::AbsurdTimestamp) => scale_skip::AbsurdTimestamp,
            Some(SkipReason::AbsurdDuration) => scale_skip::AbsurdDuration,
            Some(SkipReason::InvalidDuration) => scale_skip::InvalidDuration,
            Some(SkipReason::InvalidKey) => scale_skip::InvalidKey,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reason_plus_one() {
        for r in SkipReason::ALL {
            assert_eq!(scale_skip::from(Some(r)) as u8, r as u8 + 1);
        }
    }
}
