//! Software prefetch: asks the CPU to start loading memory that is about to be used, so that the
//! cache misses of several events overlap instead of being paid one after the other. A prefetch is
//! only a hint: it never faults and changes no result.

/// Prefetches the cache lines of `bytes` bytes from `p`: every line the span touches, the last
/// one included when the span straddles one more line than its length fills.
#[inline(always)]
pub fn range<T>(p: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (first, lines) = lines(p as usize, bytes);
        let base = p as *const i8;
        for line in 0..lines {
            let at = base
                .wrapping_add(first + line * LINE)
                .wrapping_sub(p as usize);
            // SAFETY: prefetching reads nothing and never faults, whatever the address.
            unsafe { _mm_prefetch(at, _MM_HINT_T0) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, bytes);
    }
}

const LINE: usize = 64;

/// The address of the first cache line `bytes` bytes from `addr` touch, and how many lines.
#[inline(always)]
fn lines(addr: usize, bytes: usize) -> (usize, usize) {
    let first = addr - addr % LINE;
    (first, (addr + bytes).saturating_sub(first).div_ceil(LINE))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_prefetched_to_its_last_line_whatever_its_alignment() {
        // 144 bytes (a tenant's entry) touch three lines from a line's start or 48 bytes in,
        // and four from 56 bytes in: stepping 64 bytes from the span's start missed the fourth.
        assert_eq!(lines(6400, 144), (6400, 3));
        assert_eq!(lines(6448, 144), (6400, 3));
        assert_eq!(lines(6456, 144), (6400, 4));
        assert_eq!(lines(6463, 1), (6400, 1));
        assert_eq!(lines(6463, 2), (6400, 2));
        assert_eq!(lines(6400, 0), (6400, 0));
    }
}
