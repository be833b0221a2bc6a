//! The source side of a live migration: [`GuestMemoryManager::migrate`].
//!
//! One thread per migration ("migrate-source") runs the rounds. It reads pages from the RAM
//! backing (`pread` from the RAM object, or a fault-safe copy of private RAM), checksums them
//! into extent frames, and hands the frames to a writer thread through a short bounded queue
//! (buffers are recycled); a receiver thread reads the destination's acknowledgements and
//! errors. Dirty tracking runs on the manager thread as usual; the migration has its own page
//! set there, so the caller's `take()`s and incremental snapshots are unaffected.
//!
//! The decision after each pre-copy round: the pages dirtied since the previous take are the
//! remainder; at the bandwidth measured so far (stream bytes of all pre-copy rounds over the
//! time from each round's first frame to its acknowledgement) it would take `predicted`
//! milliseconds. When that fits the budget the guest is paused; when the rounds have run out
//! it is paused anyway (not converged), unless the caller's `max_downtime_ms` is binding,
//! which fails the migration before pausing.

use super::report;
use super::transport::MigrationTransport;
use super::transport::StreamFailure;
use super::wire;
use super::wire::FrameType;
use super::Cancel;
use super::MigrateOptions;
use super::MigrationError;
use super::MigrationInfo;
use super::MigrationPhase;
use super::MigrationProgress;
use super::Side;
use super::DEFAULT_DOWNTIME_BUDGET_MS;
use super::DEFAULT_MAX_ROUNDS;
use super::MAX_ROUNDS_LIMIT;
use crate::dirty::MigrationOp;
use crate::dirty::MigrationTracking;
use crate::dirty::PageSet;
use crate::memory_manager::region_actor::RegionManagerClient;
use crate::snapshot::format;
use crate::snapshot::format::Extent;
use crate::snapshot::format::ExtentKind;
use crate::snapshot::format::Hex;
use crate::snapshot::writer::is_zero;
use crate::snapshot::writer::items;
use crate::snapshot::writer::ManagerView;
use crate::DirtyTrackingError;
use crate::GuestMemoryManager;
use crate::RegionManagerError;
use futures::executor::block_on;
use std::future::Future;
use std::io;
use std::io::Write;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

const PAGE: usize = wire::PAGE;
const PAGE_SIZE: u64 = format::PAGE_SIZE;
/// How often a wait for the caller's pause checks whether the manager stopped.
const GONE_POLL: Duration = Duration::from_millis(20);
/// Frames queued for the writer thread at most (each up to about 1 MiB).
const QUEUED_FRAMES: usize = 4;
/// Frame buffers in circulation at most.
const POOLED_BUFFERS: usize = QUEUED_FRAMES + 3;

impl GuestMemoryManager {
    /// Migrates this manager's guest memory to a destination over `transport` while the guest
    /// runs, pausing it (with `options.pause`) for the final round. See the `migration`
    /// module and `docs/migration.md`.
    ///
    /// On success the transport is left open, positioned after the migration's last frame.
    /// On failure the guest memory is untouched, dirty tracking is as it was before (stopped
    /// unless it was on), the guest is paused if `pause` was called (resume it), and the
    /// transport may have been shut down. Dropping the future cancels the migration.
    ///
    /// Errors: [`MigrationError::Aborted`], [`MigrationError::Protocol`],
    /// [`MigrationError::Downtime`], [`MigrationError::Pause`], [`MigrationError::InProgress`],
    /// [`MigrationError::TrackingStopped`], [`MigrationError::InvalidArgument`],
    /// [`MigrationError::Io`], [`MigrationError::DirtyTracking`].
    pub fn migrate(
        &self,
        transport: MigrationTransport,
        options: MigrateOptions,
    ) -> impl Future<Output = Result<MigrationInfo, MigrationError>> + Send + 'static {
        let view = self.snapshot_view();
        let regions = self.regions.clone();
        let lazy_restore = self.lazy_restore.lock().clone();
        let cancel = Cancel::new(transport.abort.clone());
        {
            let mut migrations = self.migrations.lock();
            migrations.retain(|migration| migration.strong_count() > 0);
            migrations.push(Arc::downgrade(&cancel));
        }
        let limits = Limits::of(&options);
        async move {
            let limits = limits?;
            if let Some(lazy_restore) = lazy_restore {
                // RAM still being restored lazily is not all readable yet: finish first.
                lazy_restore.finished().await?;
            }
            let thread_cancel = cancel.clone();
            super::on_migration_thread("migrate-source", cancel, move || {
                run(view, regions, transport, options, limits, thread_cancel)
            })
            .await
        }
    }
}

