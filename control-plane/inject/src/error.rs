//! What can go wrong, each error naming where: the document, the object and the field path.

use std::fmt;

/// Why nothing was injected (as opposed to a [`SkipReason`](crate::SkipReason), which is a
/// decision, not a failure).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// A field of the object, or of its pod template, is wrong.
    #[error("{0}")]
    Field(FieldError),
    /// A document of a manifest is not YAML.
    #[error("document {document}: malformed YAML: {message}")]
    Yaml { document: usize, message: String },
    /// The injection settings are wrong.
    #[error("injection settings: {0}")]
    Settings(SettingsError),
}

/// A field of an object: `document 2: Deployment shop/web: spec.template.metadata.annotations['…']: …`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// 1-based, when the object came from a manifest.
    pub document: Option<usize>,
    /// `Deployment shop/web`, when known.
    pub object: Option<String>,
    /// From the document's root, as `spec.template.spec.containers[0].ports[1]`.
    pub path: String,
    pub message: String,
}

/// A field of the injection settings, by its path there (`capture.excludeInboundPorts`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SettingsError {
    pub path: String,
    pub message: String,
}

impl InjectError {
    pub(crate) fn field(path: impl Into<String>, message: impl Into<String>) -> InjectError {
        InjectError::Field(FieldError {
            document: None,
            object: None,
            path: path.into(),
            message: message.into(),
        })
    }

    /// The error of a pod (template) found at `prefix` in its document.
    pub(crate) fn within(self, prefix: &str) -> InjectError {
        match self {
            InjectError::Field(mut e) => {
                e.path = join(prefix, &e.path);
                InjectError::Field(e)
            }
            other => other,
        }
    }

    /// Names the object, unless a nested object (a List's item) already did.
    pub(crate) fn located_object(self, object: Option<&str>) -> InjectError {
        match self {
            InjectError::Field(mut e) => {
                if e.object.is_none() {
                    e.object = object.map(str::to_string);
                }
                InjectError::Field(e)
            }
            other => other,
        }
    }

    /// Names the document and the object (unless a nested object already named itself).
    pub(crate) fn located(self, document: usize, object: Option<&str>) -> InjectError {
        match self.located_object(object) {
            InjectError::Field(mut e) => {
                e.document.get_or_insert(document);
                InjectError::Field(e)
            }
            other => other,
        }
    }
}

impl From<SettingsError> for InjectError {
    fn from(e: SettingsError) -> Self {
        InjectError::Settings(e)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(document) = self.document {
            write!(f, "document {document}: ")?;
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

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// `a.b` + `c[0]` = `a.b.c[0]`; `a` + `[1]` = `a[1]`.
pub(crate) fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Deserializes a `T`; an error names the field, under `at`.
pub(crate) fn typed<'de, T: serde::Deserialize<'de>>(
    de: impl serde::Deserializer<'de>,
    at: &str,
) -> Result<T, InjectError> {
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        InjectError::field(join(at, &path), e.inner().to_string())
    })
}

/// `metadata.annotations['sidecar.istio.io/proxyCPU']`: keys hold dots, so they are quoted.
pub(crate) fn annotation_path(key: &str) -> String {
    format!("metadata.annotations['{key}']")
}

pub(crate) fn label_path(key: &str) -> String {
    format!("metadata.labels['{key}']")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_document_object_and_path() {
        let e = InjectError::field(annotation_path("sidecar.istio.io/proxyCPU"), "bad")
            .within("spec.template")
            .located(2, Some("Deployment shop/web"));
        assert_eq!(
            e.to_string(),
            "document 2: Deployment shop/web: spec.template.metadata.annotations['sidecar.istio.io/proxyCPU']: bad"
        );
        // A List's item named itself first; the List does not overwrite it.
        let nested = InjectError::field("spec", "x")
            .located_object(Some("Pod a"))
            .within("items[0]")
            .located(1, Some("List"));
        assert_eq!(nested.to_string(), "document 1: Pod a: items[0].spec: x");
        assert_eq!(join("items", "[3]"), "items[3]");
        assert_eq!(join("", "spec"), "spec");
    }
}
