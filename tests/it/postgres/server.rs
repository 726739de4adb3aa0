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
    let _ = DATA.set(data.clone());
    // SAFETY: registers a function without arguments to run at exit.
    unsafe { libc::atexit(clean_up) };
    init_cluster(&bin, user, &data, "")?;
    let port = free_port();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let mut postgres = postgres_command(&bin, user, &data, port, "127.0.0.1", false);
    // The server's parent is this thread, which never ends before the process does.
    std::thread::spawn(move || {
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
    wait_accepting(port)?;
    Ok(Server { port })
}

/// Makes `data` (owned by the postgres user) and a cluster in `data/db`: `USER` its
/// trusted superuser, [`PASSWORD_USER`] asked for a password, and `hba` (pg_hba.conf
/// lines) trusted besides.
fn init_cluster(bin: &Path, user: (u32, u32), data: &Path, hba: &str) -> Result<(), String> {
    std::fs::create_dir(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    std::os::unix::fs::chown(data, Some(user.0), Some(user.1))
        .map_err(|e| format!("cannot give {} to postgres: {e}", data.display()))?;
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
        .current_dir(data)
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
    let hba_path = data.join("db/pg_hba.conf");
    let trusted =
        std::fs::read_to_string(&hba_path).map_err(|e| format!("cannot read pg_hba.conf: {e}"))?;
    std::fs::write(
        &hba_path,
        format!("host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n{hba}{trusted}"),
    )
    .map_err(|e| format!("cannot write pg_hba.conf: {e}"))
}

/// The server of the cluster in `data/db` on `port` and the addresses `listen`, its
/// socket in `data`. `durable`: a commit is written to the WAL before it is
/// acknowledged (`synchronous_commit`), so a server killed and started again loses no
/// committed transaction; the flushes to the disk stay off (the machine does not crash).
fn postgres_command(
    bin: &Path,
    user: (u32, u32),
    data: &Path,
    port: u16,
    listen: &str,
    durable: bool,
) -> Command {
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(data.join("db"))
        .args(["-p", &port.to_string()])
        .arg("-c")
        .arg(format!("listen_addresses={listen}"));
    if !FLUSHES.load(Ordering::Relaxed) {
        // A test server's data dies with the tests: nothing needs to survive a
        // crash of the machine, and the suites run several times faster without the
        // flushes.
        postgres
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .arg("-c")
            .arg(format!(
                "synchronous_commit={}",
                if durable { "on" } else { "off" }
            ));
    }
    postgres
        .arg("-c")
        .arg(format!("unix_socket_directories={}", data.display()))
        .current_dir(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_user(&mut postgres, user, true);
    postgres
}

/// Waits until the server on `port` accepts connections, at most 30 s.
fn wait_accepting(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(port, "postgres") {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("the server did not accept connections: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A server of one test's own, beside the shared one: the test may stop it and start
/// it again on the same port and data directory (the database restarted mid-run), and
/// it may listen on more addresses than loopback (the host side of a network
/// namespace's veth). Its commits are durable across such a restart. Stopped, and its
/// directory removed, when dropped; the parent-death signal ends it with the thread
/// that started it (the test's) if the test dies first.
pub struct PrivateServer {
    pub port: u16,
    bin: PathBuf,
    user: (u32, u32),
    data: PathBuf,
    listen: String,
    child: Option<std::process::Child>,
}

impl PrivateServer {
    /// Initialises and starts a server listening on 127.0.0.1 and `addresses`, which
    /// pg_hba.conf trusts the networks `trusted` (CIDR) from, besides loopback.
    pub fn start(addresses: &[&str], trusted: &[&str]) -> Result<PrivateServer, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let bin = bin_dir()?;
        let user = postgres_user()?;
        let data = std::env::temp_dir().join(format!(
            "agentq-pg-{}-private-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data);
        let hba: String = trusted
            .iter()
            .map(|net| format!("host all all {net} trust\n"))
            .collect();
        let listen = std::iter::once("127.0.0.1")
            .chain(addresses.iter().copied())
            .collect::<Vec<_>>()
            .join(",");
        let mut server = PrivateServer {
            port: free_port(),
            bin,
            user,
            data,
            listen,
            child: None,
        };
        init_cluster(&server.bin, user, &server.data, &hba)?;
        server.start_again()?;
        Ok(server)
    }

    /// Starts the stopped server again, on its port and data directory.
    pub fn start_again(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the server is running already");
        let child = postgres_command(
            &self.bin,
            self.user,
            &self.data,
            self.port,
            &self.listen,
            true,
        )
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
        self.child = Some(child);
        wait_accepting(self.port)
    }

    /// Stops the server with an immediate shutdown (SIGQUIT: every connection cut at
    /// once, as a crash would, and crash recovery at the next start) and waits for it
    /// to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signals the server this value started and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }

    /// The URL of a new, empty database on this server, reached at `host`.
    pub fn new_database(&self, host: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "p{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = connect(self.port, "postgres").expect("the admin connection");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("CREATE DATABASE");
        format!("postgres://{USER}@{host}:{}/{name}", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        // Not SIGKILL: the postmaster's backends would outlive it for a while.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
