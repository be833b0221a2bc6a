//! The migration stream's frames, version 1 (`docs/migration.md` is the reference): encoding,
//! decoding and validation, and a reader that frames a byte stream. No threads, no guest
//! memory.
//!
//! Every frame is a 12-byte header — `type: u32`, `length: u32` (of the payload), the CRC-32C
//! of those 8 bytes — then `length` payload bytes, then a 4-byte CRC-32C of the payload's
//! *checked part*: the whole payload, except in a data [`FrameType::Extent`] frame, whose page
//! bytes are covered by the extent record's own per-page CRC-32Cs (which the trailer covers),
//! so each page is checksummed once. The header has its own checksum so a damaged length is
//! refused before it is trusted: a flipped bit can neither make a reader wait for bytes that
//! never come nor size an allocation. All integers are little-endian.

use crate::snapshot::format;
use crate::snapshot::format::Extent;
use crate::snapshot::format::ExtentKind;
use std::io;
use std::io::Read;

/// The stream protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The magic at the start of [`FrameType::Hello`] and [`FrameType::HelloAck`] payloads.
pub const MAGIC: [u8; 8] = *b"MBMIGRAT";
/// The largest payload a frame may have (16 MiB): larger lengths are refused unread.
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Trailer bytes after the payload.
pub const TRAILER_LEN: usize = 4;
/// The page size of the stream (the snapshot format's).
pub const PAGE: usize = 4096;
const PAGE_SIZE: u64 = format::PAGE_SIZE;
const HELLO_LEN: usize = 24;

/// The kinds of frames. The stream's grammar is in `docs/migration.md`.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum FrameType {
    /// Source → destination, first: magic, protocol version, page size, snapshot format version.
    Hello = 1,
    /// Destination → source: the same fields, accepted.
    HelloAck = 2,
    /// Source → destination, after the handshake: the machine (a snapshot manifest).
    Manifest = 3,
    /// Source → destination: a round starts (its number, and whether it is the final one).
    RoundBegin = 4,
    /// Source → destination: one extent record, its page CRC-32Cs and its pages.
    Extent = 5,
    /// Source → destination: a round ends (its number and what it carried).
    RoundEnd = 6,
    /// Destination → source: a pre-copy round was received, verified and written.
    RoundAck = 7,
    /// Source → destination, in the final round only, at most once: opaque caller bytes.
    UserPayload = 8,
    /// Source → destination, last: the machine as it was when the guest was paused.
    FinalManifest = 9,
    /// Destination → source, last: everything is applied; the destination owns the guest.
    Complete = 10,
    /// Either way: the sender failed and stops (kind, stream offset, message).
    Error = 11,
}

impl FrameType {
    fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => FrameType::Hello,
            2 => FrameType::HelloAck,
            3 => FrameType::Manifest,
            4 => FrameType::RoundBegin,
            5 => FrameType::Extent,
            6 => FrameType::RoundEnd,
            7 => FrameType::RoundAck,
            8 => FrameType::UserPayload,
            9 => FrameType::FinalManifest,
            10 => FrameType::Complete,
            11 => FrameType::Error,
            _ => return None,
        })
    }
}

/// A frame that does not decode: where it starts in the stream, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// The stream offset of the frame's first byte.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

/// A frame read: its type, where it starts in the stream, and its payload's length.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The type.
    pub frame_type: FrameType,
    /// The stream offset of its first byte.
    pub offset: u64,
    /// The payload's length.
    pub len: usize,
}

/// Reading a frame failed.
#[derive(Debug)]
pub enum ReadError {
    /// The stream ended cleanly between two frames.
    Closed,
    /// The stream failed, or ended inside a frame (`UnexpectedEof`).
    Io(io::Error),
    /// The bytes are not a valid frame.
    Bad(BadFrame),
}