/// The checked round and downtime options.
#[derive(Debug, Copy, Clone)]
struct Limits {
    max_rounds: u32,
    budget_ms: f64,
    binding: Option<u64>,
}

impl Limits {
    fn of(options: &MigrateOptions) -> Result<Self, MigrationError> {
        let max_rounds = options.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS);
        if !(1..=MAX_ROUNDS_LIMIT).contains(&max_rounds) {
            return Err(MigrationError::InvalidArgument {
                what: format!(
                    "maxRounds {max_rounds} is not between 1 and {MAX_ROUNDS_LIMIT}: pass the number of rounds to send while the guest runs"
                ),
            });
        }
        const MAX_BUDGET_MS: u64 = 24 * 3600 * 1000;
        if let Some(ms) = options.max_downtime_ms.filter(|&ms| ms > MAX_BUDGET_MS) {
            return Err(MigrationError::InvalidArgument {
                what: format!("maxDowntimeMs {ms} is over a day ({MAX_BUDGET_MS})"),
            });
        }
        let budget = options
            .max_downtime_ms
            .unwrap_or(DEFAULT_DOWNTIME_BUDGET_MS);
        Ok(Self {
            max_rounds,
            budget_ms: Duration::from_millis(budget).as_secs_f64() * 1000.0,
            binding: options.max_downtime_ms,
        })
    }
}

/// The whole migration on its thread: tracking begins, the rounds run, tracking ends (also
/// on failure, and before the caller learns the result).
fn run(
    view: ManagerView,
    regions: RegionManagerClient,
    transport: MigrationTransport,
    options: MigrateOptions,
    limits: Limits,
    cancel: Arc<Cancel>,
) -> Result<MigrationInfo, MigrationError> {
    let begun = block_on(regions.migration(MigrationOp::Begin, true))?;
    let initial_regions = match begun.tracking {
        MigrationTracking::Begun => begun.regions.unwrap_or_default(),
        MigrationTracking::Busy => return Err(MigrationError::InProgress),
        other => unreachable!("a migration's begin answered {other:?}"),
    };
    // Should this thread unwind, tracking still ends (without waiting).
    struct EndOnUnwind(Option<RegionManagerClient>);
    impl Drop for EndOnUnwind {
        fn drop(&mut self) {
            if let Some(regions) = self.0.take() {
                regions.migration_end_no_wait();
            }
        }
    }
    let mut end_on_unwind = EndOnUnwind(Some(regions.clone()));
    let mut source = Source {
        view,
        regions: regions.clone(),
        link: Link::start(transport),
        cancel,
        progress: options.progress.clone(),
        phase: MigrationPhase::Handshake,
        totals: wire::RoundTotals::default(),
        zero_crc: crc32c::crc32c(&[0u8; PAGE]),
    };
    // A thread that could not start (EAGAIN: out of threads) fails the migration at once: the
    // source would otherwise wait for answers no receiver thread reads.
    let result = match source.link.start_error.take() {
        Some(error) => Err(MigrationError::Io {
            op: "start the migration's stream threads".into(),
            source: error,
        }),
        None => source.migrate(initial_regions, options.pause, limits),
    };
    let result = match result {
        Ok(info) => {
            // The destination acknowledged everything: the threads have nothing left to do.
            source.link.finish();
            Ok(info)
        }
        Err(error) => {
            let error = source.fail(error);
            // The transport was aborted because the manager is being closed.
            if source.cancel.is_manager_closed() {
                Err(DirtyTrackingError::Manager(RegionManagerError::ManagerGone).into())
            } else {
                Err(error)
            }
        }
    };
    end_on_unwind.0 = None;
    // Once the destination completed, the migration succeeded whatever ending tracking
    // reports (a partition that cannot stop logging): the guest now runs there.
    let ended = block_on(regions.migration(MigrationOp::End, false));
    match (result, ended) {
        (Err(error), _) => Err(error),
        (Ok(info), _) => Ok(info),
    }
}

