//! Version: `SCALE_VERSION_*` constants in the header, `scale_version()` at run time, both
//! from `Cargo.toml` (tests check all three agree).

use safer_ffi::prelude::*;

const fn parse(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0u32;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "version component is not a number");
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

/// Major version of the library this header was generated from.
#[ffi_export(untyped)]
pub const SCALE_VERSION_MAJOR: u32 = parse(env!("CARGO_PKG_VERSION_MAJOR"));

/// Minor version of the library this header was generated from.
#[ffi_export(untyped)]
pub const SCALE_VERSION_MINOR: u32 = parse(env!("CARGO_PKG_VERSION_MINOR"));

/// Patch version of the library this header was generated from.
#[ffi_export(untyped)]
pub const SCALE_VERSION_PATCH: u32 = parse(env!("CARGO_PKG_VERSION_PATCH"));

const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(s) => s,
    Err(_) => panic!("version has a NUL"),
};

/// The library's version, "MAJOR.MINOR.PATCH", as a NUL-terminated string.
///
/// Compare it with the `SCALE_VERSION_*` constants at start-up to catch a header/library
/// mismatch. Static lifetime: never free it. Safe to call from any thread.
#[ffi_export]
pub fn scale_version() -> *const safer_ffi::c_char {
    VERSION.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_places_agree() {
        // SAFETY: a static NUL-terminated string.
        let s = unsafe { std::ffi::CStr::from_ptr(scale_version().cast()) }
            .to_str()
            .unwrap();
        assert_eq!(s, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            s,
            format!("{SCALE_VERSION_MAJOR}.{SCALE_VERSION_MINOR}.{SCALE_VERSION_PATCH}")
        );
    }
}
