//! The guarded routines for Linux x86-64, in one assembly block, plus their fixup table.
//!
//! Every instruction that may touch caller-supplied memory lives in a routine of the single
//! `global_asm!` block below (spec R1). The block is bracketed by two symbols, so the signal
//! handler rejects a foreign fault with one range comparison, and it is followed by a table of
//! `{start, end, fixup}` entries (32-bit offsets from the block start, so the table needs no
//! relocations in a shared object).
//!
//! Calling convention of the routines (private to this file; callers use the safe-ish wrappers
//! at the bottom):
//!
//! * `r10` holds a pointer to the caller's [`FaultRecord`]; routines never modify it. The handler
//!   writes the fault details through it.
//! * `r11` is the status: the wrapper sets it to 0; the shared fixup sets it to 1. Routines never
//!   touch it otherwise.
//! * Routines use no stack, so at any instruction `rsp` points at the return address and the
//!   fixup (`cld; mov r11d, 1; ret`) returns straight to the wrapper.
//! * `DF` is clear on return, also on the fault path (the handler clears it in the saved flags
//!   and the fixup executes `cld`).
//!
//! | routine | inputs | outputs / clobbers |
//! |---|---|---|
//! | `copy_forward` | `rdi` dst, `rsi` src, `rcx` len > 0 | clobbers `rdi rsi rcx rax xmm0 xmm1` |
//! | `copy_backward` | `rdi` dst, `rsi` src, `rcx` len > 0 | clobbers `rdi rsi rcx` |
//! | `fill` | `rdi` dst, `rax` byte (zero-extended), `rcx` len > 0 | clobbers `rdi rcx rax rdx xmm0` |
//! | `read_N` | `rsi` src | `rdx` value (zero-extended) |
//! | `write_N` | `rdi` dst, `rdx` value | — |
//! | `cmpxchg_N` | `rdi` dst, `rax` expected (zero-extended), `rdx` new | `rax` observed |

use crate::error::FaultRecord;
use std::arch::{asm, global_asm};

/// Emits the symbol directives for one routine: hidden global function symbol and alignment.
macro_rules! routine_header {
    ($name:literal) => {
        concat!(
            ".p2align 4\n",
            ".globl membacking_trycopy_",
            $name,
            "\n",
            ".hidden membacking_trycopy_",
            $name,
            "\n",
            ".type membacking_trycopy_",
            $name,
            ",@function\n",
            "membacking_trycopy_",
            $name,
            ":\n",
        )
    };
}

/// Emits the end label and the ELF size of one routine.
macro_rules! routine_footer {
    ($name:literal) => {
        concat!(
            ".Lmembacking_trycopy_",
            $name,
            "_end:\n",
            ".size membacking_trycopy_",
            $name,
            ", .Lmembacking_trycopy_",
            $name,
            "_end - membacking_trycopy_",
            $name,
            "\n",
        )
    };
}

/// Emits one fixup-table entry covering the whole routine.
macro_rules! table_entry {
    ($name:literal) => {
        concat!(
            ".long membacking_trycopy_",
            $name,
            " - membacking_trycopy_block_start\n",
            ".long .Lmembacking_trycopy_",
            $name,
            "_end - membacking_trycopy_block_start\n",
            ".long .Lmembacking_trycopy_fixup - membacking_trycopy_block_start\n",
        )
    };
}

