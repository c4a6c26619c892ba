//! The workspace's service binaries as real processes, for black-box tests.
//!
//! - [`binary`] finds `target/<profile>/<name>` next to the running test executable (its
//!   `deps/` directory's parent), or in `$EM_TEST_BIN_DIR`; a missing binary fails the test
//!   with the command that builds it. `cargo test --workspace` and
//!   `cargo nextest run --workspace` build every binary of the workspace first.
//! - [`ServiceProcess`] spawns one with its own environment, captures every stdout and
//!   stderr line (kept across restarts, for assertions, and printed when a test fails), waits
//!   for a log line, `kill -9`s and restarts it, and kills it when dropped.
//! - [`serial`] serialises heavy tests inside one test binary under `cargo test` (nextest
//!   runs every test in its own process and uses the `heavy` test group instead).
//!
//! Service settings are passed as `EM_<SERVICE>__…` variables; every such variable of the
//! test's own environment (and `RUST_LOG`, `EM_LOG_FORMAT`) is removed first, so a
//! developer's shell cannot change what a test runs against.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Overrides where the service binaries are looked up.
pub const BIN_DIR_ENV: &str = "EM_TEST_BIN_DIR";

/// Lines of each process printed when a test fails.
const TAIL_ON_FAILURE: usize = 200;

