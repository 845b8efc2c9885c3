//! Walking a parsed JSON document with errors that name the file, the video and the field.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Parse `text` (the content of `path`) as JSON, turning syntax errors into [`Error::Json`].
pub(crate) fn parse(path: &Path, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
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
