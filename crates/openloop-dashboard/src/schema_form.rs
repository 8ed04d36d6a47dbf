//! A form generated from a function's request schema (JSON Schema, as pydantic writes it),
//! and the form's values back into the JSON request.
//!
//! Strings, integers, numbers and booleans get inputs of their own; anything else (objects,
//! arrays, unions of several types, references) gets a JSON text box. `Optional[T]`
//! (`anyOf: [T, null]`) is `T` and may be left empty. The server still validates the request
//! with the function's own schema, so this only has to make a well-typed guess.

use maud::{html, Markup};
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Number,
    Boolean,
    Json,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub kind: Kind,
    pub required: bool,
    pub description: Option<String>,
    pub default: Option<Value>,
}

/// The form field of a parameter: prefixed so it cannot collide with `csrf`.
pub fn input_name(param: &str) -> String {
    format!("arg.{param}")
}

fn kind_of(schema: &Value) -> Kind {
    let simple = |t: &str| match t {
        "string" => Some(Kind::Text),
        "integer" => Some(Kind::Integer),
        "number" => Some(Kind::Number),
        "boolean" => Some(Kind::Boolean),
        _ => None,
    };
    if schema.get("enum").is_some() {
        return Kind::Json;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        return simple(t).unwrap_or(Kind::Json);
    }
    // Optional[T]: one non-null alternative.
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let others: Vec<&Value> = any
            .iter()
            .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [one] = others.as_slice() {
            return kind_of(one);
        }
    }
    Kind::Json
}

/// The parameters of a request schema, in the schema's order.
pub fn fields(schema: &Value) -> Vec<Field> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let empty = Map::new();
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    props
        .iter()
        .map(|(name, s)| Field {
            name: name.clone(),
            kind: kind_of(s),
            required: required.contains(&name.as_str()),
            description: s
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            default: s.get("default").cloned(),
        })
        .collect()
}

/// The inputs for `fields`, filled with `values` (the last submission) or defaults.
pub fn render(fields: &[Field], values: &HashMap<String, String>) -> Markup {
    html! {
        @for f in fields {
            @let id = input_name(&f.name);
            @let given = values.get(&id).cloned();
            @let default = f.default.as_ref().map(|d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            @let value = given.clone().or(default).unwrap_or_default();
            @let hint = match f.kind {
                Kind::Text => "text",
                Kind::Integer => "integer",
                Kind::Number => "number",
                Kind::Boolean => "true or false",
                Kind::Json => "JSON",
            };
            label for=(id) {
                (f.name)
                @if f.required { " *" }
                " " span.field-help { (hint) @if let Some(d) = &f.description { " · " (d) } }
            }
            @match f.kind {
                Kind::Boolean => {
                    @let checked = given.is_some() || matches!(f.default, Some(Value::Bool(true)));
                    input #(id) type="checkbox" name=(id) value="true" checked[checked];
                }
                Kind::Integer => { input #(id) type="number" step="1" name=(id) value=(value) required[f.required]; }
                Kind::Number => { input #(id) type="number" step="any" name=(id) value=(value) required[f.required]; }
                Kind::Text => { input #(id) type="text" name=(id) value=(value) required[f.required]; }
                Kind::Json => { textarea #(id) name=(id) required[f.required] { (value) } }
            }
        }
    }
}

/// The request object from a submitted form. Empty optional fields are left out (the
/// function's default applies); an unparsable value names the field.
pub fn to_request(fields: &[Field], form: &HashMap<String, String>) -> Result<Value, String> {
    let mut out = Map::new();
    for f in fields {
        let raw = form.get(&input_name(&f.name)).map(|s| s.trim());
        let value = match (f.kind, raw) {
            (Kind::Boolean, v) => Value::Bool(v.is_some()),
            (_, None) | (_, Some("")) if f.required => {
                if f.kind == Kind::Text {
                    Value::String(String::new())
                } else {
                    return Err(format!("`{}` is required", f.name));
                }
            }
            (_, None) | (_, Some("")) => continue,
            (Kind::Text, Some(v)) => Value::String(v.to_string()),
            (Kind::Integer, Some(v)) => v
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("`{}` must be a whole number", f.name))?,
            (Kind::Number, Some(v)) => v
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("`{}` must be a number", f.name))?,
            (Kind::Json, Some(v)) => serde_json::from_str(v)
                .map_err(|e| format!("`{}` is not valid JSON: {e}", f.name))?,
        };
        out.insert(f.name.clone(), value);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "count": {"type": "integer", "default": 3},
                "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": null},
                "loud": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["name", "tags"]
        })
    }

    #[test]
    fn kinds_from_the_schema() {
        let f = fields(&schema());
        let kinds: Vec<(&str, Kind, bool)> = f
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.required))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("name", Kind::Text, true),
                ("count", Kind::Integer, false),
                ("ratio", Kind::Number, false),
                ("loud", Kind::Boolean, false),
                ("tags", Kind::Json, true),
            ]
        );
    }

    #[test]
    fn form_values_become_typed_json() {
        let f = fields(&schema());
        let form: HashMap<String, String> = [
            ("arg.name", "Bob"),
            ("arg.count", "7"),
            ("arg.ratio", ""),
            ("arg.loud", "true"),
            ("arg.tags", r#"["a", "b"]"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            to_request(&f, &form).unwrap(),
            json!({"name": "Bob", "count": 7, "loud": true, "tags": ["a", "b"]})
        );
        let mut bad = form.clone();
        bad.insert("arg.count".into(), "seven".into());
        assert!(to_request(&f, &bad).unwrap_err().contains("count"));
        bad.insert("arg.count".into(), "7".into());
        bad.insert("arg.tags".into(), "[".into());
        assert!(to_request(&f, &bad).unwrap_err().contains("tags"));
    }
}
