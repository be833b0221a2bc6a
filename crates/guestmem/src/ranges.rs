//! The scatter-list types under the module path the original uses (`guestmem::ranges`):
//! [`PagedRange`], [`PagedRanges`], their address-range iterators and their readers and
//! writers. The same types are also exported at the crate root.

pub use crate::cursor::PagedRangeReader;
pub use crate::cursor::PagedRangeWriter;
pub use crate::cursor::PagedRangesReader;
pub use crate::cursor::PagedRangesWriter;
pub use crate::paged_range::AddressRange;
pub use crate::paged_range::InvalidGpn;
pub use crate::paged_range::PagedRange;
pub use crate::paged_range::PagedRangeRangeIter;
pub use crate::paged_range::PagedRanges;
pub use crate::paged_range::PagedRangesIter;
