//! A vCPU with a thread of its own for runs, so that a caller (the JavaScript thread) never
//! waits for the guest.
//!
//! [`VcpuThread::run`] hands the run to the thread and returns at once; the exit comes back
//! through a callback called on that thread. Only one run is in flight: a second `run`, and
//! register access, while one is queued or running fail with [`KvmError::VcpuBusy`] at once
//! instead of waiting behind it. Closing the thread, the vCPU or its partition (or dropping the
//! thread) cancels a running guest; the vCPU's fd is released and the thread ends at once when
//! idle, else as the run in flight returns.

use crate::CancelReason;
use crate::KvmError;
use crate::Vcpu;
use crate::VcpuExit;
use parking_lot::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

type RunRequest = Box<dyn FnOnce(&Vcpu) + Send>;

/// Why [`VcpuThread::run`] did not start a run.
#[derive(Debug)]
pub enum RunRefused {
    /// The thread was closed.
    Closed,
    /// A run is queued or running (`KvmError::VcpuBusy`).
    Busy(KvmError),
}

/// A vCPU and its run thread.
pub struct VcpuThread {
    vcpu: Arc<Vcpu>,
    /// The thread's queue; dropped when the vCPU closes, which ends the thread.
    runs: Arc<Mutex<Option<mpsc::Sender<RunRequest>>>>,
    /// Set from `run` until its exit is known.
    running: Arc<AtomicBool>,
}

