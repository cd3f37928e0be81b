//! The high-water mark: the last acknowledged position and its stored value's checksum, in a
//! small file beside sled's, so that a store that lost acknowledged events is refused naming
//! the position it should reach, never silently used.
//!
//! The file holds two slots of 32 bytes, written alternately in place: a write torn by a crash
//! damages only the slot being written, and the other still holds the previous mark, which
//! only ever lags (what the torn write was marking had not been acknowledged yet).
//!
//! A mark is written only once what it claims is synced, so it never leads the log. It is not
//! synced before the acknowledgement (a second `fdatasync` on every commit, a third of a single
//! append's time): a thread of the writer's syncs it at most [`SYNC_EVERY`] after it moved,
//! and [`Writer::sync`] (a store's flush, its closing) at once. A killed process loses nothing
//! of it (the page cache keeps it); after a crash of the machine it may lag by what was
//! acknowledged in the last [`SYNC_EVERY`], which the log's synced frames still hold: the mark
//! is there to catch a log that lost what it once held (cut short, an older copy put back),
//! and it catches that for everything older. Each slot: `PBWM`, a sequence number, the position (`u64` BE), the
//! checksum (`u32` BE), and a CRC-32 of those 24 bytes; four zero bytes pad it. Stores written
//! before kept the mark as text (`"<position> <crc hex>\n"`, replaced by a rename on every
//! commit, which cost a synchronous discard of the old file's blocks on each acknowledgement);
//! that text is still read, and rewritten once, by a rename, into the two slots.

use poolbill_store::StoreError;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a moved mark may wait for its `fdatasync` (see the module's comment).
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

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
    /// first write), and the thread that syncs it.
    file: Option<(Arc<File>, Syncer)>,
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

    /// Mark `position` (with its value's checksum) as acknowledged: written before returning,
    /// synced within [`SYNC_EVERY`]. Err if an earlier sync failed (reported once, here or by
    /// [`Writer::sync`]).
    pub fn write(&mut self, position: u64, crc: u32) -> Result<(), StoreError> {
        let io = |what: &str, path: &Path, e: std::io::Error| StoreError::io(format!("{what} {}", path.display()), e);
        match &self.file {
            Some((file, syncer)) => {
                syncer.take_failure(&self.path)?;
                self.seq += 1;
                let offset = (self.seq % 2) * SLOT as u64;
                file.write_all_at(&encode_slot(self.seq, position, crc), offset).map_err(|e| io("writing", &self.path, e))?;
                syncer.moved();
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
                let file = Arc::new(File::options().write(true).open(&self.path).map_err(|e| io("opening", &self.path, e))?);
                let syncer = Syncer::start(file.clone()).map_err(|e| io("starting the thread that syncs", &self.path, e))?;
                self.file = Some((file, syncer));
                self.seq = seq;
            }
        }
        self.position = position;
        Ok(())
    }

    /// The mark as written so far, synced before returning.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        let Some((file, syncer)) = &self.file else { return Ok(()) };
        syncer.take_failure(&self.path)?;
        file.sync_data().map_err(|e| StoreError::io(format!("syncing {}", self.path.display()), e))
    }
}

/// The thread that syncs a moved mark, at most [`SYNC_EVERY`] after it moved; on drop it syncs
/// what is left and stops.
struct Syncer {
    shared: Arc<(Mutex<SyncState>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SyncState {
    /// How many times the mark moved, and how many of those moves the last good sync covers.
    moved: u64,
    synced: u64,
    closing: bool,
    /// A sync that failed, until reported.
    failure: Option<std::io::Error>,
    /// Test hook: the next sync fails.
    #[cfg(test)]
    fail_next: bool,
}

impl Syncer {
    fn start(file: Arc<File>) -> std::io::Result<Syncer> {
        let shared = Arc::new((Mutex::new(SyncState::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new().name("poolbill-mark".into()).spawn(move || Syncer::run(&file, &theirs))?;
        Ok(Syncer { shared, thread: Some(thread) })
    }

    fn run(file: &File, shared: &(Mutex<SyncState>, Condvar)) {
        let (state, wake) = shared;
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            guard = wake.wait_while(guard, |s| s.moved == s.synced && !s.closing).unwrap_or_else(|e| e.into_inner());
            if guard.moved == guard.synced {
                return;
            }
            let target = guard.moved;
            #[cfg(test)]
            let injected = std::mem::take(&mut guard.fail_next);
            drop(guard);
            let synced = file.sync_data();
            #[cfg(test)]
            let synced = synced.and_then(|()| if injected { Err(std::io::Error::other("injected failure")) } else { Ok(()) });
            guard = state.lock().unwrap_or_else(|e| e.into_inner());
            match synced {
                Ok(()) => guard.synced = target,
                // Reported by the next write; the moves stay unsynced, so the next sync retries.
                Err(e) => drop(guard.failure.get_or_insert(e)),
            }
            wake.notify_all();
            // Marks that move meanwhile wait for the next sync (a closing one does not wait).
            guard = wake.wait_timeout_while(guard, SYNC_EVERY, |s| !s.closing).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn moved(&self) {
        let (state, wake) = &*self.shared;
        state.lock().unwrap_or_else(|e| e.into_inner()).moved += 1;
        wake.notify_all();
    }

    fn take_failure(&self, path: &Path) -> Result<(), StoreError> {
        let failure = self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).failure.take();
        failure.map_or(Ok(()), |e| Err(StoreError::io(format!("syncing {}", path.display()), e)))
    }

    /// Test hook: wait until the thread has tried to sync every move so far (it succeeded, or
    /// it failed and kept the failure to report).
    #[cfg(test)]
    fn settle(&self) {
        let (state, wake) = &*self.shared;
        let guard = state.lock().unwrap_or_else(|e| e.into_inner());
        drop(wake.wait_while(guard, |s| s.moved != s.synced && s.failure.is_none()).unwrap_or_else(|e| e.into_inner()));
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let (state, wake) = &*self.shared;
        state.lock().unwrap_or_else(|e| e.into_inner()).closing = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

    #[test]
    fn a_moved_mark_is_synced_by_its_thread_and_a_failed_sync_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mark");
        let mut writer = Writer::new(path.clone());
        writer.write(1, 1).unwrap();
        for position in 2..50 {
            writer.write(position, position as u32).unwrap();
        }
        fn syncer(writer: &Writer) -> &Syncer {
            &writer.file.as_ref().expect("the slots are written").1
        }
        syncer(&writer).settle();
        {
            let state = syncer(&writer).shared.0.lock().unwrap();
            assert_eq!((state.moved, state.synced), (48, 48), "every move synced");
        }
        // A sync that fails: the next write says so, naming the file, and the one after goes on
        // (its move is synced again).
        syncer(&writer).shared.0.lock().unwrap().fail_next = true;
        writer.write(50, 50).unwrap();
        syncer(&writer).settle();
        let failed = writer.write(51, 51).unwrap_err();
        assert!(failed.to_string().contains(&path.display().to_string()), "{failed}");
        assert_eq!(read(&path).unwrap(), Some((50, 50)), "the failed write moved nothing");
        writer.write(51, 51).unwrap();
        syncer(&writer).settle();
        assert_eq!(read(&path).unwrap(), Some((51, 51)));
        writer.sync().unwrap();
        // The thread stops with the writer.
        drop(writer);
        assert_eq!(read(&path).unwrap(), Some((51, 51)));
    }
}
