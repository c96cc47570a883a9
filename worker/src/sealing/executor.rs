//! The executor: a long-lived child process that runs the proofs.
//!
//! The proofs library panics on some corrupt inputs, and after a panic its
//! thread pools are unusable (the next PC2 in the same process hangs). So the
//! worker process — broker link, job store, heartbeats — never runs a proof
//! itself: it hands each job to `sealfarm-worker executor`, a child process
//! that stays alive between jobs (Groth parameters stay loaded, GPU kernels
//! stay built) and ends only after a library panic. The worker then starts a
//! new one and runs again any job the old one was still running.
//!
//! Protocol: JSON lines. The worker writes `{"key", "task"}` (a job) or
//! `{"key", "warm_up"}` (a [`warm_up::Plan`]) to the child's stdin; the child
//! answers `{"key", "outcome", "panicked"}` or `{"key", "warmed_up",
//! "panicked"}` on stdout. The child ignores SIGTERM/SIGINT (the worker
//! decides when jobs stop) and exits when its stdin closes.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use sealfarm_schemas::{Outcome, TaskMessage};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use super::layout::SealingPath;
use super::{proofs, warm_up};
use crate::bench;

/// Exit status of an executor that ended because the library panicked.
pub const EXIT_AFTER_PANIC: i32 = 70;

#[derive(Serialize, Deserialize)]
struct Request {
    key: String,
    #[serde(flatten)]
    work: Work,
}

/// What the executor is asked to do.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Work {
    /// Boxed: a task is far larger than a warm-up plan.
    Task(Box<TaskMessage>),
    WarmUp(warm_up::Plan),
}

#[derive(Serialize, Deserialize)]
struct Response {
    key: String,
    #[serde(flatten)]
    answer: Answer,
    panicked: bool,
}

/// The executor's answer to a [`Work`].
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Outcome(Outcome),
    WarmedUp(Result<warm_up::Report, String>),
}

/// The executor process ended before it answered (or could not be asked).
#[derive(Debug, Default)]
pub struct ExecutorLost {
    /// It had reported a library panic of another request first: that
    /// panic, not this request, ended it.
    pub after_panic: bool,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>;

struct Running {
    child: Child,
    stdin: ChildStdin,
    /// Set when the child reported a library panic: it is about to exit and
    /// must not be handed another job (it could hang in the poisoned library).
    spent: Arc<std::sync::atomic::AtomicBool>,
    /// Jobs handed to this child and not answered yet. Each child has its
    /// own: when one ends, only the jobs it held are lost.
    pending: Pending,
}

/// The worker's handle on its executor process, started on first use and
/// restarted after it ends.
pub struct Executor {
    program: PathBuf,
    sealing: SealingPath,
    running: tokio::sync::Mutex<Option<Running>>,
}

impl Executor {
    pub fn new(sealing: SealingPath) -> Result<Self> {
        let program = std::env::current_exe().context("cannot find the sealfarm-worker executable")?;
        Ok(Executor { program, sealing, running: tokio::sync::Mutex::new(None) })
    }

    /// Starts the executor ahead of the first job, so that job does not wait
    /// for a process to start.
    pub async fn warm(&self) -> Result<()> {
        let mut running = self.running.lock().await;
        if running.is_none() {
            *running = Some(self.spawn()?);
        }
        Ok(())
    }

    /// Runs a task in the executor and returns its outcome, or `ExecutorLost`
    /// if the executor ended first (the caller runs the job again).
    pub async fn run(&self, key: &str, task: &TaskMessage) -> Result<Outcome, ExecutorLost> {
        match self.ask(key, Work::Task(Box::new(task.clone()))).await? {
            Answer::Outcome(outcome) => Ok(outcome),
            Answer::WarmedUp(_) => Err(ExecutorLost::default()),
        }
    }

    /// Has the executor run the warm-up; what it did, or why it failed.
    pub async fn warm_up(&self, plan: &warm_up::Plan) -> Result<Result<warm_up::Report, String>, ExecutorLost> {
        match self.ask("warm-up", Work::WarmUp(plan.clone())).await? {
            Answer::WarmedUp(report) => Ok(report),
            Answer::Outcome(_) => Err(ExecutorLost::default()),
        }
    }

