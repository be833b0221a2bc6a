//! The process-wide SIGSEGV/SIGBUS handler: installation, recovery, forwarding and re-arming.
//!
//! * **Recovery.** A fault is recovered only when the kernel raised it (`si_code > 0`; a
//!   `kill`/`raise` is never mistaken for a fault) and the saved instruction pointer lies in a
//!   guarded routine. The handler then writes the fault details through the record pointer the
//!   routine carries in `r10`, clears DF and resumes at the routine's fixup. It uses no TLS, no
//!   allocation, no locks and cannot panic.
//! * **Forwarding.** Every other signal goes to the action that was installed before ours,
//!   as the kernel would have run it: a three-argument handler gets `(signal, info, context)`, a
//!   one-argument handler gets `signal`, `SA_RESETHAND` resets the disposition first, and a
//!   default or ignore disposition becomes "set default, then return (kernel fault: the
//!   instruction faults again and the default action applies) or `raise`". Genuine crashes thus
//!   die by the right signal, and Node's/V8's WebAssembly trap handling keeps working.
//! * **Installation.** Once per process, serialized by a mutex; the previous action is
//!   published (release) before ours is installed, and our own handler is never recorded as the
//!   previous one. Never uninstalled.
//! * **Displacement.** [`handler_status`] queries the current dispositions;
//!   [`rearm_handler`] re-installs on top of whatever displaced us, keeping the old previous
//!   action when the current disposition is plain default (libuv's `process.off` wipes Node's
//!   handler together with ours).
//!
//! Re-arming on top of a handler that itself chains back to us would create a cycle; a marker
//! placed in the unused tail of the `siginfo_t` while we forward breaks it (on re-entry with our
//! own marker present the signal takes the default action instead of looping).

// Unsafe code: installs the signal handler (sigaction) and rewrites the faulting context inside it.
#![allow(unsafe_code)]

use crate::x86_64::fixup_for;
use crate::HandlerStatus;
use libc::{c_int, c_void, sigaction, siginfo_t};
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Mutex;

/// The signals whose faults we recover.
const SIGNALS: [c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

/// The x86 direction flag in RFLAGS.
const DIRECTION_FLAG: i64 = 1 << 10;

/// The previous action of each signal in [`SIGNALS`], as an immutable leaked record (null until
/// the first installation). Replaced (never freed) on re-arm, so a handler running concurrently
/// always reads a complete record.
static PREVIOUS: [AtomicPtr<sigaction>; 2] = [
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
];

/// The previous action of each signal as found at the first installation (the chain the
/// process started with, e.g. Node's WebAssembly trap handler). A re-arm over a plain default
/// disposition restores this one: whatever displaced us later (libuv's handler for a
/// `process.on('SIGSEGV')` listener, since removed) must not stay in the chain.
static FIRST_PREVIOUS: [AtomicPtr<sigaction>; 2] = [
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
];

/// Set once the handler has been installed (fast path of [`initialize_try_copy`]).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Serializes every change of our dispositions (installation and re-arming).
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

/// Byte offset in `siginfo_t` of the marker words used to detect forwarding cycles. The kernel
/// copies 48 bytes of detail and zeroes the rest of the 128-byte structure.
const MARKER_OFFSET: usize = 64;
/// Number of marker words (one per distinct copy of this library on a cycle).
const MARKER_WORDS: usize = 8;

fn slot(signal: c_int) -> Option<&'static AtomicPtr<sigaction>> {
    SIGNALS
        .iter()
        .position(|&s| s == signal)
        .map(|index| &PREVIOUS[index])
}

fn first_slot(signal: c_int) -> Option<&'static AtomicPtr<sigaction>> {
    SIGNALS
        .iter()
        .position(|&s| s == signal)
        .map(|index| &FIRST_PREVIOUS[index])
}

/// Installs the handler for SIGSEGV and SIGBUS, once per process.
pub(crate) fn initialize() {
    if INSTALLED.load(Ordering::Acquire) {
        return;
    }
    let _guard = INSTALL_LOCK
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    if INSTALLED.load(Ordering::Acquire) {
        return;
    }
    for signal in SIGNALS {
        install_on_top(signal, false);
    }
    INSTALLED.store(true, Ordering::Release);
}

/// Reports whether our handler is the current disposition of SIGSEGV and SIGBUS.
pub(crate) fn status() -> HandlerStatus {
    if !INSTALLED.load(Ordering::Acquire) {
        return HandlerStatus::NotInstalled;
    }
    let mut displaced = false;
    let mut defaulted = false;
    for signal in SIGNALS {
        let current = current_action(signal);
        if is_ours(&current) {
            continue;
        }
        if current.sa_sigaction == libc::SIG_DFL {
            defaulted = true;
        } else {
            displaced = true;
        }
    }
    match (displaced, defaulted) {
        (false, false) => HandlerStatus::Installed,
        (true, _) => HandlerStatus::Displaced,
        (false, true) => HandlerStatus::Default,
    }
}

