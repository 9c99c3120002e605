//! Files both ends keep: table files read by their extension, and state written so that a
//! crash leaves either the old file or the new one, whole.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a table file at `path` holds JSON: its extension is `.json`, in any case; YAML
/// otherwise.
pub fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Write `bytes` as `dir/name` so that, whenever the process or the machine stops, the file is
/// either the old one or the new one, whole: create `dir` when missing (syncing its parent),
/// write a temp file beside it, fsync it, rename it over `name`, fsync `dir`. Each write has a
/// temp file of its own (`.name.<pid>.<n>.tmp`), so two writes of one file at once each leave
/// a whole file, the later rename winning. Errors name the path they concern.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(at(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut file = File::create(&tmp).map_err(at(&tmp))?;
    file.write_all(bytes).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    drop(file);
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(at(&path))?;
    sync_dir(dir)
}

/// fsync a directory, so that the entries created or renamed in it last.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// An error that names `path`.
fn at(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |error| io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "control-api-files-{name}-{}-{}",
            std::process::id(),
            crate::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn json_by_extension_in_any_case() {
        assert!(is_json(Path::new("t.json")));
        assert!(is_json(Path::new("dir/T.JSON")));
        assert!(is_json(Path::new("t.Json")));
        assert!(!is_json(Path::new("t.yaml")));
        assert!(!is_json(Path::new("t.yml")));
        assert!(!is_json(Path::new("json")));
        assert!(!is_json(Path::new("t.json.bak")));
    }

    #[test]
    fn writes_replaces_and_leaves_no_temp_file() {
        let dir = temp_dir("write");
        let nested = dir.join("a/b");
        write_atomically(&nested, "x.json", b"one").unwrap();
        assert_eq!(std::fs::read(nested.join("x.json")).unwrap(), b"one");
        write_atomically(&nested, "x.json", b"two").unwrap();
        assert_eq!(std::fs::read(nested.join("x.json")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&nested)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_of_one_file_at_once_each_leave_a_whole_file() {
        let dir = temp_dir("race");
        std::fs::create_dir_all(&dir).unwrap();
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write_atomically(&dir, "x.json", &[b'a' + i; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let bytes = std::fs::read(dir.join("x.json")).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_path() {
        let dir = temp_dir("error");
        std::fs::create_dir_all(&dir).unwrap();
        // A directory where the file should go: the rename fails.
        std::fs::create_dir_all(dir.join("x.json/inside")).unwrap();
        let error = write_atomically(&dir, "x.json", b"{}").unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&dir.join("x.json").display().to_string()),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
