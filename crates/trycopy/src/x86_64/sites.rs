//! Guarded accesses inlined at the call site: scalar loads, stores and compare-exchanges, and
//! copies and fills of up to [`INLINE_MAX`] bytes.
//!
//! Calling a routine of the assembly block costs a call and a return, which is several times a
//! one-instruction access; so these accesses are emitted by inline assembly wherever they are
//! used, and a length known at compile time selects one straight-line sequence (no loop, no
//! branch). Each emitted sequence is a *guarded site*: the `site_entry!` directives record its
//! instruction range in the `membacking_trycopy_sites` section, whose pieces the linker gathers
//! from every object into one table bounded by `__start_`/`__stop_` symbols. The fault handler
//! recovers a fault whose instruction pointer lies in a site (as for the routines of the block)
//! and resumes right after the site.
//!
//! Register contract of a site (the same as a routine's): `r11` is zero on entry; when the
//! handler resumes after a fault it sets `r11` to the packed fault details (never zero) and
//! `r10` to the fault address, so a site needs no memory for its report. A site uses no stack.
//! Every load of a site happens before its first store, so copies of up to [`INLINE_MAX`] bytes
//! behave like `memmove` for any overlap, and a site that faults has written nothing when the
//! fault is in a load.
//!
//! Long fills are a site too: one `rep stosb` ([`fill_string`]), and so are long forward copies
//! on CPUs with fast string instructions: one `rep movsb` ([`copy_string`]). Fills of
//! [`WIDE_MIN`] bytes and more use 32-byte stores where the CPU has AVX ([`fill_wide`]).
//!
//! Table entry (8 bytes, position independent, no relocation at load time): the offset of the
//! site's first instruction from the entry, then the site's length in bytes.

// Unsafe code: the sites are inline assembly on raw pointers, and the site table is read from
// linker-defined symbols.
#![allow(unsafe_code)]

use super::status_to_result;
use crate::error::FaultRecord;
use std::arch::{asm, global_asm};

/// Copies and fills of at most this many bytes are inlined; longer ones call a routine.
///
/// Up to 256 bytes a copy still fits in the 16 SSE registers (loads of the first and the last
/// 128 bytes, then the stores), so it needs neither a loop nor a direction check.
pub(crate) const INLINE_MAX: usize = 256;

/// From this length on, inline fills use 32-byte AVX stores where the CPU has AVX
/// ([`fill_wide`]): 8 or 10 stores instead of 16. Measured on the Intel host for 256 bytes:
/// 2.0-2.2 ns at any destination alignment, against 2.6-2.9 ns for the 16-byte sequence (4.8 ns
/// when the destination is not 16-byte aligned). Plain unaligned 32-byte stores would measure
/// 1.4 ns on a 32-byte-aligned destination but 3.7 ns on any other, where every other store
/// splits a cache line; hence the aligned middle.
///
/// Copies keep 16-byte accesses: a source just written with narrower stores (a value built on
/// the stack, as for `write_plain`) cannot be forwarded to a 32-byte load, which then waits for
/// the stores to reach the cache (`write_plain` of 256 bytes measured 1.6x slower).
pub(crate) const WIDE_MIN: usize = 129;

/// What a site with 32-byte stores runs after its end (also after a fault): `vzeroupper`,
/// because code compiled without AVX uses the legacy SSE encodings, which run slower while the
/// upper halves of the vector registers are dirty. Code compiled with AVX manages the upper
/// halves itself and may hold values there, which `vzeroupper` would destroy: nothing then.
#[cfg(not(target_feature = "avx"))]
macro_rules! after_wide_site {
    () => {
        "vzeroupper"
    };
}
#[cfg(target_feature = "avx")]
macro_rules! after_wide_site {
    () => {
        ""
    };
}

/// The directives that record the site between the labels `2:` and `3:` of the current
/// assembly template in the site table.
macro_rules! site_entry {
    () => {
        concat!(
            ".pushsection membacking_trycopy_sites,\"aR\",@progbits\n",
            ".balign 4\n",
            ".long 2b - .\n",
            ".long 3b - 2b\n",
            ".popsection\n",
        )
    };
}

