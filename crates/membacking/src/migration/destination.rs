//! The destination side of a live migration: [`GuestMemoryBuilder::migrate_from`].
//!
//! One thread per migration ("migrate-destination") reads the stream frame by frame, checks
//! its grammar and each page's CRC-32C; during the pre-copy rounds a second one
//! ("migrate-apply") writes the pages into the new manager's RAM (`pwrite` into the RAM
//! object, or a fault-safe copy into private RAM) in the order received, so a later round's
//! copy of a page wins. The final round, which the guest's downtime waits for, is written by
//! the reading thread itself: every earlier round is written by then, and on a loaded machine
//! each hand-over between threads can cost a scheduling delay. Pages are addressed by their
//! offset in the RAM backing, so they land right whatever the visibility is; visibility and
//! device windows are applied from the final manifest. A round is acknowledged once every
//! page of it is written.

use super::report;
use super::transport::MigrationTransport;
use super::wire;
use super::wire::FrameType;
use super::Cancel;
use super::MigrateFromOptions;
use super::MigratedManager;
use super::MigrationError;
use super::MigrationPhase;
use super::Side;
use crate::snapshot::format;
use crate::snapshot::format::ExtentKind;
use crate::snapshot::restore;
use crate::snapshot::restore::Destination;
use crate::snapshot::SnapshotError;
use crate::GuestMemoryBuilder;
use crate::GuestMemoryManager;
use futures::executor::block_on;
use std::future::Future;
use std::io;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

const PAGE_SIZE: u64 = format::PAGE_SIZE;
/// Extent frames queued for the apply thread at most.
const QUEUED_EXTENTS: usize = 4;
/// Frame buffers in circulation at most.
const POOLED_BUFFERS: usize = QUEUED_EXTENTS + 3;
/// What errors from the shared restore code name as the snapshot directory.
const STREAM: &str = "<migration stream>";

impl GuestMemoryBuilder {
    /// Receives a migration from `transport`: builds a manager of the machine the source
    /// describes, fills its RAM from the rounds, and on the final manifest applies visibility
    /// and device windows, acknowledges, and resolves with the manager (ready to attach a
    /// partition) and the source's payload. See the `migration` module and
    /// `docs/migration.md`.
    ///
    /// On failure nothing is left: what was built is closed. Dropping the future cancels the
    /// migration.
    ///
    /// Errors: [`MigrationError::Aborted`], [`MigrationError::Protocol`],
    /// [`MigrationError::Io`], [`MigrationError::Snapshot`] (building, another layout than
    /// `options.layout`, window backings that name no recorded mapping, recreating
    /// visibility or windows).
    pub fn migrate_from(
        transport: MigrationTransport,
        options: MigrateFromOptions,
    ) -> impl Future<Output = Result<MigratedManager, MigrationError>> + Send + 'static {
        let cancel = Cancel::new(transport.abort.clone());
        async move {
            let thread_cancel = cancel.clone();
            super::on_migration_thread("migrate-destination", cancel, move || {
                let MigrationTransport { reader, writer, .. } = transport;
                let mut receiver = Receiver {
                    frames: wire::FrameReader::new(reader),
                    writer,
                    phase: MigrationPhase::Handshake,
                    manager: None,
                    cancel: thread_cancel,
                };
                match receiver.receive(options) {
                    Ok(migrated) => Ok(migrated),
                    Err(error) => Err(receiver.fail(error)),
                }
            })
            .await
        }
    }
}

struct Receiver {
    frames: wire::FrameReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    phase: MigrationPhase,
    manager: Option<GuestMemoryManager>,
    cancel: Arc<Cancel>,
}

/// A frame read from the source: its type, payload buffer, length and offset.
struct InFrame {
    frame_type: FrameType,
    payload: Vec<u8>,
    len: usize,
    offset: u64,
}

