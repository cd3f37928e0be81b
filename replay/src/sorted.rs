//! Records put in order in bounded memory, for the tools whose output's order is not the log's
//! (an audit comparing lines by start and resource, a diff listing them by resource): runs
//! sorted in memory and written to a temporary file, merged when read back. The sort is stable:
//! records that compare equal come back in the order they were pushed.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

/// A record that can go to the temporary file and come back.
pub(crate) trait Spill: Sized {
    /// Its bytes, appended to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> io::Result<()>;
    /// The record `encode` wrote as `bytes`.
    fn decode(bytes: &[u8]) -> io::Result<Self>;
    /// Its place in the order.
    fn order(&self, other: &Self) -> Ordering;
}

/// Records in memory before a sorted run of them is written out.
pub(crate) const RUN: usize = 100_000;

/// Bytes of a run read back at a time: a merge holds this much of each run.
const READ: usize = 16 << 10;

pub(crate) struct Sorted<T> {
    /// Records a run holds.
    run: usize,
    buffer: Vec<T>,
    file: Option<BufWriter<File>>,
    /// Each written run's first byte and its end.
    runs: Vec<(u64, u64)>,
    written: u64,
    /// Room to encode a record in.
    scratch: Vec<u8>,
    count: u64,
}

impl<T: Spill> Sorted<T> {
    pub(crate) fn new() -> Sorted<T> {
        Sorted::with_runs_of(RUN)
    }

    pub(crate) fn with_runs_of(run: usize) -> Sorted<T> {
        Sorted { run, buffer: Vec::new(), file: None, runs: Vec::new(), written: 0, scratch: Vec::new(), count: 0 }
    }

    /// Records pushed so far.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    pub(crate) fn push(&mut self, record: T) -> io::Result<()> {
        self.buffer.push(record);
        self.count += 1;
        if self.buffer.len() == self.run {
            self.spill()?;
        }
        Ok(())
    }

    /// The buffer sorted and written as a run: each record its length (8 bytes, little endian),
    /// then its bytes.
    fn spill(&mut self) -> io::Result<()> {
        self.buffer.sort_by(T::order);
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(BufWriter::with_capacity(1 << 16, tempfile::tempfile()?)),
        };
        let from = self.written;
        for record in self.buffer.drain(..) {
            self.scratch.clear();
            record.encode(&mut self.scratch)?;
            file.write_all(&(self.scratch.len() as u64).to_le_bytes())?;
            file.write_all(&self.scratch)?;
            self.written += 8 + self.scratch.len() as u64;
        }
        self.runs.push((from, self.written));
        Ok(())
    }

    /// The records in order: the runs on file merged with the records still in memory (the
    /// last pushed, which come after every run's among equals).
    pub(crate) fn into_sorted(mut self) -> io::Result<Merge<T>> {
        self.buffer.sort_by(T::order);
        let file = match self.file {
            Some(file) => Some(Rc::new(file.into_inner().map_err(|e| e.into_error())?)),
            None => None,
        };
        let mut runs: Vec<Run<T>> = Vec::with_capacity(self.runs.len() + 1);
        for (from, to) in self.runs {
            let file = Rc::clone(file.as_ref().expect("runs were written to the file"));
            runs.push(Run::Spilled(RunReader { file, next: from, end: to, buffer: Vec::new(), at: 0 }));
        }
        runs.push(Run::Memory(self.buffer.into_iter()));
        Merge::new(runs)
    }
}

/// A run being read back.
enum Run<T> {
    Spilled(RunReader),
    Memory(std::vec::IntoIter<T>),
}

/// One run of the temporary file, read with positioned reads (the runs share one file).
struct RunReader {
    file: Rc<File>,
    next: u64,
    end: u64,
    buffer: Vec<u8>,
    at: usize,
}