global_asm!(
    ".pushsection .text.membacking_trycopy,\"ax\",@progbits",
    ".p2align 6",
    ".globl membacking_trycopy_block_start",
    ".hidden membacking_trycopy_block_start",
    "membacking_trycopy_block_start:",
    // ---- forward copy -------------------------------------------------------------------
    routine_header!("copy_forward"),
    "cmp rcx, 1024",
    "jb .Lcopy_forward_small",
    "rep movsb",
    "ret",
    ".Lcopy_forward_small:",
    "cmp rcx, 32",
    "jb .Lcopy_forward_words",
    ".Lcopy_forward_block:",
    "movdqu xmm0, xmmword ptr [rsi]",
    "movdqu xmm1, xmmword ptr [rsi + 16]",
    "movdqu xmmword ptr [rdi], xmm0",
    "movdqu xmmword ptr [rdi + 16], xmm1",
    "add rsi, 32",
    "add rdi, 32",
    "sub rcx, 32",
    "cmp rcx, 32",
    "jae .Lcopy_forward_block",
    ".Lcopy_forward_words:",
    "cmp rcx, 8",
    "jb .Lcopy_forward_bytes",
    ".Lcopy_forward_word:",
    "mov rax, qword ptr [rsi]",
    "mov qword ptr [rdi], rax",
    "add rsi, 8",
    "add rdi, 8",
    "sub rcx, 8",
    "cmp rcx, 8",
    "jae .Lcopy_forward_word",
    ".Lcopy_forward_bytes:",
    "test rcx, rcx",
    "jz .Lcopy_forward_done",
    ".Lcopy_forward_byte:",
    "mov al, byte ptr [rsi]",
    "mov byte ptr [rdi], al",
    "inc rsi",
    "inc rdi",
    "dec rcx",
    "jnz .Lcopy_forward_byte",
    ".Lcopy_forward_done:",
    "ret",
    routine_footer!("copy_forward"),
    // ---- backward copy (destination above an overlapping source) -------------------------
    routine_header!("copy_backward"),
    "lea rsi, [rsi + rcx - 1]",
    "lea rdi, [rdi + rcx - 1]",
    "std",
    "rep movsb",
    "cld",
    "ret",
    routine_footer!("copy_backward"),
    // ---- fill -----------------------------------------------------------------------------
    routine_header!("fill"),
    "cmp rcx, 1024",
    "jb .Lfill_small",
    "rep stosb",
    "ret",
    ".Lfill_small:",
    "movabs rdx, 0x0101010101010101",
    "imul rax, rdx",
    "cmp rcx, 32",
    "jb .Lfill_words",
    "movq xmm0, rax",
    "punpcklqdq xmm0, xmm0",
    ".Lfill_block:",
    "movdqu xmmword ptr [rdi], xmm0",
    "movdqu xmmword ptr [rdi + 16], xmm0",
    "add rdi, 32",
    "sub rcx, 32",
    "cmp rcx, 32",
    "jae .Lfill_block",
    ".Lfill_words:",
    "cmp rcx, 8",
    "jb .Lfill_bytes",
    ".Lfill_word:",
    "mov qword ptr [rdi], rax",
    "add rdi, 8",
    "sub rcx, 8",
    "cmp rcx, 8",
    "jae .Lfill_word",
    ".Lfill_bytes:",
    "test rcx, rcx",
    "jz .Lfill_done",
    ".Lfill_byte:",
    "mov byte ptr [rdi], al",
    "inc rdi",
    "dec rcx",
    "jnz .Lfill_byte",
    ".Lfill_done:",
    "ret",
    routine_footer!("fill"),
    // ---- single loads ---------------------------------------------------------------------
    routine_header!("read_1"),
    "movzx edx, byte ptr [rsi]",
    "ret",
    routine_footer!("read_1"),
    routine_header!("read_2"),
    "movzx edx, word ptr [rsi]",
    "ret",
    routine_footer!("read_2"),
    routine_header!("read_4"),
    "mov edx, dword ptr [rsi]",
    "ret",
    routine_footer!("read_4"),
    routine_header!("read_8"),
    "mov rdx, qword ptr [rsi]",
    "ret",
    routine_footer!("read_8"),
    // ---- single stores --------------------------------------------------------------------
    routine_header!("write_1"),
    "mov byte ptr [rdi], dl",
    "ret",
    routine_footer!("write_1"),
    routine_header!("write_2"),
    "mov word ptr [rdi], dx",
    "ret",
    routine_footer!("write_2"),
    routine_header!("write_4"),
    "mov dword ptr [rdi], edx",
    "ret",
    routine_footer!("write_4"),
    routine_header!("write_8"),
    "mov qword ptr [rdi], rdx",
    "ret",
    routine_footer!("write_8"),
    // ---- locked compare-exchange (always a write cycle, so read-only pages fault) ----------
    routine_header!("cmpxchg_1"),
    "lock cmpxchg byte ptr [rdi], dl",
    "ret",
    routine_footer!("cmpxchg_1"),
    routine_header!("cmpxchg_2"),
    "lock cmpxchg word ptr [rdi], dx",
    "ret",
    routine_footer!("cmpxchg_2"),
    routine_header!("cmpxchg_4"),
    "lock cmpxchg dword ptr [rdi], edx",
    "ret",
    routine_footer!("cmpxchg_4"),
    routine_header!("cmpxchg_8"),
    "lock cmpxchg qword ptr [rdi], rdx",
    "ret",
    routine_footer!("cmpxchg_8"),
    // ---- the shared fixup: the handler resumes here after a recovered fault ----------------
    ".p2align 4",
    ".Lmembacking_trycopy_fixup:",
    "cld",
    "mov r11d, 1",
    "ret",
    ".globl membacking_trycopy_block_end",
    ".hidden membacking_trycopy_block_end",
    "membacking_trycopy_block_end:",
    ".popsection",
    // ---- the fixup table ------------------------------------------------------------------
    ".pushsection .rodata.membacking_trycopy_table,\"a\",@progbits",
    ".p2align 2",
    ".globl membacking_trycopy_table_start",
    ".hidden membacking_trycopy_table_start",
    "membacking_trycopy_table_start:",
    table_entry!("copy_forward"),
    table_entry!("copy_backward"),
    table_entry!("fill"),
    table_entry!("read_1"),
    table_entry!("read_2"),
    table_entry!("read_4"),
    table_entry!("read_8"),
    table_entry!("write_1"),
    table_entry!("write_2"),
    table_entry!("write_4"),
    table_entry!("write_8"),
    table_entry!("cmpxchg_1"),
    table_entry!("cmpxchg_2"),
    table_entry!("cmpxchg_4"),
    table_entry!("cmpxchg_8"),
    ".globl membacking_trycopy_table_end",
    ".hidden membacking_trycopy_table_end",
    "membacking_trycopy_table_end:",
    ".popsection",
);

