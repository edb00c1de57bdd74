//! Expression evaluation: input variables, locals, functions and run-time references.
//!
//! Nomad evaluates jobspec expressions with `var` and `local` in scope and hands every other
//! root (`attr`, `node`, `meta`, `NOMAD_ALLOC_ID`, ...) to an `UnknownVariable` hook that
//! returns the text `${<reference>}`, so those references reach the client untouched. hcl-rs
//! has no such hook; instead, before evaluating an expression we collect the traversals whose
//! root is not `var`/`local` (nor bound by a `for`) and declare those roots as nested objects
//! whose leaves are the literal `${...}` text. The evaluator then produces what Nomad does.

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::expr::{Expression, TraversalOperator};
use hcl::template::{Directive, Element, Template};
use hcl::{Map, Structure, Value};

use super::JobspecError;

/// Rounds of local evaluation; each round resolves at least one local or stops, so the
/// number of locals bounds it; this caps it against a pathological file.
const LOCALS_MAX: usize = 1_000;

/// Maximum expression nesting walked when collecting run-time references; deeper input is
/// evaluated without them (and fails with an undefined-variable error) instead of
/// overflowing the stack.
const EXPR_DEPTH_MAX: usize = 64;

const INPUT_VARIABLES_ROOT: &str = "var";
const LOCALS_ROOT: &str = "local";

/// Evaluates expressions with `var.*`, `local.*`, the jobspec functions and literal
/// run-time references in scope.
#[derive(Debug)]
pub(super) struct Evaluator {
    base: Context<'static>,
}

impl Evaluator {
    fn new(vars: &Map<String, Value>, locals: &Map<String, Value>) -> Evaluator {
        let mut base = functions_context();
        base.declare_var(INPUT_VARIABLES_ROOT, Value::Object(vars.clone()));
        base.declare_var(LOCALS_ROOT, Value::Object(locals.clone()));
        Evaluator { base }
    }

    /// Resolves the file's `variable`, `variables` and `locals` blocks against var files
    /// and `-var` values (precedence: default < var files in order < `-var`).
    pub(super) fn from_file(
        body: &hcl::Body,
        cli_vars: &[(String, String)],
        var_files: &[hcl::Body],
    ) -> Result<Evaluator, JobspecError> {
        let plain = functions_context();
        let mut declared: Vec<Declared> = Vec::new();
        for block in body.blocks() {
            match block.identifier.as_str() {
                "variable" => declared.push(decode_variable_block(block, &plain, &declared)?),
                "variables" => {
                    for structure in block.body.iter() {
                        let Structure::Attribute(attr) = structure else {
                            let name = structure_name(structure);
                            return Err(JobspecError::UnsupportedBlock { path: "variables".into(), name });
                        };
                        let name = attr.key.as_str().to_string();
                        if declared.iter().any(|d| d.name == name) {
                            let path = format!("variable {name:?}");
                            return Err(JobspecError::DuplicateBlock { path, block: "variable".into() });
                        }
                        let value = attr.expr.evaluate(&plain).map_err(|err| JobspecError::Eval {
                            path: "variables".into(),
                            name: name.clone(),
                            message: err.to_string(),
                        })?;
                        declared.push(Declared { name, ty: VarType::Any, value: Some(value) });
                    }
                }
                _ => {}
            }
        }

        for (index, file) in var_files.iter().enumerate() {
            for structure in file.iter() {
                let Structure::Attribute(attr) = structure else {
                    let path = format!("var file {index}");
                    return Err(JobspecError::UnsupportedBlock { path, name: structure_name(structure) });
                };
                let name = attr.key.as_str();
                let source_kind = format!("var file {index}");
                let Some(decl) = declared.iter_mut().find(|d| d.name == name) else {
                    return Err(JobspecError::UndefinedVariable { name: name.to_string(), source_kind });
                };
                let value = attr.expr.evaluate(&plain).map_err(|err| JobspecError::BadVariable {
                    name: name.to_string(),
                    message: format!("{source_kind}: {err}"),
                })?;
                let value = convert(value, &decl.ty)
                    .map_err(|message| JobspecError::BadVariable { name: name.to_string(), message })?;
                decl.value = Some(value);
            }
        }

        for (name, text) in cli_vars {
            let Some(decl) = declared.iter_mut().find(|d| &d.name == name) else {
                return Err(JobspecError::UndefinedVariable { name: name.clone(), source_kind: "-var".into() });
            };
            let value = parse_cli_value(text, &decl.ty, &plain)
                .map_err(|message| JobspecError::BadVariable { name: name.clone(), message })?;
            decl.value = Some(value);
        }

        let mut vars = Map::new();
        for decl in declared {
            let Some(value) = decl.value else {
                return Err(JobspecError::MissingVariable { name: decl.name });
            };
            vars.insert(decl.name, value);
        }

        let mut pending: Vec<&hcl::Attribute> = Vec::new();
        for block in body.blocks().filter(|b| b.identifier.as_str() == "locals") {
            for structure in block.body.iter() {
                let Structure::Attribute(attr) = structure else {
                    let name = structure_name(structure);
                    return Err(JobspecError::UnsupportedBlock { path: "locals".into(), name });
                };
                if pending.iter().any(|p| p.key.as_str() == attr.key.as_str()) {
                    let name = attr.key.as_str().to_string();
                    return Err(JobspecError::DuplicateArgument { path: "locals".into(), name });
                }
                pending.push(attr);
            }
        }
        if pending.len() > LOCALS_MAX {
            return Err(JobspecError::Eval {
                path: "locals".into(),
                name: "locals".into(),
                message: format!("more than {LOCALS_MAX} locals"),
            });
        }

        let mut locals = Map::new();
        let mut evaluator = Evaluator::new(&vars, &locals);
        while !pending.is_empty() {
            let mut first_error = None;
            let mut progressed = false;
            let mut still_pending = Vec::new();
            for attr in pending {
                match evaluator.eval(&attr.expr) {
                    Ok(value) => {
                        locals.insert(attr.key.as_str().to_string(), value);
                        evaluator = Evaluator::new(&vars, &locals);
                        progressed = true;
                    }
                    Err(message) => {
                        if first_error.is_none() {
                            first_error = Some(JobspecError::Eval {
                                path: "locals".into(),
                                name: attr.key.as_str().to_string(),
                                message,
                            });
                        }
                        still_pending.push(attr);
                    }
                }
            }
            if !progressed {
                // Nothing resolved this round: a cycle or a real error; report the first.
                return Err(first_error.unwrap_or(JobspecError::Eval {
                    path: "locals".into(),
                    name: "locals".into(),
                    message: "locals could not be resolved".into(),
                }));
            }
            pending = still_pending;
        }
        Ok(evaluator)
    }

