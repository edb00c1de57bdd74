//! The untyped tree every configuration file is read into first, whatever its
//! format: HCL bodies and JSON documents both become a [`ConfigValue`], so the
//! typed decoder, the unknown-key check and the merge of several files are
//! written once.

use std::collections::BTreeMap;

use hcl::eval::{Context, Evaluate};

/// How deep blocks and objects may nest. Nomad's deepest agent setting sits
/// four levels down (`plugin "docker" { config { auth { ... } } }`); the
/// bound keeps a hostile file from recursing the decoder off the stack.
pub(crate) const NESTING_DEPTH_MAX: usize = 32;

/// A configuration value before it is given a type.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<ConfigValue>),
    /// Keys sorted, so errors about several keys come out in a stable order.
    Object(BTreeMap<String, ConfigValue>),
}

impl ConfigValue {
    /// The type's name as error messages say it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ConfigValue::Null => "null",
            ConfigValue::Bool(_) => "bool",
            ConfigValue::Int(_) | ConfigValue::Float(_) => "number",
            ConfigValue::String(_) => "string",
            ConfigValue::List(_) => "list",
            ConfigValue::Object(_) => "block",
        }
    }

    pub(crate) fn empty_object() -> ConfigValue {
        ConfigValue::Object(BTreeMap::new())
    }

    /// Merge `later` over `self` as Nomad merges agent configs: blocks and
    /// maps merge key by key, everything else (scalars, lists) is replaced by
    /// the later file's value.
    pub(crate) fn merge(&mut self, later: ConfigValue) {
        match (self, later) {
            (ConfigValue::Object(base), ConfigValue::Object(over)) => {
                for (key, value) in over {
                    match base.get_mut(&key) {
                        Some(existing) => existing.merge(value),
                        None => {
                            base.insert(key, value);
                        }
                    }
                }
            }
            (slot, later) => *slot = later,
        }
    }
}

/// Why a file could not be read into a tree (before any key is looked at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError(pub(crate) String);

/// Read an HCL body. Attributes are evaluated without variables or functions
/// (an agent config has none); a block `name "label" { ... }` becomes
/// `name = { label = { ... } }`, and blocks repeated with different labels
/// merge, as Nomad's `plugin` blocks do.
pub(crate) fn from_hcl(text: &str) -> Result<ConfigValue, SyntaxError> {
    let body = hcl::parse(text).map_err(|e| SyntaxError(e.to_string().trim_start().to_owned()))?;
    body_to_value(&body, "", 0)
}

fn body_to_value(body: &hcl::Body, path: &str, depth: usize) -> Result<ConfigValue, SyntaxError> {
    if depth > NESTING_DEPTH_MAX {
        return Err(SyntaxError(format!("{path}: blocks nested deeper than {NESTING_DEPTH_MAX}")));
    }
    let context = Context::new();
    let mut object = BTreeMap::new();
    for structure in body.iter() {
        match structure {
            hcl::Structure::Attribute(attribute) => {
                let key = attribute.key.as_str();
                let key_path = join(path, key);
                let value = attribute
                    .expr
                    .evaluate(&context)
                    .map_err(|e| SyntaxError(format!("{key_path}: {}", e.to_string().trim())))?;
                if object.contains_key(key) {
                    return Err(SyntaxError(format!("{key_path}: set more than once")));
                }
                object.insert(key.to_owned(), from_hcl_value(value, &key_path, depth + 1)?);
            }
            hcl::Structure::Block(block) => {
                let mut key_path = join(path, block.identifier.as_str());
                for label in &block.labels {
                    key_path = join(&key_path, label.as_str());
                }
                let mut value = body_to_value(&block.body, &key_path, depth + 1)?;
                // Wrap the body in one object per label, innermost label first.
                for label in block.labels.iter().rev() {
                    value = ConfigValue::Object(BTreeMap::from([(label.as_str().to_owned(), value)]));
                }
                insert_block(&mut object, block.identifier.as_str(), value, &key_path)?;
            }
        }
    }
    Ok(ConfigValue::Object(object))
}

