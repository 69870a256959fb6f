//! The disk spool: an append-only log of events (clicks and actions) in segment
//! files.
//!
//! Every event is appended here before it is sent to Kafka, and a segment is deleted
//! only when it is sealed and every record in it was acknowledged. So what the edge
//! answered survives a broker outage, a shutdown with the broker down, and a crash.
//!
//! ## Format
//! A segment `NNNNNNNNNNNNNNNNNNNN.seg` is a sequence of frames:
//!
//! ```text
//! magic "CEv2" | payload length: u32 LE | CRC32C of payload: u32 LE | payload
//! payload = topic: u8 (0 clicks, 1 actions) | key length: u16 LE | key | value
//! ```
//!
//! Segments left by a build from before actions hold `CEv1` frames, whose payload
//! has no topic byte (`key length | key | value`): they are read as clicks, so an
//! upgrade replays what the old build spooled.
//!
//! A torn frame (a crash mid-write) or a corrupt one (bad length or checksum) is
//! detected, skipped and counted; reading resumes at the next magic, so the rest of
//! the segment still replays.
//!
//! ## Durability
//! Frames are handed to the operating system after every batch, so a crash of the
//! process (kill -9) loses only events not yet taken from the in-memory channel. An
//! `fsync` runs every `--spool-fsync-interval` on a thread of its own (the writer
//! never waits for the disk); a crash of the machine can lose at most that interval
//! of events.
//!
//! Why one long file: it is one on-disk format, its writer, its reader (torn and
//! corrupt frames) and the segments' bookkeeping; the tests of each sit beside it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::Topic;

const MAGIC: [u8; 4] = *b"CEv2";
/// The magic of frames written before the topic byte: clicks, all of them.
const MAGIC_V1: [u8; 4] = *b"CEv1";
const HEADER: usize = 12;
/// The payload's bytes before the key: topic and key length.
const PREFIX: usize = 3;
/// No click event comes near this; a larger length is corruption.
const MAX_PAYLOAD: usize = 1 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
const LOCK_FILE: &str = "LOCK";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({max_bytes} bytes, --spool-max-bytes)")]
    Full { max_bytes: u64 },
    #[error("spool directory {}: {source}", dir.display())]
    Io { dir: PathBuf, source: io::Error },
    #[error("spool directory {} is in use by another clickedge process", .0.display())]
    Locked(PathBuf),
    #[error("event too large for the spool: {0} bytes")]
    TooLarge(usize),
    #[error("spool directory {} is {reason}: another user could plant events that would be replayed as clicks (use a directory of this user's, mode 0700)", dir.display())]
    Unsafe { dir: PathBuf, reason: String },
}

/// Refuses a spool directory that someone else can write: another user's, or one
/// writable by its group or by others (segments found there are replayed as
/// clicks). A directory that does not exist yet is fine: it is created 0700.
pub fn check_spool_dir(dir: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = match fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SpoolError::Io {
                dir: dir.to_owned(),
                source,
            })
        }
    };
    let unsafe_because = |reason: String| {
        Err(SpoolError::Unsafe {
            dir: dir.to_owned(),
            reason,
        })
    };
    if !metadata.is_dir() {
        return unsafe_because("not a directory".to_owned());
    }
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return unsafe_because(format!("owned by uid {}, not {me}", metadata.uid()));
    }
    if metadata.mode() & 0o022 != 0 {
        return unsafe_because(format!(
            "writable by its group or others (mode {:04o})",
            metadata.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Files only this user can read or write: events carry visitors' addresses.
fn private_file() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

/// One segment file and how far it has been sent and acknowledged.
#[derive(Debug)]
pub struct Segment {
    pub id: u64,
    pub path: PathBuf,
    /// Bytes written (for the active segment: including what is still buffered).
    pub bytes: u64,
    /// Byte offset up to which records were sent to Kafka (or skipped as corrupt).
    pub sent_pos: u64,
    /// Records sent to Kafka (live or replayed).
    pub sent: u64,
    /// Records Kafka acknowledged.
    pub acked: u64,
    /// No more appends: the segment can go once it is fully sent and acknowledged.
    pub sealed: bool,
    created: Instant,
}

impl Segment {
    pub fn unsent_bytes(&self) -> u64 {
        self.bytes.saturating_sub(self.sent_pos)
    }

    fn is_done(&self) -> bool {
        self.sealed && self.sent_pos == self.bytes && self.acked >= self.sent
    }
}

/// Where an appended frame went: its segment, and the offset just past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub segment: u64,
    pub end: u64,
}

/// Where a run of frames was appended: its segment and the offset it begins at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub segment: u64,
    pub start: u64,
}

impl Placed {
    /// Where the frame ending `end` bytes into the run went.
    pub fn frame_ending(self, end: usize) -> Appended {
        Appended {
            segment: self.segment,
            end: self.start + end as u64,
        }
    }
}

/// What reading a segment finds, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Record {
        topic: Topic,
        key: Vec<u8>,
        value: Vec<u8>,
        /// Offset just past this frame.
        end: u64,
    },
    /// Bytes that are not a valid frame (torn or corrupt), up to `end`.
    Corrupt { end: u64 },
}

