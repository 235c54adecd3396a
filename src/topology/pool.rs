//! A stage's tasks, as many as asked for while the pipeline runs: more are started at
//! once; fewer are asked to retire, and each retiring task first finishes what it holds
//! (its chunk, its retries, the keys they hold), so that a shrink loses, repeats or
//! reorders nothing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::topology::Fault;

/// A task's notice to retire: it takes no more input, finishes what it holds, and ends.
#[derive(Debug, Default)]
pub(crate) struct Retire {
    requested: AtomicBool,
    notify: Notify,
}

impl Retire {
    /// Whether the task is to retire: checked on every pass (one atomic load).
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Completes once the task is to retire: for a task waiting for input.
    pub(crate) async fn requested(&self) {
        while !self.is_requested() {
            self.notify.notified().await;
        }
    }

    fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
        // `notify_one` keeps the wake-up for a task not yet waiting.
        self.notify.notify_one();
    }
}

/// Keeps a stage's task count at the size asked through `size`, until every task has
/// ended by itself (its input closed) or the size's sender is gone and they have ended.
pub(crate) struct Pool<F> {
    /// Starts one task with its retire notice.
    pub(crate) spawn: F,
    pub(crate) size: watch::Receiver<usize>,
    pub(crate) fault: Arc<Fault>,
    /// The stage's running tasks, retiring ones included.
    pub(crate) tasks_gauge: prometheus::IntGauge,
}

impl<F, T> Pool<F>
where
    F: FnMut(Arc<Retire>) -> T,
    T: Future<Output = ()> + Send + 'static,
{
    pub(crate) async fn run(mut self) {
        let mut tasks = JoinSet::new();
        // Newest last: a shrink retires the newest, the oldest keep their warm state.
        let mut active: Vec<Arc<Retire>> = Vec::new();
        let mut watching = true;
        loop {
            let want = *self.size.borrow_and_update();
            while active.len() < want {
                let retire = Arc::new(Retire::default());
                tasks.spawn((self.spawn)(retire.clone()));
                self.tasks_gauge.inc();
                active.push(retire);
            }
            while active.len() > want {
                if let Some(retire) = active.pop() {
                    retire.request();
                }
            }
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    None => return,
                    Some(joined) => {
                        self.tasks_gauge.dec();
                        self.fault.check(joined);
                    }
                },
                changed = self.size.changed(), if watching => watching = changed.is_ok(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio_util::sync::CancellationToken;

    /// Tasks that each count themselves while alive and end when retired or when `end`
    /// is cancelled.
    fn pool(
        size: watch::Receiver<usize>,
        end: CancellationToken,
    ) -> (
        Pool<impl FnMut(Arc<Retire>) -> futures_util::future::BoxFuture<'static, ()>>,
        prometheus::IntGauge,
    ) {
        let gauge = prometheus::IntGauge::new("unit_pool_tasks", "tasks").unwrap();
        let spawn = move |retire: Arc<Retire>| -> futures_util::future::BoxFuture<'static, ()> {
            let end = end.clone();
            Box::pin(async move {
                tokio::select! {
                    () = retire.requested() => {}
                    () = end.cancelled() => {}
                }
            })
        };
        let pool = Pool {
            spawn,
            size,
            fault: Arc::new(Fault::default()),
            tasks_gauge: gauge.clone(),
        };
        (pool, gauge)
    }

    async fn settled(gauge: &prometheus::IntGauge, want: i64) {
        while gauge.get() != want {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn grows_and_shrinks_to_the_size_asked_then_ends_with_its_tasks() {
        let (size, watched) = watch::channel(3);
        let end = CancellationToken::new();
        let (pool, gauge) = pool(watched, end.clone());
        let running = tokio::spawn(pool.run());
        settled(&gauge, 3).await;
        size.send_replace(5);
        settled(&gauge, 5).await;
        size.send_replace(1);
        settled(&gauge, 1).await;
        drop(size);
        end.cancel();
        running.await.unwrap();
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_retire_notice_sent_before_the_task_waits_is_not_lost() {
        let retire = Retire::default();
        retire.request();
        retire.requested().await;
        assert!(retire.is_requested());
    }
}
