//! The registrar's side of a JavaScript registration callback: what the callback's answer
//! means for `underhill_mem::MemoryRegistrar`, and the registrations of one JavaScript thread
//! while they wait for a callback's Promise.
//!
//! The callback's TypeScript wrapper answers `done`, `failed` (with the token of its exception)
//! or `pending` (a Promise, settled later through [`Registrations::settle`]). A registration
//! (`register_async`) is started with [`Registrations::start`]: polled once, it either finishes
//! at once or is parked; a settlement wakes it, and [`Registrations::run_ready`] finishes it and
//! reports its outcome. The token of a failed callback's exception is noted on the registration
//! that ran it, so that its error names the thrown value as its cause. Everything runs on the
//! JavaScript thread that owns the registrar.

use crate::executor::LocalTasks;
use crate::executor::Started;
use crate::hooks::JsHookFailure;
use crate::hooks::RegistrationAnswer;
use crate::JsError;
use futures::channel::oneshot;
use futures::FutureExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use underhill_mem::Registration;

/// A finished registration (or its panic), with the value its starter attached.
type Finished<N> = (std::thread::Result<Result<(), u64>>, N);

/// The registrations of one JavaScript thread (a cheap handle: clones share them). `N` is what
/// a finished one is reported with (the binding's notifier of its registrar).
pub struct Registrations<N>(Rc<Inner<N>>);

struct Inner<N> {
    tasks: LocalTasks<Finished<N>>,
    /// Senders of the pending callbacks, by token.
    pending: RefCell<HashMap<u32, oneshot::Sender<bool>>>,
}

impl<N> Clone for Registrations<N> {
    fn clone(&self) -> Self {
        Registrations(self.0.clone())
    }
}

impl<N> Default for Registrations<N> {
    fn default() -> Self {
        Registrations(Rc::new(Inner {
            tasks: LocalTasks::default(),
            pending: RefCell::new(HashMap::new()),
        }))
    }
}

/// The error of a finished registration, if it failed.
fn outcome(result: std::thread::Result<Result<(), u64>>, note: Option<u32>) -> Option<JsError> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(address)) => Some(JsError::registration_failed(address, note)),
        Err(panic) => Some(JsError::arg_value(
            panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the core panicked".to_owned()),
        )),
    }
}

