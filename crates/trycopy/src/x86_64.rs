//! The guarded accesses for Linux x86-64: the copy and fill routines in one assembly block with
//! their fixup table, and the accesses inlined at the call site (`sites` module).
//!
//! Every instruction that may touch caller-supplied memory lives either in a routine of the
//! single `global_asm!` block below or in a guarded site recorded in the site table
//! (see `sites`). The block is bracketed by two symbols, so the signal handler tells a block
//! fault with one range comparison, and it is followed by a table of `{start, end, fixup}`
//! entries (32-bit offsets from the block start, so the table needs no relocations in a shared
//! object).
//!
//! Which code runs (speed only, never results): scalar loads, stores and compare-exchanges, and
//! copies and fills of up to `sites::INLINE_MAX` (256) bytes, are inlined sites (no call, no
//! register saves, a compile-time length selects one straight-line sequence; fills from
//! `sites::WIDE_MIN` (129) bytes store 32 bytes at a time where the CPU has AVX), and so are fills
//! from `STRING_FILL_MIN` (1 KiB: one `rep stosb`) and, on CPUs with fast string instructions
//! (ERMS), forward copies from `STRING_COPY_MIN` (1 KiB: one `rep movsb`). Other copies and fills
//! call a routine: the AVX routines where the CPU has AVX, else the SSE routines. The CPU
//! features are detected once per process ([`Cpu`]).
//!
//! Calling convention of the routines (private to this file; callers use the safe-ish wrappers
//! at the bottom):
//!
//! * `r11` is the status: the wrapper sets it to 0; when the handler resumes at the fixup it sets
//!   it to the packed fault details (never 0, see [`FaultRecord::to_status`]) and `r10` to the
//!   fault address. Routines never touch either register otherwise.
//! * Routines use no stack, so at any instruction `rsp` points at the return address and the
//!   fixup (`cld; ret`) returns straight to the wrapper.
//! * `DF` is clear on return, also on the fault path (the handler clears it in the saved flags
//!   and the fixup executes `cld`).
//!
//! Strategy of the routines: where the CPU has AVX, forward copies and fills from
//! `AVX_MIN` store 32-byte blocks to a 32-byte-aligned destination — a deliberate deviation from
//! "`rep movsb`/`rep stosb` from 1 KiB" for CPUs without ERMS: on such a machine (AMD EPYC, no
//! ERMS reported) the string instructions ran at 0.5-0.6x of glibc at 4 KiB and fell to ~2 GB/s
//! for some buffer alignments at 64-256 KiB. With ERMS (the Intel Xeon host) `rep movsb` from
//! 1 KiB beat the AVX loop (4 KiB: 1.29x the original's time with AVX), so copies use it there.
//! Below that, and without AVX, the original strategy is used (16-byte SSE blocks, then words
//! and bytes, below 1 KiB; string instructions from 1 KiB). Backward copies are a byte-wise
//! `rep movsb` with DF set.
//!
//! | routine | inputs | outputs / clobbers |
//! |---|---|---|
//! | `copy_forward` | `rdi` dst, `rsi` src, `rcx` len | clobbers `rdi rsi rcx rax xmm0 xmm1` |
//! | `copy_forward_avx` | `rdi` dst, `rsi` src, `rcx` len | clobbers `rdi rsi rcx rax ymm0-3` |
//! | `copy_backward` | `rdi` dst, `rsi` src, `rcx` len | clobbers `rdi rsi rcx` |
//! | `fill` | `rdi` dst, `rax` byte (zero-extended), `rcx` len | clobbers `rdi rcx rax rdx xmm0` |
//! | `fill_avx` | as `fill` | clobbers `rdi rcx rax rdx ymm0` |

// Unsafe code: the guarded routines are assembly (`global_asm!`) and inline assembly called
// through raw pointers.
#![allow(unsafe_code)]

mod sites;

