//! Device attribute values with units (`40 GiB`, `1.5 TB`, `300 W`, `2 GHz`)
//! and comparisons between them, as Nomad's `plugins/shared/structs`
//! (`attribute.go`, `units.go`) and `checkAttributeConstraint`.
//!
//! Values convert to their family's base unit (bytes, bytes/s, hertz, watts)
//! before comparing; values of different families, or a number with a unit
//! against one without, do not compare, and every operator on them is false.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use super::operator::{RegexCache, check_operator, ordering_satisfies};
use crate::model::{ConstraintOp, DeviceAttribute};

/// The family a unit measures; only units of one family compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitFamily {
    Bytes,
    BytesPerSecond,
    Hertz,
    Watts,
}

/// A known unit: `value unit` is `value * numerator / denominator` base units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub name: &'static str,
    pub family: UnitFamily,
    pub numerator: i128,
    pub denominator: i128,
}

const fn unit(name: &'static str, family: UnitFamily, numerator: i128, denominator: i128) -> Unit {
    Unit { name, family, numerator, denominator }
}

const KILO: i128 = 1000;
const KIBI: i128 = 1024;

/// Every unit, longest names first so suffix matching finds `MiB/s` before `B`.
/// Nomad's tables, plus `B`, `Hz` and `kHz`; Nomad counts MHz as 1000 Hz,
/// here the hertz units carry their real ratios (`1 GHz = 1000 MHz`).
pub const UNITS: [Unit; 38] = {
    use UnitFamily::*;
    [
        unit("KiB/s", BytesPerSecond, KIBI, 1),
        unit("MiB/s", BytesPerSecond, KIBI.pow(2), 1),
        unit("GiB/s", BytesPerSecond, KIBI.pow(3), 1),
        unit("TiB/s", BytesPerSecond, KIBI.pow(4), 1),
        unit("PiB/s", BytesPerSecond, KIBI.pow(5), 1),
        unit("EiB/s", BytesPerSecond, KIBI.pow(6), 1),
        unit("kB/s", BytesPerSecond, KILO, 1),
        unit("KB/s", BytesPerSecond, KILO, 1),
        unit("MB/s", BytesPerSecond, KILO.pow(2), 1),
        unit("GB/s", BytesPerSecond, KILO.pow(3), 1),
        unit("TB/s", BytesPerSecond, KILO.pow(4), 1),
        unit("PB/s", BytesPerSecond, KILO.pow(5), 1),
        unit("EB/s", BytesPerSecond, KILO.pow(6), 1),
        unit("KiB", Bytes, KIBI, 1),
        unit("MiB", Bytes, KIBI.pow(2), 1),
        unit("GiB", Bytes, KIBI.pow(3), 1),
        unit("TiB", Bytes, KIBI.pow(4), 1),
        unit("PiB", Bytes, KIBI.pow(5), 1),
        unit("EiB", Bytes, KIBI.pow(6), 1),
        unit("kHz", Hertz, KILO, 1),
        unit("KHz", Hertz, KILO, 1),
        unit("MHz", Hertz, KILO.pow(2), 1),
        unit("GHz", Hertz, KILO.pow(3), 1),
        unit("kB", Bytes, KILO, 1),
        unit("KB", Bytes, KILO, 1),
        unit("MB", Bytes, KILO.pow(2), 1),
        unit("GB", Bytes, KILO.pow(3), 1),
        unit("TB", Bytes, KILO.pow(4), 1),
        unit("PB", Bytes, KILO.pow(5), 1),
        unit("EB", Bytes, KILO.pow(6), 1),
        unit("Hz", Hertz, 1, 1),
        unit("mW", Watts, 1, KILO),
        unit("kW", Watts, KILO, 1),
        unit("MW", Watts, KILO.pow(2), 1),
        unit("GW", Watts, KILO.pow(3), 1),
        unit("B/s", BytesPerSecond, 1, 1),
        unit("B", Bytes, 1, 1),
        unit("W", Watts, 1, 1),
    ]
};