/// One fixup-table entry: offsets from `membacking_trycopy_block_start`.
#[repr(C)]
struct FixupEntry {
    /// First byte of the guarded routine.
    start: u32,
    /// One past its last byte.
    end: u32,
    /// Where execution resumes after a fault inside `[start, end)`.
    fixup: u32,
}

extern "C" {
    // Labels of the assembly block above. They are only ever used for their addresses (the
    // statics) or as call targets through `sym` (the functions, which do not follow the C ABI
    // and must never be called from Rust directly).
    static membacking_trycopy_block_start: u8;
    static membacking_trycopy_block_end: u8;
    static membacking_trycopy_table_start: FixupEntry;
    static membacking_trycopy_table_end: FixupEntry;
    fn membacking_trycopy_copy_forward();
    fn membacking_trycopy_copy_backward();
    fn membacking_trycopy_fill();
    fn membacking_trycopy_read_1();
    fn membacking_trycopy_read_2();
    fn membacking_trycopy_read_4();
    fn membacking_trycopy_read_8();
    fn membacking_trycopy_write_1();
    fn membacking_trycopy_write_2();
    fn membacking_trycopy_write_4();
    fn membacking_trycopy_write_8();
    fn membacking_trycopy_cmpxchg_1();
    fn membacking_trycopy_cmpxchg_2();
    fn membacking_trycopy_cmpxchg_4();
    fn membacking_trycopy_cmpxchg_8();
}

/// The address at which to resume when a fault was raised at instruction pointer `ip`, if `ip`
/// lies inside one of the guarded routines.
///
/// Async-signal-safe: reads only immutable static data, no allocation, no locks, cannot panic.
#[inline]
pub(crate) fn fixup_for(ip: usize) -> Option<usize> {
    // SAFETY: only the addresses of the linker-provided labels are taken; nothing is read.
    // (Taking the address of an extern static needs `unsafe` before Rust 1.82.)
    #[allow(unused_unsafe)]
    let (block_start, block_end, table_start, table_end) = unsafe {
        (
            std::ptr::addr_of!(membacking_trycopy_block_start) as usize,
            std::ptr::addr_of!(membacking_trycopy_block_end) as usize,
            std::ptr::addr_of!(membacking_trycopy_table_start),
            std::ptr::addr_of!(membacking_trycopy_table_end),
        )
    };
    if ip < block_start || ip >= block_end {
        return None;
    }
    let offset = ip - block_start;
    let entries = (table_end as usize - table_start as usize) / std::mem::size_of::<FixupEntry>();
    (0..entries).find_map(|index| {
        // SAFETY: `index` is below the number of entries between the table's start and end
        // labels, and the table is immutable read-only data.
        let entry = unsafe { &*table_start.add(index) };
        (entry.start as usize <= offset && offset < entry.end as usize)
            .then(|| block_start + entry.fixup as usize)
    })
}

