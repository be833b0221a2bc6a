//! The answers of JavaScript callbacks, typed: what a guest-memory hook (`pageFault`, the
//! slow-path fallbacks, page locking) or a registration callback tells the core.
//!
//! The TypeScript layer wraps every user callback so that it never throws into native code: the
//! wrapper catches, keeps a thrown value under a token (`ts/causes.ts`) and answers with one of
//! the JSON objects below. The core never sees a JavaScript exception; the token comes back in
//! the error's `causeToken` field and the TypeScript layer restores the thrown value as the
//! error's `cause`.

use guestmem::GuestMemoryErrorKind;
use guestmem::PageFaultAction;
use guestmem::PageFaultError;
use serde::Deserialize;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use crate::enums::JsEnum;

/// A JavaScript hook failed (it threw, returned something it may not, or could not run). It
/// ends up in a guest-memory error's source chain; its token names the thrown value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsHookFailure {
    message: String,
    cause_token: Option<u32>,
}

impl JsHookFailure {
    /// A failure described by `message`, with the token of the thrown value, if any.
    pub fn new(message: impl Into<String>, cause_token: Option<u32>) -> Self {
        JsHookFailure {
            message: message.into(),
            cause_token,
        }
    }

    /// The token of the value the hook threw.
    pub fn cause_token(&self) -> Option<u32> {
        self.cause_token
    }

    /// `hook` failed: it threw (its value is kept under `cause_token`), or could not be called.
    pub fn failed(hook: &str, cause_token: Option<u32>) -> Self {
        Self::new(format!("the JavaScript {hook} hook failed"), cause_token)
    }

    /// `hook` cannot run where it was asked to (`context`).
    pub fn unreachable(hook: &str, context: &str) -> Self {
        Self::new(
            format!(
                "the JavaScript {hook} hook cannot run {context}: it runs on the JavaScript thread \
                 that created the memory (synchronous operations of that thread, and \
                 asynchronous operations of any thread)"
            ),
            None,
        )
    }
}

/// The most hook calls that may be in progress at once on one thread. A hook that accesses the
/// memory that called it can make the access call a hook again; unbounded, that recursion
/// crossed JavaScript and native frames until V8's stack limit, whose handling then crashed the
/// process (SIGSEGV at about 180 levels here) instead of throwing. Legitimate re-entrance is a
/// few levels deep.
pub const MAX_HOOK_NESTING: u32 = 32;

