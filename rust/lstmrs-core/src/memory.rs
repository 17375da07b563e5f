//! The memory ceiling: every size that reaches an allocation is checked here first.
//!
//! Rust aborts the process when an allocation fails, which no caller can catch. So a size that
//! comes from an argument, a config or a file (parameters of a network, the buffers of a forward
//! or backward pass, stream states) is turned into bytes with checked arithmetic and compared with
//! a ceiling before anything is allocated; above it, the call returns [`Error::Memory`] naming the
//! argument, the bytes asked for and the ceiling. Buffers whose size comes from data are
//! allocated with `try_reserve` ([`try_filled`]), so an allocator that says no (an address-space
//! limit, overcommit turned off) also gives the error instead of an abort.
//!
//! The ceiling defaults to the machine's physical memory (or the address-space limit, `ulimit
//! -v`, when lower); `LSTMRS_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix, powers of 1024)
//! sets it at start-up and [`set_limit`] at run time.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that sets the ceiling at start-up.
pub const ENV_VAR: &str = "LSTMRS_MEMORY_LIMIT";

/// 0 until first read (then the default or the environment's value), or the value set.
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Parses a size: bytes, or a number with a K/M/G/T suffix (powers of 1024, an optional `B`/`iB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    let v = n.checked_mul(1u64 << shift)?;
    (v > 0).then_some(v)
}

/// The machine's physical memory, lowered to the address-space limit (`RLIMIT_AS`) when one is
/// set; `u64::MAX` where neither can be read.
pub fn default_limit() -> u64 {
    let mut limit = u64::MAX;
    #[cfg(unix)]
    {
        // SAFETY: sysconf and getrlimit only read process/system information into locals.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && page > 0 {
            limit = (pages as u64).saturating_mul(page as u64);
        }
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `rl` is a valid out-pointer for the duration of the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut rl) } == 0
            && rl.rlim_cur != libc::RLIM_INFINITY
        {
            // rlim_t is u64 on Linux but not on every unix.
            #[allow(clippy::unnecessary_cast)]
            let cur = rl.rlim_cur as u64;
            limit = limit.min(cur);
        }
    }
    limit
}

/// The ceiling in bytes: the value set, else `LSTMRS_MEMORY_LIMIT`, else [`default_limit`].
/// An unreadable `LSTMRS_MEMORY_LIMIT` is ignored here (the Python package warns about it).
pub fn limit() -> u64 {
    let v = LIMIT.load(Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    let fresh = std::env::var(ENV_VAR)
        .ok()
        .and_then(|s| parse_size(&s))
        .unwrap_or_else(default_limit);
    // A concurrent set_limit wins over the default.
    match LIMIT.compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => fresh,
        Err(set) => set,
    }
}

/// Sets the ceiling for all later checks; `None` goes back to the default (the environment's
/// value is not read again).
pub fn set_limit(bytes: Option<u64>) -> Result<()> {
    let v = match bytes {
        Some(0) => {
            return Err(Error::Value {
                arg: "memory_limit",
                expected: "a number of bytes >= 1, or None for the default".into(),
                got: "0".into(),
            })
        }
        Some(b) => b,
        None => default_limit(),
    };
    LIMIT.store(v, Ordering::Relaxed);
    Ok(())
}

/// Fails with [`Error::Memory`] when `bytes` (None: the size overflowed) exceeds the ceiling.
pub fn check(arg: &'static str, bytes: Option<u128>) -> Result<()> {
    let limit = limit();
    match bytes {
        Some(b) if b <= limit as u128 => Ok(()),
        _ => Err(Error::Memory {
            arg,
            bytes: bytes.map_or_else(|| "more than 2^128".into(), |b| b.to_string()),
            limit,
        }),
    }
}

/// The bytes of `factors` multiplied together, elements of `elem` bytes; None on overflow.
pub fn bytes_of(elem: usize, factors: &[usize]) -> Option<u128> {
    factors
        .iter()
        .try_fold(elem as u128, |acc, &f| acc.checked_mul(f as u128))
}

/// Checks `count` elements of `T` against the ceiling.
pub fn check_elems<T>(arg: &'static str, count: usize) -> Result<()> {
    check(arg, bytes_of(std::mem::size_of::<T>(), &[count]))
}

/// A vector of `n` copies of `value`, checked against the ceiling and allocated fallibly, so a
/// size from data never aborts the process.
pub fn try_filled<T: Clone>(arg: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    check_elems::<T>(arg, n)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::Memory {
        arg,
        bytes: bytes_of(std::mem::size_of::<T>(), &[n]).map_or_else(String::new, |b| b.to_string()),
        limit: limit(),
    })?;
    v.resize(n, value);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_and_without_suffixes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size(" 3k "), Some(3 << 10));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }

    #[test]
    fn overflowing_and_huge_sizes_are_refused_without_allocating() {
        assert!(bytes_of(4, &[usize::MAX, usize::MAX, 2]).is_none());
        assert_eq!(bytes_of(4, &[usize::MAX, 2]), Some(8 * usize::MAX as u128));
        let e = check("x", None).unwrap_err();
        assert!(matches!(e, Error::Memory { arg: "x", .. }));
        let e = try_filled::<f32>("params", usize::MAX / 2, 0.0).unwrap_err();
        assert!(e.to_string().starts_with("params: needs"), "{e}");
        assert_eq!(try_filled("ok", 3, 1u8).unwrap(), vec![1, 1, 1]);
    }
}