struct Source {
    view: ManagerView,
    regions: RegionManagerClient,
    link: Link,
    cancel: Arc<Cancel>,
    progress: Option<MigrationProgress>,
    phase: MigrationPhase,
    /// Totals of every extent sent (for the final manifest).
    totals: wire::RoundTotals,
    zero_crc: u32,
}

impl Source {
    fn migrate(
        &mut self,
        initial_regions: Vec<crate::region_manager::RegionInspect>,
        pause: super::Pause,
        limits: Limits,
    ) -> Result<MigrationInfo, MigrationError> {
        let id = crate::snapshot::new_id();
        self.handshake()?;
        let mut manifest = self.view.manifest_skeleton(&id, &initial_regions);
        // On the stream the manifest describes no files: an empty index.
        manifest.index.crc32c = Some(0);
        self.send(wire::frame(
            FrameType::Manifest,
            &format::encode_manifest(&manifest),
        ))?;
        self.phase = MigrationPhase::Rounds;

        let mut runs = self
            .view
            .source
            .data_runs(&self.view.specs)
            .map_err(|source| MigrationError::Io {
                op: "find the guest RAM pages that hold data".into(),
                source,
            })?;
        let mut bytes_per_round = Vec::new();
        let mut measured_bytes = 0u64;
        let mut measured_time = Duration::ZERO;
        let mut round = 0u32;
        let (remainder, converged, bandwidth) = loop {
            let started = Instant::now();
            let stream_before = self.link.stream_bytes;
            let sent = self.send_round(round, false, &runs, None)?;
            self.wait_for(FrameType::RoundAck, round)?;
            measured_time += started.elapsed();
            measured_bytes += self.link.stream_bytes - stream_before;
            bytes_per_round.push(sent);
            round += 1;

            let dirty = self.take(false)?.0;
            let remainder = page_count(&dirty) * PAGE_SIZE;
            let bandwidth = measured_bytes as f64 / measured_time.as_secs_f64().max(1e-9);
            let predicted_ms = if remainder == 0 {
                0.0
            } else {
                remainder as f64 / bandwidth * 1000.0
            };
            if predicted_ms <= limits.budget_ms {
                break (dirty, true, bandwidth);
            }
            if round >= limits.max_rounds {
                if let Some(max_downtime_ms) = limits.binding {
                    return Err(MigrationError::Downtime {
                        rounds: round,
                        remainder_bytes: remainder,
                        bandwidth_bytes_per_sec: bandwidth,
                        predicted_ms,
                        max_downtime_ms,
                    });
                }
                break (dirty, false, bandwidth);
            }
            runs = self.view.dirty_runs(&dirty);
        };

        self.phase = MigrationPhase::Final;
        let payload = self.wait_for_pause(pause())?;
        let paused = Instant::now();
        if let Some(payload) = &payload {
            if payload.len() > wire::MAX_PAYLOAD {
                return Err(MigrationError::InvalidArgument {
                    what: format!(
                        "the payload pause returned is {} bytes, over the {}-byte limit",
                        payload.len(),
                        wire::MAX_PAYLOAD
                    ),
                });
            }
        }
        let (mut last, regions) = self.take(true)?;
        last.extend(&remainder);
        let runs = self.view.dirty_runs(&last);
        let sent = self.send_round(round, true, &runs, payload.as_deref())?;
        bytes_per_round.push(sent);
        let mut manifest = self
            .view
            .manifest_skeleton(&id, &regions.unwrap_or_default());
        manifest.extents = self.totals.extents;
        manifest.data_pages = self.totals.data_pages;
        manifest.zero_pages = self.totals.zero_pages;
        manifest.memory.size = Hex(self.totals.data_pages * PAGE_SIZE);
        manifest.index.crc32c = Some(0);
        self.send(wire::frame(
            FrameType::FinalManifest,
            &format::encode_manifest(&manifest),
        ))?;
        self.wait_for_complete(round + 1)?;
        let downtime = paused.elapsed();
        Ok(MigrationInfo {
            rounds: round + 1,
            bytes: bytes_per_round.iter().sum(),
            bytes_per_round,
            stream_bytes: self.link.stream_bytes,
            downtime_ms: downtime.as_secs_f64() * 1000.0,
            converged,
            bandwidth_bytes_per_sec: bandwidth,
        })
    }

