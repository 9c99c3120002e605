//! The file store: one directory, one control plane.
//!
//! ```text
//! dir/tables/v00000000000000000007.json   one file per version (StoredTable)
//! dir/flips/<id>.json                     one file per flip (FlipRecord)
//! dir/flips/quarantine/<id>.json          flip records that could not be read, moved aside
//! dir/blocks/<unit>.json                  a unit no flip may start on until it is resolved
//! dir/gateways.json                       the fleet: every gateway heard of
//! dir/audit.jsonl                         the audit log, one JSON object per line
//! ```
//!
//! Every file is written whole to a temp file, fsynced, renamed into place and the directory
//! fsynced; audit lines are appended and fsynced before the API answers. A version file is
//! the commit point of a table write: if the process dies after it and before its audit line,
//! opening the store appends the missing line from the version file's own record. A torn last
//! audit line (a write cut off mid-way, never acknowledged) is cut off at open.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use control_api::{AuditEntry, AuditOutcome, FlipRecord, GatewayStatus, StoredTable};

use super::{Current, FlipSignal, FlipSignals, PutOutcome, StoreError, UnitBlock, UnreadableFlip};

const TABLES: &str = "tables";
const FLIPS: &str = "flips";
const QUARANTINE: &str = "flips/quarantine";
const BLOCKS: &str = "blocks";
const FLEET: &str = "gateways.json";
const AUDIT: &str = "audit.jsonl";

/// The file store.
pub struct FileStore {
    dir: PathBuf,
    pub(super) current: Current,
    /// Serialises writes: a version check and its write cannot interleave with another's.
    write: tokio::sync::Mutex<()>,
    audit: Mutex<File>,
    locks: Arc<Mutex<HashSet<String>>>,
    signals: Mutex<HashMap<String, FlipSignals>>,
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError(format!("{}: {error}", path.display()))
}

fn version_file(version: u64) -> String {
    format!("v{version:020}.json")
}