/// Appends and reads segments in one directory, which it holds locked.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_max_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    writer: Option<(u64, BufWriter<File>)>,
    next_id: u64,
    total_bytes: u64,
    /// Written since the last fsync.
    dirty: bool,
    /// Files to fsync, for the syncer thread; `None` once closed.
    syncer: Option<crossbeam_channel::Sender<File>>,
    syncer_thread: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

impl Drop for Spool {
    /// Waits for the pending fsyncs, so that a clean stop leaves nothing unsynced.
    fn drop(&mut self) {
        if let Some((_, writer)) = self.writer.take() {
            if let Ok(file) = writer.into_inner() {
                self.to_syncer(file);
            }
        }
        drop(self.syncer.take());
        if let Some(thread) = self.syncer_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Spool {
    /// Opens (creating) the directory, locks it, and takes over leftover segments:
    /// they are sealed and unsent, to be replayed.
    pub fn open(dir: &Path, max_bytes: u64, segment_max_bytes: u64) -> Result<Spool, SpoolError> {
        let io_err = |source| SpoolError::Io {
            dir: dir.to_owned(),
            source,
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
        // Checked again now that it exists: it may have been made meanwhile.
        check_spool_dir(dir)?;
        let lock = private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let mut segments = BTreeMap::new();
        let mut total_bytes = 0;
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata().map_err(io_err)?.len();
            if bytes == 0 {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            total_bytes += bytes;
            segments.insert(
                id,
                Segment {
                    id,
                    path: entry.path(),
                    bytes,
                    sent_pos: 0,
                    sent: 0,
                    acked: 0,
                    sealed: true,
                    created: Instant::now(),
                },
            );
        }
        let next_id = segments.keys().next_back().map_or(1, |id| id + 1);
        let (syncer, files) = crossbeam_channel::unbounded::<File>();
        let syncer_thread = std::thread::Builder::new()
            .name("spool-fsync".into())
            .spawn(move || {
                for file in files {
                    if let Err(error) = file.sync_data() {
                        tracing::error!(message = "Spool fsync failed.", %error);
                    }
                }
            })
            .map_err(io_err)?;
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            segment_max_bytes,
            segments,
            writer: None,
            next_id,
            total_bytes,
            dirty: false,
            syncer: Some(syncer),
            syncer_thread: Some(syncer_thread),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes written but not yet sent: the replay backlog.
    pub fn backlog_bytes(&self) -> u64 {
        self.segments.values().map(Segment::unsent_bytes).sum()
    }

    pub fn has_backlog(&self) -> bool {
        self.segments.values().any(|s| s.unsent_bytes() > 0)
    }

    /// The bytes a record with these key and value lengths takes on disk.
    #[cfg(test)]
    fn frame_len(key_len: usize, value_len: usize) -> u64 {
        (HEADER + PREFIX + key_len + value_len) as u64
    }

    /// Records sent to Kafka and not acknowledged yet.
    pub fn unacknowledged(&self) -> u64 {
        self.segments
            .values()
            .map(|s| s.sent.saturating_sub(s.acked))
            .sum()
    }

    /// Whether an event of `len` bytes would fit.
    pub fn has_room_for(&self, len: usize) -> bool {
        self.total_bytes + (HEADER + PREFIX + len) as u64 <= self.max_bytes
    }

    /// Appends one event to the active segment (buffered until [`Spool::flush`]).
    /// Returns where it went.
    pub fn append(
        &mut self,
        topic: Topic,
        key: &[u8],
        value: &[u8],
    ) -> Result<Appended, SpoolError> {
        let mut frame = Vec::with_capacity(HEADER + PREFIX + key.len() + value.len());
        push_frame_with(&mut frame, topic, key, |buf| buf.extend_from_slice(value))?;
        let placed = self.append_frames(&frame).map_err(|(error, _)| error)?;
        Ok(placed.frame_ending(frame.len()))
    }

    /// Appends frames built by [`push_frame_with`] with one write (buffered until
    /// [`Spool::flush`]); they fit whole or not at all. Returns where the first
    /// begins; on a write error, where it would have begun too (frames of it
    /// that reached the file before the error are replayed from there).
    pub fn append_frames(&mut self, frames: &[u8]) -> Result<Placed, (SpoolError, Option<Placed>)> {
        let len = frames.len() as u64;
        if self.total_bytes + len > self.max_bytes {
            let max_bytes = self.max_bytes;
            return Err((SpoolError::Full { max_bytes }, None));
        }
        let id = self.active_segment().map_err(|error| (error, None))?;
        let placed = Placed {
            segment: id,
            start: self.segments[&id].bytes,
        };
        let (_, writer) = self
            .writer
            .as_mut()
            .expect("an active segment has a writer");
        if let Err(source) = writer.write_all(frames) {
            self.abandon_active();
            return Err((self.io(source), Some(placed)));
        }
        let segment = self
            .segments
            .get_mut(&id)
            .expect("the active segment is listed");
        segment.bytes += len;
        self.total_bytes += len;
        self.dirty = true;
        Ok(placed)
    }

    /// Whether an appended frame is in its segment's file: after a failed flush
    /// abandoned the segment, only frames that ended within what reached the disk
    /// are (they will be replayed); the others are not.
    pub fn holds(&self, appended: Appended) -> bool {
        self.segments
            .get(&appended.segment)
            .is_some_and(|s| s.bytes >= appended.end)
    }

    /// The id of the segment appends go to, rotating a full one.
    fn active_segment(&mut self) -> Result<u64, SpoolError> {
        if let Some((id, _)) = &self.writer {
            let id = *id;
            if self.segments[&id].bytes < self.segment_max_bytes {
                return Ok(id);
            }
            self.seal_active()?;
        }
        let id = self.next_id;
        self.next_id += 1;
        let path = self.dir.join(format!("{id:020}{SEGMENT_SUFFIX}"));
        let file = private_file()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|source| self.io(source))?;
        self.writer = Some((id, BufWriter::with_capacity(256 * 1024, file)));
        self.segments.insert(
            id,
            Segment {
                id,
                path,
                bytes: 0,
                sent_pos: 0,
                sent: 0,
                acked: 0,
                sealed: false,
                created: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Hands buffered frames to the operating system (survives a process crash).
    /// On failure the active segment is abandoned: what this flush carried may or
    /// may not be on disk.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if let Some((_, writer)) = &mut self.writer {
            if let Err(source) = writer.flush() {
                self.abandon_active();
                return Err(self.io(source));
            }
        }
        Ok(())
    }

    /// After a write error (a full disk): stop appending to the active segment and
    /// trust the file's real length from now on, so offsets stay true; a partial
    /// frame at its end is skipped as torn when replayed. The next append starts a
    /// new segment.
    fn abandon_active(&mut self) {
        let Some((id, writer)) = self.writer.take() else {
            return;
        };
        let (file, _unwritten) = writer.into_parts();
        let on_disk = file.metadata().map_or(0, |m| m.len());
        if let Some(segment) = self.segments.get_mut(&id) {
            self.total_bytes = self.total_bytes - segment.bytes + on_disk;
            segment.bytes = on_disk;
            segment.sent_pos = segment.sent_pos.min(on_disk);
            segment.sealed = true;
        }
        self.to_syncer(file);
    }

    /// Flushes, and has what was written since the last sync fsynced on the syncer
    /// thread (survives a machine crash once done).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        if self.dirty {
            if let Some((_, writer)) = &self.writer {
                let file = writer
                    .get_ref()
                    .try_clone()
                    .map_err(|source| self.io(source))?;
                self.to_syncer(file);
            }
            self.dirty = false;
        }
        Ok(())
    }

    fn to_syncer(&self, file: File) {
        match &self.syncer {
            Some(syncer) => {
                let _ = syncer.send(file);
            }
            None => {
                let _ = file.sync_data();
            }
        }
    }

    /// Closes the active segment (its file goes to the syncer); the next append
    /// starts a new one.
    pub fn seal_active(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        if let Some((id, writer)) = self.writer.take() {
            let file = writer.into_inner().map_err(|e| SpoolError::Io {
                dir: self.dir.clone(),
                source: e.into_error(),
            })?;
            self.to_syncer(file);
            self.dirty = false;
            if let Some(segment) = self.segments.get_mut(&id) {
                segment.sealed = true;
            }
        }
        Ok(())
    }

    /// Seals the active segment once it is older than `age`, so that acknowledged
    /// events leave the disk soon even under light traffic.
    pub fn seal_if_older(&mut self, age: std::time::Duration) -> Result<(), SpoolError> {
        let old = self.writer.as_ref().is_some_and(|(id, _)| {
            self.segments[id].created.elapsed() >= age && self.segments[id].bytes > 0
        });
        if old {
            self.seal_active()?;
        }
        Ok(())
    }

    /// The record ending at `at` was handed to Kafka; records are sent in order.
    pub fn sent(&mut self, at: Appended) {
        if let Some(segment) = self.segments.get_mut(&at.segment) {
            segment.sent_pos = at.end;
            segment.sent += 1;
        }
    }

    /// The bytes of a segment up to `at` are not a record (torn or corrupt): there
    /// is nothing to send.
    pub fn skipped(&mut self, at: Appended) {
        if let Some(segment) = self.segments.get_mut(&at.segment) {
            segment.sent_pos = at.end;
        }
    }

    /// Kafka acknowledged one record sent from `segment`.
    pub fn acknowledged(&mut self, segment: u64) {
        if let Some(segment) = self.segments.get_mut(&segment) {
            segment.acked += 1;
        }
    }

    /// The oldest segment with unsent bytes.
    pub fn first_unsent(&self) -> Option<u64> {
        self.segments
            .values()
            .find(|s| s.unsent_bytes() > 0)
            .map(|s| s.id)
    }

    /// Reads frames of segment `id` from its `sent_pos`, up to about `budget` bytes.
    pub fn read_unsent(&mut self, id: u64, budget: u64) -> Result<Vec<Frame>, SpoolError> {
        if self
            .writer
            .as_ref()
            .is_some_and(|(active, _)| *active == id)
        {
            self.flush()?;
        }
        let segment = &self.segments[&id];
        let (path, from, to) = (segment.path.clone(), segment.sent_pos, segment.bytes);
        read_frames(&path, from, to, budget).map_err(|source| self.io(source))
    }

    /// Deletes every segment that is sealed, fully sent and fully acknowledged.
    pub fn remove_done(&mut self) -> Result<usize, SpoolError> {
        let done: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.is_done())
            .map(|s| s.id)
            .collect();
        for id in &done {
            let segment = self.segments.remove(id).expect("listed");
            self.total_bytes -= segment.bytes;
            if let Err(source) = fs::remove_file(&segment.path) {
                if source.kind() != io::ErrorKind::NotFound {
                    return Err(self.io(source));
                }
            }
        }
        Ok(done.len())
    }

    fn io(&self, source: io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.clone(),
            source,
        }
    }
}

