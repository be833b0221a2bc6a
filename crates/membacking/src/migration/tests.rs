//! Tests of live migration between two managers of this process (and, for the kill tests,
//! of a child process): memory equal after migration while writers and a KVM guest run, RAM
//! below and above the 4 GiB gap, visibility and device windows changed during the rounds,
//! tracking left as it was, corrupt, truncated and cut streams, version mismatches, a writer
//! faster than the link, cancellation, the channel transport, and peers killed at random
//! points.

use super::*;
use crate::snapshot::tests::build;
use crate::snapshot::tests::memfd;
use crate::snapshot::tests::ram_image;
use crate::snapshot::tests::regions;
use crate::snapshot::tests::scribble;
use crate::snapshot::tests::Rng;
use crate::snapshot::tests::HIGH;
use crate::snapshot::tests::LOW;
use crate::snapshot::tests::MIB;
use crate::snapshot::tests::PAM0;
use crate::snapshot::tests::VGA;
use crate::snapshot::tests::WINDOW_GPA;
use crate::DirtyTrackingError;
use crate::GuestMemoryBuilder;
use crate::RamVisibility;
use crate::SnapshotError;
use futures::executor::block_on;
use memory_range::MemoryRange;
use std::io::Read;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

/// Writes random bytes to random pages of `ranges` through guest memory until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Writer {
    fn start(manager: &GuestMemoryManager, seed: u64, ranges: Vec<MemoryRange>) -> Self {
        let memory = block_on(manager.client().guest_memory()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut writes = 0;
                let mut page = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let range = ranges[usize::try_from(rng.below(ranges.len() as u64)).unwrap()];
                    let gpa = range.start() + rng.below(range.len() / 4096) * 4096;
                    let fill = rng.next().to_le_bytes();
                    for (index, byte) in page.iter_mut().enumerate().step_by(512) {
                        *byte = fill[index / 512 % 8];
                    }
                    memory.write_at(gpa, &page).unwrap();
                    writes += 1;
                }
                writes
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the writer and waits until its last write is done; returns how many it made.
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |thread| thread.join().unwrap())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The RAM the writer threads use (visible and writable in every test).
fn writer_ranges() -> Vec<MemoryRange> {
    vec![
        MemoryRange::new(2 * MIB..LOW.end()),
        MemoryRange::new(HIGH.start()..HIGH.end()),
    ]
}

/// Two connected transports over a Unix socketpair.
fn socket_pair() -> (MigrationTransport, MigrationTransport) {
    let (a, b) = UnixStream::pair().unwrap();
    (
        MigrationTransport::unix(a).unwrap(),
        MigrationTransport::unix(b).unwrap(),
    )
}

fn spawn_destination(
    transport: MigrationTransport,
    options: MigrateFromOptions,
) -> JoinHandle<Result<MigratedManager, MigrationError>> {
    thread::spawn(move || block_on(GuestMemoryBuilder::migrate_from(transport, options)))
}

/// Pause options that stop `writer` and hand over `payload`.
fn pausing(mut writer: Writer, payload: Option<Vec<u8>>) -> MigrateOptions {
    MigrateOptions::new(move || async move {
        writer.stop();
        Ok(payload)
    })
}

fn close(manager: GuestMemoryManager) {
    block_on(manager.close());
}

/// What can be done to the bytes between the two sides.
#[derive(Debug, Copy, Clone)]
enum Tamper {
    /// Flip a bit of the byte at this offset of the source's stream.
    FlipForward(u64),
    /// Flip a bit of the byte at this offset of the destination's stream.
    FlipBack(u64),
    /// Drop the connection after this many bytes of the source's stream.
    Cut(u64),
    /// Pass the source's stream at this many bytes per second.
    Throttle(u64),
}

/// A source and a destination transport joined through two relay threads that apply
/// `tamper`; when either direction ends or fails, both connections are shut down.
fn relayed(tamper: Tamper) -> (MigrationTransport, MigrationTransport) {
    let (source, relay_in) = UnixStream::pair().unwrap();
    let (relay_out, destination) = UnixStream::pair().unwrap();
    let shutdown = {
        let sockets = [
            relay_in.try_clone().unwrap(),
            relay_out.try_clone().unwrap(),
        ];
        Arc::new(move || {
            for socket in &sockets {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        })
    };
    let pump = move |mut from: UnixStream,
                     mut to: UnixStream,
                     forward: bool,
                     shutdown: Arc<dyn Fn() + Send + Sync>| {
        thread::spawn(move || {
            let mut offset = 0u64;
            let mut buffer = vec![0u8; 64 * 1024];
            let started = Instant::now();
            loop {
                let read = match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                let chunk = &mut buffer[..read];
                let mut len = read;
                match tamper {
                    Tamper::FlipForward(at) if forward => flip(chunk, offset, at),
                    Tamper::FlipBack(at) if !forward => flip(chunk, offset, at),
                    Tamper::Cut(at) if forward && offset + read as u64 >= at => {
                        len = usize::try_from(at - offset).unwrap();
                    }
                    Tamper::Throttle(rate) if forward => {
                        let due =
                            Duration::from_secs_f64((offset + read as u64) as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            thread::sleep(wait);
                        }
                    }
                    _ => {}
                }
                if to.write_all(&chunk[..len]).is_err() || len < read {
                    break;
                }
                offset += read as u64;
            }
            shutdown();
        })
    };
    pump(
        relay_in.try_clone().unwrap(),
        relay_out.try_clone().unwrap(),
        true,
        shutdown.clone(),
    );
    pump(relay_out, relay_in, false, shutdown);
    (
        MigrationTransport::unix(source).unwrap(),
        MigrationTransport::unix(destination).unwrap(),
    )
}

fn flip(chunk: &mut [u8], offset: u64, at: u64) {
    if (offset..offset + chunk.len() as u64).contains(&at) {
        chunk[usize::try_from(at - offset).unwrap()] ^= 0x04;
    }
}

/// Waits (yielding) until `condition` holds; fails after a minute.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "{what} never happened");
        thread::yield_now();
    }
}