    fn handshake(&mut self) -> Result<(), MigrationError> {
        self.send(wire::Hello::ours().encode(FrameType::Hello))?;
        let (frame_type, payload, offset) = self.next_frame()?;
        let bad = |what: String| MigrationError::Protocol {
            what,
            offset,
            detected_by: Side::Source,
        };
        if frame_type != FrameType::HelloAck {
            return Err(bad(format!(
                "a {frame_type:?} frame instead of the handshake's answer"
            )));
        }
        let hello = wire::Hello::decode(&payload).map_err(bad)?;
        match hello.mismatch() {
            Some(what) => Err(bad(what)),
            None => Ok(()),
        }
    }

    /// Harvests the migration's dirty pages (and the regions at the same instant).
    /// Waits for the caller's `pause` to resolve, unless the manager stops meanwhile (closed or
    /// dropped: the migration cannot finish, and a pause that never resolves would otherwise
    /// hold this thread, and whoever awaits the migration, for ever) or the migration is
    /// cancelled.
    fn wait_for_pause(
        &self,
        mut pause: super::PauseFuture,
    ) -> Result<Option<Vec<u8>>, MigrationError> {
        /// Wakes the migration's thread when the pause future can make progress.
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = std::task::Context::from_waker(&waker);
        loop {
            if let std::task::Poll::Ready(answer) = pause.as_mut().poll(&mut context) {
                return answer.map_err(|source| MigrationError::Pause { source });
            }
            if self.cancel.is_cancelled() {
                return Err(MigrationError::cancelled(self.phase));
            }
            if self.regions.is_gone() {
                return Err(DirtyTrackingError::Manager(RegionManagerError::ManagerGone).into());
            }
            std::thread::park_timeout(GONE_POLL);
        }
    }

    fn take(
        &mut self,
        with_regions: bool,
    ) -> Result<(PageSet, Option<Vec<crate::region_manager::RegionInspect>>), MigrationError> {
        let step = block_on(self.regions.migration(MigrationOp::Take, with_regions))?;
        match step.tracking {
            MigrationTracking::Pages(pages) => Ok((pages, step.regions)),
            _ => Err(MigrationError::TrackingStopped),
        }
    }

    /// Sends one round: its header, the extents of `runs` (backing offsets), the payload and
    /// its end; returns the page bytes sent. Round 0 skips pages that read as zeros (the
    /// destination's RAM starts zeroed); later rounds send them as zero extents.
    fn send_round(
        &mut self,
        round: u32,
        last: bool,
        runs: &[(u64, u64)],
        payload: Option<&[u8]>,
    ) -> Result<u64, MigrationError> {
        self.send(wire::RoundBegin { round, last }.encode())?;
        let mut totals = wire::RoundTotals {
            round,
            ..wire::RoundTotals::default()
        };
        report(self.progress.as_ref(), round, 0);
        for (start, end) in items(runs, &self.view.specs) {
            self.check_peer()?;
            self.send_item(start, end, round > 0, &mut totals)?;
            report(self.progress.as_ref(), round, totals.data_pages * PAGE_SIZE);
        }
        if let Some(payload) = payload {
            self.send(wire::frame(FrameType::UserPayload, payload))?;
        }
        self.send(totals.encode())?;
        self.totals.extents += totals.extents;
        self.totals.data_pages += totals.data_pages;
        self.totals.zero_pages += totals.zero_pages;
        Ok(totals.data_pages * PAGE_SIZE)
    }