/// Runs a guarded site: `asm!` with the site labels around `$body`, the table entry, and the
/// status/address registers bound; evaluates to the result.
macro_rules! guarded_site {
    // With instructions after the site's end, where execution also resumes after a fault.
    ($($body:literal),+ ; resume $after:expr ; $($operands:tt)*) => {{
        let status: usize;
        let address: usize;
        asm!(
            "2:",
            $($body,)+
            "3:",
            $after,
            site_entry!(),
            $($operands)*
            out("r10") address,
            inout("r11") 0usize => status,
            options(nostack),
        );
        status_to_result(status, address)
    }};
    ($($body:literal),+ ; $($operands:tt)*) => {
        guarded_site!($($body),+ ; resume "" ; $($operands)*)
    };
}

// Keeps the section (and so its `__start_`/`__stop_` symbols) present in every link, even one
// where no site is instantiated: one empty entry, which matches no instruction pointer.
global_asm!(
    ".pushsection membacking_trycopy_sites,\"aR\",@progbits",
    ".balign 4",
    ".long 0",
    ".long 0",
    ".popsection",
);

/// One entry of the site table.
#[repr(C)]
struct SiteEntry {
    /// Offset of the site's first instruction from this field.
    start: i32,
    /// Length of the site in bytes.
    len: u32,
}

impl SiteEntry {
    /// `(start, end)` addresses of the site's instructions.
    fn bounds(&self) -> (usize, usize) {
        // The assembler wrote the offset relative to this very field, so the sum is an address
        // inside the same loaded object (no overflow; `wrapping_offset` only avoids the
        // in-bounds requirement of `offset`).
        let start = std::ptr::from_ref(self)
            .cast::<u8>()
            .wrapping_offset(self.start as isize)
            .addr();
        (start, start.wrapping_add(self.len as usize))
    }
}

extern "C" {
    // Defined by the linker: the bounds of the gathered `membacking_trycopy_sites` section.
    static __start_membacking_trycopy_sites: SiteEntry;
    static __stop_membacking_trycopy_sites: SiteEntry;
}

/// The whole site table.
fn table() -> &'static [SiteEntry] {
    // SAFETY: the linker places every piece of the section, each a whole number of 8-byte
    // entries aligned to 4, between the two symbols; the data is immutable.
    #[allow(unused_unsafe)]
    unsafe {
        let start = std::ptr::addr_of!(__start_membacking_trycopy_sites);
        let end = std::ptr::addr_of!(__stop_membacking_trycopy_sites);
        let count = (end as usize - start as usize) / std::mem::size_of::<SiteEntry>();
        std::slice::from_raw_parts(start, count)
    }
}

/// Where to resume after a fault at `ip` when `ip` lies in a guarded site: the end of the site.
///
/// Async-signal-safe: reads only immutable static data, no allocation, no locks, cannot panic.
pub(crate) fn resume_for(ip: usize) -> Option<usize> {
    table().iter().find_map(|entry| {
        let (start, end) = entry.bounds();
        (start <= ip && ip < end).then_some(end)
    })
}

/// `(start, end)` of every site in the table (tests).
#[cfg(test)]
pub(crate) fn sites() -> Vec<(usize, usize)> {
    table()
        .iter()
        .map(SiteEntry::bounds)
        .filter(|&(start, end)| start != end)
        .collect()
}

/// Generates a single-load site.
macro_rules! read_fn {
    ($name:ident, $ty:ty, $insn:literal) => {
        /// Loads one value with a single instruction.
        ///
        /// # Safety
        /// The caller accepts that `src` is read.
        #[inline(always)]
        pub(crate) unsafe fn $name(src: *const $ty) -> Result<$ty, FaultRecord> {
            let value: u64;
            // SAFETY: one load of `src`, recovered by the handler on a fault (site contract).
            let result = unsafe {
                guarded_site!($insn;
                    src = in(reg) src,
                    value = lateout(reg) value,
                )
            };
            // The load zero-extends into the full register: truncation is exact.
            #[allow(clippy::cast_possible_truncation, reason = "the upper bits are zero")]
            result.map(|()| value as $ty)
        }
    };
}

read_fn!(read_u8, u8, "movzx {value:e}, byte ptr [{src}]");
read_fn!(read_u16, u16, "movzx {value:e}, word ptr [{src}]");
read_fn!(read_u32, u32, "mov {value:e}, dword ptr [{src}]");
read_fn!(read_u64, u64, "mov {value}, qword ptr [{src}]");