/// Writes one frame as builds from before actions did (`CEv1`, no topic byte):
/// for tests of the reader, which must still replay such segments as clicks.
pub fn write_v1_frame(writer: &mut impl Write, key: &[u8], value: &[u8]) -> io::Result<()> {
    let key_len = (key.len() as u16).to_le_bytes();
    let mut crc = crc32c::crc32c(&key_len);
    crc = crc32c::crc32c_append(crc, key);
    crc = crc32c::crc32c_append(crc, value);
    writer.write_all(&MAGIC_V1)?;
    writer.write_all(&((2 + key.len() + value.len()) as u32).to_le_bytes())?;
    writer.write_all(&crc.to_le_bytes())?;
    writer.write_all(&key_len)?;
    writer.write_all(key)?;
    writer.write_all(value)
}

/// A frame's bytes before its key: magic, payload length, CRC, topic, key length.
fn frame_head(topic: Topic, key: &[u8], value: &[u8]) -> [u8; HEADER + PREFIX] {
    let mut prefix = [topic as u8, 0, 0];
    prefix[1..].copy_from_slice(&(key.len() as u16).to_le_bytes());
    let mut crc = crc32c::crc32c(&prefix);
    crc = crc32c::crc32c_append(crc, key);
    crc = crc32c::crc32c_append(crc, value);
    let mut head = [0u8; HEADER + PREFIX];
    head[..4].copy_from_slice(&MAGIC);
    head[4..8].copy_from_slice(&((PREFIX + key.len() + value.len()) as u32).to_le_bytes());
    head[8..12].copy_from_slice(&crc.to_le_bytes());
    head[12..].copy_from_slice(&prefix);
    head
}

