use crate::model::rkyv_with::ArcStr;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Constraint operators, with Nomad's spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ConstraintOp {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    IsSet,
    IsNotSet,
    Regexp,
    Version,
    Semver,
    SetContains,
    SetContainsAll,
    SetContainsAny,
    DistinctHosts,
    DistinctProperty,
}

/// An operator string that is none of Nomad's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown constraint operator {0:?}")]
pub struct UnknownOperator(pub String);

impl FromStr for ConstraintOp {
    type Err = UnknownOperator;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use ConstraintOp::*;
        Ok(match s {
            "=" | "==" | "is" => Equal,
            "!=" | "not" => NotEqual,
            "<" => Less,
            "<=" => LessEqual,
            ">" => Greater,
            ">=" => GreaterEqual,
            "is_set" => IsSet,
            "is_not_set" => IsNotSet,
            "regexp" => Regexp,
            "version" => Version,
            "semver" => Semver,
            "set_contains" => SetContains,
            "set_contains_all" => SetContainsAll,
            "set_contains_any" => SetContainsAny,
            "distinct_hosts" => DistinctHosts,
            "distinct_property" => DistinctProperty,
            other => return Err(UnknownOperator(other.to_string())),
        })
    }
}

impl ConstraintOp {
    pub fn as_str(self) -> &'static str {
        use ConstraintOp::*;
        match self {
            Equal => "=",
            NotEqual => "!=",
            Less => "<",
            LessEqual => "<=",
            Greater => ">",
            GreaterEqual => ">=",
            IsSet => "is_set",
            IsNotSet => "is_not_set",
            Regexp => "regexp",
            Version => "version",
            Semver => "semver",
            SetContains => "set_contains",
            SetContainsAll => "set_contains_all",
            SetContainsAny => "set_contains_any",
            DistinctHosts => "distinct_hosts",
            DistinctProperty => "distinct_property",
        }
    }
}

impl fmt::Display for ConstraintOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `constraint { attribute = "${attr.kernel.name}" operator = "=" value = "linux" }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Constraint {
    /// Left target, usually an interpolation such as `${attr.kernel.name}`.
    #[rkyv(with = ArcStr)]
    pub l_target: Arc<str>,
    /// Right target: a literal, or an interpolation.
    #[rkyv(with = ArcStr)]
    pub r_target: Arc<str>,
    pub operand: ConstraintOp,
}

impl Constraint {
    pub fn new(l_target: &str, operand: ConstraintOp, r_target: &str) -> Constraint {
        Constraint { l_target: l_target.into(), r_target: r_target.into(), operand }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.l_target, self.operand, self.r_target)
    }
}

/// `affinity { attribute = ... operator = ... value = ... weight = 50 }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Affinity {
    #[rkyv(with = ArcStr)]
    pub l_target: Arc<str>,
    #[rkyv(with = ArcStr)]
    pub r_target: Arc<str>,
    pub operand: ConstraintOp,
    /// -100..=100, never 0.
    pub weight: i8,
}

/// `spread { attribute = "${node.datacenter}" weight = 50 target "dc1" { percent = 70 } }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Spread {
    #[rkyv(with = ArcStr)]
    pub attribute: Arc<str>,
    /// 0..=100.
    pub weight: u8,
    pub targets: Vec<SpreadTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SpreadTarget {
    #[rkyv(with = ArcStr)]
    pub value: Arc<str>,
    /// 0..=100; the targets of one spread add up to at most 100.
    pub percent: u8,
}
