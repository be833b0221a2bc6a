//! The byte stream a migration runs over: [`MigrationTransport`], a blocking reader half and
//! writer half (each used by one thread of the migration) and an abort hook that unblocks
//! both.
//!
//! - [`MigrationTransport::unix`] and [`MigrationTransport::tcp`] wrap a connected socket.
//! - [`channel_transport`] is for a stream the migration cannot read itself, such as a Node
//!   `Duplex`: it returns the transport and a [`StreamEnd`] through which the owner of the
//!   stream feeds what it receives ([`IncomingSender::push`], awaited: it resolves when the
//!   migration has room) and takes what to send ([`OutgoingReceiver::next`]). Both directions
//!   hold at most a fixed number of bytes (one chunk more when that chunk alone is larger),
//!   so a slow or paused stream stops the migration instead of making it buffer.

use futures::task::AtomicWaker;
use parking_lot::Condvar;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

/// Unblocks both halves of a transport (e.g. shuts the socket down).
pub type Abort = Arc<dyn Fn() + Send + Sync>;

/// A connected byte stream: its two halves, used from two threads, and how to unblock them.
pub struct MigrationTransport {
    /// What the peer sends.
    pub reader: Box<dyn Read + Send>,
    /// What goes to the peer.
    pub writer: Box<dyn Write + Send>,
    /// Called when the migration stops early (failure or cancel): must make blocked reads
    /// and writes of both halves return.
    pub abort: Option<Abort>,
}

impl std::fmt::Debug for MigrationTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationTransport")
            .field("abort", &self.abort.is_some())
            .finish_non_exhaustive()
    }
}

impl MigrationTransport {
    /// A transport of any two halves (no abort hook: a blocked half waits for its peer).
    pub fn new(reader: impl Read + Send + 'static, writer: impl Write + Send + 'static) -> Self {
        Self {
            reader: Box::new(reader),
            writer: Box::new(writer),
            abort: None,
        }
    }

    /// Sets the abort hook.
    pub fn with_abort(mut self, abort: Abort) -> Self {
        self.abort = Some(abort);
        self
    }

    /// A connected Unix stream socket (aborting shuts it down).
    pub fn unix(stream: UnixStream) -> io::Result<Self> {
        let writer = stream.try_clone()?;
        let control = stream.try_clone()?;
        Ok(Self::new(stream, writer).with_abort(Arc::new(move || {
            let _ = control.shutdown(std::net::Shutdown::Both);
        })))
    }

    /// A connected TCP socket (`TCP_NODELAY` set; aborting shuts it down).
    pub fn tcp(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let control = stream.try_clone()?;
        Ok(Self::new(stream, writer).with_abort(Arc::new(move || {
            let _ = control.shutdown(std::net::Shutdown::Both);
        })))
    }
}

/// The stream's own error, shared by every read and write of a channel transport that fails
/// because of it: each gets an `io::Error` of the same kind wrapping this, so whoever reports
/// the failure can reach the original error (for a Node stream, the JavaScript error it
/// emitted) through [`StreamFailure::original`].
#[derive(Debug, Clone)]
pub struct StreamFailure(Arc<io::Error>);

impl StreamFailure {
    /// The error the stream's owner reported.
    pub fn original(&self) -> &io::Error {
        &self.0
    }

    /// An `io::Error` of the original's kind carrying this failure.
    fn to_io(&self) -> io::Error {
        io::Error::new(self.0.kind(), self.clone())
    }

    /// The failure an `io::Error` carries, if it is one.
    pub fn of(error: &io::Error) -> Option<&StreamFailure> {
        error.get_ref()?.downcast_ref::<StreamFailure>()
    }

    /// A second `io::Error` like `error` (`io::Error` is not `Clone`): the same stream failure
    /// when it carries one, else the same kind and message.
    pub fn duplicate(error: &io::Error) -> io::Error {
        match Self::of(error) {
            Some(failure) => failure.to_io(),
            None => io::Error::new(error.kind(), error.to_string()),
        }
    }
}

impl std::fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StreamFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .get_ref()
            .map(|inner| inner as &(dyn std::error::Error + 'static))
    }
}

/// Why a pipe direction closed.
#[derive(Debug, Clone)]
enum Closed {
    /// The writing side finished (end of stream).
    End,
    /// The stream failed.
    Failed(StreamFailure),
}

impl Closed {
    fn failed(error: io::Error) -> Self {
        Closed::Failed(StreamFailure(Arc::new(error)))
    }

