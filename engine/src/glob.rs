//! Redis-compatible glob matching (`*`, `?`, `[...]` with `^` and ranges, `\` escapes), as used
//! by KEYS, SCAN MATCH and CONFIG GET.
//!
//! Matching is iterative with single-star backtracking, so its work is bounded by
//! O(pattern × subject) even for hostile patterns like `*?*?*?...`. Every token other than `*`
//! consumes exactly one subject byte, which is what makes remembering only the last star enough.
//!
//! The quirks of Redis's `stringmatchlen` are kept: an unterminated `[` class still matches by the
//! characters it lists, `[^` at the end matches any byte, reversed ranges like `[z-a]` are swapped,
//! `[a-]` is the range `a`..`]`, a trailing `\` matches a literal backslash, and an escaped byte
//! inside a class is compared case-sensitively even with `nocase`. One deliberate difference: a
//! pattern made only of stars matches the empty subject (Redis's function says no, but KEYS and
//! SCAN special-case `*` so that the empty key is listed; matching here keeps that behaviour for
//! callers that do not special-case it).

fn fold(c: u8, nocase: bool) -> u8 {
    if nocase {
        c.to_ascii_lowercase()
    } else {
        c
    }
}

/// Matches one non-star token at `pattern[p..]` against `c`. Returns whether it matched and the
/// index just past the token.
fn match_token(pattern: &[u8], mut p: usize, c: u8, nocase: bool) -> (bool, usize) {
    // Out-of-range reads act like C's NUL terminator, which the original code relies on.
    let at = |i: usize| pattern.get(i).copied().unwrap_or(0);
    let len = pattern.len();
    match pattern[p] {
        b'?' => (true, p + 1),
        b'[' => {
            p += 1;
            let not = at(p) == b'^';
            if not {
                p += 1;
            }
            let mut matched = false;
            loop {
                let rem = len.saturating_sub(p);
                if at(p) == b'\\' && rem >= 2 {
                    p += 1;
                    if at(p) == c {
                        matched = true;
                    }
                } else if at(p) == b']' {
                    break;
                } else if rem == 0 {
                    // Unterminated class: step back so the common advance below ends the pattern.
                    p -= 1;
                    break;
                } else if rem >= 3 && at(p + 1) == b'-' {
                    let (mut start, mut end) = (at(p), at(p + 2));
                    if start > end {
                        std::mem::swap(&mut start, &mut end);
                    }
                    let (start, end, ch) = (fold(start, nocase), fold(end, nocase), fold(c, nocase));
                    p += 2;
                    if ch >= start && ch <= end {
                        matched = true;
                    }
                } else if fold(at(p), nocase) == fold(c, nocase) {
                    matched = true;
                }
                p += 1;
            }
            (matched != not, p + 1)
        }
        b'\\' if len - p >= 2 => (fold(pattern[p + 1], nocase) == fold(c, nocase), p + 2),
        lit => (fold(lit, nocase) == fold(c, nocase), p + 1),
    }
}

/// Whether `subject` matches `pattern`. `nocase` folds ASCII case.
pub fn glob_match(pattern: &[u8], subject: &[u8], nocase: bool) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    // Pattern index just past the last star, and the subject index that star currently ends at.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if s == subject.len() {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            return p == pattern.len();
        }
        if p < pattern.len() && pattern[p] == b'*' {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            star = Some((p, s));
            continue;
        }
        let ok = if p < pattern.len() {
            let (matched, next) = match_token(pattern, p, subject[s], nocase);
            if matched {
                p = next;
                s += 1;
            }
            matched
        } else {
            false
        };
        if !ok {
            match star {
                Some((sp, ss)) => {
                    star = Some((sp, ss + 1));
                    p = sp;
                    s = ss + 1;
                }
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, subject: &str, expected: bool) {
        assert_eq!(
            glob_match(pattern.as_bytes(), subject.as_bytes(), false),
            expected,
            "pattern {pattern:?} subject {subject:?}"
        );
    }

    fn check_nocase(pattern: &str, subject: &str, expected: bool) {
        assert_eq!(
            glob_match(pattern.as_bytes(), subject.as_bytes(), true),
            expected,
            "nocase pattern {pattern:?} subject {subject:?}"
        );
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("*", "", true),
            ("**", "", true),
            ("*", "anything", true),
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("abc", "abcd", false),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*c", "abc", true),
            ("*b*", "abc", true),
            ("*b*", "acd", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("a?", "a", false),
            ("a*?", "a", false),
            ("a*?", "ab", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("[z-a]", "m", true),
            ("[z-a]", "A", false),
            ("[a-]", "]", true),
            ("[a-]", "b", false),
            ("[a-]", "_", true),
            ("[a-]", "-", false),
            ("[]", "a", false),
            ("[", "[", false),
            ("[", "", false),
            ("[abc", "a", true),
            ("[abc", "d", false),
            ("[abc", "ab", false),
            ("[a-z", "m", true),
            ("[^", "x", true),
            ("[^", "", false),
            ("[\\]]", "]", true),
            ("[\\]", "]", true),
            ("[\\", "\\", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("\\?", "?", true),
            ("\\", "\\", true),
            ("a\\", "a\\", true),
            ("\\[a]", "[a]", true),
            ("*\\*", "abc*", true),
            ("*\\*", "abc", false),
            ("[*]", "*", true),
            ("[?]", "a", false),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:nam", false),
            ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("*a*a*a*a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", true),
        ];
        for &(p, s, e) in cases {
            check(p, s, e);
        }
    }

    #[test]
    fn binary_and_nocase() {
        assert!(glob_match(b"a\x00*", b"a\x00\xff", false));
        assert!(glob_match(b"[\x00-\x10]", b"\x05", false));
        check_nocase("HeLLo", "hello", true);
        check_nocase("h[A-Z]llo", "hello", true);
        check_nocase("h[E]llo", "hello", true);
        check_nocase("h[\\E]llo", "hello", false);
        check("HeLLo", "hello", false);
        check("h[A-Z]llo", "hello", false);
    }

    #[test]
    fn hostile_patterns_are_fast() {
        let pattern = "*?".repeat(50_000);
        let start = std::time::Instant::now();
        assert!(!glob_match(pattern.as_bytes(), b"short", false));
        let long = "x".repeat(20_000);
        assert!(!glob_match(pattern.as_bytes(), long.as_bytes(), false));
        let pattern = format!("{}b", "*a".repeat(1000));
        let subject = "a".repeat(10_000);
        assert!(!glob_match(pattern.as_bytes(), subject.as_bytes(), false));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }
}