/// Appends the header of a frame of `frame_type` with a `len`-byte payload.
pub fn push_header(out: &mut Vec<u8>, frame_type: FrameType, len: usize) {
    let start = out.len();
    out.extend_from_slice(&(frame_type as u32).to_le_bytes());
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    let crc = crc32c::crc32c(&out[start..start + 8]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// A whole frame of `frame_type` carrying `payload` (all of it checked by the trailer).
pub fn frame(frame_type: FrameType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    push_header(&mut out, frame_type, payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out
}

/// The handshake fields of [`FrameType::Hello`] and [`FrameType::HelloAck`].
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version.
    pub version: u32,
    /// The page size (4096).
    pub page_size: u32,
    /// The snapshot format version of the manifests and extent records.
    pub snapshot_version: u32,
}

impl Hello {
    /// This build's handshake.
    pub fn ours() -> Self {
        Self {
            version: PROTOCOL_VERSION,
            page_size: 4096,
            snapshot_version: format::VERSION,
        }
    }

    /// The frame carrying it.
    pub fn encode(&self, frame_type: FrameType) -> Vec<u8> {
        let mut payload = Vec::with_capacity(HELLO_LEN);
        payload.extend_from_slice(&MAGIC);
        payload.extend_from_slice(&self.version.to_le_bytes());
        payload.extend_from_slice(&self.page_size.to_le_bytes());
        payload.extend_from_slice(&self.snapshot_version.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        frame(frame_type, &payload)
    }

    /// Decodes a handshake payload (any version: the caller compares it).
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        if payload.len() != HELLO_LEN || payload[..8] != MAGIC {
            return Err(format!(
                "not a membacking migration handshake ({} bytes, magic {:?})",
                payload.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(8)])
            ));
        }
        Ok(Self {
            version: le_u32(&payload[8..12]),
            page_size: le_u32(&payload[12..16]),
            snapshot_version: le_u32(&payload[16..20]),
        })
    }

    /// Why a peer's handshake is not acceptable, if it is not.
    pub fn mismatch(&self) -> Option<String> {
        let ours = Hello::ours();
        if self.version != ours.version {
            return Some(format!(
                "the peer speaks migration protocol version {}, this build version {}: run the same membacking version on both sides",
                self.version, ours.version
            ));
        }
        if self.page_size != ours.page_size || self.snapshot_version != ours.snapshot_version {
            return Some(format!(
                "the peer uses page size {} and snapshot format {}, this build {} and {}",
                self.page_size, self.snapshot_version, ours.page_size, ours.snapshot_version
            ));
        }
        None
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(raw)
}

/// [`FrameType::RoundBegin`]: the round's number and whether the guest is paused.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct RoundBegin {
    /// The round (0 first).
    pub round: u32,
    /// Whether this is the final round (sent while the guest is paused).
    pub last: bool,
}

impl RoundBegin {
    /// The frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = [0u8; 8];
        payload[..4].copy_from_slice(&self.round.to_le_bytes());
        payload[4..].copy_from_slice(&u32::from(self.last).to_le_bytes());
        frame(FrameType::RoundBegin, &payload)
    }

    /// Decodes the payload.
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        if payload.len() != 8 {
            return Err(format!("a round header of {} bytes", payload.len()));
        }
        let last = match le_u32(&payload[4..]) {
            0 => false,
            1 => true,
            other => return Err(format!("a round header with final flag {other}")),
        };
        Ok(Self {
            round: le_u32(payload),
            last,
        })
    }
}

/// What a round carried ([`FrameType::RoundEnd`]), checked by the destination.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Default)]
pub struct RoundTotals {
    /// The round.
    pub round: u32,
    /// Extent frames.
    pub extents: u64,
    /// Pages of data extents.
    pub data_pages: u64,
    /// Pages of zero extents.
    pub zero_pages: u64,
}

impl RoundTotals {
    /// The frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(32);
        payload.extend_from_slice(&self.round.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&self.extents.to_le_bytes());
        payload.extend_from_slice(&self.data_pages.to_le_bytes());
        payload.extend_from_slice(&self.zero_pages.to_le_bytes());
        frame(FrameType::RoundEnd, &payload)
    }

    /// Decodes the payload.
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        if payload.len() != 32 {
            return Err(format!("a round end of {} bytes", payload.len()));
        }
        Ok(Self {
            round: le_u32(payload),
            extents: le_u64(&payload[8..]),
            data_pages: le_u64(&payload[16..]),
            zero_pages: le_u64(&payload[24..]),
        })
    }
}

/// [`FrameType::RoundAck`] and [`FrameType::Complete`]: a round number (or the number of
/// rounds) and the page bytes received so far.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The round acknowledged, or the number of rounds received (`Complete`).
    pub round: u32,
    /// Page bytes received in all rounds so far.
    pub bytes: u64,
}