impl<N: 'static> Registrations<N> {
    /// The registration the callback's JSON answer asks for (`None`: the callback could not be
    /// called at all).
    pub fn registration(&self, answer: Option<String>) -> Registration<JsHookFailure> {
        let answer = answer
            .ok_or_else(|| JsHookFailure::new("the registration callback could not run", None))
            .and_then(|answer| RegistrationAnswer::parse(&answer));
        match answer {
            Ok(RegistrationAnswer::Done) => Registration::Ready(Ok(())),
            Ok(RegistrationAnswer::Failed { cause_token }) => {
                self.0.tasks.note(cause_token);
                Registration::Ready(Err(JsHookFailure::new(
                    "the registration callback threw",
                    Some(cause_token),
                )))
            }
            Ok(RegistrationAnswer::Pending { token }) => {
                let (sender, receiver) = oneshot::channel();
                self.0.pending.borrow_mut().insert(token, sender);
                let inner = self.0.clone();
                Registration::Pending(Box::pin(async move {
                    // A dropped sender (its registrar went away) counts as a failure.
                    if receiver.await.unwrap_or(true) {
                        inner.tasks.note(token);
                        Err(JsHookFailure::new(
                            "the registration callback rejected",
                            Some(token),
                        ))
                    } else {
                        Ok(())
                    }
                }))
            }
            Err(failure) => Registration::Ready(Err(failure)),
        }
    }

    /// Starts `registration`: its error now, or `Ok(None)` when it finished, or the id under
    /// which it waits (reported by a later [`Registrations::run_ready`]).
    pub fn start(
        &self,
        registration: impl Future<Output = Result<(), u64>> + 'static,
        reported_with: N,
    ) -> Result<Option<u32>, JsError> {
        let task = AssertUnwindSafe(registration)
            .catch_unwind()
            .map(move |result| (result, reported_with));
        match self.0.tasks.start(task) {
            Started::Parked(id) => Ok(Some(id)),
            Started::Done((result, _), note) => outcome(result, note).map_or(Ok(None), Err),
        }
    }

    /// Settles the pending callback `token` (`failed`: its Promise rejected).
    pub fn settle(&self, token: u32, failed: bool) {
        if let Some(sender) = self.0.pending.borrow_mut().remove(&token) {
            // The receiver may be gone (its registration was dropped); nothing waits then.
            let _ = sender.send(failed);
        }
    }

    /// Finishes the woken registrations: `report(id, with, error)` for each that completes.
    pub fn run_ready(&self, mut report: impl FnMut(u32, &N, Option<JsError>)) {
        self.0.tasks.run_ready(|id, (result, with), note| {
            report(id, &with, outcome(result, note));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorClass;
    use crate::errors::ErrorCode;
    use memory_range::MemoryRange;
    use std::cell::Cell;
    use std::rc::Rc;
    use underhill_mem::MemoryRegistrar;
    use vm_topology::memory::MemoryLayout;

    const GIB: u64 = 1 << 30;

    /// A callback whose answers are scripted, recording the ranges it saw.
    struct Scripted {
        registrations: Registrations<&'static str>,
        answers: RefCell<Vec<Option<String>>>,
        seen: RefCell<Vec<MemoryRange>>,
    }

    impl Scripted {
        fn answer(&self, range: MemoryRange) -> Registration<JsHookFailure> {
            self.seen.borrow_mut().push(range);
            let answer = self.answers.borrow_mut().remove(0);
            self.registrations.registration(answer)
        }
    }

    type Callback = Box<dyn Fn(MemoryRange) -> Registration<JsHookFailure>>;

    fn setup(
        answers: &[Option<&str>],
    ) -> (
        Registrations<&'static str>,
        Rc<Scripted>,
        Rc<MemoryRegistrar<Callback>>,
    ) {
        let registrations = Registrations::default();
        let callback = Rc::new(Scripted {
            registrations: registrations.clone(),
            answers: RefCell::new(answers.iter().map(|a| a.map(str::to_owned)).collect()),
            seen: RefCell::new(Vec::new()),
        });
        let layout = MemoryLayout::new(4 * GIB, &[], None).unwrap();
        let scripted = callback.clone();
        let answer: Callback = Box::new(move |range| scripted.answer(range));
        let registrar = Rc::new(MemoryRegistrar::new_async(&layout, 0, answer));
        (registrations, callback, registrar)
    }

    fn start(
        registrations: &Registrations<&'static str>,
        registrar: &Rc<MemoryRegistrar<Callback>>,
        address: u64,
    ) -> Result<Option<u32>, JsError> {
        let registrar = registrar.clone();
        registrations.start(
            async move { registrar.register_async(address, 0x1000).await },
            "registrar",
        )
    }

    #[test]
    fn a_synchronous_answer_finishes_at_once() {
        let (registrations, callback, registrar) = setup(&[
            Some(r#"{"answer":"done"}"#),
            Some(r#"{"answer":"failed","causeToken":5}"#),
        ]);
        assert_eq!(start(&registrations, &registrar, 0x1000), Ok(None));
        let error = start(&registrations, &registrar, 2 * GIB + 0x1000).unwrap_err();
        assert_eq!(
            error.kind(),
            (
                ErrorClass::RegistrarError,
                Some(ErrorCode::RegistrationFailed)
            )
        );
        assert_eq!(
            error.cause_token,
            Some(5),
            "the callback's exception is the cause"
        );
        assert_eq!(callback.seen.borrow().len(), 2);
    }

    #[test]
    fn a_pending_answer_parks_until_settled() {
        let (registrations, _callback, registrar) = setup(&[
            Some(r#"{"answer":"pending","token":7}"#),
            Some(r#"{"answer":"pending","token":8}"#),
        ]);
        let first = start(&registrations, &registrar, 0x1000).unwrap().unwrap();
        let second = start(&registrations, &registrar, 2 * GIB).unwrap().unwrap();
        let reports = Cell::new(0);
        registrations.run_ready(|_, _, _| reports.set(reports.get() + 1));
        assert_eq!(reports.get(), 0, "nothing settled yet");
        registrations.settle(8, true);
        registrations.settle(7, false);
        let mut finished = Vec::new();
        registrations.run_ready(|id, with, error| {
            finished.push((id, *with, error.map(|e| (e.cause_token, e.message))))
        });
        finished.sort_by_key(|entry| entry.0);
        assert_eq!(
            finished,
            [
                (first, "registrar", None),
                (
                    second,
                    "registrar",
                    Some((
                        Some(8),
                        "failed to register guest memory at 0x80000000".to_owned()
                    ))
                ),
            ]
        );
        registrations.settle(99, false);
    }

    #[test]
    fn an_unreadable_or_missing_answer_fails_without_a_cause() {
        let (registrations, _callback, registrar) = setup(&[None, Some("-1")]);
        for address in [0x1000, 2 * GIB] {
            let error = start(&registrations, &registrar, address).unwrap_err();
            assert_eq!(
                error.code,
                Some(crate::enums::Js(ErrorCode::RegistrationFailed))
            );
            assert_eq!(error.cause_token, None);
        }
    }

    #[test]
    fn a_panic_of_the_core_is_a_range_error() {
        let (registrations, _callback, registrar) = setup(&[]);
        // An address range past the end of RAM makes the registrar panic (as the original does).
        let error = start(&registrations, &registrar, u64::MAX - 0xfff).unwrap_err();
        assert_eq!(
            error.kind(),
            (ErrorClass::RangeError, Some(ErrorCode::InvalidArgValue))
        );
    }
}
