//! Fuzz checks of the migration stream's frame decoders (`membacking::migration::wire`):
//! arbitrary bytes read as a stream of frames never panic, never make the reader allocate past
//! the frame limit, and every frame that is accepted decodes with its type's decoder or is
//! refused with a message; a valid stream with one bit flipped anywhere is refused (the header,
//! the trailer or a page checksum catches it); other edits (deletions, insertions, truncation)
//! never panic and leave every accepted frame re-encodable to itself.

use crate::input::{reference_crc32c, Unstructured};
use membacking::migration::wire::{
    check_pages, decode_extent, extent_frame_layout, frame, seal_extent_frame, Ack, ErrorKind,
    FrameReader, FrameType, Hello, PeerError, ReadError, RoundBegin, RoundTotals, MAX_PAYLOAD,
    PAGE, TRAILER_LEN,
};
use membacking::snapshot::format::{Extent, ExtentKind};

/// Decodes every frame of `stream` fully, pages included, as the destination and source do;
/// returns the number of frames accepted, or the first refusal.
fn decode_all(stream: &[u8]) -> Result<usize, String> {
    let mut reader = FrameReader::new(stream);
    let mut payload = Vec::new();
    let mut frames = 0;
    loop {
        let frame = match reader.read_frame(&mut payload) {
            Ok(frame) => frame,
            Err(ReadError::Closed) => return Ok(frames),
            Err(ReadError::Io(error)) => return Err(error.to_string()),
            Err(ReadError::Bad(bad)) => {
                assert!(bad.offset <= stream.len() as u64);
                return Err(bad.what);
            }
        };
        assert!(frame.len <= MAX_PAYLOAD);
        assert!(payload.len() <= MAX_PAYLOAD + TRAILER_LEN);
        let bytes = &payload[..frame.len];
        match frame.frame_type {
            FrameType::Hello | FrameType::HelloAck => {
                let hello = Hello::decode(bytes)?;
                let again = hello.encode(frame.frame_type);
                assert_eq!(&again[12..12 + frame.len], bytes);
            }
            FrameType::RoundBegin => {
                let begin = RoundBegin::decode(bytes)?;
                assert_eq!(RoundBegin::decode(&begin.encode()[12..20]), Ok(begin));
            }
            FrameType::RoundEnd => {
                let totals = RoundTotals::decode(bytes)?;
                assert_eq!(RoundTotals::decode(&totals.encode()[12..44]), Ok(totals));
            }
            FrameType::RoundAck | FrameType::Complete => {
                let ack = Ack::decode(bytes)?;
                assert_eq!(Ack::decode(&ack.encode(frame.frame_type)[12..28]), Ok(ack));
            }
            FrameType::Error => {
                PeerError::decode(bytes)?;
            }
            FrameType::Extent => {
                let extent = decode_extent(bytes)?;
                let len = usize::try_from(extent.extent.len()).map_err(|e| e.to_string())?;
                if extent.extent.kind == ExtentKind::Data {
                    check_pages(&extent, &bytes[extent.pages_at..extent.pages_at + len])?;
                } else {
                    assert_eq!(bytes.len(), extent.pages_at);
                }
            }
            FrameType::Manifest | FrameType::FinalManifest | FrameType::UserPayload => {}
        }
        frames += 1;
    }
}

/// A valid stream of every frame type, shaped by `u`.
fn sample(u: &mut Unstructured<'_>) -> Vec<u8> {
    let pages = usize::from(u.int_in_range(1u8..=3).unwrap_or(1));
    let (_, pages_at, len) = extent_frame_layout(ExtentKind::Data, pages);
    let mut data = vec![0u8; len];
    let mut crcs = Vec::new();
    for page in 0..pages {
        let bytes = &mut data[pages_at + page * PAGE..pages_at + (page + 1) * PAGE];
        let fill = u.arbitrary::<u8>().unwrap_or(7);
        bytes.fill(fill);
        crcs.push(reference_crc32c(bytes));
    }
    let extent = |kind, pages: usize| Extent {
        ram_offset: 0x1000 * u64::from(u8::try_from(pages).unwrap_or(1)),
        pages: u32::try_from(pages).unwrap_or(1),
        kind,
        data_offset: 0,
        first_crc: 0,
    };
    seal_extent_frame(&mut data, &extent(ExtentKind::Data, pages), &crcs);
    let (_, _, zero_len) = extent_frame_layout(ExtentKind::Zero, 2);
    let mut zero = vec![0u8; zero_len];
    seal_extent_frame(&mut zero, &extent(ExtentKind::Zero, 2), &[]);
    let mut stream = Hello::ours().encode(FrameType::Hello);
    stream.extend(frame(FrameType::Manifest, b"{\"manifest\":{}}"));
    stream.extend(
        RoundBegin {
            round: 0,
            last: true,
        }
        .encode(),
    );
    stream.extend(data);
    stream.extend(zero);
    stream.extend(frame(FrameType::UserPayload, b"registers"));
    stream.extend(
        RoundTotals {
            round: 0,
            extents: 2,
            data_pages: pages as u64,
            zero_pages: 2,
        }
        .encode(),
    );
    stream.extend(
        Ack {
            round: 1,
            bytes: 4096,
        }
        .encode(FrameType::Complete),
    );
    stream.extend(
        PeerError {
            kind: ErrorKind::Failed,
            offset: 3,
            message: "stopped".into(),
        }
        .encode(),
    );
    stream
}

/// Reads `data` as a stream, then as edits of a valid one.
pub fn check(data: &[u8]) {
    let _ = decode_all(data);
    let mut u = Unstructured::new(data);
    let valid = sample(&mut u);
    assert_eq!(decode_all(&valid), Ok(9), "the sample stream is valid");
    // One flipped bit anywhere is refused.
    let at = u.int_in_range(0..=valid.len() - 1).unwrap_or(0);
    let bit = u.int_in_range(0u8..=7).unwrap_or(0);
    let mut flipped = valid.clone();
    flipped[at] ^= 1 << bit;
    assert!(
        decode_all(&flipped).is_err(),
        "a flipped bit {bit} at {at} went unnoticed"
    );
    // Other edits: no panic.
    let mut edited = valid;
    for _ in 0..u.int_in_range(1u8..=6).unwrap_or(1) {
        let at = u.int_in_range(0..=edited.len()).unwrap_or(0);
        match u.int_in_range(0u8..=3).unwrap_or(0) {
            0 if at < edited.len() => {
                edited.remove(at);
            }
            1 => edited.insert(at, u.arbitrary::<u8>().unwrap_or(0)),
            2 if at < edited.len() => edited[at] = u.arbitrary::<u8>().unwrap_or(0),
            _ => edited.truncate(at),
        }
    }
    let _ = decode_all(&edited);
}
