//! The order-independent digest of a set of documents, and the worker pool that hashes
//! them off the actor threads (an actix arbiter is one thread).

use std::thread;

use bson::RawDocumentBuf;
use crossbeam_channel::{bounded, Sender};

use crate::cluster::documents::{self, DocumentCursor, ReadSize};
use crate::cluster::{Cluster, ClusterError};

/// Documents handed to a hashing worker at a time.
const HASH_BATCH: usize = 1000;

/// Order-independent digest of a set of documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub sum: u128,
    pub bytes: u64,
}

impl Digest {
    pub fn add_document(&mut self, raw: &[u8]) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(raw));
        self.bytes += raw.len() as u64;
    }
    pub fn combine(&mut self, other: Digest) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
        self.bytes += other.bytes;
    }
}

/// A batch to hash, where to send its digest, and the span of the actor that asked (a
/// pool thread serves every actor, so the span travels with each job).
type Job = (Vec<RawDocumentBuf>, Sender<Digest>, tracing::Span);

/// Worker threads hashing batches of raw documents.
pub struct HashPool {
    jobs: Option<Sender<Job>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl HashPool {
    pub fn new(threads: usize) -> HashPool {
        let (tx, rx) = bounded::<Job>(threads * 4);
        let workers = (0..threads.max(1))
            .map(|_| {
                let rx = rx.clone();
                thread::spawn(move || {
                    for (docs, reply, span) in rx.iter() {
                        // Whatever is logged here carries the run's and the actor's spans.
                        let _entered = span.enter();
                        let mut d = Digest::default();
                        for doc in &docs {
                            d.add_document(doc.as_bytes());
                        }
                        let _ = reply.send(d);
                    }
                })
            })
            .collect();
        HashPool {
            jobs: Some(tx),
            workers,
        }
    }

    /// Digest of every document of a collection on one side.
    pub async fn digest(
        &self,
        cluster: &Cluster,
        db: &str,
        coll: &str,
    ) -> Result<Digest, ClusterError> {
        let Some(jobs) = self.jobs.clone() else {
            return Ok(Digest::default());
        };
        let (result_tx, result_rx) = crossbeam_channel::unbounded::<Digest>();
        let mut scan = Scan::open(cluster, db, coll).await?;
        let mut batch = Vec::with_capacity(HASH_BATCH);
        let mut sent = 0usize;
        while let Some(d) = scan.next().await? {
            batch.push(d);
            if batch.len() == HASH_BATCH {
                let job = (
                    std::mem::take(&mut batch),
                    result_tx.clone(),
                    tracing::Span::current(),
                );
                let jobs = jobs.clone();
                // The channel is bounded: hand the job over without blocking the runtime.
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .ok();
                sent += 1;
            }
        }
        if !batch.is_empty() {
            let jobs = jobs.clone();
            let job = (batch, result_tx.clone(), tracing::Span::current());
            tokio::task::spawn_blocking(move || jobs.send(job))
                .await
                .ok();
            sent += 1;
        }
        drop(result_tx);
        let total = tokio::task::spawn_blocking(move || {
            let mut total = Digest::default();
            for d in result_rx.iter().take(sent) {
                total.combine(d);
            }
            total
        })
        .await
        .unwrap_or_default();
        Ok(total)
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Every document of a collection on one side, as raw BSON.
pub(super) struct Scan {
    action: String,
    cursor: DocumentCursor,
}

impl Scan {
    pub(super) async fn open(
        cluster: &Cluster,
        db: &str,
        coll: &str,
    ) -> Result<Scan, ClusterError> {
        let action = format!("scan {db}.{coll}");
        let size = ReadSize {
            batch: Some(HASH_BATCH as u32),
            limit: None,
        };
        let cursor = documents::read_all(cluster, db, coll, size)
            .await
            .map_err(|e| e.during(action.clone()))?;
        Ok(Scan { action, cursor })
    }

    pub(super) async fn next(&mut self) -> Result<Option<RawDocumentBuf>, ClusterError> {
        self.cursor
            .next()
            .await
            .map_err(|e| e.during(self.action.clone()))
    }
}
