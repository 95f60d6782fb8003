//! Making nodes' deferred memory writes durable, one flush for many nodes.
//!
//! A node's write-back is deferred (visible at once, not yet synced); its checkpoint waits for
//! [`MemoryStore::make_durable`] before it counts. When many nodes finish together (every run's
//! LLM call returning at once), the store's own group commit would make them share a flush,
//! but each would still hold a blocking thread while it waits: a burst of 32 checkpoints
//! started up to 32 threads, each woken twice. Here the waiting is asynchronous: the first
//! checkpoint to find no flush in progress leads one on a blocking thread, covering every
//! write applied so far; the others await its end on the executor and find themselves
//! covered, or lead the next flush if their write came after it started (as in the journal's
//! group commit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentd_memory::MemoryStore;
use tokio::sync::Notify;

use crate::RuntimeError;

/// The store's flush in progress, shared by a runtime's runs.
#[derive(Default)]
pub(crate) struct StoreSync {
    flushing: AtomicBool,
    flushed: Notify,
}

/// Ends a flush's leadership, also when the leader's future is dropped mid-flush (a cancelled
/// run): the waiters wake and one of them leads the next flush.
struct Lead<'a>(&'a StoreSync);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.flushing.store(false, Ordering::Release);
        self.0.flushed.notify_waiters();
    }
}

impl StoreSync {
    /// Returns once every store write up to `seq` is durable.
    pub(crate) async fn durable(
        &self,
        store: &Arc<dyn MemoryStore>,
        seq: u64,
    ) -> Result<(), RuntimeError> {
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            // Registered before the checks, so a flush ending after them wakes us.
            flushed.as_mut().enable();
            if store.is_durable(seq) {
                return Ok(());
            }
            if self
                .flushing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _lead = Lead(self);
                // Everything applied so far, which includes `seq`: the writes that queued
                // behind ours share this flush.
                let store = Arc::clone(store);
                let target = store.last_seq().max(seq);
                return tokio::task::spawn_blocking(move || store.make_durable(target))
                    .await
                    .map_err(|e| RuntimeError::Internal(format!("a store flush failed: {e}")))?
                    .map_err(RuntimeError::from);
            }
            flushed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_memory::{EmbeddedStore, NewItem, StoreOptions};

    /// Many concurrent waiters, each after its own deferred write: none returns before its
    /// write is durable, and together they make far fewer flushes than writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_all_become_durable_and_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::new(
            Arc::new(agentd_memory::embed::HashingEmbedder::default()),
            agentd_memory::tokens::default_token_counter(),
        );
        let embedded = Arc::new(EmbeddedStore::open(dir.path(), options).unwrap());
        let flushes_before = embedded.write_flushes();
        let store: Arc<dyn MemoryStore> = embedded.clone();
        let sync = Arc::new(StoreSync::default());
        let mut tasks = Vec::new();
        for i in 0..32 {
            let store = Arc::clone(&store);
            let sync = Arc::clone(&sync);
            tasks.push(tokio::spawn(async move {
                let item = NewItem::new("ns", agentd_memory::Kind::Fact, format!("fact {i}"));
                store.put_batch_deferred(vec![item]).unwrap();
                let seq = store.last_seq();
                sync.durable(&store, seq).await.unwrap();
                assert!(
                    store.is_durable(seq),
                    "waiter {i} returned before its write was durable"
                );
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(store.is_durable(store.last_seq()));
        assert!(!sync.flushing.load(Ordering::Acquire));
        let flushes = embedded.write_flushes() - flushes_before;
        assert!(
            (1..=16).contains(&flushes),
            "32 waiters made {flushes} flushes: they should share them"
        );
    }
}