/// The unit named `name`, if known (case-sensitive: `mW` is not `MW`).
pub fn lookup_unit(name: &str) -> Option<&'static Unit> {
    UNITS.iter().find(|u| u.name == name)
}

/// Parse a literal as Nomad's `ParseAttribute`: a number with an optional
/// known unit suffix (`40GiB`, `40 GiB`, `1.5 TB`), else a bool, else a string.
pub fn parse_attribute(input: &str) -> DeviceAttribute {
    let trimmed = input.trim();
    let (numeric, unit) = match UNITS.iter().find(|u| trimmed.ends_with(u.name)) {
        Some(u) => (trimmed[..trimmed.len() - u.name.len()].trim_end(), Some(u.name)),
        None => (trimmed, None),
    };
    let unit: Option<Arc<str>> = unit.map(Arc::from);
    if let Ok(value) = numeric.parse::<i64>() {
        return DeviceAttribute::Int { value, unit };
    }
    if !numeric.is_empty()
        && numeric.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && let Ok(value) = numeric.parse::<f64>()
    {
        return DeviceAttribute::Float { value, unit };
    }
    match trimmed {
        "true" | "TRUE" | "True" | "t" | "T" => DeviceAttribute::Bool(true),
        "false" | "FALSE" | "False" | "f" | "F" => DeviceAttribute::Bool(false),
        _ => DeviceAttribute::String(input.into()),
    }
}

/// A number's unit, if it has one that is known (an unknown unit counts as
/// none, as in Nomad).
fn known_unit(unit: &Option<Arc<str>>) -> Option<&'static Unit> {
    unit.as_deref().and_then(lookup_unit)
}

fn number_parts(a: &DeviceAttribute) -> Option<(Option<i64>, f64, Option<&'static Unit>)> {
    match a {
        DeviceAttribute::Int { value, unit } => Some((Some(*value), *value as f64, known_unit(unit))),
        DeviceAttribute::Float { value, unit } => Some((None, *value, known_unit(unit))),
        _ => None,
    }
}

/// Compare two attributes, `None` when they do not compare (different kinds,
/// unit families, or a unit on one side only). Bools are `Equal` or `Greater`
/// (different), never ordered.
pub fn compare_attributes(a: &DeviceAttribute, b: &DeviceAttribute) -> Option<Ordering> {
    match (a, b) {
        (DeviceAttribute::String(x), DeviceAttribute::String(y)) => Some(x.cmp(y)),
        (DeviceAttribute::Bool(x), DeviceAttribute::Bool(y)) => {
            Some(if x == y { Ordering::Equal } else { Ordering::Greater })
        }
        _ => {
            let (a_int, a_float, a_unit) = number_parts(a)?;
            let (b_int, b_float, b_unit) = number_parts(b)?;
            let ((a_num, a_den), (b_num, b_den)) = match (a_unit, b_unit) {
                (None, None) => ((1, 1), (1, 1)),
                (Some(x), Some(y)) if x.family == y.family => {
                    ((x.numerator, x.denominator), (y.numerator, y.denominator))
                }
                _ => return None,
            };
            // Integers compare exactly: a*an/ad vs b*bn/bd as a*an*bd vs b*bn*ad.
            if let (Some(a_int), Some(b_int)) = (a_int, b_int) {
                let left = i128::from(a_int).checked_mul(a_num).and_then(|v| v.checked_mul(b_den));
                let right = i128::from(b_int).checked_mul(b_num).and_then(|v| v.checked_mul(a_den));
                if let (Some(left), Some(right)) = (left, right) {
                    return Some(left.cmp(&right));
                }
            }
            let left = a_float * a_num as f64 / a_den as f64;
            let right = b_float * b_num as f64 / b_den as f64;
            left.partial_cmp(&right)
        }
    }
}

