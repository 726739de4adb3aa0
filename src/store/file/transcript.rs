//! `transcript.ndjson`: appended at each checkpoint (a step's answer, each tool
//! result), fsynced before `state.json` durably points past the new lines, and read
//! back up to that point only.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use super::fs::{AtPath, Durable, open_append, sync_file, with_path};
use crate::domain::state::TranscriptMark;
use crate::domain::transcript::TranscriptLine;

/// What a worker does about a damaged transcript, for the errors that report one.
const REPAIR_HINT: &str = "a worker moves it aside and rebuilds state.json from the lines that remain (`agentq worker --once`)";

/// A transcript that ends before `mark`: lines `state.json` counts as settled are gone
/// (the file was truncated, by a disk or a person). It is never padded up to the mark:
/// that would write a run of NUL bytes that no reader could parse again.
fn shorter_than_mark(len: u64, mark: TranscriptMark) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "it is {len} bytes long, but state.json counts {} bytes of settled lines (was it truncated?)",
            mark.bytes
        ),
    )
}

/// Whether the transcript holds every line `state.json` counts as settled, each one
/// parsing: `Err` (`InvalidData`) with the path and what is wrong when it does not.
pub fn check(path: &Path, mark: TranscriptMark) -> io::Result<()> {
    read_whole(path, mark).map(drop)
}

/// Appends lines after `mark`, cutting off anything a crashed step left past it, and
/// returns the new mark. The caller records the mark in `state.json` afterwards. With
/// [`Durable::Later`], the next durable append (or [`sync`]) fsyncs these lines too.
/// A file shorter than `mark` is refused, never extended.
pub fn append(
    path: &Path,
    mark: TranscriptMark,
    lines: &[TranscriptLine],
    durable: Durable,
) -> io::Result<TranscriptMark> {
    let mut file = open_append(path)?;
    file.lock().map_err(|e| with_path(e, path))?;
    let result = (|| {
        let len = file.metadata()?.len();
        if len < mark.bytes {
            return Err(shorter_than_mark(len, mark));
        }
        if len > mark.bytes {
            file.set_len(mark.bytes)?;
        }
        let mut buf = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut buf, line).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        file.write_all(&buf)?;
        if durable == Durable::Now {
            sync_file(&file)?;
        }
        Ok(TranscriptMark {
            lines: mark.lines + lines.len() as u64,
            bytes: mark.bytes + buf.len() as u64,
        })
    })();
    let _ = file.unlock();
    result.map_err(|e| with_path(e, path))
}

/// fsyncs the transcript: lines appended with [`Durable::Later`] reach the disk.
pub fn sync(path: &Path) -> io::Result<()> {
    super::fs::sync_path(path)
}

/// Reads the settled lines (up to `mark`). A missing file is an empty transcript. A
/// damaged one is an error that says what repairs it.
pub fn read(path: &Path, mark: TranscriptMark) -> io::Result<Vec<TranscriptLine>> {
    read_whole(path, mark).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => io::Error::new(e.kind(), format!("{e}; {REPAIR_HINT}")),
        _ => e,
    })
}

fn read_whole(path: &Path, mark: TranscriptMark) -> io::Result<Vec<TranscriptLine>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && mark.bytes == 0 => return Ok(Vec::new()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(shorter_than_mark(0, mark)).at(path);
        }
        Err(e) => return Err(e).at(path),
    };
    read_settled(file, mark).at(path)
}

fn read_settled(file: File, mark: TranscriptMark) -> io::Result<Vec<TranscriptLine>> {
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is a directory, not a file",
        ));
    }
    let len = meta.len();
    if len < mark.bytes {
        return Err(shorter_than_mark(len, mark));
    }
    let reader = BufReader::new(file.take(mark.bytes));
    let mut lines = Vec::with_capacity(mark.lines as usize);
    for (n, line) in reader.split(b'\n').enumerate() {
        let parsed = serde_json::from_slice(&line?).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {} is not a transcript message ({e})", n + 1),
            )
        })?;
        lines.push(parsed);
    }
    if (lines.len() as u64) < mark.lines {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it has {}, state.json counts {}",
                crate::plural::count(lines.len() as u64, "settled line", "settled lines"),
                mark.lines
            ),
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::transcript::Message;
    use crate::time::Timestamp;

    fn user(text: &str) -> TranscriptLine {
        TranscriptLine {
            message: Message::User {
                content: text.into(),
            },
            message_id: None,
            execution_id: None,
            step: None,
            feedback: None,
            timestamp: Timestamp(0),
            state: None,
        }
    }

    #[test]
    fn lines_past_the_mark_are_cut_off_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transcript.ndjson");
        let mark = append(
            &path,
            TranscriptMark::default(),
            &[user("one")],
            Durable::Now,
        )
        .unwrap();
        // A step that crashed after writing but before its checkpoint:
        append(&path, mark, &[user("lost")], Durable::Later).unwrap();
        let mark2 = append(&path, mark, &[user("two")], Durable::Now).unwrap();
        let lines = read(&path, mark2).unwrap();
        let texts: Vec<_> = lines
            .iter()
            .map(|l| match &l.message {
                Message::User { content } => content.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(texts, vec!["one", "two"]);
        assert_eq!(mark2.lines, 2);
    }

    #[test]
    fn reading_stops_at_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transcript.ndjson");
        let mark = append(
            &path,
            TranscriptMark::default(),
            &[user("one")],
            Durable::Now,
        )
        .unwrap();
        append(&path, mark, &[user("unsettled")], Durable::Now).unwrap();
        assert_eq!(read(&path, mark).unwrap().len(), 1);
    }
}