#[test]
fn memory_regions_and_windows_arrive_while_a_writer_runs() {
    for private in [false, true] {
        let source = build(private);
        let mut rng = Rng::new(11 + u64::from(private));
        scribble(&source, &mut rng, 400);
        let writer = Writer::start(&source, 5, writer_ranges());
        let first = memfd(0x2000, 0xab);
        let second = memfd(0x1000, 0xcd);
        let (window, region) = source
            .device_memory_mapper()
            .new_region(0x4000, "framebuffer".into())
            .unwrap();
        block_on(region.map(0, first.as_fd(), 0, 0x2000, true)).unwrap();
        block_on(region.map(0x3000, second.as_fd(), 0, 0x1000, false)).unwrap();

        // Once round 0 runs, change visibility and place the window; the pause waits for it.
        let (round_started, started) = mpsc::channel();
        let (changed, changes_done) = mpsc::channel::<()>();
        let progress_calls = Arc::new(AtomicU64::new(0));
        let mut options = MigrateOptions::new({
            let mut writer = writer;
            move || async move {
                changes_done.recv().unwrap();
                writer.stop();
                Ok(Some(b"vcpu registers".to_vec()))
            }
        });
        options.progress = Some({
            let progress_calls = progress_calls.clone();
            let round_started = parking_lot::Mutex::new(Some(round_started));
            Arc::new(move |round, _bytes| {
                progress_calls.fetch_add(1, Ordering::Relaxed);
                if round == 0 {
                    if let Some(sender) = round_started.lock().take() {
                        let _: Result<(), _> = sender.send(());
                    }
                }
            })
        });
        let (source_end, destination_end) = socket_pair();
        let destination_progress = Arc::new(AtomicU64::new(0));
        let destination = spawn_destination(
            destination_end,
            MigrateFromOptions {
                progress: Some({
                    let destination_progress = destination_progress.clone();
                    Arc::new(move |_, bytes| {
                        destination_progress.fetch_max(bytes, Ordering::Relaxed);
                    })
                }),
                window_backings: vec![
                    WindowBacking {
                        window: "framebuffer".into(),
                        offset: Some(0),
                        object: first.try_clone().unwrap(),
                    },
                    WindowBacking {
                        window: "framebuffer".into(),
                        offset: Some(0x3000),
                        object: second.try_clone().unwrap(),
                    },
                ],
                ..MigrateFromOptions::default()
            },
        );
        let changer = {
            let control = source.ram_visibility_control();
            thread::spawn(move || {
                started.recv().unwrap();
                if !private {
                    block_on(control.set_ram_visibility(VGA, RamVisibility::Unmapped)).unwrap();
                    block_on(control.set_ram_visibility(PAM0, RamVisibility::ReadOnly)).unwrap();
                }
                block_on(window.map_to_guest(WINDOW_GPA, true)).unwrap();
                changed.send(()).unwrap();
                window
            })
        };
        let info = block_on(source.migrate(source_end, options)).unwrap();
        let _window = changer.join().unwrap();
        let migrated = destination.join().unwrap().unwrap();

        assert!(info.rounds >= 2, "{info:?}");
        assert_eq!(
            info.bytes_per_round.len(),
            usize::try_from(info.rounds).unwrap()
        );
        assert_eq!(info.bytes, info.bytes_per_round.iter().sum::<u64>());
        assert!(info.bytes_per_round[0] >= 400 * 4096 / 4, "{info:?}");
        assert!(info.stream_bytes > info.bytes);
        assert!(info.downtime_ms > 0.0);
        assert!(progress_calls.load(Ordering::Relaxed) >= u64::from(info.rounds));
        assert_eq!(migrated.rounds, info.rounds);
        assert_eq!(migrated.bytes_per_round, info.bytes_per_round);
        assert!(destination_progress.load(Ordering::Relaxed) >= info.bytes_per_round[0]);
        assert_eq!(migrated.payload.as_deref(), Some(&b"vcpu registers"[..]));
        assert!(
            ram_image(&source) == ram_image(&migrated.manager),
            "private: {private}"
        );
        assert_eq!(
            regions(&source),
            regions(&migrated.manager),
            "private: {private}"
        );
        assert_eq!(migrated.windows.len(), 1);
        assert!(migrated.windows[0].missing.is_empty());
        if !private {
            // (Private RAM managers do not surface device memory through guest memory.)
            let memory = block_on(migrated.manager.client().guest_memory()).unwrap();
            assert_eq!(memory.read_plain::<u8>(WINDOW_GPA).unwrap(), 0xab);
            assert_eq!(memory.read_plain::<u8>(WINDOW_GPA + 0x3000).unwrap(), 0xcd);
        }
        assert!(
            !source.dirty_tracking().is_active(),
            "tracking is off again"
        );
        drop(migrated.windows);
        close(migrated.manager);
        close(source);
    }
}

#[test]
fn tracking_that_was_on_stays_on_and_the_callers_takes_keep_their_pages() {
    let source = build(false);
    let tracking = source.dirty_tracking();
    block_on(tracking.start()).unwrap();
    let memory = block_on(source.client().guest_memory()).unwrap();
    memory.write_plain(3 * MIB, &1u64).unwrap();
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    // Written during round 0 and in the pause: the migration takes them, and so does the
    // caller's next take.
    let mut options = MigrateOptions::new({
        let memory = memory.clone();
        move || async move {
            memory.write_plain(10 * MIB, &3u64).unwrap();
            Ok(None)
        }
    });
    options.progress = Some(Arc::new({
        let memory = memory.clone();
        move |round, _| {
            if round == 0 {
                memory.write_plain(11 * MIB, &2u64).unwrap();
            }
        }
    }));
    block_on(source.migrate(source_end, options)).unwrap();
    let migrated = destination.join().unwrap().unwrap();
    assert!(tracking.is_active());
    let taken = block_on(tracking.take()).unwrap();
    for gpa in [3 * MIB, 10 * MIB, 11 * MIB] {
        assert!(
            taken.iter().any(|range| range.contains_addr(gpa)),
            "{gpa:#x} not in {taken:?}"
        );
    }
    assert!(ram_image(&source) == ram_image(&migrated.manager));
    drop(memory);
    close(migrated.manager);
    close(source);
}

#[test]
fn a_migration_runs_over_tcp_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let destination = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let transport = MigrationTransport::tcp(stream).unwrap();
        block_on(GuestMemoryBuilder::migrate_from(
            transport,
            MigrateFromOptions {
                layout: Some(crate::snapshot::tests::layout()),
                ..MigrateFromOptions::default()
            },
        ))
    });
    let source = build(false);
    scribble(&source, &mut Rng::new(3), 200);
    let writer = Writer::start(&source, 4, writer_ranges());
    let stream = std::net::TcpStream::connect(address).unwrap();
    let transport = MigrationTransport::tcp(stream).unwrap();
    let info = block_on(source.migrate(transport, pausing(writer, Some(vec![1, 2, 3])))).unwrap();
    let migrated = destination.join().unwrap().unwrap();
    assert_eq!(migrated.payload, Some(vec![1, 2, 3]));
    assert_eq!(migrated.rounds, info.rounds);
    assert!(ram_image(&source) == ram_image(&migrated.manager));
    close(migrated.manager);
    close(source);
}

