//! Writing `events.ndjson` with a gapless `seq`, and reading it back.
//!
//! Several processes append to one log (`send`, the worker, `session close`), so the next
//! `seq` is read from the file's last line under the file's exclusive lock, never from
//! memory alone. The lock is also the session's write lock: whoever changes
//! `session.json` holds it for the read-modify-write and the event that records it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use uuid::Uuid;

use super::fs::{AtPath, find_last_newline, open_append, repair_torn_tail, with_path};
use crate::domain::FORMAT_VERSION;
use crate::domain::event::{Event, EventPayload, RawEvent};
use crate::time::Clock;

/// An open event log of one session, for appending.
pub struct EventLog {
    path: PathBuf,
    file: File,
    session_id: Uuid,
    clock: Arc<dyn Clock>,
    /// File length and last `seq` after our own last append. When the length is still
    /// the same under the lock, nobody else appended and the tail need not be read.
    known_tail: Option<(u64, u64)>,
}

impl EventLog {
    pub fn open(path: &Path, session_id: Uuid, clock: Arc<dyn Clock>) -> io::Result<EventLog> {
        Ok(EventLog {
            path: path.to_owned(),
            file: open_append(path)?,
            session_id,
            clock,
            known_tail: None,
        })
    }

    /// Takes the exclusive lock; appends through the guard, which unlocks when dropped.
    pub fn lock(&mut self) -> io::Result<LockedLog<'_>> {
        self.file.lock().map_err(|e| with_path(e, &self.path))?;
        Ok(LockedLog { log: self })
    }

    /// Appends one event under the lock and returns its `seq`.
    pub fn append(&mut self, execution_id: Option<Uuid>, payload: EventPayload) -> io::Result<u64> {
        self.lock()?.append(execution_id, payload)
    }
}

pub struct LockedLog<'a> {
    log: &'a mut EventLog,
}

impl LockedLog<'_> {
    pub fn append(&mut self, execution_id: Option<Uuid>, payload: EventPayload) -> io::Result<u64> {
        self.append_all(execution_id, vec![payload])
    }

    /// Appends several events with consecutive seqs in one write, so a killed process
    /// leaves all of them or none. Returns the last seq.
    pub fn append_all(
        &mut self,
        execution_id: Option<Uuid>,
        payloads: Vec<EventPayload>,
    ) -> io::Result<u64> {
        let log = &mut *self.log;
        let path = log.path.clone();
        let result = (|| {
            let len = repair_torn_tail(&mut log.file)?;
            let mut seq = match log.known_tail {
                Some((known_len, seq)) if known_len == len => seq,
                _ => last_seq(&log.file, len)?,
            };
            let mut lines = Vec::new();
            for payload in payloads {
                seq += 1;
                let event = Event {
                    v: FORMAT_VERSION,
                    seq,
                    session_id: log.session_id,
                    execution_id,
                    timestamp: log.clock.now(),
                    payload,
                };
                serde_json::to_writer(&mut lines, &event).map_err(io::Error::other)?;
                lines.push(b'\n');
            }
            log.file.write_all(&lines)?;
            log.known_tail = Some((len + lines.len() as u64, seq));
            Ok(seq)
        })();
        if result.is_err() {
            log.known_tail = None;
        }
        result.map_err(|e| with_path(e, &path))
    }
}

impl Drop for LockedLog<'_> {
    fn drop(&mut self) {
        // Closing the file would release the lock too; the handle is kept for reuse.
        let _ = self.log.file.unlock();
    }
}

/// The seq of the last event in the log. Lines that are not events (written into the
/// log by hand, or garbled) are skipped, as readers skip them: numbering goes on from
/// the last event, and one bad line does not stop every writer of the session.
fn last_seq(file: &File, len: u64) -> io::Result<u64> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let mut lines = ReverseLines::new(file.try_clone()?, len);
    while let Some((_, line)) = lines.next_line()? {
        if let Ok(event) = serde_json::from_slice::<SeqOnly>(&line) {
            return Ok(event.seq);
        }
    }
    Ok(0)
}

