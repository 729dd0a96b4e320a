//! Watches the config directory and reloads it, debounced, into the store.
//!
//! A reload always reads the whole directory, so the store sees one consistent batch whatever
//! the editor did (write in place, write and rename, delete and recreate).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use strait_model::{Object, ValidationError, loader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::ConfigStore;

/// File extensions read as configuration.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        source: notify::Error,
    },
}

/// The configuration files under `path`: `path` itself if it is a file (whatever its name),
/// else every `*.yaml`, `*.yml` and `*.json` below it, recursively, sorted, skipping hidden
/// files and directories and editor temp files. Symlinked files are followed (Kubernetes
/// ConfigMap mounts are made of them); symlinked directories are not, so a loop cannot trap us.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, WatchError> {
    let read_error = |source| WatchError::Read {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(read_error)?.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    walk(path, &mut files)?;
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), WatchError> {
    let read_error = |source| WatchError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if is_ignored(&path) {
            continue;
        }
        let file_type = entry.file_type().map_err(|source| WatchError::Read {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            walk(&path, files)?;
        } else if (file_type.is_file() || (file_type.is_symlink() && path.is_file()))
            && path
                .extension()
                .and_then(OsStr::to_str)
                .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// Hidden files and the temp files editors leave beside the file being edited.
fn is_ignored(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(OsStr::to_str) else {
        return true;
    };
    name.starts_with('.') || is_temp_file(name)
}

fn is_temp_file(name: &str) -> bool {
    name.starts_with(".#")
        || name.ends_with('~')
        || (name.starts_with('#') && name.ends_with('#'))
        || [".swp", ".swx", ".swo", ".tmp", ".bak"]
            .iter()
            .any(|s| name.ends_with(s))
        // vim probes whether a directory is writable with this name
        || name == "4913"
}

/// Reads and parses files; every error is collected, each naming its file (and line, for
/// malformed YAML). `origin` of each object is the file's path as given.
pub fn load_files(files: &[PathBuf]) -> Result<Vec<Object>, Vec<ValidationError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let origin = file.display().to_string();
        match std::fs::read_to_string(file) {
            Ok(text) => match loader::parse(&text, &origin) {
                Ok(o) => objects.extend(o),
                Err(e) => errors.extend(e),
            },
            Err(e) => errors.push(ValidationError {
                origin,
                object: None,
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

/// Loads every configuration file under `dir` (see [`config_files`]), blocking.
pub fn load_dir_blocking(dir: &Path) -> Result<Vec<Object>, Vec<ValidationError>> {
    let files = config_files(dir).map_err(|e| {
        vec![ValidationError {
            origin: dir.display().to_string(),
            object: None,
            path: String::new(),
            message: format!("cannot read the config directory: {e}"),
        }]
    })?;
    load_files(&files)
}

/// Loads every configuration file under `dir` (see [`config_files`]).
pub async fn load_dir(dir: &Path) -> Result<Vec<Object>, Vec<ValidationError>> {
    let owned = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || load_dir_blocking(&owned)).await {
        Ok(result) => result,
        Err(e) => Err(vec![ValidationError {
            origin: dir.display().to_string(),
            object: None,
            path: String::new(),
            message: format!("loading the config directory was interrupted: {e}"),
        }]),
    }
}

/// Tuning of the watcher; the defaults suit interactive editing.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Reload after this long without changes...
    pub quiet: Duration,
    /// ...or this long after the first change of a continuous burst.
    pub max_delay: Duration,
    /// How often to list the directory when file notifications are unavailable.
    pub poll_interval: Duration,
    /// Poll even if file notifications are available.
    pub force_poll: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(150),
            max_delay: Duration::from_secs(1),
            poll_interval: Duration::from_millis(500),
            force_poll: false,
        }
    }
}

/// How the directory is being watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    Notify,
    Poll,
}

/// A running watcher; dropping it stops watching.
#[must_use = "dropping the handle stops watching the config directory"]
pub struct WatchHandle {
    mode: WatchMode,
    task: JoinHandle<()>,
    // Kept alive for as long as the handle: dropping it ends the notifications.
    _watcher: Option<RecommendedWatcher>,
}

