//! What the gateway asks of the Linux kernel for itself at start, before its first thread:
//! no transparent huge pages, and its threads' scheduling policy (`--scheduler`). Elsewhere both
//! are no-ops.

use crate::settings::Scheduler;

/// Transparent huge pages off for this process (`PR_SET_THP_DISABLE`; mimalloc asks for them on
/// its arenas): the first touch of a 2 MiB page zeroes all of it inside whatever request touched
/// it, which on a VM stalled a serving thread and all its connections for 1–5 ms, several times
/// a second while a store grows. With 4 KiB pages the same zeroing comes in pieces too small to
/// see (new keys: wrk p99 3.4–5.2 → 2.0–3.9 ms, +3–6 % req/s; docs/PERFORMANCE.md). Best
/// effort: a kernel without the call leaves things as they were.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// The scheduling policy could not be set; the process keeps the kernel's default.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("cannot read the nice value: {0}")]
    Nice(std::io::Error),
    #[error("no priority of the thread-priority crate maps to nice {0}")]
    NoPriority(i32),
    /// The thread-priority crate's error, formatted (the crate is a Linux-only dependency).
    #[error("cannot set the policy: {0}")]
    Policy(String),
}

/// Sets the calling thread's policy; threads it starts afterwards inherit it, so `main` calls
/// this before it starts any. `SCHED_BATCH` keeps the thread's nice value and its share of the
/// CPU; what changes is that a batch thread woken up (by a request, an upstream reply or a store
/// reply) waits for the running task's slice to end instead of preempting it at once. Where the
/// gateway shares CPUs with its upstream or its clients, that keeps them from being cut off in
/// the middle of a response, and each thread handles more ready connections per turn:
/// docs/PERFORMANCE.md has the figures (replays +27 %, Redis +6 %, new keys unchanged on the
/// 2-core VM) and DESIGN.md the trade-off (on CPUs that other busy tasks share, a woken thread
/// can wait up to a scheduler tick).
pub fn set_scheduler(scheduler: Scheduler) -> Result<(), SchedulerError> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
            ThreadSchedulePolicy,
        };
        let policy = ThreadSchedulePolicy::Normal(match scheduler {
            Scheduler::Batch => NormalThreadSchedulePolicy::Batch,
            Scheduler::Normal => NormalThreadSchedulePolicy::Other,
        });
        let nice = rustix::process::getpriority_process(None).map_err(|e| SchedulerError::Nice(e.into()))?;
        // The crate sets a nice value together with the policy, mapped from its 0..=99 scale:
        // pick the step that maps to the current value, so an operator's `nice` stays as it was
        // (and an unprivileged process is never asked to raise its priority).
        let priority = (0..=99u8)
            .filter_map(|p| p.try_into().ok().map(ThreadPriority::Crossplatform))
            .find(|p| p.to_posix(policy).ok() == Some(nice))
            .ok_or(SchedulerError::NoPriority(nice))?;
        set_thread_priority_and_policy(thread_native_id(), priority, policy)
            .map_err(|e| SchedulerError::Policy(format!("{e:?}")))?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = scheduler;
    Ok(())
}