/// Reads complete lines from an offset on, for `watch` and `send --wait`.
/// An unterminated last line is left for the next read: it is either being written
/// right now or torn by a crash, and in both cases not yet an event.
pub struct LogReader {
    path: PathBuf,
    file: File,
    offset: u64,
    pending: Vec<u8>,
}

impl LogReader {
    pub fn open_at(path: &Path, offset: u64) -> io::Result<LogReader> {
        let file = File::open(path).at(path)?;
        Ok(LogReader {
            path: path.to_owned(),
            file,
            offset,
            pending: Vec::new(),
        })
    }

    /// Offset of the first byte not yet returned as part of a line.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Every complete line appended since the last call, without terminators.
    pub fn read_lines(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let path = self.path.clone();
        self.read_new_lines().at(&path)
    }

    fn read_new_lines(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let len = self.file.metadata()?.len();
        let read_from = self.offset + self.pending.len() as u64;
        if len < read_from {
            // The file shrank: a torn tail we were holding was cut off by a writer.
            self.pending.clear();
            return Ok(Vec::new());
        }
        if len > read_from {
            self.file.seek(SeekFrom::Start(read_from))?;
            (&mut self.file)
                .take(len - read_from)
                .read_to_end(&mut self.pending)?;
        }
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(i) = self.pending[start..].iter().position(|&b| b == b'\n') {
            lines.push(self.pending[start..start + i].to_vec());
            start += i + 1;
        }
        self.pending.drain(..start);
        self.offset += start as u64;
        Ok(lines)
    }
}

/// Parses one line of the log; `None` for a blank or unparsable line, which readers skip.
pub fn parse_line(line: &[u8]) -> Option<RawEvent> {
    serde_json::from_slice(line).ok()
}

/// The byte offset of the first event with `seq > after`, found by binary search over
/// the file (seq grows with the offset), so starting from a late `seq` in a huge log
/// reads a few blocks rather than the whole file.
pub fn offset_after_seq(path: &Path, after: u64) -> io::Result<u64> {
    find_offset_after_seq(path, after).at(path)
}

fn find_offset_after_seq(path: &Path, after: u64) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    // Invariant: the line starting at `lo` has seq <= after or lo == 0 (unchecked);
    // every line starting at or after `hi` has seq > after.
    let (mut lo, mut hi) = (0u64, len);
    while hi - lo > 4096 {
        let mid = lo + (hi - lo) / 2;
        match line_start_after(&mut file, mid, hi)? {
            Some((start, seq)) if seq <= after => lo = start,
            Some((start, _)) => hi = start,
            None => hi = mid,
        }
    }
    // Finish with a linear scan of at most a few kilobytes (plus one long line).
    file.seek(SeekFrom::Start(lo))?;
    let mut reader = BufReader::new(file);
    let mut offset = lo;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(offset);
        }
        if let Some(event) = parse_line(&line[..n - 1])
            && event.seq > after
        {
            return Ok(offset);
        }
        offset += n as u64;
    }
}

/// The start and seq of the first parsable line that starts after `pos` and before `end`.
fn line_start_after(file: &mut File, pos: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
    file.seek(SeekFrom::Start(pos))?;
    let mut reader = BufReader::new(&mut *file);
    let mut skipped = Vec::new();
    let mut offset = pos + reader.read_until(b'\n', &mut skipped)? as u64;
    let mut line = Vec::new();
    while offset < end {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(None);
        }
        if let Some(event) = parse_line(&line[..n - 1]) {
            return Ok(Some((offset, event.seq)));
        }
        offset += n as u64;
    }
    Ok(None)
}

/// The offset of the last line whose `type` is one of `types`, reading backwards from
/// the end in blocks, so `watch` starts at the last execution without reading the
/// whole log.
pub fn offset_of_last(path: &Path, types: &[&str]) -> io::Result<Option<(u64, RawEvent)>> {
    find_last(path, types).at(path)
}