pub(crate) use sites::{
    cmpxchg_u16, cmpxchg_u32, cmpxchg_u64, cmpxchg_u8, read_u16, read_u32, read_u64, read_u8,
    write_u16, write_u32, write_u64, write_u8,
};
#[cfg(test)]
pub(crate) use sites::{sites as sites_for_tests, INLINE_MAX};

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
    // ---- forward copy with 32-byte AVX blocks (chosen at run time when the CPU has AVX) -----
    // No string instruction here: on the project machine (AMD EPYC under Firecracker, no ERMS
    // reported) `rep movsb` fell to about 2 GB/s for some buffer alignments at 64-256 KiB,
    // while this loop stays within 10% of glibc's `memcpy` from 4 KiB to 1 MiB.
    routine_header!("copy_forward_avx"),
    "cmp rcx, 64",
    "jb .Lcopy_forward_avx_blocks",
    // Align the destination to 32 bytes (stores that straddle cache lines halve the
    // throughput): copy the first 32 bytes unaligned, then advance by 1..=32 bytes. Only when
    // the source does not start within 32 bytes above the destination, where the head store
    // could overwrite source bytes that are still to be read.
    "mov rax, rsi",
    "sub rax, rdi",
    "cmp rax, 32",
    "jb .Lcopy_forward_avx_blocks",
    "vmovdqu ymm0, ymmword ptr [rsi]",
    "vmovdqu ymmword ptr [rdi], ymm0",
    "mov eax, edi",
    "and eax, 31",
    "neg rax",
    "add rax, 32",
    "add rsi, rax",
    "add rdi, rax",
    "sub rcx, rax",
    "cmp rcx, 128",
    "jb .Lcopy_forward_avx_blocks",
    ".Lcopy_forward_avx_quad:",
    "vmovdqu ymm0, ymmword ptr [rsi]",
    "vmovdqu ymm1, ymmword ptr [rsi + 32]",
    "vmovdqu ymm2, ymmword ptr [rsi + 64]",
    "vmovdqu ymm3, ymmword ptr [rsi + 96]",
    "vmovdqa ymmword ptr [rdi], ymm0",
    "vmovdqa ymmword ptr [rdi + 32], ymm1",
    "vmovdqa ymmword ptr [rdi + 64], ymm2",
    "vmovdqa ymmword ptr [rdi + 96], ymm3",
    "add rsi, 128",
    "add rdi, 128",
    "sub rcx, 128",
    "cmp rcx, 128",
    "jae .Lcopy_forward_avx_quad",
    ".Lcopy_forward_avx_blocks:",
    "cmp rcx, 32",
    "jb .Lcopy_forward_avx_words",
    ".Lcopy_forward_avx_block:",
    "vmovdqu ymm0, ymmword ptr [rsi]",
    "vmovdqu ymmword ptr [rdi], ymm0",
    "add rsi, 32",
    "add rdi, 32",
    "sub rcx, 32",
    "cmp rcx, 32",
    "jae .Lcopy_forward_avx_block",
    ".Lcopy_forward_avx_words:",
    "vzeroupper",
    "jmp .Lcopy_forward_words",
    routine_footer!("copy_forward_avx"),
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
    // ---- fill with destination-aligned 32-byte AVX stores (run time choice, as for copies) --
    routine_header!("fill_avx"),
    "cmp rcx, 64",
    "jb .Lfill_small",
    "movabs rdx, 0x0101010101010101",
    "imul rax, rdx",
    "vmovq xmm0, rax",
    "vpunpcklqdq xmm0, xmm0, xmm0",
    "vinsertf128 ymm0, ymm0, xmm0, 1",
    "vmovdqu ymmword ptr [rdi], ymm0",
    "mov edx, edi",
    "and edx, 31",
    "neg rdx",
    "add rdx, 32",
    "add rdi, rdx",
    "sub rcx, rdx",
    "cmp rcx, 128",
    "jb .Lfill_avx_blocks",
    ".Lfill_avx_quad:",
    "vmovdqa ymmword ptr [rdi], ymm0",
    "vmovdqa ymmword ptr [rdi + 32], ymm0",
    "vmovdqa ymmword ptr [rdi + 64], ymm0",
    "vmovdqa ymmword ptr [rdi + 96], ymm0",
    "add rdi, 128",
    "sub rcx, 128",
    "cmp rcx, 128",
    "jae .Lfill_avx_quad",
    ".Lfill_avx_blocks:",
    "cmp rcx, 32",
    "jb .Lfill_avx_tail",
    ".Lfill_avx_block:",
    "vmovdqa ymmword ptr [rdi], ymm0",
    "add rdi, 32",
    "sub rcx, 32",
    "cmp rcx, 32",
    "jae .Lfill_avx_block",
    ".Lfill_avx_tail:",
    "vzeroupper",
    "jmp .Lfill_words",
    routine_footer!("fill_avx"),
    // ---- the shared fixup: the handler resumes here after a recovered fault ----------------
    ".p2align 4",
    ".Lmembacking_trycopy_fixup:",
    "cld",
    "ret",
    // The fixup of the AVX routine also leaves the upper vector state clean.
    ".Lmembacking_trycopy_fixup_avx:",
    "vzeroupper",
    "jmp .Lmembacking_trycopy_fixup",
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
    ".long membacking_trycopy_copy_forward_avx - membacking_trycopy_block_start",
    ".long .Lmembacking_trycopy_copy_forward_avx_end - membacking_trycopy_block_start",
    ".long .Lmembacking_trycopy_fixup_avx - membacking_trycopy_block_start",
    table_entry!("copy_backward"),
    table_entry!("fill"),
    ".long membacking_trycopy_fill_avx - membacking_trycopy_block_start",
    ".long .Lmembacking_trycopy_fill_avx_end - membacking_trycopy_block_start",
    ".long .Lmembacking_trycopy_fixup_avx - membacking_trycopy_block_start",
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
    fn membacking_trycopy_copy_forward_avx();
    fn membacking_trycopy_copy_backward();
    fn membacking_trycopy_fill();
    fn membacking_trycopy_fill_avx();
}