/// The frame boundaries and types of a clean migration's two streams, recorded by a relay
/// that does not tamper: where to aim the corruptions.
fn recorded_streams() -> (Vec<u8>, Vec<u8>) {
    let (source_side, relay_in) = UnixStream::pair().unwrap();
    let (relay_out, destination_side) = UnixStream::pair().unwrap();
    let record = |mut from: UnixStream, mut to: UnixStream| {
        thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buffer = [0u8; 65536];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        seen.extend_from_slice(&buffer[..read]);
                        if to.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
            seen
        })
    };
    let forward = record(
        relay_in.try_clone().unwrap(),
        relay_out.try_clone().unwrap(),
    );
    let back = record(relay_out, relay_in);
    let source = small_machine();
    let destination = spawn_destination(
        MigrationTransport::unix(destination_side.try_clone().unwrap()).unwrap(),
        MigrateFromOptions::default(),
    );
    block_on(source.migrate(
        MigrationTransport::unix(source_side.try_clone().unwrap()).unwrap(),
        MigrateOptions::new(|| async { Ok(Some(vec![9; 100])) }),
    ))
    .unwrap();
    close(destination.join().unwrap().unwrap().manager);
    close(source);
    let _ = source_side.shutdown(std::net::Shutdown::Both);
    let _ = destination_side.shutdown(std::net::Shutdown::Both);
    (forward.join().unwrap(), back.join().unwrap())
}

/// A machine with a few pages of data, so that a stream is short.
fn small_machine() -> GuestMemoryManager {
    let source = build(false);
    let memory = block_on(source.client().guest_memory()).unwrap();
    memory.write_at(2 * MIB, &[0x5a; 3 * 4096]).unwrap();
    memory.write_at(HIGH.start() + 4096, &[0xa5; 4096]).unwrap();
    source
}

/// The offsets of the frames of `stream` (each frame's first byte) and its length.
fn frame_starts(stream: &[u8]) -> Vec<(u64, wire::FrameType)> {
    let mut reader = wire::FrameReader::new(stream);
    let mut starts = Vec::new();
    let mut payload = Vec::new();
    while let Ok(frame) = reader.read_frame(&mut payload) {
        starts.push((frame.offset, frame.frame_type));
    }
    starts
}

#[test]
fn a_flipped_bit_anywhere_fails_both_sides_and_leaves_the_source_as_it_was() {
    let (forward, back) = recorded_streams();
    let forward_frames = frame_starts(&forward);
    let back_frames = frame_starts(&back);
    assert!(forward_frames.len() >= 8, "{forward_frames:?}");
    assert_eq!(
        back_frames.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
        [
            wire::FrameType::HelloAck,
            wire::FrameType::RoundAck,
            wire::FrameType::Complete
        ]
    );
    // In every frame: its header, its first payload byte, a middle byte and its trailer.
    let mut targets = Vec::new();
    let ends: Vec<u64> = forward_frames
        .iter()
        .skip(1)
        .map(|(start, _)| *start)
        .chain([forward.len() as u64])
        .collect();
    for (&(start, _), &end) in forward_frames.iter().zip(&ends) {
        for at in [start + 1, start + 9, start + 12, (start + end) / 2, end - 1] {
            targets.push(Tamper::FlipForward(at));
        }
    }
    for &(start, _) in &back_frames {
        targets.push(Tamper::FlipBack(start + 5));
        targets.push(Tamper::FlipBack(start + 20));
    }
    for tamper in targets {
        let source = small_machine();
        let before = ram_image(&source);
        let (source_end, destination_end) = relayed(tamper);
        let destination = spawn_destination(destination_end, MigrateFromOptions::default());
        let sent = block_on(source.migrate(
            source_end,
            MigrateOptions::new(|| async { Ok(Some(vec![9; 100])) }),
        ));
        let received = destination.join().unwrap();
        match (&tamper, &sent, &received) {
            // A damaged Complete: the destination finished; the source cannot know it.
            (
                Tamper::FlipBack(_),
                Err(MigrationError::Aborted {
                    phase: MigrationPhase::Completing,
                    ..
                }),
                Ok(_),
            ) => {}
            (
                Tamper::FlipForward(_),
                Err(MigrationError::Protocol {
                    detected_by: Side::Destination,
                    ..
                }),
                Err(MigrationError::Protocol {
                    detected_by: Side::Destination,
                    ..
                }),
            ) => {}
            (
                Tamper::FlipBack(_),
                Err(MigrationError::Protocol {
                    detected_by: Side::Source,
                    ..
                }),
                Err(MigrationError::Protocol {
                    detected_by: Side::Source,
                    ..
                }),
            ) => {}
            other => panic!("{tamper:?}: {other:?}"),
        }
        assert!(!source.dirty_tracking().is_active(), "{tamper:?}");
        assert!(ram_image(&source) == before, "{tamper:?}");
        if let Ok(migrated) = received {
            close(migrated.manager);
        }
        close(source);
    }
}

#[test]
fn a_cut_connection_aborts_both_sides_at_every_frame() {
    let (forward, _) = recorded_streams();
    let frames = frame_starts(&forward);
    let mut cuts: Vec<u64> = frames.iter().map(|(start, _)| *start + 5).collect();
    cuts.push(0);
    for cut in cuts {
        let source = small_machine();
        let before = ram_image(&source);
        let (source_end, destination_end) = relayed(Tamper::Cut(cut));
        let destination = spawn_destination(destination_end, MigrateFromOptions::default());
        let sent = block_on(source.migrate(
            source_end,
            MigrateOptions::new(|| async { Ok(Some(vec![9; 100])) }),
        ));
        match (&sent, destination.join().unwrap()) {
            (Err(MigrationError::Aborted { .. }), Err(MigrationError::Aborted { cause, .. })) => {
                assert!(
                    matches!(
                        cause.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ),
                    "cut at {cut}: {cause}"
                );
            }
            (sent, received) => panic!("cut at {cut}: {sent:?} / {received:?}"),
        }
        assert!(!source.dirty_tracking().is_active());
        assert!(ram_image(&source) == before);
        close(source);
    }
}