impl WatchHandle {
    pub fn mode(&self) -> WatchMode {
        self.mode
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Loads `dir` into the store (before returning, so the first configuration is in force), then
/// watches it and reloads on changes. Must be called within a Tokio runtime.
pub fn spawn_watcher(dir: impl Into<PathBuf>, store: ConfigStore) -> WatchHandle {
    spawn_watcher_with(dir, store, WatchOptions::default())
}

/// [`spawn_watcher`] with explicit options.
pub fn spawn_watcher_with(
    dir: impl Into<PathBuf>,
    store: ConfigStore,
    options: WatchOptions,
) -> WatchHandle {
    let dir = dir.into();
    // Watch before the first load so that a change made during it is not missed.
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = if options.force_poll {
        None
    } else {
        match start_notify(&dir, tx) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(
                    %error,
                    path = %dir.display(),
                    interval_ms = u64::try_from(options.poll_interval.as_millis()).unwrap_or(u64::MAX),
                    "file notifications unavailable; polling the config directory instead"
                );
                None
            }
        }
    };
    let listing = fingerprint(&dir);
    reload(&dir, &store);
    let (mode, task) = match watcher {
        Some(_) => (
            WatchMode::Notify,
            tokio::spawn(debounce_loop(dir, store, rx, options)),
        ),
        None => (
            WatchMode::Poll,
            tokio::spawn(poll_loop(dir, store, listing, options)),
        ),
    };
    WatchHandle {
        mode,
        task,
        _watcher: watcher,
    }
}

fn start_notify(
    dir: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> Result<RecommendedWatcher, WatchError> {
    let notify_error = |source| WatchError::Notify {
        path: dir.to_path_buf(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => is_relevant(event),
            // Lost events (a queue overflow): the directory must be read again.
            Err(_) => true,
        };
        if relevant {
            // Fails only once the watch loop has stopped, when nobody needs the event.
            let _ = tx.send(());
        }
    })
    .map_err(notify_error)?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(notify_error)?;
    Ok(watcher)
}

fn is_relevant(event: &notify::Event) -> bool {
    // Our own reads open every file; reacting to them would reload forever.
    if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
    {
        return false;
    }
    // Swap files change constantly while a file is open in an editor. Hidden names still
    // count: Kubernetes swaps a ConfigMap mount through its `..data` symlink.
    event.paths.is_empty()
        || event.paths.iter().any(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_none_or(|name| !is_temp_file(name))
        })
}

async fn debounce_loop(
    dir: PathBuf,
    store: ConfigStore,
    mut rx: mpsc::UnboundedReceiver<()>,
    options: WatchOptions,
) {
    while rx.recv().await.is_some() {
        let burst_start = Instant::now();
        let mut events = 1u64;
        loop {
            let deadline = (Instant::now() + options.quiet).min(burst_start + options.max_delay);
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(())) => events += 1,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        tracing::debug!(events, path = %dir.display(), "config directory changed; reloading");
        reload_async(&dir, &store).await;
    }
}

async fn poll_loop(
    dir: PathBuf,
    store: ConfigStore,
    mut listing: Option<Vec<FileStamp>>,
    options: WatchOptions,
) {
    let mut interval = tokio::time::interval(options.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let current = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || fingerprint(&dir))
                .await
                .unwrap_or(None)
        };
        if current != listing {
            listing = current;
            tracing::debug!(path = %dir.display(), "config directory changed; reloading");
            reload_async(&dir, &store).await;
        }
    }
}

type FileStamp = (PathBuf, Option<SystemTime>, u64);

/// What polling compares: every config file's path, mtime and size (`None`: unreadable).
fn fingerprint(dir: &Path) -> Option<Vec<FileStamp>> {
    let files = config_files(dir).ok()?;
    Some(
        files
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(&path).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let size = meta.map_or(0, |m| m.len());
                (path, modified, size)
            })
            .collect(),
    )
}

fn reload(dir: &Path, store: &ConfigStore) {
    match load_dir_blocking(dir) {
        // Rejections are logged and recorded by the store.
        Ok(objects) => {
            let _ = store.replace_files(objects);
        }
        Err(errors) => store.record_file_error(errors),
    }
}

