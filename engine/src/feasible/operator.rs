//! Constraint operators on plain string values, with Nomad's semantics
//! (`scheduler/feasible.go`: `checkConstraint` and its helpers).
//!
//! `None` means the target did not resolve on the node (an attribute that is
//! not set). The common operators allocate nothing; `regexp` compiles once per
//! pattern into a [`RegexCache`].

use std::cmp::Ordering;
use std::collections::HashMap;

use regex::Regex;

use crate::model::ConstraintOp;

/// Patterns a [`RegexCache`] keeps. The cache lives for one evaluation, whose
/// job has a handful of `regexp` constraints; the bound only matters for a
/// job with thousands of distinct patterns, which then compiles past the
/// bound instead of growing the map without end.
pub const REGEX_CACHE_MAX: usize = 256;

/// Compiled-program size limit for one pattern, so a hostile pattern fails to
/// compile (and the constraint is simply false) instead of eating memory.
pub const REGEX_SIZE_MAX_BYTES: usize = 1 << 20;

/// Compile a constraint's pattern with the limits every caller shares
/// (validation and feasibility must agree on what compiles).
pub fn compile_regex(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(pattern).size_limit(REGEX_SIZE_MAX_BYTES).build()
}

/// Compiled `regexp` patterns, invalid ones included (as `None`) so they are
/// not recompiled for every node.
#[derive(Debug, Default)]
pub struct RegexCache {
    compiled: HashMap<Box<str>, Option<Regex>>,
}

impl RegexCache {
    pub fn new() -> RegexCache {
        RegexCache::default()
    }

    /// Whether `text` matches `pattern`; an invalid pattern matches nothing.
    pub fn is_match(&mut self, pattern: &str, text: &str) -> bool {
        if let Some(compiled) = self.compiled.get(pattern) {
            return compiled.as_ref().is_some_and(|re| re.is_match(text));
        }
        let compiled = compile_regex(pattern).ok();
        let matched = compiled.as_ref().is_some_and(|re| re.is_match(text));
        if self.compiled.len() < REGEX_CACHE_MAX {
            self.compiled.insert(pattern.into(), compiled);
        }
        assert!(self.compiled.len() <= REGEX_CACHE_MAX);
        matched
    }

    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }
}

/// Whether `l op r` holds. `l`/`r` are the resolved targets, `None` when unset.
///
/// - `=`: both set and equal. `!=`: not equal, so true when only one is set.
/// - `<`, `<=`, `>`, `>=`: both set; as integers if both parse, else as
///   floats if both parse, else lexically (`"10" > "9"`, `"b" > "a"`).
/// - `is_set` / `is_not_set`: whether `l` resolved; `r` is ignored.
/// - `regexp`, `version`, `semver`, `set_contains*`: both set, see the helpers.
/// - `distinct_hosts`, `distinct_property`: true; the scheduler checks them
///   against the plan, which a single node cannot.
pub fn check_operator(op: ConstraintOp, l: Option<&str>, r: Option<&str>, regex_cache: &mut RegexCache) -> bool {
    use ConstraintOp::*;
    match op {
        DistinctHosts | DistinctProperty => true,
        Equal => l.is_some() && l == r,
        NotEqual => l != r,
        IsSet => l.is_some(),
        IsNotSet => l.is_none(),
        Less | LessEqual | Greater | GreaterEqual => match (l, r) {
            (Some(l), Some(r)) => check_order(op, l, r),
            _ => false,
        },
        Regexp | Version | Semver | SetContains | SetContainsAll | SetContainsAny => {
            let (Some(l), Some(r)) = (l, r) else {
                return false;
            };
            match op {
                Regexp => regex_cache.is_match(r, l),
                Version => version_matches(l, r),
                Semver => semver_matches(l, r),
                SetContainsAny => set_contains_any(l, r),
                _ => set_contains_all(l, r),
            }
        }
    }
}

/// `l op r` for an ordering operator: integers, then floats, then lexical.
pub fn check_order(op: ConstraintOp, l: &str, r: &str) -> bool {
    let ordering = if let (Ok(a), Ok(b)) = (l.parse::<i64>(), r.parse::<i64>()) {
        Some(a.cmp(&b))
    } else if let (Ok(a), Ok(b)) = (l.parse::<f64>(), r.parse::<f64>()) {
        a.partial_cmp(&b)
    } else {
        Some(l.cmp(r))
    };
    // NaN compares to nothing: every ordering operator is false.
    ordering.is_some_and(|o| ordering_satisfies(op, o))
}

