//! Redis' glob patterns (`stringmatchlen` in util.c), for names respite filters itself:
//! `*`, `?`, `[abc]`, `[^a-z]`, and `\` escaping the next byte.

/// Does `name` match `pattern`, as Redis' KEYS and SCAN MATCH decide?
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    // Backtracking on the last `*` only: linear in practice, as Redis' own matcher is not,
    // so no pattern can make it work long.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((hit, end)) = class(pattern, p, name[n]) {
                        if hit {
                            p = end;
                            n += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == name[n] => {
                    p += 2;
                    n += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at `pattern[at]` against `c`: whether it matches, and where the pattern
/// goes on after it. `None` for a class with no closing `]` (Redis then takes the rest of
/// the pattern as the class, which matches like this).
fn class(pattern: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    loop {
        match pattern.get(i) {
            None => return Some((hit != negate, i)),
            Some(b']') => return Some((hit != negate, i + 1)),
            Some(b'\\') if i + 1 < pattern.len() => {
                hit |= pattern[i + 1] == c;
                i += 2;
            }
            Some(&lo) if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() => {
                let hi = pattern[i + 2];
                let (lo, hi) = if lo > hi { (hi, lo) } else { (lo, hi) };
                hit |= (lo..=hi).contains(&c);
                i += 3;
            }
            Some(&x) => {
                hit |= x == c;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn patterns_match_as_in_redis() {
        let yes: &[(&str, &str)] = &[
            ("*", ""),
            ("*", "abc"),
            ("a*", "abc"),
            ("*c", "abc"),
            ("a?c", "abc"),
            ("h[ae]llo", "hello"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("a\\*b", "a*b"),
            ("tenant:a:k1?", "tenant:a:k12"),
            ("*:*:x", "tenant:a:x"),
            ("a*b*c", "aXbYbZc"),
        ];
        for (p, n) in yes {
            assert!(glob_match(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
        let no: &[(&str, &str)] = &[
            ("a", ""),
            ("a*", "bac"),
            ("a?c", "ac"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "axb"),
            ("tenant:a:*", "tenant:b:x"),
            ("a*b*c", "aXbYbZ"),
        ];
        for (p, n) in no {
            assert!(!glob_match(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
    }
}
