//! The file tools and the workspace that confines them.
//!
//! Every path a model gives is relative to the workspace. It is refused when it is
//! absolute, contains `..` or a NUL byte, leads (through a symlink) outside the
//! workspace, goes through a file as if it were a directory (`a.txt/b`), or ends with
//! `/` on something that is not a directory (`a.txt/`).
//!
//! The tools touch only inodes the workspace alone owns: regular files with a single
//! link (a hard link shares its inode with a path that may be outside) and directories.
//! FIFOs, devices and sockets are refused before they are opened. Files are opened
//! without following a final symlink, and checked again once open. Writes never go
//! into an existing inode: the new content goes to a temp file beside the target,
//! which is renamed over it, so even a hard link made after the checks is replaced as
//! a name and the file it shares stays as it was.
//!
//! A refused or missing path is explained so the model can find a valid one: refusals
//! name the workspace's top-level entries (and, for an absolute path, the part of it
//! that exists in the workspace), a missing path names what its nearest existing
//! directory holds. Only directories inside the workspace are ever listed.

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};

/// The largest file `read_file` reads, and the most lines it returns at once.
const READ_CAP_BYTES: u64 = 256 * 1024;
const READ_DEFAULT_LINES: usize = 2000;
/// The largest content `write_file` accepts.
const WRITE_CAP_BYTES: usize = 10 * 1024 * 1024;
const LIST_CAP: usize = 1000;
/// The most entries a path error names.
const HINT_ENTRIES: usize = 20;
/// The most trailing parts of an absolute path tried as a suggestion.
const SUGGEST_DEPTH: usize = 16;

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    pub fn new(root: PathBuf) -> Workspace {
        Workspace { root }
    }

    /// The real location of the workspace; it is created on first use.
    fn canonical_root(&self) -> Result<PathBuf, String> {
        crate::store::local::create_dir_private(&self.root)
            .and_then(|()| self.root.canonicalize())
            .map_err(|e| format!("the workspace {} is not usable: {e}", self.root.display()))
    }

    /// Resolves a model-given path to a location inside the workspace.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, String> {
        if rel.contains('\0') {
            return Err("the path contains a NUL byte".to_owned());
        }
        let rel_path = Path::new(rel);
        for component in rel_path.components() {
            match component {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(format!(
                        "`{rel}` is outside the workspace: `..` is not allowed; use a path relative to the workspace. {}",
                        self.top_level()
                    ));
                }
                Component::RootDir | Component::Prefix(_) => {
                    let suggestion = self
                        .suggest_relative(rel_path)
                        .map(|s| format!(" Did you mean `{s}`?"))
                        .unwrap_or_default();
                    return Err(format!(
                        "`{rel}` is an absolute path; use a path relative to the workspace.{suggestion} {}",
                        self.top_level()
                    ));
                }
            }
        }
        let root = self.canonical_root()?;
        // Walk down to the deepest part that exists, resolve it (following symlinks),
        // and check it is still inside; the rest does not exist yet and is plain names.
        let mut existing = root.clone();
        let mut walked = PathBuf::new();
        let mut missing = Vec::new();
        for component in rel_path.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            if !missing.is_empty() {
                missing.push(name);
                continue;
            }
            // The OS would refuse `in.txt/x` with ENOTDIR; saying which part is a file
            // tells the model what to fix.
            if !walked.as_os_str().is_empty() && !is_dir(&existing) {
                return Err(format!(
                    "`{rel}` goes through `{}`, which is a file, not a directory",
                    walked.display()
                ));
            }
            walked.push(name);
            let next = existing.join(name);
            match fs::symlink_metadata(&next) {
                Ok(_) => {
                    existing = next.canonicalize().map_err(|_| {
                        format!(
                            "`{rel}` leads through a broken symlink. {}",
                            self.top_level()
                        )
                    })?;
                    if !existing.starts_with(&root) {
                        return Err(format!(
                            "`{rel}` leads outside the workspace through a symlink; use a path inside it. {}",
                            self.top_level()
                        ));
                    }
                }
                Err(_) => missing.push(name),
            }
        }
        // `in.txt/` and `in.txt/.` name a directory: the components above dropped the
        // slash, and reading the file for them would answer a question not asked.
        if missing.is_empty() && names_directory(rel) && !is_dir(&existing) {
            return Err(format!(
                "`{rel}` ends with `/`, which names a directory, but `{}` is not one; write the path without the trailing `/`",
                walked.display()
            ));
        }
        Ok(missing.iter().fold(existing, |path, name| path.join(name)))
    }

    /// Resolves `rel` to a directory of the workspace (`list_dir`'s, a command's `cwd`).
    pub fn directory(&self, rel: &str) -> Result<PathBuf, String> {
        let path = self.resolve(rel)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Ok(path),
            Ok(meta) if meta.is_file() => Err(format!("`{rel}` is a file, not a directory")),
            Ok(meta) => Err(not_regular(rel, &meta)),
            Err(e) => Err(self.describe_io(rel, &e)),
        }
    }

    /// The relative path a model probably meant by an absolute one: the part after the
    /// workspace's own location, or else the longest trailing part that exists here
    /// (`/Users/me/project/notes.md` → `notes.md`). Only paths [`Workspace::resolve`]
    /// accepts are suggested, so nothing outside is probed.
    fn suggest_relative(&self, abs: &Path) -> Option<String> {
        let accepted = |rel: &Path| self.resolve(&rel.to_string_lossy()).ok();
        let roots = [Some(self.root.clone()), self.root.canonicalize().ok()];
        for root in roots.iter().flatten() {
            if let Ok(inside) = abs.strip_prefix(root) {
                let inside = if inside.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    inside
                };
                if accepted(inside).is_some() {
                    return Some(inside.display().to_string());
                }
            }
        }
        let names: Vec<_> = abs
            .components()
            .rev()
            .take_while(|c| matches!(c, Component::Normal(_)))
            .take(SUGGEST_DEPTH)
            .collect();
        (1..=names.len()).rev().find_map(|len| {
            let tail: PathBuf = names[..len].iter().rev().collect();
            let found = accepted(&tail)?;
            fs::symlink_metadata(found)
                .is_ok()
                .then(|| tail.display().to_string())
        })
    }

    /// "The workspace holds: a/, b.md": where a refused path could go instead. The root
    /// is not created for this; one that does not exist yet is empty.
    fn top_level(&self) -> String {
        self.root
            .canonicalize()
            .ok()
            .and_then(|root| holds("The workspace", &root))
            .unwrap_or_else(|| "The workspace is empty.".to_owned())
    }

    /// What the nearest existing directory above a missing `rel` holds. Each candidate
    /// goes through [`Workspace::resolve`], so a directory outside is never listed.
    fn around(&self, rel: &str) -> String {
        for dir in Path::new(rel).ancestors().skip(1) {
            let Ok(path) = self.resolve(&dir.to_string_lossy()) else {
                continue;
            };
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let top = dir.components().all(|c| c == Component::CurDir);
            let what = if top {
                "The workspace".to_owned()
            } else {
                format!("`{}/`", dir.display())
            };
            if let Some(listing) = holds(&what, &path) {
                return listing;
            }
        }
        String::new()
    }

    /// Opens the resolved `path` for reading, if it is a file the workspace alone owns
    /// (see [`refusal`]).
    ///
    /// Checked twice: before opening, so a device is never opened and the error needs
    /// no descriptor; and on the open file, since the path may have been swapped in
    /// between. `O_NONBLOCK` keeps a FIFO swapped in from blocking the open, `O_NOFOLLOW`
    /// a final symlink from redirecting it. A directory above swapped for a symlink
    /// would still be followed, so the path must also still resolve to itself and to
    /// the inode opened.
    fn open_file(&self, path: &Path, rel: &str) -> Result<(File, fs::Metadata), String> {
        let before = fs::symlink_metadata(path).map_err(|e| self.describe_io(rel, &e))?;
        if let Some(refused) = refusal(rel, &before) {
            return Err(refused);
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| self.describe_io(rel, &e))?;
        let meta = file.metadata().map_err(|e| self.describe_io(rel, &e))?;
        if let Some(refused) = refusal(rel, &meta) {
            return Err(refused);
        }
        if !still_names(path, &meta) {
            return Err(changed(rel));
        }
        Ok((file, meta))
    }

    /// Replaces the resolved `path` with `bytes`, through a temp file beside it and a
    /// rename, never writing into an existing inode: a hard link swapped in after the
    /// check is replaced as a name, and the file it shares stays untouched. A file that
    /// existed keeps its permission bits; a new one gets 0644 (less the umask).
    fn replace_file(&self, path: &Path, rel: &str, bytes: &[u8]) -> Result<(), String> {
        let mode = match fs::symlink_metadata(path) {
            Ok(meta) => match refusal(rel, &meta) {
                Some(refused) => return Err(refused),
                None => Some(meta.permissions().mode() & 0o7777),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.describe_io(rel, &e)),
        };
        if mode.is_none() && names_directory(rel) {
            return Err(format!(
                "`{rel}` ends with `/`, which names a directory; give the path of a file, like `notes/a.md`"
            ));
        }
        // A resolved path is the canonical root joined with names: it has both.
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(format!("`{rel}` is not a file path"));
        };
        // 0755 whatever the umask, like the 0644 of a new file.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| self.describe_io(rel, &e))?;
        // Not a directory now, or a symlink: swapped since it was resolved.
        let dir = OpenDir::open(parent).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR | libc::ELOOP) => changed(rel),
            _ => self.describe_io(rel, &e),
        })?;
        if !still_names(parent, &dir.meta) {
            return Err(changed(rel));
        }
        dir.replace(name, bytes, mode)
            .map_err(|e| self.describe_io(rel, &e))
    }

    /// An I/O error on `rel` as the model should read it.
    fn describe_io(&self, rel: &str, err: &std::io::Error) -> String {
        match err.kind() {
            std::io::ErrorKind::NotFound => format!("`{rel}` does not exist. {}", self.around(rel))
                .trim_end()
                .to_owned(),
            std::io::ErrorKind::PermissionDenied => format!("`{rel}`: permission denied"),
            _ if err.raw_os_error() == Some(libc::ELOOP) => {
                format!("`{rel}` is a symlink, which is not followed")
            }
            _ => format!("`{rel}`: {err}"),
        }
    }
}