    fn error(&self) -> io::Error {
        match self {
            Closed::End => io::Error::new(io::ErrorKind::BrokenPipe, "the stream was closed"),
            Closed::Failed(failure) => failure.to_io(),
        }
    }
}

struct PipeState {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already read.
    head: usize,
    bytes: usize,
    /// Set by the writing side: no more data after what is queued.
    writer_closed: Option<Closed>,
    /// Set by the reading side: writes fail.
    reader_closed: Option<Closed>,
}

/// One direction: a queue of chunks holding at most `capacity` bytes (or one larger chunk).
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
    capacity: usize,
    /// Wakes an async reader (outgoing direction) or writer (incoming direction).
    waker: AtomicWaker,
}

impl Pipe {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(PipeState {
                chunks: VecDeque::new(),
                head: 0,
                bytes: 0,
                writer_closed: None,
                reader_closed: None,
            }),
            changed: Condvar::new(),
            capacity: capacity.max(1),
            waker: AtomicWaker::new(),
        })
    }

    fn notify(&self) {
        self.changed.notify_all();
        self.waker.wake();
    }

    /// Queues `chunk` if there is room: `Ok(None)` done, `Ok(Some(chunk))` full, `Err` closed.
    fn try_push(&self, chunk: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        let mut state = self.state.lock();
        if let Some(closed) = &state.reader_closed {
            return Err(closed.error());
        }
        if state.writer_closed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the end of the stream",
            ));
        }
        if state.bytes > 0 && state.bytes + chunk.len() > self.capacity {
            return Ok(Some(chunk));
        }
        state.bytes += chunk.len();
        state.chunks.push_back(chunk);
        drop(state);
        self.notify();
        Ok(None)
    }

    /// Takes up to `max` bytes of the first chunk (or the whole chunk when `max` is `None`):
    /// `Ok(None)` when nothing is queued yet, `Ok(Some(empty))` at the end of the stream.
    fn try_pop(&self, into: Option<&mut [u8]>) -> io::Result<Option<PopResult>> {
        let mut state = self.state.lock();
        if state.bytes == 0 {
            if let Some(closed) = &state.reader_closed {
                return Err(closed.error());
            }
            return match &state.writer_closed {
                Some(Closed::End) => Ok(Some(PopResult::End)),
                Some(closed) => Err(closed.error()),
                None => Ok(None),
            };
        }
        let result = match into {
            Some(buffer) => {
                let head = state.head;
                let chunk = &state.chunks[0];
                let len = buffer.len().min(chunk.len() - head);
                buffer[..len].copy_from_slice(&chunk[head..head + len]);
                state.head += len;
                state.bytes -= len;
                if state.head == state.chunks[0].len() {
                    state.chunks.pop_front();
                    state.head = 0;
                }
                PopResult::Copied(len)
            }
            None => {
                let head = std::mem::take(&mut state.head);
                let mut chunk = state.chunks.pop_front().unwrap_or_default();
                state.bytes -= chunk.len() - head;
                if head > 0 {
                    chunk.drain(..head);
                }
                PopResult::Chunk(chunk)
            }
        };
        drop(state);
        self.notify();
        Ok(Some(result))
    }

    fn close_writer(&self, closed: Closed) {
        self.state.lock().writer_closed.get_or_insert(closed);
        self.notify();
    }

    /// Stops reading: writes fail from now on; the queued bytes are dropped unless `keep`.
    fn close_reader(&self, closed: Closed, keep: bool) {
        let mut state = self.state.lock();
        state.reader_closed.get_or_insert(closed);
        if !keep {
            state.chunks.clear();
            state.bytes = 0;
            state.head = 0;
        }
        drop(state);
        self.notify();
    }

    /// The bytes queued and not read, taken.
    fn take_unread(&self) -> Vec<u8> {
        let mut state = self.state.lock();
        let head = std::mem::take(&mut state.head);
        let mut unread = Vec::with_capacity(state.bytes);
        for (index, chunk) in state.chunks.drain(..).enumerate() {
            unread.extend_from_slice(if index == 0 { &chunk[head..] } else { &chunk });
        }
        state.bytes = 0;
        unread
    }
}

enum PopResult {
    Copied(usize),
    Chunk(Vec<u8>),
    End,
}

/// The migration's reading half of the incoming direction.
struct PipeReader(Arc<Pipe>);

impl Read for PipeReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        let pipe = &self.0;
        loop {
            if let Some(result) = pipe.try_pop(Some(buffer))? {
                return Ok(match result {
                    PopResult::Copied(len) => len,
                    _ => 0,
                });
            }
            let mut state = pipe.state.lock();
            if state.bytes == 0 && state.writer_closed.is_none() && state.reader_closed.is_none() {
                pipe.changed.wait(&mut state);
            }
        }
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.0.close_reader(
            Closed::failed(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the migration stopped reading",
            )),
            true,
        );
    }
}