/// The address at which to resume when a fault was raised at instruction pointer `ip`, if `ip`
/// lies inside one of the guarded routines of the block or in a guarded site.
///
/// Async-signal-safe: reads only immutable static data, no allocation, no locks, cannot panic.
pub(crate) fn fixup_for(ip: usize) -> Option<usize> {
    block_fixup_for(ip).or_else(|| sites::resume_for(ip))
}

/// [`fixup_for`] for the routines of the assembly block.
fn block_fixup_for(ip: usize) -> Option<usize> {
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
    let entries =
        (table_end as usize).wrapping_sub(table_start as usize) / std::mem::size_of::<FixupEntry>();
    (0..entries).find_map(|index| {
        // SAFETY: `index` is below the number of entries between the table's start and end
        // labels, and the table is immutable read-only data.
        let entry = unsafe { &*table_start.add(index) };
        (entry.start as usize <= offset && offset < entry.end as usize)
            .then(|| block_start + entry.fixup as usize)
    })
}

/// Maps a routine's or site's status (`r11`) and fault address (`r10`) to a result.
///
/// Both registers are outputs of the access: they are only meaningful after a fault, when the
/// handler has written them (nothing is stored on the success path).
#[inline(always)]
fn status_to_result(status: usize, address: usize) -> Result<(), FaultRecord> {
    if status == 0 {
        Ok(())
    } else {
        Err(FaultRecord::from_registers(address, status))
    }
}

/// From this length on, forward copies and fills use the AVX routines where the CPU has AVX.
const AVX_MIN: usize = 256;

/// Fills of at least this many bytes are one inline `rep stosb` ([`sites::fill_string`]): from
/// 1 KiB it is as fast as the AVX routine here, and inline it saves the routine call.
const STRING_FILL_MIN: usize = 1024;

/// Copies of at least this many bytes, forward, are one inline `rep movsb`
/// ([`sites::copy_string`]) where the CPU has fast string instructions ([`Cpu::fast_strings`]).
const STRING_COPY_MIN: usize = 1024;

/// The CPU features that choose between equivalent routines (speed only, never results),
/// detected on the first call and then read from a static.
#[derive(Clone, Copy)]
struct Cpu(u8);

impl Cpu {
    const DETECTED: u8 = 1;
    const AVX: u8 = 2;
    const FAST_STRINGS: u8 = 4;

    #[inline(always)]
    fn get() -> Self {
        use std::sync::atomic::{AtomicU8, Ordering};
        static FEATURES: AtomicU8 = AtomicU8::new(0);
        #[cold]
        fn detect() -> Cpu {
            let mut bits = Cpu::DETECTED;
            if std::is_x86_feature_detected!("avx") {
                bits |= Cpu::AVX;
            }
            if std::is_x86_feature_detected!("ermsb") {
                bits |= Cpu::FAST_STRINGS;
            }
            FEATURES.store(bits, Ordering::Relaxed);
            Cpu(bits)
        }
        match FEATURES.load(Ordering::Relaxed) {
            0 => detect(),
            bits => Cpu(bits),
        }
    }