/// Generates a single-store site.
macro_rules! write_fn {
    ($name:ident, $ty:ty, $insn:literal, $class:ident) => {
        /// Stores one value with a single instruction.
        ///
        /// # Safety
        /// The caller accepts that `dst` is written.
        #[inline(always)]
        pub(crate) unsafe fn $name(dst: *mut $ty, value: $ty) -> Result<(), FaultRecord> {
            // SAFETY: one store to `dst`, recovered by the handler on a fault (site contract).
            unsafe {
                guarded_site!($insn;
                    dst = in(reg) dst,
                    value = in($class) value,
                )
            }
        }
    };
}

write_fn!(write_u8, u8, "mov byte ptr [{dst}], {value}", reg_byte);
write_fn!(write_u16, u16, "mov word ptr [{dst}], {value:x}", reg);
write_fn!(write_u32, u32, "mov dword ptr [{dst}], {value:e}", reg);
write_fn!(write_u64, u64, "mov qword ptr [{dst}], {value}", reg);

/// Generates a locked compare-exchange site returning the value observed in memory.
macro_rules! cmpxchg_fn {
    ($name:ident, $ty:ty, $insn:literal, $class:ident) => {
        /// One `lock cmpxchg`; returns the value memory held (equal to `expected` exactly when
        /// the swap happened). Always a write cycle, so a read-only page faults.
        ///
        /// # Safety
        /// The caller accepts that `dst` is read and written.
        #[inline(always)]
        pub(crate) unsafe fn $name(
            dst: *mut $ty,
            expected: $ty,
            new: $ty,
        ) -> Result<$ty, FaultRecord> {
            let observed: u64;
            // SAFETY: one locked access to `dst`, recovered by the handler on a fault (site
            // contract).
            let result = unsafe {
                guarded_site!($insn;
                    dst = in(reg) dst,
                    new = in($class) new,
                    inout("rax") u64::from(expected) => observed,
                )
            };
            // `cmpxchg` of a narrow operand replaces only the low bits of `rax`, whose upper
            // bits still hold the zero-extension of `expected`: truncation is exact.
            #[allow(clippy::cast_possible_truncation, reason = "the upper bits are zero")]
            result.map(|()| observed as $ty)
        }
    };
}

cmpxchg_fn!(
    cmpxchg_u8,
    u8,
    "lock cmpxchg byte ptr [{dst}], {new}",
    reg_byte
);
cmpxchg_fn!(
    cmpxchg_u16,
    u16,
    "lock cmpxchg word ptr [{dst}], {new:x}",
    reg
);
cmpxchg_fn!(
    cmpxchg_u32,
    u32,
    "lock cmpxchg dword ptr [{dst}], {new:e}",
    reg
);
cmpxchg_fn!(
    cmpxchg_u64,
    u64,
    "lock cmpxchg qword ptr [{dst}], {new}",
    reg
);