#[test]
fn another_protocol_version_is_refused_by_either_side() {
    // A destination speaking version 2.
    let source = small_machine();
    let (source_end, fake) = UnixStream::pair().unwrap();
    let fake_destination = thread::spawn(move || {
        let mut reader = wire::FrameReader::new(fake.try_clone().unwrap());
        let mut payload = Vec::new();
        let hello = reader.read_frame(&mut payload).unwrap();
        assert_eq!(hello.frame_type, wire::FrameType::Hello);
        let newer = wire::Hello {
            version: 2,
            ..wire::Hello::ours()
        };
        (&fake)
            .write_all(&newer.encode(wire::FrameType::HelloAck))
            .unwrap();
        let error = reader.read_frame(&mut payload).unwrap();
        assert_eq!(error.frame_type, wire::FrameType::Error);
        let error = wire::PeerError::decode(&payload[..error.len]).unwrap();
        assert_eq!(error.kind, wire::ErrorKind::Protocol);
        error.message
    });
    let sent = block_on(source.migrate(
        MigrationTransport::unix(source_end).unwrap(),
        MigrateOptions::new(|| async { Ok(None) }),
    ));
    match sent {
        Err(MigrationError::Protocol {
            what,
            detected_by: Side::Source,
            ..
        }) => assert!(what.contains("version 2"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(fake_destination.join().unwrap().contains("version 2"));
    assert!(!source.dirty_tracking().is_active());
    close(source);

    // A source speaking version 2.
    let (fake, destination_end) = UnixStream::pair().unwrap();
    let destination = spawn_destination(
        MigrationTransport::unix(destination_end).unwrap(),
        MigrateFromOptions::default(),
    );
    let newer = wire::Hello {
        version: 2,
        ..wire::Hello::ours()
    };
    (&fake)
        .write_all(&newer.encode(wire::FrameType::Hello))
        .unwrap();
    let mut reader = wire::FrameReader::new(fake.try_clone().unwrap());
    let mut payload = Vec::new();
    let answer = reader.read_frame(&mut payload).unwrap();
    assert_eq!(answer.frame_type, wire::FrameType::Error);
    let error = wire::PeerError::decode(&payload[..answer.len]).unwrap();
    assert!(error.message.contains("version 2"), "{}", error.message);
    drop(reader);
    drop(fake);
    match destination.join().unwrap() {
        Err(MigrationError::Protocol {
            what,
            detected_by: Side::Destination,
            offset: 0,
        }) => assert!(what.contains("version 2"), "{what}"),
        other => panic!("{other:?}"),
    }
    // Something else entirely: refused at offset 0 without waiting for more.
    let (fake, destination_end) = UnixStream::pair().unwrap();
    let destination = spawn_destination(
        MigrationTransport::unix(destination_end).unwrap(),
        MigrateFromOptions::default(),
    );
    (&fake)
        .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .unwrap();
    let _ = fake.shutdown(std::net::Shutdown::Write);
    assert!(matches!(
        destination.join().unwrap(),
        Err(MigrationError::Protocol { offset: 0, .. })
    ));
}

#[test]
fn a_writer_faster_than_the_link_ends_unconverged_or_fails_the_binding_budget() {
    // 1 MiB/s against a writer that keeps dirtying 1.5 MiB: a round's remainder needs about a
    // second (the socket buffers let some 450 KiB through at once), over the 300 ms default
    // budget.
    const RATE: u64 = 1 << 20;
    let hot = vec![MemoryRange::new(4 * MIB..4 * MIB + 1536 * 1024)];
    let source = build(false);
    let writer = Writer::start(&source, 21, hot.clone());
    let (source_end, destination_end) = relayed(Tamper::Throttle(RATE));
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    let mut options = pausing(writer, None);
    options.max_rounds = Some(2);
    let info = block_on(source.migrate(source_end, options)).unwrap();
    let migrated = destination.join().unwrap().unwrap();
    assert!(!info.converged, "{info:?}");
    assert_eq!(
        info.rounds, 3,
        "two rounds while running, then the final one"
    );
    assert!(info.bandwidth_bytes_per_sec < 4.0 * RATE as f64, "{info:?}");
    assert!(ram_image(&source) == ram_image(&migrated.manager));
    close(migrated.manager);

    // The same with a binding budget: refused before pausing, the source as it was.
    let writer = Writer::start(&source, 22, hot);
    let paused = Arc::new(AtomicBool::new(false));
    let (source_end, destination_end) = relayed(Tamper::Throttle(RATE));
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    let mut options = MigrateOptions::new({
        let paused = paused.clone();
        move || async move {
            paused.store(true, Ordering::SeqCst);
            Ok(None)
        }
    });
    options.max_rounds = Some(1);
    options.max_downtime_ms = Some(50);
    match block_on(source.migrate(source_end, options)) {
        Err(MigrationError::Downtime {
            rounds,
            remainder_bytes,
            predicted_ms,
            max_downtime_ms,
            ..
        }) => {
            assert_eq!(rounds, 1);
            assert!(remainder_bytes > 0);
            assert!(predicted_ms > 50.0);
            assert_eq!(max_downtime_ms, 50);
        }
        other => panic!("{other:?}"),
    }
    assert!(!paused.load(Ordering::SeqCst), "the guest was not paused");
    match destination.join().unwrap() {
        Err(MigrationError::Aborted { cause, .. }) => {
            assert!(cause.to_string().contains("maxDowntimeMs"), "{cause}")
        }
        other => panic!("{other:?}"),
    }
    drop(writer);
    assert!(!source.dirty_tracking().is_active());
    close(source);
}

#[test]
fn options_are_checked_and_one_migration_runs_at_a_time() {
    let source = build(false);
    for rounds in [0, MAX_ROUNDS_LIMIT + 1] {
        let (source_end, _other) = socket_pair();
        let mut options = MigrateOptions::new(|| async { Ok(None) });
        options.max_rounds = Some(rounds);
        match block_on(source.migrate(source_end, options)) {
            Err(MigrationError::InvalidArgument { what }) => {
                assert!(what.contains("maxRounds"), "{what}")
            }
            other => panic!("{other:?}"),
        }
    }
    // A first migration waits in its handshake (nobody answers); a second is refused.
    let (first_end, silent) = socket_pair();
    let first = source.migrate(first_end, MigrateOptions::new(|| async { Ok(None) }));
    let first = thread::spawn(move || block_on(first));
    eventually("the first migration started tracking", || {
        source.dirty_tracking().is_active()
    });
    let (second_end, _other) = socket_pair();
    assert!(matches!(
        block_on(source.migrate(second_end, MigrateOptions::new(|| async { Ok(None) }))),
        Err(MigrationError::InProgress)
    ));
    drop(silent);
    assert!(matches!(
        first.join().unwrap(),
        Err(MigrationError::Aborted {
            phase: MigrationPhase::Handshake,
            ..
        })
    ));
    assert!(!source.dirty_tracking().is_active());
    close(source);
}

#[test]
fn dropping_the_future_cancels_the_migration() {
    let source = build(false);
    scribble(&source, &mut Rng::new(8), 500);
    let (source_end, destination_end) = relayed(Tamper::Throttle(1 << 20));
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    let (started, round_zero) = mpsc::channel::<()>();
    let mut options = MigrateOptions::new(|| async { Ok(None) });
    let started = parking_lot::Mutex::new(Some(started));
    options.progress = Some(Arc::new(move |_, bytes| {
        if bytes > 0 {
            if let Some(started) = started.lock().take() {
                let _ = started.send(());
            }
        }
    }));
    // Dropped once round 0 has sent a page.
    let migration = source.migrate(source_end, options);
    drop_once(migration, || round_zero.recv().unwrap(), destination);
    eventually("tracking stopped", || !source.dirty_tracking().is_active());
    close(source);
}

/// Polls `migration` once (which starts its thread), waits until `started` returns, drops the
/// future and checks that the destination saw the migration aborted.
fn drop_once<F: Future>(
    migration: F,
    started: impl FnOnce(),
    destination: JoinHandle<Result<MigratedManager, MigrationError>>,
) {
    let mut migration = Box::pin(migration);
    let waker = futures::task::noop_waker();
    let mut context = std::task::Context::from_waker(&waker);
    assert!(migration.as_mut().poll(&mut context).is_pending());
    started();
    drop(migration);
    assert!(matches!(
        destination.join().unwrap(),
        Err(MigrationError::Aborted { .. })
    ));
}

/// Migrate options whose pause tells `called` and never resolves.
fn pause_forever(called: mpsc::Sender<()>) -> MigrateOptions {
    MigrateOptions::new(move || {
        let _ = called.send(());
        std::future::pending()
    })
}

/// Runs `migration` on a thread of its own; its result arrives on the returned channel.
fn in_background<T: Send + 'static>(
    migration: impl std::future::Future<Output = T> + Send + 'static,
) -> mpsc::Receiver<T> {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(block_on(migration));
    });
    result
}