/// The migration's writing half of the outgoing direction.
struct PipeWriter(Arc<Pipe>);

impl Write for PipeWriter {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        let pipe = &self.0;
        let mut chunk = buffer.to_vec();
        loop {
            match pipe.try_push(chunk)? {
                None => return Ok(buffer.len()),
                Some(back) => chunk = back,
            }
            let mut state = pipe.state.lock();
            let full = state.bytes > 0 && state.bytes + chunk.len() > pipe.capacity;
            if full && state.reader_closed.is_none() && state.writer_closed.is_none() {
                pipe.changed.wait(&mut state);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.0.close_writer(Closed::End);
    }
}

/// The stream owner's side of a [`channel_transport`].
#[derive(Debug)]
pub struct StreamEnd {
    /// Feed what the stream receives here.
    pub incoming: IncomingSender,
    /// Write what this yields to the stream.
    pub outgoing: OutgoingReceiver,
}

/// Feeds the migration what the stream received (cheap to clone).
///
/// When the last clone goes without [`end`](Self::end) or [`fail`](Self::fail) (its owner went
/// away: a worker thread terminated mid-migration, the stream's object collected), the
/// migration reads what is queued and then fails (`BrokenPipe`): without that it would wait
/// for bytes no one feeds any more, holding its manager, its threads and its memory forever.
#[derive(Clone)]
pub struct IncomingSender(Arc<Feeder>);

/// The pipe an [`IncomingSender`] feeds; failed when the last sender goes.
struct Feeder(Arc<Pipe>);

impl Drop for Feeder {
    fn drop(&mut self) {
        self.0.close_writer(Closed::failed(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the stream's owner is gone (nothing feeds the migration any more)",
        )));
    }
}

impl std::fmt::Debug for IncomingSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingSender").finish_non_exhaustive()
    }
}

impl IncomingSender {
    /// The pipe this sender feeds.
    fn pipe(&self) -> &Arc<Pipe> {
        &self.0 .0
    }

    /// Hands over a received chunk. Resolves when the migration has room for it (at once
    /// while it has): read nothing more from the stream until it does. Fails when the
    /// migration stopped reading (it finished or failed): stop feeding it.
    pub fn push(&self, chunk: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send + 'static {
        Push {
            pipe: self.pipe().clone(),
            chunk: Some(chunk),
        }
    }

    /// The stream ended (its `end` event): the migration reads what is queued, then sees
    /// the end (an early end is a lost connection).
    pub fn end(&self) {
        self.pipe().close_writer(Closed::End);
    }

    /// What was fed but not read by a migration that has finished: the stream's bytes after
    /// the migration's last frame, to hand back to the stream (`unshift`) when the caller
    /// goes on using it.
    pub fn unread(&self) -> Vec<u8> {
        self.pipe().take_unread()
    }

    /// Queues a received chunk if the migration has room for it now: `Ok(None)` when queued,
    /// `Ok(Some(chunk))` (handed back) when it has not (then [`push`](Self::push) it and
    /// read nothing more until that resolves). Fails when the migration stopped reading.
    pub fn offer(&self, chunk: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        self.pipe().try_push(chunk)
    }

    /// The stream failed (its `error` event): the migration fails with this error as the
    /// cause (reachable through [`StreamFailure`]), after reading what is queued.
    pub fn fail(&self, error: io::Error) {
        self.pipe().close_writer(Closed::failed(error));
    }
}

struct Push {
    pipe: Arc<Pipe>,
    chunk: Option<Vec<u8>>,
}

impl Future for Push {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(chunk) = self.chunk.take() else {
            return Poll::Ready(Ok(()));
        };
        let pipe = self.pipe.clone();
        pipe.waker.register(context.waker());
        match pipe.try_push(chunk) {
            Err(error) => Poll::Ready(Err(error)),
            Ok(None) => Poll::Ready(Ok(())),
            Ok(Some(back)) => {
                self.chunk = Some(back);
                Poll::Pending
            }
        }
    }
}

/// Yields what the migration writes, for the stream to send.
pub struct OutgoingReceiver(Arc<Pipe>);

impl std::fmt::Debug for OutgoingReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingReceiver").finish_non_exhaustive()
    }
}