    /// The CPU and OS support AVX.
    fn avx(self) -> bool {
        self.0 & Self::AVX != 0
    }

    /// The CPU reports enhanced `rep movsb`/`rep stosb` (ERMS): from 1 KiB a string copy is
    /// then as fast as the vector loops (it is what the original uses from 1 KiB). Without it
    /// (the AMD EPYC host of earlier measurements) `rep movsb` ran at half of glibc's speed,
    /// and the AVX routine is used instead.
    fn fast_strings(self) -> bool {
        self.0 & Self::FAST_STRINGS != 0
    }
}

/// Copies `len` bytes with `memmove` semantics: inline up to `sites::INLINE_MAX` bytes
/// (loads before stores, so any overlap works), else the routine for the direction and size.
///
/// # Safety
/// The caller accepts that any byte of `[dst, dst + len)` may be written and any byte of
/// `[src, src + len)` read; the memory must not be Rust-owned memory borrowed elsewhere.
#[inline(always)]
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), FaultRecord> {
    // SAFETY: forwarded caller contract.
    unsafe {
        if len == 0 {
            Ok(())
        } else if len <= sites::INLINE_MAX {
            sites::copy_small(dst, src, len)
        } else if len >= STRING_COPY_MIN
            && is_forward_safe(dst, src, len)
            && Cpu::get().fast_strings()
        {
            sites::copy_string(dst, src, len)
        } else {
            copy_long(dst, src, len)
        }
    }
}

/// A forward copy strategy: `(dst, src, len)`, `dst` not in `(src, src + len)`.
#[cfg(test)]
pub(crate) type ForwardCopy = unsafe fn(*mut u8, *const u8, usize) -> Result<(), FaultRecord>;

/// Every forward copy strategy this CPU can run, by name, whichever [`copy`] picks here (tests
/// run each one on every machine that has it).
#[cfg(test)]
pub(crate) fn forward_copy_strategies() -> Vec<(&'static str, ForwardCopy)> {
    let mut strategies: Vec<(&'static str, ForwardCopy)> = vec![
        ("sse routine", copy_forward_sse),
        ("rep movsb site", sites::copy_string),
    ];
    if Cpu::get().avx() {
        strategies.push(("avx routine", copy_forward_avx));
    }
    strategies
}

/// A family of inline fill sites for `min_len..=INLINE_MAX` bytes, with the width of its
/// widest store (a fault in a store may leave that many bytes before the fault unwritten).
#[cfg(test)]
pub(crate) struct InlineFill {
    pub name: &'static str,
    pub min_len: usize,
    pub store_width: usize,
    pub fill: unsafe fn(*mut u8, u8, usize) -> Result<(), FaultRecord>,
}

/// Every inline fill site family this CPU can run, whichever [`fill`] picks here (tests run
/// each one on every machine that has it).
#[cfg(test)]
pub(crate) fn inline_fills() -> Vec<InlineFill> {
    let mut families = vec![InlineFill {
        name: "16-byte stores",
        min_len: 1,
        store_width: 16,
        fill: sites::fill_small,
    }];
    if Cpu::get().avx() {
        families.push(InlineFill {
            name: "32-byte AVX stores",
            min_len: sites::WIDE_MIN,
            store_width: 32,
            fill: sites::fill_wide,
        });
    }
    families
}

/// The width of the widest store of the inline fill that [`fill`] picks for `len` bytes on this
/// CPU: the widest family that covers `len` (inline copies store at most 16 bytes at a time).
#[cfg(test)]
pub(crate) fn inline_fill_store_width(len: usize) -> usize {
    inline_fills()
        .iter()
        .filter(|family| len >= family.min_len)
        .map(|family| family.store_width)
        .max()
        .unwrap_or(16)
}

/// Whether a forward copy of `len` bytes from `src` to `dst` reads every byte before it is
/// overwritten: `dst` does not lie in `(src, src + len)`.
#[inline(always)]
fn is_forward_safe(dst: *mut u8, src: *const u8, len: usize) -> bool {
    (dst as usize).wrapping_sub(src as usize) >= len
}

