//! [`Watcher`]: a never-ending stream of lease events.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use etcd_kv::is_transport_error;

use super::manager::Inner;
use super::{parse_subnet_key, Event};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const QUEUE: usize = 256;

/// Events for `<prefix>/subnets/`, from [`SubnetManager::watch`].
///
/// Read it with [`Watcher::next`] (alias [`Watcher::recv`]) or as a
/// `futures_core::Stream`; both are cancel-safe (usable in `select!`). A
/// background task (on the runtime that called `watch`) feeds it; dropping
/// the `Watcher` stops the task.
///
/// * Starts after the given revision (the one [`SubnetManager::leases`]
///   returned), so list + watch misses nothing. A revision <= 0 starts
///   with an [`Event::Resync`] of the current list.
/// * Put → [`Event::Added`] (with the time left on its etcd lease),
///   delete/expiry → [`Event::Removed`]. Records that do not parse are
///   skipped with a warning.
/// * When the start revision was compacted, or the watch breaks (etcd
///   restart, lost connection, leader loss), it yields one
///   [`Event::Resync`] with the full list once etcd answers again and goes
///   on from that list's revision. While etcd is down it retries with a
///   backoff (100 ms doubling to 2 s) and yields nothing.
/// * It never ends on its own: `next()` returns None only after the task
///   died (a panic), never because etcd is away.
///
/// [`SubnetManager::watch`]: super::SubnetManager::watch
/// [`SubnetManager::leases`]: super::SubnetManager::leases
pub struct Watcher {
    rx: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    pub(super) fn spawn(inner: Arc<Inner>, revision: i64) -> Watcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(inner, revision, tx));
        Watcher { rx, task }
    }

    /// The next event; waits as long as it takes.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Same as [`Self::next`], named like `mpsc::Receiver::recv` (for use
    /// in `tokio::select!` next to channels).
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event if one is queued, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures_core::Stream for Watcher {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sleeps for the current backoff and doubles it.
fn pause(backoff: &mut Duration) -> tokio::time::Sleep {
    let d = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::time::sleep(d)
}

async fn run(inner: Arc<Inner>, revision: i64, tx: mpsc::Sender<Event>) {
    let mut rev = revision;
    let mut resync = revision <= 0;
    let mut backoff = BACKOFF_MIN;
    loop {
        if resync {
            match inner.list(true).await {
                Ok((leases, r)) => {
                    tracing::info!(leases = leases.len(), revision = r, "subnet watch: resynced");
                    if tx.send(Event::Resync(leases)).await.is_err() {
                        return;
                    }
                    rev = r;
                }
                Err(e) => {
                    tracing::debug!("subnet watch: cannot list leases yet: {e}");
                    pause(&mut backoff).await;
                    continue;
                }
            }
        }

        let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
        let (handle, mut stream) = match inner.etcd.start_watch(inner.subnets_prefix.clone(), opts).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("subnet watch: {e}");
                resync = true;
                pause(&mut backoff).await;
                continue;
            }
        };

        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::warn!("subnet watch: stream ended, resyncing");
                    inner.etcd.stream_failed(handle);
                    break;
                }
                Err(e) => {
                    tracing::warn!("subnet watch: stream broke ({e}), resyncing");
                    if is_transport_error(&e) {
                        inner.etcd.stream_failed(handle);
                    }
                    break;
                }
            };
            if resp.compact_revision() > 0 {
                tracing::info!(
                    from = rev + 1,
                    compacted = resp.compact_revision(),
                    "subnet watch: start revision was compacted, resyncing"
                );
                backoff = BACKOFF_MIN;
                break;
            }
            if resp.canceled() {
                tracing::warn!("subnet watch canceled by etcd ({}), resyncing", resp.cancel_reason());
                break;
            }
            backoff = BACKOFF_MIN;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                rev = rev.max(kv.mod_revision());
                let event = match ev.event_type() {
                    EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        match parse_subnet_key(&key) {
                            Some((subnet, ipv6_subnet)) => Event::Removed { subnet, ipv6_subnet },
                            None => {
                                tracing::warn!("subnet watch: ignoring delete of non-subnet key {key}");
                                continue;
                            }
                        }
                    }
                    EventType::Put => match inner.lease_from_kv(kv) {
                        Ok(mut lease) => {
                            if lease.etcd_lease != 0 {
                                lease.expires_in = inner.ttl_of(lease.etcd_lease).await.ok();
                            }
                            Event::Added(lease)
                        }
                        Err(e) => {
                            tracing::warn!("subnet watch: ignoring bad subnet record {e}");
                            continue;
                        }
                    },
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
        resync = true;
        pause(&mut backoff).await;
    }
}
