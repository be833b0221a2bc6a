//! The process-wide SIGSEGV/SIGBUS handler: installation, recovery, forwarding and re-arming.
//!
//! * **Recovery.** A fault is recovered only when the kernel raised it (`si_code > 0`; a
//!   `kill`/`raise` is never mistaken for a fault) and the saved instruction pointer lies in a
//!   guarded routine or an inlined guarded site. The handler then puts the fault address in
//!   `r10` and the other fault details, packed, in the status register `r11` (never 0), clears DF
//!   and resumes at the routine's fixup (after the site, for a site). It writes no memory but the
//!   saved context, uses no TLS, no allocation, no locks and cannot panic.
//! * **Forwarding.** Every other signal goes to the action that was installed before ours,
//!   as the kernel would have run it: a three-argument handler gets `(signal, info, context)`, a
//!   one-argument handler gets `signal`, `SA_RESETHAND` resets the disposition first, and a
//!   default or ignore disposition becomes "set default, then return (kernel fault: the
//!   instruction faults again and the default action applies) or `raise`". Genuine crashes thus
//!   die by the right signal, and Node's/V8's WebAssembly trap handling keeps working.
//! * **Installation.** Once per process, serialized by a mutex; the previous action is
//!   published (release) before ours is installed, and our own handler is never recorded as the
//!   previous one. Never uninstalled.
//! * **Displacement.** [`handler_status`](crate::handler_status) queries the current dispositions;
//!   [`rearm_handler`](crate::rearm_handler) re-installs on top of whatever displaced us, keeping the old previous
//!   action when the current disposition is plain default (libuv's `process.off` wipes Node's
//!   handler together with ours).
//! * **Signal listeners.** A JavaScript `process.on('SIGSEGV')` listener installs libuv's
//!   handler, which only queues the signal for the event loop and returns: a fault delivered to
//!   it re-executes the faulting instruction forever. While the process has such listeners
//!   ([`crate::set_signal_listeners`]), the handler we install over it is kept as the *listener*, not
//!   as the previous action: signals sent with `kill`/`raise` go to it (so the listener runs),
//!   kernel-raised faults never do (they go to the previous action, as without listeners).
//! * **Loops.** A kernel fault we forward to a previous handler that returns without moving the
//!   instruction pointer runs again. When the same fault (instruction, address, stack) has come
//!   back that way [`LOOP_LIMIT`] times in a row, we reset the disposition to default before
//!   returning, so the next execution kills the process by the signal instead of spinning.
//!   (A handler that resolves a trap by moving the instruction pointer, like V8's WebAssembly
//!   trap handler, is never counted.)
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
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
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

/// The handler of JavaScript signal listeners (libuv's) that ours was installed over while the
/// process listened for the signal: it gets the signals sent with `kill`/`raise`, never a
/// kernel-raised fault. Null when there is none.
static LISTENER: [AtomicPtr<sigaction>; 2] = [
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
];

/// Whether the process has signal listeners for each signal (see [`set_listeners`]).
static LISTENING: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Consecutive forwards of one unresolved kernel fault after which the handler takes the
/// default action (a forward and the fault's return cost a few microseconds, so this ends a
/// loop within tens of milliseconds).
pub(crate) const LOOP_LIMIT: u32 = 4096;

/// Slots of the loop detector: a fingerprint of the last fault forwarded through each slot and
/// how many times in a row it was forwarded.
const LOOP_SLOTS: usize = 64;
static LOOP_FINGERPRINTS: [AtomicU64; LOOP_SLOTS] = [const { AtomicU64::new(0) }; LOOP_SLOTS];
static LOOP_COUNTS: [AtomicU32; LOOP_SLOTS] = [const { AtomicU32::new(0) }; LOOP_SLOTS];

/// Set once the handler has been installed (fast path of [`initialize_try_copy`](crate::initialize_try_copy)).
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