/// Copies `len` bytes, `1 <= len <= INLINE_MAX`, with every load before the first store (so any
/// overlap is allowed). A constant `len` leaves one straight-line site.
///
/// # Safety
/// The caller accepts that any byte of `[dst, dst + len)` may be written and any byte of
/// `[src, src + len)` read.
#[inline(always)]
pub(crate) unsafe fn copy_small(
    dst: *mut u8,
    src: *const u8,
    len: usize,
) -> Result<(), FaultRecord> {
    debug_assert!((1..=INLINE_MAX).contains(&len));
    // SAFETY: (every arm) the site reads `[src, src + len)` and writes `[dst, dst + len)` only
    // (the two halves overlap when `len` is not twice the access width), recovered by the
    // handler on a fault.
    unsafe {
        macro_rules! one {
            ($load:literal, $store:literal, $class:ident) => {
                guarded_site!($load, $store;
                    src = in(reg) src, dst = in(reg) dst, a = out($class) _,
                )
            };
        }
        macro_rules! two {
            ($width:literal, $load_a:literal, $load_b:literal, $store_a:literal, $store_b:literal, $class:ident) => {
                guarded_site!($load_a, $load_b, $store_a, $store_b;
                    src = in(reg) src, dst = in(reg) dst, tail = in(reg) len - $width,
                    a = out($class) _, b = out($class) _,
                )
            };
        }
        match len {
            1 => one!(
                "mov {a}, byte ptr [{src}]",
                "mov byte ptr [{dst}], {a}",
                reg_byte
            ),
            2 => one!(
                "mov {a:x}, word ptr [{src}]",
                "mov word ptr [{dst}], {a:x}",
                reg
            ),
            3 => two!(
                2,
                "mov {a:x}, word ptr [{src}]",
                "mov {b:x}, word ptr [{src} + {tail}]",
                "mov word ptr [{dst}], {a:x}",
                "mov word ptr [{dst} + {tail}], {b:x}",
                reg
            ),
            4 => one!(
                "mov {a:e}, dword ptr [{src}]",
                "mov dword ptr [{dst}], {a:e}",
                reg
            ),
            5..=7 => two!(
                4,
                "mov {a:e}, dword ptr [{src}]",
                "mov {b:e}, dword ptr [{src} + {tail}]",
                "mov dword ptr [{dst}], {a:e}",
                "mov dword ptr [{dst} + {tail}], {b:e}",
                reg
            ),
            8 => one!(
                "mov {a}, qword ptr [{src}]",
                "mov qword ptr [{dst}], {a}",
                reg
            ),
            9..=15 => two!(
                8,
                "mov {a}, qword ptr [{src}]",
                "mov {b}, qword ptr [{src} + {tail}]",
                "mov qword ptr [{dst}], {a}",
                "mov qword ptr [{dst} + {tail}], {b}",
                reg
            ),
            16 => one!(
                "movdqu {a}, xmmword ptr [{src}]",
                "movdqu xmmword ptr [{dst}], {a}",
                xmm_reg
            ),
            17..=32 => two!(
                16,
                "movdqu {a}, xmmword ptr [{src}]",
                "movdqu {b}, xmmword ptr [{src} + {tail}]",
                "movdqu xmmword ptr [{dst}], {a}",
                "movdqu xmmword ptr [{dst} + {tail}], {b}",
                xmm_reg
            ),
            33..=64 => guarded_site!(
                "movdqu {a}, xmmword ptr [{src}]",
                "movdqu {b}, xmmword ptr [{src} + 16]",
                "movdqu {c}, xmmword ptr [{src} + {tail}]",
                "movdqu {d}, xmmword ptr [{src} + {tail} + 16]",
                "movdqu xmmword ptr [{dst}], {a}",
                "movdqu xmmword ptr [{dst} + 16], {b}",
                "movdqu xmmword ptr [{dst} + {tail}], {c}",
                "movdqu xmmword ptr [{dst} + {tail} + 16], {d}";
                src = in(reg) src, dst = in(reg) dst, tail = in(reg) len - 32,
                a = out(xmm_reg) _, b = out(xmm_reg) _, c = out(xmm_reg) _, d = out(xmm_reg) _,
            ),
            65..=128 => guarded_site!(
                "movdqu {a}, xmmword ptr [{src}]",
                "movdqu {b}, xmmword ptr [{src} + 16]",
                "movdqu {c}, xmmword ptr [{src} + 32]",
                "movdqu {d}, xmmword ptr [{src} + 48]",
                "movdqu {e}, xmmword ptr [{src} + {tail}]",
                "movdqu {f}, xmmword ptr [{src} + {tail} + 16]",
                "movdqu {g}, xmmword ptr [{src} + {tail} + 32]",
                "movdqu {h}, xmmword ptr [{src} + {tail} + 48]",
                "movdqu xmmword ptr [{dst}], {a}",
                "movdqu xmmword ptr [{dst} + 16], {b}",
                "movdqu xmmword ptr [{dst} + 32], {c}",
                "movdqu xmmword ptr [{dst} + 48], {d}",
                "movdqu xmmword ptr [{dst} + {tail}], {e}",
                "movdqu xmmword ptr [{dst} + {tail} + 16], {f}",
                "movdqu xmmword ptr [{dst} + {tail} + 32], {g}",
                "movdqu xmmword ptr [{dst} + {tail} + 48], {h}";
                src = in(reg) src, dst = in(reg) dst, tail = in(reg) len - 64,
                a = out(xmm_reg) _, b = out(xmm_reg) _, c = out(xmm_reg) _, d = out(xmm_reg) _,
                e = out(xmm_reg) _, f = out(xmm_reg) _, g = out(xmm_reg) _, h = out(xmm_reg) _,
            ),
            // 129..=INLINE_MAX: the first and the last 128 bytes, in all 16 SSE registers.
            _ => guarded_site!(
                "movdqu {a}, xmmword ptr [{src}]",
                "movdqu {b}, xmmword ptr [{src} + 16]",
                "movdqu {c}, xmmword ptr [{src} + 32]",
                "movdqu {d}, xmmword ptr [{src} + 48]",
                "movdqu {e}, xmmword ptr [{src} + 64]",
                "movdqu {f}, xmmword ptr [{src} + 80]",
                "movdqu {g}, xmmword ptr [{src} + 96]",
                "movdqu {h}, xmmword ptr [{src} + 112]",
                "movdqu {i}, xmmword ptr [{src} + {tail}]",
                "movdqu {j}, xmmword ptr [{src} + {tail} + 16]",
                "movdqu {k}, xmmword ptr [{src} + {tail} + 32]",
                "movdqu {l}, xmmword ptr [{src} + {tail} + 48]",
                "movdqu {m}, xmmword ptr [{src} + {tail} + 64]",
                "movdqu {n}, xmmword ptr [{src} + {tail} + 80]",
                "movdqu {o}, xmmword ptr [{src} + {tail} + 96]",
                "movdqu {p}, xmmword ptr [{src} + {tail} + 112]",
                "movdqu xmmword ptr [{dst}], {a}",
                "movdqu xmmword ptr [{dst} + 16], {b}",
                "movdqu xmmword ptr [{dst} + 32], {c}",
                "movdqu xmmword ptr [{dst} + 48], {d}",
                "movdqu xmmword ptr [{dst} + 64], {e}",
                "movdqu xmmword ptr [{dst} + 80], {f}",
                "movdqu xmmword ptr [{dst} + 96], {g}",
                "movdqu xmmword ptr [{dst} + 112], {h}",
                "movdqu xmmword ptr [{dst} + {tail}], {i}",
                "movdqu xmmword ptr [{dst} + {tail} + 16], {j}",
                "movdqu xmmword ptr [{dst} + {tail} + 32], {k}",
                "movdqu xmmword ptr [{dst} + {tail} + 48], {l}",
                "movdqu xmmword ptr [{dst} + {tail} + 64], {m}",
                "movdqu xmmword ptr [{dst} + {tail} + 80], {n}",
                "movdqu xmmword ptr [{dst} + {tail} + 96], {o}",
                "movdqu xmmword ptr [{dst} + {tail} + 112], {p}";
                src = in(reg) src, dst = in(reg) dst, tail = in(reg) len - 128,
                a = out(xmm_reg) _, b = out(xmm_reg) _, c = out(xmm_reg) _, d = out(xmm_reg) _,
                e = out(xmm_reg) _, f = out(xmm_reg) _, g = out(xmm_reg) _, h = out(xmm_reg) _,
                i = out(xmm_reg) _, j = out(xmm_reg) _, k = out(xmm_reg) _, l = out(xmm_reg) _,
                m = out(xmm_reg) _, n = out(xmm_reg) _, o = out(xmm_reg) _, p = out(xmm_reg) _,
            ),
        }
    }
}

