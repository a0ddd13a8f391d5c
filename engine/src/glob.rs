//! Redis-compatible glob matching (`*`, `?`, `[...]` with `^` and ranges, `\` escapes), as used
//! by KEYS, SCAN MATCH and CONFIG GET.
//!
//! Matching is iterative with single-star backtracking, so its work is bounded by
//! O(pattern × subject) even for hostile patterns like `*?*?*?...`.

/// Whether `subject` matches `pattern`. `nocase` folds ASCII case.
pub fn glob_match(pattern: &[u8], subject: &[u8], nocase: bool) -> bool { todo!() }