impl FileStore {
    /// Open (and create if needed) the store in `dir`, repairing what a crash left.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        for sub in [TABLES, FLIPS, QUARANTINE, BLOCKS] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
            remove_temp_files(&path)?;
        }
        let audit_path = dir.join(AUDIT);
        let mut entries = repair_audit_log(&audit_path)?;
        let audit = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&audit_path)
            .map_err(|e| io(&audit_path, e))?;
        let store = Self {
            dir: dir.to_owned(),
            current: Current::default(),
            write: tokio::sync::Mutex::new(()),
            audit: Mutex::new(audit),
            locks: Arc::default(),
            signals: Mutex::default(),
        };
        let versions = store.stored_versions()?;
        // Versions whose audit line was lost to a crash get it back from their own record.
        let audited: HashSet<u64> = entries
            .iter()
            .filter(|e| e.outcome == AuditOutcome::Ok)
            .filter_map(|e| e.version_after)
            .collect();
        for &version in &versions {
            if audited.contains(&version) {
                continue;
            }
            let Some(stored) = store.version(version)? else {
                continue;
            };
            let entry = AuditEntry {
                at_ms: stored.stored_at_ms,
                actor: stored.author.clone(),
                action: if stored.flip.is_some() {
                    "flip.step".into()
                } else {
                    "table.put".into()
                },
                target: stored.flip.clone().unwrap_or_else(|| "table".into()),
                outcome: AuditOutcome::Ok,
                status: None,
                version_before: versions.iter().copied().filter(|v| *v < version).max(),
                version_after: Some(version),
                reason: stored.reason.clone(),
                flip: stored.flip.clone(),
                detail: Some("recovered at start from the stored version".into()),
            };
            store.append_audit_line(&entry)?;
            entries.push(entry);
        }
        super::check_history(&dir.join(TABLES).display().to_string(), &versions, &entries)?;
        if let Some(&latest) = versions.last()
            && let Some(stored) = store.version(latest)?
        {
            store.current.offer(Arc::new(stored));
        }
        // Units blocked by a quarantined flip stay locked across restarts.
        for block in store.blocks()? {
            store
                .locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(block.unit);
        }
        Ok(store)
    }

    fn blocks(&self) -> Result<Vec<UnitBlock>, StoreError> {
        let dir = self.dir.join(BLOCKS);
        let mut blocks = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Some(block) = read_json::<UnitBlock>(&path)?
            {
                blocks.push(block);
            }
        }
        Ok(blocks)
    }

    fn block_file(unit: &str) -> String {
        format!("{unit}.json")
    }

    pub(super) fn unit_block(&self, unit: &str) -> Result<Option<UnitBlock>, StoreError> {
        if !super::is_file_name(unit) {
            return Ok(None);
        }
        read_json(&self.dir.join(BLOCKS).join(Self::block_file(unit)))
    }

    pub(super) fn quarantine_flip(
        &self,
        bad: &UnreadableFlip,
        blocks: &[UnitBlock],
    ) -> Result<bool, StoreError> {
        for block in blocks {
            write_json(
                &self.dir.join(BLOCKS),
                &Self::block_file(&block.unit),
                block,
            )?;
            self.locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(block.unit.clone());
        }
        let from = self.dir.join(FLIPS).join(format!("{}.json", bad.id));
        let to = self.dir.join(QUARANTINE).join(format!("{}.json", bad.id));
        fs::rename(&from, &to).map_err(|e| io(&from, e))?;
        sync_dir(&self.dir.join(FLIPS))?;
        sync_dir(&self.dir.join(QUARANTINE))?;
        Ok(true)
    }

    pub(super) fn lift_block(&self, unit: &str) -> Result<Option<UnitBlock>, StoreError> {
        let Some(block) = self.unit_block(unit)? else {
            return Ok(None);
        };
        let path = self.dir.join(BLOCKS).join(Self::block_file(unit));
        fs::remove_file(&path).map_err(|e| io(&path, e))?;
        sync_dir(&self.dir.join(BLOCKS))?;
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(unit);
        Ok(Some(block))
    }

    pub(super) fn fleet(&self) -> Result<Vec<GatewayStatus>, StoreError> {
        Ok(read_json(&self.dir.join(FLEET))?.unwrap_or_default())
    }

    pub(super) fn save_fleet(&self, fleet: &[GatewayStatus]) -> Result<(), StoreError> {
        write_json(&self.dir, FLEET, &fleet)
    }

    fn stored_versions(&self) -> Result<Vec<u64>, StoreError> {
        let dir = self.dir.join(TABLES);
        let mut versions = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let name = entry.file_name();
            if let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                versions.push(version);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    pub(super) fn version(&self, version: u64) -> Result<Option<StoredTable>, StoreError> {
        let path = self.dir.join(TABLES).join(version_file(version));
        read_json::<StoredTable>(&path)?
            .map(|stored| {
                stored
                    .verified()
                    .map_err(|e| StoreError(format!("{}: {e}", path.display())))
            })
            .transpose()
    }

    pub(super) async fn put_table(
        &self,
        expected: u64,
        table: StoredTable,
        audit: AuditEntry,
        // One replica: flip locks live in this process and cannot be lost while it runs.
        _fences: &[(String, String)],
    ) -> Result<PutOutcome, StoreError> {
        let _guard = self.write.lock().await;
        let current = self.current.get().map_or(0, |t| t.version);
        if current != expected {
            return Ok(PutOutcome::Stale(current));
        }
        let version = table.version;
        write_json(&self.dir.join(TABLES), &version_file(version), &table)?;
        self.current.offer(Arc::new(table));
        self.append_audit_line(&audit)?;
        Ok(PutOutcome::Stored(version))
    }

    pub(super) async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.append_audit_line(entry)
    }

    fn append_audit_line(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(entry).map_err(StoreError::from_display)?;
        line.push(b'\n');
        let path = self.dir.join(AUDIT);
        let mut file = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line).map_err(|e| io(&path, e))?;
        file.sync_data().map_err(|e| io(&path, e))
    }

    pub(super) async fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let path = self.dir.join(AUDIT);
        let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        parse_audit(&path, &text)
    }

    pub(super) fn put_flip(&self, flip: &FlipRecord) -> Result<(), StoreError> {
        write_json(&self.dir.join(FLIPS), &format!("{}.json", flip.id), flip)
    }

    pub(super) fn flip(&self, id: &str) -> Result<Option<FlipRecord>, StoreError> {
        if !is_flip_id(id) {
            return Ok(None);
        }
        read_json(&self.dir.join(FLIPS).join(format!("{id}.json")))
    }

    pub(super) fn flips(&self) -> Result<(Vec<FlipRecord>, Vec<UnreadableFlip>), StoreError> {
        let dir = self.dir.join(FLIPS);
        let mut flips = Vec::new();
        let mut unreadable = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            // One bad record must not hide the others: it is set aside for quarantine.
            let at = path.display().to_string();
            match fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<FlipRecord>(&bytes) {
                    Ok(flip) => flips.push(flip),
                    Err(e) => unreadable.push(UnreadableFlip::new(id, &at, e, &bytes)),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => unreadable.push(UnreadableFlip::new(id, &at, e, &[])),
            }
        }
        flips.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok((flips, unreadable))
    }

    pub(super) fn signal_flip(&self, id: &str, signal: FlipSignal) {
        let mut signals = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        let entry = signals.entry(id.to_owned()).or_default();
        match signal {
            FlipSignal::Confirm => entry.confirmed = true,
            FlipSignal::Cancel => entry.cancelled = true,
            FlipSignal::Extend(seconds) => {
                entry.extended_s = entry.extended_s.saturating_add(seconds);
            }
        }
    }

    pub(super) fn flip_signals(&self, id: &str) -> FlipSignals {
        self.signals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn lock_unit(
        &self,
        unit: &str,
        _holder: &str,
    ) -> Option<Arc<Mutex<HashSet<String>>>> {
        let mut held = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(unit.to_owned()).then(|| self.locks.clone())
    }
}

/// Flip ids are generated (`f` + digits and hex), so one can name a file safely.
pub fn is_flip_id(id: &str) -> bool {
    id.len() <= 64 && !id.contains('_') && super::is_file_name(id)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

fn parse_audit(path: &Path, text: &str) -> Result<Vec<AuditEntry>, StoreError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| StoreError(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Cut a torn last line off the audit log (a write the crash interrupted, which no caller was
/// told had succeeded), and return the entries.
fn repair_audit_log(path: &Path) -> Result<Vec<AuditEntry>, StoreError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes).map_err(|e| io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    }
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = bytes.len() - whole,
            "cutting a torn last line off the audit log"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        file.set_len(whole as u64).map_err(|e| io(path, e))?;
        file.sync_all().map_err(|e| io(path, e))?;
        bytes.truncate(whole);
    }
    let text =
        String::from_utf8(bytes).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
    parse_audit(path, &text)
}

fn remove_temp_files(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

/// `value` as pretty JSON in `dir/name`, written with [`control_api::files::write_atomically`]:
/// the file is either the old one or the new one, whole, whenever the process dies.
fn write_json<T: serde::Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(StoreError::from_display)?;
    control_api::files::write_atomically(dir, name, &bytes).map_err(StoreError::from_display)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}