/// Whether an ordering `o` (of `l` against `r`) satisfies an ordering operator.
pub(crate) fn ordering_satisfies(op: ConstraintOp, o: Ordering) -> bool {
    match op {
        ConstraintOp::Less => o == Ordering::Less,
        ConstraintOp::LessEqual => o != Ordering::Greater,
        ConstraintOp::Greater => o == Ordering::Greater,
        ConstraintOp::GreaterEqual => o != Ordering::Less,
        ConstraintOp::Equal => o == Ordering::Equal,
        ConstraintOp::NotEqual => o != Ordering::Equal,
        _ => false,
    }
}

fn set_has(set: &str, item: &str) -> bool {
    set.split(',').any(|member| member.trim() == item)
}

/// Every comma-separated item of `r` (trimmed) is in the comma-separated set `l`.
pub fn set_contains_all(l: &str, r: &str) -> bool {
    r.split(',').all(|item| set_has(l, item.trim()))
}

/// Some comma-separated item of `r` (trimmed) is in the comma-separated set `l`.
pub fn set_contains_any(l: &str, r: &str) -> bool {
    r.split(',').any(|item| set_has(l, item.trim()))
}

/// Numeric segments a lenient version may have (`550.54.15` has 3; some
/// kernels have 4 or 5). More is not a version string anyone fingerprints.
const VERSION_SEGMENTS_MAX: usize = 8;

/// A go-version style version: `v1.2`, `1.2.3-beta.1`, `550.54.15+build`.
/// Fewer than 3 segments are padded with zeros for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LenientVersion<'a> {
    segments: [u64; VERSION_SEGMENTS_MAX],
    /// Segments compared: those given, at least 3.
    segments_len: usize,
    /// Segments written in the string (for `~>`).
    segments_given: usize,
    prerelease: &'a str,
}

fn is_prerelease_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '~')
}

impl<'a> LenientVersion<'a> {
    fn parse(text: &'a str) -> Option<LenientVersion<'a>> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let (text, metadata) = text.split_once('+').unwrap_or((text, ""));
        if !metadata.chars().all(is_prerelease_char) {
            return None;
        }
        let numeric_end = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
        let (numeric, rest) = text.split_at(numeric_end);
        let prerelease = match rest.strip_prefix('-') {
            Some(pre) if !pre.is_empty() => pre,
            Some(_) => return None,
            // go-version accepts a prerelease without a dash when it starts with a letter.
            None if rest.starts_with(|c: char| c.is_ascii_alphabetic()) => rest,
            None if rest.is_empty() => "",
            None => return None,
        };
        if !prerelease.chars().all(is_prerelease_char) {
            return None;
        }
        let mut version =
            LenientVersion { segments: [0; VERSION_SEGMENTS_MAX], segments_len: 0, segments_given: 0, prerelease };
        for part in numeric.split('.') {
            if version.segments_given == VERSION_SEGMENTS_MAX || part.is_empty() {
                return None;
            }
            version.segments[version.segments_given] = part.parse().ok()?;
            version.segments_given += 1;
        }
        version.segments_len = version.segments_given.max(3);
        Some(version)
    }

    fn compare(&self, other: &LenientVersion<'_>) -> Ordering {
        // Unwritten segments are zero in both arrays, so comparing them all pads.
        self.segments.cmp(&other.segments).then_with(|| compare_prereleases(self.prerelease, other.prerelease))
    }
}