impl OutgoingReceiver {
    /// The next chunk to write, or `None` when the migration has finished writing (end the
    /// stream then). Write each chunk before asking for the next, honouring the stream's
    /// backpressure (`write()` returning false: wait for `drain`): the migration waits while
    /// the chunks it has queued are not taken.
    pub fn next(&self) -> impl Future<Output = Option<Vec<u8>>> + Send + 'static {
        Next(self.0.clone())
    }

    /// The next chunk if one is queued: `Some(Some(chunk))`, `Some(None)` when the migration
    /// has finished writing, `None` when nothing is queued yet (then wait with
    /// [`next`](Self::next)).
    pub fn try_next(&self) -> Option<Option<Vec<u8>>> {
        match self.0.try_pop(None) {
            Ok(Some(PopResult::Chunk(chunk))) => Some(Some(chunk)),
            Ok(Some(_)) | Err(_) => Some(None),
            Ok(None) => None,
        }
    }

    /// The stream can take no more writes (closed or failed): the migration's writes fail
    /// with this error (reachable through [`StreamFailure`]).
    pub fn fail(&self, error: io::Error) {
        self.0.close_reader(Closed::failed(error), false);
    }
}

impl Drop for OutgoingReceiver {
    fn drop(&mut self) {
        self.0.close_reader(
            Closed::failed(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream's writer is gone",
            )),
            false,
        );
    }
}

struct Next(Arc<Pipe>);

impl Future for Next {
    type Output = Option<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        self.0.waker.register(context.waker());
        match self.0.try_pop(None) {
            Ok(Some(PopResult::Chunk(chunk))) => Poll::Ready(Some(chunk)),
            Ok(Some(_)) | Err(_) => Poll::Ready(None),
            Ok(None) => Poll::Pending,
        }
    }
}

/// The default bound of each direction of a [`channel_transport`]: 4 MiB.
pub const CHANNEL_CAPACITY: usize = 4 << 20;