/// Maps a routine status (`r11`) to a result.
#[inline(always)]
fn status_to_result(status: usize, record: FaultRecord) -> Result<(), FaultRecord> {
    if status == 0 {
        Ok(())
    } else {
        Err(record)
    }
}

/// Copies `len > 0` bytes, choosing the direction so that overlapping ranges behave like
/// `memmove`.
///
/// # Safety
/// The caller accepts that any byte of `[dst, dst + len)` may be written and any byte of
/// `[src, src + len)` read; the memory must not be Rust-owned memory borrowed elsewhere.
#[inline]
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), FaultRecord> {
    let mut record = FaultRecord::default();
    let status: usize;
    if (dst as usize).wrapping_sub(src as usize) >= len {
        // SAFETY: the routine follows the register contract in the module comment; the caller
        // guarantees the ranges may be accessed, and faults are recovered by the handler.
        unsafe {
            asm!(
                "call {routine}",
                routine = sym membacking_trycopy_copy_forward,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                inout("rcx") len => _,
                in("r10") std::ptr::addr_of_mut!(record),
                inout("r11") 0usize => status,
                out("rax") _,
                out("xmm0") _,
                out("xmm1") _,
            );
        }
    } else {
        // SAFETY: as above; the backward routine leaves DF clear on both paths.
        unsafe {
            asm!(
                "call {routine}",
                routine = sym membacking_trycopy_copy_backward,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                inout("rcx") len => _,
                in("r10") std::ptr::addr_of_mut!(record),
                inout("r11") 0usize => status,
            );
        }
    }
    status_to_result(status, record)
}

/// Sets `len > 0` bytes at `dst` to `byte`.
///
/// # Safety
/// The caller accepts that any byte of `[dst, dst + len)` may be written.
#[inline]
pub(crate) unsafe fn fill(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    let mut record = FaultRecord::default();
    let status: usize;
    // SAFETY: the routine follows the register contract in the module comment; the caller
    // guarantees the range may be written, and faults are recovered by the handler.
    unsafe {
        asm!(
            "call {routine}",
            routine = sym membacking_trycopy_fill,
            inout("rdi") dst => _,
            inout("rcx") len => _,
            inout("rax") u64::from(byte) => _,
            in("r10") std::ptr::addr_of_mut!(record),
            inout("r11") 0usize => status,
            out("rdx") _,
            out("xmm0") _,
        );
    }
    status_to_result(status, record)
}

/// Generates a single-load wrapper.
macro_rules! read_fn {
    ($name:ident, $routine:ident, $ty:ty) => {
        /// Loads one value with a single instruction.
        ///
        /// # Safety
        /// The caller accepts that `src` is read.
        #[inline]
        pub(crate) unsafe fn $name(src: *const $ty) -> Result<$ty, FaultRecord> {
            let mut record = FaultRecord::default();
            let status: usize;
            let value: u64;
            // SAFETY: the routine follows the register contract in the module comment and
            // touches only `src`; faults are recovered by the handler.
            unsafe {
                asm!(
                    "call {routine}",
                    routine = sym $routine,
                    in("rsi") src,
                    in("r10") std::ptr::addr_of_mut!(record),
                    inout("r11") 0usize => status,
                    out("rdx") value,
                );
            }
            // The routine zero-extends the loaded value into `rdx`; truncation is exact.
            status_to_result(status, record).map(|()| value as $ty)
        }
    };
}

read_fn!(read_u8, membacking_trycopy_read_1, u8);
read_fn!(read_u16, membacking_trycopy_read_2, u16);
read_fn!(read_u32, membacking_trycopy_read_4, u32);
read_fn!(read_u64, membacking_trycopy_read_8, u64);

