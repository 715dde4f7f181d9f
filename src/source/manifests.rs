//! The `--manifests DIR` source: multi-document YAML files of the same objects a cluster
//! would hold, watched for changes.
//!
//! Every change triggers a debounced rescan of the directory, so any edit pattern (in-place
//! write, create, delete, rename, an editor's write-to-temp-then-rename, a ConfigMap
//! volume's `..data` symlink swap) ends in the same state. Files whose bytes did not change
//! are not parsed again. A file that fails to parse keeps its previously loaded objects and
//! is reported; it never takes away what other files provide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::crd::convert::decode_document;
use crate::model::Object;
use crate::pipeline::SourceEvent;
use crate::snapshot::SourceHealth;

/// Quiet time after a file event before rescanning: editors emit bursts of events.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Longest a rescan waits while events keep coming.
const DEBOUNCE_MAX: Duration = Duration::from_millis(200);
/// Safety-net rescan, and retry of a lost watch (e.g. the directory was removed).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// What was loaded from one file.
#[derive(Debug, Clone)]
struct FileState {
    /// Of the bytes last read, parsed or not: unchanged bytes are never parsed (or
    /// reported) again.
    digest: [u8; 32],
    objects: Vec<Object>,
    /// Why the bytes with `digest` did not parse (`objects` are then the last good ones).
    error: Option<String>,
}

/// The result of parsing one file.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub objects: Vec<Object>,
    /// Documents that were skipped, as (location, reason).
    pub skipped: Vec<(String, String)>,
}

/// Parses multi-document YAML. A syntax error fails the whole file (its objects are kept
/// from the last good version); a document that is not a valid object is skipped alone.
pub fn parse_manifests(
    text: &str,
    origin: &str,
    default_namespace: &str,
) -> Result<ParsedFile, String> {
    let mut documents = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc)
            .map_err(|e| format!("{origin}: document {}: {e}", i + 1))?;
        documents.push((i + 1, value));
    }
    let mut parsed = ParsedFile::default();
    for (n, value) in documents {
        let items = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::Object(ref map)
                if map.get("kind").and_then(|k| k.as_str()) == Some("List") =>
            {
                map.get("items")
                    .and_then(|i| i.as_array())
                    .cloned()
                    .unwrap_or_default()
            }
            serde_json::Value::Object(_) => vec![value],
            _ => {
                parsed.skipped.push((
                    format!("{origin}#{n}"),
                    "document is not a mapping".to_owned(),
                ));
                continue;
            }
        };
        for item in items {
            match decode_document(item, default_namespace) {
                Ok(Some(object)) => parsed.objects.push(object),
                Ok(None) => {}
                Err(e) => parsed
                    .skipped
                    .push((format!("{origin}#{n}"), e.to_string())),
            }
        }
    }
    Ok(parsed)
}

/// Loads and watches a directory of manifests.
pub struct ManifestsSource {
    dir: PathBuf,
    default_namespace: String,
    files: BTreeMap<PathBuf, FileState>,
    /// A complete scan succeeded at least once (readiness).
    scanned_once: bool,
}