fn find_last(path: &Path, types: &[&str]) -> io::Result<Option<(u64, RawEvent)>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    // A torn tail is not an event yet.
    let Some(last_newline) = find_last_newline(&mut file, len)? else {
        return Ok(None);
    };
    let mut lines = ReverseLines::new(file, last_newline + 1);
    while let Some((offset, line)) = lines.next_line()? {
        // Cheap pre-filter before parsing: the type name must appear in the line.
        let mentions = types.iter().any(|t| contains(&line, t.as_bytes()));
        if mentions
            && let Some(event) = parse_line(&line)
            && types.contains(&event.kind.as_str())
        {
            return Ok(Some((offset, event)));
        }
    }
    Ok(None)
}

/// The last line of type `kind` written for execution `execution`, as it is in the
/// log (without its `\n`), reading backwards from the end.
pub fn last_line_of(path: &Path, kind: &str, execution: Uuid) -> io::Result<Option<Vec<u8>>> {
    find_line_of(path, kind, execution).at(path)
}

fn find_line_of(path: &Path, kind: &str, execution: Uuid) -> io::Result<Option<Vec<u8>>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let Some(last_newline) = find_last_newline(&mut file, len)? else {
        return Ok(None);
    };
    let id = execution.to_string();
    let mut lines = ReverseLines::new(file, last_newline + 1);
    while let Some((_, line)) = lines.next_line()? {
        if contains(&line, kind.as_bytes())
            && contains(&line, id.as_bytes())
            && let Some(event) = parse_line(&line)
            && event.kind == kind
            && event.execution_id == Some(execution)
        {
            return Ok(Some(line));
        }
    }
    Ok(None)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Complete lines of a file from the end backwards, read in large blocks.
struct ReverseLines {
    file: File,
    /// File offset of `buf[0]`.
    buf_start: u64,
    /// Bytes from `buf_start` up to the end of the next line to return (its `\n` included).
    buf: Vec<u8>,
}

impl ReverseLines {
    const BLOCK: u64 = 64 * 1024;

    /// Lines ending at or before `end`, which must sit just after a `\n`.
    fn new(file: File, end: u64) -> ReverseLines {
        ReverseLines {
            file,
            buf_start: end,
            buf: Vec::new(),
        }
    }