impl Ack {
    /// The frame.
    pub fn encode(&self, frame_type: FrameType) -> Vec<u8> {
        let mut payload = [0u8; 16];
        payload[..4].copy_from_slice(&self.round.to_le_bytes());
        payload[8..].copy_from_slice(&self.bytes.to_le_bytes());
        frame(frame_type, &payload)
    }

    /// Decodes the payload.
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        if payload.len() != 16 {
            return Err(format!("an acknowledgement of {} bytes", payload.len()));
        }
        Ok(Self {
            round: le_u32(payload),
            bytes: le_u64(&payload[8..]),
        })
    }
}

/// What an [`FrameType::Error`] frame reports.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The sender found a bad frame or version in what it received.
    Protocol = 1,
    /// The sender failed for another reason (its own error, or it was cancelled).
    Failed = 2,
}

/// [`FrameType::Error`]: why the peer stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerError {
    /// Protocol or other failure.
    pub kind: ErrorKind,
    /// For a protocol error: the offset, in the stream the sender received, of the bad frame.
    pub offset: u64,
    /// The sender's message.
    pub message: String,
}

impl PeerError {
    /// The frame (a message longer than 64 KiB is cut).
    pub fn encode(&self) -> Vec<u8> {
        let mut message = self.message.as_bytes();
        if message.len() > 65536 {
            message = &message[..65536];
        }
        let mut payload = Vec::with_capacity(16 + message.len());
        payload.extend_from_slice(&(self.kind as u32).to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&self.offset.to_le_bytes());
        payload.extend_from_slice(message);
        frame(FrameType::Error, &payload)
    }

    /// Decodes the payload.
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        if payload.len() < 16 {
            return Err(format!("an error frame of {} bytes", payload.len()));
        }
        let kind = match le_u32(payload) {
            1 => ErrorKind::Protocol,
            2 => ErrorKind::Failed,
            other => return Err(format!("an error frame of kind {other}")),
        };
        Ok(Self {
            kind,
            offset: le_u64(&payload[8..]),
            message: String::from_utf8_lossy(&payload[16..]).into_owned(),
        })
    }
}

/// The layout of an [`FrameType::Extent`] frame for `pages` pages: the offset of the CRC list
/// and of the pages in the frame, and the frame's length.
pub fn extent_frame_layout(kind: ExtentKind, pages: usize) -> (usize, usize, usize) {
    let crcs = HEADER_LEN + format::RECORD_LEN;
    let (pages_at, payload) = match kind {
        ExtentKind::Data => (
            crcs + 4 * pages,
            format::RECORD_LEN + 4 * pages + PAGE * pages,
        ),
        ExtentKind::Zero => (crcs, format::RECORD_LEN),
    };
    (crcs, pages_at, HEADER_LEN + payload + TRAILER_LEN)
}

/// Completes an extent frame in `frame` (exactly the frame's length, see
/// [`extent_frame_layout`]), whose pages (for a data extent) are already in place: writes the
/// header, the record, the CRCs and the trailer.
pub fn seal_extent_frame(frame: &mut [u8], extent: &Extent, crcs: &[u32]) {
    let pages = usize::try_from(extent.pages).unwrap_or(usize::MAX);
    let (_, pages_at, len) = extent_frame_layout(extent.kind, pages);
    debug_assert_eq!(frame.len(), len);
    let mut head = Vec::with_capacity(pages_at);
    push_header(&mut head, FrameType::Extent, len - HEADER_LEN - TRAILER_LEN);
    format::encode_extent(&mut head, extent, crcs);
    frame[..pages_at].copy_from_slice(&head);
    let checked = crc32c::crc32c(&frame[HEADER_LEN..pages_at]);
    frame[len - TRAILER_LEN..].copy_from_slice(&checked.to_le_bytes());
}

/// A decoded extent frame: the record and its CRCs; the pages follow at `pages_at` in the
/// payload. Checked: the record alone, and the payload length against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentFrame {
    /// The record (`first_crc` 0, `data_offset` 0 on the stream).
    pub extent: Extent,
    /// The page CRC-32Cs (data extents).
    pub crcs: Vec<u32>,
    /// Where the pages start in the payload.
    pub pages_at: usize,
}

