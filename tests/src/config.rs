//! Config files for straitd's `--config-dir`, and generators for the Istio YAML tests feed it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tempfile::TempDir;

/// A temporary config directory that straitd watches.
///
/// Atomic replacements are staged in a sibling directory on the same filesystem, so straitd
/// never sees the staging file.
pub struct ConfigDir {
    root: TempDir,
    dir: PathBuf,
    staging: PathBuf,
}

impl ConfigDir {
    pub fn new() -> anyhow::Result<ConfigDir> {
        let root = tempfile::Builder::new()
            .prefix("strait-config-")
            .tempdir()
            .context("creating a temp dir")?;
        let dir = root.path().join("config");
        let staging = root.path().join("staging");
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        Ok(ConfigDir { root, dir, staging })
    }

    /// The directory to pass as `--config-dir`.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The temp dir that holds the config dir: a place for other files of the test.
    pub fn scratch(&self) -> &Path {
        self.root.path()
    }

    fn file(&self, name: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "config file names are plain file names, not {name:?}"
        );
        Ok(self.dir.join(name))
    }

    /// Writes `name` in place (truncate, then write), as an editor might: a watcher can see
    /// the file empty or half-written in between.
    pub fn write(&self, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
        let path = self.file(name)?;
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Replaces (or creates) `name` atomically: written elsewhere, then renamed into place, as
    /// Kubernetes ConfigMap updates and careful tools do.
    pub fn replace(&self, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
        let path = self.file(name)?;
        let staged = self.staging.join(name);
        std::fs::write(&staged, yaml).with_context(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, &path)
            .with_context(|| format!("renaming {} to {}", staged.display(), path.display()))?;
        Ok(path)
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let path = self.file(name)?;
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    pub fn read(&self, name: &str) -> anyhow::Result<String> {
        let path = self.file(name)?;
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Joins YAML documents into one multi-document stream.
pub fn yaml_docs<S: AsRef<str>>(docs: &[S]) -> String {
    docs.iter()
        .map(|d| d.as_ref().trim_end().to_string() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

/// An in-mesh HTTP service whose endpoints are loopback ports: a ServiceEntry
/// (`NAME.NAMESPACE.svc.cluster.local`, port `service_port`, selecting `app: NAME`) and one
/// WorkloadEntry per `(version, port)`, named `NAME-VERSION` and labelled `app`, `version`.
pub fn http_service(
    name: &str,
    namespace: &str,
    service_port: u16,
    versions: &[(&str, u16)],
) -> String {
    let mut docs = vec![format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}.{namespace}.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {service_port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: {name}}}}}
"
    )];
    for (version, port) in versions {
        let mut doc = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            doc,
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}-{version}, namespace: {namespace}}}
spec:
  address: 127.0.0.1
  ports: {{http: {port}}}
  labels: {{app: {name}, version: {version}}}
"
        );
        docs.push(doc);
    }
    yaml_docs(&docs)
}

/// The loopback ports of the bookinfo backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookinfoPorts {
    pub productpage: u16,
    pub details: u16,
    pub ratings: u16,
    pub reviews_v1: u16,
    pub reviews_v2: u16,
    pub reviews_v3: u16,
}

/// The bookinfo port every service listens on inside the mesh.
pub const BOOKINFO_PORT: u16 = 9080;

/// ServiceEntries and WorkloadEntries for bookinfo in `default`: productpage v1, details v1,
/// ratings v1, reviews v1/v2/v3, each service on port 9080, endpoints on the given ports.
pub fn bookinfo_registry(ports: &BookinfoPorts) -> String {
    let ns = "default";
    yaml_docs(&[
        http_service(
            "productpage",
            ns,
            BOOKINFO_PORT,
            &[("v1", ports.productpage)],
        ),
        http_service("details", ns, BOOKINFO_PORT, &[("v1", ports.details)]),
        http_service("ratings", ns, BOOKINFO_PORT, &[("v1", ports.ratings)]),
        http_service(
            "reviews",
            ns,
            BOOKINFO_PORT,
            &[
                ("v1", ports.reviews_v1),
                ("v2", ports.reviews_v2),
                ("v3", ports.reviews_v3),
            ],
        ),
    ])
}
