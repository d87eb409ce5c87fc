//! The Ferry under test: in this process (`ferry::run::Migration`, crashed with
//! `abort`), or a `ferry run` child process (crashed with SIGKILL), observed and steered
//! the same way, so one scenario drives both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::api::client::ApiClient;
use ferry::api::StatusView;
use ferry::control::ControlRequest;
use ferry::progress::Phase;
use ferry::run::Migration;

use super::common;

/// What the scenario looks at.
#[derive(Clone, Debug)]
pub struct Status {
    pub phase: Phase,
    pub copied: u64,
    pub applied: u64,
    pub last_error: Option<String>,
}

pub enum Daemon {
    InProcess(Option<Migration>),
    Child {
        child: Child,
        api: ApiClient,
        config: PathBuf,
        /// The last status read, kept for when the process has exited.
        last: Option<Status>,
    },
}

/// The config text of a run (the same settings `common::config` uses).
pub fn config_text(source: &str, destination: &str, api: &str, extra: &str) -> String {
    format!(
        "[source]\nuri = \"{source}\"\n[destination]\nuri = \"{destination}\"\n[api]\nlisten = \"{api}\"\n[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\nlease_seconds = 10\n{extra}"
    )
}

/// A free loopback port for a child's API (bound, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl Daemon {
    pub async fn start_in_process(text: &str) -> Daemon {
        let config = ferry::config::from_toml_str(text, &|_| None).expect("test config is valid");
        Daemon::InProcess(Some(common::start(config).await))
    }

    /// Writes the config (with a free API port) and spawns `ferry run`.
    pub async fn start_child(source: &str, destination: &str, extra: &str, tag: &str) -> Daemon {
        let port = free_port();
        let text = config_text(source, destination, &format!("127.0.0.1:{port}"), extra);
        let config = std::env::temp_dir().join(format!(
            "ferry-randomized-{}-{tag}.toml",
            std::process::id()
        ));
        std::fs::write(&config, text).expect("write the child's config");
        let api = ApiClient::new(&format!("http://127.0.0.1:{port}")).expect("API URL");
        let mut d = Daemon::Child {
            child: spawn(&config),
            api,
            config,
            last: None,
        };
        // Ready once the API answers.
        let deadline = Instant::now() + common::DEADLINE;
        while d.status().await.is_none() {
            assert!(
                Instant::now() < deadline,
                "ferry run did not start serving its API"
            );
            if let Daemon::Child { child, .. } = &mut d {
                if let Ok(Some(code)) = child.try_wait() {
                    panic!("ferry run exited at start: {code}");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d
    }

    /// The current status; `None` when a child does not answer (starting or gone).
    pub async fn status(&mut self) -> Option<Status> {
        match self {
            Daemon::InProcess(m) => {
                let p = &m.as_ref()?.progress;
                Some(Status {
                    phase: p.phase(),
                    copied: common::copied(p),
                    applied: common::applied(p),
                    last_error: p.last_error.read().clone(),
                })
            }
            Daemon::Child { api, last, .. } => {
                let view: StatusView = api.get_json("/api/v1/progress").await.ok()?;
                let s = Status {
                    phase: view.phase,
                    copied: view.documents_copied,
                    applied: view.events_applied,
                    last_error: view.last_error,
                };
                *last = Some(s.clone());
                Some(s)
            }
        }
    }

    /// Whether the run has ended (the thread or the process is gone).
    pub fn finished(&mut self) -> bool {
        match self {
            Daemon::InProcess(m) => m.as_ref().is_none_or(|m| m.is_finished()),
            Daemon::Child { child, .. } => !matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Polls until `cond` holds on the status; panics with `what` after the deadline
    /// or when the run ends in a terminal phase.
    pub async fn wait_for<F: FnMut(&Status) -> bool>(&mut self, what: &str, mut cond: F) -> Status {
        let deadline = Instant::now() + common::DEADLINE;
        loop {
            if let Some(s) = self.status().await {
                if cond(&s) {
                    return s;
                }
                assert!(
                    !s.phase.is_terminal(),
                    "run ended {} while waiting for {what} (last error: {:?})",
                    s.phase.as_str(),
                    s.last_error
                );
            }
            assert!(!self.finished(), "the run stopped while waiting for {what}");
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} (status {:?})",
                self.status().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_phase(&mut self, phase: Phase) -> Status {
        self.wait_for(phase.as_str(), |s| s.phase == phase).await
    }

    /// Sends an operator request; `Err((status, message))` when refused.
    pub async fn request(&mut self, request: ControlRequest) -> Result<(), (u16, String)> {
        match self {
            Daemon::InProcess(m) => {
                let m = m.as_ref().expect("a running migration");
                m.control
                    .request(request)
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.status, e.message))
            }
            Daemon::Child { api, .. } => {
                let (path, body) = match request {
                    ControlRequest::Cutover { .. } => (
                        "/api/v1/cutover",
                        serde_json::json!({"writes_stopped": true}),
                    ),
                    ControlRequest::Pause => ("/api/v1/pause", serde_json::json!({})),
                    ControlRequest::Resume => ("/api/v1/resume", serde_json::json!({})),
                    ControlRequest::Cancel => ("/api/v1/cancel", serde_json::json!({})),
                    ControlRequest::Extend { hours } => {
                        ("/api/v1/extend", serde_json::json!({"hours": hours}))
                    }
                };
                match api.post_json(path, &body).await {
                    Ok(r) if r.is_success() => Ok(()),
                    Ok(r) => Err((r.status, r.error_message())),
                    Err(e) => Err((0, e.to_string())),
                }
            }
        }
    }

    /// Retries a request refused with a conflict (the phase flipped for a moment).
    pub async fn request_until_accepted(&mut self, request: ControlRequest) {
        let deadline = Instant::now() + common::DEADLINE;
        loop {
            match self.request(request.clone()).await {
                Ok(()) => return,
                Err((status, message)) => {
                    assert!(
                        (status == 409 || status == 0) && Instant::now() < deadline,
                        "{request:?} refused: {message} (HTTP {status})"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Crashes the run: `abort` in process, SIGKILL for a child (checked to be the
    /// signal that ended it).
    pub async fn crash(&mut self) {
        match self {
            Daemon::InProcess(m) => {
                if let Some(m) = m.take() {
                    common::abort(m).await;
                }
            }
            Daemon::Child { child, .. } => {
                child.kill().expect("SIGKILL ferry run");
                let status = child.wait().expect("reap ferry run");
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(9), "ferry run ended by {status:?}");
            }
        }
    }

    /// Starts the same run again after a crash.
    pub async fn restart(&mut self, text: &str) {
        match self {
            Daemon::InProcess(m) => {
                assert!(m.is_none(), "restart without a crash");
                *self = Daemon::start_in_process(text).await;
            }
            Daemon::Child { child, config, .. } => {
                *child = spawn(config);
                let deadline = Instant::now() + common::DEADLINE;
                while self.status().await.is_none() {
                    assert!(Instant::now() < deadline, "ferry run did not restart");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Waits for the run to end; returns its final phase and error.
    pub async fn wait_end(&mut self) -> (Phase, Option<String>) {
        match self {
            Daemon::InProcess(m) => {
                let m = m.take().expect("a running migration");
                let outcome = common::wait(m).await;
                (outcome.phase, outcome.error)
            }
            Daemon::Child { .. } => {
                let deadline = Instant::now() + common::DEADLINE;
                while !self.finished() {
                    let _ = self.status().await;
                    assert!(Instant::now() < deadline, "ferry run did not exit");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let Daemon::Child {
                    child,
                    last,
                    config,
                    ..
                } = self
                else {
                    unreachable!()
                };
                let status = child.wait().expect("reap ferry run");
                let last = last.clone();
                let log = config.with_extension("log");
                let phase = if status.success() {
                    Phase::Completed
                } else {
                    last.as_ref().map(|s| s.phase).unwrap_or(Phase::Failed)
                };
                (
                    phase,
                    Some(format!(
                        "exit {status}; last status {last:?}; log in {}",
                        log.display()
                    )),
                )
            }
        }
    }
}

/// Spawns `ferry run`; its output goes to `<config>.log` (appended across restarts),
/// which a failure message names.
fn spawn(config: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))
        .expect("open the child's log");
    let err = log.try_clone().expect("clone the log handle");
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("run")
        .arg("--exit-when-finished")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn ferry run")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Daemon::Child { child, config, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
            if !std::thread::panicking() {
                let _ = std::fs::remove_file(config.with_extension("log"));
            }
            let _ = std::fs::remove_file(config);
        }
    }
}
