//! Snapshots as files of their own, `snapshots/<position>.snap` beside sled's (the position in
//! 20 decimal digits, so that names sort as positions).
//!
//! Why not in sled: a snapshot is one value of a few megabytes, as large as the state (every
//! resource ever seen). sled kept each in its page cache and wrote it as a blob with its node,
//! again at every split: with jobs started and deleted every day, derive held over 130 MB for
//! them at 180 days. A file is written once, read once at an open, and costs no memory.
//!
//! A snapshot is written to `<position>.tmp` and renamed into place, so that a name that ends
//! in `.snap` holds a whole write; it is not synced (a lost one costs a longer replay, and one
//! damaged by a crash fails its checksum and is ignored, never trusted). Only the newest
//! [`SNAPSHOTS_KEPT`] are kept.

use poolbill_store::{StoreError, SNAPSHOTS_KEPT};
use std::io;
use std::path::{Path, PathBuf};

/// The directory of a store's snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";
const SUFFIX: &str = ".snap";
const PARTIAL: &str = ".tmp";

/// A store's snapshot files.
pub struct SnapshotFiles {
    dir: PathBuf,
    /// A temporary store's snapshots vanish with it.
    _temporary: Option<tempfile::TempDir>,
}

impl SnapshotFiles {
    /// The snapshots of the store at `store_dir` (the directory is made at the first write).
    pub fn open(store_dir: &Path) -> SnapshotFiles {
        SnapshotFiles { dir: store_dir.join(SNAPSHOTS_DIR), _temporary: None }
    }

    /// Snapshots in a directory that is removed when they are dropped.
    pub fn temporary() -> io::Result<SnapshotFiles> {
        let temporary = tempfile::tempdir()?;
        Ok(SnapshotFiles { dir: temporary.path().join(SNAPSHOTS_DIR), _temporary: Some(temporary) })
    }

    fn path(&self, position: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{position:020}{suffix}"))
    }

    /// Keep `bytes` as the snapshot at `position`, then drop all but the newest kept.
    pub fn put(&self, position: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let at = |what: &str, path: &Path| format!("{what} {}", path.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| StoreError::io(at("creating", &self.dir), e))?;
        let partial = self.path(position, PARTIAL);
        std::fs::write(&partial, bytes).map_err(|e| StoreError::io(at("writing the snapshot", &partial), e))?;
        let path = self.path(position, SUFFIX);
        std::fs::rename(&partial, &path).map_err(|e| StoreError::io(at("renaming the snapshot into", &path), e))?;
        let positions = self.positions()?;
        for old in positions.iter().take(positions.len().saturating_sub(SNAPSHOTS_KEPT)) {
            let old = self.path(*old, SUFFIX);
            match std::fs::remove_file(&old) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(StoreError::io(at("dropping the old snapshot", &old), e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// The positions of the snapshots kept, oldest first (none before the first write).
    pub fn positions(&self) -> Result<Vec<u64>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            entries => entries.map_err(|e| StoreError::io(format!("listing {}", self.dir.display()), e))?,
        };
        let mut positions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(format!("listing {}", self.dir.display()), e))?;
            // Anything else (a write a crash cut short, a stray file) is not a snapshot.
            if let Some(position) = entry.file_name().to_str().and_then(position_of) {
                positions.push(position);
            }
        }
        positions.sort_unstable();
        Ok(positions)
    }

    /// The newest snapshot at or before `position`, with its position.
    pub fn at_or_before(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        // Newest first: one dropped meanwhile by another writer's `put` gives way to the next.
        for found in self.positions()?.into_iter().rev().filter(|p| *p <= position) {
            let path = self.path(found, SUFFIX);
            match std::fs::read(&path) {
                Ok(bytes) => return Ok(Some((found, bytes))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("reading the snapshot {}", path.display()), e)),
            }
        }
        Ok(None)
    }

    /// The snapshots' total size in bytes, and how many there are.
    pub fn size(&self) -> Result<(u64, u64), StoreError> {
        let positions = self.positions()?;
        let mut bytes = 0;
        for position in &positions {
            let path = self.path(*position, SUFFIX);
            bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        }
        Ok((bytes, positions.len() as u64))
    }
}

/// The position a snapshot's file name stands for: 20 digits, then `.snap`.
fn position_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_snapshot_names_are_positions() {
        let table = [
            ("00000000000000000042.snap", Some(42)),
            ("18446744073709551615.snap", Some(u64::MAX)),
            ("00000000000000000042.tmp", None),
            ("42.snap", None),
            ("0000000000000000004x.snap", None),
            ("00000000000000000042.snap.old", None),
            ("99999999999999999999.snap", None),
        ];
        for (name, expected) in table {
            assert_eq!(position_of(name), expected, "{name}");
        }
    }

    #[test]
    fn the_newest_are_kept_and_found_at_or_before_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path());
        assert_eq!(files.positions().unwrap(), Vec::<u64>::new());
        assert_eq!(files.at_or_before(u64::MAX).unwrap(), None);
        let written: Vec<u64> = (1..=SNAPSHOTS_KEPT as u64 + 3).map(|k| k * 100).collect();
        for position in &written {
            files.put(*position, format!("state at {position}").as_bytes()).unwrap();
        }
        let kept = &written[3..];
        assert_eq!(files.positions().unwrap(), kept);
        assert_eq!(files.at_or_before(kept[0] - 1).unwrap(), None, "older ones are dropped");
        assert_eq!(files.at_or_before(kept[2] + 50).unwrap(), Some((kept[2], format!("state at {}", kept[2]).into_bytes())));
        assert_eq!(files.size().unwrap().1, SNAPSHOTS_KEPT as u64);
        // A write cut short by a crash is not a snapshot.
        std::fs::write(files.path(99_999, PARTIAL), b"half").unwrap();
        assert_eq!(files.at_or_before(u64::MAX).unwrap().map(|(p, _)| p), kept.last().copied());
    }

    #[test]
    fn a_temporary_stores_snapshots_vanish_with_it() {
        let files = SnapshotFiles::temporary().unwrap();
        files.put(7, b"seven").unwrap();
        let dir = files.dir.clone();
        assert!(dir.join("00000000000000000007.snap").exists());
        drop(files);
        assert!(!dir.exists());
    }
}
