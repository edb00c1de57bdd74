use std::collections::BTreeMap;
use std::sync::Arc;

/// A driver's `config { ... }` block: a JSON-like tree the engine only compares
/// (a change is a destructive update) and hands to the client. The engine has
/// no JSON dependency, so it carries its own tree.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ConfigValue {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(Arc<str>),
    List(Vec<ConfigValue>),
    Map(BTreeMap<Arc<str>, ConfigValue>),
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
