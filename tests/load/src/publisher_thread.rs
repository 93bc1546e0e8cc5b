//! The publishers' own thread.
//!
//! A publisher's pacer has to run on time. On the generator's main runtime a publisher task
//! waits its turn behind every subscriber task that the last fan-out woke: at 1 → 350 its
//! send lag p99 was 8-9 ms. The pacer then catches up in a burst, and the burst queues in
//! the server under test, so the generator's own scheduling showed up as server latency.
//! A real publisher (a tablet's browser) is a machine of its own and is not slowed down by
//! the people watching it. So every publisher connection runs on one current-thread
//! runtime here, on a thread that nothing else uses.

use std::sync::OnceLock;

use tokio::runtime::Handle;

static PUBLISHERS: OnceLock<Option<Handle>> = OnceLock::new();

/// The publishers' runtime, started on first use; `None` if the thread or runtime could
/// not be started (callers then stay on their own runtime, and say so in the log).
pub fn handle() -> Option<Handle> {
    PUBLISHERS.get_or_init(start).clone()
}

fn start() -> Option<Handle> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%e, "no publisher runtime: publishers share the main runtime");
            return None;
        }
    };
    let handle = runtime.handle().clone();
    // The runtime lives as long as the process: publishers are spawned onto it from any
    // test or scenario, and a current-thread runtime only runs tasks while it is blocked on.
    let spawned = std::thread::Builder::new()
        .name("publishers".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()));
    match spawned {
        Ok(_) => Some(handle),
        Err(e) => {
            tracing::warn!(%e, "no publisher thread: publishers share the main runtime");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_publisher_thread_and_its_timers_fire() {
        let runtime = handle().expect("publisher runtime");
        let task = runtime.spawn(async {
            let before = std::time::Instant::now();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            (
                std::thread::current().name().map(str::to_owned),
                before.elapsed(),
            )
        });
        let (name, slept) = task.await.unwrap();
        assert_eq!(name.as_deref(), Some("publishers"));
        assert!(slept >= std::time::Duration::from_millis(20), "{slept:?}");
        // The same runtime for every caller.
        assert!(handle().unwrap().id() == runtime.id());
    }
}
