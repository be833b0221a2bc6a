//! The one executor behind the API's Promises, and the parked tasks of the registrar.
//!
//! Every manager operation is a future that completes when a manager thread answers.
//! [`spawn`] runs such a future and hands its output to a completion callback (the binding's
//! settles a Promise); where the polls after the first run depends on [`Polling`]:
//!
//! * [`Polling::Inline`]: on the thread that wakes the task. The first poll runs on the calling
//!   (JavaScript) thread and sends the request; the manager thread that sends the reply wakes
//!   the task and so polls it to completion itself: one thread round trip per request. Only for
//!   futures whose work after each wake-up is short and never blocks (reading a reply, settling
//!   the Promise): the manager thread must never block.
//! * [`Polling::Pool`]: every poll on the executor's own threads (two, never the JavaScript
//!   thread nor the libuv pool), for futures that do work of their own (building a manager,
//!   closing one, which joins its thread).
//!
//! A task woken while it is being polled is polled again by the thread polling it, never by two
//! threads at once.
//!
//! [`LocalTasks`] keeps futures that must stay on one thread (the registrar's, which call
//! JavaScript while they are polled): a wake only queues the task; its owner polls the queue
//! when it next runs (see `docs/design.md`, "Threads and channels").

use futures::executor::ThreadPool;
use futures::future::BoxFuture;
use futures::future::LocalBoxFuture;
use futures::task::waker_ref;
use futures::task::ArcWake;
use parking_lot::Mutex;
use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::Context;
use std::task::Poll;
use std::task::Wake;
use std::task::Waker;

/// Where a spawned task is polled (see the module documentation).
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum Polling {
    /// On the spawning thread first, then on whichever thread wakes it.
    Inline,
    /// Always on the executor's own threads.
    Pool,
}

/// The executor's threads could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorUnavailable(pub String);

impl std::fmt::Display for ExecutorUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot start the executor threads: {}", self.0)
    }
}

impl std::error::Error for ExecutorUnavailable {}

fn pool() -> Result<&'static ThreadPool, ExecutorUnavailable> {
    static POOL: OnceLock<Result<ThreadPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        ThreadPool::builder()
            .pool_size(2)
            .name_prefix("membacking-async-")
            .create()
            .map_err(|error| error.to_string())
    })
    .as_ref()
    .map_err(|error| ExecutorUnavailable(error.clone()))
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN_WHILE_POLLING: u8 = 2;

/// A spawned future and its polling state.
struct Task {
    future: Mutex<Option<BoxFuture<'static, ()>>>,
    state: AtomicU8,
    polling: Polling,
}

