//! Class 2: a file tool never reads or writes an inode outside the workspace (hard links, trailing slashes, command `cwd`).
//!
//! Each test lays out a workspace of hostile inodes, lets a scripted model point every
//! tool at each of them in one step, and checks each answer: a tool error naming the
//! path and why, or (for the controls beside them) the right content. Nothing outside
//! the workspace may change or appear in what the model is told.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use super::*;

/// What the outside file holds: it must never reach a tool result.
const OUTSIDE: &str = "OUTSIDE SECRET\n";

/// One tool call of the step and the fragments its result must contain.
struct Case {
    tool: String,
    args: Value,
    refused: bool,
    says: Vec<String>,
}

fn refused(tool: &str, args: Value, says: &[&str]) -> Case {
    Case {
        tool: tool.to_owned(),
        args,
        refused: true,
        says: says.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn works(tool: &str, args: Value, says: &[&str]) -> Case {
    Case {
        refused: false,
        ..refused(tool, args, says)
    }
}

/// The same refusal from every file tool that takes a file path.
/// Refusals of `path` by the file tools, `search_files` (searching for `pattern`) and,
/// when `listed`, `list_dir`: every tool that takes a path.
fn refused_by_every_tool(
    cases: &mut Vec<Case>,
    path: &str,
    pattern: &str,
    listed: bool,
    says: &[&str],
) {
    refused_by_file_tools(cases, path, says);
    cases.push(refused(
        "search_files",
        json!({"pattern": pattern, "path": path}),
        says,
    ));
    if listed {
        cases.push(refused("list_dir", json!({"path": path}), says));
    }
}

fn refused_by_file_tools(cases: &mut Vec<Case>, path: &str, says: &[&str]) {
    cases.push(refused("read_file", json!({"path": path}), says));
    cases.push(refused(
        "write_file",
        json!({"path": path, "content": "overwritten"}),
        says,
    ));
    cases.push(refused(
        "edit_file",
        json!({"path": path, "old_string": "SECRET", "new_string": "x"}),
        says,
    ));
}

/// An agent making every case's call in one step, with all file tools and `commands`
/// (TOML of `[[tools.command]]` tables) granted.
fn agent(name: &str, cases: &[Case], commands: &str) -> String {
    let calls: Vec<String> = cases
        .iter()
        .map(|case| {
            let args: Vec<String> = case
                .args
                .as_object()
                .unwrap()
                .iter()
                // JSON string escapes are valid in TOML basic strings.
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            format!(
                "  {{ name = \"{}\", arguments = {{ {} }} }},",
                case.tool,
                args.join(", ")
            )
        })
        .collect();
    format!(
        r#"name = "{name}"
[model]
provider = "scripted"
[[model.script]]
text = "trying every inode"
tool_calls = [
{}
]
[[model.script]]
text = "done"
[limits]
max_consecutive_errors = 10
[tools]
builtin = ["read_file", "write_file", "edit_file", "list_dir", "search_files"]
{commands}
"#,
        calls.join("\n")
    )
}

/// Runs one message of session `id` (the worker must not block, whatever it meets) and
/// returns the result of each call of its first step, in the order of the calls.
fn run_step(env: &TestEnv, id: &str, calls: usize) -> Vec<(bool, String)> {
    let child = env
        .cmd()
        .args(["run", "--session", id, "go", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentq run");
    let out = Background { child }.wait(LONG);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let messages = env.json(&["session", "messages", id, "--json"]);
    (1..=calls)
        .map(|n| {
            let call_id = format!("call_1_{n}");
            let result = messages
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["role"] == "tool" && m["tool_call_id"] == call_id.as_str())
                .unwrap_or_else(|| panic!("no result for {call_id}"));
            (
                result["is_error"] == true,
                result["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Checks every result against its case; returns how many hostile cases were checked.
fn check(cases: &[Case], results: &[(bool, String)]) -> u64 {
    assert_eq!(cases.len(), results.len());
    for (case, (is_error, content)) in cases.iter().zip(results) {
        let what = format!("{} {}", case.tool, case.args);
        assert_eq!(*is_error, case.refused, "{what}: {content}");
        for fragment in &case.says {
            assert!(
                content.contains(fragment.as_str()),
                "{what}:\n  got      {content}\n  expected {fragment}"
            );
        }
        assert!(
            !content.contains(OUTSIDE.trim()),
            "{what} told the model the outside file: {content}"
        );
    }
    cases.iter().filter(|c| c.refused).count() as u64
}

/// A session of `agent` (defined already), its workspace holding `in.txt` and
/// `sub/ok.txt`, and a directory outside the home holding `secret.txt`.
fn setup(env: &TestEnv, agent: &str) -> (String, PathBuf, tempfile::TempDir) {
    let id = env.new_session(agent);
    let ws = env.session_dir(&id).join("workspace");
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    std::fs::write(ws.join("in.txt"), "inside\n").unwrap();
    std::fs::write(ws.join("sub/ok.txt"), "inside too\n").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), OUTSIDE).unwrap();
    (id, ws, outside)
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) reads a NUL-terminated path, which CString guarantees.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

#[test]
fn no_file_tool_touches_an_inode_the_workspace_does_not_own_alone() {
    let env = TestEnv::new();
    // The definition is rewritten once the layout is known: a session needs an agent.
    env.write_agent("inodes", &agent("inodes", &[], ""));
    let (id, ws, outside) = setup(&env, "inodes");
    let secret = outside.path().join("secret.txt");
    std::fs::hard_link(&secret, ws.join("hard.txt")).unwrap();
    std::fs::hard_link(&secret, ws.join("sub/hard.txt")).unwrap();
    symlink("hard.txt", ws.join("alias-hard")).unwrap();
    symlink("sub", ws.join("link-in")).unwrap();
    symlink(outside.path(), ws.join("link-out")).unwrap();
    symlink(&secret, ws.join("link-out-file")).unwrap();
    mkfifo(&ws.join("fifo"));
    let _socket = std::os::unix::net::UnixListener::bind(ws.join("sock")).unwrap();
    // A character device like /dev/null (1, 3), where the test may make one (root).
    let device = std::process::Command::new("mknod")
        .arg(ws.join("nul"))
        .args(["c", "1", "3"])
        .output()
        .is_ok_and(|out| out.status.success());

    let mut cases = Vec::new();
    // Hard links, reached directly, in a subdirectory, through a symlink to the link,
    // and through a symlinked directory: refused by every tool, whatever it would do.
    for path in ["hard.txt", "sub/hard.txt", "alias-hard", "link-in/hard.txt"] {
        let says = [path, "has 3 hard links, so other paths", "single link"];
        refused_by_every_tool(&mut cases, path, "SECRET", false, &says);
    }
    // A FIFO would block the worker forever; a socket or a device is no file either.
    let mut special = vec![("fifo", "a FIFO"), ("sock", "a socket")];
    if device {
        special.push(("nul", "a device"));
    }
    for (path, kind) in special {
        let says = [path, kind, "only regular files"];
        refused_by_every_tool(&mut cases, path, "a", true, &says);
    }
    // Symlinks leading out, as the last component and as a directory on the way.
    for path in ["link-out-file", "link-out/secret.txt"] {
        let says = [path, "outside the workspace"];
        refused_by_every_tool(&mut cases, path, "SECRET", false, &says);
    }
    cases.push(refused(
        "list_dir",
        json!({"path": "link-out"}),
        &["link-out", "outside the workspace"],
    ));
    // Controls: what the workspace owns alone stays usable, and a walk over all of it
    // skips what it may not read (without blocking on the FIFO).
    cases.push(works("read_file", json!({"path": "in.txt"}), &["inside"]));
    cases.push(works(
        "read_file",
        json!({"path": "link-in/ok.txt"}),
        &["inside too"],
    ));
    cases.push(works(
        "search_files",
        json!({"pattern": "SECRET"}),
        &["no matches for `SECRET`"],
    ));
    cases.push(works(
        "search_files",
        json!({"pattern": "inside"}),
        &["in.txt:1: inside", "sub/ok.txt:1: inside too"],
    ));
    cases.push(works(
        "list_dir",
        json!({"path": "."}),
        &["fifo", "hard.txt", "sub/"],
    ));

    env.write_agent("inodes", &agent("inodes", &cases, ""));
    let results = run_step(&env, &id, cases.len());
    let checked = check(&cases, &results);

    assert_eq!(std::fs::read_to_string(&secret).unwrap(), OUTSIDE);
    assert_eq!(
        std::fs::metadata(&secret).unwrap().nlink(),
        3,
        "the outside file keeps its links"
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "nothing was created outside"
    );
    let recorded: Vec<String> = files_containing(&env.session_dir(&id), OUTSIDE.trim().as_bytes())
        .into_iter()
        .filter(|path| !Path::new(path).starts_with(&ws))
        .collect();
    assert!(
        recorded.is_empty(),
        "the outside content was recorded: {recorded:?}"
    );
    report("hostile_inodes", &[("cases", checked)]);
}

#[test]
fn a_file_taken_for_a_directory_or_a_directory_for_a_file_is_refused_everywhere() {
    let env = TestEnv::new();
    env.write_agent("shapes", &agent("shapes", &[], ""));
    let (id, ws, outside) = setup(&env, "shapes");
    symlink("sub", ws.join("link-in")).unwrap();
    symlink(outside.path(), ws.join("link-out")).unwrap();
    mkfifo(&ws.join("fifo"));

    let mut cases = Vec::new();
    // `in.txt/` and `in.txt/.` name a directory; `in.txt/x` goes through a file.
    for path in ["in.txt/", "in.txt/.", "./in.txt/"] {
        let says = [path, "ends with `/`", "`in.txt` is not one"];
        refused_by_every_tool(&mut cases, path, "inside", true, &says);
    }
    for path in ["in.txt/x", "in.txt/x/y.txt"] {
        let says = [path, "goes through `in.txt`, which is a file"];
        refused_by_every_tool(&mut cases, path, "inside", true, &says);
    }
    // A missing path written as a directory is no file to create.
    cases.push(refused(
        "write_file",
        json!({"path": "newdir/", "content": "x"}),
        &["newdir/", "names a directory"],
    ));
    // A directory where a file is expected, and a file where a directory is.
    for path in ["sub", "link-in", "."] {
        refused_by_file_tools(&mut cases, path, &[path, "is a directory, not a file"]);
    }
    cases.push(refused(
        "list_dir",
        json!({"path": "in.txt"}),
        &["`in.txt` is a file, not a directory"],
    ));
    // A declared command's working directory is resolved the same way.
    let cwds = [
        ("in.txt", "`in.txt` is a file, not a directory"),
        ("in.txt/", "ends with `/`"),
        ("in.txt/x", "goes through `in.txt`, which is a file"),
        ("fifo", "a FIFO"),
        ("missing", "`missing` does not exist"),
        ("link-out", "outside the workspace"),
    ];
    let mut commands = String::new();
    for (i, (cwd, says)) in cwds.iter().enumerate() {
        let name = format!("pwd_{i}");
        let _ = writeln!(
            commands,
            "[[tools.command]]\nname = \"{name}\"\nargv = [\"pwd\"]\ncwd = \"{cwd}\""
        );
        let unusable = format!("the working directory of `{name}` is unusable");
        cases.push(refused(&name, json!({}), &[&unusable, says]));
    }
    // Controls: `.` components, a trailing slash on a directory, a symlinked cwd inside.
    cases.push(works("read_file", json!({"path": "./in.txt"}), &["inside"]));
    cases.push(works(
        "read_file",
        json!({"path": "sub/./ok.txt"}),
        &["inside too"],
    ));
    cases.push(works("list_dir", json!({"path": "sub/"}), &["ok.txt"]));
    cases.push(works("list_dir", json!({"path": "link-in/."}), &["ok.txt"]));
    cases.push(works(
        "search_files",
        json!({"pattern": "too", "path": "sub/"}),
        &["sub/ok.txt:1: inside too"],
    ));
    commands
        .push_str("[[tools.command]]\nname = \"pwd_ok\"\nargv = [\"pwd\"]\ncwd = \"link-in/\"\n");
    cases.push(works("pwd_ok", json!({}), &["/workspace/sub\n"]));

    env.write_agent("shapes", &agent("shapes", &cases, &commands));
    let results = run_step(&env, &id, cases.len());
    let checked = check(&cases, &results);

    assert_eq!(
        std::fs::read_to_string(ws.join("in.txt")).unwrap(),
        "inside\n"
    );
    assert!(!ws.join("newdir").exists() && !ws.join("x").exists());
    report("hostile_path_shapes", &[("cases", checked)]);
}

#[test]
fn writes_replace_the_file_by_rename_keeping_its_mode_never_writing_into_its_inode() {
    let env = TestEnv::new();
    env.write_agent("writes", &agent("writes", &[], ""));
    let (id, ws, _outside) = setup(&env, "writes");
    symlink("sub", ws.join("link-in")).unwrap();
    let files = [("in.txt", 0o640), ("run.sh", 0o755), ("sub/ok.txt", 0o600)];
    for (path, mode) in files {
        std::fs::write(ws.join(path), "old text\n").unwrap();
        std::fs::set_permissions(ws.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let inode = |path: &str| std::fs::metadata(ws.join(path)).unwrap().ino();
    let before: Vec<u64> = files.iter().map(|(path, _)| inode(path)).collect();
    let cases = vec![
        works(
            "write_file",
            json!({"path": "in.txt", "content": "new text\n"}),
            &["wrote 9 bytes to in.txt"],
        ),
        works(
            "edit_file",
            json!({"path": "run.sh", "old_string": "old", "new_string": "new"}),
            &["replaced 1 occurrence in run.sh"],
        ),
        works(
            "write_file",
            json!({"path": "link-in/ok.txt", "content": "new text\n"}),
            &["wrote 9 bytes"],
        ),
        works(
            "write_file",
            json!({"path": "fresh/new.txt", "content": "new text\n"}),
            &["wrote 9 bytes"],
        ),
    ];
    env.write_agent("writes", &agent("writes", &cases, ""));
    let results = run_step(&env, &id, cases.len());
    check(&cases, &results);

    let mut checked = 0;
    for ((path, mode), old_inode) in files.iter().zip(before) {
        let meta = std::fs::metadata(ws.join(path)).unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.join(path)).unwrap(),
            "new text\n"
        );
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            *mode,
            "{path} keeps its mode"
        );
        assert_ne!(
            meta.ino(),
            old_inode,
            "{path} was written into its old inode"
        );
        checked += 1;
    }
    let fresh = std::fs::metadata(ws.join("fresh/new.txt")).unwrap();
    assert_eq!(
        fresh.permissions().mode() & 0o7777 & !0o644,
        0,
        "a new file is at most 0644"
    );
    checked += 1;
    assert!(
        std::fs::symlink_metadata(ws.join("link-in"))
            .unwrap()
            .is_symlink(),
        "a symlink inside is written through, not replaced"
    );
    checked += 1;
    let temps: Vec<PathBuf> = ["", "sub", "fresh"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(ws.join(dir)).unwrap().flatten())
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "temp files left behind: {temps:?}");
    report("hostile_writes", &[("cases", checked)]);
}