/// [`copy`] beyond the inline sizes: one routine call.
///
/// # Safety
/// As for [`copy`].
#[inline(never)]
unsafe fn copy_long(dst: *mut u8, src: *const u8, len: usize) -> Result<(), FaultRecord> {
    // SAFETY: forwarded caller contract; the direction rule makes each routine's access order
    // correct for overlapping ranges, and the AVX routine only runs where AVX is available.
    unsafe {
        if !is_forward_safe(dst, src, len) {
            copy_backward(dst, src, len)
        } else if len >= AVX_MIN && Cpu::get().avx() {
            copy_forward_avx(dst, src, len)
        } else {
            copy_forward_sse(dst, src, len)
        }
    }
}

/// Forward copy with 16-byte SSE blocks below 1 KiB and `rep movsb` from 1 KiB.
///
/// # Safety
/// As for [`copy`]; in addition `dst` must not lie in `(src, src + len)`.
#[inline]
unsafe fn copy_forward_sse(dst: *mut u8, src: *const u8, len: usize) -> Result<(), FaultRecord> {
    let status: usize;
    let address: usize;
    // SAFETY: the routine follows the register contract in the module comment; the caller
    // guarantees the ranges may be accessed, and faults are recovered by the handler.
    unsafe {
        asm!(
            "call {routine}",
            routine = sym membacking_trycopy_copy_forward,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            inout("rcx") len => _,
            out("r10") address,
            inout("r11") 0usize => status,
            out("rax") _,
            out("xmm0") _,
            out("xmm1") _,
        );
    }
    status_to_result(status, address)
}

/// Forward copy with destination-aligned 32-byte AVX blocks.
///
/// # Safety
/// As for [`copy_forward_sse`]; in addition the CPU and OS must support AVX.
#[inline]
unsafe fn copy_forward_avx(dst: *mut u8, src: *const u8, len: usize) -> Result<(), FaultRecord> {
    let status: usize;
    let address: usize;
    // SAFETY: the routine follows the register contract in the module comment and AVX is
    // available (caller); the caller guarantees the ranges may be accessed, and faults are
    // recovered by the handler. The ABI clobber covers the full vector registers (ymm), which
    // cannot be named without compiling for AVX.
    unsafe {
        asm!(
            "call {routine}",
            routine = sym membacking_trycopy_copy_forward_avx,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            inout("rcx") len => _,
            out("r10") address,
            inout("r11") 0usize => status,
            clobber_abi("C"),
        );
    }
    status_to_result(status, address)
}

/// Backward byte copy (destination above an overlapping source).
///
/// # Safety
/// As for [`copy`].
#[inline]
unsafe fn copy_backward(dst: *mut u8, src: *const u8, len: usize) -> Result<(), FaultRecord> {
    let status: usize;
    let address: usize;
    // SAFETY: the routine follows the register contract in the module comment and leaves DF
    // clear on both paths; the caller guarantees the ranges may be accessed, and faults are
    // recovered by the handler.
    unsafe {
        asm!(
            "call {routine}",
            routine = sym membacking_trycopy_copy_backward,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            inout("rcx") len => _,
            out("r10") address,
            inout("r11") 0usize => status,
        );
    }
    status_to_result(status, address)
}

/// Sets `len` bytes at `dst` to `byte`: inline up to `sites::INLINE_MAX` bytes, else a routine.
///
/// # Safety
/// The caller accepts that any byte of `[dst, dst + len)` may be written.
#[inline(always)]
pub(crate) unsafe fn fill(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    // SAFETY: forwarded caller contract.
    unsafe {
        if len == 0 {
            Ok(())
        } else if len <= sites::INLINE_MAX {
            if len >= sites::WIDE_MIN && Cpu::get().avx() {
                sites::fill_wide(dst, byte, len)
            } else {
                sites::fill_small(dst, byte, len)
            }
        } else if len >= STRING_FILL_MIN {
            sites::fill_string(dst, byte, len)
        } else {
            fill_long(dst, byte, len)
        }
    }
}