async fn reload_async(dir: &Path, store: &ConfigStore) {
    let (dir, store) = (dir.to_path_buf(), store.clone());
    // Reading files and validating are blocking work.
    if let Err(error) = tokio::task::spawn_blocking(move || reload(&dir, &store)).await {
        tracing::error!(%error, "config directory reload failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{SERVICES, vs};
    use pretty_assertions::assert_eq;
    use prometheus_client::registry::Registry;
    use std::fs;

    fn new_store() -> ConfigStore {
        ConfigStore::new(&mut Registry::default())
    }

    fn relative(dir: &Path, files: Vec<PathBuf>) -> Vec<String> {
        files
            .iter()
            .map(|f| f.strip_prefix(dir).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn collects_config_files_sorted_and_skips_hidden_and_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("b/nested")).unwrap();
        fs::create_dir_all(d.join(".git")).unwrap();
        for f in [
            "z.yaml",
            "a.yml",
            "m.json",
            "b/nested/x.yaml",
            "b/c.yaml",
            ".hidden.yaml",
            ".#lock.yaml",
            "backup.yaml~",
            "x.yaml.swp",
            "README.md",
            ".git/config.yaml",
        ] {
            fs::write(d.join(f), "").unwrap();
        }
        assert_eq!(
            relative(d, config_files(d).unwrap()),
            ["a.yml", "b/c.yaml", "b/nested/x.yaml", "m.json", "z.yaml"]
        );
        // An explicit file is taken whatever its name.
        assert_eq!(config_files(&d.join("README.md")).unwrap().len(), 1);
        assert!(config_files(&d.join("missing")).is_err());
    }

    #[tokio::test]
    async fn load_dir_collects_every_error_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("good.yaml"), SERVICES).unwrap();
        fs::write(dir.path().join("bad.yaml"), "kind: [unclosed\n").unwrap();
        fs::write(
            dir.path().join("typo.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {selectr: {}}\n",
        )
        .unwrap();
        let errors = load_dir(dir.path()).await.unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(
            errors[0].origin.ends_with("bad.yaml (document 1)"),
            "{}",
            errors[0]
        );
        assert!(errors[0].message.contains("line"), "{}", errors[0]);
        assert!(
            errors[1].origin.ends_with("typo.yaml (document 1)"),
            "{}",
            errors[1]
        );
        assert_eq!(errors[1].path, "spec.selectr");

        fs::remove_file(dir.path().join("bad.yaml")).unwrap();
        fs::remove_file(dir.path().join("typo.yaml")).unwrap();
        let objects = load_dir(dir.path()).await.unwrap();
        assert_eq!(objects.len(), 2);
        assert!(objects[0].origin.ends_with("good.yaml (document 1)"));
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_error_naming_it() {
        let errors = load_dir(Path::new("/nonexistent/strait"))
            .await
            .unwrap_err();
        assert_eq!(errors[0].origin, "/nonexistent/strait");
        assert!(errors[0].message.contains("cannot read"), "{}", errors[0]);
    }

    /// Waits until the store's generation reaches `generation`.
    async fn wait_for(
        store: &ConfigStore,
        generation: u64,
    ) -> std::sync::Arc<crate::store::Published> {
        let mut rx = store.subscribe();
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|p| p.generation >= generation),
        )
        .await
        .expect("the change takes effect within 5 s")
        .unwrap()
        .clone()
    }

    async fn watches(options: WatchOptions, mode: WatchMode) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("services.yaml"), SERVICES).unwrap();
        let store = new_store();
        let handle = spawn_watcher_with(dir.path(), store.clone(), options);
        assert_eq!(handle.mode(), mode);
        // The first load happened before spawn returned.
        assert_eq!(store.current().generation, 1);
        assert_eq!(store.current().objects.len(), 2);

        // An editor writing via a temp file and a rename.
        let tmp = dir.path().join(".vs.yaml.tmp");
        fs::write(&tmp, vs("reviews", "reviews")).unwrap();
        fs::rename(&tmp, dir.path().join("vs.yaml")).unwrap();
        let published = wait_for(&store, 2).await;
        assert_eq!(published.objects.len(), 3);

        // A broken edit is rejected and the last good config stays.
        fs::write(dir.path().join("vs.yaml"), vs("reviews", "nowhere")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while store.status().last_error.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the rejection is recorded");
        assert_eq!(store.current().generation, 2);

        // Removing the file fixes it.
        fs::remove_file(dir.path().join("vs.yaml")).unwrap();
        let published = wait_for(&store, 3).await;
        assert_eq!(published.objects.len(), 2);
        assert_eq!(store.status().last_error, None);
    }

    #[tokio::test]
    async fn notify_watcher_reloads_on_changes() {
        watches(WatchOptions::default(), WatchMode::Notify).await;
    }

    #[tokio::test]
    async fn polling_watcher_reloads_on_changes() {
        let options = WatchOptions {
            force_poll: true,
            poll_interval: Duration::from_millis(50),
            ..WatchOptions::default()
        };
        watches(options, WatchMode::Poll).await;
    }

    #[tokio::test]
    async fn a_burst_of_changes_gives_few_reloads() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("services.yaml"), SERVICES).unwrap();
        let store = new_store();
        let _handle = spawn_watcher(dir.path(), store.clone());
        let start = std::time::Instant::now();
        for i in 0..100 {
            fs::write(
                dir.path().join(format!("vs-{i:03}.yaml")),
                vs(&format!("vs-{i}"), "reviews"),
            )
            .unwrap();
        }
        let mut rx = store.subscribe();
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|p| p.objects.len() == 102),
        )
        .await
        .expect("all 100 files take effect")
        .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        let generation = store.current().generation;
        assert!(generation <= 4, "100 writes gave {generation} generations");
    }

    #[test]
    fn reads_of_our_own_do_not_trigger_reloads() {
        use notify::event::{AccessKind, AccessMode, CreateKind};
        let event = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
        assert!(!is_relevant(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/c/x.yaml"
        )));
        assert!(is_relevant(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/c/x.yaml"
        )));
        assert!(!is_relevant(&event(
            EventKind::Create(CreateKind::File),
            "/c/.x.yaml.swp"
        )));
        assert!(is_relevant(&event(
            EventKind::Create(CreateKind::File),
            "/c/..data"
        )));
    }
}
