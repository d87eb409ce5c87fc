//! The cutover window: opened when the destination is first in sync, extended on request,
//! warned about before it expires (`cutover.warn_before_expiry_hours`: log, progress,
//! webhook), and, once passed outside a cutover, the end of the run
//! ([`Alert::WindowExpired`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use bson::doc;

use super::{Alert, Coordinator};
use crate::actors::error_chain;
use crate::checkpoint::unix_now;
use crate::progress::Phase;

/// How often the window is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The cutover window's length in whole seconds (at least one).
fn window_seconds(hours: f64) -> i64 {
    ((hours * 3600.0).round() as i64).max(1)
}

/// The window's state in the coordinator.
#[derive(Debug, Default)]
pub struct Window {
    /// Unix seconds when the window closes (None: not open yet).
    expires_at: Option<i64>,
    /// Warnings (hours before expiry) already given for the current expiry.
    warned_hours: Vec<f64>,
    /// The expiry was reported to the supervisor.
    expired: bool,
    /// Unix seconds when the current cutover began (None: no cutover running).
    cutover_since: Option<i64>,
    /// The current cutover was reported as running long.
    cutover_warned: bool,
}

impl Window {
    pub fn new(expires_at: Option<i64>) -> Window {
        Window {
            expires_at,
            ..Default::default()
        }
    }
}

/// The destination is in sync: open the window unless it is open.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OpenWindow;

/// Extends the window by `hours` (from its expiry, or from now if it is not open yet);
/// answers the new expiry in Unix seconds.
#[derive(Message)]
#[rtype(result = "i64")]
pub struct ExtendWindow {
    pub hours: f64,
}

impl Coordinator {
    fn set_expiry(&mut self, ctx: &mut Context<Self>, expires: i64, what: &'static str) {
        self.window.expires_at = Some(expires);
        self.engine
            .progress
            .window_expires_at
            .store(expires, Ordering::Relaxed);
        let engine = self.engine.clone();
        ctx.spawn(
            async move {
                if let Err(e) = engine
                    .checkpoints
                    .set_state(doc! {"window_expires_at": expires})
                    .await
                {
                    tracing::warn!(error = %error_chain(&e), "could not record the {what}");
                }
            }
            .into_actor(self),
        );
    }

    /// A cutover running longer than `cutover.long_cutover_warning_hours` is reported
    /// once (log, progress, webhook `cutover_long`): the source's writes are stopped and
    /// the destination is not serving yet.
    fn check_cutover_duration(&mut self) {
        if self.engine.progress.phase() != Phase::CuttingOver {
            self.window.cutover_since = None;
            self.window.cutover_warned = false;
            return;
        }
        let now = unix_now();
        let since = *self.window.cutover_since.get_or_insert(now);
        let limit = self.engine.config.cutover.long_cutover_warning_hours * 3600.0;
        if self.window.cutover_warned || ((now - since) as f64) < limit {
            return;
        }
        self.window.cutover_warned = true;
        let hours = (now - since) as f64 / 3600.0;
        let message = format!(
            "the cutover has been in progress for {hours:.2} hours: application writes are stopped and the destination is not serving yet; see the log and ferry status for what it waits for, then retry or cancel"
        );
        tracing::warn!(hours, "{message}");
        *self.engine.progress.window_warning.write() = Some(message.clone());
        crate::notify::send(&self.engine, "cutover_long", &message);
    }

    pub(super) fn check_window(&mut self) {
        self.check_cutover_duration();
        let Some(expires) = self.window.expires_at else {
            return;
        };
        let phase = self.engine.progress.phase();
        if self.window.expired || phase.is_terminal() || phase == Phase::CuttingOver {
            return;
        }
        let left = expires - unix_now();
        if left <= 0 {
            self.window.expired = true;
            tracing::error!("the cutover window expired: syncing stopped, the source is untouched; start a new migration to try again");
            self.alerts.do_send(Alert::WindowExpired);
            return;
        }
        for &hours in &self.engine.config.cutover.warn_before_expiry_hours {
            if left as f64 <= hours * 3600.0 && !self.window.warned_hours.contains(&hours) {
                self.window.warned_hours.push(hours);
                tracing::warn!(hours_left = left as f64 / 3600.0, "the cutover window expires soon: cut over or extend it (ferry extend --hours N)");
                *self.engine.progress.window_warning.write() = Some(format!(
                    "the cutover window expires in {:.2} hours: cut over or extend it (ferry extend --hours N)",
                    left as f64 / 3600.0
                ));
                crate::notify::send(
                    &self.engine,
                    "window_expiring",
                    &format!(
                        "the cutover window expires in {:.1} hours",
                        left as f64 / 3600.0
                    ),
                );
            }
        }
    }
}

impl Handler<OpenWindow> for Coordinator {
    type Result = ();
    fn handle(&mut self, _: OpenWindow, ctx: &mut Self::Context) {
        if self.window.expires_at.is_some() {
            return;
        }
        let expires = unix_now() + window_seconds(self.engine.config.cutover.window_hours);
        self.set_expiry(ctx, expires, "cutover window");
    }
}

impl Handler<ExtendWindow> for Coordinator {
    type Result = i64;
    fn handle(&mut self, msg: ExtendWindow, ctx: &mut Self::Context) -> i64 {
        let base = self.window.expires_at.unwrap_or_else(|| {
            unix_now() + window_seconds(self.engine.config.cutover.window_hours)
        });
        let expires = base + (msg.hours * 3600.0) as i64;
        self.window.warned_hours.clear();
        *self.engine.progress.window_warning.write() = None;
        self.set_expiry(ctx, expires, "extended window");
        expires
    }
}
