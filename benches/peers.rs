//! agentq beside two small job queues from Debian's packages (issue 21): `nq` (no
//! daemon: each job is a file in `$NQDIR`, the queue's order kept by locks on them) and
//! task-spooler (`tsp`: a daemon keeping its queue in memory). Three figures, all the
//! tools in one run, alternating round by round, medians of the rounds:
//!
//! 1. enqueue command start → job start, with an idle worker or daemon;
//! 2. 300 trivial jobs, each enqueued by a process of its own, then drained, serially
//!    (and agentq's drain alone: the 300 sent with no worker, then `worker --once`);
//! 3. one enqueue's whole process, spawn → exit, with the start-up floor beside it.
//!
//! agentq's job is a message to a session whose agent is the `scripted` provider
//! answering at once with no tools; its start is the worker's `execution.started` line
//! in the session's `events.ndjson`, seen by looking at the file's size every 0.2 ms
//! from this process. A peer's job is `sh -c ': > FILE'`, its start FILE appearing,
//! looked for the same way; so a peer's figure includes one exec of `sh`, which is
//! measured on its own and printed beside it.
//!
//! `scripts/peers install` runs first; a peer still missing is skipped with one line.
//! Run with `cargo bench --bench peers` (`-- --quick` for fewer rounds);
//! `AGENTQ_BENCH_DIR=/some/dir` measures on another file system (default: the temp
//! dir). It prints the machine and one line per figure; these are measurements, not
//! tests. Everything stays local: temp dirs, tsp's unix socket, no network.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_agentq");
/// How long any one wait may take before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(60);
/// How often a file is looked at while waiting for a job to start.
const POLL: Duration = Duration::from_micros(200);
/// The jobs of figure 2.
const JOBS: usize = 300;

const BENCH_AGENT: &str =
    "name = \"bench\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntext = \"ok\"\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Agentq,
    Spooler,
    Nq,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Agentq => "agentq",
            Tool::Spooler => "task-spooler",
            Tool::Nq => "nq",
        }
    }
}

/// How many times each figure repeats.
struct Counts {
    /// Rounds of figures 1 and 3.
    rounds: usize,
    /// Samples per tool per round of figures 1 and 3.
    samples: usize,
    /// Rounds of figure 2 (each of `JOBS` jobs per tool).
    drains: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let counts = if quick {
        Counts {
            rounds: 3,
            samples: 20,
            drains: 3,
        }
    } else {
        Counts {
            rounds: 7,
            samples: 50,
            drains: 5,
        }
    };
    // Sleeps of 0.2 ms, not 0.25: the default timer slack is 50 µs.
    // SAFETY: PR_SET_TIMERSLACK takes a number and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers");
    let _ = Command::new(&script).arg("install").status();
    let mut tools = vec![Tool::Agentq];
    for (tool, binary) in [(Tool::Spooler, "tsp"), (Tool::Nq, "nq")] {
        if on_path(binary) {
            tools.push(tool);
        } else {
            println!(
                "{}: skipped (no `{binary}` on PATH after scripts/peers install)",
                tool.name()
            );
        }
    }
    let root = bench_root();
    println!("{}", machine(&root));
    println!(
        "peers: {}; {} at the start{}",
        versions(),
        load(),
        if quick { "; --quick" } else { "" }
    );
    job_start(&tools, &root, &counts);
    drain(&tools, &root, &counts);
    enqueue_wall(&tools, &root, &counts);
    println!("{} at the end", load());
}