    /// Evaluates one expression; the error is hcl-rs's message.
    pub(super) fn eval(&self, expr: &Expression) -> Result<Value, String> {
        let mut refs = Vec::new();
        let mut bound = Vec::new();
        collect_refs(expr, &mut bound, &mut refs, 0);
        if refs.is_empty() {
            return expr.evaluate(&self.base).map_err(|err| err.to_string());
        }
        let mut roots: Map<String, Value> = Map::new();
        for path in &refs {
            insert_ref(&mut roots, path);
        }
        let mut ctx = self.base.clone();
        for (root, value) in roots {
            ctx.declare_var(root, value);
        }
        expr.evaluate(&ctx).map_err(|err| err.to_string())
    }
}

/// A run-time reference: root name and the attribute names after it.
type RefPath = Vec<String>;

fn structure_name(structure: &Structure) -> String {
    match structure {
        Structure::Attribute(attr) => attr.key.as_str().to_string(),
        Structure::Block(block) => block.identifier.as_str().to_string(),
    }
}

fn collect_refs(expr: &Expression, bound: &mut Vec<String>, out: &mut Vec<RefPath>, depth: usize) {
    if depth > EXPR_DEPTH_MAX {
        return;
    }
    let depth = depth + 1;
    match expr {
        Expression::Null | Expression::Bool(_) | Expression::Number(_) | Expression::String(_) => {}
        Expression::Array(items) => items.iter().for_each(|item| collect_refs(item, bound, out, depth)),
        Expression::Object(object) => {
            for (key, value) in object {
                if let hcl::expr::ObjectKey::Expression(key) = key {
                    // A bare identifier key is a string key, not a reference.
                    if !matches!(key, Expression::Variable(_)) {
                        collect_refs(key, bound, out, depth);
                    }
                }
                collect_refs(value, bound, out, depth);
            }
        }
        Expression::TemplateExpr(template) => {
            if let Ok(template) = Template::from_expr(template) {
                collect_template_refs(&template, bound, out, depth);
            }
        }
        Expression::Variable(variable) => push_ref(variable.as_str(), &[], bound, out),
        Expression::Traversal(traversal) => {
            let mut attrs = Vec::new();
            for operator in &traversal.operators {
                match operator {
                    TraversalOperator::GetAttr(name) => attrs.push(name.as_str().to_string()),
                    TraversalOperator::Index(index) => {
                        collect_refs(index, bound, out, depth);
                        break;
                    }
                    _ => break,
                }
            }
            match &traversal.expr {
                Expression::Variable(root) => push_ref(root.as_str(), &attrs, bound, out),
                other => collect_refs(other, bound, out, depth),
            }
        }
        Expression::FuncCall(call) => call.args.iter().for_each(|arg| collect_refs(arg, bound, out, depth)),
        Expression::Parenthesis(inner) => collect_refs(inner, bound, out, depth),
        Expression::Conditional(cond) => {
            collect_refs(&cond.cond_expr, bound, out, depth);
            collect_refs(&cond.true_expr, bound, out, depth);
            collect_refs(&cond.false_expr, bound, out, depth);
        }
        Expression::Operation(operation) => match &**operation {
            hcl::expr::Operation::Unary(op) => collect_refs(&op.expr, bound, out, depth),
            hcl::expr::Operation::Binary(op) => {
                collect_refs(&op.lhs_expr, bound, out, depth);
                collect_refs(&op.rhs_expr, bound, out, depth);
            }
        },
        Expression::ForExpr(for_expr) => {
            collect_refs(&for_expr.collection_expr, bound, out, depth);
            let bound_len = bound.len();
            bound.push(for_expr.value_var.as_str().to_string());
            if let Some(key_var) = &for_expr.key_var {
                bound.push(key_var.as_str().to_string());
            }
            if let Some(key_expr) = &for_expr.key_expr {
                collect_refs(key_expr, bound, out, depth);
            }
            collect_refs(&for_expr.value_expr, bound, out, depth);
            if let Some(cond_expr) = &for_expr.cond_expr {
                collect_refs(cond_expr, bound, out, depth);
            }
            bound.truncate(bound_len);
        }
        // Expression is non-exhaustive; anything new is evaluated as is.
        _ => {}
    }
}

