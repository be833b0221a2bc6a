//! Tiny guest programs (x86 machine code) for tests, benchmarks and the demo.
//!
//! Copy one into guest RAM, point `rip` at it and set the registers it names. The 64-bit ones
//! run at CPL 3 (they need IOPL 3 for `out`, the [`Vcpu`](crate::Vcpu) default) on the
//! identity map of [`crate::page_tables`]; on a software hypervisor such as PVM that is the mode
//! that runs natively. After reporting, each program repeats its final `out` forever, so a later
//! `run()` returns the same port write again instead of running off into memory.

/// Port the programs report completion on (1-byte `out`, value = `al`).
pub const DONE_PORT: u16 = 0x10;

/// Port [`SUM_QWORDS`] reports its result on (two 4-byte `out`s: low half, then high half).
pub const RESULT_PORT: u16 = 0x11;

/// Port [`ECHO_INPUT`] reads from.
pub const INPUT_PORT: u16 = 0x12;

/// 64-bit. Fills `rcx` qwords from `rdi` upward with `address ^ rdx` (each qword's own GPA
/// XOR a key), then `out DONE_PORT, al`. `rcx` must be at least 1.
pub const FILL_PATTERN: &[u8] = &[
    0x48, 0x89, 0xf8, // mov rax, rdi
    0x48, 0x31, 0xd0, // xor rax, rdx
    0x48, 0x89, 0x07, // mov [rdi], rax
    0x48, 0x83, 0xc7, 0x08, // add rdi, 8
    0x48, 0xff, 0xc9, // dec rcx
    0x75, 0xee, // jnz start
    0xe6, 0x10, // done: out 0x10, al
    0xeb, 0xfc, // jmp done
];

/// 64-bit. Sums `rcx` qwords from `rdi` upward (wrapping) and reports the sum on
/// [`RESULT_PORT`] as two 4-byte writes (low, high), then `out DONE_PORT, al`. `rcx` ≥ 1.
pub const SUM_QWORDS: &[u8] = &[
    0x31, 0xc0, // xor eax, eax
    0x48, 0x03, 0x07, // loop: add rax, [rdi]
    0x48, 0x83, 0xc7, 0x08, // add rdi, 8
    0x48, 0xff, 0xc9, // dec rcx
    0x75, 0xf4, // jnz loop
    0xe7, 0x11, // out 0x11, eax
    0x48, 0xc1, 0xe8, 0x20, // shr rax, 32
    0xe7, 0x11, // out 0x11, eax
    0xe6, 0x10, // done: out 0x10, al
    0xeb, 0xfc, // jmp done
];

/// 64-bit. Loads the qword at `rdi`, adds `rdx`, stores the result at `rsi`, then
/// `out DONE_PORT, al`. With `rdi` outside every slot the load is an MMIO read; with `rsi` in a
/// read-only slot or outside every slot the store is an MMIO write.
pub const LOAD_ADD_STORE: &[u8] = &[
    0x48, 0x8b, 0x07, // mov rax, [rdi]
    0x48, 0x01, 0xd0, // add rax, rdx
    0x48, 0x89, 0x06, // mov [rsi], rax
    0xe6, 0x10, // done: out 0x10, al
    0xeb, 0xfc, // jmp done
];

/// 64-bit. Writes one byte (1) to every 4 KiB page of `rcx` pages from `rsi` upward, then
/// `out DONE_PORT, al`: the first-touch loop of the benchmarks. `rcx` ≥ 1.
pub const TOUCH_PAGES: &[u8] = &[
    0xc6, 0x06, 0x01, // loop: mov byte [rsi], 1
    0x48, 0x81, 0xc6, 0x00, 0x10, 0x00, 0x00, // add rsi, 4096
    0x48, 0xff, 0xc9, // dec rcx
    0x75, 0xf1, // jnz loop
    0xe6, 0x10, // done: out 0x10, al
    0xeb, 0xfc, // jmp done
];

/// 64-bit. `in eax, INPUT_PORT`, reports the value with `out RESULT_PORT, eax`, then
/// `out DONE_PORT, al`.
pub const ECHO_INPUT: &[u8] = &[
    0xe5, 0x12, // in eax, 0x12
    0xe7, 0x11, // out 0x11, eax
    0xe6, 0x10, // done: out 0x10, al
    0xeb, 0xfc, // jmp done
];

/// Any mode. Loops forever (`jmp $`): for cancel and timeout.
pub const SPIN: &[u8] = &[0xeb, 0xfe];

/// Real mode or CPL 0. `hlt`, and `hlt` again on every later run.
pub const HALT: &[u8] = &[
    0xf4, // again: hlt
    0xeb, 0xfd, // jmp again
];

/// Real mode. `mov al, 0x42; out DONE_PORT, al`, then `hlt` forever.
pub const REAL_MODE_OUT_THEN_HALT: &[u8] = &[
    0xb0, 0x42, // mov al, 0x42
    0xe6, 0x10, // out 0x10, al
    0xf4, // again: hlt
    0xeb, 0xfd, // jmp again
];