/// Waits (at most a minute) for a migration whose source manager was closed to fail with
/// `ManagerGone`.
fn assert_ends_with_manager_gone<T: std::fmt::Debug>(
    result: &mpsc::Receiver<Result<T, MigrationError>>,
) {
    match result.recv_timeout(Duration::from_secs(60)) {
        Ok(Err(MigrationError::DirtyTracking(DirtyTrackingError::Manager(
            crate::RegionManagerError::ManagerGone,
        )))) => {}
        Ok(other) => panic!("the migration ended with {other:?}, not ManagerGone"),
        Err(_) => panic!("the migration did not end after its manager was closed"),
    }
}

#[test]
fn closing_the_source_while_its_pause_is_pending_fails_the_migration() {
    // The migration's thread blocked on the pause future: closing the manager left the
    // migration (and the destination) waiting for ever, and the thread with them.
    let source = small_machine();
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    let (called, pause_called) = mpsc::channel();
    let migration = source.migrate(source_end, pause_forever(called));
    let result = in_background(migration);
    pause_called.recv().unwrap();
    close(source);
    assert_ends_with_manager_gone(&result);
    assert!(matches!(
        destination.join().unwrap(),
        Err(MigrationError::Aborted { .. })
    ));
}

#[test]
fn closing_the_source_while_its_peer_is_silent_fails_the_migration() {
    // A destination that neither reads nor answers held the migration's thread in the
    // transport for ever, even once the source's manager was closed.
    let source = build(false);
    scribble(&source, &mut Rng::new(21), 300);
    let (source_end, silent_peer) = socket_pair();
    let migration = source.migrate(source_end, MigrateOptions::new(|| async { Ok(None) }));
    let result = in_background(migration);
    // The migration has begun (it tracks dirty pages from then on) and waits for its peer.
    eventually("the migration began", || {
        source.dirty_tracking().is_active()
    });
    close(source);
    assert_ends_with_manager_gone(&result);
    drop(silent_peer);
}

#[test]
fn dropping_the_future_while_the_pause_is_pending_ends_the_migration() {
    let source = small_machine();
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    let (called, pause_called) = mpsc::channel();
    let migration = source.migrate(source_end, pause_forever(called));
    drop_once(migration, || pause_called.recv().unwrap(), destination);
    // Tracking ends when the migration's thread does.
    eventually("tracking stopped", || !source.dirty_tracking().is_active());
    close(source);
}

