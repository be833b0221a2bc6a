//! Tests of the guarded operations: results on accessible memory and faults on inaccessible,
//! read-only and truncated pages.

use super::*;

#[test]
fn small_copy_round_trip() {
    initialize_try_copy();
    let src: Vec<u8> = (0..=255).collect();
    let mut dst = vec![0u8; 256];
    // SAFETY: both buffers are owned and 256 bytes long.
    unsafe { try_copy(src.as_ptr(), dst.as_mut_ptr(), 256) }.unwrap();
    assert_eq!(src, dst);
}

#[test]
fn quick_fault_check() {
    initialize_try_copy();
    // SAFETY: fresh anonymous PROT_NONE mapping.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let mut dst = [0u8; 16];
    // SAFETY: faults are recovered.
    let err = unsafe { try_copy(page.cast::<u8>(), dst.as_mut_ptr(), 16) }.unwrap_err();
    assert_eq!(err.fault().si_code, 2);
    assert!(!err.is_write());
}
