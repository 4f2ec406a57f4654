//! Writing files so that they appear whole or not at all.
//!
//! Each file is written under a temporary name beside its destination and renamed into place
//! once complete. A rename within one folder is atomic, so a reader (or a later run after a
//! crash) sees either the previous file or the new one, never a half-written file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dataset::DataError;

/// Runs `write` on a temporary path beside `path`, then renames the result to `path`.
///
/// When `write` fails, or the rename does, the temporary file is removed and `path` is left as
/// it was.
pub fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<T, DataError>,
) -> Result<T, DataError> {
    let tmp = temporary_path(path);
    let result = write(&tmp).and_then(|value| {
        fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
        Ok(value)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A hidden name in the same folder, unique within this process.
fn temporary_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{n}.partial", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_litter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        fs::write(&path, "old").unwrap();
        let result: Result<(), DataError> = write_atomically(&path, |tmp| {
            fs::write(tmp, "half").unwrap();
            Err(DataError::Write { path: tmp.to_owned(), detail: "disk full".into() })
        });
        assert!(result.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_good_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        fs::write(&path, "old").unwrap();
        write_atomically(&path, |tmp| fs::write(tmp, "new").map_err(|e| DataError::io(tmp, e)))
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