/// A directory's entries, sorted, directories with a trailing `/`; symlinks are named,
/// not followed.
fn entries(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let mut name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            name.push('/');
        }
        names.push(name);
    }
    names.sort_unstable();
    Ok(names)
}

/// "`src/` holds: a.rs, b.rs and 3 more.", at most [`HINT_ENTRIES`] names; `None` when
/// the directory cannot be read.
fn holds(what: &str, dir: &Path) -> Option<String> {
    let names = entries(dir).ok()?;
    if names.is_empty() {
        return Some(format!("{what} is empty."));
    }
    let shown = names[..names.len().min(HINT_ENTRIES)].join(", ");
    Some(if names.len() > HINT_ENTRIES {
        format!(
            "{what} holds: {shown} and {} more.",
            names.len() - HINT_ENTRIES
        )
    } else {
        format!("{what} holds: {shown}.")
    })
}

// The arguments were checked against the tool's schema before the call
// (`super::args::check`), which explains a bad one; these only take them out.

fn str_arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    match args.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("argument `{name}` must be a string")),
        None => Err(format!("missing argument `{name}`")),
    }
}

fn count_arg(args: &Value, name: &str) -> Result<Option<usize>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            // JSON Schema counts `2.0` as an integer, and so does the checker.
            .or_else(|| {
                v.as_f64()
                    .filter(|n| n.fract() == 0.0 && *n >= 0.0)
                    .map(|n| n as u64)
            })
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("argument `{name}` must be an integer ≥ 0")),
    }
}