/// Figure 1: enqueue command start → job start, each sample once the previous job is
/// over, so the worker or daemon is idle and waiting.
fn job_start(tools: &[Tool], root: &Path, counts: &Counts) {
    let mut agentq = Agentq::new(root);
    agentq.start_worker();
    let mut events = agentq.events();
    let spooler = tools.contains(&Tool::Spooler).then(|| Spooler::start(root));
    let nq = tools.contains(&Tool::Nq).then(|| Nq::new(root));
    let markers = tempfile::tempdir_in(root).expect("a directory for the markers");
    let mut marker = 0;
    let mut next_marker = || {
        marker += 1;
        markers.path().join(format!("m{marker}"))
    };
    let mut rounds: Vec<(Tool, Vec<f64>)> = tools.iter().map(|t| (*t, Vec::new())).collect();
    let mut sh_alone = Vec::new();
    for round in 0..counts.rounds {
        for (tool, times) in rotated(&mut rounds, round) {
            let mut samples = Vec::with_capacity(counts.samples);
            for _ in 0..counts.samples {
                samples.push(match tool {
                    Tool::Agentq => {
                        let (started, finished) = (events.started, events.finished);
                        let t0 = Instant::now();
                        let send = agentq.send().spawn().expect("agentq send starts");
                        let at = poll("execution.started", || {
                            events.update();
                            events.started > started
                        });
                        reap(send, "agentq send");
                        poll("execution.finished", || {
                            events.update();
                            events.finished > finished
                        });
                        ms(at - t0)
                    }
                    Tool::Spooler => {
                        let spooler = spooler.as_ref().expect("tsp");
                        let took = marker_job(&next_marker(), |job| spooler.cmd(job));
                        spooler.wait_idle();
                        took
                    }
                    Tool::Nq => {
                        let nq = nq.as_ref().expect("nq");
                        let took = marker_job(&next_marker(), |job| nq.cmd(job));
                        nq.wait_idle();
                        took
                    }
                });
            }
            times.extend(samples);
        }
        for _ in 0..counts.samples {
            sh_alone.push(marker_job(&next_marker(), |job| {
                let mut sh = Command::new("sh");
                sh.args(&job[1..]);
                sh
            }));
        }
    }
    // Each tool's samples are in rounds of `counts.samples`: p50 and p90 of each round,
    // then their medians.
    let of_rounds = |times: &[f64], p: f64| {
        median(
            times
                .chunks(counts.samples)
                .map(|round| percentile(&sorted(round.to_vec()), p))
                .collect(),
        )
    };
    let p50 = |tool: Tool| {
        rounds
            .iter()
            .find(|(t, _)| *t == tool)
            .map(|(_, times)| of_rounds(times, 0.5))
    };
    let figures: Vec<String> = rounds
        .iter()
        .map(|(tool, times)| {
            format!(
                "{} {:.2} / {:.2} ms",
                tool.name(),
                of_rounds(times, 0.5),
                of_rounds(times, 0.9)
            )
        })
        .collect();
    let ours = p50(Tool::Agentq).unwrap_or(f64::NAN);
    let peers: Vec<f64> = [Tool::Spooler, Tool::Nq]
        .into_iter()
        .filter_map(p50)
        .collect();
    println!(
        "enqueue → job start p50 / p90   {}   ({} rounds × {} samples each, alternating; medians of the rounds' p50 and p90)   target p50 below both peers: {}",
        figures.join("   "),
        counts.rounds,
        counts.samples,
        verdict(!peers.is_empty() && peers.iter().all(|p| ours < *p))
    );
    let ranges: Vec<String> = rounds
        .iter()
        .map(|(tool, times)| {
            let p50s = sorted(
                times
                    .chunks(counts.samples)
                    .map(|round| percentile(&sorted(round.to_vec()), 0.5))
                    .collect(),
            );
            format!("{} {:.2}–{:.2}", tool.name(), p50s[0], p50s[p50s.len() - 1])
        })
        .collect();
    println!(
        "  the rounds' p50s: {}; the peers' job alone (`sh -c ': > FILE'` spawned by the benchmark → FILE seen) p50 {:.2} ms",
        ranges.join(", "),
        percentile(&sorted(sh_alone), 0.5)
    );
}