    /// Reads the pages `[start, end)` of the backing and sends them as extents.
    fn send_item(
        &mut self,
        start: u64,
        end: u64,
        zero_extents: bool,
        totals: &mut wire::RoundTotals,
    ) -> Result<(), MigrationError> {
        let pages = usize::try_from((end - start) / PAGE_SIZE).unwrap_or(0);
        let (_, pages_at, len) = wire::extent_frame_layout(ExtentKind::Data, pages);
        let mut buffer = self.link.buffer(len);
        let data = &mut buffer[pages_at..pages_at + pages * PAGE];
        self.view
            .source
            .read(start, data)
            .map_err(|source| MigrationError::Io {
                op: format!("read guest RAM at backing offset {start:#x}"),
                source,
            })?;
        let mut crcs = Vec::with_capacity(pages);
        let mut zero = Vec::with_capacity(pages);
        for page in data.chunks_exact(PAGE) {
            let crc = crc32c::crc32c(page);
            zero.push(crc == self.zero_crc && is_zero(page));
            crcs.push(crc);
        }
        let extent = |offset: usize, count: usize, kind| Extent {
            ram_offset: start + offset as u64 * PAGE_SIZE,
            pages: u32::try_from(count).unwrap_or(u32::MAX),
            kind,
            data_offset: 0,
            first_crc: 0,
        };
        if !zero.contains(&true) {
            wire::seal_extent_frame(
                &mut buffer[..len],
                &extent(0, pages, ExtentKind::Data),
                &crcs,
            );
            totals.extents += 1;
            totals.data_pages += pages as u64;
            return self.send_frame(buffer, len);
        }
        // Split at the pages that read as zeros.
        let mut position = 0;
        while position < pages {
            let is_zero_run = zero[position];
            let run = zero[position..]
                .iter()
                .take_while(|&&flag| flag == is_zero_run)
                .count();
            if is_zero_run {
                if zero_extents {
                    let (_, _, len) = wire::extent_frame_layout(ExtentKind::Zero, run);
                    let mut frame = vec![0u8; len];
                    wire::seal_extent_frame(
                        &mut frame,
                        &extent(position, run, ExtentKind::Zero),
                        &[],
                    );
                    totals.extents += 1;
                    totals.zero_pages += run as u64;
                    self.send_frame(frame, len)?;
                }
            } else {
                let (_, run_pages_at, run_len) = wire::extent_frame_layout(ExtentKind::Data, run);
                let mut frame = self.link.buffer(run_len);
                let from = pages_at + position * PAGE;
                frame[run_pages_at..run_pages_at + run * PAGE]
                    .copy_from_slice(&buffer[from..from + run * PAGE]);
                wire::seal_extent_frame(
                    &mut frame[..run_len],
                    &extent(position, run, ExtentKind::Data),
                    &crcs[position..position + run],
                );
                totals.extents += 1;
                totals.data_pages += run as u64;
                self.send_frame(frame, run_len)?;
            }
            position += run;
        }
        self.link.recycle(buffer);
        Ok(())
    }

    fn send(&mut self, frame: Vec<u8>) -> Result<(), MigrationError> {
        let len = frame.len();
        self.send_frame(frame, len)
    }