/// Semver precedence of prereleases: none is highest; dot-separated parts
/// compare numerically when both are numbers, numbers before words, else
/// lexically; more parts is higher when the shared parts are equal.
fn compare_prereleases(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut a_parts = a.split('.');
    let mut b_parts = b.split('.');
    loop {
        let ordering = match (a_parts.next(), b_parts.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => Ordering::Less,
                (Err(_), Ok(_)) => Ordering::Greater,
                (Err(_), Err(_)) => x.cmp(y),
            },
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionOp {
    Equal,
    NotEqual,
    Greater,
    GreaterEqual,
    Less,
    LessEqual,
    /// `~>`: at least this version, within the last written segment's parent.
    Pessimistic,
}

/// Split one comma-separated part of a constraint into its operator and version.
fn split_constraint_part(part: &str) -> (VersionOp, &str) {
    let part = part.trim();
    // Two-character operators first, so `>=` is not read as `>` and `=1`.
    let operators = [
        (">=", VersionOp::GreaterEqual),
        ("<=", VersionOp::LessEqual),
        ("!=", VersionOp::NotEqual),
        ("~>", VersionOp::Pessimistic),
        (">", VersionOp::Greater),
        ("<", VersionOp::Less),
        ("=", VersionOp::Equal),
    ];
    for (text, op) in operators {
        if let Some(rest) = part.strip_prefix(text) {
            return (op, rest.trim());
        }
    }
    (VersionOp::Equal, part)
}

/// go-version: a prerelease version only satisfies a constraint naming a
/// prerelease of the same release (so `1.3.0-beta1` is not `>= 1.2`).
fn prerelease_check(v: &LenientVersion<'_>, c: &LenientVersion<'_>) -> bool {
    match (v.prerelease.is_empty(), c.prerelease.is_empty()) {
        (false, false) => v.segments == c.segments,
        (false, true) => false,
        (true, _) => true,
    }
}

fn lenient_check(op: VersionOp, v: &LenientVersion<'_>, c: &LenientVersion<'_>) -> bool {
    let ordering = v.compare(c);
    match op {
        VersionOp::Equal => ordering == Ordering::Equal,
        VersionOp::NotEqual => ordering != Ordering::Equal,
        VersionOp::Greater => prerelease_check(v, c) && ordering == Ordering::Greater,
        VersionOp::GreaterEqual => prerelease_check(v, c) && ordering != Ordering::Less,
        VersionOp::Less => prerelease_check(v, c) && ordering == Ordering::Less,
        VersionOp::LessEqual => prerelease_check(v, c) && ordering != Ordering::Greater,
        VersionOp::Pessimistic => {
            if !prerelease_check(v, c) || (!c.prerelease.is_empty() && v.prerelease.is_empty()) {
                return false;
            }
            if ordering == Ordering::Less || c.segments_len > v.segments_len {
                return false;
            }
            // All written segments but the last must be equal; the last may grow.
            let fixed = c.segments_given.saturating_sub(1);
            v.segments[..fixed] == c.segments[..fixed]
                && c.segments[c.segments_len - 1] <= v.segments[c.segments_len - 1]
        }
    }
}

/// Whether a constraint string parses as a `version` constraint.
pub fn parse_version_constraint(constraint: &str) -> Result<(), String> {
    for part in constraint.split(',') {
        let (_, version) = split_constraint_part(part);
        if LenientVersion::parse(version).is_none() {
            return Err(format!("malformed constraint {:?}", part.trim()));
        }
    }
    Ok(())
}

/// The `version` operator: `version` (go-version style, lenient: `v1.2`,
/// `1.2.3-beta`) satisfies every comma-separated part of `constraint`
/// (`>= 1.2, < 2.0, != 1.5`, `~> 1.2.3`).
pub fn version_matches(version: &str, constraint: &str) -> bool {
    let Some(v) = LenientVersion::parse(version) else {
        return false;
    };
    constraint.split(',').all(|part| {
        let (op, c) = split_constraint_part(part);
        LenientVersion::parse(c).is_some_and(|c| lenient_check(op, &v, &c))
    })
}

/// Parse a strict semver version, allowing a `v` prefix and fewer than three
/// numeric segments (`v1.2` is `1.2.0`), as Nomad's semver parser does.
fn parse_semver(text: &str) -> Option<semver::Version> {
    let text = text.trim();
    let text = text.strip_prefix('v').unwrap_or(text);
    let numeric_end = text.find(['-', '+']).unwrap_or(text.len());
    let (numeric, rest) = text.split_at(numeric_end);
    let padding = match numeric.split('.').count() {
        1 => ".0.0",
        2 => ".0",
        3 => "",
        _ => return None,
    };
    semver::Version::parse(&format!("{numeric}{padding}{rest}")).ok()
}

/// Semver precedence: build metadata does not count.
fn semver_compare(a: &semver::Version, b: &semver::Version) -> Ordering {
    (a.major, a.minor, a.patch).cmp(&(b.major, b.minor, b.patch)).then_with(|| a.pre.cmp(&b.pre))
}

fn split_semver_part(part: &str) -> Option<(VersionOp, semver::Version)> {
    let (op, version) = split_constraint_part(part);
    if op == VersionOp::Pessimistic {
        return None;
    }
    Some((op, parse_semver(version)?))
}

/// Whether a constraint string parses as a `semver` constraint.
pub fn parse_semver_constraint(constraint: &str) -> Result<(), String> {
    for part in constraint.split(',') {
        if split_semver_part(part).is_none() {
            return Err(format!("malformed constraint {:?}", part.trim()));
        }
    }
    Ok(())
}

/// The `semver` operator: strict semver versions and plain comparisons
/// (`=`, `!=`, `<`, `<=`, `>`, `>=`) with semver 2.0 precedence, so unlike
/// `version` a prerelease satisfies `>= 1.2.0` when it is above it.
pub fn semver_matches(version: &str, constraint: &str) -> bool {
    let Some(v) = parse_semver(version) else {
        return false;
    };
    constraint.split(',').all(|part| {
        split_semver_part(part).is_some_and(|(op, c)| {
            let ordering = semver_compare(&v, &c);
            match op {
                VersionOp::Equal => ordering == Ordering::Equal,
                VersionOp::NotEqual => ordering != Ordering::Equal,
                VersionOp::Greater => ordering == Ordering::Greater,
                VersionOp::GreaterEqual => ordering != Ordering::Less,
                VersionOp::Less => ordering == Ordering::Less,
                VersionOp::LessEqual => ordering != Ordering::Greater,
                VersionOp::Pessimistic => false,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::{Expect, expect};

    use super::*;

    /// One case per line: `op | l | r`, where `-` is an unset value.
    fn check(cases: &str, expect: Expect) {
        let mut cache = RegexCache::new();
        let mut out = String::new();
        for line in cases.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let parts: Vec<&str> = line.split(" | ").collect();
            assert_eq!(parts.len(), 3, "bad case {line:?}");
            let op: ConstraintOp = parts[0].parse().unwrap();
            let value = |s| (s != "-").then_some(s);
            let (l, r) = (value(parts[1]), value(parts[2]));
            let result = check_operator(op, l, r, &mut cache);
            writeln!(out, "{line} => {result}").unwrap();
        }
        expect.assert_eq(&out);
    }

    #[test]
    fn equality_and_presence() {
        check(
            r#"
            = | linux | linux
            = | linux | windows
            = | - | linux
            = | - | -
            != | linux | windows
            != | linux | linux
            != | - | linux
            != | - | -
            is_set | x | -
            is_set | - | -
            is_not_set | - | -
            is_not_set | x | -
            distinct_hosts | - | -
            distinct_property | x | 2
            "#,
            expect![[r#"
                = | linux | linux => true
                = | linux | windows => false
                = | - | linux => false
                = | - | - => false
                != | linux | windows => true
                != | linux | linux => false
                != | - | linux => true
                != | - | - => false
                is_set | x | - => true
                is_set | - | - => false
                is_not_set | - | - => true
                is_not_set | x | - => false
                distinct_hosts | - | - => true
                distinct_property | x | 2 => true
            "#]],
        );
    }

    #[test]
    fn ordering() {
        check(
            r#"
            > | 10 | 9
            < | 10 | 9
            >= | 10 | 10
            <= | -3 | 2
            > | 1.5 | 1.25
            < | 1.5 | 10
            > | 2.0 | 10
            > | b | a
            < | abc | abd
            > | 10 | 9a
            < | - | 5
            >= | 5 | -
            < | NaN | 1.0
            "#,
            expect![[r#"
                > | 10 | 9 => true
                < | 10 | 9 => false
                >= | 10 | 10 => true
                <= | -3 | 2 => true
                > | 1.5 | 1.25 => true
                < | 1.5 | 10 => true
                > | 2.0 | 10 => false
                > | b | a => true
                < | abc | abd => true
                > | 10 | 9a => false
                < | - | 5 => false
                >= | 5 | - => false
                < | NaN | 1.0 => false
            "#]],
        );
    }

    #[test]
    fn regexp() {
        check(
            r#"
            regexp | NVIDIA H200 | ^NVIDIA H\d+$
            regexp | NVIDIA A100 | H[0-9]+
            regexp | abc | [
            regexp | - | .*
            regexp | abc | -
            "#,
            expect![[r#"
                regexp | NVIDIA H200 | ^NVIDIA H\d+$ => true
                regexp | NVIDIA A100 | H[0-9]+ => false
                regexp | abc | [ => false
                regexp | - | .* => false
                regexp | abc | - => false
            "#]],
        );
    }

    #[test]
    fn sets() {
        check(
            r#"
            set_contains | a,b,c | a
            set_contains | a, b , c | b,c
            set_contains | a,b,c | a, d
            set_contains_all | a,b,c | c , a
            set_contains_all | a,b,c | d
            set_contains_any | a,b,c | d, c
            set_contains_any | a,b,c | d,e
            set_contains_any | - | a
            set_contains | a | -
            "#,
            expect![[r#"
                set_contains | a,b,c | a => true
                set_contains | a, b , c | b,c => true
                set_contains | a,b,c | a, d => false
                set_contains_all | a,b,c | c , a => true
                set_contains_all | a,b,c | d => false
                set_contains_any | a,b,c | d, c => true
                set_contains_any | a,b,c | d,e => false
                set_contains_any | - | a => false
                set_contains | a | - => false
            "#]],
        );
    }

    #[test]
    fn versions() {
        check(
            r#"
            version | 1.4.2 | >= 1.2, < 2.0, != 1.5
            version | 1.5 | >= 1.2, < 2.0, != 1.5
            version | 2.0.0 | >= 1.2, < 2.0
            version | v1.2 | = 1.2.0
            version | 1.2 | 1.2.0
            version | 1.3.0-beta1 | >= 1.2
            version | 1.3.0-beta1 | >= 1.3.0-alpha
            version | 1.3.0-beta1 | >= 1.3.0-rc1
            version | 1.2.7 | ~> 1.2.3
            version | 1.3.0 | ~> 1.2.3
            version | 1.9 | ~> 1.2
            version | 2.0 | ~> 1.2
            version | 550.54.15 | >= 535
            version | not-a-version | >= 1
            version | 1.0 | >= nope
            version | - | >= 1
            semver | 1.3.0-beta1 | >= 1.2.0
            semver | 1.3.0-beta1 | < 1.3.0
            semver | 1.3.0 | >= 1.3.0-rc.1
            semver | v1.2 | >= 1.2.0, < 1.3
            semver | 1.2.3+build5 | = 1.2.3
            semver | 1.2.3.4 | >= 1.0.0
            semver | 1.2.3 | ~> 1.2
            "#,
            expect![[r#"
                version | 1.4.2 | >= 1.2, < 2.0, != 1.5 => true
                version | 1.5 | >= 1.2, < 2.0, != 1.5 => false
                version | 2.0.0 | >= 1.2, < 2.0 => false
                version | v1.2 | = 1.2.0 => true
                version | 1.2 | 1.2.0 => true
                version | 1.3.0-beta1 | >= 1.2 => false
                version | 1.3.0-beta1 | >= 1.3.0-alpha => true
                version | 1.3.0-beta1 | >= 1.3.0-rc1 => false
                version | 1.2.7 | ~> 1.2.3 => true
                version | 1.3.0 | ~> 1.2.3 => false
                version | 1.9 | ~> 1.2 => true
                version | 2.0 | ~> 1.2 => false
                version | 550.54.15 | >= 535 => true
                version | not-a-version | >= 1 => false
                version | 1.0 | >= nope => false
                version | - | >= 1 => false
                semver | 1.3.0-beta1 | >= 1.2.0 => true
                semver | 1.3.0-beta1 | < 1.3.0 => true
                semver | 1.3.0 | >= 1.3.0-rc.1 => true
                semver | v1.2 | >= 1.2.0, < 1.3 => true
                semver | 1.2.3+build5 | = 1.2.3 => true
                semver | 1.2.3.4 | >= 1.0.0 => false
                semver | 1.2.3 | ~> 1.2 => false
            "#]],
        );
    }

    #[test]
    fn regex_cache_is_bounded() {
        let mut cache = RegexCache::new();
        for i in 0..REGEX_CACHE_MAX + 10 {
            assert!(cache.is_match(&format!("^x{i}$"), &format!("x{i}")));
        }
        assert_eq!(cache.len(), REGEX_CACHE_MAX);
        // Past the bound patterns still work, compiled each time.
        assert!(cache.is_match("^late$", "late"));
        assert!(!cache.is_match("(", "("));
    }
}