impl ManifestsSource {
    pub fn new(dir: impl Into<PathBuf>, default_namespace: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            default_namespace: default_namespace.into(),
            files: BTreeMap::new(),
            scanned_once: false,
        }
    }

    /// Scans the directory once: the complete object set (or `None` if the directory
    /// cannot be read, in which case nothing changes) and the health to report.
    pub fn scan(&mut self) -> (Option<Vec<Object>>, SourceHealth) {
        let mut health = SourceHealth {
            synced: self.scanned_once,
            ..SourceHealth::default()
        };
        let paths = match list_manifest_files(&self.dir) {
            Ok(paths) => paths,
            Err(e) => {
                health.error = Some(format!(
                    "manifests directory {} is unreadable ({e}); serving the last loaded state",
                    self.dir.display()
                ));
                return (None, health);
            }
        };
        let mut files = BTreeMap::new();
        for path in paths {
            let origin = path.display().to_string();
            let previous = self.files.remove(&path);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Vanished between listing and reading: a rename in progress; next scan sees it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    health.skipped.insert(origin, format!("unreadable: {e}"));
                    files.extend(previous.map(|p| (path, p)));
                    continue;
                }
            };
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            if let Some(previous) = previous.as_ref().filter(|p| p.digest == digest) {
                // Reported when it first appeared; still a problem for readiness.
                if let Some(e) = &previous.error {
                    health.skipped.insert(origin, e.clone());
                }
                files.insert(path, previous.clone());
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            match parse_manifests(&text, &origin, &self.default_namespace) {
                Ok(parsed) => {
                    health.skipped.extend(parsed.skipped);
                    files.insert(
                        path,
                        FileState {
                            digest,
                            objects: parsed.objects,
                            error: None,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(file = %origin, error = %e, "manifest file skipped; keeping what it held before");
                    health.skipped.insert(origin, e.clone());
                    let objects = previous.map(|p| p.objects).unwrap_or_default();
                    files.insert(
                        path,
                        FileState {
                            digest,
                            objects,
                            error: Some(e),
                        },
                    );
                }
            }
        }
        self.files = files;
        self.scanned_once = true;
        health.synced = true;
        let objects = self
            .files
            .values()
            .flat_map(|f| f.objects.iter().cloned())
            .collect();
        (Some(objects), health)
    }

    /// Scans now, then on every change until `events` closes.
    pub async fn run(mut self, events: mpsc::Sender<SourceEvent>) -> anyhow::Result<()> {
        let (fs_tx, mut fs_rx) = mpsc::unbounded_channel::<()>();
        let dir = event_dir(&self.dir);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok_and(|event| concerns(&event, &dir)) {
                    let _ = fs_tx.send(());
                }
            })?;
        let mut watching = false;
        // The first safety-net rescan is one period away (an interval's first tick would
        // rescan at once, right after the initial scan).
        let mut rescan =
            tokio::time::interval_at(tokio::time::Instant::now() + RESCAN_EVERY, RESCAN_EVERY);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !watching {
                watching = self.watch(&mut watcher);
            }
            let (objects, health) = self.scan();
            if objects.is_none() {
                // The directory is gone or unreadable: re-establish the watch when it returns.
                watching = false;
            }
            for (location, reason) in &health.skipped {
                tracing::debug!(%location, %reason, "skipped manifest input");
            }
            if let Some(objects) = objects
                && events.send(SourceEvent::ResetAll(objects)).await.is_err()
            {
                return Ok(());
            }
            if events.send(SourceEvent::Health(health)).await.is_err() {
                return Ok(());
            }
            tokio::select! {
                changed = fs_rx.recv() => {
                    if changed.is_none() { return Ok(()); }
                    debounce(&mut fs_rx).await;
                }
                _ = rescan.tick() => {}
                _ = events.closed() => return Ok(()),
            }
        }
    }

    fn watch(&self, watcher: &mut notify::RecommendedWatcher) -> bool {
        use notify::{RecursiveMode, Watcher};
        // The parent too, so that a removed directory's return is noticed at once.
        if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = watcher.watch(parent, RecursiveMode::NonRecursive);
        }
        match watcher.watch(&self.dir, RecursiveMode::Recursive) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch manifests directory; retrying");
                false
            }
        }
    }
}