fn collect_template_refs(template: &Template, bound: &mut Vec<String>, out: &mut Vec<RefPath>, depth: usize) {
    if depth > EXPR_DEPTH_MAX {
        return;
    }
    let depth = depth + 1;
    for element in template.elements() {
        match element {
            Element::Literal(_) => {}
            Element::Interpolation(interpolation) => collect_refs(&interpolation.expr, bound, out, depth),
            Element::Directive(directive) => match &**directive {
                Directive::If(dir) => {
                    collect_refs(&dir.cond_expr, bound, out, depth);
                    collect_template_refs(&dir.true_template, bound, out, depth);
                    if let Some(false_template) = &dir.false_template {
                        collect_template_refs(false_template, bound, out, depth);
                    }
                }
                Directive::For(dir) => {
                    collect_refs(&dir.collection_expr, bound, out, depth);
                    let bound_len = bound.len();
                    bound.push(dir.value_var.as_str().to_string());
                    if let Some(key_var) = &dir.key_var {
                        bound.push(key_var.as_str().to_string());
                    }
                    collect_template_refs(&dir.template, bound, out, depth);
                    bound.truncate(bound_len);
                }
            },
        }
    }
}

fn push_ref(root: &str, attrs: &[String], bound: &[String], out: &mut Vec<RefPath>) {
    if root == INPUT_VARIABLES_ROOT || root == LOCALS_ROOT || bound.iter().any(|b| b == root) {
        return;
    }
    let mut path = Vec::with_capacity(attrs.len() + 1);
    path.push(root.to_string());
    path.extend(attrs.iter().cloned());
    out.push(path);
}