impl Receiver {
    fn receive(&mut self, options: MigrateFromOptions) -> Result<MigratedManager, MigrationError> {
        // The handshake.
        let hello = self.expect(FrameType::Hello, Vec::new())?;
        let theirs = wire::Hello::decode(&hello.payload[..hello.len])
            .map_err(|what| self.bad(hello.offset, what))?;
        if let Some(what) = theirs.mismatch() {
            return Err(self.bad(hello.offset, what));
        }
        self.write(&wire::Hello::ours().encode(FrameType::HelloAck))?;

        // The machine.
        let frame = self.expect(FrameType::Manifest, hello.payload)?;
        let manifest = format::decode_manifest(&frame.payload[..frame.len])
            .map_err(|error| self.bad(frame.offset, format!("manifest {error}")))?;
        self.phase = MigrationPhase::Rounds;
        let layout = restore::layout_of(Path::new(STREAM), &manifest.layout)?;
        restore::check_expected_layout(
            Path::new(STREAM),
            "the source's",
            &layout,
            options.layout.as_ref(),
        )?;
        let manager = block_on(restore::builder_for(&manifest).build(&layout))
            .map_err(SnapshotError::from)?;
        let manager = self.manager.insert(manager);
        restore::check_ram_regions(Path::new(STREAM), manager, &manifest)?;
        let destination = restore::destination_of(manager)?;
        let mut backing: Vec<(u64, u64)> = manifest
            .ram_regions
            .iter()
            .map(|region| {
                let start = region.file_offset.0;
                (start, start + (region.end.0 - region.start.0))
            })
            .collect();
        // Sorted, so that each extent finds its region by binary search.
        backing.sort_unstable();
        let mut applier = Applier::start(destination)?;
        let rounds = self.rounds(&mut applier, &backing, &options, frame.payload);
        let stopped = applier.stop();
        let Rounds {
            buffer,
            bytes_per_round,
            received,
            payload,
            rounds: round,
        } = rounds?;
        stopped?;

        // The machine as it was paused.
        let frame = self.expect(FrameType::FinalManifest, buffer)?;
        let last = format::decode_manifest(&frame.payload[..frame.len])
            .map_err(|error| self.bad(frame.offset, format!("final manifest {error}")))?;
        let same = crate::snapshot::writer::check_same_machine(
            Path::new(STREAM),
            &manifest,
            "the final manifest's",
            &last,
        );
        if let Err(error) = same {
            return Err(self.bad(
                frame.offset,
                format!("the final manifest changed the machine: {error}"),
            ));
        }
        let counted = (last.extents, last.data_pages, last.zero_pages);
        let carried = (received.extents, received.data_pages, received.zero_pages);
        if last.id != manifest.id || counted != carried {
            return Err(self.bad(
                frame.offset,
                format!(
                    "the final manifest (id {}, extents/data/zero pages {counted:?}) does not match the stream (id {}, {carried:?})",
                    last.id, manifest.id
                ),
            ));
        }
        restore::check_window_backings(Path::new(STREAM), &last, &options.window_backings)?;
        let Some(manager) = self.manager.as_ref() else {
            unreachable!("the manager was built before the rounds");
        };
        let windows = block_on(restore::recreate_regions(
            manager,
            &last,
            options.window_backings,
        ))?;
        let bytes = received.data_pages * PAGE_SIZE;
        if let Err(error) = self.write(&wire::Ack { round, bytes }.encode(FrameType::Complete)) {
            // The source cannot learn that this side completed: it resumes the guest.
            drop(windows);
            return Err(error);
        }
        let Some(manager) = self.manager.take() else {
            unreachable!("the manager was built before the rounds");
        };
        Ok(MigratedManager {
            manager,
            windows,
            payload,
            manifest: last,
            rounds: round,
            bytes,
            bytes_per_round,
        })
    }

