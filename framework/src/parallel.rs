//! Where the library's parallel work runs, safely across `fork`.
//!
//! Rayon's global pool does not survive `fork`: a child process inherits the
//! pool's state but none of its threads, and its first parallel call waits
//! for them forever. That is how Python's `multiprocessing` and PyTorch's
//! `DataLoader` start workers on Linux by default, after the parent has
//! often read or written a file already. So the Python bindings run their
//! work through [`install`] (and so does the BLAKE3 plugin's parallel
//! hashing, which may run on a thread of its own): in the first process that
//! calls it, the work runs where it is, on rayon's global pool as usual; in
//! a process forked from it, on a pool of that process ([`pool`]), built on
//! first use, while the parent's (threadless) one is left alone. A call
//! costs an atomic load then, not a hop to another thread: a small read
//! takes about 23 µs from Python, and a hop to a pool thread added 16
//! (`getpid` on each call instead of a fork handler, 1).
//!
//! A pool built here has `RAYON_NUM_THREADS` threads when that is set, else
//! one per core, as rayon's own. Rust callers of the library that fork wrap
//! their calls in [`install`] too.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Once;

/// A pool and the process it was built in.
struct ProcessPool {
    pid: u32,
    pool: rayon::ThreadPool,
}

/// The current process's pool, or an inherited one; null before the first use.
/// A pool stored here is never freed: an inherited one has no threads to stop.
static POOL: AtomicPtr<ProcessPool> = AtomicPtr::new(std::ptr::null_mut());

/// This process's pool, built on first use (again in a forked child).
///
/// # Panics
/// When the operating system refuses to start the pool's threads.
pub fn pool() -> &'static rayon::ThreadPool {
    let pid = std::process::id();
    let seen = POOL.load(Ordering::Acquire);
    // SAFETY: a non-null pointer in POOL comes from Box::into_raw below and is
    // never freed, so it is valid for 'static.
    if let Some(current) = unsafe { seen.as_ref() } {
        if current.pid == pid {
            return &current.pool;
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("deathtensors-{i}"))
        .build()
        .expect("cannot start the threads of deathtensors' thread pool");
    let fresh = Box::into_raw(Box::new(ProcessPool { pid, pool }));
    match POOL.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: `fresh` is stored and never freed from now on. The pool it
        // replaces (a parent's) is leaked on purpose.
        Ok(_) => unsafe { &(*fresh).pool },
        Err(winner) => {
            // Another thread of this process stored its pool first: use that
            // one, and stop ours (its threads are alive, in this process).
            // SAFETY: `fresh` was never shared; `winner` is non-null (it
            // replaced `seen`) and, as above, never freed.
            drop(unsafe { Box::from_raw(fresh) });
            unsafe { &(*winner).pool }
        }
    }
}

/// Whether this process was forked from one that called [`install`] (set
/// by the `pthread_atfork` child handler that the first call registers).
static FORKED: AtomicBool = AtomicBool::new(false);
static WATCH_FORKS: Once = Once::new();

extern "C" fn note_fork() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Run `f` where rayon calls work in this process (see the module
/// documentation): here, unless this process was forked from one that ran
/// library work; then on [`pool`].
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    WATCH_FORKS.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic, which is
        // async-signal-safe, as a child handler must be.
        if unsafe { libc::pthread_atfork(None, None, Some(note_fork)) } != 0 {
            // Not watched: take every call to a pool of this process.
            FORKED.store(true, Ordering::Relaxed);
        }
    });
    if FORKED.load(Ordering::Relaxed) {
        pool().install(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn the_first_process_runs_work_in_place_and_a_pool_is_built_once() {
        assert_eq!(install(std::thread::current).id(), std::thread::current().id());
        let sum: u64 = install(|| (0..10_000u64).into_par_iter().sum());
        assert_eq!(sum, 10_000 * 9_999 / 2);
        let a = pool() as *const _;
        assert_eq!(a, pool() as *const _, "the pool is built once");
        assert!(pool().install(rayon::current_thread_index).is_some());
    }
}