/// Appends one frame to `buf`, its value written in place by `write_value` (the
/// head is filled in once the value's length and CRC are known), so a worker can
/// build whole spool writes without a buffer per event. A frame over the sizes a
/// segment accepts is taken back out and refused.
pub fn push_frame_with(
    buf: &mut Vec<u8>,
    topic: Topic,
    key: &[u8],
    write_value: impl FnOnce(&mut Vec<u8>),
) -> Result<(), SpoolError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER + PREFIX]);
    buf.extend_from_slice(key);
    write_value(buf);
    let value_at = start + HEADER + PREFIX + key.len();
    let payload_len = buf.len() - start - HEADER;
    if payload_len > MAX_PAYLOAD || key.len() > u16::MAX as usize {
        buf.truncate(start);
        return Err(SpoolError::TooLarge(payload_len));
    }
    let head = frame_head(topic, key, &buf[value_at..]);
    buf[start..start + HEADER + PREFIX].copy_from_slice(&head);
    Ok(())
}

/// One frame of a buffer built by [`push_frame_with`]: its topic, key, value,
/// and the offset just past it in the buffer.
pub type BuiltFrame<'b> = (Topic, &'b [u8], &'b [u8], usize);

/// The frames of a buffer built by [`push_frame_with`].
pub fn built_frames(buf: &[u8]) -> impl Iterator<Item = BuiltFrame<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let head = buf.get(pos..pos + HEADER + PREFIX)?;
        let payload_len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let topic = Topic::from_byte(head[12])?;
        let key_len = u16::from_le_bytes([head[13], head[14]]) as usize;
        let key_at = pos + HEADER + PREFIX;
        let end = pos + HEADER + payload_len;
        // Only a writer that panicked mid-frame leaves one unfinished (its head
        // still zero): the frames before it are all there is.
        if payload_len < PREFIX + key_len || end > buf.len() {
            return None;
        }
        pos = end;
        Some((
            topic,
            &buf[key_at..key_at + key_len],
            &buf[key_at + key_len..end],
            end,
        ))
    })
}

