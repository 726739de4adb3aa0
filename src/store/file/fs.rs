//! The two ways agentq writes a file (ARCHITECTURE.md §1), and reading them back.
//!
//! - Replace: a unique temp file in the same directory, fsync, rename over the target,
//!   fsync the directory. Readers see the old file or the new one, never a mix. Files
//!   rewritten for every message swap with a spare instead ([`replace_reusing`]).
//! - Append: one `write` of one whole line under an exclusive lock of the file. A line
//!   left unterminated by a crashed writer is cut off by the next writer, and readers
//!   skip it until then.
//!
//! Session files are created 0600 and directories 0700.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a file could not be read as what it should be. Callers branch on this: a missing
/// session is a usage error, a corrupt one is moved aside by recovery.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Reads and parses a JSON file. An empty or unparsable file is `Corrupt`, never a
/// default; so is a directory where the file belongs (recovery moves either aside).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ReadError> {
    let bytes = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ReadError::NotFound {
            path: path.to_owned(),
        },
        io::ErrorKind::IsADirectory => ReadError::Corrupt {
            path: path.to_owned(),
            reason: "it is a directory, not a file".to_owned(),
        },
        _ => ReadError::Io {
            path: path.to_owned(),
            source,
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ReadError::Corrupt {
        path: path.to_owned(),
        reason: if bytes.is_empty() {
            "the file is empty".to_owned()
        } else {
            e.to_string()
        },
    })
}

/// Serialises `value` and replaces `path` with it durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    replace(path, &json_bytes(value)?)
}

/// Like [`write_json`], atomic for readers but not fsynced: only for a file that a
/// later fsync makes durable, or whose loss or emptiness after a power failure is
/// recovered from elsewhere (each caller says which). A killed process loses nothing:
/// the data is in the page cache; only a power failure can.
pub fn write_json_unsynced<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    replace_with(path, &json_bytes(value)?, Durable::Later)
}

/// Whether a write is on disk when it returns, or made durable later by the caller
/// (which says how, and what recovers it if the power fails before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    Now,
    Later,
}

pub fn json_bytes<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replaces `path` with `bytes`: temp file, fsync, rename, fsync directory.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with(path, bytes, Durable::Now)
}

fn replace_with(path: &Path, bytes: &[u8], durable: Durable) -> io::Result<()> {
    let dir = parent(path)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = create_private(&tmp)?;
        file.write_all(bytes)?;
        if durable == Durable::Now {
            sync_file(&file)?;
        }
        fs::rename(&tmp, path)?;
        match durable {
            Durable::Now => sync_dir(dir),
            Durable::Later => Ok(()),
        }
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is harmless (readers ignore dot files) but untidy.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| with_path(e, path))
}

/// Replaces `path` with `bytes` like [`replace`] (or, with [`Durable::Later`], without
/// the fsyncs), but without creating a file: the bytes go into a spare file beside the
/// target (`.<name>.spare`), which one `rename(RENAME_EXCHANGE)` swaps with it, so the
/// old version becomes the next spare.
///
/// Why: on ext4 without a journal (this project's CI machines), creating a file scans
/// past every inode freed in the last minutes, and a worker replacing `state.json` and
/// `session.json` for every message frees thousands; creating temp files cost more
/// than the fsyncs (see the README's performance notes).
///
/// Readers need nothing special: the spare is rewritten only under a write lease
/// (`F_SETLEASE`), which the kernel grants only while no other process has the file
/// open, and which holds back any open that was on its way until the rewrite is done.
/// So a reader that opened a version before it became the spare keeps it intact (the
/// writer falls back to a fresh temp file), and one that opens it meanwhile reads the
/// new version whole. Writers exclude each other with an exclusive `flock` of the
/// spare. Where leases or `RENAME_EXCHANGE` are not available, it is a plain
/// [`replace`].
///
pub fn replace_reusing(
    path: &Path,
    bytes: &[u8],
    durable: Durable,
    unsynced: &mut UnsyncedSwaps,
) -> io::Result<()> {
    replace_reusing_after(path, bytes, durable, unsynced, || Ok(()))
}