/// Figure 2: `JOBS` trivial jobs, each enqueued by a process of its own, one after
/// another, from the first enqueue to the last job finished; a fresh home, queue or
/// daemon each round.
fn drain(tools: &[Tool], root: &Path, counts: &Counts) {
    let mut live = Vec::new();
    let mut alone = Vec::new();
    let mut sends_alone = Vec::new();
    let mut spooler = Vec::new();
    let mut nq = Vec::new();
    let mut tail_after_sends = Vec::new();
    for round in 0..counts.drains {
        let mut order = tools.to_vec();
        order.rotate_left(round % tools.len());
        for tool in order {
            match tool {
                Tool::Agentq => {
                    let (rate, tail) = agentq_with_worker(root);
                    live.push(rate);
                    tail_after_sends.push(tail);
                    let (sends, drained) = agentq_drain_alone(root);
                    sends_alone.push(sends);
                    alone.push(drained);
                }
                Tool::Spooler => spooler.push(spooler_jobs(root)),
                Tool::Nq => nq.push(nq_jobs(root)),
            }
        }
    }
    let ours = median(live.clone());
    let mut figures = vec![format!(
        "agentq {ours:.0} jobs/s (drain alone {:.0}/s)",
        median(alone.clone())
    )];
    if !spooler.is_empty() {
        figures.push(format!(
            "task-spooler {:.0} jobs/s",
            median(spooler.clone())
        ));
    }
    let theirs = (!nq.is_empty()).then(|| median(nq.clone()));
    if let Some(theirs) = theirs {
        figures.push(format!("nq {theirs:.0} jobs/s"));
    }
    println!(
        "{JOBS} trivial jobs, enqueue (one process each) + drain, serial   {}   (medians of {} rounds, alternating)   target agentq ≥ nq: {}",
        figures.join("   "),
        counts.drains,
        verdict(theirs.is_some_and(|t| ours >= t))
    );
    let each = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  per round, jobs/s: agentq {}; drain alone {}; task-spooler {}; nq {}",
        each(&live),
        each(&alone),
        each(&spooler),
        each(&nq)
    );
    println!(
        "  agentq: the last job finished {:.1} ms (median) after the last send exited, the worker draining during the sends; with no worker, the {JOBS} sends alone ran at {:.0}/s",
        median(tail_after_sends),
        median(sends_alone)
    );
}

/// jobs/s of `JOBS` sends to one session with a worker running, and how long after the
/// last send exited the last job finished (ms).
fn agentq_with_worker(root: &Path) -> (f64, f64) {
    let mut agentq = Agentq::new(root);
    agentq.start_worker();
    let mut events = agentq.events();
    let t0 = Instant::now();
    for _ in 0..JOBS {
        reap(agentq.send().spawn().expect("agentq send starts"), "send");
    }
    let sent = Instant::now();
    let done = poll("every execution.finished", || {
        events.update();
        events.finished >= JOBS
    });
    assert_eq!(events.finished, JOBS, "one execution per message");
    (JOBS as f64 / (done - t0).as_secs_f64(), ms(done - sent))
}

/// sends/s of `JOBS` sends with no worker, then jobs/s of `worker --once` draining them.
fn agentq_drain_alone(root: &Path) -> (f64, f64) {
    let agentq = Agentq::new(root);
    let t0 = Instant::now();
    for _ in 0..JOBS {
        reap(agentq.send().spawn().expect("agentq send starts"), "send");
    }
    let sends = JOBS as f64 / t0.elapsed().as_secs_f64();
    let mut events = agentq.events();
    let t0 = Instant::now();
    let once = agentq
        .cmd(&["worker", "--once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agentq worker starts");
    reap(once, "agentq worker --once");
    let took = t0.elapsed();
    events.update();
    assert_eq!(events.finished, JOBS, "worker --once drained the session");
    (sends, JOBS as f64 / took.as_secs_f64())
}

/// jobs/s of `JOBS` `tsp true`, then `tsp -w` (the last added job, one slot: all of
/// them), on a daemon started before.
fn spooler_jobs(root: &Path) -> f64 {
    let spooler = Spooler::start(root);
    let t0 = Instant::now();
    for _ in 0..JOBS {
        reap(spooler.cmd(&["true"]).spawn().expect("tsp starts"), "tsp");
    }
    spooler.wait_idle();
    let rate = JOBS as f64 / t0.elapsed().as_secs_f64();
    let list = spooler.cmd(&["-l"]).stdout(Stdio::piped()).output();
    let finished = list.map_or(0, |out| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("finished"))
            .count()
    });
    assert_eq!(finished, JOBS, "every tsp job finished");
    rate
}

