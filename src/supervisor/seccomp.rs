//! Builds the seccomp-BPF program for a unit's seccomp keys
//! (`units::seccomp`), before fork, and installs it in the child, last
//! before exec. The program checks the architecture, then
//! `SystemCallFilter=` on the call's number, then each argument rule of the
//! other keys, then `SystemCallLog=`; anything left is allowed.
//!
//! Arguments are compared on their low 32 bits: every one filtered here is
//! an `int`, `mode_t` or flag word the kernel reads as 32 bits.

use crate::units::seccomp::{Action, CallFilter, CallLog, Families, SeccompConfig, ALL_NAMESPACES};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
/// The kernel's limit on a program's length (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

// Classic BPF opcodes (linux/bpf_common.h).
/// BPF_LD | BPF_W | BPF_ABS (the first two are 0).
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x04 | 0x50;
const JMP_JEQ_K: u16 = 0x05 | 0x10;
const JMP_JGT_K: u16 = 0x05 | 0x20;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const JMP_JSET_K: u16 = 0x05 | 0x40;
const JMP_JA: u16 = 0x05;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn arg(i: u32) -> u32 {
    // The low half of the 64-bit argument (little-endian).
    16 + 8 * i
}

/// Where a jump goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    /// Over this many instructions.
    Skip(u8),
    Label(usize),
}

enum Op {
    Ld(u32),
    And(u32),
    Jump(u16, u32, To, To),
    Goto(usize),
    Ret(u32),
    Label(usize),
}

/// Labels every program has, at its end.
const BAD_ARCH: usize = 0;
const EPERM: usize = 1;
const EAFNOSUPPORT: usize = 2;
const ENOSYS: usize = 3;
const FIRST_FREE: usize = 4;

