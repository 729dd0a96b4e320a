//! Validation errors that name the file, the object and the field.

use std::fmt;

use crate::istio::Kind;

/// Identifies one object: `VirtualService default/reviews`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectId {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One problem with the configuration. `origin` is where it came from (a file and document, or
/// the admin API); `path` is the field, like `spec.http[1].route[0].weight`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ValidationError {
    pub origin: String,
    pub object: Option<ObjectId>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.origin.is_empty() {
            write!(f, "{}: ", self.origin)?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one batch: a batch is accepted whole or not at all.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Collects errors for one object while it is validated.
pub(crate) struct Report<'a> {
    pub origin: &'a str,
    pub object: Option<&'a ObjectId>,
    pub errors: &'a mut Vec<ValidationError>,
}

impl Report<'_> {
    pub fn error(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.errors.push(ValidationError {
            origin: self.origin.to_string(),
            object: self.object.cloned(),
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Records a "not supported yet" error for an Istio field Strait does not implement.
    pub fn unsupported(&mut self, path: impl fmt::Display, what: &str) {
        self.error(
            path,
            format!("{what} is not supported by Strait yet; remove the field"),
        );
    }

    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// Parses a duration, reporting a bad one at `path`.
    pub fn duration(&mut self, s: &str, path: impl fmt::Display) -> Option<std::time::Duration> {
        crate::duration::parse(s)
            .map_err(|m| self.error(path, m))
            .ok()
    }
}