/// [`replace_reusing`], with `before_swap` run after the new version is written (and
/// synced) and before it takes the name: the place for another write the new version
/// depends on, such as the transcript lines `state.json` points to, to be made durable
/// at the same time.
pub fn replace_reusing_after(
    path: &Path,
    bytes: &[u8],
    durable: Durable,
    unsynced: &mut UnsyncedSwaps,
    before_swap: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let spare_path = spare_path(path);
    if durable == Durable::Now && unsynced.contains(path) {
        // The last swap may not be on disk: the spare about to be rewritten in place
        // could still be the file the disk names `path`, holding a version that was
        // synced and acted on. A durable write must not tear it.
        sync_dir(parent(path)?)?;
        unsynced.synced(parent(path)?);
    }
    let spare = write_spare(&spare_path, bytes, durable).map_err(|e| with_path(e, path))?;
    before_swap()?;
    let Some(spare) = spare else {
        return replace_with(path, bytes, durable);
    };
    exchange(&spare_path, path).map_err(|e| with_path(e, path))?;
    // The writers' lock is released only once the swap is done.
    drop(spare);
    match durable {
        Durable::Now => {
            let dir = parent(path)?;
            sync_dir(dir)?;
            unsynced.synced(dir);
            Ok(())
        }
        Durable::Later => {
            unsynced.add(path);
            Ok(())
        }
    }
}

/// Files a writer swapped with their spare without syncing their directory since:
/// before such a file is replaced durably, its directory is synced, so the spare
/// rewritten in place is never the version the disk still names. Kept by the one
/// writer of those files (a session's owner, whose drain ends by syncing the
/// directory), so it holds a file or two.
#[derive(Debug, Default)]
pub struct UnsyncedSwaps(Vec<PathBuf>);

impl UnsyncedSwaps {
    fn add(&mut self, path: &Path) {
        if !self.contains(path) {
            self.0.push(path.to_owned());
        }
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.0.iter().any(|p| p == path)
    }

    /// `dir` was synced: the swaps in it are on disk.
    pub fn synced(&mut self, dir: &Path) {
        self.0.retain(|p| p.parent() != Some(dir));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Writes `bytes` into the spare, if it can be rewritten safely now: returns the open
/// spare (holding the writers' lock), or `None` when another writer or a reader has it.
fn write_spare(spare_path: &Path, bytes: &[u8], durable: Durable) -> io::Result<Option<File>> {
    let Some(spare) = try_lock_file(spare_path)? else {
        return Ok(None);
    };
    // Another writer may have swapped the file opened into place since the open.
    if !same_inode(&spare, spare_path)? {
        return Ok(None);
    }
    let Some(lease) = WriteLease::take(&spare) else {
        return Ok(None);
    };
    // Overwritten in place, then cut to length: truncating to zero first would free
    // the data blocks only to allocate them again, and with `discard` mounts each free
    // waits for the device.
    spare.write_all_at(bytes, 0)?;
    spare.set_len(bytes.len() as u64)?;
    if durable == Durable::Now {
        sync_file(&spare)?;
    }
    drop(lease);
    Ok(Some(spare))
}

fn same_inode(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (open, named) = (file.metadata()?, fs::metadata(path)?);
    Ok(open.dev() == named.dev() && open.ino() == named.ino())
}

/// A write lease on an open file: proof that no other open file description of it
/// exists, kept until dropped (an open by someone else waits for the drop).
struct WriteLease<'a>(&'a File);

impl<'a> WriteLease<'a> {
    /// `None` if the file is open elsewhere, or leases are not available here (another
    /// owner, a network file system, leases disabled).
    fn take(file: &'a File) -> Option<WriteLease<'a>> {
        use std::os::fd::AsRawFd;
        /// `F_SETSIG` of <asm-generic/fcntl.h>, which the libc crate lacks for Linux.
        const F_SETSIG: libc::c_int = 10;
        let fd = file.as_raw_fd();
        // An open by another process makes the kernel signal the lease holder, with
        // SIGIO unless told otherwise, and SIGIO would end the process. SIGURG is
        // ignored unless handled; the lease is dropped within the write anyway.
        // SAFETY: fcntl on a descriptor this function borrows; no memory is passed.
        let taken = unsafe {
            libc::fcntl(fd, F_SETSIG, libc::SIGURG) == 0
                && libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) == 0
        };
        taken.then_some(WriteLease(file))
    }
}

impl Drop for WriteLease<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `take`. Closing the file would release the lease too.
        unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

/// `.<name>.spare` beside `path`: a dot file, so listings skip it, and not a temp name,
/// so the clean-up of temp files left by killed writers keeps it.
pub fn spare_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.spare"))
}

/// Swaps two names atomically; where the target is missing or the file system cannot
/// swap, renames `from` over `to` instead (`from` is then gone).
fn exchange(from: &Path, to: &Path) -> io::Result<()> {
    match rename_with(from, to, libc::RENAME_EXCHANGE) {
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) =>
        {
            fs::rename(from, to)
        }
        done => done,
    }
}

/// renameat2(2) with `flags` (`RENAME_EXCHANGE`, `RENAME_NOREPLACE`): the OS error as
/// it is, for the caller to decide what a file system without the flag means.
pub(super) fn rename_with(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both arguments are NUL-terminated paths that outlive the call;
    // renameat2(2) reads nothing else.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens `path` (created 0600 if missing, never truncated) and takes its exclusive
/// lock without waiting: `None` if another open file description holds it.
pub fn try_lock_file(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .at(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(with_path(e, path)),
    }
}

/// Creates a new file (failing if it exists) readable only by the owner.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .at(path)
}