/// The directory holding the workspace's binaries: `$EM_TEST_BIN_DIR`, else the parent of
/// the test executable's `deps/` directory (`target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// The path of the workspace binary `name` (e.g. `gateway`, `episodic-memory`).
///
/// # Panics
/// If it has not been built, naming the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "service binary {} not found: build the workspace first with `cargo build --workspace` \
         (`cargo test --workspace` and `cargo nextest run --workspace` build it too), or set \
         {BIN_DIR_ENV}",
        path.display()
    );
    path
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held by a heavy test for its whole run, so that heavy tests of one test binary never run
/// at the same time under `cargo test` (they would compete for two cores).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Used in failure messages and log dumps.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl ServiceSpec {
    /// The workspace binary `binary_name`, named `name`.
    pub fn new(name: impl Into<String>, binary_name: &str) -> Self {
        Self {
            name: name.into(),
            program: binary(binary_name),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if is_setting(&key) {
                command.env_remove(&key);
            }
        }
        command.env("RUST_LOG", "info").env("RUST_BACKTRACE", "1");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs the program to completion (an admin command) with a deadline; returns stdout.
    ///
    /// # Panics
    /// If it cannot start, exceeds `timeout`, or exits unsuccessfully (with its output).
    pub async fn run_to_completion(&self, timeout: Duration) -> String {
        let mut command = tokio::process::Command::from(self.command());
        command.kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{} did not finish within {timeout:?}", self.name))
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{} {:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            self.name,
            self.args,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

/// Variables that would configure a service behind the test's back.
fn is_setting(key: &OsString) -> bool {
    let key = key.to_string_lossy();
    (key.starts_with("EM_") && key.contains("__"))
        || key == "EM_LOG_FORMAT"
        || key == "RUST_LOG"
        || (key.starts_with("EM_") && key.ends_with("_CONFIG"))
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// One line a process wrote.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// 0 for the first start, 1 after the first restart, …
    pub incarnation: usize,
    pub pipe: Pipe,
    pub text: String,
}

type Log = Arc<Mutex<Vec<LogLine>>>;

fn lock(log: &Log) -> MutexGuard<'_, Vec<LogLine>> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running service process. Dropping it kills it (SIGKILL) and, if the test is failing,
/// prints the tail of its output.
pub struct ServiceProcess {
    spec: ServiceSpec,
    child: Option<Child>,
    incarnation: usize,
    log: Log,
    readers: Vec<JoinHandle<()>>,
    exits: Vec<String>,
}

impl std::fmt::Debug for ServiceProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProcess")
            .field("name", &self.spec.name)
            .field("pid", &self.pid())
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl ServiceProcess {
    /// Starts the process.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn start(spec: ServiceSpec) -> Self {
        let mut process = Self {
            spec,
            child: None,
            incarnation: 0,
            log: Arc::new(Mutex::new(Vec::new())),
            readers: Vec::new(),
            exits: Vec::new(),
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let mut child = self
            .spec
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.spec.name));
        if let Some(out) = child.stdout.take() {
            self.readers
                .push(self.reader(out, Pipe::Stdout, self.incarnation));
        }
        if let Some(err) = child.stderr.take() {
            self.readers
                .push(self.reader(err, Pipe::Stderr, self.incarnation));
        }
        self.child = Some(child);
    }

    fn reader(&self, pipe: impl Read + Send + 'static, kind: Pipe, n: usize) -> JoinHandle<()> {
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        lock(&log).push(LogLine {
                            incarnation: n,
                            pipe: kind,
                            text,
                        });
                    }
                }
            }
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The current process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times it was (re)started, minus one.
    pub fn incarnation(&self) -> usize {
        self.incarnation
    }

    /// `kill -9`: no shutdown hook, no flush, no goodbye. Waits until the process is gone
    /// and its output is drained.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            if let Ok(status) = child.wait() {
                self.exits
                    .push(format!("incarnation {}: {status}", self.incarnation));
            }
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// `kill -9`, then the same command again (same environment and arguments).
    pub fn restart(&mut self) {
        self.kill9();
        self.incarnation += 1;
        self.spawn();
    }

    /// `Some(status)` if the current incarnation has exited on its own.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) | Err(_) => None,
        }
    }

    /// Every line written so far, by every incarnation.
    pub fn lines(&self) -> Vec<LogLine> {
        lock(&self.log).clone()
    }

    /// Every line's text, by every incarnation.
    pub fn texts(&self) -> Vec<String> {
        lock(&self.log).iter().map(|l| l.text.clone()).collect()
    }

    /// The first line of the current incarnation matching `matches`, waiting at most
    /// `timeout`.
    ///
    /// # Panics
    /// On timeout, or if the process exits first (with its output).
    pub async fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = lock(&self.log)
                .iter()
                .filter(|l| l.incarnation == self.incarnation)
                .find(|l| matches(&l.text))
                .map(|l| l.text.clone());
            if let Some(line) = found {
                return line;
            }
            if let Some(status) = self.exited() {
                // Let the readers drain what the process wrote before it died.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "{} exited ({status}) before logging {what}:\n{}",
                    self.spec.name,
                    self.tail(TAIL_ON_FAILURE)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not log {what} within {timeout:?}:\n{}",
                    self.spec.name,
                    self.tail(TAIL_ON_FAILURE)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Self::wait_for_line`] for a line containing `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line(&format!("{needle:?}"), timeout, |l| l.contains(needle))
            .await
    }

    /// The last `n` lines, formatted for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let log = lock(&self.log);
        let mut out: VecDeque<String> = VecDeque::with_capacity(n + 1);
        for line in log.iter() {
            if out.len() == n {
                out.pop_front();
            }
            let pipe = match line.pipe {
                Pipe::Stdout => "out",
                Pipe::Stderr => "err",
            };
            out.push_back(format!(
                "  [{}#{} {pipe}] {}",
                self.spec.name, line.incarnation, line.text
            ));
        }
        let skipped = log.len().saturating_sub(out.len());
        let mut text = String::new();
        if skipped > 0 {
            text.push_str(&format!("  … {skipped} earlier lines\n"));
        }
        for line in out {
            text.push_str(&line);
            text.push('\n');
        }
        for exit in &self.exits {
            text.push_str(&format!("  [{}] killed/exited: {exit}\n", self.spec.name));
        }
        text
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- {} (last {TAIL_ON_FAILURE} lines) -----\n{}",
                self.spec.name,
                self.tail(TAIL_ON_FAILURE)
            );
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// Polls `probe` every `every` until it returns `Some`, at most `timeout`.
///
/// # Panics
/// On timeout, with `what` and the last state `describe`d.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(every).await;
    }
}