/// Add a block to its parent: a second block of the same name merges with the
/// first when they carry different labels, and is refused when it would set a
/// key the first one already set.
fn insert_block(
    object: &mut BTreeMap<String, ConfigValue>,
    key: &str,
    value: ConfigValue,
    key_path: &str,
) -> Result<(), SyntaxError> {
    match object.get_mut(key) {
        None => {
            object.insert(key.to_owned(), value);
            Ok(())
        }
        Some(existing) => {
            if overlaps(existing, &value) {
                return Err(SyntaxError(format!("{key_path}: block given more than once")));
            }
            existing.merge(value);
            Ok(())
        }
    }
}

/// Whether merging `b` into `a` would overwrite anything `a` set.
fn overlaps(a: &ConfigValue, b: &ConfigValue) -> bool {
    match (a, b) {
        (ConfigValue::Object(a), ConfigValue::Object(b)) => {
            b.iter().any(|(key, b_value)| a.get(key).is_some_and(|a_value| overlaps(a_value, b_value)))
        }
        _ => true,
    }
}

fn from_hcl_value(value: hcl::Value, path: &str, depth: usize) -> Result<ConfigValue, SyntaxError> {
    if depth > NESTING_DEPTH_MAX {
        return Err(SyntaxError(format!("{path}: values nested deeper than {NESTING_DEPTH_MAX}")));
    }
    Ok(match value {
        hcl::Value::Null => ConfigValue::Null,
        hcl::Value::Bool(b) => ConfigValue::Bool(b),
        hcl::Value::Number(n) => match n.as_i64() {
            Some(i) => ConfigValue::Int(i),
            None => ConfigValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        hcl::Value::String(s) => ConfigValue::String(s),
        hcl::Value::Array(items) => ConfigValue::List(
            items.into_iter().map(|item| from_hcl_value(item, path, depth + 1)).collect::<Result<_, _>>()?,
        ),
        hcl::Value::Object(map) => {
            let mut object = BTreeMap::new();
            for (key, item) in map {
                let item = from_hcl_value(item, &join(path, &key), depth + 1)?;
                object.insert(key, item);
            }
            ConfigValue::Object(object)
        }
    })
}

/// Read a JSON document. Blocks may be objects or, as HCL's JSON form writes
/// them, lists of objects; the decoder accepts both.
pub(crate) fn from_json(text: &str) -> Result<ConfigValue, SyntaxError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| SyntaxError(e.to_string()))?;
    from_json_value(value, "", 0)
}

fn from_json_value(value: serde_json::Value, path: &str, depth: usize) -> Result<ConfigValue, SyntaxError> {
    if depth > NESTING_DEPTH_MAX {
        return Err(SyntaxError(format!("{path}: values nested deeper than {NESTING_DEPTH_MAX}")));
    }
    Ok(match value {
        serde_json::Value::Null => ConfigValue::Null,
        serde_json::Value::Bool(b) => ConfigValue::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => ConfigValue::Int(i),
            None => ConfigValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => ConfigValue::String(s),
        serde_json::Value::Array(items) => {
            let items: Vec<ConfigValue> =
                items.into_iter().map(|item| from_json_value(item, path, depth + 1)).collect::<Result<_, _>>()?;
            // HCL's JSON form writes a block as a list of objects; no agent
            // setting is a list of objects otherwise, so merge them into the
            // one block they stand for, which then merges across files.
            if !items.is_empty() && items.iter().all(|item| matches!(item, ConfigValue::Object(_))) {
                let mut block = ConfigValue::empty_object();
                for item in items {
                    block.merge(item);
                }
                block
            } else {
                ConfigValue::List(items)
            }
        }
        serde_json::Value::Object(map) => {
            let mut object = BTreeMap::new();
            for (key, item) in map {
                let item = from_json_value(item, &join(path, &key), depth + 1)?;
                object.insert(key, item);
            }
            ConfigValue::Object(object)
        }
    })
}

/// `parent.key`, or `key` at the top.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}