    /// The previous line (without its `\n`) and its offset.
    fn next_line(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if self.buf.is_empty() && self.buf_start == 0 {
            return Ok(None);
        }
        loop {
            // The line ends at the buffer's end; it starts after the previous `\n`.
            let body = &self.buf[..self.buf.len().saturating_sub(1)];
            if let Some(i) = body.iter().rposition(|&b| b == b'\n') {
                let line = self.buf[i + 1..self.buf.len() - 1].to_vec();
                self.buf.truncate(i + 1);
                return Ok(Some((self.buf_start + i as u64 + 1, line)));
            }
            if self.buf_start == 0 {
                let line = body.to_vec();
                self.buf.clear();
                return Ok(Some((0, line)));
            }
            let lo = self.buf_start.saturating_sub(Self::BLOCK);
            let mut block = vec![0u8; (self.buf_start - lo) as usize];
            self.file.seek(SeekFrom::Start(lo))?;
            self.file.read_exact(&mut block)?;
            block.extend_from_slice(&self.buf);
            self.buf = block;
            self.buf_start = lo;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{CancelRequested, StreamChunk};
    use crate::time::Timestamp;

    struct FixedClock;
    impl Clock for FixedClock {
        fn now(&self) -> Timestamp {
            Timestamp(1_795_240_800_123)
        }
    }

    fn chunk(i: u64) -> EventPayload {
        EventPayload::StreamChunk(StreamChunk {
            content: format!("word{i} "),
            chunk_index: i,
        })
    }

    fn open(path: &Path) -> EventLog {
        EventLog::open(path, Uuid::nil(), Arc::new(FixedClock)).unwrap()
    }

    #[test]
    fn seq_is_gapless_across_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let (mut a, mut b) = (open(&path), open(&path));
        assert_eq!(a.append(None, chunk(0)).unwrap(), 1);
        assert_eq!(b.append(None, chunk(1)).unwrap(), 2);
        assert_eq!(a.append(None, chunk(2)).unwrap(), 3);
        let seqs: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| parse_line(l.as_bytes()).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[test]
    fn a_writer_repairs_a_torn_tail_and_continues_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut log = open(&path);
        log.append(None, chunk(0)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(br#"{"v":1,"seq":2,"type":"agent.str"#)
            .unwrap();
        let mut other = open(&path);
        assert_eq!(other.append(None, chunk(1)).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| parse_line(l.as_bytes()).is_some()));
    }

    #[test]
    fn lines_that_are_not_events_are_skipped_by_writers_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut log = open(&path);
        log.append(None, chunk(0)).unwrap();
        // Written into the log by hand, complete lines: the numbering goes on after
        // the last event, across read blocks.
        let garbage = format!("not an event\n{}\n\0\0\0\n", "x".repeat(70_000));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(garbage.as_bytes())
            .unwrap();
        assert_eq!(open(&path).append(None, chunk(1)).unwrap(), 2);

        std::fs::write(&path, "only garbage\n").unwrap();
        assert_eq!(open(&path).append(None, chunk(2)).unwrap(), 1);
    }

    #[test]
    fn the_reader_returns_only_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        std::fs::write(&path, b"one\ntw").unwrap();
        let mut reader = LogReader::open_at(&path, 0).unwrap();
        assert_eq!(reader.read_lines().unwrap(), vec![b"one".to_vec()]);
        assert_eq!(reader.offset(), 4);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"o\nthree\n")
            .unwrap();
        assert_eq!(
            reader.read_lines().unwrap(),
            vec![b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(reader.offset(), 14);
    }

    #[test]
    fn the_offset_after_a_seq_is_found_without_a_full_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut log = open(&path);
        for i in 0..3000 {
            log.append(None, chunk(i)).unwrap();
        }
        for after in [0, 1, 17, 1500, 2999, 3000, 5000] {
            let offset = offset_after_seq(&path, after).unwrap();
            let mut reader = LogReader::open_at(&path, offset).unwrap();
            let first = reader
                .read_lines()
                .unwrap()
                .first()
                .map(|l| parse_line(l).unwrap().seq);
            let expected = (after < 3000).then_some(after + 1);
            assert_eq!(first, expected, "after {after}");
        }
    }

    #[test]
    fn the_last_event_of_a_type_is_found_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut log = open(&path);
        log.append(None, chunk(0)).unwrap();
        let cancel = EventPayload::CancelRequested(CancelRequested {
            message_id: Uuid::nil(),
        });
        log.append(None, cancel).unwrap();
        log.append(None, chunk(1)).unwrap();
        let (offset, event) = offset_of_last(&path, &["cancel.requested"])
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, 2);
        let first_line_len = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .len();
        assert_eq!(offset, first_line_len as u64 + 1);
        assert!(
            offset_of_last(&path, &["execution.started"])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_backward_search_crosses_read_blocks_and_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut log = open(&path);
        let cancel = EventPayload::CancelRequested(CancelRequested {
            message_id: Uuid::nil(),
        });
        log.append(None, cancel).unwrap();
        for i in 0..3000 {
            log.append(None, chunk(i)).unwrap();
        }
        let long = EventPayload::StreamChunk(StreamChunk {
            content: "y".repeat(200_000),
            chunk_index: 0,
        });
        log.append(None, long).unwrap();
        let (offset, event) = offset_of_last(&path, &["cancel.requested"])
            .unwrap()
            .unwrap();
        assert_eq!((offset, event.seq), (0, 1));
        let (_, event) = offset_of_last(&path, &["agent.stream.chunk"])
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, 3002);
    }
}