/// Decodes the payload of an extent frame (not its pages: see [`check_pages`]).
pub fn decode_extent(payload: &[u8]) -> Result<ExtentFrame, String> {
    let Some(record) = payload.get(..format::RECORD_LEN) else {
        return Err(format!("an extent frame of {} bytes", payload.len()));
    };
    let mut raw = [0u8; format::RECORD_LEN];
    raw.copy_from_slice(record);
    let extent = format::decode_extent(&raw).map_err(|error| format!("extent record {error}"))?;
    if extent.data_offset != 0 {
        return Err(format!(
            "an extent record with payload offset {:#x} (0 on a stream)",
            extent.data_offset
        ));
    }
    let pages = usize::try_from(extent.pages).unwrap_or(usize::MAX);
    let (crcs_at, pages_at, len) = extent_frame_layout(extent.kind, pages);
    let payload_len = len - HEADER_LEN - TRAILER_LEN;
    if payload.len() != payload_len {
        return Err(format!(
            "an extent frame of {} bytes for {} {} pages (expected {payload_len})",
            payload.len(),
            extent.pages,
            if extent.kind == ExtentKind::Data {
                "data"
            } else {
                "zero"
            }
        ));
    }
    let crcs_at = crcs_at - HEADER_LEN;
    let pages_at = pages_at - HEADER_LEN;
    let crcs = payload[crcs_at..pages_at]
        .chunks_exact(4)
        .map(le_u32)
        .collect();
    Ok(ExtentFrame {
        extent,
        crcs,
        pages_at,
    })
}

/// Checks each page of a data extent's `pages` against its CRC-32C; the error names the page.
pub fn check_pages(frame: &ExtentFrame, pages: &[u8]) -> Result<(), String> {
    for (page, (bytes, &stored)) in pages.chunks_exact(PAGE).zip(&frame.crcs).enumerate() {
        let computed = crc32c::crc32c(bytes);
        if computed != stored {
            let offset = frame.extent.ram_offset + page as u64 * PAGE_SIZE;
            return Err(format!(
                "the page of RAM offset {offset:#x} has checksum {computed:08x}, its record says {stored:08x}"
            ));
        }
    }
    Ok(())
}

/// The checked part of a payload: all of it, or an extent frame's record and CRCs.
fn checked_part(frame_type: FrameType, payload: &[u8]) -> &[u8] {
    if frame_type != FrameType::Extent || payload.len() < format::RECORD_LEN {
        return payload;
    }
    let pages = le_u32(&payload[8..12]);
    let kind = le_u32(&payload[12..16]);
    if kind != 0 {
        return payload;
    }
    let crcs_end = usize::try_from(pages)
        .ok()
        .and_then(|pages| pages.checked_mul(4))
        .and_then(|len| len.checked_add(format::RECORD_LEN))
        .unwrap_or(usize::MAX);
    &payload[..crcs_end.min(payload.len())]
}