#[test]
fn the_channel_transport_carries_a_migration_as_a_stream_owner_would() {
    // The "stream owner" pumps a socket into and out of the channel, as the JavaScript
    // binding does with a Duplex: feed each received chunk and await room; write each
    // chunk the migration yields.
    let (transport, end) = channel_transport(256 * 1024);
    let (socket, destination_end) = UnixStream::pair().unwrap();
    let StreamEnd { incoming, outgoing } = end;
    let inbound = {
        let mut socket = socket.try_clone().unwrap();
        thread::spawn(move || {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                match socket.read(&mut buffer) {
                    Ok(0) => break incoming.end(),
                    Ok(read) => {
                        if block_on(incoming.push(buffer[..read].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(error) => break incoming.fail(error),
                }
            }
            incoming.unread()
        })
    };
    let outbound = {
        let mut socket = socket.try_clone().unwrap();
        thread::spawn(move || {
            let mut written = 0;
            while let Some(chunk) = block_on(outgoing.next()) {
                socket.write_all(&chunk).unwrap();
                written += chunk.len();
            }
            written
        })
    };
    let destination = spawn_destination(
        MigrationTransport::unix(destination_end.try_clone().unwrap()).unwrap(),
        MigrateFromOptions::default(),
    );
    let source = build(false);
    scribble(&source, &mut Rng::new(31), 300);
    let writer = Writer::start(&source, 32, writer_ranges());
    let info = block_on(source.migrate(transport, pausing(writer, Some(vec![7; 64])))).unwrap();
    let migrated = destination.join().unwrap().unwrap();
    assert_eq!(outbound.join().unwrap() as u64, info.stream_bytes);
    assert!(ram_image(&source) == ram_image(&migrated.manager));
    // The finished migration takes nothing more: the owner's next push fails and it stops
    // feeding (what was fed and not read would be in `unread()`).
    (&destination_end).write_all(b"after").unwrap();
    let unread = inbound.join().unwrap();
    assert!(unread.is_empty(), "{unread:?}");
    let _ = destination_end.shutdown(std::net::Shutdown::Both);
    close(migrated.manager);
    close(source);
}

/// A marker error a stream owner reports, to find again in the migration's error.
#[derive(Debug)]
struct OwnersError(&'static str);

impl std::fmt::Display for OwnersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for OwnersError {}

/// The owner's error the `Aborted` cause of `result` carries.
fn owners_error(result: Result<impl std::fmt::Debug, MigrationError>) -> String {
    match result {
        Err(MigrationError::Aborted { cause, .. }) => {
            let failure = StreamFailure::of(&cause).unwrap_or_else(|| panic!("{cause:?}"));
            let original = failure.original().get_ref().expect("the owner's error");
            original.downcast_ref::<OwnersError>().unwrap().0.to_owned()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_stream_owners_error_is_the_cause_either_side_reports() {
    // Destination: its stream fails after the handshake began.
    let source = small_machine();
    let (source_end, socket) = socket_pair();
    let (transport, StreamEnd { incoming, outgoing }) = channel_transport(CHANNEL_CAPACITY);
    let destination = spawn_destination(transport, MigrateFromOptions::default());
    let migration = thread::spawn(move || {
        let result =
            block_on(source.migrate(source_end, MigrateOptions::new(|| async { Ok(None) })));
        (result.map(|_| ()), source)
    });
    let MigrationTransport {
        mut reader, abort, ..
    } = socket;
    let mut hello = vec![0u8; 12];
    reader.read_exact(&mut hello).unwrap();
    block_on(incoming.push(hello)).unwrap();
    incoming.fail(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        OwnersError("reset by the test"),
    ));
    assert_eq!(
        owners_error(destination.join().unwrap()),
        "reset by the test"
    );
    // The stream owner closes the source's connection.
    drop(outgoing);
    abort.expect("a socket can be shut down")();
    let (result, source) = migration.join().unwrap();
    assert!(result.is_err(), "the source lost its destination");
    close(source);

    // Source: writing fails with the owner's error.
    let source = small_machine();
    let (transport, StreamEnd { incoming, outgoing }) = channel_transport(CHANNEL_CAPACITY);
    outgoing.fail(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        OwnersError("the socket is gone"),
    ));
    let result = block_on(source.migrate(transport, MigrateOptions::new(|| async { Ok(None) })));
    assert_eq!(owners_error(result), "the socket is gone");
    assert!(!source.dirty_tracking().is_active());
    drop(incoming);
    close(source);
}

#[test]
fn failures_of_either_side_reach_the_other_with_their_reason() {
    // The caller's pause fails: the source reports it, the destination is told.
    let source = small_machine();
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    let options = MigrateOptions::new(|| async {
        Err::<Option<Vec<u8>>, PauseError>("the vCPUs would not stop".into())
    });
    match block_on(source.migrate(source_end, options)) {
        Err(MigrationError::Pause { source }) => {
            assert_eq!(source.to_string(), "the vCPUs would not stop")
        }
        other => panic!("{other:?}"),
    }
    match destination.join().unwrap() {
        Err(MigrationError::Aborted { phase, cause }) => {
            // The final round had not begun.
            assert_eq!(phase, MigrationPhase::Rounds);
            assert!(cause.to_string().contains("pause"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!source.dirty_tracking().is_active());

    // The destination expects another machine: it refuses before any page is written.
    let (source_end, destination_end) = socket_pair();
    let other =
        vm_topology::memory::MemoryLayout::new(64 * MIB, &[crate::snapshot::tests::MMIO_GAP], None)
            .unwrap();
    let destination = spawn_destination(
        destination_end,
        MigrateFromOptions {
            layout: Some(other),
            ..MigrateFromOptions::default()
        },
    );
    let sent = block_on(source.migrate(source_end, MigrateOptions::new(|| async { Ok(None) })));
    match (sent, destination.join().unwrap()) {
        (
            Err(MigrationError::Aborted { phase, cause }),
            Err(MigrationError::Snapshot(SnapshotError::Layout { what, .. })),
        ) => {
            assert_eq!(phase, MigrationPhase::Rounds);
            assert!(what.contains("expected"), "{what}");
            assert!(cause.to_string().contains("destination failed"), "{cause}");
        }
        other => panic!("{other:?}"),
    }

    // A window backing that names no window: refused at the final manifest; the source learns
    // that the destination did not complete (phase final, not completing).
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(
        destination_end,
        MigrateFromOptions {
            window_backings: vec![WindowBacking {
                window: "nic".into(),
                offset: Some(0),
                object: memfd(4096, 0),
            }],
            ..MigrateFromOptions::default()
        },
    );
    let sent = block_on(source.migrate(source_end, MigrateOptions::new(|| async { Ok(None) })));
    match (sent, destination.join().unwrap()) {
        (
            Err(MigrationError::Aborted {
                phase: MigrationPhase::Final,
                ..
            }),
            Err(MigrationError::Snapshot(SnapshotError::Layout { what, .. })),
        ) => assert!(what.contains("\"nic\""), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(!source.dirty_tracking().is_active());
    close(source);
}

#[test]
fn stopping_tracking_during_a_migration_fails_it() {
    let source = small_machine();
    let tracking = source.dirty_tracking();
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    let mut options = MigrateOptions::new(|| async { Ok(None) });
    options.progress = Some(Arc::new(move |round, _| {
        if round == 0 {
            block_on(tracking.stop()).unwrap();
        }
    }));
    assert!(matches!(
        block_on(source.migrate(source_end, options)),
        Err(MigrationError::TrackingStopped)
    ));
    assert!(matches!(
        destination.join().unwrap(),
        Err(MigrationError::Aborted { .. })
    ));
    assert!(!source.dirty_tracking().is_active());
    close(source);
}

#[test]
fn pages_decommitted_during_the_rounds_arrive_as_zeros() {
    for private in [false, true] {
        let source = build(private);
        let memory = block_on(source.client().guest_memory()).unwrap();
        let gone = MemoryRange::new(6 * MIB..6 * MIB + 64 * 1024);
        memory.write_at(gone.start(), &[0x77; 64 * 1024]).unwrap();
        memory.write_at(HIGH.start(), &[0x78; 4096]).unwrap();
        drop(memory);
        let (source_end, destination_end) = socket_pair();
        let destination = spawn_destination(destination_end, MigrateFromOptions::default());
        let mut options = MigrateOptions::new(|| async { Ok(None) });
        // A decommit is sent when it is called: a thread calls it when round 0 asks.
        let info = std::thread::scope(|scope| {
            let (ask, asked) = std::sync::mpsc::channel::<()>();
            let (done, decommitted) = std::sync::mpsc::channel::<()>();
            let manager = &source;
            scope.spawn(move || {
                if asked.recv().is_ok() {
                    block_on(manager.decommit_ram(gone)).unwrap();
                    done.send(()).unwrap();
                }
            });
            let ask = parking_lot::Mutex::new(Some(ask));
            let decommitted = parking_lot::Mutex::new(decommitted);
            options.progress = Some(Arc::new(move |round: u32, bytes: u64| {
                // Once round 0 has sent the pages, decommit them.
                if round == 0 && bytes > 0 {
                    if let Some(ask) = ask.lock().take() {
                        ask.send(()).unwrap();
                        decommitted.lock().recv().unwrap();
                    }
                }
            }));
            block_on(source.migrate(source_end, options)).unwrap()
        });
        let migrated = destination.join().unwrap().unwrap();
        assert!(
            migrated.manifest.zero_pages >= 16,
            "{:?} {info:?}",
            migrated.manifest
        );
        let image = ram_image(&migrated.manager);
        assert!(image == ram_image(&source), "private: {private}");
        let at = usize::try_from(gone.start()).unwrap();
        assert!(image[at..at + 64 * 1024].iter().all(|&byte| byte == 0));
        close(migrated.manager);
        close(source);
    }
}

/// Run by the kill tests in a child process: one side of a migration over the Unix socket
/// `$MEMBACKING_MIGRATION_CHILD` (`source:PATH` or `destination:PATH`).
#[test]
#[ignore = "the child process of peers_killed_at_random_points_leave_the_other_side_clean"]
fn migration_child() {
    let Ok(spec) = std::env::var("MEMBACKING_MIGRATION_CHILD") else {
        return;
    };
    let (role, path) = spec.split_once(':').unwrap();
    let transport = MigrationTransport::unix(UnixStream::connect(path).unwrap()).unwrap();
    match role {
        "source" => {
            let source = build(false);
            scribble(&source, &mut Rng::new(u64::from(std::process::id())), 3000);
            let writer = Writer::start(&source, 1, writer_ranges());
            let result = block_on(source.migrate(transport, pausing(writer, None)));
            println!("source finished: {:?}", result.map(|info| info.rounds));
        }
        _ => {
            let result = block_on(GuestMemoryBuilder::migrate_from(
                transport,
                MigrateFromOptions::default(),
            ));
            let outcome = match &result {
                Ok(_) => "completed",
                Err(MigrationError::Aborted { .. }) => "aborted",
                Err(_) => "failed",
            };
            drop(result);
            // What is left of the destination's manager once it has failed (or been dropped).
            println!(
                "destination {outcome}; manager threads left: {}",
                threads_named("memory_manager")
            );
        }
    }
}

/// The threads of this process with this name.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

fn spawn_child(role: &str, path: &std::path::Path) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "migration::tests::migration_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "MEMBACKING_MIGRATION_CHILD",
            format!("{role}:{}", path.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn peers_killed_at_random_points_leave_the_other_side_clean() {
    let dir = crate::snapshot::tests::temp_dir();
    let mut rng = Rng::new(0x4b1d);
    // This process is the source; the destination child is killed.
    let source = build(false);
    scribble(&source, &mut rng, 3000);
    let image = ram_image(&source);
    let data_bytes = 3000 * 4096;
    let mut outcomes = Vec::new();
    for attempt in 0..10 {
        let path = dir.path().join(format!("to-child-{attempt}"));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let child = Arc::new(parking_lot::Mutex::new(spawn_child("destination", &path)));
        let (stream, _) = listener.accept().unwrap();
        let kill = {
            let child = child.clone();
            move || {
                let _ = child.lock().kill();
            }
        };
        // Attempt 0 kills before the handshake; the others at a random point.
        let mode = if attempt == 0 { 0 } else { rng.below(4) };
        let threshold = rng.below(data_bytes);
        if mode == 0 {
            kill();
        }
        let mut options = MigrateOptions::new({
            let kill = kill.clone();
            move || async move {
                if mode == 2 {
                    kill();
                }
                Ok(Some(vec![0; 4096]))
            }
        });
        options.progress = Some(Arc::new({
            let kill = kill.clone();
            move |round, bytes| {
                if (mode == 1 && round == 0 && bytes >= threshold) || (mode == 3 && round > 0) {
                    kill();
                }
            }
        }));
        let result = block_on(source.migrate(MigrationTransport::unix(stream).unwrap(), options));
        let _ = child.lock().wait();
        match &result {
            Ok(info) => outcomes.push(format!("completed in {} rounds", info.rounds)),
            Err(MigrationError::Aborted { phase, .. }) => {
                outcomes.push(format!("aborted in {phase}"))
            }
            Err(other) => panic!("attempt {attempt} (mode {mode}): {other:?}"),
        }
        assert!(
            mode != 0 || result.is_err(),
            "a dead destination cannot complete"
        );
        assert!(!source.dirty_tracking().is_active(), "attempt {attempt}");
        assert!(ram_image(&source) == image, "attempt {attempt}");
    }
    assert!(
        outcomes
            .iter()
            .any(|outcome| outcome.starts_with("aborted")),
        "{outcomes:?}"
    );
    // The source still migrates.
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    block_on(source.migrate(source_end, MigrateOptions::new(|| async { Ok(None) }))).unwrap();
    let migrated = destination.join().unwrap().unwrap();
    assert!(ram_image(&migrated.manager) == image);
    close(migrated.manager);
    close(source);

    // This process is the destination; the source child is killed.
    let mut aborted = 0;
    for attempt in 0..10 {
        let path = dir.path().join(format!("from-child-{attempt}"));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let child = Arc::new(parking_lot::Mutex::new(spawn_child("source", &path)));
        let (stream, _) = listener.accept().unwrap();
        let mode = if attempt == 0 { 0 } else { rng.below(3) };
        let threshold = rng.below(data_bytes);
        if mode == 0 {
            let _ = child.lock().kill();
        }
        let options = MigrateFromOptions {
            progress: Some(Arc::new({
                let child = child.clone();
                move |round, bytes| {
                    if (mode == 1 && round == 0 && bytes >= threshold) || (mode == 2 && round > 0) {
                        let _ = child.lock().kill();
                    }
                }
            })),
            ..MigrateFromOptions::default()
        };
        let result = block_on(GuestMemoryBuilder::migrate_from(
            MigrationTransport::unix(stream).unwrap(),
            options,
        ));
        let _ = child.lock().kill();
        let _ = child.lock().wait();
        match result {
            Ok(migrated) => close(migrated.manager),
            Err(MigrationError::Aborted { .. }) => aborted += 1,
            Err(other) => panic!("attempt {attempt} (mode {mode}): {other:?}"),
        }
        assert!(mode != 0 || aborted > 0);
    }
    assert!(aborted > 0);

    // This process is the source and drops the connection at random points; the destination
    // child reports that nothing of its manager is left.
    let source = build(false);
    scribble(&source, &mut rng, 3000);
    for attempt in 0..6 {
        let path = dir.path().join(format!("cut-{attempt}"));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut child = spawn_child("destination", &path);
        let (stream, _) = listener.accept().unwrap();
        let cut = stream.try_clone().unwrap();
        let threshold = rng.below(data_bytes);
        let last = rng.below(2) == 0;
        let mut options = MigrateOptions::new(|| async { Ok(None) });
        options.progress = Some(Arc::new(move |round, bytes| {
            if (round == 0 && bytes >= threshold) || (last && round > 0) {
                let _ = cut.shutdown(std::net::Shutdown::Both);
            }
        }));
        let result = block_on(source.migrate(MigrationTransport::unix(stream).unwrap(), options));
        let mut report = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut report)
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "attempt {attempt}: {report}"
        );
        if result.is_err() {
            assert!(
                report.contains("destination aborted; manager threads left: 0"),
                "attempt {attempt}: {report}"
            );
        } else {
            assert!(report.contains("destination completed"), "{report}");
        }
        assert!(!source.dirty_tracking().is_active());
    }
    close(source);
}

#[cfg(target_arch = "x86_64")]
mod kvm {
    use super::*;
    use crate::test_guest::KvmGuest;

    /// Where the guest writes: 1 MiB below the gap (past its code and page tables) and 1 MiB
    /// above it.
    const GUEST_LOW: u64 = 8 * MIB;
    const GUEST_HIGH: u64 = HIGH.start();
    const GUEST_PAGES: u64 = 256;

    #[test]
    fn a_running_kvm_guest_migrates_and_its_checksums_match() {
        let test = "a_running_kvm_guest_migrates_and_its_checksums_match";
        let source = build(false);
        let Some(guest) = KvmGuest::attach(test, &source) else {
            return;
        };
        scribble(&source, &mut Rng::new(77), 0);
        let guest = Arc::new(guest);
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped_sender, stopped) = mpsc::channel::<u64>();
        // The guest keeps writing its pattern, with a new key each pass, until paused.
        let running = {
            let guest = guest.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut pass = 0u64;
                loop {
                    let page = pass % GUEST_PAGES;
                    guest.fill(GUEST_LOW + page * 4096, 512, pass);
                    guest.fill(GUEST_HIGH + page * 4096, 512, !pass);
                    pass += 1;
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                stopped_sender.send(pass).unwrap();
            })
        };
        // A writer thread in RAM the guest does not use.
        let writer = Writer::start(
            &source,
            78,
            vec![
                MemoryRange::new(12 * MIB..16 * MIB),
                MemoryRange::new(HIGH.start() + 4 * MIB..HIGH.end()),
            ],
        );
        let (window, region) = source
            .device_memory_mapper()
            .new_region(0x2000, "fb".into())
            .unwrap();
        let fb = memfd(0x2000, 0x3c);
        block_on(region.map(0, fb.as_fd(), 0, 0x2000, true)).unwrap();
        let (changed, changes_done) = mpsc::channel::<()>();
        let mut options = MigrateOptions::new({
            let mut writer = writer;
            move || async move {
                changes_done.recv().unwrap();
                stop.store(true, Ordering::SeqCst);
                let passes = stopped.recv().unwrap();
                writer.stop();
                Ok(Some(passes.to_le_bytes().to_vec()))
            }
        });
        let (round_zero, started) = mpsc::channel::<()>();
        let round_zero = parking_lot::Mutex::new(Some(round_zero));
        options.progress = Some(Arc::new(move |_, _| {
            if let Some(sender) = round_zero.lock().take() {
                let _ = sender.send(());
            }
        }));
        let changer = {
            let control = source.ram_visibility_control();
            thread::spawn(move || {
                started.recv().unwrap();
                block_on(control.set_ram_visibility(VGA, RamVisibility::Unmapped)).unwrap();
                block_on(window.map_to_guest(WINDOW_GPA, true)).unwrap();
                changed.send(()).unwrap();
                window
            })
        };
        let (source_end, destination_end) = socket_pair();
        let destination = spawn_destination(
            destination_end,
            MigrateFromOptions {
                window_backings: vec![WindowBacking {
                    window: "fb".into(),
                    offset: Some(0),
                    object: fb.try_clone().unwrap(),
                }],
                ..MigrateFromOptions::default()
            },
        );
        let info = block_on(source.migrate(source_end, options)).unwrap();
        running.join().unwrap();
        let _window = changer.join().unwrap();
        let migrated = destination.join().unwrap().unwrap();
        let passes = u64::from_le_bytes(migrated.payload.clone().unwrap().try_into().unwrap());
        assert!(passes > 0, "the guest ran during the migration");
        assert!(info.rounds >= 2);

        let expected = [
            guest.sum(GUEST_LOW, GUEST_PAGES * 512),
            guest.sum(GUEST_HIGH, GUEST_PAGES * 512),
        ];
        let image = ram_image(&source);
        assert!(image == ram_image(&migrated.manager), "RAM differs");
        assert_eq!(regions(&source), regions(&migrated.manager));
        drop(guest);

        // The destination's guest reads the same sums (the fixture rewrites the same code and
        // page tables, so the whole image stays equal).
        let Some(moved) = KvmGuest::attach(test, &migrated.manager) else {
            return;
        };
        assert_eq!(
            [
                moved.sum(GUEST_LOW, GUEST_PAGES * 512),
                moved.sum(GUEST_HIGH, GUEST_PAGES * 512)
            ],
            expected
        );
        assert!(image == ram_image(&migrated.manager));
        drop(moved);
        drop(migrated.windows);
        close(migrated.manager);
        close(source);
    }
}

#[test]
fn private_ram_with_an_unmapped_region_migrates() {
    let source = build(true);
    scribble(&source, &mut Rng::new(3), 100);
    let control = source.ram_visibility_control();
    block_on(control.set_ram_visibility(HIGH, RamVisibility::Unmapped)).unwrap();
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    let info =
        block_on(source.migrate(source_end, MigrateOptions::new(|| async { Ok(None) }))).unwrap();
    let migrated = destination.join().unwrap().unwrap();
    assert!(info.bytes > 0);
    assert!(ram_image(&source) == ram_image(&migrated.manager));
    assert_eq!(regions(&source), regions(&migrated.manager));
    close(migrated.manager);
    close(source);
}

#[test]
fn an_error_frame_carries_the_os_error_behind_a_failure() {
    // A destination out of descriptors told the source only "duplicate the RAM object failed":
    // the errno, and so what to do, was left out of the Error frame.
    let error = MigrationError::Snapshot(SnapshotError::Io {
        op: "duplicate",
        path: "the RAM object".into(),
        source: std::io::Error::from_raw_os_error(libc::EMFILE),
    });
    let cancel = Cancel::new(None);
    let (_, frame) = error.settle(Side::Destination, MigrationPhase::Rounds, &cancel);
    let frame = frame.expect("the destination's own failure is reported to the source");
    let peer = wire::PeerError::decode(&frame[12..frame.len() - 4]).unwrap();
    assert_eq!(peer.kind, wire::ErrorKind::Failed);
    assert_eq!(
        peer.message,
        format!(
            "duplicate the RAM object failed: {}",
            std::io::Error::from_raw_os_error(libc::EMFILE)
        )
    );
    // What the source reports quotes it.
    let reported = peer_failed(Side::Source, MigrationPhase::Rounds, peer);
    let MigrationError::Aborted { cause, .. } = reported else {
        panic!("{reported:?}")
    };
    assert!(cause.to_string().contains("Too many open files"), "{cause}");
    // A message that already says its source does not say it twice.
    let pause = MigrationError::Io {
        op: "start".into(),
        source: std::io::Error::other("no thread"),
    };
    let text = with_sources(&pause);
    assert_eq!(text.matches("no thread").count(), 1, "{text}");
}

#[test]
fn a_source_that_cannot_start_its_stream_threads_fails_at_once() {
    // Out of threads, a source whose receiver thread did not start waited for the handshake
    // answer for ever (its writer thread kept the event channel open), even after the stream
    // was closed; one whose writer did not start must not wait either.
    let source = build(false);
    for name in ["migrate-receiver", "migrate-writer"] {
        let (source_end, destination_end) = socket_pair();
        let destination = spawn_destination(destination_end, MigrateFromOptions::default());
        let sent = source.migrate(source_end, MigrateOptions::new(|| async { Ok(None) }));
        let (done, finished) = mpsc::channel();
        thread::spawn(move || {
            // The migration's thread starts when the future is first polled, here.
            FAIL_SPAWN.with(|fail| fail.set(Some(name)));
            let _ = done.send(block_on(sent));
        });
        match finished
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{name}: the source did not settle in 60 s"))
        {
            Err(MigrationError::Io { op, source }) => {
                assert_eq!(op, "start the migration's stream threads", "{name}");
                assert_eq!(source.raw_os_error(), Some(libc::EAGAIN), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        match destination.join().unwrap() {
            Err(MigrationError::Aborted { .. }) | Err(MigrationError::Protocol { .. }) => {}
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
        assert!(!source.dirty_tracking().is_active(), "{name}");
    }
    // Nothing is left in the way of the next migration.
    let (source_end, destination_end) = socket_pair();
    let destination = spawn_destination(destination_end, MigrateFromOptions::default());
    block_on(source.migrate(source_end, MigrateOptions::new(|| async { Ok(None) }))).unwrap();
    close(destination.join().unwrap().unwrap().manager);
    close(source);
}
