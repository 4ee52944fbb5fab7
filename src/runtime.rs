//! The Tokio runtime of the binary: single-threaded when the process has one
//! CPU to run on, multi-threaded (one worker per CPU) otherwise.
//!
//! A multi-threaded runtime with a single worker buys no parallelism and
//! costs a lot per call: measured with `tools/loadgen`, the server
//! pinned to one CPU answered `Health/Check` at about 2× and a cached
//! `Verify` at about 1.9× the rate on the current-thread runtime, at half
//! the CPU time per call (docs/performance.md). With one CPU (a container
//! limited to one core, `taskset`, or `TOKIO_WORKER_THREADS=1`) the
//! current-thread runtime is therefore used.

use tokio::runtime::{Builder, Runtime};

/// The worker threads a multi-threaded runtime would start:
/// `TOKIO_WORKER_THREADS` when set to a positive number, otherwise the CPUs
/// this process may run on (affinity and cgroup quota included).
pub fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Builds the runtime: current-thread for one worker, multi-threaded otherwise.
pub fn build() -> std::io::Result<Runtime> {
    let mut builder = if worker_threads() == 1 { Builder::new_current_thread() } else { Builder::new_multi_thread() };
    builder.enable_all().build()
}
