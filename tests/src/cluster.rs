//! A multi-process harness: the real `atelier coordinator` (or the
//! libtorch-free `atelier-coordinator`) and `atelier worker` binaries on
//! loopback, each logging to a file. Processes are killed
//! on drop; when a test fails, the tail of every log is printed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atelier_proto::v1;
use atelier_proto::JobStatus;
use atelier_proto::{connect_jobs, Connect, JobClient};

use crate::{atelier_bin, built_bin};

/// One child process and its log file.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn spawn(
        program: &Path,
        name: &str,
        dir: &Path,
        args: &[String],
        token: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("ATELIER_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        if let Some(token) = token {
            command.env("ATELIER_TOKEN", token);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} for {name} (build it with `cargo build --bins`): {e}",
                program.display()
            )
        });
        Self {
            name: name.to_string(),
            log,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stalls, sockets open, as a paused VM would.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the process runs");
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `grace`).
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A coordinator and its workers.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub address: String,
    pub token: Option<String>,
    coordinator_args: Vec<String>,
    pub coordinator: Option<Process>,
    pub workers: Vec<Process>,
    restarts: usize,
    standalone: bool,
}

impl Cluster {
    /// Starts a coordinator on a free port with its state under `dir`, and
    /// waits until it listens. `extra` goes on its command line.
    pub fn start(dir: &Path, token: Option<&str>, extra: &[&str]) -> Self {
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            address: String::new(),
            token: token.map(str::to_string),
            coordinator_args: extra.iter().map(|s| s.to_string()).collect(),
            coordinator: None,
            workers: Vec::new(),
            restarts: 0,
            standalone: false,
        };
        cluster.start_coordinator("127.0.0.1:0");
        cluster
    }

    /// From the next (re)start on, the coordinator is the libtorch-free
    /// `atelier-coordinator` binary rather than `atelier coordinator`.
    pub fn use_standalone_coordinator(&mut self) {
        self.standalone = true;
    }

    fn start_coordinator(&mut self, listen: &str) {
        let state = self.dir.join("coordinator.db");
        let (program, mut args) = if self.standalone {
            (built_bin("atelier-coordinator"), Vec::new())
        } else {
            (atelier_bin(), vec!["coordinator".to_string()])
        };
        args.extend([
            "--listen".into(),
            listen.into(),
            "--state".into(),
            state.to_string_lossy().into_owned(),
        ]);
        args.extend(self.coordinator_args.iter().cloned());
        let name = format!("coordinator-{}", self.restarts);
        let mut process = Process::spawn(
            &program,
            &name,
            &self.dir,
            &args,
            self.token.as_deref(),
            &[],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            let found = std::fs::File::open(&process.log).ok().and_then(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .find_map(|l| {
                        l.strip_prefix("coordinator listening on ")
                            .map(str::to_string)
                    })
            });
            if let Some(address) = found {
                break address;
            }
            if let Some(status) = process.exited() {
                panic!(
                    "the coordinator exited with {status}:\n{}",
                    process.tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "the coordinator did not start listening:\n{}",
                process.tail(40)
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        self.address = address;
        self.coordinator = Some(process);
    }

    /// `kill -9` of the coordinator.
    pub fn kill_coordinator(&mut self) {
        if let Some(process) = self.coordinator.as_mut() {
            process.kill();
        }
    }

    /// Starts the coordinator again on the same port and state file.
    pub fn restart_coordinator(&mut self) {
        self.restarts += 1;
        // Keep the old log for the failure report.
        if let Some(old) = self.coordinator.take() {
            self.workers.push(Process {
                name: old.name.clone(),
                log: old.log.clone(),
                child: None,
            });
            drop(old);
        }
        let listen = self.address.clone();
        self.start_coordinator(&listen);
    }

    /// Starts a worker with `--threads 1` plus `extra`; returns its index.
    pub fn add_worker(&mut self, extra: &[&str]) -> usize {
        self.add_worker_with_env(extra, &[])
    }

    /// `add_worker` with environment variables set for the worker alone.
    pub fn add_worker_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> usize {
        let address = self.address.clone();
        self.add_worker_via(&address, extra, env)
    }

    /// A worker that reaches the coordinator at `address` (a proxy, say).
    pub fn add_worker_via(&mut self, address: &str, extra: &[&str], env: &[(&str, &str)]) -> usize {
        let index = self.workers.len();
        let mut args = vec![
            "worker".to_string(),
            "--coordinator".into(),
            address.to_string(),
            "--threads".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = Process::spawn(
            &atelier_bin(),
            &format!("worker-{index}"),
            &self.dir,
            &args,
            self.token.as_deref(),
            env,
        );
        self.workers.push(process);
        index
    }

    /// Runs the CLI against this coordinator with the cluster's token.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run atelier: {e}"))
    }

    /// Starts the CLI without waiting for it (a `status --watch` that must
    /// outlive something), its output piped.
    pub fn cli_spawn(&self, args: &[&str]) -> std::process::Child {
        self.cli_command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run atelier: {e}"))
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(atelier_bin());
        command
            .args(args)
            .env("ATELIER_COORDINATOR", &self.address)
            .env("RUST_LOG", "warn")
            .env_remove("ATELIER_TOKEN");
        if let Some(token) = &self.token {
            command.env("ATELIER_TOKEN", token);
        }
        command
    }

    /// Runs the CLI; fails the test unless it exits 0. Returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        crate::succeeded(args, &self.cli(args))
    }

    /// Submits with the CLI and returns the job id.
    pub fn submit(&self, args: &[&str]) -> String {
        let stdout = self.cli_ok(args);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("submitted "))
            .unwrap_or_else(|| panic!("no job id in {stdout:?}"))
            .trim()
            .to_string()
    }

    /// Submits a tag job of `catalog` with `checkpoint` into `out`; returns its id.
    pub fn submit_tag(
        &self,
        catalog: &str,
        checkpoint: &str,
        out: &str,
        shard_rows: &str,
    ) -> String {
        self.submit_tag_with(catalog, checkpoint, out, shard_rows, &[])
    }

    /// [`Cluster::submit_tag`] with more `submit tag` flags.
    pub fn submit_tag_with(
        &self,
        catalog: &str,
        checkpoint: &str,
        out: &str,
        shard_rows: &str,
        flags: &[&str],
    ) -> String {
        let mut args = vec![
            "submit",
            "tag",
            "--catalog",
            catalog,
            "--checkpoint",
            checkpoint,
            "--out",
            out,
            "--shard-rows",
            shard_rows,
        ];
        args.extend(flags);
        self.submit(&args)
    }

    pub async fn client(&self) -> JobClient {
        connect_jobs(&self.address, &Connect::token(self.token.as_deref()))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The job now, retrying while the coordinator is down.
    pub async fn job(&self, job_id: &str) -> Option<JobStatus> {
        let mut client = connect_jobs(&self.address, &Connect::token(self.token.as_deref()))
            .await
            .ok()?;
        let job = client
            .get_job(v1::GetJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .ok()?
            .into_inner();
        JobStatus::try_from(job).ok()
    }

    /// Polls until `done(job)` or the timeout, which fails the test.
    pub async fn wait_for(
        &self,
        job_id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&JobStatus) -> bool,
    ) -> JobStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(job) = self.job(job_id).await {
                if done(&job) {
                    return job;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; the job stands at {job:?}"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; no answer"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the job to end.
    pub async fn wait_done(&self, job_id: &str, timeout: Duration) -> JobStatus {
        self.wait_for(job_id, timeout, "the job to end", |j| j.state.is_terminal())
            .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let processes = self.coordinator.iter().chain(self.workers.iter());
            for process in processes {
                eprintln!(
                    "---- last lines of {} ({})",
                    process.name,
                    process.log.display()
                );
                eprintln!("{}", process.tail(30));
            }
        }
    }
}