/// Sets `len` bytes at `dst` to `byte` with one `rep stosb`: the long fills, inline like the
/// short ones (no routine call, no CPU-feature check).
///
/// # Safety
/// The caller accepts that any byte of `[dst, dst + len)` may be written.
#[inline(always)]
pub(crate) unsafe fn fill_string(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    // SAFETY: the site writes `[dst, dst + len)` forward only (DF is clear, as the ABI requires
    // at every call and the handler restores after a fault), recovered by the handler on a
    // fault.
    unsafe {
        guarded_site!("rep stosb"; inout("rdi") dst => _, inout("rcx") len => _, in("al") byte,)
    }
}

/// Copies `len` bytes from `src` to `dst` forward with one `rep movsb` (for long copies on CPUs
/// with fast string instructions; no routine call).
///
/// # Safety
/// The caller accepts that any byte of `[dst, dst + len)` may be written and any byte of
/// `[src, src + len)` read, and `dst` must not lie in `(src, src + len)` (a forward copy).
#[inline(always)]
pub(crate) unsafe fn copy_string(
    dst: *mut u8,
    src: *const u8,
    len: usize,
) -> Result<(), FaultRecord> {
    // SAFETY: the site reads `[src, src + len)` and writes `[dst, dst + len)` forward only (DF
    // is clear, as the ABI requires at every call and the handler restores after a fault),
    // which the caller allows; recovered by the handler on a fault.
    unsafe {
        guarded_site!("rep movsb";
            inout("rdi") dst => _,
            inout("rsi") src => _,
            inout("rcx") len => _,
        )
    }
}

