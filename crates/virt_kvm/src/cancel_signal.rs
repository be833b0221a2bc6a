//! The signal that kicks a vCPU thread out of `KVM_RUN`, and the per-run timer that sends it.
//!
//! Technique (`KVM_SET_SIGNAL_MASK`): a thread that runs a vCPU blocks the cancel signal
//! ([`block_on_this_thread`], from its first run on), and the vCPU's KVM signal mask (the mask
//! KVM installs only for the duration of `KVM_RUN`) is the thread's mask without it. A signal
//! sent to the thread at any moment of a run therefore either interrupts `KVM_RUN` at once
//! (guest running) or stays pending until the thread enters `KVM_RUN`, which then returns
//! `EINTR` immediately: there is no window in which a cancel can be lost, and nothing but the
//! thread itself ever touches the `kvm_run` page. A signal left pending after a run (a cancel
//! that arrived as the run returned anyway) only makes the next `KVM_RUN` return `EINTR` once;
//! the run loop drains it and goes on.
//!
//! The signal is a real-time signal chosen once per process: the first one from `SIGRTMIN + 4`
//! upwards whose disposition is still the default, given a handler that does nothing (vCPU
//! threads block it, so it is only delivered if it reaches some other thread).
//! Timeouts use a POSIX timer that sends the same signal to the vCPU thread
//! (`SIGEV_THREAD_ID`), so no watchdog thread is needed.

// Unsafe code: signal masks, the cancel signal's handler and POSIX timers are libc calls.
#![allow(unsafe_code)]

use crate::KvmError;
use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::time::Duration;

fn os_error(call: &'static str, what: &str, source: io::Error) -> KvmError {
    KvmError::HostCall {
        call,
        what: what.to_owned(),
        source,
    }
}

extern "C" fn ignore_signal(_signal: libc::c_int) {}

/// The process's vCPU cancel signal, installing its handler on first use.
pub(crate) fn cancel_signal() -> Result<libc::c_int, KvmError> {
    static SIGNAL: OnceLock<Result<libc::c_int, String>> = OnceLock::new();
    SIGNAL.get_or_init(install_handler).clone().map_err(|what| {
        os_error(
            "sigaction",
            &what,
            io::Error::from_raw_os_error(libc::EBUSY),
        )
    })
}

fn install_handler() -> Result<libc::c_int, String> {
    for signal in libc::SIGRTMIN() + 4..=libc::SIGRTMAX() {
        let mut current = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: querying a disposition writes only into `current`.
        if unsafe { libc::sigaction(signal, std::ptr::null(), current.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: sigaction succeeded and filled the struct in.
        let current = unsafe { current.assume_init() };
        if current.sa_sigaction != libc::SIG_DFL {
            continue;
        }
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // No SA_RESTART: the signal is meant to interrupt.
        action.sa_flags = 0;
        // SAFETY: `sa_mask` is a valid sigset owned by `action`.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: installs a handler that touches nothing (async-signal-safe) for a signal
        // nobody else handles in this process.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } == 0 {
            return Ok(signal);
        }
    }
    Err("every real-time signal from SIGRTMIN+4 already has a handler".to_owned())
}

fn signal_set(signal: libc::c_int) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset to initialise.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid, writable storage; `signal` is a valid signal number.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
    }
    set
}