pub fn read_file_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "File to read, relative to the workspace, like \"notes.md\" or \"src/main.rs\""},
            "offset": {"type": "integer", "minimum": 1, "description": "First line to read, 1 by default; lines are numbered from 1"},
            "limit": {"type": "integer", "minimum": 1, "description": format!("How many lines to read, {READ_DEFAULT_LINES} by default")}
        },
        "required": ["path"]
    })
}

pub fn read_file(ws: &Workspace, args: &Value) -> Result<String, String> {
    let rel = str_arg(args, "path")?;
    let offset = count_arg(args, "offset")?.unwrap_or(1).max(1);
    let limit = count_arg(args, "limit")?.unwrap_or(READ_DEFAULT_LINES);
    let path = ws.resolve(rel)?;
    let (mut file, meta) = ws.open_file(&path, rel)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(READ_CAP_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| ws.describe_io(rel, &e))?;
    if bytes.contains(&0) {
        return Err(format!("`{rel}` is a binary file"));
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = (offset - 1).min(lines.len());
    let end = start.saturating_add(limit).min(lines.len());
    let mut out: String = lines[start..end].concat();
    let truncated_bytes = meta.len() > READ_CAP_BYTES;
    if end < lines.len() || truncated_bytes || start > 0 {
        let total = if truncated_bytes {
            format!("the first {} KiB", READ_CAP_BYTES / 1024)
        } else {
            crate::plural::count(lines.len() as u64, "line", "lines")
        };
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("[showing lines {}-{} of {total}]", start + 1, end));
    }
    Ok(out)
}

pub fn write_file_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "File to write, relative to the workspace, like \"notes.md\"; missing directories are created"},
            "content": {"type": "string", "description": "The whole new content of the file, as text"}
        },
        "required": ["path", "content"]
    })
}