/// Sets `len` bytes at `dst` to `byte`, `1 <= len <= INLINE_MAX`. A constant `len` leaves one
/// straight-line site.
///
/// # Safety
/// The caller accepts that any byte of `[dst, dst + len)` may be written.
#[inline(always)]
pub(crate) unsafe fn fill_small(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    debug_assert!((1..=INLINE_MAX).contains(&len));
    let pattern = u64::from(byte) * 0x0101_0101_0101_0101;
    // SAFETY: (every arm) the site writes `[dst, dst + len)` only (overlapping stores when
    // `len` is not a multiple of the width), recovered by the handler on a fault.
    unsafe {
        macro_rules! one {
            ($store:literal, $class:ident, $value:expr) => {
                guarded_site!($store; dst = in(reg) dst, v = in($class) $value,)
            };
        }
        macro_rules! two {
            ($width:literal, $store_a:literal, $store_b:literal) => {
                guarded_site!($store_a, $store_b;
                    dst = in(reg) dst, tail = in(reg) len - $width, v = in(reg) pattern,
                )
            };
        }
        match len {
            1 => one!("mov byte ptr [{dst}], {v}", reg_byte, byte),
            2 => one!("mov word ptr [{dst}], {v:x}", reg, pattern),
            3 => two!(
                2,
                "mov word ptr [{dst}], {v:x}",
                "mov word ptr [{dst} + {tail}], {v:x}"
            ),
            4 => one!("mov dword ptr [{dst}], {v:e}", reg, pattern),
            5..=7 => two!(
                4,
                "mov dword ptr [{dst}], {v:e}",
                "mov dword ptr [{dst} + {tail}], {v:e}"
            ),
            8 => one!("mov qword ptr [{dst}], {v}", reg, pattern),
            9..=16 => two!(
                8,
                "mov qword ptr [{dst}], {v}",
                "mov qword ptr [{dst} + {tail}], {v}"
            ),
            17..=32 => guarded_site!(
                "movq {x}, {v}",
                "punpcklqdq {x}, {x}",
                "movdqu xmmword ptr [{dst}], {x}",
                "movdqu xmmword ptr [{dst} + {tail}], {x}";
                dst = in(reg) dst, tail = in(reg) len - 16, v = in(reg) pattern,
                x = out(xmm_reg) _,
            ),
            33..=64 => guarded_site!(
                "movq {x}, {v}",
                "punpcklqdq {x}, {x}",
                "movdqu xmmword ptr [{dst}], {x}",
                "movdqu xmmword ptr [{dst} + 16], {x}",
                "movdqu xmmword ptr [{dst} + {tail}], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 16], {x}";
                dst = in(reg) dst, tail = in(reg) len - 32, v = in(reg) pattern,
                x = out(xmm_reg) _,
            ),
            65..=128 => guarded_site!(
                "movq {x}, {v}",
                "punpcklqdq {x}, {x}",
                "movdqu xmmword ptr [{dst}], {x}",
                "movdqu xmmword ptr [{dst} + 16], {x}",
                "movdqu xmmword ptr [{dst} + 32], {x}",
                "movdqu xmmword ptr [{dst} + 48], {x}",
                "movdqu xmmword ptr [{dst} + {tail}], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 16], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 32], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 48], {x}";
                dst = in(reg) dst, tail = in(reg) len - 64, v = in(reg) pattern,
                x = out(xmm_reg) _,
            ),
            // 129..=INLINE_MAX: the first and the last 128 bytes.
            _ => guarded_site!(
                "movq {x}, {v}",
                "punpcklqdq {x}, {x}",
                "movdqu xmmword ptr [{dst}], {x}",
                "movdqu xmmword ptr [{dst} + 16], {x}",
                "movdqu xmmword ptr [{dst} + 32], {x}",
                "movdqu xmmword ptr [{dst} + 48], {x}",
                "movdqu xmmword ptr [{dst} + 64], {x}",
                "movdqu xmmword ptr [{dst} + 80], {x}",
                "movdqu xmmword ptr [{dst} + 96], {x}",
                "movdqu xmmword ptr [{dst} + 112], {x}",
                "movdqu xmmword ptr [{dst} + {tail}], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 16], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 32], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 48], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 64], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 80], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 96], {x}",
                "movdqu xmmword ptr [{dst} + {tail} + 112], {x}";
                dst = in(reg) dst, tail = in(reg) len - 128, v = in(reg) pattern,
                x = out(xmm_reg) _,
            ),
        }
    }
}