    fn send_frame(&mut self, buffer: Vec<u8>, len: usize) -> Result<(), MigrationError> {
        if self.cancel.is_cancelled() {
            return Err(self.cancelled());
        }
        if let Err(cause) = self.link.send(buffer, len) {
            // The writer stopped: prefer what the destination said, if it said something.
            self.check_peer()?;
            return Err(MigrationError::aborted(self.phase, cause));
        }
        Ok(())
    }

    fn cancelled(&self) -> MigrationError {
        MigrationError::cancelled(self.phase)
    }

    /// Fails if the destination reported an error or the link went down (without waiting).
    fn check_peer(&mut self) -> Result<(), MigrationError> {
        if self.cancel.is_cancelled() {
            return Err(self.cancelled());
        }
        match self.link.events.try_recv() {
            Ok(event) => Err(self.unexpected(event)),
            Err(mpsc::TryRecvError::Empty) => Ok(()),
            Err(mpsc::TryRecvError::Disconnected) => Err(MigrationError::aborted(
                self.phase,
                io::Error::new(io::ErrorKind::BrokenPipe, "the stream's reader stopped"),
            )),
        }
    }

    /// The destination's next frame.
    fn next_frame(&mut self) -> Result<(FrameType, Vec<u8>, u64), MigrationError> {
        match self.link.events.recv() {
            Ok(Event::Frame(FrameType::Error, payload, offset)) => {
                Err(self.peer_error(&payload, offset))
            }
            Ok(Event::Frame(frame_type, payload, offset)) => Ok((frame_type, payload, offset)),
            Ok(event) => Err(self.unexpected(event)),
            Err(_) => Err(MigrationError::aborted(
                self.phase,
                io::Error::new(io::ErrorKind::BrokenPipe, "the stream's reader stopped"),
            )),
        }
    }

    /// Waits for the destination's acknowledgement `expected` of `round`.
    fn wait_for(&mut self, expected: FrameType, round: u32) -> Result<(), MigrationError> {
        let (frame_type, payload, offset) = self.next_frame()?;
        let bad = |what: String| MigrationError::Protocol {
            what,
            offset,
            detected_by: Side::Source,
        };
        if frame_type != expected {
            return Err(bad(format!(
                "a {frame_type:?} frame while waiting for {expected:?} of round {round}"
            )));
        }
        let ack = wire::Ack::decode(&payload).map_err(bad)?;
        if ack.round != round {
            return Err(bad(format!(
                "{expected:?} of round {} while waiting for round {round}",
                ack.round
            )));
        }
        Ok(())
    }