thread_local! {
    /// The hook calls in progress on this thread.
    static HOOK_NESTING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A hook call in progress on this thread ([`enter_hook`]); dropping it ends the call.
#[derive(Debug)]
pub struct HookCall(());

impl Drop for HookCall {
    fn drop(&mut self) {
        HOOK_NESTING.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// Starts a call of `hook` on this thread, or refuses it when [`MAX_HOOK_NESTING`] hook calls
/// are in progress on this thread already (the failure names the hook, the limit and the way
/// out).
pub fn enter_hook(hook: &str) -> Result<HookCall, JsHookFailure> {
    HOOK_NESTING.with(|depth| {
        if depth.get() >= MAX_HOOK_NESTING {
            return Err(JsHookFailure::new(
                format!(
                    "the JavaScript {hook} hook was not called: {MAX_HOOK_NESTING} hook calls are \
                     in progress on this thread already (a hook accessed guest memory whose access \
                     called a hook again, each time); end the recursion in the hook, for example \
                     by not accessing the range it is asked about"
                ),
                None,
            ));
        }
        depth.set(depth.get() + 1);
        Ok(HookCall(()))
    })
}

/// Whether a hook may be handed to the JavaScript thread that owns it and waited for, from a
/// thread where that thread's environment is not published: yes from a thread that runs no
/// JavaScript; never from the owner itself (outside a native call that published it: it would
/// wait for itself) or from another JavaScript thread (two JavaScript threads never wait on each
/// other).
pub fn handoff(
    hook: &str,
    on_owner_thread: bool,
    on_javascript_thread: bool,
) -> Result<(), JsHookFailure> {
    match (on_javascript_thread, on_owner_thread) {
        (true, _) => Err(JsHookFailure::unreachable(
            hook,
            "on another JavaScript thread",
        )),
        (false, true) => Err(JsHookFailure::unreachable(hook, "outside a native call")),
        (false, false) => Ok(()),
    }
}

/// Whether the process is exiting: set once, from the main JavaScript thread's `exit` event.
///
/// `process.exit()` (and an uncaught exception) on the main thread ends the process without
/// tearing its environment down: no cleanup hook runs, so a thread-safe function is never
/// aborted, but libuv joins its pool threads before the process ends. A pool thread waiting for
/// a hook answer from that thread would wait for ever, and the process would never exit.
#[derive(Debug, Default)]
pub struct ProcessExit(AtomicBool);

impl ProcessExit {
    /// Not exiting.
    pub const fn new() -> Self {
        ProcessExit(AtomicBool::new(false))
    }

    /// The process is exiting: every wait for a JavaScript thread gives up from now on.
    pub fn mark(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`mark`](Self::mark) was called.
    pub fn is_marked(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// This process's exit state (the binding marks it from the main thread's `exit` event).
pub static PROCESS_EXIT: ProcessExit = ProcessExit::new();

/// Waits for the answer of a job handed to a JavaScript thread, checking every `poll` whether
/// it can still come: `None` once the sender is gone, `thread_gone()` says the thread will never
/// run the job (its environment is being torn down), or `exit` is marked (the process is ending
/// and the job will never run: waiting would keep the process from exiting).
pub fn wait_for_javascript<R>(
    receiver: &Receiver<R>,
    poll: Duration,
    exit: &ProcessExit,
    thread_gone: impl Fn() -> bool,
) -> Option<R> {
    loop {
        if exit.is_marked() {
            return None;
        }
        match receiver.recv_timeout(poll) {
            Ok(answer) => return Some(answer),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) if thread_gone() => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// What a read or compare-exchange fallback's wrapper answered: JSON, or bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BytesAnswer {
    /// A JSON [`HookAnswer`].
    Json(String),
    /// The bytes it read or observed.
    Bytes(Vec<u8>),
}

/// The bytes a `readFallback` read: exactly `len` of them.
pub fn read_fallback_data(answer: BytesAnswer, len: usize) -> Result<Vec<u8>, JsHookFailure> {
    match answer {
        BytesAnswer::Bytes(data) if data.len() == len => Ok(data),
        BytesAnswer::Json(json) => {
            hook_answer(&json, "readFallback", DONE)?;
            Err(JsHookFailure::new(
                "the JavaScript readFallback hook gave no data",
                None,
            ))
        }
        BytesAnswer::Bytes(_) => Err(JsHookFailure::new(
            "the JavaScript readFallback hook gave no data",
            None,
        )),
    }
}

/// What a `compareExchangeFallback` did: `None` when it swapped, else the `len` bytes it
/// observed.
pub fn compare_exchange_outcome(
    answer: BytesAnswer,
    len: usize,
) -> Result<Option<Vec<u8>>, JsHookFailure> {
    match answer {
        BytesAnswer::Json(json) => {
            hook_answer(&json, "compareExchangeFallback", SWAPPED).map(|_| None)
        }
        BytesAnswer::Bytes(observed) if observed.len() == len => Ok(Some(observed)),
        BytesAnswer::Bytes(_) => Err(JsHookFailure::new(
            "the JavaScript compareExchangeFallback hook gave no observed value",
            None,
        )),
    }
}

/// The address a failure of a page-locking hook names: the first page's (`u64::MAX` for none).
pub fn first_page_address(gpns: &[u64]) -> u64 {
    gpns.first().map_or(u64::MAX, |gpn| gpn.wrapping_mul(4096))
}

impl std::fmt::Display for JsHookFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JsHookFailure {}

/// The token of the JavaScript hook failure in `error`'s source chain, if any.
pub fn cause_token(error: &(dyn std::error::Error + 'static)) -> Option<u32> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(failure) = error.downcast_ref::<JsHookFailure>() {
            return failure.cause_token;
        }
        current = error.source();
    }
    None
}

/// The answer of the `pageFault` wrapper: `{"answer":"retry"}`, `{"answer":"fallback"}` or
/// `{"answer":"fail","kind":"OutOfRange","message":"…","causeToken":3}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase", deny_unknown_fields)]
pub enum PageFaultAnswer {
    /// The page was made accessible: run the access again.
    Retry,
    /// Run the operation through the fallback hooks.
    Fallback,
    /// Fail the access with `kind`.
    #[serde(rename_all = "camelCase")]
    Fail {
        /// A `GuestMemoryErrorKind` value.
        kind: String,
        /// The failure's message.
        message: String,
        /// The token of a value the hook threw (or of the TypeError its bad answer caused).
        cause_token: Option<u32>,
    },
}

/// The page-fault decision of a `pageFault` wrapper's JSON answer; an unreadable answer fails
/// the access with kind `Other`.
pub fn page_fault_action(answer: &str) -> PageFaultAction {
    match serde_json::from_str::<PageFaultAnswer>(answer) {
        Ok(PageFaultAnswer::Retry) => PageFaultAction::Retry,
        Ok(PageFaultAnswer::Fallback) => PageFaultAction::Fallback,
        Ok(PageFaultAnswer::Fail {
            kind,
            message,
            cause_token,
        }) => {
            let kind =
                GuestMemoryErrorKind::from_js_str(&kind).unwrap_or(GuestMemoryErrorKind::Other);
            PageFaultAction::Fail(PageFaultError::new(
                kind,
                JsHookFailure::new(message, cause_token),
            ))
        }
        Err(error) => PageFaultAction::Fail(PageFaultError::other(JsHookFailure::new(
            format!("the JavaScript pageFault hook gave an unreadable answer: {error}"),
            None,
        ))),
    }
}

/// The answer of a fallback or locking hook's wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase", deny_unknown_fields)]
pub enum HookAnswer {
    /// Write and fill fallbacks: done. (A read fallback answers with the bytes it read.)
    Done,
    /// Compare-exchange fallback: swapped. (When it did not swap, it answers with the bytes it
    /// observed.)
    Swapped,
    /// `lockGpns`: locked; `unlockGpns` is called once on release.
    Locked,
    /// `lockGpns`: nothing to unlock later.
    NotLocked,
    /// The hook threw (its value is kept under the token) or answered wrongly.
    #[serde(rename_all = "camelCase")]
    Failed {
        /// The token of the thrown value.
        cause_token: u32,
    },
}

/// Reads the JSON answer of `hook`, which may give one of `expected` (the answers of its kind)
/// or fail: `Ok(true)` for the first expected answer, `Ok(false)` for the second.
pub fn hook_answer(
    answer: &str,
    hook: &str,
    expected: [HookAnswer; 2],
) -> Result<bool, JsHookFailure> {
    match serde_json::from_str::<HookAnswer>(answer) {
        Ok(HookAnswer::Failed { cause_token }) => {
            Err(JsHookFailure::failed(hook, Some(cause_token)))
        }
        Ok(answer) if answer == expected[0] => Ok(true),
        Ok(answer) if answer == expected[1] => Ok(false),
        Ok(answer) => Err(JsHookFailure::new(
            format!("the JavaScript {hook} hook answered {answer:?}, which it cannot"),
            None,
        )),
        Err(error) => Err(JsHookFailure::new(
            format!("the JavaScript {hook} hook gave an unreadable answer: {error}"),
            None,
        )),
    }
}

/// The JSON answer of a write or fill fallback (`done`, or failed).
pub const DONE: [HookAnswer; 2] = [HookAnswer::Done, HookAnswer::Done];
/// The JSON answer of a compare-exchange fallback that swapped.
pub const SWAPPED: [HookAnswer; 2] = [HookAnswer::Swapped, HookAnswer::Swapped];
/// The answers of `lockGpns` (`true` = locked).
pub const LOCKED_OR_NOT: [HookAnswer; 2] = [HookAnswer::Locked, HookAnswer::NotLocked];

/// The answer of the registration callback's wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase", deny_unknown_fields)]
pub enum RegistrationAnswer {
    /// The callback returned (synchronously).
    Done,
    /// The callback returned a Promise; `settleRegistrationCallback(token, failed)` follows.
    Pending {
        /// The token the settlement will name.
        token: u32,
    },
    /// The callback threw; its value is kept under the token.
    #[serde(rename_all = "camelCase")]
    Failed {
        /// The token of the thrown value.
        cause_token: u32,
    },
}

impl RegistrationAnswer {
    /// The wrapper's JSON answer; one that cannot be read is a failure without a cause.
    pub fn parse(answer: &str) -> Result<Self, JsHookFailure> {
        serde_json::from_str(answer).map_err(|error| {
            JsHookFailure::new(
                format!("the registration callback gave an unreadable answer: {error}"),
                None,
            )
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_wait_for_javascript_gives_up_once_the_process_exits() {
        let poll = Duration::from_millis(5);
        // An answer that comes is returned.
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        sender.send(7).unwrap();
        let exit = ProcessExit::new();
        assert_eq!(
            wait_for_javascript(&receiver, poll, &exit, || false),
            Some(7)
        );
        // A sender that went away (the job was dropped unrun) ends the wait.
        drop(sender);
        assert_eq!(wait_for_javascript(&receiver, poll, &exit, || false), None);
        // A thread being torn down ends the wait.
        let (_sender, receiver) = std::sync::mpsc::sync_channel::<u32>(1);
        assert_eq!(wait_for_javascript(&receiver, poll, &exit, || true), None);
        // The process exiting ends a wait in progress, and every later one at once, while the
        // job (and so its sender) stays queued for ever.
        let exit = std::sync::Arc::new(ProcessExit::new());
        let waiter = {
            let exit = exit.clone();
            std::thread::spawn(move || wait_for_javascript(&receiver, poll, &exit, || false))
        };
        exit.mark();
        assert_eq!(waiter.join().unwrap(), None);
        let (_sender, receiver) = std::sync::mpsc::sync_channel::<u32>(1);
        assert_eq!(
            wait_for_javascript(&receiver, Duration::from_secs(3600), &exit, || false),
            None
        );
        assert!(exit.is_marked());
        assert!(
            !PROCESS_EXIT.is_marked(),
            "only the binding marks the process's own state"
        );
    }
    #[test]
    fn hook_calls_nest_up_to_the_limit_per_thread() {
        let calls: Vec<HookCall> = (0..MAX_HOOK_NESTING)
            .map(|_| enter_hook("readFallback").unwrap())
            .collect();
        let refused = enter_hook("readFallback").unwrap_err();
        assert!(
            refused
                .message
                .starts_with("the JavaScript readFallback hook was not called: 32 hook calls"),
            "{}",
            refused.message
        );
        assert_eq!(refused.cause_token(), None);
        // Another thread has its own count.
        std::thread::spawn(|| drop(enter_hook("pageFault").unwrap()))
            .join()
            .unwrap();
        // Ending one call makes room for one more.
        drop(calls);
        let again: Vec<HookCall> = (0..MAX_HOOK_NESTING)
            .map(|_| enter_hook("pageFault").unwrap())
            .collect();
        assert!(enter_hook("pageFault").is_err());
        drop(again);
        drop(enter_hook("pageFault").unwrap());
    }

    use super::*;

    fn fail_parts(action: PageFaultAction) -> (GuestMemoryErrorKind, String, Option<u32>) {
        let PageFaultAction::Fail(error) = action else {
            panic!("expected a failure, got {action:?}");
        };
        let source = std::error::Error::source(&error).unwrap();
        (error.kind(), source.to_string(), cause_token(&error))
    }

    #[test]
    fn page_fault_answers_become_actions() {
        assert!(matches!(
            page_fault_action(r#"{"answer":"retry"}"#),
            PageFaultAction::Retry
        ));
        assert!(matches!(
            page_fault_action(r#"{"answer":"fallback"}"#),
            PageFaultAction::Fallback
        ));
        let fail = page_fault_action(
            r#"{"answer":"fail","kind":"VtlProtected","message":"no access","causeToken":null}"#,
        );
        assert_eq!(
            fail_parts(fail),
            (
                GuestMemoryErrorKind::VtlProtected,
                "no access".to_owned(),
                None
            )
        );
        let thrown = page_fault_action(
            r#"{"answer":"fail","kind":"Other","message":"threw","causeToken":9}"#,
        );
        assert_eq!(
            fail_parts(thrown).2,
            Some(9),
            "the token reaches the error chain"
        );
    }

    #[test]
    fn a_page_fault_answer_that_cannot_be_read_fails_with_kind_other() {
        for bad in [r#"{"answer":"maybe"}"#, "42", r#"{"answer":"fail"}"#, ""] {
            let (kind, message, token) = fail_parts(page_fault_action(bad));
            assert_eq!(kind, GuestMemoryErrorKind::Other, "{bad}");
            assert!(message.contains("unreadable answer"), "{message}");
            assert_eq!(token, None);
        }
    }

    #[test]
    fn hook_answers_are_checked_against_what_the_hook_may_say() {
        assert_eq!(
            hook_answer(r#"{"answer":"done"}"#, "writeFallback", DONE),
            Ok(true)
        );
        assert_eq!(
            hook_answer(
                r#"{"answer":"swapped"}"#,
                "compareExchangeFallback",
                SWAPPED
            ),
            Ok(true)
        );
        assert_eq!(
            hook_answer(r#"{"answer":"notLocked"}"#, "lockGpns", LOCKED_OR_NOT),
            Ok(false)
        );
        assert_eq!(
            hook_answer(r#"{"answer":"locked"}"#, "lockGpns", LOCKED_OR_NOT),
            Ok(true)
        );
        let failed = hook_answer(
            r#"{"answer":"failed","causeToken":4}"#,
            "lockGpns",
            LOCKED_OR_NOT,
        )
        .unwrap_err();
        assert_eq!(failed.cause_token(), Some(4));
        assert_eq!(failed.to_string(), "the JavaScript lockGpns hook failed");
        let wrong = hook_answer(r#"{"answer":"locked"}"#, "fillFallback", DONE).unwrap_err();
        assert!(wrong.to_string().contains("cannot"), "{wrong}");
        assert_eq!(wrong.cause_token(), None);
    }

    #[test]
    fn a_read_fallback_answers_with_exactly_the_bytes_asked_for() {
        let data = read_fallback_data(BytesAnswer::Bytes(vec![1, 2, 3]), 3);
        assert_eq!(data, Ok(vec![1, 2, 3]));
        for wrong in [
            BytesAnswer::Bytes(vec![1, 2]),
            BytesAnswer::Json(r#"{"answer":"done"}"#.into()),
        ] {
            let error = read_fallback_data(wrong, 3).unwrap_err();
            assert_eq!(
                error.to_string(),
                "the JavaScript readFallback hook gave no data"
            );
        }
        let thrown = read_fallback_data(
            BytesAnswer::Json(r#"{"answer":"failed","causeToken":6}"#.into()),
            3,
        )
        .unwrap_err();
        assert_eq!(thrown.cause_token(), Some(6));
    }

    #[test]
    fn a_compare_exchange_fallback_swapped_or_observed_a_value_of_the_size() {
        let swapped = BytesAnswer::Json(r#"{"answer":"swapped"}"#.into());
        assert_eq!(compare_exchange_outcome(swapped, 8), Ok(None));
        let observed = compare_exchange_outcome(BytesAnswer::Bytes(vec![9; 8]), 8);
        assert_eq!(observed, Ok(Some(vec![9; 8])));
        let short = compare_exchange_outcome(BytesAnswer::Bytes(vec![9; 4]), 8).unwrap_err();
        assert!(short.to_string().contains("no observed value"), "{short}");
        let done = BytesAnswer::Json(r#"{"answer":"done"}"#.into());
        assert!(
            compare_exchange_outcome(done, 8).is_err(),
            "only swapped may be said"
        );
    }

    #[test]
    fn hooks_are_handed_over_only_from_threads_that_run_no_javascript() {
        assert_eq!(handoff("pageFault", false, false), Ok(()));
        let owner = handoff("pageFault", true, false).unwrap_err();
        assert!(
            owner
                .to_string()
                .contains("cannot run outside a native call"),
            "{owner}"
        );
        let other = handoff("lockGpns", false, true).unwrap_err();
        assert!(
            other.to_string().starts_with(
                "the JavaScript lockGpns hook cannot run on another JavaScript thread"
            ),
            "{other}"
        );
        assert_eq!(first_page_address(&[3, 4]), 0x3000);
        assert_eq!(first_page_address(&[]), u64::MAX);
    }

    #[test]
    fn registration_answers_parse_or_fail_without_a_cause() {
        assert_eq!(
            RegistrationAnswer::parse(r#"{"answer":"done"}"#),
            Ok(RegistrationAnswer::Done)
        );
        assert_eq!(
            RegistrationAnswer::parse(r#"{"answer":"pending","token":12}"#),
            Ok(RegistrationAnswer::Pending { token: 12 })
        );
        assert_eq!(
            RegistrationAnswer::parse(r#"{"answer":"failed","causeToken":3}"#),
            Ok(RegistrationAnswer::Failed { cause_token: 3 })
        );
        let error = RegistrationAnswer::parse("-1").unwrap_err();
        assert_eq!(error.cause_token(), None);
    }

    #[test]
    fn the_cause_token_is_found_anywhere_in_a_chain() {
        #[derive(Debug)]
        struct Outer(JsHookFailure);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let outer = Outer(JsHookFailure::new("inner", Some(5)));
        assert_eq!(cause_token(&outer), Some(5));
        assert_eq!(cause_token(&JsHookFailure::new("none", None)), None);
    }
}