/// jobs/s of `JOBS` `nq true`, then `nq -w` (all of them).
fn nq_jobs(root: &Path) -> f64 {
    let nq = Nq::new(root);
    let t0 = Instant::now();
    for _ in 0..JOBS {
        reap(nq.cmd(&["true"]).spawn().expect("nq starts"), "nq");
    }
    nq.wait_idle();
    let rate = JOBS as f64 / t0.elapsed().as_secs_f64();
    let done = std::fs::read_dir(nq.queue())
        .expect("NQDIR")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|job| job.contains("[exited with status 0."))
        .count();
    assert_eq!(done, JOBS, "every nq job finished");
    rate
}

/// What figure 3 times: the enqueues, and two start-up floors for reference.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wall {
    Send,
    Spooler,
    Nq,
    Version,
    True,
}

/// Figure 3: one enqueue's process, spawn → exit, each once the previous job is over.
fn enqueue_wall(tools: &[Tool], root: &Path, counts: &Counts) {
    let mut agentq = Agentq::new(root);
    agentq.start_worker();
    let mut events = agentq.events();
    let spooler = tools.contains(&Tool::Spooler).then(|| Spooler::start(root));
    let nq = tools.contains(&Tool::Nq).then(|| Nq::new(root));
    let mut kinds = vec![Wall::Send];
    if spooler.is_some() {
        kinds.push(Wall::Spooler);
    }
    if nq.is_some() {
        kinds.push(Wall::Nq);
    }
    kinds.extend([Wall::Version, Wall::True]);
    let mut rounds: Vec<(Wall, Vec<f64>)> = kinds.iter().map(|k| (*k, Vec::new())).collect();
    for round in 0..counts.rounds {
        for (kind, times) in rotated(&mut rounds, round) {
            for _ in 0..counts.samples {
                let finished = events.finished;
                let mut cmd = match kind {
                    Wall::Send => agentq.send(),
                    Wall::Spooler => spooler.as_ref().expect("tsp").cmd(&["true"]),
                    Wall::Nq => nq.as_ref().expect("nq").cmd(&["true"]),
                    Wall::Version => {
                        let mut version = Command::new(BIN);
                        version.arg("--version");
                        version
                    }
                    Wall::True => Command::new("true"),
                };
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let t0 = Instant::now();
                let status = cmd.status().expect("the command starts");
                times.push(ms(t0.elapsed()));
                assert!(status.success(), "an enqueue failed");
                match kind {
                    Wall::Send => {
                        poll("execution.finished", || {
                            events.update();
                            events.finished > finished
                        });
                    }
                    Wall::Spooler => spooler.as_ref().expect("tsp").wait_idle(),
                    Wall::Nq => nq.as_ref().expect("nq").wait_idle(),
                    Wall::Version | Wall::True => {}
                }
            }
        }
    }
    let p50 = |kind: Wall| {
        rounds.iter().find(|(k, _)| *k == kind).map(|(_, times)| {
            median(
                times
                    .chunks(counts.samples)
                    .map(|round| percentile(&sorted(round.to_vec()), 0.5))
                    .collect(),
            )
        })
    };
    let send = p50(Wall::Send).unwrap_or(f64::NAN);
    let mut figures = vec![format!("agentq send {send:.2} ms")];
    if let Some(t) = p50(Wall::Spooler) {
        figures.push(format!("task-spooler `tsp true` {t:.2} ms"));
    }
    let theirs = p50(Wall::Nq);
    if let Some(t) = theirs {
        figures.push(format!(
            "nq `nq true` {t:.2} ms (send / nq ×{:.2})",
            send / t
        ));
    }
    println!(
        "one enqueue, whole process (spawn → exit) p50   {}   ({} rounds × {} samples each, alternating; medians of the rounds' p50)   target send ≤ 1.5× nq: {}",
        figures.join("   "),
        counts.rounds,
        counts.samples,
        verdict(theirs.is_some_and(|t| send <= 1.5 * t))
    );
    println!(
        "  process start-up floor, p50: `agentq --version` {:.2} ms, `true` {:.2} ms (spawned the same way)",
        p50(Wall::Version).unwrap_or(f64::NAN),
        p50(Wall::True).unwrap_or(f64::NAN)
    );
}

