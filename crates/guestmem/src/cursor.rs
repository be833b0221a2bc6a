//! Sequential access helpers: the cursor traits [`MemoryRead`] and [`MemoryWrite`],
//! implemented for byte slices, for [`Limit`] (a cap on another cursor) and for readers and
//! writers over paged ranges of guest memory. Each call moves the next bytes and advances the
//! cursor only when it succeeded.

use crate::GuestMemory;
use crate::GuestMemoryError;
use crate::PagedRange;
use crate::PagedRanges;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// A sequential access failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Guest memory failed.
    #[error("memory access error")]
    Memory(#[from] GuestMemoryError),
    /// Fewer bytes remain than requested: `(available, requested)`.
    #[error("out of range: {0:#x} < {1:#x}")]
    OutOfRange(usize, usize),
    /// The cursor cannot be written (declared for API compatibility, not produced here).
    #[error("write attempted to read-only memory")]
    ReadOnly,
}

fn check_available(available: usize, requested: usize) -> Result<(), AccessError> {
    if requested > available {
        Err(AccessError::OutOfRange(available, requested))
    } else {
        Ok(())
    }
}

/// A cursor that reads bytes in order.
pub trait MemoryRead {
    /// Reads `data.len()` bytes into `data`.
    fn read(&mut self, data: &mut [u8]) -> Result<&mut Self, AccessError>;

    /// Skips `len` bytes.
    fn skip(&mut self, len: usize) -> Result<&mut Self, AccessError>;

    /// The number of bytes remaining.
    fn len(&self) -> usize;

    /// Whether no byte remains.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a plain-old-data value.
    fn read_plain<T: IntoBytes + FromBytes + Immutable + KnownLayout>(
        &mut self,
    ) -> Result<T, AccessError> {
        let mut value = T::new_zeroed();
        self.read(value.as_mut_bytes())?;
        Ok(value)
    }

    /// Reads `len` plain-old-data values.
    fn read_n<T: IntoBytes + FromBytes + Immutable + Clone>(
        &mut self,
        len: usize,
    ) -> Result<Vec<T>, AccessError> {
        let mut values = vec![T::new_zeroed(); len];
        self.read(values.as_mut_slice().as_mut_bytes())?;
        Ok(values)
    }

    /// Reads every remaining byte.
    fn read_all(&mut self) -> Result<Vec<u8>, AccessError> {
        let mut data = vec![0; self.len()];
        self.read(&mut data)?;
        Ok(data)
    }

    /// Caps the remaining length at `len`.
    fn limit(self, len: usize) -> Limit<Self>
    where
        Self: Sized,
    {
        Limit {
            inner: self,
            limit: len,
        }
    }
}

/// A cursor that writes bytes in order.
pub trait MemoryWrite {
    /// Writes `data`.
    fn write(&mut self, data: &[u8]) -> Result<(), AccessError>;

    /// Writes `len` copies of `val`.
    fn fill(&mut self, val: u8, len: usize) -> Result<(), AccessError>;

    /// Writes `len` zero bytes.
    fn zero(&mut self, len: usize) -> Result<(), AccessError> {
        self.fill(0, len)
    }

    /// The number of bytes that can still be written.
    fn len(&self) -> usize;

    /// Whether no byte can be written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Caps the remaining length at `len`.
    fn limit(self, len: usize) -> Limit<Self>
    where
        Self: Sized,
    {
        Limit {
            inner: self,
            limit: len,
        }
    }
}

impl MemoryRead for &[u8] {
    fn read(&mut self, data: &mut [u8]) -> Result<&mut Self, AccessError> {
        check_available(self.len(), data.len())?;
        let (head, tail) = self.split_at(data.len());
        data.copy_from_slice(head);
        *self = tail;
        Ok(self)
    }

    fn skip(&mut self, len: usize) -> Result<&mut Self, AccessError> {
        check_available(self.len(), len)?;
        *self = &self[len..];
        Ok(self)
    }

    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

impl MemoryWrite for &mut [u8] {
    fn write(&mut self, data: &[u8]) -> Result<(), AccessError> {
        check_available(self.len(), data.len())?;
        let (head, tail) = std::mem::take(self).split_at_mut(data.len());
        head.copy_from_slice(data);
        *self = tail;
        Ok(())
    }