/// Reads the frames between byte offsets `from` and `to` of a segment file,
/// stopping after about `budget` bytes. Corrupt stretches come back as
/// [`Frame::Corrupt`], and reading resumes at the next magic.
pub fn read_frames(path: &Path, from: u64, to: u64, budget: u64) -> io::Result<Vec<Frame>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let want = (to - from).min(budget.max(HEADER as u64 + MAX_PAYLOAD as u64)) as usize;
    let mut buf = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut buf)?;
    // Whether `buf` ends at the end of the data (so a short tail is torn, not cut).
    let at_end = from + buf.len() as u64 >= to;
    Ok(parse_frames(&buf, from, at_end, budget))
}

/// The frames in `buf`, read from offset `from` of a segment; `at_end` says the
/// segment's data ends with `buf` (a short tail is torn, not cut off by the read).
/// Frame ends are offsets in the segment, increasing; reading stops after about
/// `budget` bytes, or before a frame `buf` holds only the start of.
pub fn parse_frames(buf: &[u8], from: u64, at_end: bool, budget: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut pos = 0usize;
    let mut corrupt_from: Option<usize> = None;
    while pos < buf.len() && (pos as u64) < budget {
        match parse_frame(&buf[pos..]) {
            Parsed::Frame {
                topic,
                key,
                value,
                len,
            } => {
                if corrupt_from.take().is_some() {
                    frames.push(Frame::Corrupt {
                        end: from + pos as u64,
                    });
                }
                pos += len;
                frames.push(Frame::Record {
                    topic,
                    key,
                    value,
                    end: from + pos as u64,
                });
            }
            Parsed::NeedMore if !at_end => break,
            Parsed::NeedMore | Parsed::Bad => {
                corrupt_from.get_or_insert(pos);
                // Resume at the next magic after this position.
                match find_magic(buf, pos + 1) {
                    Some(next) => pos = next,
                    None if at_end => pos = buf.len(),
                    None => {
                        // A magic may straddle the end of what was read: keep its
                        // first bytes for the next read.
                        pos = buf.len().saturating_sub(MAGIC.len() - 1).max(pos + 1);
                        break;
                    }
                }
            }
        }
    }
    if corrupt_from.is_some() {
        frames.push(Frame::Corrupt {
            end: from + pos as u64,
        });
    }
    frames
}

