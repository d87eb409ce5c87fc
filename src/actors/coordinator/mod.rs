//! Coordinator: the actor that owns what spans the whole migration rather than one stream
//! of data, each as messages it handles:
//! - [`lease`]: renews the destination lease and tells the supervisor when it is lost (the
//!   lease's fence has by then stopped every destination write, see
//!   [`crate::checkpoint::lease`]);
//! - [`balancers`]: records and stops the balancers of sharded sides at the start, stops
//!   one again when someone else re-enables it, and restores exactly what was recorded in
//!   every ending;
//! - [`window`]: the cutover window, its warnings and its expiry;
//! - [`cutover`]: the cutover handshake (source write block, drain target, verification,
//!   finalization) and giving the source its writes back after a refusal or an ending;
//! - [`metadata`]: watches a sharded source's `config` metadata during the run, and stops
//!   the run when it changes in a way the change stream cannot carry (movePrimary, shards
//!   added or removed, a shard key refined or resharded).
//!
//! The supervisor keeps the phase machine: it sends the coordinator requests and receives
//! its [`Alert`]s.

pub mod balancers;
pub mod cutover;
pub mod lease;
pub mod metadata;
pub mod window;

use actix::prelude::*;

use super::{ActorFailure, SharedEngine};
use crate::checkpoint::RunState;

pub use cutover::{finalize_indexes, SourceWriteBlock};

/// What the coordinator tells the supervisor on its own initiative: each ends the run.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum Alert {
    /// The lease was lost: it was changed or deleted by someone else, and this process
    /// has stopped writing.
    LockLost(ActorFailure),
    /// The cutover window passed without a cutover.
    WindowExpired,
    /// The source's sharding metadata changed in a way Ferry cannot follow.
    MetadataChanged(String),
}

pub struct Coordinator {
    engine: SharedEngine,
    alerts: Recipient<Alert>,
    /// A renewal is under way (a slow destination must not pile them up).
    renewing: bool,
    balancers: balancers::BalancerWatch,
    window: window::Window,
    cutover: cutover::Handshake,
    metadata: metadata::MetadataWatch,
}

impl Coordinator {
    /// `state` is the run's recorded state (window expiry, a write block left by an
    /// interrupted cutover).
    pub fn new(engine: SharedEngine, state: &RunState, alerts: Recipient<Alert>) -> Coordinator {
        if let Some(expires) = state.window_expires_at {
            engine
                .progress
                .window_expires_at
                .store(expires, std::sync::atomic::Ordering::Relaxed);
        }
        Coordinator {
            engine,
            alerts,
            renewing: false,
            balancers: Default::default(),
            window: window::Window::new(state.window_expires_at),
            cutover: cutover::Handshake::new(state.source_write_blocked),
            metadata: Default::default(),
        }
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.engine.checkpoints.lease_terms().renew_every();
        ctx.run_interval(every, |act, ctx| act.renew(ctx));
        ctx.run_interval(window::CHECK_EVERY, |act, _| {
            let _window = tracing::info_span!("coordinator", role = "window").entered();
            act.check_window()
        });
        ctx.run_interval(balancers::CHECK_EVERY, |act, ctx| act.check_balancers(ctx));
        ctx.run_interval(metadata::CHECK_EVERY, |act, ctx| act.check_metadata(ctx));
    }
}

/// The run starts moving data: record and stop the balancers, and take the snapshot of
/// the source's sharding metadata that later reads are compared with. Answers an error
/// (with whether a retry may help) when a balancer could not be stopped.
#[derive(Message)]
#[rtype(result = "Result<(), ActorFailure>")]
pub struct StartRun;

/// The run ends (completed, cancelled, failed, expired): give the source its writes back
/// if Ferry blocked them, and restore the balancers as recorded. Answers the balancer
/// warnings (already logged, in the progress and announced).
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct Conclude;

impl Handler<StartRun> for Coordinator {
    type Result = ResponseActFuture<Self, Result<(), ActorFailure>>;
    fn handle(&mut self, _: StartRun, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let gate = self.balancers.gate();
        Box::pin(
            async move {
                let held = balancers::stop_all(&engine, &gate).await.map_err(|e| {
                    let transient = e.is_transient();
                    ActorFailure::new("coordinator", &e, transient)
                })?;
                let snapshot = if engine.source_topology.is_sharded() {
                    metadata::first_snapshot(&engine).await
                } else {
                    None
                };
                Ok((held, snapshot))
            }
            .into_actor(self)
            .map(|result, act, _| {
                let (held, snapshot) = result?;
                act.hold_balancers(held);
                act.metadata.start_from(snapshot);
                Ok(())
            }),
        )
    }
}

impl Handler<Conclude> for Coordinator {
    type Result = ResponseActFuture<Self, Vec<String>>;
    fn handle(&mut self, _: Conclude, ctx: &mut Self::Context) -> Self::Result {
        self.release_balancers();
        let lift = ctx.address().send(cutover::LiftWriteBlock);
        let engine = self.engine.clone();
        let gate = self.balancers.gate();
        Box::pin(
            async move {
                match lift.await {
                    Ok(Ok(true)) => tracing::info!("the source takes writes again"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "could not lift the write block on the source: run setUserWriteBlockMode {{global: false}} on it"),
                    Err(e) => tracing::error!(error = %e, "could not lift the write block on the source: run setUserWriteBlockMode {{global: false}} on it"),
                }
                balancers::restore_all(&engine, &gate).await
            }
            .into_actor(self),
        )
    }
}