    /// Waits for the destination's completion of `rounds` rounds. Its error frame means it did
    /// not complete (the phase stays `Final`); anything else but the completion leaves the
    /// outcome unknown (`Completing`: the destination may have completed).
    fn wait_for_complete(&mut self, rounds: u32) -> Result<(), MigrationError> {
        let unknown = |cause: io::Error| MigrationError::aborted(MigrationPhase::Completing, cause);
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        match self.link.events.recv() {
            Ok(Event::Frame(FrameType::Error, payload, offset)) => {
                Err(self.peer_error(&payload, offset))
            }
            Ok(Event::Frame(FrameType::Complete, payload, offset)) => {
                match wire::Ack::decode(&payload) {
                    Ok(ack) if ack.round == rounds => Ok(()),
                    Ok(ack) => Err(unknown(invalid(format!(
                        "the completion at stream offset {offset} counts {} rounds, not {rounds}",
                        ack.round
                    )))),
                    Err(what) => Err(unknown(invalid(format!(
                        "the completion at stream offset {offset}: {what}"
                    )))),
                }
            }
            Ok(Event::Frame(frame_type, _, offset)) => Err(unknown(invalid(format!(
                "a {frame_type:?} frame at stream offset {offset} instead of the completion"
            )))),
            Ok(Event::Bad(bad)) => Err(unknown(invalid(format!(
                "the answer at stream offset {} is damaged: {}",
                bad.offset, bad.what
            )))),
            Ok(Event::Closed) => Err(unknown(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the destination closed the stream before it acknowledged",
            ))),
            Ok(Event::Failed(cause)) => Err(unknown(cause)),
            Err(_) => Err(unknown(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream's reader stopped",
            ))),
        }
    }

    fn peer_error(&self, payload: &[u8], offset: u64) -> MigrationError {
        match wire::PeerError::decode(payload) {
            Ok(error) => super::peer_failed(Side::Source, self.phase, error),
            Err(what) => MigrationError::Protocol {
                what,
                offset,
                detected_by: Side::Source,
            },
        }
    }

    /// What an event other than the expected frame means.
    fn unexpected(&self, event: Event) -> MigrationError {
        match event {
            Event::Frame(FrameType::Error, payload, offset) => self.peer_error(&payload, offset),
            Event::Frame(frame_type, _, offset) => MigrationError::Protocol {
                what: format!("an unexpected {frame_type:?} frame from the destination"),
                offset,
                detected_by: Side::Source,
            },
            Event::Closed => MigrationError::aborted(
                self.phase,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the destination closed the stream",
                ),
            ),
            Event::Failed(cause) => MigrationError::aborted(self.phase, cause),
            Event::Bad(bad) => MigrationError::Protocol {
                what: bad.what,
                offset: bad.offset,
                detected_by: Side::Source,
            },
        }
    }

    /// Stops after `error`: tells the destination why (when the error is this side's own),
    /// waits for it to close, shuts the transport down and joins the threads.
    fn fail(&mut self, error: MigrationError) -> MigrationError {
        let (error, frame) = error.settle(Side::Source, self.phase, &self.cancel);
        let told = frame.is_some_and(|frame| {
            let len = frame.len();
            self.link.send(frame, len).is_ok()
        });
        self.link.close_writer();
        if told {
            // The destination closes when it reads the error; then the receiver ends.
            self.link.join_receiver();
        }
        self.cancel.abort();
        self.link.join_receiver();
        error
    }
}

fn page_count(pages: &PageSet) -> u64 {
    pages.runs().map(|(first, end)| end - first).sum()
}

/// What the receiver thread saw.
enum Event {
    Frame(FrameType, Vec<u8>, u64),
    Closed,
    Failed(io::Error),
    Bad(wire::BadFrame),
}

/// A frame queued for the writer thread: the buffer and the length to write.
struct OutFrame {
    buffer: Vec<u8>,
    len: usize,
}

/// The source's connection: a writer thread fed through a bounded queue (buffers recycled),
/// and a receiver thread reporting the destination's frames.
struct Link {
    sink: Option<mpsc::SyncSender<OutFrame>>,
    pool: mpsc::Receiver<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    allocated: usize,
    writer: Option<JoinHandle<io::Result<()>>>,
    writer_error: Arc<parking_lot::Mutex<Option<io::Error>>>,
    events: mpsc::Receiver<Event>,
    receiver: Option<JoinHandle<()>>,
    stream_bytes: u64,
    /// Why the writer or the receiver thread could not start (the migration then fails).
    start_error: Option<io::Error>,
}

/// The size of a frame buffer: a 256-page data extent frame.
fn buffer_len() -> usize {
    let pages = usize::try_from(crate::snapshot::writer::ITEM_PAGES).unwrap_or(256);
    wire::extent_frame_layout(ExtentKind::Data, pages).2
}