/// `dir` as file events name it: the watcher reports absolute paths, so a relative
/// `--manifests` (the quick start's `examples/quickstart`) is made absolute, or every event
/// would be ignored and only the periodic rescan would see an edit, seconds later.
fn event_dir(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Whether a file event can change what a scan of `dir` reads: a change inside `dir` (the
/// parent is watched too, for the directory's own removal and return, but its other
/// entries are none of our business), and not a read.
fn concerns(event: &notify::Event, dir: &Path) -> bool {
    changes_content(&event.kind)
        && (event.paths.is_empty() || event.paths.iter().any(|p| p.starts_with(dir)))
}

/// Whether a kind of file event can change content. Reads cannot: the scan itself opens
/// and reads every file, and waking on that would rescan in a loop.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        // A writer closing its file: the content is complete now.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Waits until events stop arriving for [`DEBOUNCE`] (at most [`DEBOUNCE_MAX`]).
async fn debounce(rx: &mut mpsc::UnboundedReceiver<()>) {
    let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = tokio::time::Instant::now() + DEBOUNCE;
        tokio::select! {
            got = rx.recv() => if got.is_none() { return },
            _ = tokio::time::sleep_until(quiet.min(deadline)) => return,
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
    }
}

/// Lists `*.yaml`, `*.yml` and `*.json` files below `dir`, sorted, skipping hidden entries
/// (editor swap files, a ConfigMap volume's `..data` directories) and backups (`~`).
pub fn list_manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let root_meta = std::fs::metadata(dir)?;
    if !root_meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.ends_with('~') {
                continue;
            }
            let path = entry.path();
            // Follows symlinks, as a ConfigMap volume's files are links into `..data`.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};

    #[test]
    fn reads_do_not_wake_the_watcher_and_writes_do() {
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Read)));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(changes_content(&EventKind::Remove(
            notify::event::RemoveKind::Any
        )));
    }

    #[test]
    fn events_beside_the_directory_are_ignored() {
        let dir = Path::new("/srv/manifests");
        let event = |path: &str| {
            notify::Event::new(EventKind::Create(CreateKind::File)).add_path(path.into())
        };
        assert!(concerns(&event("/srv/manifests/a.yaml"), dir));
        assert!(
            concerns(&event("/srv/manifests"), dir),
            "the directory's return"
        );
        assert!(
            !concerns(&event("/srv/other.yaml"), dir),
            "a sibling in the parent"
        );
        assert!(!concerns(&event("/srv/manifests-old/a.yaml"), dir));
    }

    #[test]
    fn a_relative_directory_matches_the_absolute_paths_of_events() {
        let cwd = std::env::current_dir().unwrap();
        let event = notify::Event::new(EventKind::Create(CreateKind::File))
            .add_path(cwd.join("examples/quickstart/secrets.yaml"));
        assert!(concerns(
            &event,
            &event_dir(Path::new("examples/quickstart"))
        ));
        assert!(!concerns(&event, Path::new("examples/quickstart")));
    }

    /// A file that does not parse is parsed (and logged) once per content: later scans see
    /// the same bytes, keep reporting it for readiness, and keep its last good objects.
    #[test]
    fn a_broken_file_is_parsed_once_per_content_and_keeps_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        let good = "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\n";
        std::fs::write(&file, good).unwrap();
        let mut source = ManifestsSource::new(dir.path(), "default");
        let (objects, health) = source.scan();
        assert_eq!(objects.unwrap().len(), 1);
        assert!(health.skipped.is_empty());

        std::fs::write(&file, "metadata: [broken").unwrap();
        let (objects, health) = source.scan();
        assert_eq!(objects.unwrap().len(), 1, "the last good objects are kept");
        assert_eq!(health.skipped.len(), 1);
        let state = source.files.get(&file).unwrap().clone();
        assert!(state.error.is_some());

        // Same bytes: not parsed again (the stored state is reused as is), still reported.
        let (objects, health) = source.scan();
        assert_eq!(objects.unwrap().len(), 1);
        assert_eq!(health.skipped.len(), 1);
        assert_eq!(source.files.get(&file).unwrap().digest, state.digest);

        std::fs::write(&file, good).unwrap();
        let (_, health) = source.scan();
        assert!(health.skipped.is_empty(), "fixed: no longer reported");
        assert!(source.files.get(&file).unwrap().error.is_none());
    }
}