    /// Receives the rounds, up to and including the final one, handing extents to `applier`;
    /// `backing` holds the RAM regions' backing ranges.
    fn rounds(
        &mut self,
        applier: &mut Applier,
        backing: &[(u64, u64)],
        options: &MigrateFromOptions,
        buffer: Vec<u8>,
    ) -> Result<Rounds, MigrationError> {
        let progress = options.progress.as_ref();
        let mut buffer = buffer;
        let mut bytes_per_round = Vec::new();
        let mut received = wire::RoundTotals::default();
        let mut payload = None;
        let mut round = 0u32;
        loop {
            let frame = self.expect(FrameType::RoundBegin, buffer)?;
            let begin = wire::RoundBegin::decode(&frame.payload[..frame.len])
                .map_err(|what| self.bad(frame.offset, what))?;
            if begin.round != round {
                return Err(self.bad(
                    frame.offset,
                    format!("round {} began where round {round} was due", begin.round),
                ));
            }
            if begin.last {
                self.phase = MigrationPhase::Final;
                // Every earlier round was written (its end waited for the apply thread): the
                // final round's pages are written here, in arrival order.
                applier.close();
            }
            report(progress, round, 0);
            buffer = frame.payload;
            let mut totals = wire::RoundTotals {
                round,
                ..wire::RoundTotals::default()
            };
            let end = loop {
                let frame = self.next(buffer)?;
                let at = frame.offset;
                match frame.frame_type {
                    FrameType::Extent => {
                        let extent = wire::decode_extent(&frame.payload[..frame.len])
                            .map_err(|what| self.bad(at, what))?;
                        let (start, len) = (extent.extent.ram_offset, extent.extent.len());
                        let inside = extent_inside(backing, start, len);
                        if !inside {
                            return Err(self.bad(
                                at,
                                format!(
                                    "an extent at backing offset {start:#x}+{len:#x} is outside every RAM region"
                                ),
                            ));
                        }
                        totals.extents += 1;
                        match extent.extent.kind {
                            ExtentKind::Data => {
                                // Checked here, while the pages are still in the cache.
                                let pages = &frame.payload[extent.pages_at..][..len_of(&extent)];
                                wire::check_pages(&extent, pages)
                                    .map_err(|what| self.bad(at, what))?;
                                totals.data_pages += u64::from(extent.extent.pages);
                            }
                            ExtentKind::Zero => totals.zero_pages += u64::from(extent.extent.pages),
                        }
                        buffer = if begin.last {
                            apply(&applier.destination, &extent, &frame.payload)?;
                            frame.payload
                        } else {
                            applier.apply(extent, frame.payload)?
                        };
                        report(
                            options.progress.as_ref(),
                            round,
                            totals.data_pages * PAGE_SIZE,
                        );
                    }
                    FrameType::UserPayload if begin.last && payload.is_none() => {
                        payload = Some(frame.payload[..frame.len].to_vec());
                        buffer = frame.payload;
                    }
                    FrameType::RoundEnd => {
                        let end = wire::RoundTotals::decode(&frame.payload[..frame.len])
                            .map_err(|what| self.bad(at, what))?;
                        buffer = frame.payload;
                        break (end, at);
                    }
                    other => {
                        return Err(self.bad(
                            at,
                            format!("an unexpected {other:?} frame inside round {round}"),
                        ))
                    }
                }
            };
            let (end, at) = end;
            if end != totals {
                return Err(self.bad(
                    at,
                    format!("round end {end:?} does not match what the round carried: {totals:?}"),
                ));
            }
            if !begin.last {
                self.wait_applied(applier)?;
            }
            received.extents += totals.extents;
            received.data_pages += totals.data_pages;
            received.zero_pages += totals.zero_pages;
            bytes_per_round.push(totals.data_pages * PAGE_SIZE);
            report(
                options.progress.as_ref(),
                round,
                totals.data_pages * PAGE_SIZE,
            );
            round += 1;
            if begin.last {
                break;
            }
            let bytes = received.data_pages * PAGE_SIZE;
            self.write(
                &wire::Ack {
                    round: round - 1,
                    bytes,
                }
                .encode(FrameType::RoundAck),
            )?;
        }

        Ok(Rounds {
            buffer,
            bytes_per_round,
            received,
            payload,
            rounds: round,
        })
    }

    fn bad(&self, offset: u64, what: String) -> MigrationError {
        MigrationError::Protocol {
            what,
            offset,
            detected_by: Side::Destination,
        }
    }

    fn cancelled(&self) -> MigrationError {
        MigrationError::cancelled(self.phase)
    }

    /// The next frame (an error frame is the source's failure).
    fn next(&mut self, mut payload: Vec<u8>) -> Result<InFrame, MigrationError> {
        if self.cancel.is_cancelled() {
            return Err(self.cancelled());
        }
        let frame = match self.frames.read_frame(&mut payload) {
            Ok(frame) => frame,
            Err(wire::ReadError::Closed) => {
                return Err(MigrationError::aborted(
                    self.phase,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the source closed the stream"),
                ))
            }
            Err(wire::ReadError::Io(cause)) => {
                return Err(MigrationError::aborted(self.phase, cause))
            }
            Err(wire::ReadError::Bad(bad)) => return Err(self.bad(bad.offset, bad.what)),
        };
        if frame.frame_type == FrameType::Error {
            return Err(match wire::PeerError::decode(&payload[..frame.len]) {
                Ok(error) => super::peer_failed(Side::Destination, self.phase, error),
                Err(what) => self.bad(frame.offset, what),
            });
        }
        Ok(InFrame {
            frame_type: frame.frame_type,
            payload,
            len: frame.len,
            offset: frame.offset,
        })
    }