/// Generates a single-store wrapper.
macro_rules! write_fn {
    ($name:ident, $routine:ident, $ty:ty) => {
        /// Stores one value with a single instruction.
        ///
        /// # Safety
        /// The caller accepts that `dst` is written.
        #[inline]
        pub(crate) unsafe fn $name(dst: *mut $ty, value: $ty) -> Result<(), FaultRecord> {
            let mut record = FaultRecord::default();
            let status: usize;
            // SAFETY: the routine follows the register contract in the module comment and
            // touches only `dst`; faults are recovered by the handler.
            unsafe {
                asm!(
                    "call {routine}",
                    routine = sym $routine,
                    in("rdi") dst,
                    in("rdx") u64::from(value),
                    in("r10") std::ptr::addr_of_mut!(record),
                    inout("r11") 0usize => status,
                );
            }
            status_to_result(status, record)
        }
    };
}

write_fn!(write_u8, membacking_trycopy_write_1, u8);
write_fn!(write_u16, membacking_trycopy_write_2, u16);
write_fn!(write_u32, membacking_trycopy_write_4, u32);
write_fn!(write_u64, membacking_trycopy_write_8, u64);

/// Generates a locked compare-exchange wrapper returning the value observed in memory.
macro_rules! cmpxchg_fn {
    ($name:ident, $routine:ident, $ty:ty) => {
        /// One `lock cmpxchg`; returns the value memory held (equal to `expected` exactly when
        /// the swap happened).
        ///
        /// # Safety
        /// The caller accepts that `dst` is read and written.
        #[inline]
        pub(crate) unsafe fn $name(
            dst: *mut $ty,
            expected: $ty,
            new: $ty,
        ) -> Result<$ty, FaultRecord> {
            let mut record = FaultRecord::default();
            let status: usize;
            let observed: u64;
            // SAFETY: the routine follows the register contract in the module comment and
            // touches only `dst`; faults are recovered by the handler.
            unsafe {
                asm!(
                    "call {routine}",
                    routine = sym $routine,
                    in("rdi") dst,
                    inout("rax") u64::from(expected) => observed,
                    in("rdx") u64::from(new),
                    in("r10") std::ptr::addr_of_mut!(record),
                    inout("r11") 0usize => status,
                );
            }
            // `cmpxchg` of a narrow operand only replaces the low bits of `rax`, whose upper
            // bits still hold the zero-extension of `expected`: truncation is exact.
            status_to_result(status, record).map(|()| observed as $ty)
        }
    };
}

cmpxchg_fn!(cmpxchg_u8, membacking_trycopy_cmpxchg_1, u8);
cmpxchg_fn!(cmpxchg_u16, membacking_trycopy_cmpxchg_2, u16);
cmpxchg_fn!(cmpxchg_u32, membacking_trycopy_cmpxchg_4, u32);
cmpxchg_fn!(cmpxchg_u64, membacking_trycopy_cmpxchg_8, u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixup_table_covers_every_routine_and_nothing_outside_the_block() {
        let routines: [unsafe extern "C" fn(); 15] = [
            membacking_trycopy_copy_forward,
            membacking_trycopy_copy_backward,
            membacking_trycopy_fill,
            membacking_trycopy_read_1,
            membacking_trycopy_read_2,
            membacking_trycopy_read_4,
            membacking_trycopy_read_8,
            membacking_trycopy_write_1,
            membacking_trycopy_write_2,
            membacking_trycopy_write_4,
            membacking_trycopy_write_8,
            membacking_trycopy_cmpxchg_1,
            membacking_trycopy_cmpxchg_2,
            membacking_trycopy_cmpxchg_4,
            membacking_trycopy_cmpxchg_8,
        ];
        let fixups: Vec<usize> = routines
            .iter()
            .map(|routine| fixup_for(*routine as usize).expect("routine entry is guarded"))
            .collect();
        // One shared fixup, outside every guarded range.
        assert!(fixups.iter().all(|&f| f == fixups[0]));
        assert_eq!(fixup_for(fixups[0]), None);
        assert_eq!(
            fixup_for(fixup_for_is_not_guarded as *const () as usize),
            None
        );
        assert_eq!(fixup_for(0), None);
        assert_eq!(fixup_for(usize::MAX), None);
    }

    fn fixup_for_is_not_guarded() {}
}