fn signal_index(signal: c_int) -> Option<usize> {
    SIGNALS.iter().position(|&s| s == signal)
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

/// Records whether the process has signal listeners for SIGSEGV and SIGBUS (`[segv, bus]`) and,
/// when our handler is installed, re-arms it over whatever the listeners' change left (libuv's
/// handler when one was added, the default disposition when the last one went). Returns the
/// resulting status.
pub(crate) fn set_listeners(listening: [bool; 2]) -> HandlerStatus {
    {
        let _guard = INSTALL_LOCK
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for (index, listens) in listening.into_iter().enumerate() {
            LISTENING[index].store(listens, Ordering::Release);
            if !listens {
                LISTENER[index].store(ptr::null_mut(), Ordering::Release);
            }
        }
        if !INSTALLED.load(Ordering::Acquire) {
            return HandlerStatus::NotInstalled;
        }
        for signal in SIGNALS {
            install_on_top(signal, true);
        }
    }
    status()
}

/// Installs our handler over the listeners' handler of `signal` (`current`), keeping it as the
/// listener and not as the previous action. Called with [`INSTALL_LOCK`] held.
fn install_over_listener(index: usize, current: sigaction) {
    LISTENER[index].store(Box::into_raw(Box::new(current)), Ordering::Release);
    let slot = &PREVIOUS[index];
    if slot.load(Ordering::Acquire).is_null() {
        // Installed for the first time while listening: the chain the process had before the
        // listener is unknown (libuv kept nothing), so unresolved faults take the default action.
        // SAFETY: all-zero is a valid `sigaction` (SIG_DFL, empty mask).
        publish(slot, unsafe { MaybeUninit::zeroed().assume_init() });
        FIRST_PREVIOUS[index].store(slot.load(Ordering::Acquire), Ordering::Release);
    }
    let ours = our_action();
    // SAFETY: a valid `sigaction` for a signal that accepts handlers.
    unsafe { libc::sigaction(SIGNALS[index], &ours, ptr::null_mut()) };
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
    if let Some(index) = signal_index(signal) {
        if LISTENING[index].load(Ordering::Acquire) && is_real_handler(&current) {
            install_over_listener(index, current);
            return;
        }
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
                let record = crate::error::FaultRecord {
                    address: (*info).si_addr() as usize,
                    signal,
                    si_code: (*info).si_code,
                    trapno: registers[libc::REG_TRAPNO as usize].cast_unsigned(),
                };
                registers[libc::REG_EFL as usize] &= !DIRECTION_FLAG;
                // The output registers of routines and sites: the fault address, and the status
                // (non-zero = recovered fault, with the other details).
                registers[libc::REG_R10 as usize] = (record.address as u64).cast_signed();
                registers[libc::REG_R11 as usize] = (record.to_status() as u64).cast_signed();
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
    // SAFETY: `info` is the kernel's siginfo (or null).
    let kernel_generated = !info.is_null() && unsafe { (*info).si_code } > 0;
    let index = signal_index(signal);
    // A signal sent with kill/raise goes to the listeners' handler when there is one; a fault
    // never does (that handler would return and the fault would repeat forever).
    let listener = match index {
        Some(index) if !kernel_generated && LISTENING[index].load(Ordering::Acquire) => {
            LISTENER[index].load(Ordering::Acquire)
        }
        _ => ptr::null_mut(),
    };
    let previous = if listener.is_null() {
        slot(signal).map_or(ptr::null_mut(), |slot| slot.load(Ordering::Acquire))
    } else {
        listener
    };
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
    // SAFETY: `context` is the kernel's ucontext (or null).
    let ip_before = unsafe { instruction_pointer(context) };
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
    // A kernel fault the handler returned from without moving the instruction pointer is
    // executed again; if it is the same unresolved fault over and over, end it.
    // SAFETY: `context` is the kernel's ucontext (or null), as above.
    let ip_after = unsafe { instruction_pointer(context) };
    if kernel_generated && ip_before.is_some() && ip_after == ip_before {
        // SAFETY: the kernel's siginfo and ucontext of this handler invocation.
        if unsafe { unresolved_again(info, context) } >= LOOP_LIMIT {
            set_default(signal);
        }
    }
    // SAFETY: clearing the marker we placed in `info`.
    unsafe { release_marker(info, marker_word) };
}

/// The saved instruction pointer of `context` (None for a null context).
///
/// # Safety
/// `context` is null or the kernel's `ucontext_t` of the running handler.
unsafe fn instruction_pointer(context: *mut c_void) -> Option<i64> {
    // SAFETY: per the caller.
    unsafe { context.cast::<libc::ucontext_t>().as_ref() }
        .map(|context| context.uc_mcontext.gregs[libc::REG_RIP as usize])
}

/// Counts a kernel fault that a previous handler returned from unresolved (the instruction runs
/// again) and returns how many times in a row this same fault (instruction, address and stack
/// pointer, with no other such fault of its slot in between) has been counted.
///
/// # Safety
/// `info` and `context` are null or the kernel's arguments to an SA_SIGINFO handler.
unsafe fn unresolved_again(info: *mut siginfo_t, context: *mut c_void) -> u32 {
    // SAFETY: per the caller.
    let (Some(info), Some(context)) = (unsafe { info.as_ref() }, unsafe {
        context.cast::<libc::ucontext_t>().as_ref()
    }) else {
        return 0;
    };
    let registers = &context.uc_mcontext.gregs;
    let fingerprint = loop_fingerprint(
        registers[libc::REG_RIP as usize].cast_unsigned(),
        registers[libc::REG_RSP as usize].cast_unsigned(),
        // SAFETY: reading the address field of a fault's siginfo.
        unsafe { info.si_addr() } as u64,
    );
    let slot = usize::try_from(fingerprint % LOOP_SLOTS as u64).unwrap_or(0);
    if LOOP_FINGERPRINTS[slot].swap(fingerprint, Ordering::AcqRel) == fingerprint {
        LOOP_COUNTS[slot].fetch_add(1, Ordering::AcqRel) + 1
    } else {
        LOOP_COUNTS[slot].store(1, Ordering::Release);
        1
    }
}

/// A non-zero fingerprint of a fault: its instruction pointer, stack pointer and address mixed.
pub(crate) fn loop_fingerprint(ip: u64, sp: u64, address: u64) -> u64 {
    let mixed = ip.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17)
        ^ sp.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(31)
        ^ address.wrapping_mul(0x1656_67b1_9e37_79f9);
    mixed | 1
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