/// A temp name beside `path`, unique across processes and threads. Dot-prefixed, so
/// directory listings of entries skip it.
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// fsyncs made by this process, and the time spent in them, for the benchmarks'
/// fsync figures.
pub static FSYNCS: AtomicU64 = AtomicU64::new(0);
pub static FSYNC_NANOS: AtomicU64 = AtomicU64::new(0);

fn counted(sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let start = std::time::Instant::now();
    let result = sync();
    FSYNCS.fetch_add(1, Ordering::Relaxed);
    FSYNC_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    result
}

/// fsync of a file's data (and the metadata needed to read it back).
pub fn sync_file(file: &File) -> io::Result<()> {
    counted(|| file.sync_data())
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let file = File::open(dir).at(dir)?;
    counted(|| file.sync_all()).at(dir)?;
    Ok(())
}

/// fsync of a file written earlier without one (by path; a missing file is an error).
pub fn sync_path(path: &Path) -> io::Result<()> {
    let file = File::open(path).at(path)?;
    sync_file(&file).at(path)
}

/// Creates a directory (and its parents) with mode 0700.
pub fn create_dir_private(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| with_path(e, path))
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))
}

/// Adds the path to an I/O error's message, keeping its kind; an error that already
/// starts with the path is returned as it is, so layers can each add it safely.
pub fn with_path(err: io::Error, path: &Path) -> io::Error {
    let shown = path.display().to_string();
    if err.to_string().starts_with(&shown) {
        return err;
    }
    io::Error::new(err.kind(), format!("{shown}: {err}"))
}

/// The one way the store turns an I/O result into its error: `.at(path)` names the
/// file or directory it concerns, so no error reaches the user as a bare
/// `Is a directory (os error 21)`.
pub trait AtPath<T> {
    fn at(self, path: &Path) -> io::Result<T>;
}

impl<T> AtPath<T> for io::Result<T> {
    fn at(self, path: &Path) -> io::Result<T> {
        self.map_err(|e| with_path(e, path))
    }
}

/// Opens an NDJSON file for appending, creating it 0600.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| with_path(e, path))
}

/// Cuts off an unterminated last line left by a writer that crashed mid-write.
/// Call with the file's lock held. Returns the file's length afterwards.
pub fn repair_torn_tail(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 || last_byte(file, len)? == b'\n' {
        return Ok(len);
    }
    let cut = match find_last_newline(file, len)? {
        Some(pos) => pos + 1,
        None => 0,
    };
    file.set_len(cut)?;
    Ok(cut)
}

fn last_byte(file: &mut File, len: u64) -> io::Result<u8> {
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut byte)?;
    Ok(byte[0])
}