pub fn write_file(ws: &Workspace, args: &Value) -> Result<String, String> {
    let rel = str_arg(args, "path")?;
    let content = str_arg(args, "content")?;
    if content.len() > WRITE_CAP_BYTES {
        return Err(format!(
            "content is larger than {} MiB",
            WRITE_CAP_BYTES / (1024 * 1024)
        ));
    }
    let path = ws.resolve(rel)?;
    ws.replace_file(&path, rel, content.as_bytes())?;
    Ok(format!(
        "wrote {} to {rel}",
        crate::plural::count(content.len() as u64, "byte", "bytes")
    ))
}

pub fn list_dir_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Directory relative to the workspace, like \"src\"; \".\", the default, for its top level"}
        }
    })
}

pub fn list_dir(ws: &Workspace, args: &Value) -> Result<String, String> {
    let rel = match args.get("path") {
        None | Some(Value::Null) => ".",
        Some(_) => str_arg(args, "path")?,
    };
    let path = ws.directory(rel)?;
    let listed = OpenDir::open(&path).map_err(|e| ws.describe_io(rel, &e))?;
    let mut names = entries(&path).map_err(|e| ws.describe_io(rel, &e))?;
    if !still_names(&path, &listed.meta) {
        return Err(changed(rel));
    }
    let total = names.len();
    names.truncate(LIST_CAP);
    let mut out = names.join("\n");
    if total > LIST_CAP {
        out.push_str(&format!("\n[showing {LIST_CAP} of {total} entries]"));
    }
    if total == 0 {
        out.push_str("(empty directory)");
    }
    Ok(out)
}

pub fn edit_file_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "File to edit, relative to the workspace, like \"notes.md\""},
            "old_string": {"type": "string", "description": "The exact text to replace, copied from the file; it must occur exactly once"},
            "new_string": {"type": "string", "description": "The text to put in its place (may be empty)"}
        },
        "required": ["path", "old_string", "new_string"]
    })
}

pub fn edit_file(ws: &Workspace, args: &Value) -> Result<String, String> {
    let rel = str_arg(args, "path")?;
    let old = str_arg(args, "old_string")?;
    let new = str_arg(args, "new_string")?;
    if old.is_empty() {
        return Err("`old_string` is empty; to write a whole file use write_file".to_owned());
    }
    let path = ws.resolve(rel)?;
    let text = read_text(ws, &path, rel, WRITE_CAP_BYTES as u64)?;
    let found = text.matches(old).count();
    match found {
        0 => {
            return Err(format!(
                "`old_string` was not found in `{rel}`; read the file and copy the text exactly"
            ));
        }
        1 => {}
        n => {
            return Err(format!(
                "`old_string` occurs {n} times in `{rel}`; include more of the surrounding text so it is unique"
            ));
        }
    }
    let edited = text.replacen(old, new, 1);
    ws.replace_file(&path, rel, edited.as_bytes())?;
    Ok(format!("replaced 1 occurrence in {rel}"))
}

/// Reads a whole regular file as UTF-8 text, refusing devices, binaries and big files.
fn read_text(ws: &Workspace, path: &Path, rel: &str, cap: u64) -> Result<String, String> {
    let (mut file, meta) = ws.open_file(path, rel)?;
    if meta.len() > cap {
        return Err(format!(
            "`{rel}` is larger than {} MiB",
            cap / (1024 * 1024)
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| ws.describe_io(rel, &e))?;
    if bytes.contains(&0) {
        return Err(format!("`{rel}` is a binary file"));
    }
    String::from_utf8(bytes).map_err(|_| format!("`{rel}` is not UTF-8 text"))
}

/// Most matches `search_files` returns, and the longest line it shows.
const SEARCH_MAX_MATCHES: usize = 100;
const SEARCH_LINE_CHARS: usize = 200;
/// Files larger than this are skipped by `search_files`.
const SEARCH_FILE_CAP: u64 = 1024 * 1024;
/// Files visited at most, so a huge tree cannot stall the step.
const SEARCH_MAX_FILES: usize = 10_000;

pub fn search_files_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "What to look for: a regular expression, or plain text, like \"fn main\""},
            "path": {"type": "string", "description": "Directory or file to search, relative to the workspace, like \"src\"; all of it by default"}
        },
        "required": ["pattern"]
    })
}