impl VcpuThread {
    /// Starts the run thread of `vcpu`. The thread ends when the vCPU is closed (by
    /// [`VcpuThread::close`], [`Vcpu::close`] or
    /// [`KvmPartition::close_vcpus`](crate::KvmPartition::close_vcpus)).
    pub fn start(vcpu: Vcpu) -> std::io::Result<Self> {
        let vcpu = Arc::new(vcpu);
        let (sender, receiver) = mpsc::channel::<RunRequest>();
        let runner = vcpu.clone();
        std::thread::Builder::new()
            .name(format!("membacking-vcpu-{}", vcpu.id()))
            .spawn(move || {
                while let Ok(request) = receiver.recv() {
                    request(&runner);
                }
            })?;
        let runs = Arc::new(Mutex::new(Some(sender)));
        let queue = runs.clone();
        vcpu.on_close(move || drop(queue.lock().take()));
        Ok(VcpuThread {
            vcpu,
            runs,
            running: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The vCPU, for register access and completing reads: `Err(None)` once closed,
    /// `Err(Some(VcpuBusy))` while a run is in flight.
    pub fn idle(&self) -> Result<&Vcpu, RunRefused> {
        if self.vcpu.is_closed() {
            return Err(RunRefused::Closed);
        }
        if self.running.load(Ordering::SeqCst) {
            return Err(RunRefused::Busy(KvmError::VcpuBusy));
        }
        Ok(&self.vcpu)
    }

    /// Whether the vCPU is closed (by [`VcpuThread::close`], [`Vcpu::close`] or its partition).
    pub fn is_closed(&self) -> bool {
        self.vcpu.is_closed()
    }

    /// The vCPU's id.
    pub fn id(&self) -> u32 {
        self.vcpu.id()
    }

    /// Runs until the next exit (or `timeout`) on the run thread; `done` gets the outcome there,
    /// after the vCPU became idle again (so `done` may start the next run). A run accepted here
    /// and closed (with the vCPU or its partition) before the thread started it is cancelled,
    /// as one closed while the guest runs is: the outcome does not depend on that timing.
    pub fn run(
        &self,
        timeout: Option<Duration>,
        done: impl FnOnce(Result<VcpuExit, KvmError>) + Send + 'static,
    ) -> Result<(), RunRefused> {
        let runs = self.runs.lock();
        let runs = runs.as_ref().ok_or(RunRefused::Closed)?;
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(RunRefused::Busy(KvmError::VcpuBusy));
        }
        let running = self.running.clone();
        let sent = runs.send(Box::new(move |vcpu: &Vcpu| {
            let outcome = match vcpu.run(timeout) {
                Err(KvmError::VcpuClosed) => Ok(VcpuExit::Cancelled(CancelReason::Cancel)),
                outcome => outcome,
            };
            running.store(false, Ordering::SeqCst);
            done(outcome);
        }));
        if sent.is_err() {
            self.running.store(false, Ordering::SeqCst);
            return Err(RunRefused::Closed);
        }
        Ok(())
    }

    /// Stops a running guest (its run settles with `Cancelled`), or the next run.
    pub fn cancel(&self) {
        self.vcpu.cancel();
    }

    /// Closes the vCPU ([`Vcpu::close`]): a running guest is cancelled; the fd is released
    /// and the thread ends at once when idle, else as the run in flight returns.
    pub fn close(&self) {
        self.vcpu.close();
    }
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        self.vcpu.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anon_memory::AnonMemory;
    use crate::test_support::Guest;
    use crate::KvmPartition;
    use crate::VcpuOptions;

    #[test]
    fn runs_happen_on_the_thread_and_a_second_run_is_busy() {
        let Some((_partition, _low, thread)) =
            spinning_thread("runs_happen_on_the_thread_and_a_second_run_is_busy")
        else {
            return;
        };
        let (sender, receiver) = mpsc::channel();
        let caller = std::thread::current().id();
        thread
            .run(None, move |outcome| {
                sender.send((outcome, std::thread::current().id())).unwrap();
            })
            .unwrap();
        assert!(matches!(
            thread.run(None, |_| {}),
            Err(RunRefused::Busy(KvmError::VcpuBusy))
        ));
        assert!(matches!(thread.idle(), Err(RunRefused::Busy(_))));
        thread.cancel();
        let (outcome, ran_on) = receiver.recv().unwrap();
        assert!(matches!(
            outcome,
            Ok(VcpuExit::Cancelled(CancelReason::Cancel))
        ));
        assert_ne!(ran_on, caller, "the run happened on the vCPU's thread");
        assert!(thread.idle().is_ok(), "idle again once the exit is known");
        thread.close();
        assert!(matches!(thread.run(None, |_| {}), Err(RunRefused::Closed)));
        assert!(matches!(thread.idle(), Err(RunRefused::Closed)));
    }

    /// The run thread of a new guest's vCPU, set to spin, with what keeps the guest's memory
    /// alive while it runs (the partition and the low slot); `None` where KVM cannot run it.
    fn spinning_thread(test: &str) -> Option<(KvmPartition, AnonMemory, VcpuThread)> {
        let guest = Guest::new(test, VcpuOptions::default())?;
        guest.start_at(crate::test_support::at::SPIN, |_| {});
        let Guest {
            partition,
            low,
            vcpu,
        } = guest;
        Some((partition, low, VcpuThread::start(vcpu).unwrap()))
    }

    /// Waits up to 10 s for `done` (threads take a moment to end).
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the run thread has ended (it held the only other reference to the vCPU).
    fn thread_ended(thread: &VcpuThread) -> bool {
        Arc::strong_count(&thread.vcpu) == 1
    }

    fn assert_closed(thread: &VcpuThread) {
        assert!(matches!(thread.run(None, |_| {}), Err(RunRefused::Closed)));
        assert!(matches!(thread.idle(), Err(RunRefused::Closed)));
        assert!(matches!(
            thread.vcpu.get_registers(),
            Err(KvmError::VcpuClosed)
        ));
        assert!(matches!(thread.vcpu.run(None), Err(KvmError::VcpuClosed)));
    }

    #[test]
    fn closing_an_idle_thread_releases_the_fd_at_once_and_ends_the_thread() {
        let Some(guest) = Guest::new(
            "closing_an_idle_thread_releases_the_fd_at_once_and_ends_the_thread",
            VcpuOptions::real(),
        ) else {
            return;
        };
        let Guest {
            partition: _partition,
            low: _low,
            vcpu,
        } = guest;
        let thread = VcpuThread::start(vcpu).unwrap();
        assert!(thread.idle().is_ok());
        assert_eq!(
            Arc::strong_count(&thread.vcpu),
            2,
            "the thread holds the vCPU"
        );
        let shared = thread.vcpu.shared().clone();
        assert!(!shared.fd_released());
        thread.close();
        assert!(shared.fd_released(), "the fd is released by close itself");
        assert_closed(&thread);
        wait_for("the run thread ends", || thread_ended(&thread));
        thread.close(); // idempotent
    }

    #[test]
    fn closing_during_a_run_cancels_it_and_releases_the_fd_as_it_returns() {
        let Some((_partition, _low, thread)) =
            spinning_thread("closing_during_a_run_cancels_it_and_releases_the_fd_as_it_returns")
        else {
            return;
        };
        let shared = thread.vcpu.shared().clone();
        let (sender, receiver) = mpsc::channel();
        thread
            .run(None, move |outcome| sender.send(outcome).unwrap())
            .unwrap();
        wait_for("the guest runs", || thread.vcpu.shared().in_run());
        thread.close();
        let outcome = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(
            outcome,
            Ok(VcpuExit::Cancelled(CancelReason::Cancel))
        ));
        wait_for("the fd is released as the run returns", || {
            shared.fd_released()
        });
        assert_closed(&thread);
        wait_for("the run thread ends", || thread_ended(&thread));
    }

    #[test]
    fn a_run_closed_before_the_thread_started_it_is_cancelled_not_refused() {
        let Some((partition, _low, thread)) =
            spinning_thread("a_run_closed_before_the_thread_started_it_is_cancelled_not_refused")
        else {
            return;
        };
        // Hold the run thread with a request of its own, so the run below stays queued.
        let (release, held) = mpsc::channel::<()>();
        let (started, thread_busy) = mpsc::channel::<()>();
        thread
            .runs
            .lock()
            .as_ref()
            .unwrap()
            .send(Box::new(move |_: &Vcpu| {
                started.send(()).unwrap();
                held.recv().unwrap();
            }))
            .unwrap();
        thread_busy.recv().unwrap();
        let (sender, receiver) = mpsc::channel();
        thread
            .run(None, move |outcome| sender.send(outcome).unwrap())
            .unwrap();
        partition.close_vcpus();
        release.send(()).unwrap();
        let outcome = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(outcome, Ok(VcpuExit::Cancelled(CancelReason::Cancel))),
            "{outcome:?}"
        );
        assert_closed(&thread);
    }

