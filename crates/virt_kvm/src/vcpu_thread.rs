//! A vCPU with a thread of its own for runs, so that a caller (the JavaScript thread) never
//! waits for the guest.
//!
//! [`VcpuThread::run`] hands the run to the thread and returns at once; the exit comes back
//! through a callback called on that thread. Only one run is in flight: a second `run`, and
//! register access, while one is queued or running fail with [`KvmError::VcpuBusy`] at once
//! instead of waiting behind it. Closing (or dropping) cancels a running guest; the thread ends
//! after the run in flight.

use crate::KvmError;
use crate::Vcpu;
use crate::VcpuExit;
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
    runs: Option<mpsc::Sender<RunRequest>>,
    /// Set from `run` until its exit is known.
    running: Arc<AtomicBool>,
}

impl VcpuThread {
    /// Starts the run thread of `vcpu`.
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
        Ok(VcpuThread {
            vcpu,
            runs: Some(sender),
            running: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The vCPU, for register access and completing reads: `Err(None)` once closed,
    /// `Err(Some(VcpuBusy))` while a run is in flight.
    pub fn idle(&self) -> Result<&Vcpu, RunRefused> {
        if self.runs.is_none() {
            return Err(RunRefused::Closed);
        }
        if self.running.load(Ordering::SeqCst) {
            return Err(RunRefused::Busy(KvmError::VcpuBusy));
        }
        Ok(&self.vcpu)
    }

    /// The vCPU's id.
    pub fn id(&self) -> u32 {
        self.vcpu.id()
    }

    /// Runs until the next exit (or `timeout`) on the run thread; `done` gets the outcome there,
    /// after the vCPU became idle again (so `done` may start the next run).
    pub fn run(
        &self,
        timeout: Option<Duration>,
        done: impl FnOnce(Result<VcpuExit, KvmError>) + Send + 'static,
    ) -> Result<(), RunRefused> {
        let runs = self.runs.as_ref().ok_or(RunRefused::Closed)?;
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(RunRefused::Busy(KvmError::VcpuBusy));
        }
        let running = self.running.clone();
        let sent = runs.send(Box::new(move |vcpu: &Vcpu| {
            let outcome = vcpu.run(timeout);
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

    /// Cancels a running guest and releases the thread (it ends after the run in flight).
    pub fn close(&mut self) {
        self.vcpu.cancel();
        self.runs = None;
    }
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        self.vcpu.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Guest;
    use crate::CancelReason;
    use crate::VcpuOptions;

    #[test]
    fn runs_happen_on_the_thread_and_a_second_run_is_busy() {
        let Some(guest) = Guest::new(
            "runs_happen_on_the_thread_and_a_second_run_is_busy",
            VcpuOptions::default(),
        ) else {
            return;
        };
        guest.start_at(crate::test_support::at::SPIN, |_| {});
        // The partition and the low slot's memory stay alive while the thread runs the vCPU.
        let Guest {
            partition: _partition,
            low: _low,
            vcpu,
        } = guest;
        let mut thread = VcpuThread::start(vcpu).unwrap();
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
}