pub fn search_files(ws: &Workspace, args: &Value) -> Result<String, String> {
    let pattern = str_arg(args, "pattern")?;
    if pattern.is_empty() {
        return Err(
            "`pattern` is empty; give the text or regular expression to look for".to_owned(),
        );
    }
    let rel = match args.get("path") {
        None | Some(Value::Null) => ".",
        Some(_) => str_arg(args, "path")?,
    };
    let matcher = match regex::Regex::new(pattern) {
        Ok(re) => re,
        // Not a valid expression: search for the text itself.
        Err(_) => regex::Regex::new(&regex::escape(pattern)).map_err(|e| e.to_string())?,
    };
    let root = ws.resolve(rel)?;
    match fs::symlink_metadata(&root) {
        // A file named on purpose is refused as `read_file` would refuse it; files met
        // in a walk that may not be read are skipped, like binaries.
        Ok(meta) if meta.is_file() => {
            ws.open_file(&root, rel)?;
        }
        Ok(meta) if !meta.is_dir() => return Err(not_regular(rel, &meta)),
        Ok(_) => {}
        Err(e) => return Err(ws.describe_io(rel, &e)),
    }
    let base = ws.resolve(".")?;
    let mut files = Vec::new();
    collect_files(&root, &mut files, 0);
    let mut matches = Vec::new();
    let mut truncated = false;
    'files: for file in files.iter().take(SEARCH_MAX_FILES) {
        let shown = file
            .strip_prefix(&base)
            .unwrap_or(file)
            .display()
            .to_string();
        let Ok(text) = read_text(ws, file, &shown, SEARCH_FILE_CAP) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            if matcher.is_match(line) {
                if matches.len() == SEARCH_MAX_MATCHES {
                    truncated = true;
                    break 'files;
                }
                let line: String = line.chars().take(SEARCH_LINE_CHARS).collect();
                matches.push(format!("{shown}:{}: {line}", n + 1));
            }
        }
    }
    if matches.is_empty() {
        return Ok(format!("no matches for `{pattern}`"));
    }
    let mut out = matches.join("\n");
    if truncated || files.len() > SEARCH_MAX_FILES {
        out.push_str(&format!(
            "\n[showing the first {} matches; narrow the pattern or the path]",
            matches.len()
        ));
    }
    Ok(out)
}

/// Regular files under `path`, sorted, not following symlinks (a link could lead out).
fn collect_files(path: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_file() {
        out.push(path.to_owned());
        return;
    }
    if !meta.is_dir() || depth > 32 || out.len() > SEARCH_MAX_FILES {
        return;
    }
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        collect_files(&child, out, depth + 1);
    }
}

/// True when `path` still names, with no symlink on the way, the inode `opened` came
/// from: a file or directory opened by path was not reached through a directory
/// swapped for a symlink after the path was resolved.
fn still_names(path: &Path, opened: &fs::Metadata) -> bool {
    path.canonicalize().is_ok_and(|real| real == path)
        && fs::symlink_metadata(path)
            .is_ok_and(|now| (now.dev(), now.ino()) == (opened.dev(), opened.ino()))
}

fn changed(rel: &str) -> String {
    format!("`{rel}` changed while it was being opened; try again")
}

/// A workspace directory held open, so that a write's temp file and its rename happen
/// in that directory even if one above it is swapped for a symlink meanwhile.
struct OpenDir {
    dir: File,
    meta: fs::Metadata,
}