impl Link {
    fn start(transport: MigrationTransport) -> Self {
        let MigrationTransport { reader, writer, .. } = transport;
        let (sink, frames) = mpsc::sync_channel::<OutFrame>(QUEUED_FRAMES);
        let (pool_sender, pool) = mpsc::channel();
        let writer_error = Arc::new(parking_lot::Mutex::new(None));
        let (event_sender, events) = mpsc::channel();
        let writer = {
            let writer_error = writer_error.clone();
            // A failed write also wakes the source where it waits for the destination: the
            // stream's reading direction may stay open (a channel transport's owner reports
            // each direction on its own).
            let writer_events = event_sender.clone();
            let mut writer = writer;
            super::spawn_named("migrate-writer", move || {
                let full = buffer_len();
                for frame in frames {
                    if let Err(error) = writer.write_all(&frame.buffer[..frame.len]) {
                        *writer_error.lock() = Some(StreamFailure::duplicate(&error));
                        let _ = writer_events.send(Event::Failed(StreamFailure::duplicate(&error)));
                        return Err(error);
                    }
                    if frame.buffer.len() >= full {
                        let _ = pool_sender.send(frame.buffer);
                    }
                }
                writer.flush()
            })
        };
        let receiver = super::spawn_named("migrate-receiver", move || {
            let mut frames = wire::FrameReader::new(reader);
            loop {
                let mut payload = Vec::new();
                let event = match frames.read_frame(&mut payload) {
                    Ok(frame) => {
                        payload.truncate(frame.len);
                        Event::Frame(frame.frame_type, payload, frame.offset)
                    }
                    Err(wire::ReadError::Closed) => Event::Closed,
                    Err(wire::ReadError::Io(error)) => Event::Failed(error),
                    Err(wire::ReadError::Bad(bad)) => Event::Bad(bad),
                };
                let last = !matches!(
                    &event,
                    Event::Frame(frame_type, _, _)
                        if *frame_type != FrameType::Complete && *frame_type != FrameType::Error
                );
                if event_sender.send(event).is_err() || last {
                    return;
                }
            }
        });
        let (writer, receiver, start_error) = match (writer, receiver) {
            (Ok(writer), Ok(receiver)) => (Some(writer), Some(receiver), None),
            (writer, receiver) => {
                let error = writer
                    .as_ref()
                    .err()
                    .or(receiver.as_ref().err())
                    .map(|error| match error.raw_os_error() {
                        Some(errno) => io::Error::from_raw_os_error(errno),
                        None => io::Error::new(error.kind(), error.to_string()),
                    });
                (writer.ok(), receiver.ok(), error)
            }
        };
        Self {
            start_error,
            sink: Some(sink),
            pool,
            spare: Vec::new(),
            allocated: 0,
            writer,
            writer_error,
            events,
            receiver,
            stream_bytes: 0,
        }
    }

    /// A frame buffer of at least `len` bytes (recycled when one is free).
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let full = buffer_len();
        if len > full {
            return vec![0; len];
        }
        self.spare.extend(self.pool.try_iter());
        if let Some(buffer) = self.spare.pop() {
            return buffer;
        }
        if self.allocated < POOLED_BUFFERS {
            self.allocated += 1;
            return vec![0; full];
        }
        // Wait for the writer to give one back (or allocate if it has stopped).
        self.pool.recv().unwrap_or_else(|_| vec![0; full])
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        if buffer.len() >= buffer_len() {
            self.spare.push(buffer);
        }
    }

    /// Queues a frame; fails with the writer's error once it has stopped.
    fn send(&mut self, buffer: Vec<u8>, len: usize) -> io::Result<()> {
        let sent = match &self.sink {
            Some(sink) => sink.send(OutFrame { buffer, len }).is_ok(),
            None => false,
        };
        if sent {
            self.stream_bytes += len as u64;
            return Ok(());
        }
        Err(self.writer_error.lock().take().unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the stream's writer stopped")
        }))
    }

    /// Lets the writer finish what is queued and joins it.
    fn close_writer(&mut self) -> Option<io::Error> {
        self.sink = None;
        let joined = self.writer.take().map(|writer| writer.join());
        match joined {
            Some(Ok(Err(error))) => Some(error),
            Some(Err(_)) => Some(io::Error::other("the stream's writer panicked")),
            _ => None,
        }
    }

    fn join_receiver(&mut self) {
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }

    /// After success: everything was written (the destination acknowledged it) and the
    /// receiver stopped after the acknowledgement; join both.
    fn finish(&mut self) {
        let _ = self.close_writer();
        self.join_receiver();
    }
}