    fn fill(&mut self, val: u8, len: usize) -> Result<(), AccessError> {
        check_available(self.len(), len)?;
        let (head, tail) = std::mem::take(self).split_at_mut(len);
        head.fill(val);
        *self = tail;
        Ok(())
    }

    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// A cursor whose remaining length is capped at `min(limit, inner.len())`.
#[derive(Debug)]
pub struct Limit<T> {
    inner: T,
    limit: usize,
}

impl<T> Limit<T> {
    /// The wrapped cursor.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: MemoryRead> MemoryRead for Limit<T> {
    fn read(&mut self, data: &mut [u8]) -> Result<&mut Self, AccessError> {
        check_available(self.len(), data.len())?;
        self.inner.read(data)?;
        self.limit -= data.len();
        Ok(self)
    }

    fn skip(&mut self, len: usize) -> Result<&mut Self, AccessError> {
        check_available(self.len(), len)?;
        self.inner.skip(len)?;
        self.limit -= len;
        Ok(self)
    }

    fn len(&self) -> usize {
        self.limit.min(self.inner.len())
    }
}

impl<T: MemoryWrite> MemoryWrite for Limit<T> {
    fn write(&mut self, data: &[u8]) -> Result<(), AccessError> {
        check_available(self.len(), data.len())?;
        self.inner.write(data)?;
        self.limit -= data.len();
        Ok(())
    }

    fn fill(&mut self, val: u8, len: usize) -> Result<(), AccessError> {
        check_available(self.len(), len)?;
        self.inner.fill(val, len)?;
        self.limit -= len;
        Ok(())
    }

    fn len(&self) -> usize {
        self.limit.min(self.inner.len())
    }
}

/// Reads a paged range of guest memory in order.
#[derive(Debug, Clone)]
pub struct PagedRangeReader<'a> {
    range: PagedRange<'a>,
    memory: &'a GuestMemory,
}

/// Writes a paged range of guest memory in order.
#[derive(Debug, Clone)]
pub struct PagedRangeWriter<'a> {
    range: PagedRange<'a>,
    memory: &'a GuestMemory,
}

impl<'a> PagedRange<'a> {
    /// A reader of this range of `memory`.
    pub fn reader(self, memory: &'a GuestMemory) -> PagedRangeReader<'a> {
        PagedRangeReader {
            range: self,
            memory,
        }
    }

    /// A writer of this range of `memory`.
    pub fn writer(self, memory: &'a GuestMemory) -> PagedRangeWriter<'a> {
        PagedRangeWriter {
            range: self,
            memory,
        }
    }
}

impl MemoryRead for PagedRangeReader<'_> {
    fn read(&mut self, data: &mut [u8]) -> Result<&mut Self, AccessError> {
        check_available(self.range.len(), data.len())?;
        let (head, _) = self.range.split(data.len());
        self.memory
            .read_range(&head, data)
            .map_err(AccessError::Memory)?;
        self.range.skip(data.len());
        Ok(self)
    }

    fn skip(&mut self, len: usize) -> Result<&mut Self, AccessError> {
        check_available(self.range.len(), len)?;
        self.range.skip(len);
        Ok(self)
    }

    fn len(&self) -> usize {
        self.range.len()
    }
}

impl MemoryWrite for PagedRangeWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), AccessError> {
        check_available(self.range.len(), data.len())?;
        let (head, _) = self.range.split(data.len());
        self.memory
            .write_range(&head, data)
            .map_err(AccessError::Memory)?;
        self.range.skip(data.len());
        Ok(())
    }

    fn fill(&mut self, val: u8, len: usize) -> Result<(), AccessError> {
        check_available(self.range.len(), len)?;
        let (head, _) = self.range.split(len);
        self.memory
            .fill_range(&head, val)
            .map_err(AccessError::Memory)?;
        self.range.skip(len);
        Ok(())
    }

    fn len(&self) -> usize {
        self.range.len()
    }
}

/// Reads several paged ranges of guest memory in order, as one buffer.
#[derive(Debug, Clone)]
pub struct PagedRangesReader<'a, T> {
    ranges: PagedRanges<'a, T>,
    memory: &'a GuestMemory,
}