    /// The next frame, which must be of `expected` type.
    fn expect(&mut self, expected: FrameType, payload: Vec<u8>) -> Result<InFrame, MigrationError> {
        let frame = self.next(payload)?;
        if frame.frame_type != expected {
            return Err(self.bad(
                frame.offset,
                format!("a {:?} frame where {expected:?} was due", frame.frame_type),
            ));
        }
        Ok(frame)
    }

    fn write(&mut self, frame: &[u8]) -> Result<(), MigrationError> {
        self.writer
            .write_all(frame)
            .and_then(|()| self.writer.flush())
            .map_err(|cause| MigrationError::aborted(self.phase, cause))
    }

    /// Waits until every extent handed to `applier` is written.
    fn wait_applied(&self, applier: &Applier) -> Result<(), MigrationError> {
        Ok(applier.barrier()?)
    }

    /// Stops after `error`: tells the source why (when the error is this side's own), reads
    /// until the source closes, shuts the transport down and closes what was built (the apply
    /// thread has stopped by then).
    fn fail(&mut self, error: MigrationError) -> MigrationError {
        let (error, frame) = error.settle(Side::Destination, self.phase, &self.cancel);
        if let Some(frame) = frame {
            if self.write(&frame).is_ok() {
                // The source stops when it reads the error and closes the stream.
                self.frames.drain();
            }
        }
        self.cancel.abort();
        if let Some(manager) = self.manager.take() {
            block_on(manager.close());
        }
        error
    }
}

/// What the rounds carried.
struct Rounds {
    /// A buffer for the next frame.
    buffer: Vec<u8>,
    bytes_per_round: Vec<u64>,
    received: wire::RoundTotals,
    payload: Option<Vec<u8>>,
    rounds: u32,
}

/// Writing RAM failed in the apply thread.
struct ApplyError {
    op: String,
    source: io::Error,
}

impl ApplyError {
    /// The apply thread is gone: nothing queued now is written.
    fn thread_stopped() -> Self {
        ApplyError {
            op: "apply a round".into(),
            source: io::Error::other("the apply thread stopped"),
        }
    }
}

impl From<ApplyError> for MigrationError {
    fn from(error: ApplyError) -> Self {
        MigrationError::Io {
            op: error.op,
            source: error.source,
        }
    }
}

enum Work {
    Extent {
        frame: wire::ExtentFrame,
        payload: Vec<u8>,
    },
    Barrier(mpsc::Sender<Result<(), ApplyError>>),
}

/// The apply thread: writes extents in order; reports at barriers. `destination` is shared
/// with the reading thread, which writes the final round itself once the thread is closed.
struct Applier {
    destination: Arc<Destination>,
    /// `None` once closed.
    work: Option<mpsc::SyncSender<Work>>,
    recycled: mpsc::Receiver<Vec<u8>>,
    allocated: std::cell::Cell<usize>,
    thread: JoinHandle<()>,
}

impl Applier {
    fn start(destination: Destination) -> Result<Self, MigrationError> {
        let destination = Arc::new(destination);
        let shared = destination.clone();
        let (work, queue) = mpsc::sync_channel::<Work>(QUEUED_EXTENTS);
        let (give_back, recycled) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("migrate-apply".into())
            .spawn(move || {
                let mut failed: Option<ApplyError> = None;
                for work in queue {
                    match work {
                        Work::Extent { frame, payload } => {
                            if failed.is_none() {
                                failed = apply(&destination, &frame, &payload).err();
                            }
                            let _ = give_back.send(payload);
                        }
                        Work::Barrier(reply) => {
                            let _ = reply.send(failed.take().map_or(Ok(()), Err));
                        }
                    }
                }
            })
            .map_err(|source| MigrationError::Io {
                op: "start the apply thread".into(),
                source,
            })?;
        Ok(Self {
            destination: shared,
            work: Some(work),
            recycled,
            allocated: std::cell::Cell::new(1),
            thread,
        })
    }