impl Task {
    /// Polls until the future is done or waits with no wake pending. A thread that finds the
    /// task being polled only marks it to be polled again.
    fn run(self: &Arc<Self>) {
        loop {
            match self
                .state
                .compare_exchange(IDLE, POLLING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(POLLING) => {
                    if self
                        .state
                        .compare_exchange(
                            POLLING,
                            WOKEN_WHILE_POLLING,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        loop {
            {
                let waker = waker_ref(self);
                let mut context = Context::from_waker(&waker);
                let mut slot = self.future.lock();
                if let Some(future) = slot.as_mut() {
                    if future.as_mut().poll(&mut context).is_ready() {
                        *slot = None;
                    }
                }
            }
            if self
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
            self.state.store(POLLING, Ordering::Release);
        }
    }

    fn schedule(self: &Arc<Self>) {
        match self.polling {
            Polling::Inline => self.run(),
            Polling::Pool => match pool() {
                Ok(pool) => {
                    let task = self.clone();
                    pool.spawn_ok(async move { task.run() });
                }
                // The pool started when this task was spawned; it never goes away.
                Err(_) => self.run(),
            },
        }
    }
}

impl ArcWake for Task {
    fn wake_by_ref(task: &Arc<Self>) {
        task.schedule();
    }
}

/// Runs `future` to completion and calls `done` with its output on the thread that polled it
/// last.
pub fn spawn<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
    polling: Polling,
    done: impl FnOnce(T) + Send + 'static,
) -> Result<(), ExecutorUnavailable> {
    if polling == Polling::Pool {
        pool()?;
    }
    let task = Arc::new(Task {
        future: Mutex::new(Some(Box::pin(async move { done(future.await) }))),
        state: AtomicU8::new(IDLE),
        polling,
    });
    task.schedule();
    Ok(())
}

/// How [`LocalTasks::start`] left a future.
#[derive(Debug, PartialEq, Eq)]
pub enum Started<T> {
    /// It completed during its first poll.
    Done(T, Option<u32>),
    /// It waits, parked under this id.
    Parked(u32),
}

struct ReadyQueue(Mutex<Vec<u32>>);

struct LocalWaker {
    id: u32,
    ready: Arc<ReadyQueue>,
}

impl Wake for LocalWaker {
    fn wake(self: Arc<Self>) {
        self.ready.0.lock().push(self.id);
    }
}

struct Parked<T> {
    future: LocalBoxFuture<'static, T>,
    note: Option<u32>,
}

/// Futures polled only by the thread that owns them, parked between polls (see the module
/// documentation). Each task may carry one note (a number) recorded while it is polled: the
/// registrar notes the token of a failed callback's exception there.
pub struct LocalTasks<T> {
    parked: RefCell<HashMap<u32, Parked<T>>>,
    ready: Arc<ReadyQueue>,
    next_id: Cell<u32>,
    /// The note of the task being polled.
    note: Cell<Option<u32>>,
}

impl<T> Default for LocalTasks<T> {
    fn default() -> Self {
        LocalTasks {
            parked: RefCell::new(HashMap::new()),
            ready: Arc::new(ReadyQueue(Mutex::new(Vec::new()))),
            next_id: Cell::new(1),
            note: Cell::new(None),
        }
    }
}

impl<T: 'static> LocalTasks<T> {
    /// Records `note` for the task being polled (the latest note wins).
    pub fn note(&self, note: u32) {
        self.note.set(Some(note));
    }

    fn allocate_id(&self) -> u32 {
        let id = self.next_id.get();
        self.next_id.set(id.checked_add(1).unwrap_or(1));
        id
    }

    /// Polls `future` once, its note starting empty: its output and note if it completed, else
    /// the id under which it is parked. The future is never borrowed from the table while it
    /// runs, so it may start other tasks.
    pub fn start(&self, future: impl Future<Output = T> + 'static) -> Started<T> {
        let id = self.allocate_id();
        let mut task = Parked {
            future: Box::pin(future),
            note: None,
        };
        match self.poll(id, &mut task) {
            Some(output) => Started::Done(output, task.note),
            None => {
                self.parked.borrow_mut().insert(id, task);
                Started::Parked(id)
            }
        }
    }

    fn poll(&self, id: u32, task: &mut Parked<T>) -> Option<T> {
        let waker = Waker::from(Arc::new(LocalWaker {
            id,
            ready: self.ready.clone(),
        }));
        let mut context = Context::from_waker(&waker);
        let outer = self.note.replace(None);
        let polled = task.future.as_mut().poll(&mut context);
        if let Some(note) = self.note.replace(outer) {
            task.note = Some(note);
        }
        match polled {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        }
    }

    /// Polls every woken task until none is ready; `finished(id, output, note)` for each that
    /// completes.
    pub fn run_ready(&self, mut finished: impl FnMut(u32, T, Option<u32>)) {
        loop {
            let ready = std::mem::take(&mut *self.ready.0.lock());
            if ready.is_empty() {
                return;
            }
            for id in ready {
                let Some(mut task) = self.parked.borrow_mut().remove(&id) else {
                    continue;
                };
                match self.poll(id, &mut task) {
                    Some(output) => finished(id, output, task.note),
                    None => {
                        self.parked.borrow_mut().insert(id, task);
                    }
                }
            }
        }
    }

    /// The number of parked tasks.
    pub fn parked(&self) -> usize {
        self.parked.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;
    use std::rc::Rc;
    use std::sync::mpsc;
    use std::thread;

    #[test]
    fn an_inline_task_finishes_on_the_thread_that_wakes_it() {
        let (reply, answer) = oneshot::channel::<u32>();
        let (done_sender, done) = mpsc::channel();
        spawn(
            async move { answer.await.unwrap_or(0) + 1 },
            Polling::Inline,
            move |value| {
                done_sender.send((value, thread::current().id())).unwrap();
            },
        )
        .unwrap();
        assert!(done.try_recv().is_err(), "pending until the reply");
        let replier = thread::spawn(move || {
            reply.send(41).unwrap();
            thread::current().id()
        });
        let replier_id = replier.join().unwrap();
        let (value, polled_on) = done.recv().unwrap();
        assert_eq!(value, 42);
        assert_eq!(
            polled_on, replier_id,
            "the replying thread completed the task"
        );
    }

    #[test]
    fn an_inline_task_that_is_ready_completes_during_spawn() {
        let (done_sender, done) = mpsc::channel();
        spawn(async { 7 }, Polling::Inline, move |value| {
            done_sender.send(value).unwrap()
        })
        .unwrap();
        assert_eq!(done.try_recv(), Ok(7));
    }

    #[test]
    fn a_pool_task_never_runs_on_the_spawning_or_waking_thread() {
        let (reply, answer) = oneshot::channel::<()>();
        let (done_sender, done) = mpsc::channel();
        let spawner = thread::current().id();
        spawn(
            async move {
                let first = thread::current().id();
                answer.await.unwrap();
                (first, thread::current().id())
            },
            Polling::Pool,
            move |ids| done_sender.send(ids).unwrap(),
        )
        .unwrap();
        let replier = thread::spawn(move || {
            reply.send(()).unwrap();
            thread::current().id()
        })
        .join()
        .unwrap();
        let (first, last) = done.recv().unwrap();
        for polled in [first, last] {
            assert_ne!(polled, spawner);
            assert_ne!(polled, replier);
        }
    }

    #[test]
    fn a_task_woken_while_polled_is_polled_again() {
        /// Wakes itself during its first poll, completes on the second.
        struct SelfWaking(u32);
        impl Future for SelfWaking {
            type Output = u32;
            fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
                self.0 += 1;
                if self.0 < 2 {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                } else {
                    Poll::Ready(self.0)
                }
            }
        }
        let (done_sender, done) = mpsc::channel();
        spawn(SelfWaking(0), Polling::Inline, move |polls| {
            done_sender.send(polls).unwrap()
        })
        .unwrap();
        assert_eq!(done.try_recv(), Ok(2));
    }

    #[test]
    fn local_tasks_park_until_woken_and_keep_their_notes() {
        let tasks = Rc::new(LocalTasks::<u32>::default());
        assert_eq!(tasks.start(async { 5 }), Started::Done(5, None));
        let (first_sender, first) = oneshot::channel::<u32>();
        let (second_sender, second) = oneshot::channel::<u32>();
        let noting = tasks.clone();
        let Started::Parked(first_id) = tasks.start(async move {
            let value = first.await.unwrap_or(0);
            noting.note(value);
            value
        }) else {
            panic!("the first task waits");
        };
        let Started::Parked(second_id) = tasks.start(async move { second.await.unwrap_or(0) })
        else {
            panic!("the second task waits");
        };
        assert_eq!(tasks.parked(), 2);
        let mut finished = Vec::new();
        tasks.run_ready(|id, value, note| finished.push((id, value, note)));
        assert!(finished.is_empty(), "nothing was woken");
        // A wake from another thread only queues the task.
        thread::spawn(move || first_sender.send(3).unwrap())
            .join()
            .unwrap();
        assert_eq!(tasks.parked(), 2);
        tasks.run_ready(|id, value, note| finished.push((id, value, note)));
        assert_eq!(finished, [(first_id, 3, Some(3))]);
        second_sender.send(4).unwrap();
        tasks.run_ready(|id, value, note| finished.push((id, value, note)));
        assert_eq!(
            finished[1],
            (second_id, 4, None),
            "notes belong to their task"
        );
        assert_eq!(tasks.parked(), 0);
    }
}
