//! Where a command's output goes: the process's standard output and error, or buffers
//! a test reads back ([`Output::captured`]). Commands and the renderers they start
//! print through an [`Output`], never through `print!` or a global.
//!
//! What it guarantees, whichever the destination:
//! - no write panics: a failed write is an error (on stdout, one naming standard
//!   output, of the same kind, so `main` still tells a closed pipe, which is success,
//!   apart from a full disk), and a note on stderr that cannot be written is dropped,
//!   as there is no one left to tell;
//! - a [`Stream`] is a handle: cloned into a renderer that runs in a task (it is
//!   `Send`), every clone writes to the same place, in order;
//! - what people read goes through [`Output::human`], which neutralises everything
//!   written to it; `--json` goes through [`Output::stdout`] exact;
//! - colour is decided once, in [`Output::standard`], from `--color`, `NO_COLOR` and
//!   whether each stream is a terminal; everything else asks [`Stream::color`].

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use crate::cli::ColorChoice;
use crate::text::{ERROR_CAP, Neutral, one_line};

/// A command's two output streams.
#[derive(Clone)]
pub struct Output {
    stdout: Stream,
    stderr: Stream,
}

impl Output {
    /// The process's stdout and stderr.
    pub fn standard(color: ColorChoice) -> Output {
        let stream = |sink, terminal| Stream {
            sink,
            terminal,
            color: wants_color(color, terminal),
        };
        Output {
            stdout: stream(Sink::Stdout, io::stdout().is_terminal()),
            stderr: stream(Sink::Stderr, io::stderr().is_terminal()),
        }
    }

    /// Two buffers, neither a terminal nor coloured, and a handle reading them back.
    pub fn captured() -> (Output, Captured) {
        let captured = Captured::default();
        let stream = |buffer: &Arc<Mutex<Vec<u8>>>| Stream {
            sink: Sink::Buffer(buffer.clone()),
            terminal: false,
            color: false,
        };
        let output = Output {
            stdout: stream(&captured.stdout),
            stderr: stream(&captured.stderr),
        };
        (output, captured)
    }

    /// Standard output, exact: ids, `--json`, and the renderers (which neutralise what
    /// they show themselves, around their own colour codes).
    pub fn stdout(&self) -> Stream {
        self.stdout.clone()
    }

    /// Standard output for what people read (tables, `show` pages, answers):
    /// everything written to it is neutralised, so outside text printed without a
    /// thought cannot drive the terminal.
    pub fn human(&self) -> Neutral<Stream> {
        Neutral::new(self.stdout())
    }

    /// Standard error, for progress a renderer shows there.
    pub fn stderr(&self) -> Stream {
        self.stderr.clone()
    }

    /// A one-line note on stderr, `agentq: …`, neutralised and capped whatever it
    /// quotes. Written whole in one write, so it never interleaves with a renderer's.
    pub fn note(&self, text: &str) {
        let line = format!("agentq: {}\n", one_line(text, ERROR_CAP));
        // As with the crate's `eprintln!`: with stderr gone, no one is left to tell.
        let _ = self.stderr().write_all(line.as_bytes());
    }

    /// A value as pretty JSON on stdout.
    pub fn json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        // Serialised first, so a closed pipe surfaces as the plain I/O error it is.
        let mut text = serde_json::to_vec_pretty(value)?;
        text.push(b'\n');
        self.stdout().write_all(&text)?;
        Ok(())
    }
}

/// Colours with `--color always`; with `auto`, on a terminal unless `NO_COLOR` is set.
fn wants_color(choice: ColorChoice, terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && terminal,
    }
}

/// One output stream, and what was decided about it once.
#[derive(Clone)]
pub struct Stream {
    sink: Sink,
    terminal: bool,
    color: bool,
}

impl Stream {
    /// Whether it is a terminal: a live view and spinners only make sense there.
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Whether what is written to it gets colours.
    pub fn color(&self) -> bool {
        self.color
    }
}

#[derive(Clone)]
enum Sink {
    Stdout,
    Stderr,
    Buffer(Arc<Mutex<Vec<u8>>>),
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.sink {
            Sink::Stdout => io::stdout().write(buf).map_err(named),
            Sink::Stderr => io::stderr().write(buf),
            Sink::Buffer(buffer) => lock(buffer).write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &self.sink {
            Sink::Stdout => io::stdout().write_all(buf).map_err(named),
            Sink::Stderr => io::stderr().write_all(buf),
            Sink::Buffer(buffer) => lock(buffer).write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.sink {
            Sink::Stdout => io::stdout().flush().map_err(named),
            Sink::Stderr => io::stderr().flush(),
            Sink::Buffer(_) => Ok(()),
        }
    }
}

/// A failed write to stdout names it (`writing to standard output: No space left on
/// device`) and keeps its kind.
fn named(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("writing to standard output: {e}"))
}

/// A buffer whose writer panicked mid-write still holds what was written before.
fn lock(buffer: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What was written to an [`Output::captured`].
#[derive(Clone, Default)]
pub struct Captured {
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_writes_to_the_same_place_and_humans_get_neutral_text() {
        let (output, captured) = Output::captured();
        let mut renderer_side = output.stdout();
        write!(renderer_side, "raw\x1b[1m ").unwrap();
        write!(output.human(), "shown\x1b[2J").unwrap();
        output.note("a note\nwith a newline");
        output.json(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(captured.stdout(), "raw\x1b[1m shown␛[2J{\n  \"a\": 1\n}\n");
        assert_eq!(captured.stderr(), "agentq: a note␊with a newline\n");
    }

    #[test]
    fn colour_follows_the_choice_and_the_terminal() {
        assert!(wants_color(ColorChoice::Always, false));
        assert!(!wants_color(ColorChoice::Never, true));
        assert!(!wants_color(ColorChoice::Auto, false));
    }
}
