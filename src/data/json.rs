//! Walking a parsed JSON document with errors that name the file, the video and the field.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Parse `text` (the content of `path`) as JSON, turning syntax errors into [`Error::Json`].
/// A key repeated within one object (a video id listed twice, a field given twice) is an
/// error naming it: a plain parse would keep the last silently.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Value> {
    serde_json::from_str::<Strict>(text)
        .map(|s| s.0)
        .map_err(|e| Error::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
}

/// A JSON value whose objects have no repeated key.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "key `{key}` appears twice in one object (each video id and field may \
                     appear once)"
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Where we are in a document: the file and (optionally) the video being read.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub path: &'a Path,
    pub video: Option<&'a str>,
}

impl<'a> Ctx<'a> {
    pub fn new(path: &'a Path) -> Self {
        Self { path, video: None }
    }

    pub fn video(self, video: &'a str) -> Self {
        Self {
            video: Some(video),
            ..self
        }
    }

    fn owned_path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    pub fn missing(&self, field: &str) -> Error {
        Error::MissingField {
            path: self.owned_path(),
            video: self.video.map(str::to_owned),
            field: field.to_owned(),
        }
    }

    pub fn invalid(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidField {
            path: self.owned_path(),
            video: self.video.map(str::to_owned),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    pub fn get<'v>(
        &self,
        obj: &'v Map<String, Value>,
        name: &str,
        field: &str,
    ) -> Result<&'v Value> {
        obj.get(name).ok_or_else(|| self.missing(field))
    }

    pub fn object<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Map<String, Value>> {
        v.as_object()
            .ok_or_else(|| self.invalid(field, format!("expected an object, found {}", kind(v))))
    }

    pub fn array<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Vec<Value>> {
        v.as_array()
            .ok_or_else(|| self.invalid(field, format!("expected an array, found {}", kind(v))))
    }

    pub fn string<'v>(&self, v: &'v Value, field: &str) -> Result<&'v str> {
        v.as_str()
            .ok_or_else(|| self.invalid(field, format!("expected a string, found {}", kind(v))))
    }

    /// A finite number (JSON numbers given as strings, as some tools write them, are accepted).
    pub fn number(&self, v: &Value, field: &str) -> Result<f64> {
        let x = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .ok_or_else(|| self.invalid(field, format!("expected a number, found {}", kind(v))))?;
        if !x.is_finite() {
            return Err(self.invalid(field, format!("expected a finite number, found {x}")));
        }
        Ok(x)
    }

    /// A `[start, end]` pair of finite numbers with `start <= end`.
    pub fn segment(&self, v: &Value, field: &str) -> Result<[f64; 2]> {
        let arr = self.array(v, field)?;
        if arr.len() != 2 {
            return Err(self.invalid(
                field,
                format!("expected [start, end], found {} values", arr.len()),
            ));
        }
        let t0 = self.number(&arr[0], &format!("{field}[0]"))?;
        let t1 = self.number(&arr[1], &format!("{field}[1]"))?;
        if t1 < t0 {
            return Err(self.invalid(field, format!("end {t1} is before start {t0}")));
        }
        Ok([t0, t1])
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_errors_naming_the_key_and_line() {
        let p = Path::new("gt.json");
        let e = parse(p, "{\"database\": {\"v1\": {}, \n\"v1\": {\"x\": 1}}}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gt.json") && e.contains("`v1` appears twice") && e.contains("line 2"),
            "{e}"
        );
        let e = parse(p, "[{\"a\": 1, \"a\": 2}]").unwrap_err().to_string();
        assert!(e.contains("`a` appears twice"), "{e}");
        let v = parse(p, "{\"a\": [1, -2, 2.5, true, null, \"s\"], \"b\": {}}").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": [1, -2, 2.5, true, null, "s"], "b": {}})
        );
    }
}