enum Parsed {
    Frame {
        topic: Topic,
        key: Vec<u8>,
        value: Vec<u8>,
        len: usize,
    },
    NeedMore,
    Bad,
}

fn parse_frame(buf: &[u8]) -> Parsed {
    if buf.len() < HEADER {
        let head = &buf[..buf.len().min(4)];
        return if MAGIC.starts_with(head) || MAGIC_V1.starts_with(head) {
            Parsed::NeedMore
        } else {
            Parsed::Bad
        };
    }
    // A v1 frame has no topic byte: it is a click.
    let has_topic = match &buf[..4] {
        magic if magic == MAGIC => true,
        magic if magic == MAGIC_V1 => false,
        _ => return Parsed::Bad,
    };
    let prefix = if has_topic { PREFIX } else { PREFIX - 1 };
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if !(prefix..=MAX_PAYLOAD).contains(&len) {
        return Parsed::Bad;
    }
    if buf.len() < HEADER + len {
        return Parsed::NeedMore;
    }
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let payload = &buf[HEADER..HEADER + len];
    if crc32c::crc32c(payload) != crc {
        return Parsed::Bad;
    }
    let (topic, payload) = if has_topic {
        match Topic::from_byte(payload[0]) {
            Some(topic) => (topic, &payload[1..]),
            None => return Parsed::Bad,
        }
    } else {
        (Topic::Clicks, payload)
    };
    let key_len = u16::from_le_bytes([payload[0], payload[1]]) as usize;
    if 2 + key_len > payload.len() {
        return Parsed::Bad;
    }
    Parsed::Frame {
        topic,
        key: payload[2..2 + key_len].to_vec(),
        value: payload[2 + key_len..].to_vec(),
        len: HEADER + len,
    }
}