/// A transport whose bytes the caller moves (see the module documentation): the migration
/// side and the stream owner's side. Each direction holds at most `capacity` bytes (plus one
/// chunk larger than that on its own). Aborting fails both directions.
pub fn channel_transport(capacity: usize) -> (MigrationTransport, StreamEnd) {
    let incoming = Pipe::new(capacity);
    let outgoing = Pipe::new(capacity);
    let abort: Abort = {
        let incoming = incoming.clone();
        let outgoing = outgoing.clone();
        Arc::new(move || {
            let aborted = || {
                Closed::failed(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the migration was aborted",
                ))
            };
            incoming.close_reader(aborted(), false);
            outgoing.close_writer(aborted());
        })
    };
    let transport = MigrationTransport {
        reader: Box::new(PipeReader(incoming.clone())),
        writer: Box::new(PipeWriter(outgoing.clone())),
        abort: Some(abort),
    };
    let end = StreamEnd {
        incoming: IncomingSender(Arc::new(Feeder(incoming))),
        outgoing: OutgoingReceiver(outgoing),
    };
    (transport, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn bytes_pass_both_ways_in_order_with_the_end() {
        let (mut transport, end) = channel_transport(16);
        let writer = std::thread::spawn(move || {
            transport.writer.write_all(b"hello, stream").unwrap();
            drop(transport.writer);
            let mut received = Vec::new();
            transport.reader.read_to_end(&mut received).unwrap();
            received
        });
        let mut sent = Vec::new();
        while let Some(chunk) = block_on(end.outgoing.next()) {
            sent.extend(chunk);
        }
        assert_eq!(sent, b"hello, stream");
        block_on(end.incoming.push(b"abc".to_vec())).unwrap();
        block_on(end.incoming.push(b"defgh".to_vec())).unwrap();
        end.incoming.end();
        assert_eq!(writer.join().unwrap(), b"abcdefgh");
    }

    #[test]
    fn a_slow_stream_holds_back_the_migration_instead_of_buffering() {
        let (mut transport, end) = channel_transport(64);
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let written = written.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    transport.writer.write_all(&[7u8; 40]).unwrap();
                    written.fetch_add(40, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        // Nothing is taken: the writer stops once the queue is full (64 bytes hold one
        // 40-byte chunk plus one more only while it fits).
        let mut taken = 0;
        while taken < 4000 {
            let queued = end.outgoing.0.state.lock().bytes;
            assert!(queued <= 64, "{queued} bytes queued");
            let chunk = block_on(end.outgoing.next()).unwrap();
            taken += chunk.len();
            let ahead = written.load(std::sync::atomic::Ordering::SeqCst);
            // At most what was taken plus what the queue holds plus the chunk being written.
            assert!(ahead <= taken + 64 + 40, "{ahead} written, {taken} taken");
        }
        writer.join().unwrap();
        // The incoming direction: a push beyond the bound waits until the migration reads.
        let (mut transport, end) = channel_transport(8);
        block_on(end.incoming.push(vec![1; 8])).unwrap();
        let mut second = Box::pin(end.incoming.push(vec![2; 8]));
        let waker = futures::task::noop_waker();
        let mut context = Context::from_waker(&waker);
        assert!(second.as_mut().poll(&mut context).is_pending());
        let mut buffer = [0u8; 8];
        transport.reader.read_exact(&mut buffer).unwrap();
        assert_eq!(buffer, [1; 8]);
        assert!(second.as_mut().poll(&mut context).is_ready());
    }

    #[test]
    fn offer_and_try_next_answer_at_once() {
        let (mut transport, end) = channel_transport(8);
        assert_eq!(end.incoming.offer(vec![1; 6]).unwrap(), None);
        // No room for 6 more: handed back untouched.
        assert_eq!(end.incoming.offer(vec![2; 6]).unwrap(), Some(vec![2; 6]));
        let mut buffer = [0u8; 6];
        transport.reader.read_exact(&mut buffer).unwrap();
        assert_eq!(end.incoming.offer(vec![2; 6]).unwrap(), None);
        assert_eq!(end.outgoing.try_next(), None);
        transport.writer.write_all(b"abc").unwrap();
        assert_eq!(end.outgoing.try_next(), Some(Some(b"abc".to_vec())));
        assert_eq!(end.outgoing.try_next(), None);
        drop(transport);
        assert_eq!(end.outgoing.try_next(), Some(None));
        assert!(end.incoming.offer(vec![3]).is_err());
    }

    #[test]
    fn what_a_finished_migration_did_not_read_is_handed_back() {
        let (mut transport, end) = channel_transport(1024);
        block_on(end.incoming.push(b"abc".to_vec())).unwrap();
        block_on(end.incoming.push(b"defgh".to_vec())).unwrap();
        let mut first = [0u8; 4];
        transport.reader.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"abcd");
        drop(transport);
        assert!(block_on(end.incoming.push(b"late".to_vec())).is_err());
        assert_eq!(end.incoming.unread(), b"efgh");
        assert_eq!(end.incoming.unread(), b"");
    }

    #[test]
    fn a_feeder_gone_without_an_end_fails_the_migration_after_what_is_queued() {
        let (mut transport, end) = channel_transport(1024);
        let other = end.incoming.clone();
        block_on(end.incoming.push(b"abc".to_vec())).unwrap();
        let (done, result) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut fed = [0u8; 4];
            transport.reader.read_exact(&mut fed).unwrap();
            // Waits until the last feeder goes (before: forever).
            let _ = done.send((fed, transport.reader.read(&mut [0; 4])));
        });
        // One clone going is not the end: the other still feeds.
        drop(end);
        block_on(other.push(b"d".to_vec())).unwrap();
        drop(other);
        let (fed, after) = result
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the migration's read still waits for a feeder that is gone");
        // What was queued before the last feeder went is read first.
        assert_eq!(&fed, b"abcd");
        let error = after.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        assert!(error.to_string().contains("owner is gone"), "{error}");
        reader.join().unwrap();
    }

    #[test]
    fn failures_reach_the_other_side() {
        let (mut transport, end) = channel_transport(1024);
        end.incoming
            .fail(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset"));
        let error = transport.reader.read(&mut [0; 4]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        assert!(error.to_string().contains("peer reset"));
        // Every read that fails because of it reaches the very error the owner gave.
        let again = transport.reader.read(&mut [0; 4]).unwrap_err();
        for error in [&error, &again] {
            let failure = StreamFailure::of(error).expect("the stream's own failure");
            assert_eq!(failure.original().to_string(), "peer reset");
        }
        end.outgoing
            .fail(io::Error::new(io::ErrorKind::BrokenPipe, "socket closed"));
        let error = transport.writer.write(b"x").unwrap_err();
        assert!(error.to_string().contains("socket closed"));
        // Aborting unblocks a reader waiting for data and ends the outgoing side.
        let (transport, end) = channel_transport(1024);
        let MigrationTransport {
            mut reader, abort, ..
        } = transport;
        let blocked = std::thread::spawn(move || reader.read(&mut [0; 4]));
        abort.unwrap()();
        let error = blocked.join().unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(block_on(end.outgoing.next()), None);
        assert!(block_on(end.incoming.push(vec![1])).is_err());
    }
}