    async fn ask(&self, key: &str, work: Work) -> Result<Answer, ExecutorLost> {
        let (sender, receiver) = oneshot::channel();
        let mut line = match serde_json::to_vec(&Request { key: key.to_string(), work }) {
            Ok(line) => line,
            Err(err) => {
                // A path that is not UTF-8, say: nothing the executor could read.
                tracing::error!(error = %err, "cannot write the request for the executor");
                return Err(ExecutorLost::default());
            }
        };
        line.push(b'\n');
        let mut running = self.running.lock().await;
        let usable = |r: &mut Running| {
            !r.spent.load(std::sync::atomic::Ordering::SeqCst) && matches!(r.child.try_wait(), Ok(None))
        };
        if !running.as_mut().is_some_and(usable) {
            if let Some(mut old) = running.take() {
                // A spent child may still be exiting; make sure it is gone.
                let _ = old.child.start_kill();
            }
            match self.spawn() {
                Ok(child) => *running = Some(child),
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "cannot start the executor");
                    return Err(ExecutorLost::default());
                }
            }
        }
        let child = running.as_mut().expect("just started");
        child.pending.lock().unwrap().insert(key.to_string(), sender);
        let sent = async {
            child.stdin.write_all(&line).await?;
            child.stdin.flush().await
        };
        if let Err(err) = sent.await {
            tracing::error!(error = %err, "cannot hand a job to the executor");
            child.pending.lock().unwrap().remove(key);
            return Err(ExecutorLost::default());
        }
        let spent = child.spent.clone();
        drop(running);
        receiver.await.map_err(|_| ExecutorLost { after_panic: spent.load(std::sync::atomic::Ordering::SeqCst) })
    }

    fn spawn(&self) -> Result<Running> {
        let mut child = Command::new(&self.program)
            .arg("executor")
            .arg("--sealing-path")
            .arg(self.sealing.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} executor", self.program.display()))?;
        tracing::info!(pid = child.id(), "executor started");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let pending = Pending::default();
        let routes = pending.clone();
        let spent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spent_flag = spent.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Response>(&line) {
                    Ok(response) => {
                        if response.panicked {
                            spent_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                            tracing::warn!(key = response.key, "the proofs library panicked; the executor restarts");
                        }
                        if let Some(sender) = routes.lock().unwrap().remove(&response.key) {
                            let _ = sender.send(response.answer);
                        }
                    }
                    Err(err) => tracing::error!(error = %err, line, "unreadable executor answer"),
                }
            }
            // The executor ended: every job it still held is lost and will run again.
            let lost: Vec<_> = routes.lock().unwrap().drain().collect();
            if !lost.is_empty() {
                tracing::warn!(jobs = lost.len(), "executor ended with jobs running; they run again");
            }
        });
        Ok(Running { child, stdin, spent, pending })
    }

    /// Ends the executor (jobs it still runs resume at the next start).
    pub async fn stop(&self) {
        if let Some(mut running) = self.running.lock().await.take() {
            drop(running.stdin);
            let _ = running.child.kill().await;
        }
    }
}

/// The executor process's main loop (`sealfarm-worker executor`): one thread
/// per job; after a library panic, answer and exit.
pub fn serve(sealing: SealingPath) -> Result<()> {
    // SAFETY: setting signal dispositions to SIG_IGN before any thread starts.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading a job")?;
        let request: Request = serde_json::from_str(&line).context("a job line is not JSON")?;
        let (sealing, stdout) = (sealing.clone(), stdout.clone());
        std::thread::spawn(move || {
            let (answer, panicked) = match request.work {
                Work::Task(task) => {
                    // The library's own log lines name the job too.
                    let _job = task.span().entered();
                    let execution = proofs::execute(&sealing, &task);
                    let outcome = match execution.outcome {
                        Ok(output) => Outcome::Done(output),
                        Err(error) => Outcome::Failed(error),
                    };
                    (Answer::Outcome(outcome), execution.panicked)
                }
                Work::WarmUp(plan) => {
                    let _warm_up = tracing::info_span!("warm_up").entered();
                    // Proof panics are caught per stage; this catches the rest.
                    let report = std::panic::catch_unwind(|| warm_up::run(&plan))
                        .unwrap_or_else(|_| Err(bench::LibraryPanicked("the warm-up panicked".into()).into()));
                    let panicked =
                        report.as_ref().err().is_some_and(|e| e.downcast_ref::<bench::LibraryPanicked>().is_some());
                    (Answer::WarmedUp(report.map_err(|e| format!("{e:#}"))), panicked)
                }
            };
            let response = Response { key: request.key, answer, panicked };
            let mut out = stdout.lock().unwrap_or_else(|e| e.into_inner());
            let _ = serde_json::to_writer(&mut *out, &response);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            if panicked {
                // _exit: no exit handlers, which could wait on the poisoned library's threads.
                // SAFETY: ends the process; nothing after it runs.
                unsafe { libc::_exit(EXIT_AFTER_PANIC) };
            }
        });
    }
    // The worker closed our stdin: it is gone or stopping.
    std::process::exit(0);
}
