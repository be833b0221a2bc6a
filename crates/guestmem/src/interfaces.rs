//! Interface-only traits for device memory and ROM mappings, with the original's shapes.
//!
//! Nothing in this crate implements them; a VMM's device-memory provider does. (This project's
//! own device windows, `membacking::DeviceMemoryMapper`, are asynchronous and have their own
//! inherent methods.)

use sparse_mmap::AsMappableRef;
use std::io;
use std::sync::Arc;

/// The placement half of a device memory window: where in the guest address space it shows.
pub trait MappableGuestMemory: Send + Sync {
    /// Places the window at `gpa`, writable or read-only, replacing an earlier placement.
    fn map_to_guest(&mut self, gpa: u64, writable: bool) -> io::Result<()>;

    /// Removes the placement; the window's mappings are kept for a later placement.
    fn unmap_from_guest(&mut self);
}

/// The mapping half of a device memory window: which objects back which offsets of it.
pub trait MappedMemoryRegion: Send + Sync {
    /// Maps `len` bytes of `section`, from `file_offset`, at `offset` in the window.
    fn map(
        &self,
        offset: usize,
        section: &dyn AsMappableRef,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<()>;

    /// Unmaps `[offset, offset + len)` of the window.
    fn unmap(&self, offset: usize, len: usize) -> io::Result<()>;
}

/// Creates device memory windows.
pub trait MemoryMapper: Send + Sync {
    /// A new window of `len` bytes named `debug_name`: its placement half and its mapping
    /// half.
    fn new_region(
        &self,
        len: usize,
        debug_name: String,
    ) -> io::Result<(Box<dyn MappableGuestMemory>, Arc<dyn MappedMemoryRegion>)>;
}

/// Maps a ROM image into the guest.
// The original's trait has `len` and no `is_empty`; adding one would change what implementors
// write.
#[allow(clippy::len_without_is_empty)]
pub trait MapRom: Send + Sync {
    /// Maps `len` bytes of the ROM, from `offset`, at `gpa`; the result unmaps it.
    fn map_rom(&self, gpa: u64, offset: u64, len: u64) -> io::Result<Box<dyn UnmapRom>>;

    /// The ROM's length in bytes.
    fn len(&self) -> u64;
}

/// Unmaps a ROM mapped by [`MapRom::map_rom`].
pub trait UnmapRom: Send + Sync {
    /// Unmaps the ROM.
    fn unmap_rom(self);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A window that records what it is asked, implemented as a VMM would.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    struct Control(Arc<Recorder>);

    impl MappableGuestMemory for Control {
        fn map_to_guest(&mut self, gpa: u64, writable: bool) -> io::Result<()> {
            self.0
                 .0
                .lock()
                .unwrap()
                .push(format!("place {gpa:#x} {writable}"));
            Ok(())
        }

        fn unmap_from_guest(&mut self) {
            self.0 .0.lock().unwrap().push("unplace".into());
        }
    }

    impl MappedMemoryRegion for Recorder {
        fn map(
            &self,
            offset: usize,
            section: &dyn AsMappableRef,
            file_offset: u64,
            len: usize,
            writable: bool,
        ) -> io::Result<()> {
            let _ = section.as_fd();
            self.0.lock().unwrap().push(format!(
                "map {offset:#x} {file_offset:#x} {len:#x} {writable}"
            ));
            Ok(())
        }

        fn unmap(&self, offset: usize, len: usize) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("unmap {offset:#x} {len:#x}"));
            Ok(())
        }
    }

    struct Mapper(Arc<Recorder>);

    impl MemoryMapper for Mapper {
        fn new_region(
            &self,
            _len: usize,
            _debug_name: String,
        ) -> io::Result<(Box<dyn MappableGuestMemory>, Arc<dyn MappedMemoryRegion>)> {
            Ok((Box::new(Control(self.0.clone())), self.0.clone()))
        }
    }

    #[test]
    fn a_device_memory_provider_implements_the_traits() {
        let recorder = Arc::new(Recorder::default());
        let mapper: Box<dyn MemoryMapper> = Box::new(Mapper(recorder.clone()));
        let (mut control, region) = mapper.new_region(0x2000, "vram".into()).unwrap();
        let object = sparse_mmap::alloc_shared_memory(0x2000, "vram").unwrap();
        region.map(0, &object, 0x1000, 0x1000, true).unwrap();
        control.map_to_guest(0xa0000, true).unwrap();
        control.unmap_from_guest();
        region.unmap(0, 0x1000).unwrap();
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "map 0x0 0x1000 0x1000 true",
                "place 0xa0000 true",
                "unplace",
                "unmap 0x0 0x1000"
            ]
        );
    }
}
