//! The worker's side of the event path: each edge worker writes its clicks'
//! events, already framed as the spool stores them, into a buffer of its own, and
//! hands the whole buffer to the pump when its runtime is about to sleep or the
//! buffer is full. So a click costs no channel operation, no allocation of its
//! own and no cross-thread wake-up; the pump writes each batch with one write.

use std::cell::RefCell;

use super::spool::{built_frames, push_frame_with, BuiltFrame, SpoolError};
use super::Topic;

/// A worker hands its batch over once it holds this much even if its runtime
/// never sleeps (a saturated worker): about 40 click events.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// The smallest buffer a new batch starts with.
const MIN_CAPACITY: usize = 1024;

/// Events framed for the spool, in the order they were submitted.
#[derive(Debug, Default)]
pub struct FrameBatch {
    bytes: Vec<u8>,
    /// Events by topic, for what a dropped batch counts.
    events: [usize; 2],
}

impl FrameBatch {
    pub fn with_capacity(bytes: usize) -> FrameBatch {
        FrameBatch {
            bytes: Vec::with_capacity(bytes),
            events: [0; 2],
        }
    }

    /// Appends one event, its value written in place.
    pub fn push_with(
        &mut self,
        topic: Topic,
        key: &[u8],
        write_value: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SpoolError> {
        push_frame_with(&mut self.bytes, topic, key, write_value)?;
        self.events[topic as usize] += 1;
        Ok(())
    }

    pub fn events(&self) -> usize {
        self.events.iter().sum()
    }

    /// The events of one topic.
    pub fn events_of(&self, topic: Topic) -> usize {
        self.events[topic as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.events() == 0
    }

    /// The frames as the spool writes them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Each event's topic, key, value, and the offset just past its frame.
    pub fn frames(&self) -> impl Iterator<Item = BuiltFrame<'_>> {
        built_frames(&self.bytes)
    }
}

/// The batch a worker thread is filling, and the sink it belongs to (a test
/// process runs several servers, each with its own sink and workers).
struct ThreadBatch {
    sink: u64,
    batch: FrameBatch,
}

thread_local! {
    static THREAD_BATCH: RefCell<Option<ThreadBatch>> = const { RefCell::new(None) };
}

/// This thread batches events for sink `sink` from now on.
pub fn attach(sink: u64) {
    THREAD_BATCH.with(|cell| {
        *cell.borrow_mut() = Some(ThreadBatch {
            sink,
            batch: FrameBatch::with_capacity(MIN_CAPACITY),
        })
    });
}

/// Adds one event to this thread's batch for `sink`. Returns a batch to hand
/// over now (this one full), or, on a thread that batches for no sink or another
/// one, a batch of this event alone; `Err` if the event is too large to keep.
pub fn push(
    sink: u64,
    topic: Topic,
    key: &[u8],
    write_value: impl FnOnce(&mut Vec<u8>),
) -> Result<Option<FrameBatch>, SpoolError> {
    THREAD_BATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some(local) if local.sink == sink => {
                local.batch.push_with(topic, key, write_value)?;
                Ok((local.batch.bytes.len() >= FLUSH_BYTES).then(|| local.take()))
            }
            _ => {
                let mut alone = FrameBatch::with_capacity(MIN_CAPACITY);
                alone.push_with(topic, key, write_value)?;
                Ok(Some(alone))
            }
        }
    })
}

/// This thread's batch for `sink`, if it holds any event.
pub fn take(sink: u64) -> Option<FrameBatch> {
    THREAD_BATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let local = slot.as_mut().filter(|local| local.sink == sink)?;
        (!local.batch.is_empty()).then(|| local.take())
    })
}

/// This thread stops batching for `sink`; returns what it held.
pub fn detach(sink: u64) -> Option<FrameBatch> {
    let held = take(sink);
    THREAD_BATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_some_and(|local| local.sink == sink) {
            *slot = None;
        }
    });
    held
}

