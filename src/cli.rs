//! The operator's verbs against a running daemon: `ferry status|cutover|extend|pause|
//! resume|cancel`. Each verb is one call to the HTTP API ([`crate::api`]); `main.rs`
//! only parses arguments and calls the `*_command` functions here, which print and pick
//! the exit code. The async functions return typed results so tests can drive them.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::client::{ApiClient, ClientError};
use crate::api::StatusView;
use crate::progress::BaselineState;
use crate::report::human_bytes;

/// Where `ferry run` listens unless `api.listen` says otherwise; matches
/// [`crate::config::DEFAULT_API_LISTEN`] so the verbs need no flag on the migration host.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:27182";

/// Width of the text progress bars, in characters: fits an 80-column terminal with the
/// counts beside it.
const BAR_WIDTH: usize = 30;

/// Which daemon to talk to; shared by every verb.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiTarget {
    /// Base URL of the daemon's API (`api.listen` in its config).
    #[arg(long = "api", value_name = "URL", default_value = DEFAULT_API_URL, env = "FERRY_API_URL")]
    pub url: String,
}

/// `ferry status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: ApiTarget,
    /// Redraw until the migration finishes (or Ctrl-C).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub interval_seconds: f64,
}

/// `ferry extend`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub target: ApiTarget,
    /// Hours to add to the cutover window. Negative values are passed on so the
    /// daemon's explanation reaches the operator.
    #[arg(long, allow_negative_numbers = true)]
    pub hours: f64,
}

/// A request that changes the run, as the daemon's supervisor understands it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControlAction {
    /// The operator has stopped application writes; hand over to the destination.
    Cutover,
    Extend {
        hours: f64,
    },
    Pause,
    Resume,
    Cancel,
}

impl ControlAction {
    fn path(&self) -> &'static str {
        match self {
            ControlAction::Cutover => "/api/v1/cutover",
            ControlAction::Extend { .. } => "/api/v1/extend",
            ControlAction::Pause => "/api/v1/pause",
            ControlAction::Resume => "/api/v1/resume",
            ControlAction::Cancel => "/api/v1/cancel",
        }
    }

    fn body(&self) -> Value {
        match self {
            // Running `ferry cutover` is the operator's statement that writes stopped.
            ControlAction::Cutover => json!({ "writes_stopped": true }),
            ControlAction::Extend { hours } => json!({ "hours": hours }),
            _ => json!({}),
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            ControlAction::Cutover => "cutover",
            ControlAction::Extend { .. } => "extend",
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
            ControlAction::Cancel => "cancel",
        }
    }
}

/// Fetches one progress snapshot.
pub async fn status(url: &str) -> Result<StatusView, ClientError> {
    ApiClient::new(url)?.get_json("/api/v1/progress").await
}

/// Sends one control request and returns the supervisor's reply.
pub async fn control(url: &str, action: ControlAction) -> Result<Value, ClientError> {
    ApiClient::new(url)?
        .post_json_for(action.path(), &action.body())
        .await
}

