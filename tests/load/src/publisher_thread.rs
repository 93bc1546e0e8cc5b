//! A thread of its own for the publishers' connection tasks.
//!
//! A publisher on a real network is a tablet or a browser on its own machine: it sends
//! on its pacer's schedule whatever the server's other clients are doing. In the
//! generator, the publishers share two runtime threads with every subscriber. At
//! 1 → 450 each packet the server forwards arrives as 450 datagrams for the subscribers
//! to read, and a publisher's timer then fires 4-10 ms late (send lag p99, session 14).
//! Its pacer catches up in one burst, and the server under test gets bursts that only
//! exist because its clients share its machine.
//!
//! [`PublisherThread`] runs the publishers on a current-thread runtime in a thread
//! that always has the normal scheduling policy, even under `--sched batch`. When a
//! timer is due, that thread is woken at once and does not wait behind the
//! subscribers' receive work. Both servers under test get the same. The report
//! records whether the thread was used (`--publisher-thread`).

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The running thread. Dropping it stops the runtime; tasks still on it are dropped.
pub struct PublisherThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PublisherThread {
    /// Starts the thread (named `publishers`) and its runtime.
    pub fn start() -> std::io::Result<PublisherThread> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<Handle>>();
        let thread = std::thread::Builder::new()
            .name("publishers".to_owned())
            .spawn(move || {
                // Threads inherit the creator's policy; this one must not be batch.
                if let Err(e) = crate::sched::use_normal() {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Drives the publishers' tasks until told to stop (or the owner is gone).
                let _ = runtime.block_on(stop_rx);
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the publisher thread ended during startup"))??;
        Ok(PublisherThread {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Where to spawn publisher tasks.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for PublisherThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_named_thread_under_the_normal_policy_even_from_a_batch_parent() {
        std::thread::spawn(|| {
            crate::sched::use_batch().unwrap();
            let publishers = PublisherThread::start().unwrap();
            let (name, policy) = publishers
                .handle()
                .block_on(async {
                    tokio::spawn(async {
                        (
                            std::thread::current().name().map(str::to_owned),
                            crate::sched::policy_name(),
                        )
                    })
                    .await
                })
                .unwrap();
            assert_eq!(name.as_deref(), Some("publishers"));
            assert_eq!(policy, "normal");
            drop(publishers);
        })
        .join()
        .unwrap();
    }
}