/// [`fill_small`] for `WIDE_MIN <= len <= INLINE_MAX` with 32-byte AVX stores: one unaligned
/// store at each end and 32-byte-aligned ones between them (6 or 8), so at most the two end
/// stores can be split across cache lines, whatever the destination's alignment.
///
/// The aligned stores run forward from `head_end` (the first 32-byte boundary after `dst`) and
/// backward from `tail_start` (the last one at or before `dst + len - 32`); each starts at or
/// before the end of the bytes already written, so a fault in a store leaves every byte before
/// that 32-byte store written. Bounds: `head_end + 32 * n <= dst + len` and
/// `tail_start - 32 * (n - 1) >= dst` for the `n` stores each way (3 for fewer than 160 bytes,
/// else 4), and the two runs meet (`tail_start - head_end <= len - 33`).
///
/// # Safety
/// As for [`fill_small`], and the CPU supports AVX.
#[inline(always)]
pub(crate) unsafe fn fill_wide(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    debug_assert!((WIDE_MIN..=INLINE_MAX).contains(&len));
    let pattern = u64::from(byte) * 0x0101_0101_0101_0101;
    // Wrapping: a range that runs past the end of the address space faults like any other
    // inaccessible one instead of panicking here.
    let head_end = dst.addr().wrapping_add(32) & !31;
    let tail_start = dst.addr().wrapping_add(len - 32) & !31;
    // SAFETY: (both arms) the site writes `[dst, dst + len)` only (bounds above), the aligned
    // stores at 32-byte-aligned addresses, with instructions the caller guarantees the CPU has;
    // recovered by the handler on a fault.
    unsafe {
        // The pattern in all 32 bytes of `x`, the unaligned first store, the aligned `$middle`
        // stores, the unaligned last store.
        macro_rules! wide {
            ($($middle:literal),+) => {
                guarded_site!(
                    "vmovq {x}, {v}",
                    "vpunpcklqdq {x}, {x}, {x}",
                    "vinsertf128 {x:y}, {x:y}, {x}, 1",
                    "vmovdqu ymmword ptr [{dst}], {x:y}",
                    $($middle,)+
                    "vmovdqu ymmword ptr [{dst} + {tail}], {x:y}";
                    resume after_wide_site!();
                    dst = in(reg) dst, tail = in(reg) len - 32, v = in(reg) pattern,
                    head_end = in(reg) head_end, tail_start = in(reg) tail_start,
                    x = out(xmm_reg) _,
                )
            };
        }
        if len < 160 {
            wide!(
                "vmovdqa ymmword ptr [{head_end}], {x:y}",
                "vmovdqa ymmword ptr [{head_end} + 32], {x:y}",
                "vmovdqa ymmword ptr [{head_end} + 64], {x:y}",
                "vmovdqa ymmword ptr [{tail_start} - 64], {x:y}",
                "vmovdqa ymmword ptr [{tail_start} - 32], {x:y}",
                "vmovdqa ymmword ptr [{tail_start}], {x:y}"
            )
        } else {
            wide!(
                "vmovdqa ymmword ptr [{head_end}], {x:y}",
                "vmovdqa ymmword ptr [{head_end} + 32], {x:y}",
                "vmovdqa ymmword ptr [{head_end} + 64], {x:y}",
                "vmovdqa ymmword ptr [{head_end} + 96], {x:y}",
                "vmovdqa ymmword ptr [{tail_start} - 96], {x:y}",
                "vmovdqa ymmword ptr [{tail_start} - 64], {x:y}",
                "vmovdqa ymmword ptr [{tail_start} - 32], {x:y}",
                "vmovdqa ymmword ptr [{tail_start}], {x:y}"
            )
        }
    }
}