/// `ferry status [--watch]`: prints the snapshot; exit code 1 when the daemon cannot be
/// asked.
pub fn status_command(args: StatusArgs) -> ExitCode {
    let interval = Duration::try_from_secs_f64(args.interval_seconds.max(0.1))
        .unwrap_or(Duration::from_secs(2));
    block_on(async move {
        loop {
            let view = match status(&args.target.url).await {
                Ok(view) => view,
                Err(e) => return fail(&e),
            };
            if args.watch && std::io::stdout().is_terminal() {
                // Clear the screen and home the cursor so the view redraws in place.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render_status(&view));
            if !args.watch || view.phase.is_terminal() {
                return ExitCode::SUCCESS;
            }
            tokio::time::sleep(interval).await;
        }
    })
}

/// `ferry cutover|extend|pause|resume|cancel`: prints the daemon's answer; exit code 1
/// with the API's message when it refuses.
pub fn control_command(target: ApiTarget, action: ControlAction) -> ExitCode {
    block_on(async move {
        match control(&target.url, action).await {
            Ok(reply) => {
                println!("{}", render_reply(action, &reply));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    })
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// The verbs are one request each: a current-thread runtime is all they need.
fn block_on(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(fut),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The supervisor's reply in one line: its `message` when it sent one.
pub fn render_reply(action: ControlAction, reply: &Value) -> String {
    match reply.get("message").and_then(Value::as_str) {
        Some(message) => message.to_string(),
        None if reply.is_null() || reply.as_object().is_some_and(|o| o.is_empty()) => {
            format!("{}: accepted", action.verb())
        }
        None => format!("{}: {reply}", action.verb()),
    }
}

/// `[#######-------]  48.2%`; estimates are approximate, so the bar stops at 100%.
fn bar(done: u64, estimated: u64) -> String {
    if estimated == 0 {
        return format!("[{}]    ?  ", "?".repeat(BAR_WIDTH));
    }
    let fraction = (done as f64 / estimated as f64).clamp(0.0, 1.0);
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    format!(
        "[{}{}] {:5.1}%",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        fraction * 100.0
    )
}

/// Bytes when the estimate has them (closer to time remaining), documents otherwise.
fn copy_bar(documents: u64, documents_estimated: u64, bytes: u64, bytes_estimated: u64) -> String {
    if bytes_estimated > 0 {
        bar(bytes, bytes_estimated)
    } else {
        bar(documents, documents_estimated)
    }
}

fn duration_words(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let text = if s >= 3600 {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    };
    if seconds < 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// The status screen: what an operator needs to decide on cutover, one fact a line.
pub fn render_status(view: &StatusView) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(
        out,
        "phase:      {} ({})",
        view.phase.as_str(),
        view.state.as_str()
    );
    let _ = writeln!(
        out,
        "copy:       {}  {} / {} documents, {} / {}",
        copy_bar(
            view.documents_copied,
            view.documents_estimated,
            view.bytes_copied,
            view.bytes_estimated
        ),
        view.documents_copied,
        view.documents_estimated,
        human_bytes(view.bytes_copied),
        human_bytes(view.bytes_estimated),
    );
    let lag = match view.lag_seconds {
        Some(lag) => format!("{lag:.1} s"),
        None => "unknown (syncing has not started)".to_string(),
    };
    let _ = writeln!(out, "lag:        {lag}");
    let _ = writeln!(out, "events:     {} applied", view.events_applied);
    if view.spooled_bytes > 0 {
        let _ = writeln!(
            out,
            "spooled:    {} of changes kept on disk during the copy",
            human_bytes(view.spooled_bytes)
        );
    }
    if view.spool_full {
        let _ = writeln!(
            out,
            "spool:      full (runtime.spool_max_bytes): reading changes waits for the copy to end; the source's oplog must keep them until then"
        );
    }
    if view.retries > 0 {
        let _ = writeln!(
            out,
            "retries:    {} transient failures retried",
            view.retries
        );
    }
    if view.late_writes > 0 {
        let _ = writeln!(
            out,
            "late:       {} writes reached the source after writes were declared stopped",
            view.late_writes
        );
    }
    match view.update_events.as_deref() {
        Some("delta") => {
            let _ = writeln!(out, "updates:    applied as their changed fields");
        }
        Some("lookup") => {
            let _ = writeln!(
                out,
                "updates:    applied as the source's whole document (looked up)"
            );
        }
        _ => {}
    }
    let b = &view.baseline;
    let baseline = match b.state {
        BaselineState::Pending => None,
        BaselineState::Running => Some(format!(
            "running: {} documents compared, {} changed since",
            b.documents_compared, b.documents_changed
        )),
        BaselineState::Done => Some(format!(
            "done: {} documents compared ({} chunks differed); cutover re-reads those and the {} documents changed since",
            b.documents_compared, b.chunks_differing, b.documents_changed
        )),
        BaselineState::Failed => Some(format!(
            "not usable ({}); cutover compares every document",
            b.detail.as_deref().unwrap_or("unknown reason")
        )),
    };
    if let Some(line) = baseline {
        let _ = writeln!(out, "baseline:   {line}");
    }
    match (&view.window_expires_at, view.window_expires_in_seconds) {
        (Some(at), Some(left)) => {
            let _ = writeln!(out, "window:     expires {at} ({})", duration_words(left));
        }
        (Some(at), None) => {
            let _ = writeln!(out, "window:     expires {at}");
        }
        _ => {
            let _ = writeln!(out, "window:     not started");
        }
    }
    if let Some(warning) = &view.window_warning {
        let _ = writeln!(out, "warning:    {warning}");
    }
    if view.can_cutover {
        let _ = writeln!(
            out,
            "cutover:    ready: stop application writes to the source, then run `ferry cutover`"
        );
    }
    if !view.namespaces.is_empty() {
        let _ = writeln!(out, "namespaces:");
        let width = view.namespaces.keys().map(String::len).max().unwrap_or(0);
        for (ns, p) in &view.namespaces {
            let _ = writeln!(
                out,
                "  {ns:<width$}  {:<8} {}  {} / {} docs, {} events",
                p.status,
                copy_bar(
                    p.documents_copied,
                    p.documents_estimated,
                    p.bytes_copied,
                    p.bytes_estimated
                ),
                p.documents_copied,
                p.documents_estimated,
                p.events_applied,
            );
        }
    }
    if let Some(error) = &view.last_error {
        let _ = writeln!(out, "last error: {error}");
    }
    out
}

/// Lets a short-lived printing command (`ferry status | head`, `ferry report | less`) end
/// quietly when its reader goes away, as command-line tools do, instead of panicking on
/// a broken pipe. Not for the daemon or the sandbox: they must outlive a closed log pipe.
pub fn end_quietly_on_closed_output() {
    #[cfg(unix)]
    // SAFETY: called at the start of main, before any thread is spawned; setting the
    // default disposition of SIGPIPE has no other effect on the process's state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_points_at_the_default_listen_address() {
        assert_eq!(
            DEFAULT_API_URL,
            format!("http://{}", crate::config::DEFAULT_API_LISTEN)
        );
    }

    #[test]
    fn bars_clamp_over_estimate_and_mark_unknown_estimates() {
        assert!(bar(150, 100).contains("100.0%"));
        assert!(bar(1, 4).contains(" 25.0%"));
        assert!(bar(5, 0).contains('?'));
    }

    #[test]
    fn status_says_where_the_baseline_stands_and_what_it_means_for_cutover() {
        let progress = crate::progress::Progress::new();
        progress.set_phase(crate::progress::Phase::ReadyForCutover);
        let screen =
            |progress: &crate::progress::Progress| render_status(&StatusView::capture(progress, 0));
        assert!(
            !screen(&progress).contains("baseline:"),
            "not started: no line"
        );
        progress.baseline.write().state = BaselineState::Running;
        progress.baseline.write().documents_compared = 4000;
        assert!(screen(&progress).contains("baseline:   running: 4000 documents compared"));
        {
            let mut view = progress.baseline.write();
            view.state = BaselineState::Failed;
            view.detail = Some("the destination's change stream stopped".into());
        }
        let text = screen(&progress);
        assert!(
            text.contains("not usable (the destination's change stream stopped); cutover compares every document"),
            "{text}"
        );
        *progress.update_events.write() = Some("delta");
        assert!(screen(&progress).contains("updates:    applied as their changed fields"));
    }

    #[test]
    fn window_reads_as_time_left_or_passed() {
        assert_eq!(duration_words(3 * 3600 + 12 * 60), "in 3h 12m");
        assert_eq!(duration_words(-90), "1m 30s ago");
    }
}
