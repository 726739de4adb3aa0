//! A real PostgreSQL for the tests, from Debian's packages (`scripts/postgres
//! install`): one server per test process, initialised in a temp directory as the
//! `postgres` user (initdb refuses root), listening on a free loopback port. It is
//! started on first use from a thread that lives as long as the process, with a
//! parent-death signal, and an exit handler kills it and removes its directory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The user the tests connect as (initdb's superuser; local connections are trusted).
pub const USER: &str = "agentq";

/// A role that must give its password (scram-sha-256), for the tests of wrong
/// credentials; the tests create it (`CREATE ROLE … PASSWORD`), the server only asks.
pub const PASSWORD_USER: &str = "agentq_pw";

pub struct Server {
    pub port: u16,
}

/// Whether the server flushes as a production one does (fsync, synchronous_commit and
/// full_page_writes on: the server's defaults), for the benchmarks, whose figures are
/// for such a server; set before the first [`server`] call. The tests' server does not
/// flush: its data dies with the tests, and the suites run several times faster.
pub static FLUSHES: AtomicBool = AtomicBool::new(false);

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static PID: AtomicU32 = AtomicU32::new(0);
static DATA: OnceLock<PathBuf> = OnceLock::new();

/// The shared server, started on first use; `Err` says why there is none here.
pub fn server() -> Result<&'static Server, String> {
    SERVER
        .get_or_init(start)
        .as_ref()
        .map_err(|why| why.clone())
}

/// The URL of a new, empty database on the shared server.
pub fn new_database() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let server = server().unwrap_or_else(|why| panic!("no PostgreSQL: {why}"));
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = connect(server.port, "postgres").expect("the admin connection");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("CREATE DATABASE");
    format!("postgres://{USER}@127.0.0.1:{}/{name}", server.port)
}

fn connect(port: u16, database: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(USER)
        .dbname(database)
        .connect_timeout(Duration::from_secs(2))
        .connect(postgres::NoTls)
}

fn bin_dir() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres");
    let out = Command::new(script)
        .arg("bin")
        .output()
        .map_err(|e| format!("cannot run scripts/postgres: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> Result<(u32, u32), String> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam reads the NUL-terminated name; the entry it returns is read
    // at once, before any other call could reuse its storage.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err("there is no postgres user to run the server as".to_owned());
    }
    // SAFETY: checked non-null above.
    let entry = unsafe { &*entry };
    Ok((entry.pw_uid, entry.pw_gid))
}

/// Runs the command as `uid:gid`, and (with `tied`) ends it with this process.
fn as_user(command: &mut Command, (uid, gid): (u32, u32), tied: bool) {
    // SAFETY: only async-signal-safe calls between fork and exec. The parent-death
    // signal is set after the uid change, which would clear it.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if tied && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills the server and removes its directory when the test process exits.
extern "C" fn clean_up() {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        // SAFETY: signals a process this test process started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    if let Some(data) = DATA.get() {
        let _ = std::fs::remove_dir_all(data);
    }
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    let user = postgres_user()?;
    let data = std::env::temp_dir().join(format!("agentq-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    std::os::unix::fs::chown(&data, Some(user.0), Some(user.1))
        .map_err(|e| format!("cannot give {} to postgres: {e}", data.display()))?;
    let _ = DATA.set(data.clone());
    // SAFETY: registers a function without arguments to run at exit.
    unsafe { libc::atexit(clean_up) };
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(data.join("db"))
        .args([
            "-U",
            USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .current_dir(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_user(&mut initdb, user, false);
    let out = initdb
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // First, so that it wins over initdb's `trust` lines for the other users.
    let hba = data.join("db/pg_hba.conf");
    let trusted =
        std::fs::read_to_string(&hba).map_err(|e| format!("cannot read pg_hba.conf: {e}"))?;
    std::fs::write(
        &hba,
        format!("host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n{trusted}"),
    )
    .map_err(|e| format!("cannot write pg_hba.conf: {e}"))?;
    let port = free_port();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let db_dir = data.join("db");
    let socket_dir = data.clone();
    // The server's parent is this thread, which never ends before the process does.
    std::thread::spawn(move || {
        let mut postgres = Command::new(bin.join("postgres"));
        postgres.arg("-D").arg(&db_dir).args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
        ]);
        if !FLUSHES.load(Ordering::Relaxed) {
            postgres
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        postgres
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .current_dir(&socket_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut postgres, user, true);
        match postgres.spawn() {
            Ok(mut child) => {
                PID.store(child.id(), Ordering::Relaxed);
                let _ = started_tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = started_tx.send(Err(format!("cannot start postgres: {e}")));
            }
        }
        // Parked, so that the parent-death signal comes only with the process.
        loop {
            std::thread::park();
        }
    });
    started_rx
        .recv()
        .map_err(|_| "the server thread ended".to_owned())??;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(port, "postgres") {
            Ok(_) => return Ok(Server { port }),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("the server did not accept connections: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
