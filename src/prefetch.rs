//! Software prefetch: asks the CPU to start loading memory that is about to be used, so that the
//! cache misses of several events overlap instead of being paid one after the other. A prefetch is
//! only a hint: it never faults and changes no result.

/// Prefetches the cache lines of `bytes` bytes from `p`.
#[inline(always)]
pub fn range<T>(p: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let base = p as *const i8;
        let mut offset = 0;
        while offset < bytes {
            // SAFETY: prefetching reads nothing and never faults, whatever the address.
            unsafe { _mm_prefetch(base.wrapping_add(offset), _MM_HINT_T0) };
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, bytes);
    }
}

/// Prefetches the cache lines of `v` itself (not what it points to).
#[inline(always)]
pub fn value<T>(v: &T) {
    range(v as *const T, std::mem::size_of::<T>());
}

/// Prefetches the elements of `s`.
#[inline(always)]
pub fn slice<T>(s: &[T]) {
    range(s.as_ptr(), std::mem::size_of_val(s));
}