/// Declares `path` in `roots` as nested objects ending in the literal `${a.b.c}`. When one
/// reference is a prefix of another, the longer one wins (the shorter then evaluates to an
/// object, which a template rejects; Nomad has no such collision since its hook sees whole
/// traversals, and no real jobspec mixes `${meta}` with `${meta.rack}`).
fn insert_ref(roots: &mut Map<String, Value>, path: &[String]) {
    let text = format!("${{{}}}", path.join("."));
    let mut level = roots;
    for (i, name) in path.iter().enumerate() {
        let is_leaf = i + 1 == path.len();
        if is_leaf {
            level.entry(name.clone()).or_insert_with(|| Value::String(text.clone()));
            return;
        }
        let entry = level.entry(name.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { unreachable!("just made an object") };
        level = next;
    }
}

/// A declared input variable.
#[derive(Debug)]
struct Declared {
    name: String,
    ty: VarType,
    value: Option<Value>,
}

/// The variable types Caravan converts to; anything richer is taken as `any`.
#[derive(Debug, Clone, PartialEq)]
enum VarType {
    Any,
    String,
    Number,
    Bool,
    List(Box<VarType>),
    Map(Box<VarType>),
}

fn decode_variable_block(
    block: &hcl::Block,
    plain: &Context<'static>,
    declared: &[Declared],
) -> Result<Declared, JobspecError> {
    let [label] = block.labels.as_slice() else {
        return Err(JobspecError::BlockLabels {
            path: "top level".into(),
            block: "variable".into(),
            expected: 1,
            found: block.labels.len(),
        });
    };
    let name = label.as_str().to_string();
    let path = format!("variable {name:?}");
    if declared.iter().any(|d| d.name == name) {
        return Err(JobspecError::DuplicateBlock { path, block: "variable".into() });
    }
    let mut ty = VarType::Any;
    let mut default = None;
    for structure in block.body.iter() {
        let Structure::Attribute(attr) = structure else {
            return Err(JobspecError::UnsupportedBlock { path, name: structure_name(structure) });
        };
        match attr.key.as_str() {
            "type" => {
                ty = parse_type(&attr.expr).map_err(|message| JobspecError::WrongType {
                    path: path.clone(),
                    name: "type".into(),
                    message,
                })?;
            }
            "default" => {
                let value = attr.expr.evaluate(plain).map_err(|err| JobspecError::Eval {
                    path: path.clone(),
                    name: "default".into(),
                    message: err.to_string(),
                })?;
                default = Some(value);
            }
            "description" | "sensitive" => {}
            other => return Err(JobspecError::UnsupportedArgument { path, name: other.to_string() }),
        }
    }
    let value = match default {
        // `default = null` means "no default".
        Some(Value::Null) | None => None,
        Some(value) => {
            Some(convert(value, &ty).map_err(|message| JobspecError::BadVariable { name: name.clone(), message })?)
        }
    };
    Ok(Declared { name, ty, value })
}

fn parse_type(expr: &Expression) -> Result<VarType, String> {
    match expr {
        Expression::Variable(name) => match name.as_str() {
            "string" => Ok(VarType::String),
            "number" => Ok(VarType::Number),
            "bool" => Ok(VarType::Bool),
            "any" => Ok(VarType::Any),
            "list" | "set" => Ok(VarType::List(Box::new(VarType::Any))),
            "map" => Ok(VarType::Map(Box::new(VarType::Any))),
            other => Err(format!("unknown type {other:?}")),
        },
        Expression::FuncCall(call) => {
            let [element] = call.args.as_slice() else {
                return Err(format!("type {}() takes exactly one element type", call.name.name.as_str()));
            };
            let element = Box::new(parse_type(element)?);
            match call.name.name.as_str() {
                "list" | "set" | "tuple" => Ok(VarType::List(element)),
                "map" | "object" => Ok(VarType::Map(element)),
                other => Err(format!("unknown type constructor {other:?}")),
            }
        }
        // object({...}) and tuple([...]) shapes are taken as any.
        _ => Ok(VarType::Any),
    }
}

/// Converts a value to a declared type, like cty's conversions for the simple types.
fn convert(value: Value, ty: &VarType) -> Result<Value, String> {
    match (ty, value) {
        (VarType::Any, value) | (_, value @ Value::Null) => Ok(value),
        (VarType::String, Value::String(text)) => Ok(Value::String(text)),
        (VarType::String, Value::Number(number)) => Ok(Value::String(number.to_string())),
        (VarType::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (VarType::Number, Value::Number(number)) => Ok(Value::Number(number)),
        (VarType::Number, Value::String(text)) => parse_number(&text)
            .map(Value::Number)
            .ok_or_else(|| format!("a number is required, and {text:?} is not a number")),
        (VarType::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
        (VarType::Bool, Value::String(text)) => match text.as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("a bool is required, and {text:?} is neither true nor false")),
        },
        (VarType::List(element), Value::Array(items)) => {
            items.into_iter().map(|item| convert(item, element)).collect::<Result<Vec<_>, _>>().map(Value::Array)
        }
        (VarType::Map(element), Value::Object(entries)) => entries
            .into_iter()
            .map(|(key, item)| convert(item, element).map(|item| (key, item)))
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object),
        (ty, value) => Err(format!("a {} is required, found {}", type_label(ty), value_type_name(&value))),
    }
}