    #[test]
    fn closing_the_partitions_vcpus_releases_idle_and_running_ones_and_ends_their_threads() {
        let Some((partition, _low, running)) = spinning_thread(
            "closing_the_partitions_vcpus_releases_idle_and_running_ones_and_ends_their_threads",
        ) else {
            return;
        };
        let no_memory = |_: u64, _: &[u8]| -> Result<(), virt::Error> { Ok(()) };
        let idle = partition
            .create_vcpu(&VcpuOptions::real(), &no_memory)
            .unwrap();
        let idle = VcpuThread::start(idle).unwrap();
        let (sender, receiver) = mpsc::channel();
        running
            .run(None, move |outcome| sender.send(outcome).unwrap())
            .unwrap();
        wait_for("the guest runs", || running.vcpu.shared().in_run());
        let shared = [running.vcpu.shared().clone(), idle.vcpu.shared().clone()];
        assert!(!idle.is_closed() && !running.is_closed());
        partition.close_vcpus();
        assert!(
            idle.is_closed() && running.is_closed(),
            "closed by the partition"
        );
        assert!(shared[1].fd_released(), "the idle vCPU's fd goes at once");
        let outcome = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(
            outcome,
            Ok(VcpuExit::Cancelled(CancelReason::Cancel))
        ));
        wait_for("the running vCPU's fd is released", || {
            shared[0].fd_released()
        });
        for thread in [&running, &idle] {
            assert_closed(thread);
            wait_for("the run thread ends", || thread_ended(thread));
        }
        // The partition counts the closed vCPUs (ids are not reused).
        assert_eq!(partition.inspect().vcpu_count, 2);
    }
}