/// Where the next frame of either version begins, at `from` or after.
fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC || w == MAGIC_V1)
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(frames: &[Frame]) -> Vec<(String, String)> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Record { key, value, .. } => Some((
                    String::from_utf8(key.clone()).unwrap(),
                    String::from_utf8(value.clone()).unwrap(),
                )),
                Frame::Corrupt { .. } => None,
            })
            .collect()
    }

    fn corrupt_count(frames: &[Frame]) -> usize {
        frames
            .iter()
            .filter(|f| matches!(f, Frame::Corrupt { .. }))
            .count()
    }

    fn spool_with(dir: &Path, n: usize) -> (Spool, u64) {
        let mut spool = Spool::open(dir, 1 << 30, 1 << 20).unwrap();
        let mut id = 0;
        for i in 0..n {
            id = spool
                .append(
                    Topic::Clicks,
                    format!("k{i}").as_bytes(),
                    format!("value {i}").as_bytes(),
                )
                .unwrap()
                .segment;
        }
        spool.sync().unwrap();
        (spool, id)
    }

    #[test]
    fn appended_records_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, id) = spool_with(dir.path(), 100);
        let frames = spool.read_unsent(id, u64::MAX).unwrap();
        let got = records(&frames);
        assert_eq!(got.len(), 100);
        assert_eq!(got[0], ("k0".into(), "value 0".into()));
        assert_eq!(got[99], ("k99".into(), "value 99".into()));
        assert_eq!(corrupt_count(&frames), 0);
        let Frame::Record { end, .. } = frames.last().unwrap() else {
            panic!()
        };
        assert_eq!(*end, spool.segments[&id].bytes);
    }

    #[test]
    fn each_record_keeps_its_topic_and_segments_of_older_builds_replay_as_clicks() {
        let dir = tempfile::tempdir().unwrap();
        // A segment an older build left: CEv1 frames, no topic byte.
        let mut old = Vec::new();
        write_v1_frame(&mut old, b"old-1", b"{\"click\":1}").unwrap();
        write_v1_frame(&mut old, b"old-2", b"{\"click\":2}").unwrap();
        fs::write(dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 1)), &old).unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        let new = spool
            .append(Topic::Actions, b"acme|sale|A-1", b"{}")
            .unwrap();
        spool.append(Topic::Clicks, b"click", b"{}").unwrap();
        spool.sync().unwrap();
        let mut read = Vec::new();
        for id in [1, new.segment] {
            for frame in spool.read_unsent(id, u64::MAX).unwrap() {
                let Frame::Record { topic, key, .. } = frame else {
                    panic!("not a record: {frame:?}")
                };
                read.push((topic, String::from_utf8(key).unwrap()));
            }
        }
        assert_eq!(
            read,
            vec![
                (Topic::Clicks, "old-1".to_owned()),
                (Topic::Clicks, "old-2".to_owned()),
                (Topic::Actions, "acme|sale|A-1".to_owned()),
                (Topic::Clicks, "click".to_owned()),
            ]
        );
    }

    #[test]
    fn a_frame_naming_no_known_topic_is_corrupt() {
        let mut frame = Vec::new();
        push_frame_with(&mut frame, Topic::Actions, b"k", |buf| buf.push(b'v')).unwrap();
        // A topic byte no build writes, with a checksum that matches it.
        frame[HEADER] = 7;
        let crc = crc32c::crc32c(&frame[HEADER..]);
        frame[8..12].copy_from_slice(&crc.to_le_bytes());
        let frames = parse_frames(&frame, 0, true, u64::MAX);
        assert_eq!(
            frames,
            vec![Frame::Corrupt {
                end: frame.len() as u64
            }]
        );
    }

    #[test]
    fn a_corrupt_record_is_skipped_and_the_rest_replays() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, id) = spool_with(dir.path(), 10);
        let path = spool.segments[&id].path.clone();
        drop(spool);
        let mut bytes = fs::read(&path).unwrap();
        // Flip a byte inside the fourth record's value.
        let fourth = (0..3).fold(0, |pos, _| {
            pos + HEADER + u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize
        });
        bytes[fourth + HEADER + 5] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let frames = read_frames(&path, 0, bytes.len() as u64, u64::MAX).unwrap();
        let got = records(&frames);
        assert_eq!(got.len(), 9);
        assert!(!got.iter().any(|(k, _)| k == "k3"));
        assert_eq!(got[3].0, "k4");
        assert_eq!(corrupt_count(&frames), 1);
    }

    #[test]
    fn a_torn_tail_is_counted_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, id) = spool_with(dir.path(), 5);
        let path = spool.segments[&id].path.clone();
        drop(spool);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let frames = read_frames(&path, 0, bytes.len() as u64 - 7, u64::MAX).unwrap();
        assert_eq!(records(&frames).len(), 4);
        assert_eq!(corrupt_count(&frames), 1);
        assert_eq!(
            frames.last(),
            Some(&Frame::Corrupt {
                end: bytes.len() as u64 - 7
            })
        );
    }

    #[test]
    fn leftover_segments_are_taken_over_sealed_and_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = spool_with(dir.path(), 20);
        let bytes = spool.total_bytes();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        assert_eq!(spool.total_bytes(), bytes);
        assert_eq!(spool.backlog_bytes(), bytes);
        assert!(spool.segments.values().all(|s| s.sealed));
    }

    /// Item 10 of issue 13: events hold visitors' addresses, and segments found in
    /// the directory are replayed as clicks.
    #[test]
    fn the_spool_is_private_and_refuses_a_directory_others_can_write() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("new/spool");
        let mut spool = Spool::open(&dir, 1 << 20, 1 << 20).unwrap();
        spool.append(Topic::Clicks, b"k", b"v").unwrap();
        spool.flush().unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            fs::metadata(parent.path().join("new")).unwrap().mode() & 0o777,
            0o700
        );
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            assert_eq!(
                entry.metadata().unwrap().mode() & 0o777,
                0o600,
                "{:?}",
                entry.path()
            );
        }
        drop(spool);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
        let err = Spool::open(&dir, 1 << 20, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("writable by its group"), "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o707)).unwrap();
        assert!(check_spool_dir(&dir).is_err());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        check_spool_dir(&dir).unwrap();
        // Another user's directory (the tests run as root, who can give it away).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let err = check_spool_dir(&dir).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        }
        let file = parent.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(check_spool_dir(&file).is_err());
        check_spool_dir(&parent.path().join("absent")).unwrap();
    }

    #[test]
    fn a_second_process_cannot_open_a_locked_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), 1 << 30, 1 << 20),
            Err(SpoolError::Locked(_))
        ));
    }

    #[test]
    fn the_size_bound_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 200, 1 << 20).unwrap();
        let mut stored = 0;
        let result = loop {
            match spool.append(Topic::Clicks, b"key", &[b'x'; 40]) {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(result, SpoolError::Full { max_bytes: 200 }));
        assert_eq!(stored, 3);
        assert!(spool.total_bytes() <= 200);
    }

    #[test]
    fn an_abandoned_segment_trusts_the_file_and_the_next_append_starts_anew() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        let one = spool.append(Topic::Clicks, b"k", b"one").unwrap();
        let first = one.segment;
        spool.flush().unwrap();
        // As after a failed write: buffered frames that never reached the file.
        let two = spool.append(Topic::Clicks, b"k", b"two").unwrap();
        let (_, writer) = spool.writer.as_mut().unwrap();
        assert!(!writer.buffer().is_empty());
        spool.abandon_active();
        let segment = &spool.segments[&first];
        assert!(segment.sealed);
        assert_eq!(
            segment.bytes,
            Spool::frame_len(1, 3),
            "only what reached the file"
        );
        assert_eq!(spool.total_bytes(), segment.bytes);
        assert!(spool.holds(one), "flushed before the failure: on disk");
        assert!(!spool.holds(two), "still buffered: not on disk");
        let next = spool.append(Topic::Clicks, b"k", b"three").unwrap().segment;
        assert_ne!(next, first);
        let frames = spool.read_unsent(first, u64::MAX).unwrap();
        assert_eq!(records(&frames), vec![("k".into(), "one".into())]);
    }

    #[test]
    fn segments_rotate_and_go_when_sent_and_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30, 100).unwrap();
        let first = spool
            .append(Topic::Clicks, b"k", &[b'x'; 90])
            .unwrap()
            .segment;
        let second = spool
            .append(Topic::Clicks, b"k", &[b'y'; 90])
            .unwrap()
            .segment;
        assert_ne!(first, second, "a full segment rotates");
        assert_eq!(spool.segment_count(), 2);
        assert!(spool.segments[&first].sealed);
        let end = spool.segments[&first].bytes;
        spool.sent(Appended {
            segment: first,
            end,
        });
        assert_eq!(spool.remove_done().unwrap(), 0, "not acknowledged yet");
        spool.acknowledged(first);
        assert_eq!(spool.remove_done().unwrap(), 1);
        assert_eq!(spool.segment_count(), 1);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "one segment and the lock"
        );
    }
}
