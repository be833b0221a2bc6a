//! Tests of handler installation, forwarding and re-arming.
//!
//! Anything that changes signal dispositions or must end in a crash runs in a child process:
//! the parent re-runs this test binary restricted to [`child_process_entry`] with the mode in
//! the `TRYCOPY_CHILD_MODE` environment variable, then checks how the child ended. A child that
//! reaches the end of a successful scenario exits with [`SUCCESS`]; every other exit code names
//! the check that failed.

// Unsafe code: the tests change signal dispositions and fault on purpose.
#![allow(unsafe_code)]

use super::*;
use crate::{
    handler_status, initialize_try_copy, rearm_handler, set_signal_listeners, try_copy,
    HandlerStatus,
};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize};
use std::time::{Duration, Instant};

const MODE_VARIABLE: &str = "TRYCOPY_CHILD_MODE";
const CHILD_TEST: &str = "handler::tests::child_process_entry";
const SUCCESS: i32 = 42;
const PAGE: usize = 4096;

/// How a child ended, with its captured stderr.
struct ChildOutcome {
    status: ExitStatus,
    stderr: String,
}

fn run_child(mode: &str) -> ChildOutcome {
    let executable = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(executable)
        .args([
            CHILD_TEST,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(MODE_VARIABLE, mode)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test process");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child mode {mode} hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    ChildOutcome { status, stderr }
}

fn assert_child_succeeds(mode: &str) {
    let outcome = run_child(mode);
    assert_eq!(
        outcome.status.code(),
        Some(SUCCESS),
        "child mode {mode} ended with {:?}; stderr:\n{}",
        outcome.status,
        outcome.stderr
    );
}

fn assert_child_killed_by(mode: &str, signal: i32) -> ChildOutcome {
    let outcome = run_child(mode);
    assert_eq!(
        outcome.status.signal(),
        Some(signal),
        "child mode {mode} ended with {:?}; stderr:\n{}",
        outcome.status,
        outcome.stderr
    );
    outcome
}

// ---- parent-side tests ------------------------------------------------------------------

#[test]
fn installed_in_this_process_and_previous_is_not_ours() {
    initialize_try_copy();
    initialize_try_copy();
    assert_eq!(handler_status(), HandlerStatus::Installed);
    for slot in &PREVIOUS {
        let previous = slot.load(Ordering::Acquire);
        assert!(!previous.is_null());
        // SAFETY: published records are never freed or modified.
        assert!(!is_ours(unsafe { &*previous }));
    }
}

#[test]
fn previous_siginfo_handler_receives_foreign_faults() {
    // (a) a foreign fault reaches the three-argument handler installed before ours.
    assert_child_succeeds("chain_siginfo");
}

#[test]
fn previous_one_argument_handler_with_resethand_is_run_like_the_kernel_would() {
    assert_child_succeeds("chain_one_argument_resethand");
}

#[test]
fn foreign_segv_with_default_previous_dies_by_sigsegv() {
    // (b) no previous handler: a foreign fault terminates by SIGSEGV (not SIGABRT).
    assert_child_killed_by("default_previous_segv", libc::SIGSEGV);
}

#[test]
fn foreign_sigbus_with_default_previous_dies_by_sigbus() {
    assert_child_killed_by("default_previous_bus", libc::SIGBUS);
}

#[test]
fn raised_sigsegv_is_not_recovered_and_kills_with_default_previous() {
    // (c) a raise(SIGSEGV) (si_code <= 0) is forwarded: with a default previous it kills.
    assert_child_killed_by("raise_default", libc::SIGSEGV);
}

#[test]
fn raised_sigsegv_reaches_previous_handler() {
    assert_child_succeeds("raise_chained");
}

#[test]
fn sigsegv_sent_during_a_guarded_copy_is_not_recovered() {
    // (c) a SIGSEGV sent by another thread while the target thread is inside the guarded copy
    // must not be taken for a fault (the copy would fail); it kills the process.
    assert_child_killed_by("signal_during_copy", libc::SIGSEGV);
}

#[test]
fn status_reports_displacement_and_rearm_restores_the_chain() {
    // (d) Installed → Displaced → rearm → Installed (previous = displacer) → Default → rearm →
    // Installed with the displacer still the previous handler.
    assert_child_succeeds("status_and_rearm");
}

#[test]
fn forwarding_cycle_after_rearm_is_broken() {
    // Re-arming over a handler that chains back to us would loop; the cycle is broken and the
    // foreign fault kills by SIGSEGV after the displacer ran exactly once.
    let outcome = assert_child_killed_by("cycle", libc::SIGSEGV);
    assert_eq!(
        outcome.stderr.matches("<displacer>").count(),
        1,
        "{}",
        outcome.stderr
    );
}

#[test]
fn concurrent_repeated_initialization_installs_once() {
    // Many initializations from several threads leave our handler installed once, with
    // the default action as previous; a foreign fault still dies promptly by SIGSEGV.
    assert_child_killed_by("idempotent", libc::SIGSEGV);
}

#[test]
fn a_signal_listener_gets_sent_signals_and_never_a_fault() {
    // A listener's handler (like libuv's for process.on('SIGSEGV')) that only counts and returns:
    // ours goes back on top, guarded faults are recovered, raise() reaches the listener, and a
    // foreign fault goes to the previous action (default: death by SIGSEGV), never to the
    // listener, where it would repeat forever.
    let outcome = assert_child_killed_by("listener", libc::SIGSEGV);
    assert!(outcome.stderr.contains("<raised>"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("<fault>"), "{}", outcome.stderr);
}

#[test]
fn a_listener_present_before_installation_is_kept_apart_too() {
    assert_child_killed_by("listener_first", libc::SIGSEGV);
}

#[test]
fn removing_the_last_listener_rearms_over_the_default_disposition() {
    assert_child_succeeds("listener_removed");
}

#[test]
fn a_previous_handler_that_never_resolves_a_fault_ends_in_death_not_a_loop() {
    // The previous handler returns without fixing anything: the same fault comes back until
    // the loop limit, then the process dies by SIGSEGV (the child's 30 s deadline would fail
    // a hang).
    let outcome = assert_child_killed_by("swallowing_previous", libc::SIGSEGV);
    assert!(outcome.stderr.contains("<swallowed>"), "{}", outcome.stderr);
}

#[test]
fn loop_fingerprints_tell_faults_apart() {
    let base = loop_fingerprint(0x1000, 0x7fff_0000, 0x2000);
    assert_ne!(base, 0);
    assert_eq!(base, loop_fingerprint(0x1000, 0x7fff_0000, 0x2000));
    assert_ne!(base, loop_fingerprint(0x1001, 0x7fff_0000, 0x2000));
    assert_ne!(base, loop_fingerprint(0x1000, 0x7ffe_0000, 0x2000));
    assert_ne!(base, loop_fingerprint(0x1000, 0x7fff_0000, 0x3000));
}

// ---- child-side scenarios ---------------------------------------------------------------

/// The entry point of every child process; does nothing in a normal test run.
#[test]
#[ignore = "runs only as a child process of the handler tests"]
fn child_process_entry() {
    let Ok(mode) = std::env::var(MODE_VARIABLE) else {
        return;
    };
    // SAFETY: plain process attribute change: no core dump for the deliberate crashes.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let code = match mode.as_str() {
        "chain_siginfo" => chain_siginfo(),
        "chain_one_argument_resethand" => chain_one_argument_resethand(),
        "default_previous_segv" => default_previous_segv(),
        "default_previous_bus" => default_previous_bus(),
        "raise_default" => raise_default(),
        "raise_chained" => raise_chained(),
        "signal_during_copy" => signal_during_copy(),
        "status_and_rearm" => status_and_rearm(),
        "cycle" => cycle(),
        "idempotent" => idempotent(),
        "listener" => listener(),
        "listener_first" => listener_first(),
        "listener_removed" => listener_removed(),
        "swallowing_previous" => swallowing_previous(),
        _ => 2,
    };
    std::process::exit(code);
}

/// The inaccessible page that test handlers make readable again.
static FIX_PAGE: AtomicUsize = AtomicUsize::new(0);
/// How often a test handler ran.
static CALLS: AtomicUsize = AtomicUsize::new(0);
/// The `si_code` a test handler saw last.
static LAST_CODE: AtomicI32 = AtomicI32::new(0);

fn inaccessible_page() -> *mut u8 {
    // SAFETY: a fresh anonymous mapping.
    let page = unsafe {
        libc::mmap(
            ptr::null_mut(),
            PAGE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    FIX_PAGE.store(page as usize, Ordering::SeqCst);
    page.cast()
}

fn make_readable(page: usize) {
    // SAFETY: `page` is the test's own mapping.
    unsafe { libc::mprotect(page as *mut c_void, PAGE, libc::PROT_READ) };
}

fn make_inaccessible(page: *mut u8) {
    // SAFETY: `page` is the test's own mapping.
    unsafe { libc::mprotect(page.cast(), PAGE, libc::PROT_NONE) };
}

/// A previous three-argument handler: counts, records `si_code`, makes the page readable.
extern "C" fn fixing_siginfo_handler(_signal: c_int, info: *mut siginfo_t, _context: *mut c_void) {
    CALLS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the kernel (or our forwarding) passes a valid siginfo.
    LAST_CODE.store(unsafe { (*info).si_code }, Ordering::SeqCst);
    make_readable(FIX_PAGE.load(Ordering::SeqCst));
}

/// A previous one-argument handler: counts and makes the page readable.
extern "C" fn fixing_plain_handler(_signal: c_int) {
    CALLS.fetch_add(1, Ordering::SeqCst);
    make_readable(FIX_PAGE.load(Ordering::SeqCst));
}

fn set_action(signal: c_int, handler: usize, flags: c_int) {
    // SAFETY: all-zero is a valid sigaction (empty mask).
    let mut action: sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    action.sa_sigaction = handler;
    action.sa_flags = flags;
    // SAFETY: valid action for a catchable signal.
    let rc = unsafe { libc::sigaction(signal, &action, ptr::null_mut()) };
    assert_eq!(rc, 0);
}

fn reset_to_default(signal: c_int) {
    set_action(signal, libc::SIG_DFL, 0);
}

/// A plain (unguarded) read: a foreign fault when the page is inaccessible.
fn foreign_read(address: *const u8) -> u8 {
    // SAFETY: deliberately touches a possibly inaccessible page; the scenario arranges for the
    // fault to be fixed by a test handler or to end the process.
    unsafe { address.read_volatile() }
}

/// Checks that a guarded access to `page` is still recovered without calling other handlers.
fn guarded_fault_is_recovered(page: *mut u8) -> bool {
    let calls = CALLS.load(Ordering::SeqCst);
    let mut buffer = [0u8; 8];
    // SAFETY: the page is ours; the fault is recovered.
    let result = unsafe { try_copy(page.cast_const(), buffer.as_mut_ptr(), 8) };
    result.is_err() && CALLS.load(Ordering::SeqCst) == calls
}

fn chain_siginfo() -> i32 {
    let page = inaccessible_page();
    set_action(
        libc::SIGSEGV,
        fixing_siginfo_handler as *const () as usize,
        libc::SA_SIGINFO,
    );
    initialize_try_copy();
    if !guarded_fault_is_recovered(page) {
        return 3;
    }
    let value = foreign_read(page);
    if value != 0 || CALLS.load(Ordering::SeqCst) != 1 {
        return 4;
    }
    if LAST_CODE.load(Ordering::SeqCst) != 2 {
        return 5;
    }
    SUCCESS
}

fn chain_one_argument_resethand() -> i32 {
    let page = inaccessible_page();
    set_action(
        libc::SIGSEGV,
        fixing_plain_handler as *const () as usize,
        libc::SA_RESETHAND,
    );
    initialize_try_copy();
    if !guarded_fault_is_recovered(page) {
        return 3;
    }
    foreign_read(page);
    if CALLS.load(Ordering::SeqCst) != 1 {
        return 4;
    }
    // SA_RESETHAND: the disposition is default now, as the kernel would have left it.
    if handler_status() != HandlerStatus::Default {
        return 5;
    }
    // Re-arming over the default keeps the one-shot handler as previous.
    if rearm_handler() != HandlerStatus::Installed {
        return 6;
    }
    make_inaccessible(page);
    if !guarded_fault_is_recovered(page) {
        return 7;
    }
    foreign_read(page);
    if CALLS.load(Ordering::SeqCst) != 2 {
        return 8;
    }
    SUCCESS
}

fn default_previous_segv() -> i32 {
    let page = inaccessible_page();
    reset_to_default(libc::SIGSEGV);
    reset_to_default(libc::SIGBUS);
    initialize_try_copy();
    if !guarded_fault_is_recovered(page) {
        return 3;
    }
    foreign_read(page);
    4
}

fn default_previous_bus() -> i32 {
    reset_to_default(libc::SIGSEGV);
    reset_to_default(libc::SIGBUS);
    initialize_try_copy();
    // SAFETY: a memfd of one page mapped over two: the second page is beyond end-of-file.
    let view = unsafe {
        let fd = libc::memfd_create(c"trycopy-child".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 || libc::ftruncate(fd, libc::off_t::try_from(PAGE).unwrap()) != 0 {
            return 3;
        }
        libc::mmap(
            ptr::null_mut(),
            2 * PAGE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if view == libc::MAP_FAILED {
        return 3;
    }
    let beyond_end = view.cast::<u8>().wrapping_add(PAGE);
    let mut buffer = [0u8; 8];
    // SAFETY: inside the view; the SIGBUS is recovered.
    match unsafe { try_copy(beyond_end.cast_const(), buffer.as_mut_ptr(), 8) } {
        Err(err) if err.fault().signal == libc::SIGBUS => {}
        _ => return 4,
    }
    foreign_read(beyond_end);
    5
}

fn raise_default() -> i32 {
    reset_to_default(libc::SIGSEGV);
    initialize_try_copy();
    // SAFETY: plain system call.
    unsafe { libc::raise(libc::SIGSEGV) };
    3
}

fn raise_chained() -> i32 {
    inaccessible_page();
    set_action(
        libc::SIGSEGV,
        fixing_siginfo_handler as *const () as usize,
        libc::SA_SIGINFO,
    );
    initialize_try_copy();
    // SAFETY: plain system call.
    unsafe { libc::raise(libc::SIGSEGV) };
    if CALLS.load(Ordering::SeqCst) != 1 || LAST_CODE.load(Ordering::SeqCst) > 0 {
        return 3;
    }
    SUCCESS
}

fn signal_during_copy() -> i32 {
    reset_to_default(libc::SIGSEGV);
    initialize_try_copy();
    static COPIER_TID: AtomicI32 = AtomicI32::new(0);
    std::thread::spawn(|| {
        // SAFETY: plain system call.
        COPIER_TID.store(unsafe { libc::gettid() }, Ordering::SeqCst);
        let source = vec![1u8; 32 << 20];
        let mut destination = vec![0u8; 32 << 20];
        loop {
            // SAFETY: two owned buffers of the same length.
            if unsafe { try_copy(source.as_ptr(), destination.as_mut_ptr(), source.len()) }.is_err()
            {
                // The signal was taken for a fault.
                std::process::exit(3);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while COPIER_TID.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: plain system calls targeting our own thread.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            COPIER_TID.load(Ordering::SeqCst),
            libc::SIGSEGV,
        )
    };
    std::thread::sleep(Duration::from_secs(5));
    4
}

/// A handler installed over ours: counts and makes the page readable.
extern "C" fn displacer(_signal: c_int, _info: *mut siginfo_t, _context: *mut c_void) {
    CALLS.fetch_add(1, Ordering::SeqCst);
    make_readable(FIX_PAGE.load(Ordering::SeqCst));
}

fn status_and_rearm() -> i32 {
    if handler_status() != HandlerStatus::NotInstalled {
        return 3;
    }
    if rearm_handler() != HandlerStatus::NotInstalled {
        return 4;
    }
    let page = inaccessible_page();
    reset_to_default(libc::SIGSEGV);
    initialize_try_copy();
    if handler_status() != HandlerStatus::Installed {
        return 5;
    }
    set_action(
        libc::SIGSEGV,
        displacer as *const () as usize,
        libc::SA_SIGINFO,
    );
    if handler_status() != HandlerStatus::Displaced {
        return 6;
    }
    if rearm_handler() != HandlerStatus::Installed {
        return 7;
    }
    if !guarded_fault_is_recovered(page) {
        return 8;
    }
    foreign_read(page);
    if CALLS.load(Ordering::SeqCst) != 1 {
        return 9;
    }
    // libuv-style wipe: the disposition goes to default.
    reset_to_default(libc::SIGSEGV);
    if handler_status() != HandlerStatus::Default {
        return 10;
    }
    if rearm_handler() != HandlerStatus::Installed {
        return 11;
    }
    make_inaccessible(page);
    if !guarded_fault_is_recovered(page) {
        return 12;
    }
    foreign_read(page);
    if CALLS.load(Ordering::SeqCst) != 2 {
        return 13;
    }
    // Re-arming when installed changes nothing.
    if rearm_handler() != HandlerStatus::Installed {
        return 14;
    }
    SUCCESS
}

/// The action that [`chaining_displacer`] forwards to (ours, captured when it was installed).
static DISPLACED_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// A handler installed over ours that chains back to what it displaced (like another copy of
/// this library would); announces each call on stderr.
extern "C" fn chaining_displacer(signal: c_int, info: *mut siginfo_t, context: *mut c_void) {
    let note = b"<displacer>";
    // SAFETY: write(2) is async-signal-safe; the buffer is static.
    unsafe { libc::write(2, note.as_ptr().cast(), note.len()) };
    let handler = DISPLACED_HANDLER.load(Ordering::SeqCst);
    // SAFETY: the captured action is our three-argument handler.
    let handler: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
        unsafe { std::mem::transmute(handler) };
    handler(signal, info, context);
}

fn cycle() -> i32 {
    let page = inaccessible_page();
    reset_to_default(libc::SIGSEGV);
    initialize_try_copy();
    let current = current_action(libc::SIGSEGV);
    if !is_ours(&current) {
        return 3;
    }
    DISPLACED_HANDLER.store(current.sa_sigaction, Ordering::SeqCst);
    set_action(
        libc::SIGSEGV,
        chaining_displacer as *const () as usize,
        libc::SA_SIGINFO,
    );
    if rearm_handler() != HandlerStatus::Installed {
        return 4;
    }
    if !guarded_fault_is_recovered(page) {
        return 5;
    }
    foreign_read(page);
    6
}

fn idempotent() -> i32 {
    let page = inaccessible_page();
    reset_to_default(libc::SIGSEGV);
    reset_to_default(libc::SIGBUS);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..100 {
                    initialize_try_copy();
                }
            })
        })
        .collect();
    for thread in threads {
        if thread.join().is_err() {
            return 3;
        }
    }
    if handler_status() != HandlerStatus::Installed {
        return 4;
    }
    for slot in &PREVIOUS {
        // SAFETY: published records are never freed or modified.
        match unsafe { slot.load(Ordering::Acquire).as_ref() } {
            Some(previous) if previous.sa_sigaction == libc::SIG_DFL => {}
            _ => return 5,
        }
    }
    if !guarded_fault_is_recovered(page) {
        return 6;
    }
    foreign_read(page);
    7
}

/// A listener's handler like libuv's: notes the signal on stderr and returns.
extern "C" fn listener_handler(_signal: c_int, info: *mut siginfo_t, _context: *mut c_void) {
    CALLS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the kernel (or our forwarding) passes a valid siginfo.
    let note: &[u8] = if unsafe { (*info).si_code } > 0 {
        b"<fault>"
    } else {
        b"<raised>"
    };
    // SAFETY: write(2) is async-signal-safe; the buffer is static.
    unsafe { libc::write(2, note.as_ptr().cast(), note.len()) };
}

fn listener() -> i32 {
    let page = inaccessible_page();
    reset_to_default(libc::SIGSEGV);
    initialize_try_copy();
    // process.on('SIGSEGV'): the listener's handler replaces ours, then we are told.
    set_action(
        libc::SIGSEGV,
        listener_handler as *const () as usize,
        libc::SA_SIGINFO,
    );
    if set_signal_listeners(true, false) != HandlerStatus::Installed {
        return 3;
    }
    if !guarded_fault_is_recovered(page) {
        return 4;
    }
    // SAFETY: plain system call.
    unsafe { libc::raise(libc::SIGSEGV) };
    if CALLS.load(Ordering::SeqCst) != 1 {
        return 5;
    }
    // Creating more guest memory re-arms without changing anything.
    if rearm_handler() != HandlerStatus::Installed {
        return 6;
    }
    foreign_read(page);
    7
}

fn listener_first() -> i32 {
    let page = inaccessible_page();
    set_action(
        libc::SIGSEGV,
        listener_handler as *const () as usize,
        libc::SA_SIGINFO,
    );
    if set_signal_listeners(true, false) != HandlerStatus::NotInstalled {
        return 3;
    }
    initialize_try_copy();
    if handler_status() != HandlerStatus::Installed || !guarded_fault_is_recovered(page) {
        return 4;
    }
    foreign_read(page);
    5
}

fn listener_removed() -> i32 {
    let page = inaccessible_page();
    set_action(
        libc::SIGSEGV,
        fixing_siginfo_handler as *const () as usize,
        libc::SA_SIGINFO,
    );
    initialize_try_copy();
    set_action(
        libc::SIGSEGV,
        listener_handler as *const () as usize,
        libc::SA_SIGINFO,
    );
    if set_signal_listeners(true, false) != HandlerStatus::Installed {
        return 3;
    }
    // process.off: libuv resets the disposition to default, then we are told.
    reset_to_default(libc::SIGSEGV);
    if set_signal_listeners(false, false) != HandlerStatus::Installed {
        return 4;
    }
    if !guarded_fault_is_recovered(page) {
        return 5;
    }
    // The chain from before the listener is intact: the fixing handler resolves a foreign fault.
    foreign_read(page);
    if CALLS.load(Ordering::SeqCst) != 1 {
        return 6;
    }
    // SAFETY: plain system call; goes to the fixing handler too (no listener any more).
    unsafe { libc::raise(libc::SIGSEGV) };
    if CALLS.load(Ordering::SeqCst) != 2 || LAST_CODE.load(Ordering::SeqCst) > 0 {
        return 7;
    }
    SUCCESS
}

/// A previous handler that returns without resolving anything (announces itself once).
extern "C" fn swallowing_handler(_signal: c_int, _info: *mut siginfo_t, _context: *mut c_void) {
    if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        let note = b"<swallowed>";
        // SAFETY: write(2) is async-signal-safe; the buffer is static.
        unsafe { libc::write(2, note.as_ptr().cast(), note.len()) };
    }
}

fn swallowing_previous() -> i32 {
    let page = inaccessible_page();
    set_action(
        libc::SIGSEGV,
        swallowing_handler as *const () as usize,
        libc::SA_SIGINFO,
    );
    initialize_try_copy();
    if !guarded_fault_is_recovered(page) {
        return 3;
    }
    foreign_read(page);
    4
}
