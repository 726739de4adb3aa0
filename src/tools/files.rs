//! The file tools and the workspace that confines them.
//!
//! Every path a model gives is relative to the workspace. It is refused when it is
//! absolute, contains `..` or a NUL byte, or leads (through a symlink) outside the
//! workspace; the final component is opened without following symlinks, so a link
//! swapped in after the check cannot redirect a write.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};

/// The largest file `read_file` reads, and the most lines it returns at once.
const READ_CAP_BYTES: u64 = 256 * 1024;
const READ_DEFAULT_LINES: usize = 2000;
/// The largest content `write_file` accepts.
const WRITE_CAP_BYTES: usize = 10 * 1024 * 1024;
const LIST_CAP: usize = 1000;

pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    pub fn new(root: PathBuf) -> Workspace {
        Workspace { root }
    }

    /// The real location of the workspace; it is created on first use.
    fn canonical_root(&self) -> Result<PathBuf, String> {
        crate::store::fs::create_dir_private(&self.root)
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
                        "`{rel}` is outside the workspace: `..` is not allowed"
                    ));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!(
                        "`{rel}` is an absolute path; paths are relative to the workspace"
                    ));
                }
            }
        }
        let root = self.canonical_root()?;
        // Walk down to the deepest part that exists, resolve it (following symlinks),
        // and check it is still inside; the rest does not exist yet and is plain names.
        let mut existing = root.clone();
        let mut missing = Vec::new();
        for component in rel_path.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            if !missing.is_empty() {
                missing.push(name);
                continue;
            }
            let next = existing.join(name);
            match fs::symlink_metadata(&next) {
                Ok(_) => {
                    existing = next
                        .canonicalize()
                        .map_err(|_| format!("`{rel}` leads through a broken symlink"))?;
                    if !existing.starts_with(&root) {
                        return Err(format!(
                            "`{rel}` leads outside the workspace through a symlink"
                        ));
                    }
                }
                Err(_) => missing.push(name),
            }
        }
        Ok(missing.iter().fold(existing, |path, name| path.join(name)))
    }
}

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
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("argument `{name}` must be a whole number")),
    }
}

pub fn read_file_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Path relative to the workspace"},
            "offset": {"type": "integer", "minimum": 1, "description": "First line to read (1-based)"},
            "limit": {"type": "integer", "minimum": 1, "description": "Number of lines to read"}
        },
        "required": ["path"]
    })
}

pub fn read_file(ws: &Workspace, args: &Value) -> Result<String, String> {
    let rel = str_arg(args, "path")?;
    let offset = count_arg(args, "offset")?.unwrap_or(1).max(1);
    let limit = count_arg(args, "limit")?.unwrap_or(READ_DEFAULT_LINES);
    let path = ws.resolve(rel)?;
    refuse_special(&path, rel)?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| describe_io(rel, &e))?;
    let meta = file.metadata().map_err(|e| describe_io(rel, &e))?;
    if meta.is_dir() {
        return Err(format!("`{rel}` is a directory; use list_dir"));
    }
    if !meta.is_file() {
        return Err(format!("`{rel}` is not a regular file"));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(READ_CAP_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| describe_io(rel, &e))?;
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
            format!("{} lines", lines.len())
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
            "path": {"type": "string", "description": "Path relative to the workspace"},
            "content": {"type": "string", "description": "The whole new content of the file"}
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
    refuse_special(&path, rel)?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| describe_io(rel, &e))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| describe_io(rel, &e))?;
    file.write_all(content.as_bytes())
        .map_err(|e| describe_io(rel, &e))?;
    Ok(format!("wrote {} bytes to {rel}", content.len()))
}

pub fn list_dir_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Directory relative to the workspace; \".\" for its root"}
        },
        "required": ["path"]
    })
}

pub fn list_dir(ws: &Workspace, args: &Value) -> Result<String, String> {
    let rel = match args.get("path") {
        None | Some(Value::Null) => ".",
        Some(_) => str_arg(args, "path")?,
    };
    let path = ws.resolve(rel)?;
    let entries = fs::read_dir(&path).map_err(|e| describe_io(rel, &e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| describe_io(rel, &e))?;
        let mut name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            name.push('/');
        }
        names.push(name);
    }
    names.sort_unstable();
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
            "path": {"type": "string", "description": "Path relative to the workspace"},
            "old_string": {"type": "string", "description": "The exact text to replace; it must occur exactly once"},
            "new_string": {"type": "string", "description": "The text to put in its place"}
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
    let text = read_text(&path, rel, WRITE_CAP_BYTES as u64)?;
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
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| describe_io(rel, &e))?;
    file.write_all(edited.as_bytes())
        .map_err(|e| describe_io(rel, &e))?;
    Ok(format!("replaced 1 occurrence in {rel}"))
}

/// Reads a whole regular file as UTF-8 text, refusing devices, binaries and big files.
fn read_text(path: &Path, rel: &str, cap: u64) -> Result<String, String> {
    refuse_special(path, rel)?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| describe_io(rel, &e))?;
    let meta = file.metadata().map_err(|e| describe_io(rel, &e))?;
    if !meta.is_file() {
        return Err(format!("`{rel}` is not a regular file"));
    }
    if meta.len() > cap {
        return Err(format!(
            "`{rel}` is larger than {} MiB",
            cap / (1024 * 1024)
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| describe_io(rel, &e))?;
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
            "pattern": {"type": "string", "description": "A regular expression, or plain text"},
            "path": {"type": "string", "description": "Directory or file to search, relative to the workspace (default: all of it)"}
        },
        "required": ["pattern"]
    })
}

pub fn search_files(ws: &Workspace, args: &Value) -> Result<String, String> {
    let pattern = str_arg(args, "pattern")?;
    if pattern.is_empty() {
        return Err("`pattern` is empty".to_owned());
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
        let Ok(text) = read_text(file, &shown, SEARCH_FILE_CAP) else {
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

/// Refuses anything that exists and is neither a regular file nor a directory: FIFOs
/// would block the step, devices and sockets are not files to read or write. (Files
/// are also opened with `O_NONBLOCK`, so one swapped in after this check cannot block.)
fn refuse_special(path: &Path, rel: &str) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.is_dir() => {
            Err(format!("`{rel}` is not a regular file"))
        }
        _ => Ok(()),
    }
}

fn describe_io(rel: &str, err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => format!("`{rel}` does not exist"),
        std::io::ErrorKind::PermissionDenied => format!("`{rel}`: permission denied"),
        _ if err.raw_os_error() == Some(libc::ELOOP) => {
            format!("`{rel}` is a symlink, which is not followed")
        }
        _ => format!("`{rel}`: {err}"),
    }
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