/// Re-installs our handler where something else displaced it; returns the resulting status.
pub(crate) fn rearm() -> HandlerStatus {
    {
        let _guard = INSTALL_LOCK
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !INSTALLED.load(Ordering::Acquire) {
            return HandlerStatus::NotInstalled;
        }
        for signal in SIGNALS {
            install_on_top(signal, true);
        }
    }
    status()
}

/// Installs our handler for `signal` over the current action, recording that action as the
/// previous one. With `keep_chain`, a plain default disposition does not replace a previous
/// action that is a real handler. Called with [`INSTALL_LOCK`] held.
fn install_on_top(signal: c_int, keep_chain: bool) {
    let Some(slot) = slot(signal) else { return };
    let current = current_action(signal);
    if is_ours(&current) {
        // Never record ourselves as the previous action.
        return;
    }
    let first = first_slot(signal).map_or(ptr::null_mut(), |first| first.load(Ordering::Acquire));
    // SAFETY: a non-null slot points at a leaked, never-modified record.
    let first_is_real = !first.is_null() && is_real_handler(unsafe { &*first });
    let keep_previous = keep_chain && current.sa_sigaction == libc::SIG_DFL && {
        let previous = slot.load(Ordering::Acquire);
        // SAFETY: as above.
        first_is_real || (!previous.is_null() && is_real_handler(unsafe { &*previous }))
    };
    if keep_previous {
        // Back to the chain the process started with, where there was one.
        if first_is_real {
            slot.store(first, Ordering::Release);
        }
    } else {
        publish(slot, current);
        if !keep_chain {
            if let Some(first_slot) = first_slot(signal) {
                first_slot.store(slot.load(Ordering::Acquire), Ordering::Release);
            }
        }
    }
    let ours = our_action();
    let mut replaced = MaybeUninit::<sigaction>::zeroed();
    // SAFETY: both pointers refer to valid `sigaction` structures; SIGSEGV/SIGBUS accept
    // handlers.
    let result = unsafe { libc::sigaction(signal, &ours, replaced.as_mut_ptr()) };
    if result != 0 {
        return;
    }
    // SAFETY: `sigaction` succeeded and filled the structure (it was zeroed before anyway).
    let replaced = unsafe { replaced.assume_init() };
    // Someone changed the disposition between our query and our installation: what we replaced
    // is the real previous action.
    if !is_ours(&replaced)
        && replaced.sa_sigaction != current.sa_sigaction
        && !(keep_previous && replaced.sa_sigaction == libc::SIG_DFL)
    {
        publish(slot, replaced);
    }
}

/// Publishes `action` as the previous action (release), leaking the record on purpose: a
/// handler running on another thread may still be reading the record it replaces.
fn publish(slot: &AtomicPtr<sigaction>, action: sigaction) {
    slot.store(Box::into_raw(Box::new(action)), Ordering::Release);
}

