//! A fold in two threads: one reads (and checks and decodes) events a few batches ahead of the
//! fold, and prepares part of the document for the batches it reads while it is ahead; the
//! other folds. Reading and folding a long log take about as long as each other, and a machine
//! has two cores or more. Which thread prepares follows which one waits: a portable log's
//! JSON keeps the reader busy (it prepared about every other batch, as it did when that split
//! was fixed), a store's binary events leave it time to prepare nearly all of them.
//! Used for a portable log (`jsonl::fold_log_prepared`) and for a store (`document`).

use poolbill_domain::Event;
use poolbill_ledger::{fold_events, Recorded, Upto};
use poolbill_projections::Projections;

/// Events handed from the reader to the fold at a time, and batches the reader may be ahead.
const BATCH: usize = 1024;
const AHEAD: usize = 4;

/// Fold what `read` gives (it calls its argument with each event in log order, and stops when
/// that returns false: the fold wants no more), as of `upto`, showing each folded event to
/// `visit` with what `prepare` made of it on the reader's thread (the batches it reads while the
/// fold has batches waiting; nothing for the others, whose work `visit` does itself). An error of the reader ends the fold after the
/// events before it, and is returned. Each batch goes back to the reader once folded, to be
/// dropped there: memory is best freed by the thread that took it.
pub fn fold_pipelined<E: Send>(
    upto: Upto,
    read: impl FnOnce(&mut dyn FnMut(Recorded, Event) -> bool) -> Result<(), E> + Send,
    mut prepare: impl FnMut(&Recorded, &Event, &mut Vec<u8>) + Send,
    mut visit: impl FnMut(&Projections, &Recorded, &Event, &[u8]),
) -> Result<Projections, E> {
    let mut projections = Projections::live();
    // Batches sent and not yet taken by the fold.
    let waiting = std::sync::atomic::AtomicUsize::new(0);
    let waiting = &waiting;
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Result<Batch, E>>(AHEAD);
        let (give_back, given_back) = std::sync::mpsc::channel::<Batch>();
        scope.spawn(move || {
            let mut batch = Batch::with_capacity(BATCH);
            let mut folded = true;
            let mut preparing = false;
            let mut stopped = false;
            let result = read(&mut |recorded, event| {
                folded = folded && upto.includes(&recorded);
                if folded && preparing {
                    prepare(&recorded, &event, &mut batch.prepared);
                }
                batch.ends.push(batch.prepared.len());
                batch.events.push((recorded, event));
                if batch.events.len() == BATCH {
                    // A batch folded and given back is emptied here and filled again.
                    let mut next = given_back.try_recv().unwrap_or_else(|_| Batch::with_capacity(BATCH));
                    next.clear();
                    // A send fails only when the fold has stopped: then nothing more is wanted.
                    waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stopped = send.send(Ok(std::mem::replace(&mut batch, next))).is_err();
                    // Ahead of the fold: time to prepare the next batch too.
                    preparing = waiting.load(std::sync::atomic::Ordering::Relaxed) > 1;
                }
                !stopped
            });
            if stopped {
                return;
            }
            // The events read, then the reader's error if it had one.
            waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = send.send(Ok(batch)).and_then(|()| match result {
                Ok(()) => Ok(()),
                Err(e) => {
                    waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    send.send(Err(e))
                }
            });
        });
        let mut folding = true;
        for batch in &receive {
            waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let batch = batch?;
            if folding {
                let mut from = 0;
                let mut next = batch.ends.iter();
                folding = fold_events(&mut projections, &batch.events, upto, |p, recorded, event| {
                    let to = *next.next().expect("an end for each event");
                    visit(p, recorded, event, &batch.prepared[from..to]);
                    from = to;
                });
            }
            // The reader may have ended: then this batch is dropped here.
            let _ = give_back.send(batch);
        }
        Ok(())
    })?;
    tracing::debug!(events = projections.events, "replayed");
    Ok(projections)
}

/// Events the reader has read, with what was prepared of each.
struct Batch {
    events: Vec<(Recorded, Event)>,
    /// What was prepared of each event, one after another: event `i`'s ends at `ends[i]`.
    prepared: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    fn with_capacity(events: usize) -> Batch {
        Batch { events: Vec::with_capacity(events), prepared: Vec::new(), ends: Vec::with_capacity(events) }
    }

    fn clear(&mut self) {
        self.events.clear();
        self.prepared.clear();
        self.ends.clear();
    }
}
