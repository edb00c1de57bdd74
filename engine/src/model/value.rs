use std::collections::BTreeMap;
use std::sync::Arc;

use rkyv::with::{Identity, MapKV};

use super::rkyv_with::ArcStr;

/// A driver's `config { ... }` block: a JSON-like tree the engine only compares
/// (a change is a destructive update) and hands to the client. The engine has
/// no JSON dependency, so it carries its own tree.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
// A tree: the derive's own bounds would ask `ConfigValue: Archive` while
// proving it, so the recursive fields omit them and the container bounds
// (writer, allocator, validation context) are spelled out instead.
#[rkyv(
    serialize_bounds(__S: rkyv::ser::Writer + rkyv::ser::Allocator, __S::Error: rkyv::rancor::Source),
    deserialize_bounds(__D::Error: rkyv::rancor::Source),
    bytecheck(bounds(__C: rkyv::validation::ArchiveContext, __C::Error: rkyv::rancor::Source))
)]
pub enum ConfigValue {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(#[rkyv(with = ArcStr)] Arc<str>),
    List(#[rkyv(omit_bounds)] Vec<ConfigValue>),
    Map(#[rkyv(omit_bounds, with = MapKV<ArcStr, Identity>)] BTreeMap<Arc<str>, ConfigValue>),
}

impl ConfigValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ConfigValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        match self {
            ConfigValue::Map(m) => m.get(key),
            _ => None,
        }
    }
}
