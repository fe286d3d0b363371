//! Request-body validation that reports every problem at once (the M0 contract lists all
//! errors, not the first), including wrong JSON types, without echoing any value back.

use crate::errors::{ApiError, FieldError};
use serde_json::{Map, Value};

/// A JSON object whose fields are taken one by one; problems accumulate in `errors`.
#[derive(Debug)]
pub struct Fields {
    map: Map<String, Value>,
    pub errors: Vec<FieldError>,
}

impl Fields {
    /// Parses a body that must be a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            // serde's message names a line and column, never the content.
            ApiError::field(
                "body",
                "a JSON object",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        match value {
            Value::Object(map) => Ok(Fields {
                map,
                errors: Vec::new(),
            }),
            _ => Err(ApiError::field(
                "body",
                "a JSON object",
                "the body must be a JSON object",
            )),
        }
    }

    pub fn error(&mut self, field: &str, constraint: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            constraint: constraint.into(),
            message: message.into(),
        });
    }

    /// Removes a field; JSON `null` counts as absent, as OpenAI clients send it for defaults.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|v| !v.is_null())
    }

    pub fn string(&mut self, name: &str) -> Option<String> {
        match self.take(name)? {
            Value::String(s) => Some(s),
            _ => {
                self.error(name, "a string", format!("{name} must be a string"));
                None
            }
        }
    }

    pub fn required_string(&mut self, name: &str) -> Option<String> {
        if !self.has(name) {
            self.error(name, "required", format!("{name} is required"));
            return None;
        }
        self.string(name)
    }

    pub fn bool(&mut self, name: &str) -> Option<bool> {
        match self.take(name)? {
            Value::Bool(b) => Some(b),
            _ => {
                self.error(name, "a boolean", format!("{name} must be true or false"));
                None
            }
        }
    }

    /// An integer in `[min, max]`.
    pub fn int(&mut self, name: &str, min: i64, max: i64) -> Option<i64> {
        let constraint = format!("an integer, {min} <= {name} <= {max}");
        let v = self.take(name)?;
        match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(_) => {
                self.error(
                    name,
                    &constraint,
                    format!("{name} must be between {min} and {max}"),
                );
                None
            }
            None => {
                self.error(name, &constraint, format!("{name} must be an integer"));
                None
            }
        }
    }

    /// A u64 (seeds). Negative values are accepted as their two's complement, as OpenAI
    /// clients may send any 64-bit integer.
    pub fn seed(&mut self, name: &str) -> Option<u64> {
        let v = self.take(name)?;
        match (v.as_u64(), v.as_i64()) {
            (Some(n), _) => Some(n),
            (None, Some(n)) => Some(n as u64),
            _ => {
                self.error(
                    name,
                    "a 64-bit integer",
                    format!("{name} must be an integer"),
                );
                None
            }
        }
    }

    /// A number in `[min, max]` (`min_open`: the minimum itself is excluded).
    pub fn number(&mut self, name: &str, min: f64, max: f64, min_open: bool) -> Option<f32> {
        let lo = if min_open { "<" } else { "<=" };
        let constraint = format!("{min} {lo} {name} <= {max}");
        let v = self.take(name)?;
        match v.as_f64() {
            Some(x) if x <= max && (x > min || (!min_open && x == min)) => Some(x as f32),
            Some(_) => {
                self.error(
                    name,
                    &constraint,
                    format!("{name} is out of range ({constraint})"),
                );
                None
            }
            None => {
                self.error(name, &constraint, format!("{name} must be a number"));
                None
            }
        }
    }

    /// A string or a list of strings, at most `max` of them, none empty.
    pub fn stop_list(&mut self, name: &str, max: usize) -> Vec<String> {
        let constraint = format!("a string or up to {max} non-empty strings");
        let list = match self.take(name) {
            None => return Vec::new(),
            Some(Value::String(s)) => vec![Value::String(s)],
            Some(Value::Array(a)) => a,
            Some(_) => {
                self.error(
                    name,
                    &constraint,
                    format!("{name} must be a string or a list of strings"),
                );
                return Vec::new();
            }
        };
        if list.len() > max {
            self.error(
                name,
                &constraint,
                format!(
                    "{name} has {} entries; at most {max} are allowed",
                    list.len()
                ),
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        for v in list {
            match v {
                Value::String(s) if !s.is_empty() => out.push(s),
                _ => {
                    self.error(
                        name,
                        &constraint,
                        format!("every {name} entry must be a non-empty string"),
                    );
                    return Vec::new();
                }
            }
        }
        out
    }

    /// Names of fields nobody took.
    pub fn leftover(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// Errors for any field nobody took (the M0 API is strict so typos are caught).
    pub fn reject_unknown(&mut self) {
        for name in self.leftover() {
            self.error(&name, "a known field", format!("unknown field {name:?}"));
        }
    }

    /// Ok when no error was recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_error() {
        let mut f = Fields::parse(br#"{"a":"x","b":5.5,"c":3,"d":true,"e":null,"z":1}"#).unwrap();
        assert_eq!(f.int("a", 0, 10), None);
        assert_eq!(f.int("b", 0, 10), None);
        assert_eq!(f.int("c", 0, 2), None);
        assert_eq!(f.bool("d"), Some(true));
        assert_eq!(f.string("e"), None);
        f.reject_unknown();
        let fields: Vec<_> = f.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["a", "b", "c", "z"]);
    }

    #[test]
    fn numbers_respect_open_bounds() {
        let mut f = Fields::parse(br#"{"p":0,"q":0,"r":2}"#).unwrap();
        assert_eq!(f.number("p", 0.0, 2.0, true), None);
        assert_eq!(f.number("q", 0.0, 2.0, false), Some(0.0));
        assert_eq!(f.number("r", 0.0, 2.0, false), Some(2.0));
        assert_eq!(f.errors.len(), 1);
    }

    #[test]
    fn stop_lists() {
        let mut f = Fields::parse(br#"{"a":"x","b":["1","2","3","4","5"],"c":[""],"d":["x","y"]}"#)
            .unwrap();
        assert_eq!(f.stop_list("a", 4), ["x"]);
        assert!(f.stop_list("b", 4).is_empty());
        assert!(f.stop_list("c", 4).is_empty());
        assert_eq!(f.stop_list("d", 4), ["x", "y"]);
        assert_eq!(f.errors.len(), 2);
    }

    #[test]
    fn non_objects_are_rejected() {
        assert!(Fields::parse(b"[1]").is_err());
        assert!(Fields::parse(b"{").is_err());
        assert!(Fields::parse(b"\xff").is_err());
    }
}