/// A temp home with the `bench` agent and one session of it, and maybe a worker,
/// stopped when dropped.
struct Agentq {
    dir: tempfile::TempDir,
    id: String,
    worker: Option<Child>,
}

impl Agentq {
    fn new(root: &Path) -> Agentq {
        let mut home = Agentq {
            dir: tempfile::tempdir_in(root).expect("a temp home"),
            id: String::new(),
            worker: None,
        };
        home.ok(&["init"]);
        std::fs::write(home.dir.path().join("agents/bench.toml"), BENCH_AGENT)
            .expect("the bench agent");
        home.id = home.ok(&["session", "new", "--agent", "bench"]);
        home
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--home")
            .arg(self.dir.path())
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("AGENTQ_STORE")
            .stdin(Stdio::null());
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("agentq runs");
        assert!(
            out.status.success(),
            "agentq {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `agentq send ID x`, its output discarded.
    fn send(&self) -> Command {
        let mut cmd = self.cmd(&["send", &self.id, "x"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    fn events(&self) -> Events {
        Events::at_end(
            self.dir
                .path()
                .join("sessions")
                .join(&self.id)
                .join("events.ndjson"),
        )
    }

    /// Starts `agentq worker` and waits for one message to be handled: the worker lists
    /// every inbox when it starts, and the figures are for a worker idle and waiting.
    fn start_worker(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("bench-worker.log"))
            .expect("the worker's log");
        let mut events = self.events();
        self.worker = Some(
            self.cmd(&["worker"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agentq worker starts"),
        );
        reap(self.send().spawn().expect("agentq send starts"), "send");
        poll("the warm-up's execution.finished", || {
            events.update();
            events.finished > 0
        });
    }
}

impl Drop for Agentq {
    fn drop(&mut self) {
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(worker.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while worker.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = worker.kill();
        let _ = worker.wait();
    }
}

/// A session's `events.ndjson` read as it grows: its size looked at on each update,
/// only the new bytes read, the executions' starts and ends counted.
struct Events {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    started: usize,
    finished: usize,
}

impl Events {
    fn at_end(path: PathBuf) -> Events {
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        Events {
            path,
            offset,
            partial: Vec::new(),
            started: 0,
            finished: 0,
        }
    }

    fn update(&mut self) {
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if len <= self.offset {
            return;
        }
        let mut file = std::fs::File::open(&self.path).expect("the event log");
        file.seek(SeekFrom::Start(self.offset)).expect("seek");
        let read = file
            .read_to_end(&mut self.partial)
            .expect("the event log reads");
        self.offset += read as u64;
        let complete = self
            .partial
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        for line in self.partial[..complete].split(|b| *b == b'\n') {
            if contains(line, br#""type":"execution.started""#) {
                self.started += 1;
            } else if contains(line, br#""type":"execution.finished""#) {
                self.finished += 1;
            }
        }
        self.partial.drain(..complete);
    }
}

/// A task-spooler daemon on a socket of its own, one slot, its output files in its
/// temp dir; killed (`tsp -K`) when dropped.
struct Spooler {
    dir: tempfile::TempDir,
}

impl Spooler {
    fn start(root: &Path) -> Spooler {
        let spooler = Spooler {
            dir: tempfile::tempdir_in(root).expect("a dir for tsp"),
        };
        std::fs::create_dir(spooler.dir.path().join("out")).expect("tsp's output dir");
        // Any command starts the daemon; its stdio must not be a pipe of ours.
        let status = spooler
            .cmd(&["-S", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("tsp starts");
        assert!(status.success(), "tsp -S 1 failed");
        spooler
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("tsp");
        cmd.args(args)
            .env("TS_SOCKET", self.dir.path().join("socket"))
            .env("TMPDIR", self.dir.path().join("out"))
            .env_remove("TS_SLOTS")
            .env_remove("TS_ONFINISH")
            .env_remove("TS_ENV")
            .env_remove("TS_SAVELIST")
            .env_remove("TS_MAXFINISHED")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Waits for the last job added (with one slot, every job before it too).
    fn wait_idle(&self) {
        let _ = self.cmd(&["-w"]).status();
    }
}

impl Drop for Spooler {
    fn drop(&mut self) {
        let _ = self.cmd(&["-K"]).status();
    }
}

/// An nq queue: a directory of its own as `NQDIR`.
struct Nq {
    dir: tempfile::TempDir,
}

impl Nq {
    fn new(root: &Path) -> Nq {
        Nq {
            dir: tempfile::tempdir_in(root).expect("a dir for nq"),
        }
    }

    fn queue(&self) -> PathBuf {
        self.dir.path().join("q")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nq");
        cmd.args(args)
            .env("NQDIR", self.queue())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Waits for every job of the queue.
    fn wait_idle(&self) {
        let _ = self.cmd(&["-w"]).status();
    }
}

/// Milliseconds from spawning the command `enqueue` makes of a job `sh -c ': > MARKER'`
/// to MARKER appearing; the enqueuing process is reaped before returning.
fn marker_job(marker: &Path, enqueue: impl FnOnce(&[&str]) -> Command) -> f64 {
    let job = format!(": > '{}'", marker.display());
    let mut cmd = enqueue(&["sh", "-c", &job]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let child = cmd.spawn().expect("the enqueue starts");
    let at = poll("a job's marker", || marker.exists());
    reap(child, "an enqueue");
    ms(at - t0)
}

/// Calls `done` every 0.2 ms until it says yes, returning when it did.
fn poll(what: &str, mut done: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if done() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

fn reap(mut child: Child, what: &str) {
    let status = child.wait().expect("the child is waited for");
    assert!(status.success(), "{what} failed: {status}");
}

/// The tools (or kinds) in the order of round `round`: rotated, so that none always
/// runs first.
fn rotated<T>(items: &mut [T], round: usize) -> impl Iterator<Item = &mut T> {
    let n = items.len();
    let (front, back) = items.split_at_mut(round % n);
    back.iter_mut().chain(front.iter_mut())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(values: Vec<f64>) -> f64 {
    percentile(&sorted(values), 0.5)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// Where the homes, queues and sockets go: `AGENTQ_BENCH_DIR`, else the temp dir.
fn bench_root() -> PathBuf {
    std::env::var_os("AGENTQ_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn machine(root: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let df = Command::new("df")
        .args(["--output=fstype,target"])
        .arg(root)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let mut fields = df.lines().nth(1).unwrap_or_default().split_whitespace();
    let (fs, mount) = (
        fields.next().unwrap_or("unknown").to_owned(),
        fields.next().unwrap_or("?").to_owned(),
    );
    let options = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .rfind(|l| l.split_whitespace().nth(1) == Some(mount.as_str()))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .unwrap_or_default();
    let size = std::fs::metadata(BIN).map_or(0, |m| m.len());
    format!(
        "machine: {cores} cores, {cpu}, Linux {}; {} on {fs} (mounted at {mount}, {options}); agentq {} (release binary, {:.0} MB)",
        kernel.trim(),
        root.display(),
        env!("CARGO_PKG_VERSION"),
        size as f64 / 1e6
    )
}

fn versions() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}, ", "nq", "task-spooler"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim_end_matches([',', ' ']).to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "versions unknown".to_owned())
}

fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let avg: Vec<&str> = avg.split_whitespace().take(3).collect();
    format!("load average {}", avg.join(" "))
}
