//! Table sources. Every source feeds [`TableStore::load_text`], the one load path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::store::TableStore;

/// Whether `path` holds JSON (by extension); YAML otherwise.
pub fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Load the table file once. `Err` says why it could not be read (not why it was refused:
/// refusals are recorded by the store).
pub fn load_file(store: &TableStore, path: &Path) -> Result<Result<u64, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let origin = format!("file:{}", path.display());
    Ok(store
        .load_text(&text, is_json(path), &origin)
        .map_err(|r| r.error))
}

/// The file's identity for change detection: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reload `path` when it changes (checked every `interval`) and whenever `reload` is notified
/// (SIGHUP). Stops when the store is dropped.
pub fn watch_file(store: &Arc<TableStore>, path: PathBuf, interval: Duration, reload: Arc<Notify>) {
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut last = stamp(&path);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                () = reload.notified() => true,
            };
            let now = stamp(&path);
            if !forced && now == last {
                continue;
            }
            last = now;
            let Some(store) = store.upgrade() else { return };
            let current = store.current().map(|s| s.table.version());
            match load_file(&store, &path) {
                Ok(Ok(version)) => {
                    tracing::info!(version, path = %path.display(), "table file reloaded")
                }
                Ok(Err(_)) => {}
                Err(error) => {
                    tracing::error!(%error, ?current, "table file unreadable; the table in force stays")
                }
            }
        }
    });
}