thread_local! {
    /// The `KVM_RUN` signal mask for this thread, once the cancel signal is blocked on it.
    static KVM_RUN_MASK: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Blocks the cancel signal on the current thread (once; it stays blocked for the thread's
/// life, which saves two system calls per run) and returns the kernel-format signal mask for
/// `KVM_RUN`: the thread's mask as it was, with the cancel signal unblocked. Bit `n - 1` stands
/// for signal `n` (x86-64 kernels use 64 signals).
///
/// Blocking it for good is harmless: nothing else in the process uses this signal, and a
/// process-directed instance of it goes to a thread that does not block it. A change the
/// caller makes to the thread's signal mask after the first run is not seen by later runs.
pub(crate) fn block_on_this_thread(signal: libc::c_int) -> Result<u64, KvmError> {
    if let Some(mask) = KVM_RUN_MASK.get() {
        return Ok(mask);
    }
    let set = signal_set(signal);
    // SAFETY: an all-zero sigset_t is valid storage for the old mask.
    let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to valid sigsets; this changes only this thread's mask.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask) };
    if rc != 0 {
        return Err(os_error(
            "pthread_sigmask",
            "blocking the vCPU cancel signal",
            io::Error::from_raw_os_error(rc),
        ));
    }
    let mut mask = 0u64;
    for other in 1..=64 {
        // SAFETY: `old_mask` is a valid sigset; sigismember only reads it.
        if other != signal && unsafe { libc::sigismember(&old_mask, other) } == 1 {
            mask |= 1 << (other - 1);
        }
    }
    KVM_RUN_MASK.set(Some(mask));
    Ok(mask)
}

/// Takes pending instances of the (blocked) cancel signal off this thread's queue.
pub(crate) fn drain(signal: libc::c_int) {
    let set = signal_set(signal);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` and `zero` are valid; sigtimedwait with a zero timeout only dequeues a
    // pending signal of the set (blocked on this thread) or returns EAGAIN.
    while unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) } == signal {}
}

/// A one-shot POSIX timer that sends the cancel signal to the current thread after a delay;
/// deleted on drop.
pub(crate) struct ThreadTimer {
    timer: libc::timer_t,
}

impl ThreadTimer {
    pub(crate) fn arm(signal: libc::c_int, delay: Duration) -> Result<Self, KvmError> {
        // SAFETY: an all-zero sigevent is a valid value to fill in.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer = MaybeUninit::<libc::timer_t>::uninit();
        // SAFETY: `event` is fully initialised and `timer` is valid storage for the id.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, timer.as_mut_ptr()) } != 0
        {
            return Err(os_error(
                "timer_create",
                "the vCPU run timeout",
                io::Error::last_os_error(),
            ));
        }
        let timer = Self {
            // SAFETY: timer_create succeeded and wrote the id.
            timer: unsafe { timer.assume_init() },
        };
        // A zero it_value would disarm the timer: wait at least 1 ns.
        let delay = delay.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(delay.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(delay.subsec_nanos()),
            },
        };
        // SAFETY: `timer.timer` is a live timer id and `spec` is valid.
        if unsafe { libc::timer_settime(timer.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(os_error(
                "timer_settime",
                "the vCPU run timeout",
                io::Error::last_os_error(),
            ));
        }
        Ok(timer)
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: the id came from timer_create and is deleted exactly once.
        unsafe { libc::timer_delete(self.timer) };
    }
}

/// Sends the cancel signal to `thread`.
///
/// The caller guarantees that `thread` is alive (it is registered by a run in progress and
/// deregisters, under the same lock the caller holds, before that run returns).
pub(crate) fn kick(thread: libc::pthread_t, signal: libc::c_int) {
    // SAFETY: per the caller's guarantee the thread id is valid; the signal has a handler.
    unsafe { libc::pthread_kill(thread, signal) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cancel_signal_is_a_realtime_signal_with_our_handler() {
        let signal = cancel_signal().unwrap();
        assert!(signal >= libc::SIGRTMIN() + 4 && signal <= libc::SIGRTMAX());
        // Stable across calls.
        assert_eq!(cancel_signal().unwrap(), signal);
        let mut current = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: querying a disposition writes only into `current`.
        let queried = unsafe { libc::sigaction(signal, std::ptr::null(), current.as_mut_ptr()) };
        assert_eq!(queried, 0);
        // SAFETY: sigaction succeeded.
        let current = unsafe { current.assume_init() };
        assert_eq!(
            current.sa_sigaction,
            ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
        );
    }

    #[test]
    fn blocking_leaves_the_signal_out_of_the_kvm_mask_and_lasts() {
        let signal = cancel_signal().unwrap();
        std::thread::spawn(move || {
            let mask = block_on_this_thread(signal).unwrap();
            assert_eq!(mask & (1 << (signal - 1)), 0);
            assert_eq!(block_on_this_thread(signal).unwrap(), mask);
            // SAFETY: an all-zero sigset_t is valid storage.
            let mut now: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: querying the mask only writes `now`.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now) };
            // SAFETY: `now` is a valid sigset.
            assert_eq!(unsafe { libc::sigismember(&now, signal) }, 1);
            // A kick is held pending (not delivered) and can be drained.
            // SAFETY: pthread_self has no preconditions.
            kick(unsafe { libc::pthread_self() }, signal);
            // SAFETY: an all-zero sigset_t is valid storage.
            let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: sigpending only writes `pending`.
            unsafe { libc::sigpending(&mut pending) };
            // SAFETY: `pending` is a valid sigset.
            assert_eq!(unsafe { libc::sigismember(&pending, signal) }, 1);
            drain(signal);
            // SAFETY: as above.
            unsafe { libc::sigpending(&mut pending) };
            // SAFETY: as above.
            assert_eq!(unsafe { libc::sigismember(&pending, signal) }, 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_timer_signals_the_thread_after_the_delay() {
        let signal = cancel_signal().unwrap();
        std::thread::spawn(move || {
            block_on_this_thread(signal).unwrap();
            let start = std::time::Instant::now();
            let _timer = ThreadTimer::arm(signal, Duration::from_millis(20)).unwrap();
            let set = signal_set(signal);
            // SAFETY: waits for the blocked signal; `set` is valid.
            let got = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
            assert_eq!(got, signal);
            assert!(start.elapsed() >= Duration::from_millis(20));
        })
        .join()
        .unwrap();
    }
}