/// The text of an attribute for the string operators (`regexp`, `version`,
/// `set_contains`...): strings as they are, numbers as written with their unit.
pub fn attribute_text(a: &DeviceAttribute) -> Cow<'_, str> {
    match a {
        DeviceAttribute::String(s) => Cow::Borrowed(s),
        DeviceAttribute::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        DeviceAttribute::Int { value, unit: None } => Cow::Owned(value.to_string()),
        DeviceAttribute::Float { value, unit: None } => Cow::Owned(value.to_string()),
        DeviceAttribute::Int { value, unit: Some(u) } => Cow::Owned(format!("{value} {u}")),
        DeviceAttribute::Float { value, unit: Some(u) } => Cow::Owned(format!("{value} {u}")),
    }
}

/// Whether `l op r` holds for device attributes (`None`: unset), as Nomad's
/// `checkAttributeConstraint`: `!=` is true when exactly one side is set;
/// ordering and equality need both sides set and comparable (bools only
/// `=`); the string operators work on [`attribute_text`].
pub fn check_attribute_operator(
    op: ConstraintOp,
    l: Option<&DeviceAttribute>,
    r: Option<&DeviceAttribute>,
    regex_cache: &mut RegexCache,
) -> bool {
    use ConstraintOp::*;
    match op {
        DistinctHosts | DistinctProperty => true,
        IsSet => l.is_some(),
        IsNotSet => l.is_none(),
        NotEqual => match (l, r) {
            (None, None) => false,
            (Some(l), Some(r)) => compare_attributes(l, r).is_some_and(|o| o != Ordering::Equal),
            _ => true,
        },
        Equal | Less | LessEqual | Greater | GreaterEqual => {
            let (Some(l), Some(r)) = (l, r) else {
                return false;
            };
            if matches!(l, DeviceAttribute::Bool(_)) && op != Equal {
                return false;
            }
            compare_attributes(l, r).is_some_and(|o| ordering_satisfies(op, o))
        }
        Regexp | Version | Semver | SetContains | SetContainsAll | SetContainsAny => {
            let (Some(l), Some(r)) = (l, r) else {
                return false;
            };
            check_operator(op, Some(&attribute_text(l)), Some(&attribute_text(r)), regex_cache)
        }
    }
}

