//! The high-water mark: the last acknowledged position and its stored value's checksum, in a
//! small file beside sled's, so that a store that lost acknowledged events is refused naming
//! the position it should reach, never silently used.
//!
//! The file holds two slots of 32 bytes, written alternately in place and synced with
//! `fdatasync`: a write torn by a crash damages only the slot being written, and the other
//! still holds the previous mark, which only ever lags (what the torn write was marking had not
//! been acknowledged yet). Each slot: `PBWM`, a sequence number, the position (`u64` BE), the
//! checksum (`u32` BE), and a CRC-32 of those 24 bytes; four zero bytes pad it. Stores written
//! before kept the mark as text (`"<position> <crc hex>\n"`, replaced by a rename on every
//! commit, which cost a synchronous discard of the old file's blocks on each acknowledgement);
//! that text is still read, and rewritten once, by a rename, into the two slots.

use poolbill_store::StoreError;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"PBWM";
const SLOT: usize = 32;

/// `None` when there is no mark yet (a new store).
pub fn read(path: &Path) -> Result<Option<(u64, u32)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
    };
    // A text mark is at most 30 bytes.
    if bytes.len() == 2 * SLOT {
        return newest_slot(&bytes).map(|(_, position, crc)| Some((position, crc))).ok_or_else(|| unreadable(path, "neither slot is intact"));
    }
    // The text of stores written before the slots.
    let text = String::from_utf8_lossy(&bytes);
    let mut parts = text.split_whitespace();
    let position = parts.next().and_then(|p| p.parse::<u64>().ok());
    let crc = parts.next().and_then(|c| u32::from_str_radix(c, 16).ok());
    match (position, crc, parts.next()) {
        (Some(p), Some(c), None) => Ok(Some((p, c))),
        _ => Err(unreadable(path, &format!("{text:?}"))),
    }
}

fn unreadable(path: &Path, what: &str) -> StoreError {
    StoreError::Corrupt { position: 0, detail: format!("the high-water mark {} is unreadable: {what}", path.display()) }
}

/// The intact slot with the higher sequence number: (sequence, position, checksum).
fn newest_slot(bytes: &[u8]) -> Option<(u64, u64, u32)> {
    bytes.chunks_exact(SLOT).take(2).filter_map(decode_slot).max_by_key(|(seq, _, _)| *seq)
}

fn decode_slot(slot: &[u8]) -> Option<(u64, u64, u32)> {
    let body = &slot[..24];
    let stored = u32::from_be_bytes(slot[24..28].try_into().ok()?);
    if !body.starts_with(MAGIC) || crc32fast::hash(body) != stored {
        return None;
    }
    let seq = u64::from_be_bytes(body[4..12].try_into().ok()?);
    let position = u64::from_be_bytes(body[12..20].try_into().ok()?);
    let crc = u32::from_be_bytes(body[20..24].try_into().ok()?);
    Some((seq, position, crc))
}

fn encode_slot(seq: u64, position: u64, crc: u32) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..12].copy_from_slice(&seq.to_be_bytes());
    slot[12..20].copy_from_slice(&position.to_be_bytes());
    slot[20..24].copy_from_slice(&crc.to_be_bytes());
    let check = crc32fast::hash(&slot[..24]);
    slot[24..28].copy_from_slice(&check.to_be_bytes());
    slot
}

/// Keeps the mark's file open and moves the mark forward in place.
pub struct Writer {
    path: PathBuf,
    /// The file in its two-slot form, once it is (stores written before hold text until the
    /// first write).
    file: Option<File>,
    seq: u64,
    position: u64,
}

impl Writer {
    pub fn new(path: PathBuf) -> Writer {
        Writer { path, file: None, seq: 0, position: 0 }
    }

    /// The last position marked (0: none).
    pub fn position(&mut self) -> Result<u64, StoreError> {
        if self.file.is_none() {
            return Ok(read(&self.path)?.map_or(0, |(p, _)| p));
        }
        Ok(self.position)
    }

    /// Mark `position` (with its value's checksum) as acknowledged, durably, before returning.
    pub fn write(&mut self, position: u64, crc: u32) -> Result<(), StoreError> {
        let io = |what: &str, path: &Path, e: std::io::Error| StoreError::io(format!("{what} {}", path.display()), e);
        match &self.file {
            Some(file) => {
                self.seq += 1;
                let offset = (self.seq % 2) * SLOT as u64;
                file.write_all_at(&encode_slot(self.seq, position, crc), offset).map_err(|e| io("writing", &self.path, e))?;
                file.sync_data().map_err(|e| io("syncing", &self.path, e))?;
            }
            None => {
                // The first write of this process: the file in its two-slot form, written aside
                // and renamed into place, so that a crash leaves the old mark whole.
                let seq = match std::fs::read(&self.path) {
                    Ok(bytes) => newest_slot(&bytes).map_or(0, |(seq, _, _)| seq) + 1,
                    Err(_) => 1,
                };
                let mut bytes = [0u8; 2 * SLOT];
                let offset = (seq % 2) as usize * SLOT;
                bytes[offset..offset + SLOT].copy_from_slice(&encode_slot(seq, position, crc));
                let partial = self.path.with_extension("partial");
                let mut file = File::create(&partial).map_err(|e| io("creating", &partial, e))?;
                file.write_all(&bytes).map_err(|e| io("writing", &partial, e))?;
                file.sync_all().map_err(|e| io("syncing", &partial, e))?;
                std::fs::rename(&partial, &self.path).map_err(|e| io("renaming into", &self.path, e))?;
                if let Some(dir) = self.path.parent() {
                    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing the directory of", &self.path, e))?;
                }
                self.file = Some(File::options().write(true).open(&self.path).map_err(|e| io("opening", &self.path, e))?);
                self.seq = seq;
            }
        }
        self.position = position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alternate_and_a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mark");
        assert_eq!(read(&path).unwrap(), None);
        // A store written before the slots: its text is read, then replaced by the slots.
        std::fs::write(&path, "7 0000abcd\n").unwrap();
        assert_eq!(read(&path).unwrap(), Some((7, 0xabcd)));
        let mut writer = Writer::new(path.clone());
        assert_eq!(writer.position().unwrap(), 7);
        for position in 8..12 {
            writer.write(position, position as u32).unwrap();
            assert_eq!(read(&path).unwrap(), Some((position, position as u32)));
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64, "written in place");
        // A torn write of the newest slot: the previous mark, which only lags.
        let mut bytes = std::fs::read(&path).unwrap();
        let newest = bytes.chunks_exact(SLOT).position(|s| decode_slot(s).is_some_and(|(_, p, _)| p == 11)).unwrap();
        bytes[newest * SLOT + 15] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), Some((10, 10)));
        // Both damaged: unreadable, never taken as no mark.
        bytes[(1 - newest) * SLOT + 15] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path), Err(StoreError::Corrupt { .. })));
        std::fs::write(&path, "12 zz").unwrap();
        assert!(read(&path).is_err(), "text that is not a mark");
    }
}