fn type_label(ty: &VarType) -> &'static str {
    match ty {
        VarType::Any => "value",
        VarType::String => "string",
        VarType::Number => "number",
        VarType::Bool => "bool",
        VarType::List(_) => "list",
        VarType::Map(_) => "map",
    }
}

/// The name of a value's type, for error messages.
pub(super) fn value_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

fn parse_number(text: &str) -> Option<hcl::Number> {
    let text = text.trim();
    if let Ok(int) = text.parse::<i64>() {
        return Some(hcl::Number::from(int));
    }
    text.parse::<f64>().ok().and_then(hcl::Number::from_f64)
}

/// A `-var` value: strings stay strings (as Nomad does for `string` and untyped variables);
/// other declared types parse the text as an HCL expression, then convert.
fn parse_cli_value(text: &str, ty: &VarType, plain: &Context<'static>) -> Result<Value, String> {
    match ty {
        VarType::Any | VarType::String => Ok(Value::String(text.to_string())),
        VarType::Number | VarType::Bool => convert(Value::String(text.to_string()), ty),
        VarType::List(_) | VarType::Map(_) => {
            let body: hcl::Body =
                hcl::parse(&format!("value = {text}\n")).map_err(|err| format!("cannot parse {text:?}: {err}"))?;
            let Some(attr) = body.attributes().next() else {
                return Err(format!("cannot parse {text:?}"));
            };
            let value = attr.expr.evaluate(plain).map_err(|err| format!("cannot evaluate {text:?}: {err}"))?;
            convert(value, ty)
        }
    }
}

/// A context holding only the jobspec functions.
fn functions_context() -> Context<'static> {
    let mut ctx = Context::new();
    ctx.declare_func("upper", FuncDef::builder().param(ParamType::String).build(func_upper));
    ctx.declare_func("lower", FuncDef::builder().param(ParamType::String).build(func_lower));
    ctx.declare_func("trimspace", FuncDef::builder().param(ParamType::String).build(func_trimspace));
    ctx.declare_func(
        "format",
        FuncDef::builder().param(ParamType::String).variadic_param(ParamType::Any).build(func_format),
    );
    ctx.declare_func(
        "join",
        FuncDef::builder()
            .param(ParamType::String)
            .variadic_param(ParamType::array_of(ParamType::Any))
            .build(func_join),
    );
    ctx.declare_func("split", FuncDef::builder().param(ParamType::String).param(ParamType::String).build(func_split));
    ctx.declare_func(
        "replace",
        FuncDef::builder()
            .param(ParamType::String)
            .param(ParamType::String)
            .param(ParamType::String)
            .build(func_replace),
    );
    ctx.declare_func(
        "concat",
        FuncDef::builder().variadic_param(ParamType::array_of(ParamType::Any)).build(func_concat),
    );
    ctx.declare_func("length", FuncDef::builder().param(ParamType::Any).build(func_length));
    ctx.declare_func(
        "contains",
        FuncDef::builder().param(ParamType::array_of(ParamType::Any)).param(ParamType::Any).build(func_contains),
    );
    ctx.declare_func("tostring", FuncDef::builder().param(ParamType::Any).build(func_tostring));
    ctx.declare_func("tonumber", FuncDef::builder().param(ParamType::Any).build(func_tonumber));
    ctx
}

fn string_arg(args: &FuncArgs, index: usize) -> Result<&str, String> {
    args.get(index).and_then(Value::as_str).ok_or_else(|| format!("argument {index} must be a string"))
}

fn func_upper(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::String(string_arg(&args, 0)?.to_uppercase()))
}

fn func_lower(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::String(string_arg(&args, 0)?.to_lowercase()))
}

fn func_trimspace(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::String(string_arg(&args, 0)?.trim().to_string()))
}