/// Our action: the three-argument handler on the alternate stack if one is set, empty mask.
fn our_action() -> sigaction {
    // SAFETY: `sigaction` is plain data; all-zero is a valid value (SIG_DFL, empty mask).
    let mut action: sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    action.sa_sigaction = our_handler_address();
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `sa_mask` is a valid `sigset_t` owned by `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    action
}

/// The current action of `signal`.
fn current_action(signal: c_int) -> sigaction {
    let mut current = MaybeUninit::<sigaction>::zeroed();
    // SAFETY: querying only (null new action); the out pointer is valid. On failure the zeroed
    // structure reads as SIG_DFL.
    unsafe {
        libc::sigaction(signal, ptr::null(), current.as_mut_ptr());
        current.assume_init()
    }
}

/// The address of [`fault_handler`], as stored in `sa_sigaction`.
fn our_handler_address() -> usize {
    fault_handler as *const () as usize
}

fn is_ours(action: &sigaction) -> bool {
    action.sa_sigaction == our_handler_address() && action.sa_flags & libc::SA_SIGINFO != 0
}

fn is_real_handler(action: &sigaction) -> bool {
    action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN
}

/// Sets the disposition of `signal` to default. Async-signal-safe.
fn set_default(signal: c_int) {
    // SAFETY: all-zero `sigaction` is SIG_DFL with an empty mask; `sigaction` is
    // async-signal-safe.
    unsafe {
        let default: sigaction = MaybeUninit::zeroed().assume_init();
        libc::sigaction(signal, &default, ptr::null_mut());
    }
}

/// The signal handler. Must stay async-signal-safe: no TLS, no allocation, no locks, no panics.
extern "C" fn fault_handler(signal: c_int, info: *mut siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes valid `siginfo_t` and `ucontext_t` pointers to an SA_SIGINFO
    // handler; they live on the signal frame for the duration of this call.
    unsafe {
        if !info.is_null() && !context.is_null() && (*info).si_code > 0 {
            let context = &mut *context.cast::<libc::ucontext_t>();
            let registers = &mut context.uc_mcontext.gregs;
            // Instruction pointers are user-space addresses: below 2^63, so the register's
            // signed value converts losslessly (both ways).
            let fixup = usize::try_from(registers[libc::REG_RIP as usize])
                .ok()
                .and_then(fixup_for)
                .and_then(|fixup| i64::try_from(fixup).ok());
            if let Some(fixup) = fixup {
                // The guarded routine carries the caller's record pointer in r10; the record is
                // on the faulting thread's stack, which is always mapped.
                let record = registers[libc::REG_R10 as usize] as *mut crate::error::FaultRecord;
                record.write(crate::error::FaultRecord {
                    address: (*info).si_addr() as usize,
                    signal,
                    si_code: (*info).si_code,
                    trapno: registers[libc::REG_TRAPNO as usize].cast_unsigned(),
                });
                registers[libc::REG_EFL as usize] &= !DIRECTION_FLAG;
                registers[libc::REG_RIP as usize] = fixup;
                return;
            }
        }
        forward(signal, info, context);
    }
}

/// Runs the previous action of `signal` for a signal we do not recover ("Forwarding" above).
///
/// # Safety
/// Called only from [`fault_handler`] with the kernel-provided arguments.
unsafe fn forward(signal: c_int, info: *mut siginfo_t, context: *mut c_void) {
    let previous = slot(signal).map_or(ptr::null_mut(), |slot| slot.load(Ordering::Acquire));
    // SAFETY: a non-null slot points at a leaked, never-modified record.
    let previous = unsafe { previous.as_ref() };
    let marker = our_handler_address();
    // SAFETY: `info` is the kernel's 128-byte siginfo (or null).
    let marker_word = unsafe { claim_marker(info, marker) };
    let previous = match (previous, marker_word) {
        (Some(previous), Some(_)) if is_real_handler(previous) => previous,
        _ => {
            // Default or ignore, no previous action, or we are being re-entered through a
            // forwarding cycle: take the default action.
            set_default(signal);
            // SAFETY: as above.
            let kernel_generated = !info.is_null() && unsafe { (*info).si_code } > 0;
            if !kernel_generated {
                // Blocked while we run; delivered with the default action once we return.
                // SAFETY: `raise` is async-signal-safe.
                unsafe { libc::raise(signal) };
            }
            // SAFETY: clearing the marker we may have placed in `info`.
            unsafe { release_marker(info, marker_word) };
            return;
        }
    };
    if previous.sa_flags & libc::SA_RESETHAND != 0 {
        set_default(signal);
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action declared a three-argument handler at this address.
        let handler: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(previous.sa_sigaction) };
        handler(signal, info, context);
    } else {
        // SAFETY: the previous action declared a one-argument handler at this address.
        let handler: extern "C" fn(c_int) = unsafe { std::mem::transmute(previous.sa_sigaction) };
        handler(signal);
    }
    // SAFETY: clearing the marker we placed in `info`.
    unsafe { release_marker(info, marker_word) };
}

/// Places `marker` in the first free marker word of `info` and returns its index; returns
/// `None` when `marker` is already present (we are being re-entered through a cycle). When all
/// words are taken (or `info` is null) returns `Some(MARKER_WORDS)`: forwarding proceeds without
/// cycle protection.
///
/// # Safety
/// `info` is null or points at a writable 128-byte `siginfo_t`.
unsafe fn claim_marker(info: *mut siginfo_t, marker: usize) -> Option<usize> {
    if info.is_null() {
        return Some(MARKER_WORDS);
    }
    let words = info
        .cast::<u8>()
        .wrapping_add(MARKER_OFFSET)
        .cast::<usize>();
    let mut free = None;
    for index in 0..MARKER_WORDS {
        // SAFETY: MARKER_OFFSET + MARKER_WORDS words stay within the 128-byte structure, which
        // is 8-byte aligned.
        let word = unsafe { words.add(index).read_volatile() };
        if word == marker {
            return None;
        }
        if word == 0 && free.is_none() {
            free = Some(index);
        }
    }
    match free {
        Some(index) => {
            // SAFETY: as above.
            unsafe { words.add(index).write_volatile(marker) };
            Some(index)
        }
        None => Some(MARKER_WORDS),
    }
}

/// Clears the marker word claimed by [`claim_marker`].
///
/// # Safety
/// As for [`claim_marker`].
unsafe fn release_marker(info: *mut siginfo_t, claimed: Option<usize>) {
    if let Some(index) = claimed.filter(|&index| index < MARKER_WORDS && !info.is_null()) {
        let words = info
            .cast::<u8>()
            .wrapping_add(MARKER_OFFSET)
            .cast::<usize>();
        // SAFETY: as in `claim_marker`.
        unsafe { words.add(index).write_volatile(0) };
    }
}

const _: () = assert!(
    MARKER_OFFSET + MARKER_WORDS * std::mem::size_of::<usize>() <= std::mem::size_of::<siginfo_t>()
);

#[cfg(test)]
mod tests;