impl RunReader {
    /// The next record's bytes, or none at the run's end.
    fn next_record<T: Spill>(&mut self) -> io::Result<Option<T>> {
        let mut need = 8;
        loop {
            let have = self.buffer.len() - self.at;
            if have >= 8 {
                let length = u64::from_le_bytes(self.buffer[self.at..self.at + 8].try_into().expect("8 bytes")) as usize;
                need = 8 + length;
                if have >= need {
                    let record = T::decode(&self.buffer[self.at + 8..self.at + need])?;
                    self.at += need;
                    return Ok(Some(record));
                }
            }
            if self.next == self.end {
                return match have {
                    0 => Ok(None),
                    _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a record cut short in the temporary file")),
                };
            }
            self.buffer.drain(..self.at);
            self.at = 0;
            let want = ((self.end - self.next) as usize).min(need.max(READ));
            let filled = self.buffer.len();
            self.buffer.resize(filled + want, 0);
            self.file.read_exact_at(&mut self.buffer[filled..], self.next)?;
            self.next += want as u64;
        }
    }
}

/// A merge of sorted runs: each run's next record, the least (the earliest run among equals)
/// first.
pub(crate) struct Merge<T> {
    runs: Vec<Run<T>>,
    /// Each run's next record, least first.
    heads: BinaryHeap<Reverse<Head<T>>>,
}

/// A run's next record, and the run it is from.
struct Head<T> {
    record: T,
    run: usize,
}

impl<T: Spill> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T: Spill> Eq for Head<T> {}
impl<T: Spill> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: Spill> Ord for Head<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.record.order(&other.record).then(self.run.cmp(&other.run))
    }
}

impl<T: Spill> Merge<T> {
    fn new(runs: Vec<Run<T>>) -> io::Result<Merge<T>> {
        let mut merge = Merge { heads: BinaryHeap::with_capacity(runs.len()), runs };
        for i in 0..merge.runs.len() {
            merge.refill(i)?;
        }
        Ok(merge)
    }

    /// Read run `i`'s next record into the heads.
    fn refill(&mut self, i: usize) -> io::Result<()> {
        let next = match &mut self.runs[i] {
            Run::Spilled(reader) => reader.next_record()?,
            Run::Memory(records) => records.next(),
        };
        if let Some(record) = next {
            self.heads.push(Reverse(Head { record, run: i }));
        }
        Ok(())
    }
}

impl<T: Spill> Iterator for Merge<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse(head) = self.heads.pop()?;
        if let Err(e) = self.refill(head.run) {
            return Some(Err(e));
        }
        Some(Ok(head.record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A key to sort by and a tag that tells equals apart.
    #[derive(Clone, Debug, PartialEq)]
    struct Keyed(u8, u32);

    impl Spill for Keyed {
        fn encode(&self, out: &mut Vec<u8>) -> io::Result<()> {
            out.push(self.0);
            out.extend_from_slice(&self.1.to_le_bytes());
            Ok(())
        }

        fn decode(bytes: &[u8]) -> io::Result<Keyed> {
            let tag = bytes.get(1..5).ok_or_else(|| io::Error::other("short"))?;
            Ok(Keyed(bytes[0], u32::from_le_bytes(tag.try_into().expect("4 bytes"))))
        }

        fn order(&self, other: &Self) -> Ordering {
            self.0.cmp(&other.0)
        }
    }

    proptest! {
        /// Runs written to the file and merged give a stable sort: equals in the order pushed.
        #[test]
        fn runs_merged_are_a_stable_sort(keys in prop::collection::vec(0u8..5, 0..80), run in 1usize..9) {
            let records: Vec<Keyed> = keys.into_iter().enumerate().map(|(i, k)| Keyed(k, i as u32)).collect();
            let mut sorted = Sorted::with_runs_of(run);
            for r in &records {
                sorted.push(r.clone()).unwrap();
            }
            prop_assert_eq!(sorted.len(), records.len() as u64);
            let merged: Vec<Keyed> = sorted.into_sorted().unwrap().collect::<io::Result<_>>().unwrap();
            let mut expected = records;
            expected.sort_by(Keyed::order);
            prop_assert_eq!(merged, expected);
        }
    }
}