fn func_split(args: FuncArgs) -> Result<Value, String> {
    let separator = string_arg(&args, 0)?;
    let text = string_arg(&args, 1)?;
    if separator.is_empty() {
        return Err("split: the separator must not be empty".into());
    }
    Ok(Value::Array(text.split(separator).map(Value::from).collect()))
}

fn func_replace(args: FuncArgs) -> Result<Value, String> {
    let text = string_arg(&args, 0)?;
    let search = string_arg(&args, 1)?;
    let replacement = string_arg(&args, 2)?;
    if search.is_empty() {
        return Ok(Value::String(text.to_string()));
    }
    Ok(Value::String(text.replace(search, replacement)))
}

/// The text of a primitive value, as cty's string conversion gives it.
fn value_to_text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("cannot convert {} to a string", value_type_name(other))),
    }
}

/// `format(spec, args...)`: the verbs `%s`, `%d`, `%v`, `%q`, `%f` and `%%`.
fn func_format(args: FuncArgs) -> Result<Value, String> {
    let spec = string_arg(&args, 0)?;
    let mut values = args.iter().skip(1);
    let mut out = String::with_capacity(spec.len());
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let verb = chars.next().ok_or("format: the spec ends with a lone %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let value = values.next().ok_or_else(|| format!("format: not enough arguments for %{verb}"))?;
        match verb {
            's' | 'v' => match value {
                Value::Array(_) | Value::Object(_) if verb == 'v' => {
                    out.push_str(&serde_json::to_string(value).map_err(|err| err.to_string())?)
                }
                _ => out.push_str(&value_to_text(value)?),
            },
            'q' => out.push_str(&format!("{:?}", value_to_text(value)?)),
            'd' => match value.as_i64() {
                Some(int) => out.push_str(&int.to_string()),
                None => return Err(format!("format: %d needs a whole number, found {}", value_type_name(value))),
            },
            'f' => match value.as_f64() {
                Some(float) => out.push_str(&format!("{float:.6}")),
                None => return Err(format!("format: %f needs a number, found {}", value_type_name(value))),
            },
            other => return Err(format!("format: unsupported verb %{other}")),
        }
    }
    if values.next().is_some() {
        return Err("format: too many arguments".into());
    }
    Ok(Value::String(out))
}

fn func_join(args: FuncArgs) -> Result<Value, String> {
    let separator = string_arg(&args, 0)?.to_string();
    let mut parts = Vec::new();
    for list in args.iter().skip(1) {
        for item in list.as_array().into_iter().flatten() {
            parts.push(value_to_text(item)?);
        }
    }
    Ok(Value::String(parts.join(&separator)))
}

fn func_concat(args: FuncArgs) -> Result<Value, String> {
    let mut out = Vec::new();
    for list in args.iter() {
        out.extend(list.as_array().into_iter().flatten().cloned());
    }
    Ok(Value::Array(out))
}

fn func_length(args: FuncArgs) -> Result<Value, String> {
    let length = match args.first() {
        Some(Value::Array(items)) => items.len(),
        Some(Value::Object(entries)) => entries.len(),
        Some(Value::String(text)) => text.chars().count(),
        Some(other) => return Err(format!("length: cannot take the length of a {}", value_type_name(other))),
        None => return Err("length: one argument is required".into()),
    };
    Ok(Value::from(length))
}

fn func_contains(args: FuncArgs) -> Result<Value, String> {
    let list = args.first().and_then(Value::as_array).ok_or("contains: the first argument must be a list")?;
    let needle = args.get(1).ok_or("contains: two arguments are required")?;
    Ok(Value::Bool(list.contains(needle)))
}

fn func_tostring(args: FuncArgs) -> Result<Value, String> {
    match args.first() {
        Some(Value::Null) | None => Ok(Value::Null),
        Some(value) => value_to_text(value).map(Value::String),
    }
}

fn func_tonumber(args: FuncArgs) -> Result<Value, String> {
    match args.first() {
        Some(Value::Number(number)) => Ok(Value::Number(*number)),
        Some(Value::String(text)) => {
            parse_number(text).map(Value::Number).ok_or_else(|| format!("tonumber: {text:?} is not a number"))
        }
        Some(Value::Null) | None => Ok(Value::Null),
        Some(other) => Err(format!("tonumber: cannot convert {} to a number", value_type_name(other))),
    }
}