impl ThreadBatch {
    /// The batch so far; the next starts as large as this one grew.
    fn take(&mut self) -> FrameBatch {
        let capacity = self
            .batch
            .bytes
            .len()
            .clamp(MIN_CAPACITY, FLUSH_BYTES + FLUSH_BYTES / 4);
        std::mem::replace(&mut self.batch, FrameBatch::with_capacity(capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(batch: &mut FrameBatch, topic: Topic, key: &str, value: &str) {
        batch
            .push_with(topic, key.as_bytes(), |buf| {
                buf.extend_from_slice(value.as_bytes())
            })
            .unwrap();
    }

    #[test]
    fn frames_come_back_as_pushed_and_parse_as_the_spool_reads_them() {
        let mut batch = FrameBatch::default();
        event(
            &mut batch,
            Topic::Clicks,
            "01J00000000000000000000000",
            "{\"a\":1}",
        );
        event(&mut batch, Topic::Actions, "k", "");
        event(&mut batch, Topic::Clicks, "", "value without a key");
        let frames: Vec<_> = batch.frames().collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].0, Topic::Clicks);
        assert_eq!(frames[0].1, b"01J00000000000000000000000");
        assert_eq!(frames[0].2, b"{\"a\":1}");
        assert_eq!(
            frames[1],
            (Topic::Actions, &b"k"[..], &b""[..], frames[1].3)
        );
        assert_eq!(frames[2].2, b"value without a key");
        assert_eq!(frames[2].3, batch.bytes().len());
        // The reader of segment files finds the same records, checksums valid.
        let read = crate::sink::spool::parse_frames(batch.bytes(), 0, true, u64::MAX);
        let read: Vec<_> = read
            .into_iter()
            .map(|frame| match frame {
                crate::sink::spool::Frame::Record {
                    topic,
                    key,
                    value,
                    end,
                } => (topic, key, value, end),
                other => panic!("not a record: {other:?}"),
            })
            .collect();
        let built: Vec<_> = frames
            .iter()
            .map(|(topic, k, v, end)| (*topic, k.to_vec(), v.to_vec(), *end as u64))
            .collect();
        assert_eq!(read, built);
    }

    #[test]
    fn a_frame_left_unfinished_by_a_panicking_writer_ends_the_frames() {
        let mut batch = FrameBatch::default();
        event(&mut batch, Topic::Clicks, "k", "whole");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = batch.push_with(Topic::Clicks, b"k", |buf| {
                buf.extend_from_slice(b"half");
                panic!("the writer fails");
            });
        }));
        assert!(panicked.is_err());
        let frames: Vec<_> = batch
            .frames()
            .map(|(_, _, value, _)| value.to_vec())
            .collect();
        assert_eq!(frames, vec![b"whole".to_vec()]);
        assert_eq!(batch.events(), 1);
    }

    #[test]
    fn a_too_large_event_is_refused_and_leaves_the_batch_as_it_was() {
        let mut batch = FrameBatch::default();
        event(&mut batch, Topic::Clicks, "k", "first");
        let before = batch.bytes().to_vec();
        let refused = batch.push_with(Topic::Actions, b"k", |buf| {
            buf.resize(buf.len() + (2 << 20), b'x')
        });
        assert!(
            matches!(refused, Err(SpoolError::TooLarge(_))),
            "{refused:?}"
        );
        assert_eq!(batch.bytes(), &before[..]);
        assert_eq!(batch.events(), 1);
    }

    #[test]
    fn a_thread_batches_for_its_own_sink_only_and_hands_over_when_full() {
        attach(7);
        // Another sink's event comes back at once, alone.
        let alone = push(8, Topic::Clicks, b"k", |buf| {
            buf.extend_from_slice(b"other")
        })
        .unwrap();
        assert_eq!(alone.map(|b| b.events()), Some(1));
        // Its own are kept until the batch is full.
        let mut handed = Vec::new();
        for _ in 0..100 {
            if let Some(full) = push(7, Topic::Clicks, b"k", |buf| {
                buf.extend_from_slice(&[b'v'; 1000])
            })
            .unwrap()
            {
                handed.push(full);
            }
        }
        // A frame: 12 bytes of head, a topic byte, 2 of key length, the key, the value.
        assert_eq!(handed.len(), 100 / FLUSH_BYTES.div_ceil(12 + 3 + 1 + 1000));
        assert!(handed.iter().all(|b| b.bytes().len() >= FLUSH_BYTES));
        let rest = detach(7).expect("the rest is handed over when detached");
        let total: usize = handed.iter().map(FrameBatch::events).sum::<usize>() + rest.events();
        assert_eq!(total, 100);
        assert!(take(7).is_none(), "nothing once detached");
        assert_eq!(
            push(7, Topic::Clicks, b"k", |_| {})
                .unwrap()
                .map(|b| b.events()),
            Some(1)
        );
    }
}