impl OpenDir {
    fn open(path: &Path) -> std::io::Result<OpenDir> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)?;
        let meta = dir.metadata()?;
        Ok(OpenDir { dir, meta })
    }

    /// Writes `bytes` to a new temp file in the directory, with `mode` if given, and
    /// renames it to `name`.
    fn replace(&self, name: &OsStr, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
        let temp = crate::store::local::temp_path(Path::new(name));
        let temp = c_name(temp.as_os_str())?;
        let name = c_name(name)?;
        let dirfd = self.dir.as_raw_fd();
        // SAFETY: openat(2) reads two NUL-terminated names (CString guarantees them) and
        // a descriptor this struct keeps open; the descriptor returned is new and owned
        // by nothing else, so `File` may take it.
        let file = unsafe {
            let fd = libc::openat(
                dirfd,
                temp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            File::from_raw_fd(fd)
        };
        let written = (|| {
            if let Some(mode) = mode {
                file.set_permissions(fs::Permissions::from_mode(mode))?;
            }
            (&file).write_all(bytes)?;
            // SAFETY: as above: NUL-terminated names relative to a descriptor kept open.
            let rc = unsafe { libc::renameat(dirfd, temp.as_ptr(), dirfd, name.as_ptr()) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })();
        if written.is_err() {
            // Best effort: the temp name is a dot file, but it should not stay behind.
            // SAFETY: as above.
            unsafe {
                libc::unlinkat(dirfd, temp.as_ptr(), 0);
            }
        }
        written
    }
}

fn c_name(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// True for a path written as a directory: `a/`, `a/.`, `.`.
fn names_directory(rel: &str) -> bool {
    rel.ends_with('/') || rel.ends_with("/.") || rel == "."
}

/// A directory, not following a final symlink (resolved paths have none).
fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Why a file tool may not touch what `meta` describes, or `None` for a regular file
/// with one link: the only kind of inode that belongs to the workspace alone.
///
/// A FIFO would block the step, devices and sockets are not files; a regular file with
/// more than one link shares its inode with another path, which may lie outside the
/// workspace (a hard link cannot be told from the original, so none is trusted).
fn refusal(rel: &str, meta: &fs::Metadata) -> Option<String> {
    if meta.is_dir() {
        Some(format!(
            "`{rel}` is a directory, not a file; list_dir shows what it holds"
        ))
    } else if !meta.is_file() {
        Some(not_regular(rel, meta))
    } else if meta.nlink() > 1 {
        Some(format!(
            "`{rel}` is refused: it has {} hard links, so other paths (maybe outside the workspace) share the file; file tools only read and write files with a single link",
            meta.nlink()
        ))
    } else {
        None
    }
}

fn not_regular(rel: &str, meta: &fs::Metadata) -> String {
    let kind = meta.file_type();
    let what = if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_symlink() {
        "a symlink"
    } else {
        "a special file"
    };
    format!(
        "`{rel}` is {what}, not a regular file; file tools use only regular files and directories"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path().join("ws"));
        (dir, ws)
    }

    #[test]
    fn files_are_written_and_read_back() {
        let (_dir, ws) = workspace();
        write_file(
            &ws,
            &json!({"path": "notes/a.md", "content": "one\ntwo\nthree\n"}),
        )
        .unwrap();
        assert_eq!(
            read_file(&ws, &json!({"path": "notes/a.md"})).unwrap(),
            "one\ntwo\nthree\n"
        );
        assert_eq!(
            read_file(&ws, &json!({"path": "notes/a.md", "offset": 2, "limit": 1})).unwrap(),
            "two\n[showing lines 2-2 of 3 lines]"
        );
        assert_eq!(list_dir(&ws, &json!({"path": "."})).unwrap(), "notes/");
        assert_eq!(list_dir(&ws, &json!({"path": "notes"})).unwrap(), "a.md");
    }

    #[test]
    fn paths_outside_the_workspace_are_refused() {
        let (dir, ws) = workspace();
        fs::create_dir_all(dir.path().join("ws")).unwrap();
        fs::write(dir.path().join("secret"), "s").unwrap();
        symlink(dir.path().join("secret"), dir.path().join("ws/link")).unwrap();
        symlink(dir.path(), dir.path().join("ws/up")).unwrap();
        symlink(dir.path().join("nowhere"), dir.path().join("ws/dangling")).unwrap();
        for path in [
            "../secret",
            "/etc/passwd",
            "a/../../secret",
            "link",
            "up/secret",
            "dangling",
            "a\0b",
        ] {
            assert!(
                read_file(&ws, &json!({"path": path})).is_err(),
                "read {path:?}"
            );
            assert!(
                write_file(&ws, &json!({"path": path, "content": "x"})).is_err(),
                "write {path:?}"
            );
        }
        assert_eq!(fs::read_to_string(dir.path().join("secret")).unwrap(), "s");
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn symlinks_inside_the_workspace_are_followed() {
        let (dir, ws) = workspace();
        fs::create_dir_all(dir.path().join("ws/real")).unwrap();
        fs::write(dir.path().join("ws/real/f"), "inside").unwrap();
        symlink(dir.path().join("ws/real"), dir.path().join("ws/alias")).unwrap();
        assert_eq!(
            read_file(&ws, &json!({"path": "alias/f"})).unwrap(),
            "inside"
        );
    }

    #[test]
    fn devices_and_binaries_are_not_read() {
        let (dir, ws) = workspace();
        fs::create_dir_all(dir.path().join("ws")).unwrap();
        fs::write(dir.path().join("ws/bin"), b"a\0b").unwrap();
        assert!(
            read_file(&ws, &json!({"path": "bin"}))
                .unwrap_err()
                .contains("binary")
        );
        assert!(
            read_file(&ws, &json!({"path": "."}))
                .unwrap_err()
                .contains("directory")
        );
    }

    #[test]
    fn edit_file_replaces_exactly_one_occurrence() {
        let (_dir, ws) = workspace();
        write_file(
            &ws,
            &json!({"path": "a.txt", "content": "one two two three"}),
        )
        .unwrap();
        edit_file(
            &ws,
            &json!({"path": "a.txt", "old_string": "one", "new_string": "1"}),
        )
        .unwrap();
        assert_eq!(
            read_file(&ws, &json!({"path": "a.txt"})).unwrap(),
            "1 two two three"
        );
        let missing = edit_file(
            &ws,
            &json!({"path": "a.txt", "old_string": "four", "new_string": "4"}),
        );
        assert!(missing.unwrap_err().contains("was not found"));
        let ambiguous = edit_file(
            &ws,
            &json!({"path": "a.txt", "old_string": "two", "new_string": "2"}),
        );
        assert!(ambiguous.unwrap_err().contains("occurs 2 times"));
        assert_eq!(
            read_file(&ws, &json!({"path": "a.txt"})).unwrap(),
            "1 two two three"
        );
    }

    #[test]
    fn search_files_finds_lines_by_regex_or_text() {
        let (_dir, ws) = workspace();
        write_file(
            &ws,
            &json!({"path": "src/a.rs", "content": "fn main() {}\nlet x = 1;\n"}),
        )
        .unwrap();
        write_file(&ws, &json!({"path": "b.md", "content": "main idea\n"})).unwrap();
        let found = search_files(&ws, &json!({"pattern": "^fn \\w+"})).unwrap();
        assert_eq!(found, "src/a.rs:1: fn main() {}");
        let text = search_files(&ws, &json!({"pattern": "main(", "path": "."})).unwrap();
        assert_eq!(
            text, "src/a.rs:1: fn main() {}",
            "an invalid regex is searched as text"
        );
        assert_eq!(
            search_files(&ws, &json!({"pattern": "zzz"})).unwrap(),
            "no matches for `zzz`"
        );
        assert!(search_files(&ws, &json!({"pattern": "x", "path": "../"})).is_err());
    }

    /// The error of reading `path`.
    fn read_error(ws: &Workspace, path: &str) -> String {
        read_file(ws, &json!({"path": path})).unwrap_err()
    }

    #[test]
    fn an_absolute_path_suggests_the_part_of_it_that_exists_here() {
        let (dir, ws) = workspace();
        let root = dir.path().join("ws");
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("notes.md"), "n").unwrap();
        assert_eq!(
            read_error(&ws, "/Users/me/project/notes.md"),
            "`/Users/me/project/notes.md` is an absolute path; use a path relative to the \
             workspace. Did you mean `notes.md`? The workspace holds: notes.md, src/."
        );
        fs::create_dir_all(root.join("project")).unwrap();
        fs::write(root.join("project/notes.md"), "p").unwrap();
        assert!(
            read_error(&ws, "/Users/me/project/notes.md")
                .contains("Did you mean `project/notes.md`?"),
            "the longest part that exists"
        );
        let own = root.join("drafts/new.md");
        let write = write_file(&ws, &json!({"path": own.to_str().unwrap(), "content": "x"}));
        assert!(
            write.unwrap_err().contains("Did you mean `drafts/new.md`?"),
            "the workspace's own location is stripped, even for a file not written yet"
        );
        assert!(!root.join("drafts").exists());
        assert!(!read_error(&ws, "/etc/passwd").contains("Did you mean"));
    }

    #[test]
    fn refusals_name_the_top_level_entries_sorted_with_directories_marked() {
        let (dir, ws) = workspace();
        let root = dir.path().join("ws");
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("b.md"), "b").unwrap();
        fs::write(root.join("a.md"), "a").unwrap();
        fs::write(dir.path().join("secret"), "s").unwrap();
        symlink(dir.path(), root.join("up")).unwrap();
        let listing = "The workspace holds: a.md, b.md, src/, up.";
        for (path, reason) in [
            (
                "../secret",
                "`../secret` is outside the workspace: `..` is not allowed",
            ),
            ("/etc/passwd", "`/etc/passwd` is an absolute path"),
            (
                "up/secret",
                "`up/secret` leads outside the workspace through a symlink",
            ),
        ] {
            let error = read_error(&ws, path);
            assert!(error.starts_with(reason), "{error}");
            assert!(error.ends_with(listing), "{error}");
        }
        let (_empty_dir, empty) = workspace();
        assert!(read_error(&empty, "/notes.md").ends_with("The workspace is empty."));
    }

    #[test]
    fn the_top_level_listing_names_at_most_twenty_entries() {
        let (dir, ws) = workspace();
        let root = dir.path().join("ws");
        fs::create_dir_all(&root).unwrap();
        for i in 0..25 {
            fs::write(root.join(format!("f{i:02}")), "").unwrap();
        }
        let shown: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
        assert!(
            read_error(&ws, "/f99").ends_with(&format!(
                "The workspace holds: {} and 5 more.",
                shown.join(", ")
            )),
            "{}",
            read_error(&ws, "/f99")
        );
    }

    #[test]
    fn a_missing_path_names_what_its_nearest_existing_directory_holds() {
        let (dir, ws) = workspace();
        let root = dir.path().join("ws");
        fs::create_dir_all(root.join("src/empty")).unwrap();
        fs::write(root.join("src/a.rs"), "a").unwrap();
        fs::write(root.join("src/b.rs"), "b").unwrap();
        assert_eq!(
            read_error(&ws, "src/c.rs"),
            "`src/c.rs` does not exist. `src/` holds: a.rs, b.rs, empty/."
        );
        assert_eq!(
            read_error(&ws, "src/deep/er/c.rs"),
            "`src/deep/er/c.rs` does not exist. `src/` holds: a.rs, b.rs, empty/."
        );
        assert_eq!(
            read_error(&ws, "src/empty/c.rs"),
            "`src/empty/c.rs` does not exist. `src/empty/` is empty."
        );
        assert_eq!(
            list_dir(&ws, &json!({"path": "lib"})).unwrap_err(),
            "`lib` does not exist. The workspace holds: src/."
        );
        let edit = edit_file(
            &ws,
            &json!({"path": "./src/main.rs", "old_string": "a", "new_string": "b"}),
        );
        assert_eq!(
            edit.unwrap_err(),
            "`./src/main.rs` does not exist. `./src/` holds: a.rs, b.rs, empty/."
        );
    }

    #[test]
    fn nothing_outside_the_workspace_is_listed_or_suggested() {
        let (dir, ws) = workspace();
        let root = dir.path().join("ws");
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("inner")).unwrap();
        fs::write(outside.join("hidden-name.txt"), "s").unwrap();
        fs::create_dir_all(&root).unwrap();
        symlink(&outside, root.join("out")).unwrap();
        for path in [
            "out/nothing".to_owned(),
            "out/inner/nothing".to_owned(),
            "/x/out/hidden-name.txt".to_owned(),
            root.join("out/hidden-name.txt").display().to_string(),
            outside.join("hidden-name.txt").display().to_string(),
        ] {
            let error = read_error(&ws, &path);
            assert!(error.ends_with("The workspace holds: out."), "{error}");
            let told = error.replacen(&format!("`{path}`"), "", 1);
            for leak in ["hidden-name", "inner", "Did you mean"] {
                assert!(!told.contains(leak), "{error}");
            }
        }
        assert_eq!(
            ws.around("out/inner/nothing"),
            "The workspace holds: out.",
            "a directory reached through a link outside is skipped, not listed"
        );
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_resolving_is_not_gone_through() {
        let (dir, ws) = workspace();
        let root = dir.path().join("ws");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(root.join("sub/f.txt"), "inside").unwrap();
        fs::write(outside.join("f.txt"), "outside").unwrap();
        let resolved = ws.resolve("sub/f.txt").unwrap();
        // What a process racing the tool could do between the checks and the open.
        fs::rename(root.join("sub"), root.join("moved")).unwrap();
        symlink(&outside, root.join("sub")).unwrap();
        assert_eq!(
            ws.open_file(&resolved, "sub/f.txt").unwrap_err(),
            "`sub/f.txt` changed while it was being opened; try again"
        );
        assert_eq!(
            ws.replace_file(&resolved, "sub/f.txt", b"x").unwrap_err(),
            "`sub/f.txt` changed while it was being opened; try again"
        );
        assert_eq!(
            fs::read_to_string(outside.join("f.txt")).unwrap(),
            "outside"
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "no temp file outside"
        );
    }

    #[test]
    fn a_hard_link_made_after_the_check_is_replaced_as_a_name_not_written_through() {
        let (dir, ws) = workspace();
        let root = dir.path().join("ws");
        fs::create_dir_all(&root).unwrap();
        fs::write(dir.path().join("outside"), "outside").unwrap();
        let resolved = ws.resolve("f.txt").unwrap();
        fs::hard_link(dir.path().join("outside"), root.join("f.txt")).unwrap();
        // The check ran on a missing file; the link appeared before the write.
        let meta = fs::symlink_metadata(&resolved).unwrap();
        let dir_handle = OpenDir::open(&root).unwrap();
        dir_handle
            .replace(resolved.file_name().unwrap(), b"inside", None)
            .unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("outside")).unwrap(),
            "outside"
        );
        assert_eq!(fs::read_to_string(root.join("f.txt")).unwrap(), "inside");
        assert_ne!(fs::metadata(root.join("f.txt")).unwrap().ino(), meta.ino());
    }

    #[test]
    fn missing_arguments_are_named() {
        let (_dir, ws) = workspace();
        assert_eq!(
            read_file(&ws, &json!({})).unwrap_err(),
            "missing argument `path`"
        );
        assert_eq!(
            write_file(&ws, &json!({"path": "x", "content": 3})).unwrap_err(),
            "argument `content` must be a string"
        );
    }
}