/// [`fill`] beyond the inline sizes: one routine call.
///
/// # Safety
/// As for [`fill`].
#[inline(never)]
unsafe fn fill_long(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    // SAFETY: forwarded caller contract; the AVX routine only runs where AVX is available.
    unsafe {
        if len >= AVX_MIN && Cpu::get().avx() {
            fill_avx(dst, byte, len)
        } else {
            fill_sse(dst, byte, len)
        }
    }
}

/// Fill with 16-byte SSE blocks below 1 KiB and `rep stosb` from 1 KiB.
///
/// # Safety
/// As for [`fill`].
#[inline]
unsafe fn fill_sse(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    let status: usize;
    let address: usize;
    // SAFETY: the routine follows the register contract in the module comment; the caller
    // guarantees the range may be written, and faults are recovered by the handler.
    unsafe {
        asm!(
            "call {routine}",
            routine = sym membacking_trycopy_fill,
            inout("rdi") dst => _,
            inout("rcx") len => _,
            inout("rax") u64::from(byte) => _,
            out("r10") address,
            inout("r11") 0usize => status,
            out("rdx") _,
            out("xmm0") _,
        );
    }
    status_to_result(status, address)
}

/// Fill with destination-aligned 32-byte AVX stores.
///
/// # Safety
/// As for [`fill`]; in addition the CPU and OS must support AVX.
#[inline]
unsafe fn fill_avx(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    let status: usize;
    let address: usize;
    // SAFETY: the routine follows the register contract in the module comment and AVX is
    // available (caller); the caller guarantees the range may be written, and faults are
    // recovered by the handler. The ABI clobber covers the full ymm registers.
    unsafe {
        asm!(
            "call {routine}",
            routine = sym membacking_trycopy_fill_avx,
            inout("rdi") dst => _,
            inout("rcx") len => _,
            inout("rax") u64::from(byte) => _,
            out("r10") address,
            inout("r11") 0usize => status,
            clobber_abi("C"),
        );
    }
    status_to_result(status, address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixup_table_covers_every_routine_and_nothing_outside_the_block() {
        let routines: [unsafe extern "C" fn(); 5] = [
            membacking_trycopy_copy_forward,
            membacking_trycopy_copy_forward_avx,
            membacking_trycopy_fill_avx,
            membacking_trycopy_copy_backward,
            membacking_trycopy_fill,
        ];
        let fixups: Vec<usize> = routines
            .iter()
            .map(|routine| fixup_for(*routine as usize).expect("routine entry is guarded"))
            .collect();
        // One shared fixup, plus the AVX routines' own (which ends in the shared one); both lie
        // outside every guarded range.
        let shared = fixups[0];
        let avx = fixups[1];
        assert_ne!(avx, shared);
        assert_eq!(fixups[2], avx);
        assert!(fixups[3..].iter().all(|&f| f == shared));
        assert_eq!(fixup_for(shared), None);
        assert_eq!(fixup_for(avx), None);
        assert_eq!(
            fixup_for(fixup_for_is_not_guarded as *const () as usize),
            None
        );
        assert_eq!(fixup_for(0), None);
        assert_eq!(fixup_for(usize::MAX), None);
    }

    fn fixup_for_is_not_guarded() {}

    type CopyRoutine = unsafe fn(*mut u8, *const u8, usize) -> Result<(), FaultRecord>;

    /// Runs `copy` over every length 0..=5000 and several alignments, against a reference.
    fn check_forward_routine(
        copy: unsafe fn(*mut u8, *const u8, usize) -> Result<(), FaultRecord>,
    ) {
        let source: Vec<u8> = (0..6000u32)
            .map(|i| (i * 7 + i / 256).to_le_bytes()[0])
            .collect();
        let mut destination = vec![0u8; 6100];
        for (src_off, dst_off) in [(0usize, 0usize), (3, 17), (16, 1), (31, 32)] {
            for len in 0..=5000 {
                destination.fill(0xEE);
                // SAFETY: both ranges lie inside the owned buffers, which do not overlap.
                unsafe {
                    copy(
                        destination[dst_off..].as_mut_ptr(),
                        source[src_off..].as_ptr(),
                        len,
                    )
                }
                .unwrap();
                assert_eq!(
                    &destination[dst_off..dst_off + len],
                    &source[src_off..src_off + len]
                );
                assert!(destination[..dst_off].iter().all(|&b| b == 0xEE));
                assert!(
                    destination[dst_off + len..].iter().all(|&b| b == 0xEE),
                    "len {len}"
                );
            }
        }
        // Forward overlapping moves (destination below the source), including shifts below
        // 32 bytes, where the AVX routine must not store its aligned head early.
        for shift in [1usize, 2, 8, 31, 32, 33, 100] {
            for len in [1usize, 63, 64, 65, 200, 4096, 5000] {
                let mut ours = source.clone();
                let mut reference = source.clone();
                // SAFETY: both ranges lie inside `ours`; destination below source.
                unsafe { copy(ours.as_mut_ptr(), ours[shift..].as_ptr(), len) }.unwrap();
                reference.copy_within(shift..shift + len, 0);
                assert!(ours == reference, "shift {shift} len {len}");
            }
        }
    }

    #[test]
    fn sse_forward_copy_matches_reference() {
        check_forward_routine(copy_forward_sse);
    }

    #[test]
    fn avx_forward_copy_matches_reference() {
        if !std::is_x86_feature_detected!("avx") {
            eprintln!("skipped: this CPU has no AVX");
            return;
        }
        check_forward_routine(copy_forward_avx);
    }

    type FillRoutine = unsafe fn(*mut u8, u8, usize) -> Result<(), FaultRecord>;

    fn check_fill_routine(fill: FillRoutine) {
        let mut buffer = vec![0u8; 5200];
        for byte in [0u8, 0x5F, 0xFF] {
            for offset in [0usize, 1, 17, 32] {
                for len in 0..=5000 {
                    buffer.fill(0xA5);
                    // SAFETY: the range lies inside the owned buffer.
                    unsafe { fill(buffer[offset..].as_mut_ptr(), byte, len) }.unwrap();
                    assert!(buffer[offset..offset + len].iter().all(|&b| b == byte));
                    assert!(buffer[..offset].iter().all(|&b| b == 0xA5));
                    assert!(
                        buffer[offset + len..].iter().all(|&b| b == 0xA5),
                        "len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn sse_fill_matches_reference() {
        check_fill_routine(fill_sse);
    }

    #[test]
    fn avx_fill_matches_reference() {
        if !std::is_x86_feature_detected!("avx") {
            eprintln!("skipped: this CPU has no AVX");
            return;
        }
        check_fill_routine(fill_avx);
    }

    #[test]
    fn each_forward_routine_reports_faults() {
        crate::initialize_try_copy();
        // SAFETY: a fresh anonymous two-page mapping whose second page is made inaccessible.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base.cast::<u8>();
        // SAFETY: the second page of our own mapping.
        unsafe { libc::mprotect(base.add(4096).cast(), 4096, libc::PROT_NONE) };
        let mut routines: Vec<CopyRoutine> = vec![copy_forward_sse];
        if std::is_x86_feature_detected!("avx") {
            routines.push(copy_forward_avx);
        }
        let mut fills: Vec<FillRoutine> = vec![fill_sse];
        if std::is_x86_feature_detected!("avx") {
            fills.push(fill_avx);
        }
        for fill in fills {
            for (start, len) in [(4096 - 8, 16usize), (4096 - 1000, 3000), (0, 8192)] {
                // SAFETY: fills our mapping; faults are recovered.
                let record = unsafe { fill(base.add(start), 0x11, len) }.unwrap_err();
                assert_eq!(record.address, base as usize + 4096);
            }
        }
        let mut host = vec![0u8; 8192];
        for routine in routines {
            for (start, len) in [(4096 - 8, 16usize), (4096 - 1000, 3000), (0, 8192)] {
                // SAFETY: reads from our mapping into the owned buffer; faults are recovered.
                let record =
                    unsafe { routine(host.as_mut_ptr(), base.add(start), len) }.unwrap_err();
                assert_eq!(record.address, base as usize + 4096);
                assert_eq!(
                    (record.signal, record.si_code, record.trapno),
                    (libc::SIGSEGV, 2, 14)
                );
                // And in the other direction.
                // SAFETY: writes into our mapping from the owned buffer; faults are recovered.
                let record = unsafe { routine(base.add(start), host.as_ptr(), len) }.unwrap_err();
                assert_eq!(record.address, base as usize + 4096);
            }
        }
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(base.cast(), 8192) };
    }
}
