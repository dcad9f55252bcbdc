//! `scale_status`: what every export returns, and `scale_status_str`.
//!
//! Codes have their own range (never 0, never an errno), grouped by origin in blocks of 100.
//! **Codes are never renumbered.** A retired code stays here as a commented "reserved" line so
//! its number is never reused.

use safer_ffi::prelude::*;

/// Result of every `scale_*` call that can fail.
///
/// Codes are grouped by origin in blocks of 100 and are never renumbered:
/// 1000s success (full or partial), 1100s caller mistakes, 1200s configuration,
/// 1300s snapshots, 1400s I/O, 1500s the panic boundary.
/// `scale_status_str()` gives static text for any code. Has the ABI of `int32_t`, so an
/// unknown future code can be stored and printed safely.
#[derive_ReprC]
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum scale_status {
    // --- 1000: success -------------------------------------------------------------------
    /// Success: every output was written.
    Ok = 1000,
    /// `scale_engine_process*` only: every per-span output was written, but more decisions
    /// fired than `decisions_cap`. The first `decisions_cap` decisions were written and
    /// `*decisions_len` holds the total; the others are lost.
    DecisionsTruncated = 1001,

    // --- 1100: the caller's arguments ------------------------------------------------------
    /// A required pointer was NULL (a NULL buffer is allowed only with a zero length).
    NullArgument = 1100,
    /// A length does not fit: an array of that many elements would exceed `PTRDIFF_MAX`
    /// bytes, or a batch has more than `UINT32_MAX` spans.
    InvalidLength = 1101,
    /// A pointer is not aligned for its element type.
    MisalignedPointer = 1102,
    /// Text (configuration YAML, a name, a path) is not valid UTF-8.
    InvalidUtf8 = 1103,
    /// An output buffer is too small; its `*len` output holds the size needed.
    BufferTooSmall = 1104,
    /// An index (such as a rule index) is out of range.
    IndexOutOfRange = 1105,
    /// `scale_engine_process_chunk`: the chunk does not continue the handle's batch in progress
    /// (no batch is open, or its `first_index` or `now_ns` differ from what the batch expects).
    ChunkOutOfSequence = 1106,

    // --- 1200: configuration ----------------------------------------------------------------
    /// The configuration YAML is invalid; the message lists every problem with key and line.
    InvalidConfig = 1200,

    // --- 1300: snapshots ----------------------------------------------------------------------
    /// The bytes are not a snapshot this build can read (bad magic, version or encoding).
    InvalidSnapshot = 1300,
    /// The snapshot was taken with a model configuration that differs from this one.
    SnapshotMismatch = 1301,

    // --- 1400: I/O ----------------------------------------------------------------------------
    /// Reading or writing a file failed; the message has the OS error.
    Io = 1400,

    // --- 1500: the panic boundary ---------------------------------------------------------------
    /// A bug: Rust code panicked. The panic was caught; the handle is now poisoned.
    Panic = 1500,
    /// An earlier call on this handle panicked. Free the handle (that still works) and create
    /// a new one, for example by restoring the last snapshot.
    Poisoned = 1501,
}

impl scale_status {
    /// Every code, in numeric order (for tests and `scale_status_str`).
    pub const ALL: [scale_status; 15] = [
        scale_status::Ok,
        scale_status::DecisionsTruncated,
        scale_status::NullArgument,
        scale_status::InvalidLength,
        scale_status::MisalignedPointer,
        scale_status::InvalidUtf8,
        scale_status::BufferTooSmall,
        scale_status::IndexOutOfRange,
        scale_status::ChunkOutOfSequence,
        scale_status::InvalidConfig,
        scale_status::InvalidSnapshot,
        scale_status::SnapshotMismatch,
        scale_status::Io,
        scale_status::Panic,
        scale_status::Poisoned,
    ];

    /// Static, NUL-terminated text for the code.
    pub fn as_cstr(self) -> &'static std::ffi::CStr {
        match self {
            scale_status::Ok => c"ok",
            scale_status::DecisionsTruncated => {
                c"decisions truncated: the buffer was smaller than the number of decisions"
            }
            scale_status::NullArgument => c"a required pointer argument was NULL",
            scale_status::InvalidLength => c"a length is too large",
            scale_status::MisalignedPointer => c"a pointer is not aligned for its element type",
            scale_status::InvalidUtf8 => c"text is not valid UTF-8",
            scale_status::BufferTooSmall => c"output buffer too small",
            scale_status::IndexOutOfRange => c"index out of range",
            scale_status::ChunkOutOfSequence => {
                c"the chunk does not continue the batch in progress"
            }
            scale_status::InvalidConfig => c"invalid configuration",
            scale_status::InvalidSnapshot => c"invalid snapshot",
            scale_status::SnapshotMismatch => c"snapshot does not match the configuration",
            scale_status::Io => c"I/O error",
            scale_status::Panic => c"internal error: a panic was caught (the handle is poisoned)",
            scale_status::Poisoned => c"the handle is poisoned by an earlier panic",
        }
    }

    /// Static text for a raw code (`"unknown status code"` if it is none).
    pub fn text_of(code: i32) -> &'static std::ffi::CStr {
        match Self::from_code(code) {
            Some(s) => s.as_cstr(),
            None => c"unknown status code",
        }
    }

    /// The code for a raw number, if it is one.
    pub fn from_code(code: i32) -> Option<scale_status> {
        Self::ALL.iter().copied().find(|s| *s as i32 == code)
    }
}

/// Static text describing a status code.
///
/// Accepts any integer: unknown codes give "unknown status code".
/// Returns a NUL-terminated string with static lifetime: never free it.
/// Thread safety: safe to call from any thread at any time.
#[ffi_export]
pub fn scale_status_str(code: i32) -> *const safer_ffi::c_char {
    crate::panic::catch_or(std::ptr::null(), || {
        scale_status::text_of(code).as_ptr().cast()
    })
}