impl<'a, T> PagedRangesReader<'a, T> {
    /// The ranges not read yet.
    pub fn into_inner(self) -> PagedRanges<'a, T> {
        self.ranges
    }
}

/// Writes several paged ranges of guest memory in order, as one buffer.
#[derive(Debug, Clone)]
pub struct PagedRangesWriter<'a, T> {
    ranges: PagedRanges<'a, T>,
    memory: &'a GuestMemory,
}

impl<'a, T> PagedRangesWriter<'a, T> {
    /// The ranges not written yet.
    pub fn into_inner(self) -> PagedRanges<'a, T> {
        self.ranges
    }
}

impl<'a, T: Iterator<Item = PagedRange<'a>> + Clone> PagedRanges<'a, T> {
    /// A reader of these ranges of `memory`.
    pub fn reader(self, memory: &'a GuestMemory) -> PagedRangesReader<'a, T> {
        PagedRangesReader {
            ranges: self,
            memory,
        }
    }

    /// A writer of these ranges of `memory`.
    pub fn writer(self, memory: &'a GuestMemory) -> PagedRangesWriter<'a, T> {
        PagedRangesWriter {
            ranges: self,
            memory,
        }
    }
}

/// Runs `per_range(range, position)` over the pieces of the first `len` bytes of `ranges`.
fn for_each_piece<'a, T: Iterator<Item = PagedRange<'a>> + Clone>(
    ranges: &PagedRanges<'a, T>,
    len: usize,
    mut per_range: impl FnMut(&PagedRange<'_>, usize) -> Result<(), GuestMemoryError>,
) -> Result<(), AccessError> {
    let mut position = 0;
    for range in ranges.pieces() {
        if position == len {
            break;
        }
        let piece = range.subrange(0, range.len().min(len - position));
        per_range(&piece, position).map_err(AccessError::Memory)?;
        position += piece.len();
    }
    Ok(())
}

impl<'a, T: Iterator<Item = PagedRange<'a>> + Clone> MemoryRead for PagedRangesReader<'a, T> {
    fn read(&mut self, data: &mut [u8]) -> Result<&mut Self, AccessError> {
        check_available(self.ranges.len(), data.len())?;
        let memory = self.memory;
        for_each_piece(&self.ranges, data.len(), |piece, position| {
            memory.read_range(piece, &mut data[position..position + piece.len()])
        })?;
        self.ranges.skip(data.len());
        Ok(self)
    }

    fn skip(&mut self, len: usize) -> Result<&mut Self, AccessError> {
        check_available(self.ranges.len(), len)?;
        self.ranges.skip(len);
        Ok(self)
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }
}

impl<'a, T: Iterator<Item = PagedRange<'a>> + Clone> MemoryWrite for PagedRangesWriter<'a, T> {
    fn write(&mut self, data: &[u8]) -> Result<(), AccessError> {
        check_available(self.ranges.len(), data.len())?;
        let memory = self.memory;
        for_each_piece(&self.ranges, data.len(), |piece, position| {
            memory.write_range(piece, &data[position..position + piece.len()])
        })?;
        self.ranges.skip(data.len());
        Ok(())
    }

    fn fill(&mut self, val: u8, len: usize) -> Result<(), AccessError> {
        check_available(self.ranges.len(), len)?;
        let memory = self.memory;
        for_each_piece(&self.ranges, len, |piece, _| memory.fill_range(piece, val))?;
        self.ranges.skip(len);
        Ok(())
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;

    #[test]
    fn slices_and_limits() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let mut reader: &[u8] = &data;
        let mut two = [0u8; 2];
        reader.read(&mut two).unwrap().skip(1).unwrap();
        assert_eq!(two, [1, 2]);
        assert_eq!(
            reader.read_plain::<u16>().unwrap(),
            u16::from_le_bytes([4, 5])
        );
        assert_eq!(reader.read_n::<u8>(2).unwrap(), vec![6, 7]);
        let short = reader.read(&mut [0; 4]).unwrap_err();
        assert!(matches!(short, AccessError::OutOfRange(3, 4)));
        // The original's message, word for word.
        assert_eq!(short.to_string(), "out of range: 0x3 < 0x4");
        assert_eq!(reader.read_all().unwrap(), vec![8, 9, 10]);
        assert!(MemoryRead::is_empty(&reader));

        let mut limited = (&data[..]).limit(3);
        assert_eq!(MemoryRead::len(&limited), 3);
        assert!(limited.read(&mut [0; 4]).is_err());
        assert_eq!(limited.read_all().unwrap(), vec![1, 2, 3]);

        let mut out = [0u8; 6];
        let mut writer: &mut [u8] = &mut out;
        writer.write(&[1, 2]).unwrap();
        MemoryWrite::fill(&mut writer, 7, 2).unwrap();
        assert!(matches!(
            writer.write(&[0; 3]),
            Err(AccessError::OutOfRange(2, 3))
        ));
        let mut capped = writer.limit(1);
        assert!(capped.zero(2).is_err());
        capped.zero(1).unwrap();
        assert_eq!(MemoryWrite::len(&capped), 0);
        assert_eq!(out, [1, 2, 7, 7, 0, 0]);
    }

    #[test]
    fn paged_range_readers_and_writers_advance_on_success() {
        let memory = GuestMemory::allocate(8 * PAGE_SIZE);
        let gpns = [3, 1];
        let range = PagedRange::new(PAGE_SIZE - 2, 4, &gpns).unwrap();
        let mut writer = range.writer(&memory);
        writer.write(&[1, 2, 3]).unwrap();
        assert_eq!(MemoryWrite::len(&writer), 1);
        assert!(writer.write(&[0; 2]).is_err());
        writer.fill(9, 1).unwrap();
        assert_eq!(
            memory
                .read_plain::<[u8; 2]>(4 * PAGE_SIZE as u64 - 2)
                .unwrap(),
            [1, 2]
        );
        assert_eq!(
            memory.read_plain::<[u8; 2]>(PAGE_SIZE as u64).unwrap(),
            [3, 9]
        );
        let mut reader = range.reader(&memory);
        assert_eq!(reader.read_all().unwrap(), vec![1, 2, 3, 9]);

        let other = [5u64];
        let ranges = PagedRanges::new([range, PagedRange::new(0, 2, &other).unwrap()]);
        let mut writer = ranges.clone().writer(&memory);
        writer.write(&[10, 11, 12, 13, 14]).unwrap();
        writer.zero(1).unwrap();
        assert!(writer.fill(1, 1).is_err());
        let mut reader = ranges.reader(&memory);
        reader.skip(1).unwrap();
        assert_eq!(reader.read_all().unwrap(), vec![11, 12, 13, 14, 0]);

        // The original's shapes: `PagedRanges<'a, T>` over a cloneable iterator, readers and
        // writers generic over it, `into_inner` and a consuming `paged_ranges`.
        let pieces = [range, PagedRange::new(0, 2, &other).unwrap()];
        let mut ranges: PagedRanges<'_, std::iter::Copied<std::slice::Iter<'_, PagedRange<'_>>>> =
            PagedRanges::new(pieces.iter().copied());
        ranges.skip(3);
        let mut reader: PagedRangesReader<'_, _> = ranges.reader(&memory);
        assert_eq!(reader.read_plain::<u8>().unwrap(), 13);
        let rest = reader.into_inner();
        assert_eq!(rest.len(), 2);
        let left: Vec<PagedRange<'_>> = rest.clone().paged_ranges().collect();
        assert_eq!(left, vec![pieces[1]]);
        let writer: PagedRangesWriter<'_, _> = rest.writer(&memory);
        assert_eq!(writer.into_inner().len(), 2);

        // A failing guest access does not advance the cursor.
        let outside = [1000u64];
        let bad = PagedRange::new(0, 4, &outside).unwrap();
        let mut reader = bad.reader(&memory);
        assert!(matches!(
            reader.read(&mut [0; 2]),
            Err(AccessError::Memory(_))
        ));
        // A guest memory error converts into an access error (`?` works in a reader).
        let converted: AccessError = memory.read_plain::<u8>(1 << 40).unwrap_err().into();
        assert!(matches!(converted, AccessError::Memory(_)));
        assert_eq!(MemoryRead::len(&reader), 4);
    }
}