/// Whether a node's device attribute satisfies `op value`, where `value` is a
/// constraint literal such as `40 GiB`.
pub fn compare_attribute(node_attr: &DeviceAttribute, op: ConstraintOp, value: &str) -> bool {
    let value = parse_attribute(value);
    check_attribute_operator(op, Some(node_attr), Some(&value), &mut RegexCache::new())
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::expect;

    use super::*;

    #[test]
    fn units_are_longest_first_where_suffixes_overlap() {
        for (i, a) in UNITS.iter().enumerate() {
            for b in &UNITS[i + 1..] {
                assert!(!b.name.ends_with(a.name), "{} must come before {}", b.name, a.name);
            }
        }
    }

    #[test]
    fn parses_attributes() {
        let mut out = String::new();
        for input in [
            "40 GiB",
            "40GiB",
            "1.5 TB",
            "300 W",
            "1200 MHz",
            "2 GHz",
            "42",
            "-1.25",
            "true",
            "NVIDIA B",
            "5 parsecs",
            "10 MB/s",
            "",
            "1e3",
        ] {
            writeln!(out, "{input:?} => {:?}", parse_attribute(input)).unwrap();
        }
        expect![[r#"
            "40 GiB" => Int { value: 40, unit: Some("GiB") }
            "40GiB" => Int { value: 40, unit: Some("GiB") }
            "1.5 TB" => Float { value: 1.5, unit: Some("TB") }
            "300 W" => Int { value: 300, unit: Some("W") }
            "1200 MHz" => Int { value: 1200, unit: Some("MHz") }
            "2 GHz" => Int { value: 2, unit: Some("GHz") }
            "42" => Int { value: 42, unit: None }
            "-1.25" => Float { value: -1.25, unit: None }
            "true" => Bool(true)
            "NVIDIA B" => String("NVIDIA B")
            "5 parsecs" => String("5 parsecs")
            "10 MB/s" => Int { value: 10, unit: Some("MB/s") }
            "" => String("")
            "1e3" => Float { value: 1000.0, unit: None }
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn compares_with_units() {
        let memory = DeviceAttribute::Int { value: 81920, unit: Some("MiB".into()) };
        let clock = DeviceAttribute::Int { value: 1200, unit: Some("MHz".into()) };
        let power = DeviceAttribute::Float { value: 700.0, unit: Some("W".into()) };
        let plain = DeviceAttribute::Int { value: 4, unit: None };
        let model = DeviceAttribute::String("NVIDIA H200".into());
        let mig = DeviceAttribute::Bool(true);
        let cases: [(&str, &DeviceAttribute, &str, &str); 24] = [
            ("memory", &memory, ">=", "40 GiB"),
            ("memory", &memory, "=", "80 GiB"),
            ("memory", &memory, ">", "80GiB"),
            ("memory", &memory, "<", "1 TB"),
            ("memory", &memory, "<", "85.8 GB"),
            ("memory", &memory, ">", "85.8 GB"),
            ("memory", &memory, ">", "300 W"),
            ("memory", &memory, "!=", "300 W"),
            ("memory", &memory, ">", "40000"),
            ("clock", &clock, ">", "1 GHz"),
            ("clock", &clock, "<", "1.1 GHz"),
            ("clock", &clock, "=", "1200000 kHz"),
            ("power", &power, "<=", "0.7 kW"),
            ("power", &power, ">", "699999 mW"),
            ("plain", &plain, ">=", "4"),
            ("plain", &plain, "<", "4.5"),
            ("plain", &plain, "=", "four"),
            ("model", &model, "=", "NVIDIA H200"),
            ("model", &model, "regexp", "H[0-9]+$"),
            ("model", &model, ">", "NVIDIA A100"),
            ("model", &model, "=", "1"),
            ("mig", &mig, "=", "true"),
            ("mig", &mig, "!=", "false"),
            ("mig", &mig, ">", "false"),
        ];
        let mut out = String::new();
        for (name, attr, op, value) in cases {
            let result = compare_attribute(attr, op.parse().unwrap(), value);
            writeln!(out, "{name} {op} {value} => {result}").unwrap();
        }
        expect![[r#"
            memory >= 40 GiB => true
            memory = 80 GiB => true
            memory > 80GiB => false
            memory < 1 TB => true
            memory < 85.8 GB => false
            memory > 85.8 GB => true
            memory > 300 W => false
            memory != 300 W => false
            memory > 40000 => false
            clock > 1 GHz => true
            clock < 1.1 GHz => false
            clock = 1200000 kHz => true
            power <= 0.7 kW => true
            power > 699999 mW => true
            plain >= 4 => true
            plain < 4.5 => true
            plain = four => false
            model = NVIDIA H200 => true
            model regexp H[0-9]+$ => true
            model > NVIDIA A100 => true
            model = 1 => false
            mig = true => true
            mig != false => true
            mig > false => false
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn unset_sides() {
        let mut cache = RegexCache::new();
        let one = DeviceAttribute::Int { value: 1, unit: None };
        let mut out = String::new();
        for op in ["=", "!=", "<", "is_set", "is_not_set", "regexp"] {
            let op: ConstraintOp = op.parse().unwrap();
            let cases = [(None, Some(&one)), (Some(&one), None), (None, None)];
            let results: Vec<bool> =
                cases.iter().map(|(l, r)| check_attribute_operator(op, *l, *r, &mut cache)).collect();
            writeln!(out, "{op}: {results:?}").unwrap();
        }
        expect![[r#"
            =: [false, false, false]
            !=: [true, true, false]
            <: [false, false, false]
            is_set: [false, true, false]
            is_not_set: [true, false, true]
            regexp: [false, false, false]
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn huge_integers_fall_back_to_floats() {
        let big = DeviceAttribute::Int { value: i64::MAX, unit: Some("EiB".into()) };
        let small = DeviceAttribute::Int { value: 1, unit: Some("EB".into()) };
        assert_eq!(compare_attributes(&big, &small), Some(Ordering::Greater));
    }
}
