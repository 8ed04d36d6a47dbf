//! The classic-BPF assembly the filters are written in: return values, the offsets of
//! `struct seccomp_data`, instructions, and the [`Program`] fragments (a syscall's return, a
//! guarded block checking one argument) that [`super::build`] puts together.

use libc::sock_filter;

pub(super) const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
pub(super) const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
pub(super) const RET_EPERM: u32 =
    libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
pub(super) const RET_ENOSYS: u32 =
    libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);

// Offsets into `struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }`.
pub(super) const OFF_NR: u32 = 0;
pub(super) const OFF_ARCH: u32 = 4;
pub(super) const OFF_ARGS: u32 = 16;

/// Offset of the low 32 bits of syscall argument `i`.
pub(super) const fn arg_lo(i: u32) -> u32 {
    if cfg!(target_endian = "little") {
        OFF_ARGS + 8 * i
    } else {
        OFF_ARGS + 8 * i + 4
    }
}

/// Offset of the high 32 bits of syscall argument `i`.
pub(super) const fn arg_hi(i: u32) -> u32 {
    if cfg!(target_endian = "little") {
        OFF_ARGS + 8 * i + 4
    } else {
        OFF_ARGS + 8 * i
    }
}

pub(super) const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
pub(super) const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
pub(super) const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
pub(super) const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

pub(super) fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump. Offsets count instructions after this one; every block here is far
/// shorter than the 255 a jump can reach (`block_offset` checks).
pub(super) fn jump(code: u16, k: u32, jt: usize, jf: usize) -> sock_filter {
    sock_filter {
        code,
        jt: block_offset(jt),
        jf: block_offset(jf),
        k,
    }
}

pub(super) fn block_offset(n: usize) -> u8 {
    debug_assert!(n <= u8::MAX as usize, "seccomp block too long: {n}");
    n.min(u8::MAX as usize) as u8
}

pub(super) fn nr(n: libc::c_long) -> u32 {
    n as u32
}

/// Arguments that the kernel truncates to 32 bits (`int`/`unsigned int` parameters, and
/// `clone`'s flags, which it reads with `lower_32_bits`) are checked on their low word alone;
/// `unsigned long` flags that the kernel uses whole are also required to have a zero high word.
#[derive(Clone, Copy)]
pub(super) enum Width {
    Low32,
    Full64,
}

/// Program fragments. Each `guarded` block starts with A = the syscall number and either falls
/// through to the next check (A unchanged) or returns: a block that loads an argument returns
/// on every path, so A is never stale for the checks after it.
pub(super) struct Program(pub(super) Vec<sock_filter>);

impl Program {
    /// `nr` returns `ret`.
    pub(super) fn ret_for(&mut self, n: libc::c_long, ret: u32) {
        self.0.push(jump(JEQ, nr(n), 0, 1));
        self.0.push(stmt(RET, ret));
    }

    /// `block` runs for `nr` only; it must return on every path.
    pub(super) fn guarded(&mut self, n: libc::c_long, block: Vec<sock_filter>) {
        self.0.push(jump(JEQ, nr(n), 0, block.len()));
        self.0.extend(block);
    }

    /// `nr` is refused when argument `arg` has any bit of `mask` set.
    pub(super) fn deny_if_any_bit(&mut self, n: libc::c_long, arg: u32, mask: u32) {
        self.guarded(
            n,
            vec![
                stmt(LD_ABS, arg_lo(arg)),
                jump(JSET, mask, 0, 1),
                stmt(RET, RET_EPERM),
                stmt(RET, RET_ALLOW),
            ],
        );
    }

    /// Like [`Program::deny_if_any_bit`], except that the low word of `arg` being exactly
    /// `allowed` is let through.
    pub(super) fn deny_if_any_bit_unless(
        &mut self,
        n: libc::c_long,
        arg: u32,
        mask: u32,
        allowed: u32,
    ) {
        self.guarded(
            n,
            vec![
                stmt(LD_ABS, arg_lo(arg)),
                // Exactly `allowed`: skip the JSET and the EPERM to reach the ALLOW.
                jump(JEQ, allowed, 2, 0),
                jump(JSET, mask, 0, 1),
                stmt(RET, RET_EPERM),
                stmt(RET, RET_ALLOW),
            ],
        );
    }

    /// `nr` is refused when the low word of argument `arg` is one of `values`.
    pub(super) fn deny_if_one_of(&mut self, n: libc::c_long, arg: u32, values: &[u32]) {
        let count = values.len();
        let mut block = vec![stmt(LD_ABS, arg_lo(arg))];
        for (i, &v) in values.iter().enumerate() {
            // Match: skip the other compares and the ALLOW to reach the EPERM.
            block.push(jump(JEQ, v, count - i, 0));
        }
        block.push(stmt(RET, RET_ALLOW));
        block.push(stmt(RET, RET_EPERM));
        self.guarded(n, block);
    }

    /// `nr` is allowed only when argument `arg` is one of `values`.
    pub(super) fn allow_only(&mut self, n: libc::c_long, arg: u32, width: Width, values: &[u32]) {
        let count = values.len();
        let mut block = Vec::new();
        if let Width::Full64 = width {
            block.push(stmt(LD_ABS, arg_hi(arg)));
            // Non-zero high word: skip the load and the compares to reach the EPERM.
            block.push(jump(JEQ, 0, 0, 1 + count));
        }
        block.push(stmt(LD_ABS, arg_lo(arg)));
        for (i, &v) in values.iter().enumerate() {
            // Match: skip the other compares and the EPERM to reach the ALLOW.
            block.push(jump(JEQ, v, count - i, 0));
        }
        block.push(stmt(RET, RET_EPERM));
        block.push(stmt(RET, RET_ALLOW));
        self.guarded(n, block);
    }
}