/// The offset of the last `\n` before `end`, reading backwards in blocks.
pub fn find_last_newline(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    const BLOCK: u64 = 16 * 1024;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(BLOCK);
        let chunk = &mut buf[..(hi - lo) as usize];
        file.seek(SeekFrom::Start(lo))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_writes_the_new_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn replaced_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        replace(&path, b"{}").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replace_reusing_swaps_two_inodes_and_creates_no_file_after_the_first_two() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace_reusing(
            &path,
            b"{\"n\":1}",
            Durable::Now,
            &mut UnsyncedSwaps::default(),
        )
        .unwrap();
        replace_reusing(
            &path,
            b"{\"n\":2}",
            Durable::Later,
            &mut UnsyncedSwaps::default(),
        )
        .unwrap();
        let inodes = |p: &Path| fs::metadata(p).unwrap().ino();
        let pair = [inodes(&path), inodes(&spare_path(&path))];
        for n in 3..10 {
            replace_reusing(
                &path,
                format!("{{\"n\":{n}}}").as_bytes(),
                Durable::Now,
                &mut UnsyncedSwaps::default(),
            )
            .unwrap();
            let mut now = [inodes(&path), inodes(&spare_path(&path))];
            now.sort_unstable();
            let mut before = pair;
            before.sort_unstable();
            assert_eq!(now, before, "the same two inodes");
        }
        assert_eq!(fs::read(&path).unwrap(), b"{\"n\":9}");
        assert_eq!(names(dir.path()), vec![".state.json.spare", "state.json"]);
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn replace_reusing_falls_back_to_a_temp_file_while_a_reader_holds_the_spare() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace_reusing(&path, b"one", Durable::Now, &mut UnsyncedSwaps::default()).unwrap();
        replace_reusing(&path, b"two", Durable::Now, &mut UnsyncedSwaps::default()).unwrap();
        // A reader that opened "one" before it became the spare, and still reads it.
        let reader = File::open(spare_path(&path)).unwrap();
        replace_reusing(&path, b"three", Durable::Now, &mut UnsyncedSwaps::default()).unwrap();
        let mut held = String::new();
        (&reader).read_to_string(&mut held).unwrap();
        assert_eq!(held, "one", "the reader's version is left alone");
        assert_eq!(fs::read(&path).unwrap(), b"three");
        assert_eq!(names(dir.path()), vec![".state.json.spare", "state.json"]);
    }

    #[test]
    fn the_hook_runs_once_the_new_version_is_written_and_before_it_takes_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for n in 1..4 {
            let mut seen = None;
            let new = format!("version {n}");
            replace_reusing_after(
                &path,
                new.as_bytes(),
                Durable::Now,
                &mut UnsyncedSwaps::default(),
                || {
                    seen = Some(fs::read_to_string(&path).ok());
                    Ok(())
                },
            )
            .unwrap();
            let before = (n > 1).then(|| format!("version {}", n - 1));
            assert_eq!(seen, Some(before), "the hook saw the old version");
            assert_eq!(fs::read_to_string(&path).unwrap(), new);
        }
        // A failing hook leaves the old version in place.
        let failed = replace_reusing_after(
            &path,
            b"never",
            Durable::Now,
            &mut UnsyncedSwaps::default(),
            || Err(io::Error::other("the transcript could not be synced")),
        );
        assert!(failed.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "version 3");
    }

    #[test]
    fn readers_never_see_a_mix_of_two_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // Versions of different lengths, so a torn read could not parse as either.
        let short = br#"{"v":"a"}"#.to_vec();
        let long = format!(r#"{{"v":"{}"}}"#, "b".repeat(3000)).into_bytes();
        replace_reusing(&path, &short, Durable::Later, &mut UnsyncedSwaps::default()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 0..3000 {
                    let bytes = if i % 2 == 0 { &long } else { &short };
                    replace_reusing(&path, bytes, Durable::Later, &mut UnsyncedSwaps::default())
                        .unwrap();
                }
                stop.store(true, Ordering::Relaxed);
            });
            for _ in 0..2 {
                scope.spawn(|| {
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) || reads == 0 {
                        let value: serde_json::Value = read_json(&path).unwrap();
                        let v = value["v"].as_str().unwrap();
                        assert!(v == "a" || v == "b".repeat(3000), "a mix: {v}");
                        reads += 1;
                    }
                });
            }
        });
    }

    #[test]
    fn a_failed_replace_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"old").unwrap();
        // Renaming a file over a non-empty directory fails after the temp file is written.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"").unwrap();
        assert!(replace(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn read_json_tells_missing_from_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        assert!(matches!(
            read_json::<serde_json::Value>(&path),
            Err(ReadError::NotFound { .. })
        ));
        fs::write(&path, b"").unwrap();
        let err = read_json::<serde_json::Value>(&path).unwrap_err();
        assert!(err.to_string().contains("the file is empty"), "{err}");
        fs::write(&path, b"{\"a\":").unwrap();
        assert!(matches!(
            read_json::<serde_json::Value>(&path),
            Err(ReadError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        fs::write(&path, b"{\"seq\":1}\n{\"seq\":2}\n{\"se").unwrap();
        let mut file = open_append(&path).unwrap();
        assert_eq!(repair_torn_tail(&mut file).unwrap(), 20);
        assert_eq!(fs::read(&path).unwrap(), b"{\"seq\":1}\n{\"seq\":2}\n");

        fs::write(&path, b"torn without any newline").unwrap();
        let mut file = open_append(&path).unwrap();
        assert_eq!(repair_torn_tail(&mut file).unwrap(), 0);
    }

    #[test]
    fn a_durable_replace_first_syncs_a_swap_made_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut unsynced = UnsyncedSwaps::default();
        replace_reusing(&path, b"one", Durable::Now, &mut unsynced).unwrap();
        assert!(!unsynced.contains(&path));
        replace_reusing(&path, b"two", Durable::Later, &mut unsynced).unwrap();
        if fs::metadata(spare_path(&path)).is_err() {
            return; // no spare here (no leases or no exchange): nothing is swapped
        }
        assert!(unsynced.contains(&path), "a swap without a sync");
        replace_reusing(&path, b"three", Durable::Now, &mut unsynced).unwrap();
        assert!(!unsynced.contains(&path));
        assert_eq!(fs::read(&path).unwrap(), b"three");

        replace_reusing(&path, b"four", Durable::Later, &mut unsynced).unwrap();
        sync_dir(dir.path()).unwrap();
        unsynced.synced(dir.path());
        assert!(
            !unsynced.contains(&path),
            "syncing the directory makes the swap durable"
        );
    }
}