struct Asm {
    ops: Vec<Op>,
    next_label: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.next_label += 1;
        self.next_label - 1
    }

    /// `if nr == sys { body }`, with `body` given the label past it.
    fn syscall(&mut self, sys: libc::c_long, body: impl FnOnce(&mut Asm, usize)) {
        let end = self.label();
        self.ops.push(Op::Ld(OFF_NR));
        self.ops.push(Op::Jump(JMP_JEQ_K, sys as u32, To::Next, To::Label(end)));
        body(self, end);
        self.ops.push(Op::Label(end));
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>, String> {
        let mut at = vec![0usize; self.next_label];
        let mut n = 0;
        for op in &self.ops {
            match op {
                Op::Label(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        let offset = |from: usize, to: To| -> Result<u8, String> {
            match to {
                To::Next => Ok(0),
                To::Skip(n) => Ok(n),
                To::Label(l) => {
                    u8::try_from(at[l] - from - 1).map_err(|_| "the seccomp filter is too long".to_string())
                }
            }
        };
        let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        for op in &self.ops {
            let i = out.len();
            out.push(match *op {
                Op::Label(_) => continue,
                Op::Ld(off) => insn(LD_W_ABS, 0, 0, off),
                Op::And(k) => insn(ALU_AND_K, 0, 0, k),
                Op::Ret(k) => insn(RET_K, 0, 0, k),
                Op::Goto(l) => insn(JMP_JA, 0, 0, (at[l] - i - 1) as u32),
                Op::Jump(code, k, t, f) => insn(code, offset(i, t)?, offset(i, f)?, k),
            });
        }
        if out.len() > MAX_INSNS {
            return Err(format!(
                "the seccomp filter is too long ({} instructions, the kernel takes {MAX_INSNS})",
                out.len()
            ));
        }
        Ok(out)
    }

    /// With the call number loaded: for each run of consecutive numbers
    /// in `calls`, `then(self)` emits what a call in it gets (one
    /// instruction: a return or a far jump); others fall through.
    fn calls_in(&mut self, calls: impl IntoIterator<Item = i64>, then: impl Fn(&mut Asm)) {
        let mut calls: Vec<i64> = calls.into_iter().collect();
        calls.sort_unstable();
        calls.dedup();
        let mut i = 0;
        while i < calls.len() {
            let lo = calls[i];
            while i + 1 < calls.len() && calls[i + 1] == calls[i] + 1 {
                i += 1;
            }
            let hi = calls[i];
            i += 1;
            if lo == hi {
                self.ops.push(Op::Jump(JMP_JEQ_K, lo as u32, To::Next, To::Skip(1)));
            } else {
                self.ops.push(Op::Jump(JMP_JGT_K, hi as u32, To::Skip(2), To::Next));
                self.ops.push(Op::Jump(JMP_JGE_K, lo as u32, To::Next, To::Skip(1)));
            }
            then(self);
        }
    }
}

fn ret_of(action: Action) -> u32 {
    match action {
        Action::Kill => RET_KILL_PROCESS,
        Action::Errno(e) => RET_ERRNO | u32::from(e),
    }
}

/// A built BPF program.
pub struct Filter(Vec<libc::sock_filter>);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({} instructions)", self.0.len())
    }
}

/// The filter for `cfg`, or None when it asks for none.
pub fn build(cfg: &SeccompConfig) -> Result<Option<Filter>, String> {
    if !cfg.wants_filter() {
        return Ok(None);
    }
    let mut a = Asm { ops: Vec::new(), next_label: FIRST_FREE };
    a.ops.push(Op::Ld(OFF_ARCH));
    a.ops.push(Op::Jump(JMP_JEQ_K, AUDIT_ARCH_NATIVE, To::Next, To::Label(BAD_ARCH)));
    #[cfg(target_arch = "x86_64")]
    {
        // x32 calls come with the x86-64 arch and bit 30 set in the number.
        a.ops.push(Op::Ld(OFF_NR));
        a.ops.push(Op::Jump(JMP_JGT_K, 0x3fff_ffff, To::Label(BAD_ARCH), To::Next));
    }
    // SystemCallErrorNumber=: what a call SystemCallFilter= refuses gets.
    let refused = cfg.call_errno.map_or(Action::Kill, Action::Errno);
    match &cfg.call_filter {
        None => {}
        Some(CallFilter::Allow(calls)) => {
            let pass = a.label();
            a.ops.push(Op::Ld(OFF_NR));
            a.calls_in(calls.iter().copied(), |a| a.ops.push(Op::Goto(pass)));
            a.ops.push(Op::Ret(ret_of(refused)));
            a.ops.push(Op::Label(pass));
        }
        Some(CallFilter::Deny(calls)) => {
            a.ops.push(Op::Ld(OFF_NR));
            // Runs of calls that get the same answer.
            let mut by_action: Vec<(Action, Vec<i64>)> = Vec::new();
            for (&nr, action) in calls {
                let action = action.unwrap_or(refused);
                match by_action.iter_mut().find(|(a, _)| *a == action) {
                    Some((_, v)) => v.push(nr),
                    None => by_action.push((action, vec![nr])),
                }
            }
            for (action, nrs) in by_action {
                a.calls_in(nrs, |a| a.ops.push(Op::Ret(ret_of(action))));
            }
        }
    }
    let deny = |a: &mut Asm, label: usize| a.ops.push(Op::Goto(label));
    if cfg.lock_personality {
        // Only the persona the process starts with (the daemon's, which a
        // fork inherits; PER_LINUX unless it was started under setarch) and the query.
        // SAFETY: 0xffffffff only reads the calling process's persona.
        let current = unsafe { libc::personality(0xffff_ffff) } as u32;
        a.syscall(libc::SYS_personality, |a, end| {
            a.ops.push(Op::Ld(arg(0)));
            a.ops.push(Op::Jump(JMP_JEQ_K, current, To::Label(end), To::Next));
            a.ops.push(Op::Jump(JMP_JEQ_K, 0xffff_ffff, To::Label(end), To::Next));
            deny(a, EPERM);
        });
    }
    if cfg.restrict_realtime {
        a.syscall(libc::SYS_sched_setscheduler, |a, end| {
            a.ops.push(Op::Ld(arg(1)));
            a.ops.push(Op::And(!(libc::SCHED_RESET_ON_FORK as u32)));
            a.ops.push(Op::Jump(JMP_JEQ_K, libc::SCHED_FIFO as u32, To::Label(EPERM), To::Next));
            a.ops.push(Op::Jump(JMP_JEQ_K, libc::SCHED_RR as u32, To::Label(EPERM), To::Next));
            // Past SCHED_IDLE: SCHED_DEADLINE and anything newer.
            a.ops.push(Op::Jump(JMP_JGT_K, libc::SCHED_IDLE as u32, To::Label(EPERM), To::Label(end)));
        });
        // Its policy is behind a pointer a filter cannot read.
        a.syscall(libc::SYS_sched_setattr, |a, _| deny(a, EPERM));
    }
    if cfg.restrict_suid_sgid {
        const SUID_SGID: u32 = libc::S_ISUID | libc::S_ISGID;
        let mode_at = |a: &mut Asm, sys: libc::c_long, i: u32| {
            a.syscall(sys, |a, end| {
                a.ops.push(Op::Ld(arg(i)));
                a.ops.push(Op::Jump(JMP_JSET_K, SUID_SGID, To::Label(EPERM), To::Label(end)));
            })
        };
        // O_TMPFILE's own bit (__O_TMPFILE); O_TMPFILE also holds O_DIRECTORY.
        const CREATES: u32 = libc::O_CREAT as u32 | (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32;
        let open_at = |a: &mut Asm, sys: libc::c_long, flags: u32, mode: u32| {
            a.syscall(sys, |a, end| {
                a.ops.push(Op::Ld(arg(flags)));
                a.ops.push(Op::Jump(JMP_JSET_K, CREATES, To::Next, To::Label(end)));
                a.ops.push(Op::Ld(arg(mode)));
                a.ops.push(Op::Jump(JMP_JSET_K, SUID_SGID, To::Label(EPERM), To::Label(end)));
            })
        };
        #[cfg(target_arch = "x86_64")]
        {
            mode_at(&mut a, libc::SYS_chmod, 1);
            mode_at(&mut a, libc::SYS_creat, 1);
            mode_at(&mut a, libc::SYS_mknod, 1);
            open_at(&mut a, libc::SYS_open, 1, 2);
        }
        mode_at(&mut a, libc::SYS_fchmod, 1);
        mode_at(&mut a, libc::SYS_fchmodat, 2);
        mode_at(&mut a, 452, 2); // fchmodat2
        mode_at(&mut a, libc::SYS_mknodat, 2);
        open_at(&mut a, libc::SYS_openat, 2, 3);
        // openat2's mode is in a struct: ENOSYS makes libc fall back to openat.
        a.syscall(libc::SYS_openat2, |a, _| deny(a, ENOSYS));
    }
    if let Some(allowed) = cfg.allowed_namespaces {
        let denied = ALL_NAMESPACES & !allowed;
        if denied != 0 {
            for sys in [libc::SYS_unshare, libc::SYS_clone] {
                a.syscall(sys, |a, end| {
                    a.ops.push(Op::Ld(arg(0)));
                    a.ops.push(Op::Jump(JMP_JSET_K, denied as u32, To::Label(EPERM), To::Label(end)));
                });
            }
            a.syscall(libc::SYS_setns, |a, end| {
                a.ops.push(Op::Ld(arg(1)));
                // 0: "any kind", which may be a denied one.
                a.ops.push(Op::Jump(JMP_JEQ_K, 0, To::Label(EPERM), To::Next));
                a.ops.push(Op::Jump(JMP_JSET_K, denied as u32, To::Label(EPERM), To::Label(end)));
            });
            // clone3's flags are in a struct: ENOSYS makes libc fall back to clone.
            a.syscall(libc::SYS_clone3, |a, _| deny(a, ENOSYS));
        }
    }
    if cfg.memory_deny_write_execute {
        const WX: u32 = (libc::PROT_WRITE | libc::PROT_EXEC) as u32;
        a.syscall(libc::SYS_mmap, |a, end| {
            a.ops.push(Op::Ld(arg(2)));
            a.ops.push(Op::And(WX));
            a.ops.push(Op::Jump(JMP_JEQ_K, WX, To::Label(EPERM), To::Label(end)));
        });
        // As systemd: no mapping may become executable later.
        for sys in [libc::SYS_mprotect, libc::SYS_pkey_mprotect] {
            a.syscall(sys, |a, end| {
                a.ops.push(Op::Ld(arg(2)));
                a.ops.push(Op::Jump(JMP_JSET_K, libc::PROT_EXEC as u32, To::Label(EPERM), To::Label(end)));
            });
        }
        a.syscall(libc::SYS_shmat, |a, end| {
            a.ops.push(Op::Ld(arg(2)));
            a.ops.push(Op::Jump(JMP_JSET_K, libc::SHM_EXEC as u32, To::Label(EPERM), To::Label(end)));
        });
    }
    match &cfg.families {
        None => {}
        Some(Families::Allow(list)) => a.syscall(libc::SYS_socket, |a, end| {
            a.ops.push(Op::Ld(arg(0)));
            for &af in list {
                a.ops.push(Op::Jump(JMP_JEQ_K, af as u32, To::Label(end), To::Next));
            }
            deny(a, EAFNOSUPPORT);
        }),
        Some(Families::Deny(list)) => a.syscall(libc::SYS_socket, |a, end| {
            a.ops.push(Op::Ld(arg(0)));
            for &af in list {
                a.ops.push(Op::Jump(JMP_JEQ_K, af as u32, To::Label(EAFNOSUPPORT), To::Next));
            }
            a.ops.push(Op::Goto(end));
        }),
    }
    match &cfg.call_log {
        None => {}
        Some(CallLog::Only(calls)) => {
            a.ops.push(Op::Ld(OFF_NR));
            a.calls_in(calls.iter().copied(), |a| a.ops.push(Op::Ret(RET_LOG)));
        }
        Some(CallLog::AllBut(calls)) => {
            a.ops.push(Op::Ld(OFF_NR));
            a.calls_in(calls.iter().copied(), |a| a.ops.push(Op::Ret(RET_ALLOW)));
            a.ops.push(Op::Ret(RET_LOG));
        }
    }
    a.ops.push(Op::Ret(RET_ALLOW));
    a.ops.push(Op::Label(BAD_ARCH));
    // Other ABIs are killed with SIGSYS under SystemCallArchitectures=native,
    // as systemd does. Under SystemCallFilter= they get its refusal: its
    // sets are resolved to native numbers only, and letting another ABI
    // through would bypass it. Otherwise they pass (the rules above are
    // the native ones).
    a.ops.push(Op::Ret(if cfg.native_only {
        RET_KILL_PROCESS
    } else if cfg.call_filter.is_some() {
        ret_of(refused)
    } else {
        RET_ALLOW
    }));
    a.ops.push(Op::Label(EPERM));
    a.ops.push(Op::Ret(RET_ERRNO | libc::EPERM as u32));
    a.ops.push(Op::Label(EAFNOSUPPORT));
    a.ops.push(Op::Ret(RET_ERRNO | libc::EAFNOSUPPORT as u32));
    a.ops.push(Op::Label(ENOSYS));
    a.ops.push(Op::Ret(RET_ERRNO | libc::ENOSYS as u32));
    a.finish().map(|p| Some(Filter(p)))
}

/// Installs `filter` in the calling process. Without no_new_privs the
/// kernel asks for CAP_SYS_ADMIN; a process without it gets no_new_privs
/// first, as systemd does. Only system calls: safe after fork.
///
/// # Safety
/// Called in the forked child, just before exec.
pub(super) unsafe fn install(filter: &Filter) -> Result<(), ()> {
    let filter = &filter.0;
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    let set = |prog: &libc::sock_fprog| {
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, prog as *const libc::sock_fprog, 0, 0)
    };
    if set(&prog) == 0 {
        return Ok(());
    }
    if *libc::__errno_location() != libc::EACCES || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
        return Err(());
    }
    if set(&prog) == 0 {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` as the kernel would on a call `nr` with `args`.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let insn = prog[pc];
            pc += 1;
            let k = insn.k;
            let jump = |cond: bool| if cond { insn.jt as usize } else { insn.jf as usize };
            match insn.code {
                LD_W_ABS => acc = u32::from_ne_bytes(data[k as usize..k as usize + 4].try_into().unwrap()),
                ALU_AND_K => acc &= k,
                JMP_JEQ_K => pc += jump(acc == k),
                JMP_JGT_K => pc += jump(acc > k),
                JMP_JGE_K => pc += jump(acc >= k),
                JMP_JSET_K => pc += jump(acc & k != 0),
                JMP_JA => pc += k as usize,
                RET_K => return k,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    fn config(lines: &[(&str, &str)]) -> SeccompConfig {
        let mut c = SeccompConfig::default();
        for (k, v) in lines {
            c.apply(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        c
    }

    #[test]
    fn system_call_filters_answer_as_configured() {
        let n = AUDIT_ARCH_NATIVE;
        let eperm = RET_ERRNO | libc::EPERM as u32;
        // Debian's redis-server unit: an allow list less two sets, killing.
        let c = config(&[("SystemCallFilter", "@system-service"), ("SystemCallFilter", "~ @privileged @resources")]);
        let prog = build(&c).unwrap().unwrap().0;
        // Runs of consecutive numbers are one range test each: 119 instructions today.
        assert!(prog.len() < 200, "{} instructions", prog.len());
        for allowed in [libc::SYS_read, libc::SYS_execve, libc::SYS_openat, libc::SYS_clone, libc::SYS_exit_group] {
            assert_eq!(run(&prog, n, allowed, [0; 6]), RET_ALLOW, "{allowed}");
        }
        for refused in [libc::SYS_mount, libc::SYS_reboot, libc::SYS_fchownat, libc::SYS_setrlimit, libc::SYS_ptrace] {
            assert_eq!(run(&prog, n, refused, [0; 6]), RET_KILL_PROCESS, "{refused}");
        }
        assert_eq!(run(&prog, n, 1000, [0; 6]), RET_KILL_PROCESS, "an unknown number is not allowed");
        // A deny list with SystemCallErrorNumber= and a per-entry errno.
        let c = config(&[
            ("SystemCallFilter", "~@mount @swap:ENOSYS"),
            ("SystemCallErrorNumber", "EPERM"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallLog", "getpid"),
        ]);
        let prog = build(&c).unwrap().unwrap().0;
        assert_eq!(run(&prog, n, libc::SYS_mount, [0; 6]), eperm);
        assert_eq!(run(&prog, n, libc::SYS_swapon, [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(run(&prog, n, libc::SYS_read, [0; 6]), RET_ALLOW);
        assert_eq!(run(&prog, n, libc::SYS_getpid, [0; 6]), RET_LOG);
        // The argument rules still follow.
        let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        assert_eq!(run(&prog, n, libc::SYS_mmap, [0, 4096, wx, 0, 0, 0]), eperm);
        assert_eq!(run(&prog, n, libc::SYS_mmap, [0, 4096, libc::PROT_READ as u64, 0, 0, 0]), RET_ALLOW);
        // Another ABI gets the filter's refusal; without a filter it passes.
        assert_eq!(run(&prog, 0x4000_0003, 21, [0; 6]), eperm);
        let prog = build(&config(&[("SystemCallLog", "~getpid")])).unwrap().unwrap().0;
        assert_eq!(run(&prog, 0x4000_0003, 21, [0; 6]), RET_ALLOW);
        assert_eq!(run(&prog, n, libc::SYS_getpid, [0; 6]), RET_ALLOW);
        assert_eq!(run(&prog, n, libc::SYS_read, [0; 6]), RET_LOG);
        // SystemCallErrorNumber= alone builds nothing.
        assert!(build(&config(&[("SystemCallErrorNumber", "EPERM")])).unwrap().is_none());
        // The largest allow list fits the kernel's limit.
        let prog = build(&config(&[("SystemCallFilter", "@known")])).unwrap().unwrap().0;
        assert!(prog.len() < MAX_INSNS);
    }

    #[test]
    fn no_key_no_filter_and_every_key_builds() {
        assert!(build(&SeccompConfig::default()).unwrap().is_none());
        let mut c = SeccompConfig::default();
        for (k, v) in [
            ("LockPersonality", "yes"),
            ("RestrictRealtime", "yes"),
            ("RestrictSUIDSGID", "yes"),
            ("RestrictNamespaces", "~net"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallArchitectures", "native"),
            ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET"),
        ] {
            c.apply(k, v).unwrap();
        }
        let prog = build(&c).unwrap().unwrap().0;
        // The last three are the shared error returns, then the arch check leads.
        assert_eq!(prog[0].k, OFF_ARCH);
        assert_eq!(prog[1].k, AUDIT_ARCH_NATIVE);
        assert_eq!(prog[prog.len() - 2].k, RET_ERRNO | libc::EAFNOSUPPORT as u32);
        // Every jump lands inside the program.
        for (i, insn) in prog.iter().enumerate() {
            if insn.code & 0x07 == 0x05 {
                let far = if insn.code == JMP_JA { insn.k as usize } else { insn.jt.max(insn.jf) as usize };
                assert!(i + 1 + far < prog.len(), "insn {i}");
            }
        }
    }
}
