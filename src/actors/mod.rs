//! The actors of a migration and how they are wired together.
//!
//! ```text
//!                 Supervisor (phase, restarts with backoff, operator requests)
//!        +-------------+--------------+----------------+
//!        v             v              v                v
//!   Coordinator      Copier         Tailer          Verifier
//!   lease,           _id ranges     change stream    counts + hashes
//!   balancers,       -> bulk         -> Applier       on both sides
//!   window, cutover, inserts           per namespace
//!   metadata watch
//! ```
//!
//! Data flow: the copier copies every planned collection range by range (each finished
//! batch checkpointed); then the tailer replays the source's change stream from the start
//! time captured before the copy, routing events to one applier per namespace (bounded
//! mailboxes: a slow destination slows the reader). Applying is idempotent, so the
//! overlap between copy and replay converges. Once in sync, the baseline verification
//! compares both sides in the background and remembers what changes on either side
//! since. At cutover the tailer drains to the source's optime, the verifier compares
//! both sides (from the baseline, only what changed), and the coordinator finalizes.

pub mod applier;
pub mod coordinator;
pub mod copier;
pub mod generation;
pub mod supervisor;
pub mod tailer;
pub mod verifier;

use std::sync::Arc;

use crate::checkpoint::Checkpoints;
use crate::cluster::topology::{self, TopologyKind};
use crate::cluster::Cluster;
use crate::config::{Config, NamespaceFilter};
use crate::progress::SharedProgress;
pub use generation::WorkerGeneration;

/// What every actor of one migration shares: config, both deployments (each with the
/// topology discovered once when the engine is assembled), the checkpoint store and the
/// progress registry.
pub struct Engine {
    pub config: Config,
    pub source: Cluster,
    pub destination: Cluster,
    /// The source's shape: one replica set, or a router with its shards.
    pub source_topology: TopologyKind,
    /// The destination's shape.
    pub destination_topology: TopologyKind,
    pub filter: NamespaceFilter,
    pub checkpoints: Checkpoints,
    pub progress: SharedProgress,
    /// Documents changed since the baseline verification began (see [`verifier::baseline`]).
    pub baseline: verifier::baseline::Tracker,
    /// The generation of the running workers: a restart after a failure starts a new one.
    pub generation: WorkerGeneration,
    /// Shard keys of the destination's collections, for writes whose events lack them.
    pub destination_keys: applier::DestinationKeys,
}

impl Engine {
    /// Assembles the engine of one migration, discovering each side's topology once;
    /// every module asks the engine instead of detecting it again.
    pub async fn assemble(
        config: Config,
        source: Cluster,
        destination: Cluster,
        checkpoints: Checkpoints,
        progress: SharedProgress,
    ) -> Result<Engine, EngineError> {
        let filter = config.namespace_filter().map_err(EngineError::Filter)?;
        let source_topology = topology::topology(&source).await?;
        let destination_topology = topology::topology(&destination).await?;
        Ok(Engine {
            baseline: verifier::baseline::Tracker::new(
                config.cutover.recheck_max_documents,
                progress.clone(),
            ),
            config,
            source,
            destination,
            source_topology,
            destination_topology,
            filter,
            checkpoints,
            progress,
            generation: Default::default(),
            destination_keys: Default::default(),
        })
    }
}

/// Why an engine could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Filter(crate::config::ConfigError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

pub type SharedEngine = Arc<Engine>;

/// A failure inside an actor, with whether a restart from the last checkpoint may help.
#[derive(Debug, Clone)]
pub struct ActorFailure {
    pub component: &'static str,
    pub message: String,
    pub transient: bool,
}

impl ActorFailure {
    pub fn new(
        component: &'static str,
        error: &(dyn std::error::Error + 'static),
        transient: bool,
    ) -> ActorFailure {
        ActorFailure {
            component,
            message: error_chain(error),
            transient,
        }
    }
}

/// "outer: inner: innermost" for an error and its sources.
pub use crate::cluster::describe_error as error_chain;
