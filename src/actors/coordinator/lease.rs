//! The coordinator's lease renewal: every [`crate::checkpoint::LeaseTerms::renew_every`],
//! one renewal at a time. A lease taken away ends the run ([`Alert::LockLost`]); a renewal
//! that merely fails is retried, while the fence keeps writes stopped once it lapses.
//!
//! The fence does not depend on transactions: each destination write and checkpoint
//! checks the process-local [`crate::checkpoint::Fence`] before it starts, and the lease
//! outlives the fence by half a lease, so it works unchanged on a sharded destination.

use actix::prelude::*;
use tracing::Instrument;

use super::{Alert, Coordinator};
use crate::actors::{error_chain, ActorFailure};
use crate::checkpoint::{CheckpointError, FenceError};

impl Coordinator {
    pub(super) fn renew(&mut self, ctx: &mut Context<Self>) {
        if self.renewing {
            return;
        }
        self.renewing = true;
        let engine = self.engine.clone();
        ctx.spawn(
            async move { engine.checkpoints.renew_lease().await }
                .instrument(tracing::info_span!("coordinator", role = "lease"))
                .into_actor(self)
                .map(|result, act, _| {
                    act.renewing = false;
                    let Err(e) = result else {
                        return;
                    };
                    let fence = act.engine.checkpoints.fence().check();
                    match (&e, fence) {
                        (CheckpointError::LeaseLost { .. }, _)
                        | (CheckpointError::Fenced(FenceError::Lost), _) => {
                            tracing::error!(error = %error_chain(&e), "the destination lease was lost; every destination write stopped");
                            act.alerts.do_send(Alert::LockLost(ActorFailure::new(
                                "coordinator",
                                &e,
                                false,
                            )));
                        }
                        (_, Err(closed)) => {
                            tracing::error!(error = %error_chain(&e), fence = %closed, "the destination lease could not be renewed; destination writes are stopped until it is");
                        }
                        (_, Ok(())) => {
                            tracing::warn!(error = %error_chain(&e), "could not renew the destination lease; will retry");
                        }
                    }
                }),
        );
    }
}