    /// Queues an extent (its pages checked) and returns a buffer for the next frame: one the
    /// apply thread gave back, a new one while fewer than [`POOLED_BUFFERS`] exist, else the
    /// next one it gives back (so buffers are reused and never cleared again).
    fn apply(&self, frame: wire::ExtentFrame, payload: Vec<u8>) -> Result<Vec<u8>, MigrationError> {
        let work = self.work.as_ref().ok_or_else(ApplyError::thread_stopped)?;
        work.send(Work::Extent { frame, payload })
            .map_err(|_| ApplyError::thread_stopped())?;
        if let Ok(buffer) = self.recycled.try_recv() {
            return Ok(buffer);
        }
        if self.allocated.get() < POOLED_BUFFERS {
            self.allocated.set(self.allocated.get() + 1);
            return Ok(Vec::new());
        }
        Ok(self.recycled.recv().unwrap_or_default())
    }

    fn barrier(&self) -> Result<(), ApplyError> {
        let (reply, done) = mpsc::channel();
        let work = self.work.as_ref().ok_or_else(ApplyError::thread_stopped)?;
        work.send(Work::Barrier(reply))
            .map_err(|_| ApplyError::thread_stopped())?;
        done.recv().map_err(|_| ApplyError::thread_stopped())?
    }

    /// Lets the thread finish what is queued and end (without waiting for it).
    fn close(&mut self) {
        self.work = None;
    }

    /// Lets the thread finish what is queued and joins it.
    fn stop(mut self) -> Result<(), MigrationError> {
        self.close();
        self.thread.join().map_err(|_| MigrationError::Io {
            op: "apply a round".into(),
            source: io::Error::other("the apply thread panicked"),
        })
    }
}

/// The byte length of an extent frame's pages.
fn len_of(frame: &wire::ExtentFrame) -> usize {
    usize::try_from(frame.extent.len()).unwrap_or(usize::MAX)
}

/// Writes the (checked) pages of one extent, or zeros, at its backing offset.
fn apply(
    destination: &Destination,
    frame: &wire::ExtentFrame,
    payload: &[u8],
) -> Result<(), ApplyError> {
    let extent = &frame.extent;
    let result = match extent.kind {
        ExtentKind::Data => destination.write(
            extent.ram_offset,
            &payload[frame.pages_at..][..len_of(frame)],
        ),
        ExtentKind::Zero => destination.zero(extent.ram_offset, extent.len()),
    };
    result.map_err(|source| ApplyError {
        op: format!(
            "write the {} pages at backing offset {:#x} of guest RAM",
            extent.pages, extent.ram_offset
        ),
        source,
    })
}

/// Whether the extent of `len` bytes at backing offset `start` lies inside one of the RAM
/// regions' backing ranges (`backing`, sorted by start): the candidate is found by binary
/// search (a scan per extent was quadratic in a layout with thousands of RAM ranges); only a
/// refusal scans them all, so that the answer does not depend on the ranges being disjoint.
fn extent_inside(backing: &[(u64, u64)], start: u64, len: u64) -> bool {
    let holds = |&(from, to): &(u64, u64)| {
        start >= from && start.checked_add(len).is_some_and(|end| end <= to)
    };
    let candidate = backing.partition_point(|&(from, _)| from <= start);
    (candidate > 0 && holds(&backing[candidate - 1])) || backing.iter().any(holds)
}

#[cfg(test)]
mod extent_tests {
    use super::extent_inside;

    #[test]
    fn extents_must_lie_inside_one_region() {
        let mut backing: Vec<(u64, u64)> = (0..1000u64)
            .map(|i| (i * 0x3000, i * 0x3000 + 0x2000))
            .collect();
        backing.sort_unstable();
        assert!(extent_inside(&backing, 0, 0x2000));
        assert!(extent_inside(&backing, 0x3000 * 500 + 0x1000, 0x1000));
        // Across a hole, into a hole, or past the end.
        assert!(!extent_inside(&backing, 0x1000, 0x2000));
        assert!(!extent_inside(&backing, 0x2000, 0x1000));
        assert!(!extent_inside(&backing, 0x3000 * 1000, 0x1000));
        assert!(!extent_inside(&backing, u64::MAX, 2));
        assert!(!extent_inside(&[], 0, 0x1000));
    }
}
