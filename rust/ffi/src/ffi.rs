//! Plumbing: turning C pointers and lengths into Rust references and slices, and writing
//! outputs. Every export goes through these helpers; none dereferences a raw pointer itself.
//!
//! Conventions enforced here:
//!
//! * `(NULL, 0)` (or any pointer with length 0) is an empty slice;
//! * a NULL pointer with a non-zero length is [`scale_status::NullArgument`];
//! * a length whose byte size exceeds `isize::MAX` is [`scale_status::InvalidLength`];
//! * a pointer not aligned for its element type is [`scale_status::MisalignedPointer`];
//! * output arrays are viewed as `MaybeUninit`, so the caller need not initialise them.

use std::mem::MaybeUninit;

use safer_ffi::c_char;

use crate::status::scale_status;

/// Result used inside exports; `Err` is the status to return.
pub(crate) type FfiResult<T> = Result<T, scale_status>;

/// Whether `len` elements of `T` fit in one Rust allocation (at most `isize::MAX` bytes).
fn fits<T>(len: usize) -> bool {
    len.checked_mul(std::mem::size_of::<T>().max(1))
        .is_some_and(|b| b <= isize::MAX as usize)
}

fn check_ptr<T>(ptr: *const T, len: usize) -> FfiResult<()> {
    if ptr.is_null() {
        return Err(scale_status::NullArgument);
    }
    if !fits::<T>(len) {
        return Err(scale_status::InvalidLength);
    }
    if !ptr.is_aligned() {
        return Err(scale_status::MisalignedPointer);
    }
    Ok(())
}

/// The C array `(ptr, len)` as a slice; `len == 0` is `&[]` whatever `ptr` is.
///
/// # Safety
/// If `len > 0` and `ptr` is non-NULL, `ptr` must point to `len` initialised `T`s that stay
/// valid and unmodified for `'a`.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    check_ptr(ptr, len)?;
    // SAFETY: non-NULL, aligned, size checked; validity is the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Like [`slice`], but NULL (with any length) is `None`: for optional inputs.
///
/// # Safety
/// As [`slice`].
pub(crate) unsafe fn opt_slice<'a, T>(ptr: *const T, len: usize) -> FfiResult<Option<&'a [T]>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded.
    unsafe { slice(ptr, len) }.map(Some)
}

/// The caller's output array `(ptr, len)`, possibly uninitialised.
///
/// # Safety
/// If `len > 0` and `ptr` is non-NULL, `ptr` must point to `len` writable `T`s, not aliased
/// by any other argument, valid for `'a`.
pub(crate) unsafe fn out_slice<'a, T>(
    ptr: *mut T,
    len: usize,
) -> FfiResult<&'a mut [MaybeUninit<T>]> {
    if len == 0 {
        return Ok(&mut []);
    }
    check_ptr(ptr.cast_const(), len)?;
    // SAFETY: non-NULL, aligned, size checked; writability and exclusivity are the contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<MaybeUninit<T>>(), len) })
}

/// The caller's single input value behind `ptr` (a struct of arguments).
///
/// # Safety
/// If non-NULL, `ptr` must point to an initialised `T` that stays valid and unmodified for `'a`.
pub(crate) unsafe fn in_ref<'a, T>(ptr: *const T) -> FfiResult<&'a T> {
    check_ptr(ptr, 1)?;
    // SAFETY: non-NULL and aligned; the rest is the contract.
    Ok(unsafe { &*ptr })
}

/// The caller's single output value behind `ptr`.
///
/// # Safety
/// If non-NULL, `ptr` must point to a writable `T` not aliased by any other argument.
pub(crate) unsafe fn out_ref<'a, T>(ptr: *mut T) -> FfiResult<&'a mut MaybeUninit<T>> {
    check_ptr(ptr.cast_const(), 1)?;
    // SAFETY: non-NULL and aligned; the rest is the contract.
    Ok(unsafe { &mut *ptr.cast::<MaybeUninit<T>>() })
}

/// Like [`out_ref`], but NULL is `None` (for optional outputs).
///
/// # Safety
/// As [`out_ref`].
pub(crate) unsafe fn opt_out_ref<'a, T>(ptr: *mut T) -> FfiResult<Option<&'a mut MaybeUninit<T>>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded.
    unsafe { out_ref(ptr) }.map(Some)
}

/// Text `(ptr, len)` as `&str`: NULL with a non-zero length is an error, bad UTF-8 is
/// [`scale_status::InvalidUtf8`].
///
/// # Safety
/// As [`slice`].
pub(crate) unsafe fn str<'a>(ptr: *const u8, len: usize) -> FfiResult<&'a str> {
    // SAFETY: forwarded.
    let bytes = unsafe { slice(ptr, len) }?;
    std::str::from_utf8(bytes).map_err(|_| scale_status::InvalidUtf8)
}

/// The longest prefix of `s` that fits in `cap` bytes without splitting a UTF-8 character.
pub(crate) fn utf8_prefix(s: &str, cap: usize) -> &str {
    if s.len() <= cap {
        return s;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An error-message output `(char *msg, size_t msg_cap, size_t *msg_len)`, validated up front
/// so a bad pointer is reported before any work is done.
pub(crate) struct MsgOut<'a> {
    buf: &'a mut [MaybeUninit<c_char>],
    len: Option<&'a mut MaybeUninit<usize>>,
}

impl<'a> MsgOut<'a> {
    /// Validate the three arguments. `msg` may be NULL only if `msg_cap` is 0; `msg_len` may
    /// be NULL (the length is then not reported).
    ///
    /// # Safety
    /// As [`out_slice`] and [`opt_out_ref`].
    pub(crate) unsafe fn new(
        msg: *mut c_char,
        msg_cap: usize,
        msg_len: *mut usize,
    ) -> FfiResult<Self> {
        // SAFETY: forwarded.
        let buf = unsafe { out_slice(msg, msg_cap) }?;
        // SAFETY: forwarded.
        let len = unsafe { opt_out_ref(msg_len) }?;
        Ok(Self { buf, len })
    }

    /// Write `text`, truncated to the buffer on a character boundary (no NUL is added), and its
    /// written length.
    pub(crate) fn write(&mut self, text: &str) {
        let t = utf8_prefix(text, self.buf.len());
        for (dst, &b) in self.buf.iter_mut().zip(t.as_bytes()) {
            dst.write(c_char(b));
        }
        if let Some(l) = self.len.as_deref_mut() {
            l.write(t.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_prefix_never_splits() {
        assert_eq!(utf8_prefix("héllo", 2), "h");
        assert_eq!(utf8_prefix("héllo", 3), "hé");
        assert_eq!(utf8_prefix("abc", 10), "abc");
        assert_eq!(utf8_prefix("abc", 0), "");
    }

    #[test]
    fn slices() {
        // SAFETY: only the length-0 and NULL paths, which never dereference.
        unsafe {
            assert_eq!(slice::<u8>(std::ptr::null(), 0).unwrap(), &[] as &[u8]);
            assert_eq!(
                slice::<u8>(std::ptr::null(), 1),
                Err(scale_status::NullArgument)
            );
            assert_eq!(
                slice::<u64>(std::ptr::dangling(), usize::MAX / 4).unwrap_err(),
                scale_status::InvalidLength
            );
            let x = [0u64; 2];
            let p = x.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
            assert_eq!(
                slice::<u64>(p, 1).unwrap_err(),
                scale_status::MisalignedPointer
            );
            assert!(opt_slice::<u8>(std::ptr::null(), 5).unwrap().is_none());
        }
    }
}