/// Reads frames from a byte stream and counts the bytes it consumed.
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> FrameReader<R> {
    /// Frames `inner` from its current position (offset 0).
    pub fn new(inner: R) -> Self {
        Self { inner, offset: 0 }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads exactly `buffer.len()` bytes; `Ok(false)` when the stream ended before the first.
    fn fill(&mut self, buffer: &mut [u8]) -> io::Result<bool> {
        let mut done = 0;
        while done < buffer.len() {
            match self.inner.read(&mut buffer[done..]) {
                Ok(0) if done == 0 => return Ok(false),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the stream ended inside a frame, {} bytes in",
                            self.offset + done as u64
                        ),
                    ))
                }
                Ok(read) => done += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }

    /// Reads the next frame into `payload` (grown when it is too small, never shrunk, so a
    /// reused buffer is not cleared each time): its type, its stream offset and its payload
    /// length (the payload is `payload[..len]`). The header checksum, the length bound and
    /// the trailer are checked; the pages of an extent frame are not (see [`check_pages`]).
    pub fn read_frame(&mut self, payload: &mut Vec<u8>) -> Result<Frame, ReadError> {
        let start = self.offset;
        let bad = |what: String| {
            ReadError::Bad(BadFrame {
                offset: start,
                what,
            })
        };
        let mut header = [0u8; HEADER_LEN];
        match self.fill(&mut header) {
            Ok(true) => {}
            Ok(false) => return Err(ReadError::Closed),
            Err(error) => return Err(ReadError::Io(error)),
        }
        self.offset += HEADER_LEN as u64;
        let stored = le_u32(&header[8..]);
        let computed = crc32c::crc32c(&header[..8]);
        if stored != computed {
            return Err(bad(format!(
                "frame header checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            )));
        }
        let raw_type = le_u32(&header);
        let Some(frame_type) = FrameType::from_u32(raw_type) else {
            return Err(bad(format!("unknown frame type {raw_type}")));
        };
        let len = usize::try_from(le_u32(&header[4..])).unwrap_or(usize::MAX);
        if len > MAX_PAYLOAD {
            return Err(bad(format!(
                "a {frame_type:?} frame of {len} bytes (at most {MAX_PAYLOAD})"
            )));
        }
        if payload.len() < len + TRAILER_LEN {
            payload.resize(len + TRAILER_LEN, 0);
        }
        let filled = match self.fill(&mut payload[..len + TRAILER_LEN]) {
            Ok(true) => Ok(()),
            Ok(false) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ended after the header of a frame at {start}"),
            )),
            Err(error) => Err(error),
        };
        filled.map_err(ReadError::Io)?;
        self.offset += (len + TRAILER_LEN) as u64;
        let stored = le_u32(&payload[len..]);
        let computed = crc32c::crc32c(checked_part(frame_type, &payload[..len]));
        if stored != computed {
            return Err(bad(format!(
                "{frame_type:?} frame checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            )));
        }
        Ok(Frame {
            frame_type,
            offset: start,
            len,
        })
    }

    /// Reads and drops everything until the stream ends or fails.
    pub fn drain(&mut self) {
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            match self.inner.read(&mut scratch) {
                Ok(0) => return,
                Ok(read) => self.offset += read as u64,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// The stream, for the caller to drop or shut down.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_extent_frame(kind: ExtentKind) -> Vec<u8> {
        let pages = 3;
        let (_, pages_at, len) = extent_frame_layout(kind, pages);
        let mut frame = vec![0u8; pages_at];
        let mut crcs = Vec::new();
        if kind == ExtentKind::Data {
            for page in 0..pages {
                let bytes: Vec<u8> = (0..PAGE).map(|i| (i * 7 + page).to_le_bytes()[0]).collect();
                crcs.push(crc32c::crc32c(&bytes));
                frame.extend_from_slice(&bytes);
            }
        }
        frame.resize(len, 0);
        let extent = Extent {
            ram_offset: 0x5000,
            pages: 3,
            kind,
            data_offset: 0,
            first_crc: 0,
        };
        seal_extent_frame(&mut frame, &extent, &crcs);
        frame
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(FrameType, Vec<u8>)>, ReadError> {
        let mut reader = FrameReader::new(bytes);
        let mut frames = Vec::new();
        loop {
            let mut payload = Vec::new();
            match reader.read_frame(&mut payload) {
                Ok(frame) => {
                    payload.truncate(frame.len);
                    frames.push((frame.frame_type, payload))
                }
                Err(ReadError::Closed) => return Ok(frames),
                Err(error) => return Err(error),
            }
        }
    }

    /// Decodes every frame fully, pages included, as a destination would.
    fn decode_fully(bytes: &[u8]) -> Result<usize, String> {
        let frames = read_all(bytes).map_err(|error| format!("{error:?}"))?;
        for (frame_type, payload) in &frames {
            match frame_type {
                FrameType::Extent => {
                    let decoded = decode_extent(payload)?;
                    if decoded.extent.kind == ExtentKind::Data {
                        check_pages(&decoded, &payload[decoded.pages_at..])?;
                    }
                }
                FrameType::Hello => {
                    Hello::decode(payload)?;
                }
                FrameType::RoundBegin => {
                    RoundBegin::decode(payload)?;
                }
                FrameType::RoundEnd => {
                    RoundTotals::decode(payload)?;
                }
                FrameType::Error => {
                    PeerError::decode(payload)?;
                }
                _ => {}
            }
        }
        Ok(frames.len())
    }

    fn sample_stream() -> Vec<u8> {
        let mut stream = Hello::ours().encode(FrameType::Hello);
        stream.extend(
            RoundBegin {
                round: 2,
                last: true,
            }
            .encode(),
        );
        stream.extend(sample_extent_frame(ExtentKind::Data));
        stream.extend(sample_extent_frame(ExtentKind::Zero));
        stream.extend(frame(FrameType::UserPayload, b"registers"));
        stream.extend(
            RoundTotals {
                round: 2,
                extents: 2,
                data_pages: 3,
                zero_pages: 3,
            }
            .encode(),
        );
        stream.extend(
            PeerError {
                kind: ErrorKind::Protocol,
                offset: 77,
                message: "bad".into(),
            }
            .encode(),
        );
        stream
    }

    #[test]
    fn frames_round_trip() {
        let stream = sample_stream();
        let frames = read_all(&stream).unwrap();
        let types: Vec<FrameType> = frames.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            types,
            [
                FrameType::Hello,
                FrameType::RoundBegin,
                FrameType::Extent,
                FrameType::Extent,
                FrameType::UserPayload,
                FrameType::RoundEnd,
                FrameType::Error
            ]
        );
        assert_eq!(Hello::decode(&frames[0].1).unwrap(), Hello::ours());
        assert_eq!(
            RoundBegin::decode(&frames[1].1).unwrap(),
            RoundBegin {
                round: 2,
                last: true
            }
        );
        let data = decode_extent(&frames[2].1).unwrap();
        assert_eq!(data.extent.ram_offset, 0x5000);
        assert_eq!(data.crcs.len(), 3);
        check_pages(&data, &frames[2].1[data.pages_at..]).unwrap();
        let zero = decode_extent(&frames[3].1).unwrap();
        assert_eq!(zero.extent.kind, ExtentKind::Zero);
        assert!(zero.crcs.is_empty());
        assert_eq!(frames[4].1, b"registers");
        assert_eq!(
            PeerError::decode(&frames[6].1).unwrap(),
            PeerError {
                kind: ErrorKind::Protocol,
                offset: 77,
                message: "bad".into()
            }
        );
        assert_eq!(decode_fully(&stream), Ok(7));
    }

    #[test]
    fn every_flipped_bit_of_a_stream_is_detected_without_waiting() {
        let stream = sample_stream();
        for position in 0..stream.len() {
            for bit in [0x01u8, 0x80] {
                let mut flipped = stream.clone();
                flipped[position] ^= bit;
                // A slice reader ends at the end: a frame whose length grew would read to the
                // end and report truncation; either way, never a silent success.
                assert!(
                    decode_fully(&flipped).is_err(),
                    "a flipped bit {bit:#x} at {position} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn truncation_is_reported_at_every_length() {
        let stream = sample_stream();
        let boundaries: Vec<usize> = {
            let mut reader = FrameReader::new(&stream[..]);
            let mut ends = vec![0];
            let mut payload = Vec::new();
            while reader.read_frame(&mut payload).is_ok() {
                ends.push(usize::try_from(reader.offset()).unwrap());
            }
            ends
        };
        for len in 0..stream.len() {
            match read_all(&stream[..len]) {
                Ok(frames) => assert!(
                    boundaries.contains(&len),
                    "cut at {len} gave {} frames",
                    frames.len()
                ),
                Err(ReadError::Io(error)) => {
                    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{len}")
                }
                Err(other) => panic!("cut at {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused_unread() {
        let mut huge = Vec::new();
        push_header(&mut huge, FrameType::Manifest, MAX_PAYLOAD + 1);
        let mut reader = FrameReader::new(&huge[..]);
        let mut payload = Vec::new();
        match reader.read_frame(&mut payload) {
            Err(ReadError::Bad(bad)) => assert!(bad.what.contains("at most"), "{}", bad.what),
            other => panic!("{other:?}"),
        }
        assert!(payload.capacity() < 1024, "nothing was allocated for it");
        let mut unknown = 99u32.to_le_bytes().to_vec();
        unknown.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32c::crc32c(&unknown);
        unknown.extend_from_slice(&crc.to_le_bytes());
        match FrameReader::new(&unknown[..]).read_frame(&mut payload) {
            Err(ReadError::Bad(bad)) => assert!(bad.what.contains("type 99"), "{}", bad.what),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handshakes_name_the_mismatch() {
        assert_eq!(Hello::ours().mismatch(), None);
        let newer = Hello {
            version: 2,
            ..Hello::ours()
        };
        let what = newer.mismatch().unwrap();
        assert!(
            what.contains("version 2") && what.contains("version 1"),
            "{what}"
        );
        let mut payload = newer.encode(FrameType::Hello);
        payload.drain(..HEADER_LEN);
        payload.truncate(HELLO_LEN);
        assert_eq!(Hello::decode(&payload).unwrap(), newer);
        assert!(Hello::decode(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
    }
}
