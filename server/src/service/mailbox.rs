//! Group commit for `sendToDevice`.
//!
//! Request handlers hand their expanded [`SendRequest`] to one writer task through a bounded
//! channel and wait. The writer takes whatever has queued up (up to [`MAX_BATCH`] requests),
//! commits it with ONE [`Store::commit_sends`] transaction, wakes the recipients' syncs, and only
//! then answers each waiter. Under load many requests share one fsync; with one sender the cost
//! is a single transaction, as without batching.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::service::notify::Notifier;
use crate::service::{now_ms, stopped};
use crate::store::{SendOutcome, SendRequest, Store};

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Requests that may wait for the writer before submitters are back-pressured.
pub const QUEUE_DEPTH: usize = 4096;

/// Called after a commit that queued EDUs for other servers (the federation sender's "look for
/// work now"), installed with [`crate::state::AppState::set_outbound_poke`].
pub type OutboundPoke = Arc<dyn Fn() + Send + Sync>;

/// Where the writer finds the (possibly not yet installed) outbound poke.
pub type OutboundPokeSlot = Arc<OnceLock<OutboundPoke>>;

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The writer has stopped (shutdown).
    #[error("the mailbox writer is shutting down")]
    ShuttingDown,
    /// The commit failed; nothing of this batch was written.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The database is unreachable or restarting; nothing of this batch was written and the
    /// request may be retried as it is.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

struct Job {
    request: SendRequest,
    reply: oneshot::Sender<Result<SendOutcome, MailboxError>>,
}

/// Handle used by request handlers; cheap to clone.
#[derive(Clone)]
pub struct MailboxWriter {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for MailboxWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxWriter").finish_non_exhaustive()
    }
}

/// The running writer task; [`MailboxTask::shutdown`] flushes and stops it.
#[derive(Debug)]
pub struct MailboxTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl MailboxWriter {
    /// Starts the writer task.
    pub fn start(
        store: Store,
        notifier: Notifier,
        mailbox_cap: i64,
        outbound_poke: OutboundPokeSlot,
    ) -> (MailboxWriter, MailboxTask) {
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let (stop, stop_rx) = watch::channel(false);
        let writer = Writer {
            store,
            notifier,
            mailbox_cap,
            outbound_poke,
        };
        let handle = tokio::spawn(run(writer, rx, stop_rx));
        (MailboxWriter { jobs }, MailboxTask { stop, handle })
    }

    /// Submits a request and waits until it is committed (or refused).
    pub async fn submit(&self, request: SendRequest) -> Result<SendOutcome, MailboxError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { request, reply })
            .await
            .map_err(|_| MailboxError::ShuttingDown)?;
        answer.await.map_err(|_| MailboxError::ShuttingDown)?
    }
}

impl MailboxTask {
    /// Stops accepting requests, commits everything already queued, and waits for the task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "mailbox writer task failed");
        }
    }
}

/// What the writer task owns.
struct Writer {
    store: Store,
    notifier: Notifier,
    mailbox_cap: i64,
    outbound_poke: OutboundPokeSlot,
}

async fn run(writer: Writer, mut rx: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            () = stopped(&mut stop) => {
                // Refuse new submissions; what is queued is still committed below.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&writer, &mut batch).await;
    }
}

async fn commit_batch(writer: &Writer, batch: &mut Vec<Job>) {
    // Waiters that went away (client disconnected) are still committed: the client may retry
    // with the same txnId and will then get the idempotent answer.
    let (requests, replies): (Vec<SendRequest>, Vec<_>) =
        batch.drain(..).map(|j| (j.request, j.reply)).unzip();
    let result = writer
        .store
        .commit_sends(&requests, writer.mailbox_cap, now_ms())
        .await;
    match result {
        Ok(outcomes) if outcomes.len() == replies.len() => {
            let mut queued_remote = false;
            for ((reply, outcome), request) in replies.into_iter().zip(outcomes).zip(&requests) {
                if let SendOutcome::Committed(woken) = &outcome {
                    for (user_id, device_id) in woken {
                        writer.notifier.wake_device(user_id, device_id);
                    }
                    queued_remote |= !request.remote.is_empty();
                }
                let _ = reply.send(Ok(outcome));
            }
            if queued_remote {
                if let Some(poke) = writer.outbound_poke.get() {
                    poke();
                }
            }
        }
        Ok(outcomes) => {
            tracing::error!(
                expected = replies.len(),
                got = outcomes.len(),
                "commit_sends returned the wrong number of outcomes"
            );
            for reply in replies {
                let _ = reply.send(Err(MailboxError::Commit("outcome count mismatch".into())));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, requests = replies.len(), "group commit failed");
            let unavailable = crate::error::store_unavailable(&e);
            for reply in replies {
                let detail = e.to_string();
                let _ = reply.send(Err(if unavailable {
                    MailboxError::Unavailable(detail)
                } else {
                    MailboxError::Commit(detail)
                }));
            }
        }
    }
}
