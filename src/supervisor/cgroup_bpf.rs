//! BPF programs on a unit's cgroup, written by hand and loaded through the
//! bpf(2) system call: `DevicePolicy=`/`DeviceAllow=` as a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and `IPAddressAllow=`/
//! `IPAddressDeny=` as `BPF_PROG_TYPE_CGROUP_SKB` programs on ingress and
//! egress, all attached with `BPF_F_ALLOW_MULTI` (so whatever the container
//! runtime attached above still runs, and a delegated subtree inherits them).
//! Also `Delegate=`: the unit's cgroup handed to its user.
//!
//! Where the kernel refuses (no cgroup v2 for units, an unprivileged
//! container without CAP_BPF/CAP_SYS_ADMIN), every unit that asked says so in
//! its log at each start; the unit still runs, as with the other resource keys.

use std::ffi::CString;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::units::cgroup_access::{
    glob_match, CgroupAccess, Delegate, DeviceKind, DevicePolicy, DeviceSpec, IpPrefix, ACCESS_ALL, ACCESS_READ,
    ACCESS_WRITE,
};

/// One eBPF instruction (`struct bpf_insn`): on x86-64 and aarch64 (little
/// endian) the destination register is the low nibble of `regs`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes (linux/bpf.h, linux/bpf_common.h): class | op | source.
const LDX_MEM_W: u8 = 0x61;
const ST_MEM_W: u8 = 0x62;
/// `lock *(u64 *)(dst + off) += src` (BPF_STX | BPF_ATOMIC | BPF_DW, imm BPF_ADD).
const ATOMIC_ADD64: u8 = 0xdb;
/// A 64-bit immediate over two instructions; with src = BPF_PSEUDO_MAP_FD the imm is a map fd.
const LD_IMM64: u8 = 0x18;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const MOV64_K: u8 = 0xb7;
const JEQ64_K: u8 = 0x15;
const MOV64_X: u8 = 0xbf;
const ADD64_K: u8 = 0x07;
const MOV32_K: u8 = 0xb4;
const MOV32_X: u8 = 0xbc;
const AND32_K: u8 = 0x54;
const OR32_K: u8 = 0x44;
const RSH32_K: u8 = 0x74;
/// 32-bit compares (BPF_JMP32, Linux 5.1): an immediate with its top bit set
/// is not sign-extended against a zero-extended 32-bit load.
const JEQ32_K: u8 = 0x16;
const JNE32_K: u8 = 0x56;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

// bpf(2) commands, program and attach types, flags and helpers (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_FUNC_SKB_LOAD_BYTES: i32 = 26;
/// `bpf_cgroup_dev_ctx.access_type`'s low half: BPF_DEVCG_DEV_BLOCK / _CHAR.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// Offset of `protocol` in `struct __sk_buff` (len, pkt_type, mark, queue_mapping come first).
const SKB_PROTOCOL: i16 = 16;

/// One resolved rule of the device program; None matches any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMatch {
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

/// The pseudo devices `DevicePolicy=closed` lets through, with the kernel's
/// fixed numbers (Documentation/admin-guide/devices.txt): null, zero, full,
/// random, urandom, tty, ptmx. The pty slaves (`char-pts`) are looked up.
const PSEUDO_DEVICES: [(u32, u32); 7] = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)];

/// The device program: allowed when any rule matches, denied otherwise.
///
/// `r2` = type, `r3` = requested access, `r4` = major, `r5` = minor; each
/// rule is a run of compares that jump to the next rule, then `return 1`.
pub fn device_program(rules: &[DeviceMatch]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, R2, R1, 0, 0),
        insn(AND32_K, R2, 0, 0, 0xffff),
        insn(LDX_MEM_W, R3, R1, 0, 0),
        insn(RSH32_K, R3, 0, 0, 16),
        insn(LDX_MEM_W, R4, R1, 4, 0),
        insn(LDX_MEM_W, R5, R1, 8, 0),
    ];
    for rule in rules {
        let mut checks: Vec<Vec<Insn>> = Vec::new();
        if rule.access & ACCESS_ALL != ACCESS_ALL {
            // Requested bits outside the allowed ones: not this rule.
            checks.push(vec![
                insn(MOV32_X, R1, R3, 0, 0),
                insn(AND32_K, R1, 0, 0, i32::from(!rule.access & ACCESS_ALL)),
                insn(JNE32_K, R1, 0, 0, 0),
            ]);
        }
        let kind = if rule.kind == DeviceKind::Block { DEV_BLOCK } else { DEV_CHAR };
        checks.push(vec![insn(JNE32_K, R2, 0, 0, kind)]);
        if let Some(major) = rule.major {
            checks.push(vec![insn(JNE32_K, R4, 0, 0, major as i32)]);
        }
        if let Some(minor) = rule.minor {
            checks.push(vec![insn(JNE32_K, R5, 0, 0, minor as i32)]);
        }
        let body: Vec<Insn> = checks.into_iter().flatten().collect();
        let len = body.len();
        for (i, mut ins) in body.into_iter().enumerate() {
            if ins.code == JNE32_K {
                // Past the rest of the block and its `r0 = 1; exit`.
                ins.off = (len - i - 1 + 2) as i16;
            }
            p.push(ins);
        }
        p.push(insn(MOV32_K, R0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV32_K, R0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// A prefix as (word index, mask, network) triples over the address as the
/// program loads it: 32-bit words in memory order, so the constants are the
/// network-order bytes read as a native integer.
fn prefix_words(prefix: &IpPrefix) -> Vec<(usize, i32, i32)> {
    let (bytes, bits): (Vec<u8>, u32) = match prefix.addr {
        IpAddr::V4(a) => (a.octets().to_vec(), 32),
        IpAddr::V6(a) => (a.octets().to_vec(), 128),
    };
    let len = u32::from(prefix.len).min(bits);
    let mut words = Vec::new();
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let start = i as u32 * 32;
        let ones = len.saturating_sub(start).min(32);
        if ones == 0 {
            continue;
        }
        let mask_be: u32 = if ones == 32 { u32::MAX } else { !(u32::MAX >> ones) };
        let word_be = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let native = |v: u32| u32::from_ne_bytes(v.to_be_bytes()) as i32;
        words.push((i, native(mask_be), native(word_be & mask_be)));
    }
    words
}

/// Bits of `r8`: some allow prefix matched, some deny prefix matched.
const MATCH_ALLOW: i32 = 1;
const MATCH_DENY: i32 = 2;

/// The IP program of one direction (ingress checks the source address,
/// egress the destination): allowed when an `IPAddressAllow=` prefix
/// matches, else denied when an `IPAddressDeny=` prefix matches, else allowed
/// (systemd's order). Packets neither IPv4 nor IPv6 pass.
///
/// With `counters` (`IPAccounting=`: an array map of [`Counter`]s, entry 0
/// ingress, 1 egress), the packets that pass are added to this direction's entry.
pub fn ip_program(allow: &[IpPrefix], deny: &[IpPrefix], ingress: bool, counters: Option<i32>) -> Vec<Insn> {
    let mut p = vec![insn(MOV64_X, R6, R1, 0, 0), insn(LDX_MEM_W, R7, R6, SKB_PROTOCOL, 0), insn(MOV32_K, R8, 0, 0, 0)];
    // (ethertype, address offset in the header, address size)
    let families: [(u16, i32, i32, bool); 2] =
        [(0x0800, if ingress { 12 } else { 16 }, 4, true), (0x86dd, if ingress { 8 } else { 24 }, 16, false)];
    for (ethertype, offset, size, v4) in families {
        let of_family =
            |list: &[IpPrefix]| -> Vec<IpPrefix> { list.iter().filter(|p| p.addr.is_ipv4() == v4).copied().collect() };
        let (allow, deny) = (of_family(allow), of_family(deny));
        if allow.is_empty() && deny.is_empty() {
            continue;
        }
        let mut block = vec![
            insn(MOV64_X, R1, R6, 0, 0),
            insn(MOV32_K, R2, 0, 0, offset),
            insn(MOV64_X, R3, R10, 0, 0),
            insn(ADD64_K, R3, 0, 0, -16),
            insn(MOV32_K, R4, 0, 0, size),
            insn(CALL, 0, 0, 0, BPF_FUNC_SKB_LOAD_BYTES),
        ];
        // A header too short to hold the address: nothing to match (patched below).
        let bail = block.len();
        block.push(insn(JNE32_K, R0, 0, 0, 0));
        for (list, bit) in [(&allow, MATCH_ALLOW), (&deny, MATCH_DENY)] {
            for prefix in list.iter() {
                let words = prefix_words(prefix);
                // Each word: load, mask, compare (3); then the `or`.
                let total = words.len() * 3;
                for (n, (i, mask, net)) in words.into_iter().enumerate() {
                    let left = total - n * 3 - 3;
                    block.push(insn(LDX_MEM_W, R2, R10, -16 + 4 * i as i16, 0));
                    block.push(insn(AND32_K, R2, 0, 0, mask));
                    block.push(insn(JNE32_K, R2, 0, (left + 1) as i16, net));
                }
                block.push(insn(OR32_K, R8, 0, 0, bit));
            }
        }
        block[bail].off = (block.len() - bail - 1) as i16;
        p.push(insn(JNE32_K, R7, 0, block.len() as i16, i32::from(ethertype.to_be())));
        p.extend(block);
    }
    p.extend([
        insn(MOV32_K, R0, 0, 0, 1),
        insn(MOV32_X, R1, R8, 0, 0),
        insn(AND32_K, R1, 0, 0, MATCH_ALLOW),
        insn(JNE32_K, R1, 0, 4, 0),
        insn(MOV32_X, R1, R8, 0, 0),
        insn(AND32_K, R1, 0, 0, MATCH_DENY),
        insn(JEQ32_K, R1, 0, 1, 0),
        insn(MOV32_K, R0, 0, 0, 0),
    ]);
    if let Some(map) = counters {
        // The jumps above land here with the verdict in r0; r9 keeps it across the call.
        p.extend([
            insn(MOV64_X, R9, R0, 0, 0),
            insn(JEQ32_K, R9, 0, 11, 0),
            insn(ST_MEM_W, R10, 0, -4, i32::from(!ingress)),
            insn(LD_IMM64, R1, BPF_PSEUDO_MAP_FD, 0, map),
            insn(0, 0, 0, 0, 0),
            insn(MOV64_X, R2, R10, 0, 0),
            insn(ADD64_K, R2, 0, 0, -4),
            insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
            insn(JEQ64_K, R0, 0, 4, 0),
            // skb->len: the packet's bytes from the network header on.
            insn(LDX_MEM_W, R1, R6, 0, 0),
            insn(ATOMIC_ADD64, R0, R1, 0, 0),
            insn(MOV64_K, R1, 0, 0, 1),
            insn(ATOMIC_ADD64, R0, R1, 8, 0),
            insn(MOV64_X, R0, R9, 0, 0),
        ]);
    }
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// One entry of the `IPAccounting=` map, as the program adds to it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub bytes: u64,
    pub packets: u64,
}

/// A unit's IP traffic that passed its programs since its run started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpCounters {
    pub ingress: Counter,
    pub egress: Counter,
}

/// `union bpf_attr` for BPF_MAP_CREATE, up to `map_flags`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for BPF_MAP_LOOKUP_ELEM.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn counters_map() -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: std::mem::size_of::<Counter>() as u32,
        max_entries: 2,
        map_flags: 0,
    };
    // SAFETY: MapCreateAttr is the kernel's BPF_MAP_CREATE layout; it holds no pointers.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr) }?;
    // SAFETY: a successful BPF_MAP_CREATE returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn read_counter(map: &OwnedFd, key: u32) -> io::Result<Counter> {
    let mut value = Counter::default();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &mut value as *mut Counter as u64,
        ..MapElemAttr::default()
    };
    // SAFETY: MapElemAttr is the kernel's BPF_MAP_LOOKUP_ELEM layout; `key` and `value` live
    // across the call and have the map's key and value sizes.
    unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }?;
    Ok(value)
}

/// The `IPAccounting=` maps of the units' current runs, by unit name: read by
/// `aikore status` (the web layer) while the supervisor owns the programs.
static COUNTERS: std::sync::Mutex<Vec<(String, std::sync::Arc<OwnedFd>)>> = std::sync::Mutex::new(Vec::new());

/// The unit's IP counters, when its current run has `IPAccounting=` enforced.
pub fn ip_counters(unit: &str) -> Option<IpCounters> {
    let map = COUNTERS.lock().ok()?.iter().find(|(u, _)| u == unit).map(|(_, m)| m.clone())?;
    Some(IpCounters { ingress: read_counter(&map, 0).ok()?, egress: read_counter(&map, 1).ok()? })
}

fn register_counters(unit: &str, map: Option<std::sync::Arc<OwnedFd>>) {
    if let Ok(mut all) = COUNTERS.lock() {
        all.retain(|(u, _)| u != unit);
        if let Some(map) = map {
            all.push((unit.to_string(), map));
        }
    }
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH / BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// bpf(2) with `attr` of type `T`.
///
/// # Safety
/// `attr` must be the layout the kernel expects for `cmd`, and every pointer in it valid for the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: per this function's contract; the size passed is exactly T's, and the kernel
    // rejects unknown non-zero bytes past the part it knows.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as libc::c_uint) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads a program; on a verifier refusal the error carries the verifier's log.
fn load(prog_type: u32, expected_attach_type: u32, insns: &[Insn], name: &str) -> io::Result<OwnedFd> {
    // Without a log first: a log buffer too small for a long program would
    // itself fail the load (ENOSPC). The log is only asked for to say why.
    match load_with_log(prog_type, expected_attach_type, insns, name, None) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) => {
            // The verifier's last lines say what it refused; 64 KiB holds them for programs this size.
            let mut log = vec![0u8; 64 * 1024];
            match load_with_log(prog_type, expected_attach_type, insns, name, Some(&mut log)) {
                Ok(fd) => Ok(fd),
                Err(_) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let tail: Vec<&str> = text.lines().rev().take(3).collect();
                    if tail.is_empty() {
                        Err(e)
                    } else {
                        Err(io::Error::new(e.kind(), format!("{e}; verifier: {}", tail.join(" / "))))
                    }
                }
            }
        }
        Err(e) => Err(e),
    }
}

fn load_with_log(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[Insn],
    name: &str,
    log: Option<&mut Vec<u8>>,
) -> io::Result<OwnedFd> {
    let license = CString::new("GPL").map_err(io::Error::other)?;
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name,
        expected_attach_type,
        ..ProgLoadAttr::default()
    };
    // SAFETY: ProgLoadAttr is the kernel's BPF_PROG_LOAD layout; `insns`, `license` and the
    // log buffer (when given) outlive the call and their lengths are the ones given.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn attach_cmd(cmd: libc::c_int, cgroup: &OwnedFd, prog: &OwnedFd, attach_type: u32, flags: u32) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
    };
    // SAFETY: AttachAttr is the kernel's BPF_PROG_ATTACH/DETACH layout; it holds no pointers.
    unsafe { bpf(cmd, &mut attr) }.map(|_| ())
}

/// The programs attached to one unit's cgroup for its current run; the
/// cgroup keeps them while it exists, so this is only needed to detach them
/// when the same cgroup is reused for a new run.
#[derive(Debug)]
pub struct Attached {
    unit: String,
    cgroup: OwnedFd,
    progs: Vec<(OwnedFd, u32)>,
}

impl Attached {
    /// Detaches every program (a removed cgroup took them already: errors are moot).
    pub fn detach(self) {
        register_counters(&self.unit, None);
        for (prog, attach_type) in &self.progs {
            let _ = attach_cmd(BPF_PROG_DETACH, &self.cgroup, prog, attach_type.to_owned(), 0);
        }
    }
}

/// The device numbers `/proc/devices` gives the classes matching `pattern`.
fn proc_devices_majors(devices: &str, kind: DeviceKind, pattern: &str) -> Vec<u32> {
    let header = if kind == DeviceKind::Char { "Character devices:" } else { "Block devices:" };
    let mut in_section = false;
    let mut majors = Vec::new();
    for line in devices.lines() {
        if line.ends_with(':') {
            in_section = line == header;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((major, name)) = line.trim().split_once(char::is_whitespace) {
            if let (Ok(major), true) = (major.parse::<u32>(), glob_match(pattern, name.trim())) {
                if !majors.contains(&major) {
                    majors.push(major);
                }
            }
        }
    }
    majors
}

/// The rules of the device program for `access`, with one line per entry
/// that matched nothing (systemd skips those too, but says so).
pub fn resolve_devices(access: &CgroupAccess, proc_devices: &str) -> (Vec<DeviceMatch>, Vec<String>) {
    let mut rules = Vec::new();
    let mut notes = Vec::new();
    if access.device_policy != DevicePolicy::Strict {
        for (major, minor) in PSEUDO_DEVICES {
            rules.push(DeviceMatch {
                kind: DeviceKind::Char,
                major: Some(major),
                minor: Some(minor),
                access: ACCESS_ALL,
            });
        }
        for major in proc_devices_majors(proc_devices, DeviceKind::Char, "pts") {
            let access = ACCESS_READ | ACCESS_WRITE;
            rules.push(DeviceMatch { kind: DeviceKind::Char, major: Some(major), minor: None, access });
        }
    }
    for rule in &access.device_allow {
        match &rule.device {
            DeviceSpec::Path(path) => match fs::metadata(path) {
                Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => {
                    let kind = if m.file_type().is_block_device() { DeviceKind::Block } else { DeviceKind::Char };
                    let rdev = m.rdev();
                    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
                    rules.push(DeviceMatch { kind, major: Some(major), minor: Some(minor), access: rule.access });
                }
                Ok(_) => notes.push(format!("DeviceAllow={}: not a device node; skipped", path.display())),
                Err(e) => notes.push(format!("DeviceAllow={}: {e}; skipped", path.display())),
            },
            DeviceSpec::Class { kind, pattern } => {
                let majors = proc_devices_majors(proc_devices, *kind, pattern);
                if majors.is_empty() {
                    let k = if *kind == DeviceKind::Char { "char" } else { "block" };
                    notes.push(format!("DeviceAllow={k}-{pattern}: no such device class in /proc/devices; skipped"));
                }
                for major in majors {
                    rules.push(DeviceMatch { kind: *kind, major: Some(major), minor: None, access: rule.access });
                }
            }
        }
    }
    (rules, notes)
}

/// Builds, loads and attaches the programs `access` asks for to the cgroup
/// at `dir`. Returns what was attached and one line per key that is not
/// (fully) enforced, for the unit's log.
pub fn apply(unit: &str, dir: &Path, access: &CgroupAccess) -> (Option<Attached>, Vec<String>) {
    let mut problems = Vec::new();
    let counters = if access.ip_accounting {
        match counters_map() {
            Ok(map) => Some(std::sync::Arc::new(map)),
            Err(e) => {
                problems.push(format!("IPAccounting= is not enforced: creating the BPF map failed ({e})"));
                None
            }
        }
    } else {
        None
    };
    let mut programs: Vec<(&str, u32, u32, Vec<Insn>)> = Vec::new();
    if access.filters_devices() {
        let devices = fs::read_to_string("/proc/devices").unwrap_or_default();
        let (rules, notes) = resolve_devices(access, &devices);
        problems.extend(notes);
        programs.push(("DeviceAllow", BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE, device_program(&rules)));
    }
    if access.filters_ip() {
        for (ingress, attach) in [(true, BPF_CGROUP_INET_INGRESS), (false, BPF_CGROUP_INET_EGRESS)] {
            let map = counters.as_ref().map(|m| m.as_raw_fd());
            let prog = ip_program(&access.ip_allow, &access.ip_deny, ingress, map);
            programs.push(("IPAddressDeny", BPF_PROG_TYPE_CGROUP_SKB, attach, prog));
        }
    }
    if programs.is_empty() {
        return (None, problems);
    }
    let what = |key: &str| match key {
        "DeviceAllow" => "DevicePolicy= and DeviceAllow= are",
        _ if access.ip_deny.is_empty() => "IPAccounting= is",
        _ => "IPAddressAllow=, IPAddressDeny= and IPAccounting= are",
    };
    let cgroup = match fs::File::open(dir) {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            problems.push(format!("{} not enforced: cannot open {} ({e})", what(programs[0].0), dir.display()));
            return (None, problems);
        }
    };
    let mut attached = Attached { unit: unit.to_string(), cgroup, progs: Vec::new() };
    let mut ip_attached = 0;
    for (key, prog_type, attach_type, insns) in programs {
        let name = if key == "DeviceAllow" { "aikore_devices" } else { "aikore_ip" };
        let expected = if prog_type == BPF_PROG_TYPE_CGROUP_SKB { attach_type } else { 0 };
        let result = load(prog_type, expected, &insns, name).and_then(|prog| {
            attach_cmd(BPF_PROG_ATTACH, &attached.cgroup, &prog, attach_type, BPF_F_ALLOW_MULTI).map(|()| prog)
        });
        match result {
            Ok(prog) => {
                ip_attached += usize::from(prog_type == BPF_PROG_TYPE_CGROUP_SKB);
                attached.progs.push((prog, attach_type));
            }
            Err(e) => {
                let why = match e.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        format!(
                            "{e}: the kernel refuses BPF to aikore (an unprivileged container without CAP_BPF and \
                             CAP_SYS_ADMIN), or a program attached above without BPF_F_ALLOW_MULTI"
                        )
                    }
                    _ => e.to_string(),
                };
                let line = format!("{} not enforced: loading or attaching the BPF program failed ({why})", what(key));
                if !problems.contains(&line) {
                    problems.push(line);
                }
            }
        }
    }
    // Counters only when both directions count.
    register_counters(unit, counters.filter(|_| ip_attached == 2));
    (Some(attached), problems)
}

/// The files of a cgroup systemd hands to a delegated unit's user.
const DELEGATED_FILES: [&str; 3] = ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"];

/// The cgroup v2 controllers each `Delegate=` name stands for (v1 names and
/// the bpf-* pseudo controllers have no cgroup v2 file of their own).
fn v2_controller(name: &str) -> Option<&'static str> {
    match name {
        "cpu" | "cpuacct" => Some("cpu"),
        "cpuset" => Some("cpuset"),
        "io" | "blkio" => Some("io"),
        "memory" => Some("memory"),
        "pids" => Some("pids"),
        _ => None,
    }
}

/// `Delegate=`: hands the cgroup at `dir` (the directory and the files
/// systemd hands over) to `owner` (the unit's User=; None: root, which needs
/// nothing) and checks the listed controllers are there for the unit to
/// enable in its subtree. Returns the lines for the unit's log.
pub fn delegate(dir: &Path, delegate: &Delegate, owner: Option<(u32, u32)>) -> Vec<String> {
    let wanted: Vec<&str> = match delegate {
        Delegate::No => return Vec::new(),
        Delegate::All => Vec::new(),
        Delegate::Controllers(list) => {
            let mut v: Vec<&str> = list.iter().filter_map(|c| v2_controller(c)).collect();
            v.dedup();
            v
        }
    };
    let mut problems = Vec::new();
    if let Some((uid, gid)) = owner {
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(DELEGATED_FILES.iter().map(|f| dir.join(f)));
        for path in paths {
            if let Err(e) = chown(&path, uid, gid) {
                problems.push(format!("Delegate= is not enforced: cannot hand {} to uid {uid} ({e})", path.display()));
            }
        }
    }
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let missing: Vec<&str> =
        wanted.into_iter().filter(|c| !available.split_whitespace().any(|a| a == *c)).collect::<Vec<_>>();
    if !missing.is_empty() {
        problems.push(format!(
            "Delegate=: the {} controller(s) are not available in {} (see the daemon's log at start); the unit \
             cannot enable them for its children",
            missing.join(", "),
            dir.display()
        ));
    }
    problems
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::cgroup_access::CgroupAccess;

    const PROC_DEVICES: &str = "Character devices:\n  1 mem\n  4 /dev/vc/0\n  4 tty\n  5 /dev/tty\n  5 /dev/console\n\
                                 136 pts\n254 rtc\n\nBlock devices:\n  7 loop\n  8 sd\n254 virtblk\n";

    fn access(pairs: &[(&str, &str)]) -> CgroupAccess {
        let mut a = CgroupAccess::default();
        for (k, v) in pairs {
            a.apply(k, v).unwrap();
        }
        a
    }

    /// Runs a device program the way the kernel would for one request, so the
    /// shape and the jump offsets are checked together.
    fn run_device(p: &[Insn], kind: i32, acc: i32, major: u32, minor: u32) -> i32 {
        let mut r = [0i64; 11];
        let ctx = [((acc << 16) | kind) as u32, major, minor];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let mut next = pc + 1;
            match i.code {
                LDX_MEM_W => r[dst] = i64::from(ctx[i.off as usize / 4]),
                AND32_K => r[dst] = i64::from(r[dst] as u32 & i.imm as u32),
                RSH32_K => r[dst] = i64::from((r[dst] as u32) >> i.imm),
                MOV32_X => r[dst] = i64::from(r[src] as u32),
                MOV32_K => r[dst] = i64::from(i.imm as u32),
                JNE32_K if r[dst] as u32 != i.imm as u32 => next = pc + 1 + i.off as usize,
                JNE32_K => {}
                EXIT => return r[0] as i32,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc = next;
        }
    }

    #[test]
    fn device_program_shape_for_a_closed_policy() {
        let (rules, notes) =
            resolve_devices(&access(&[("DevicePolicy", "closed"), ("DeviceAllow", "char-rtc r")]), PROC_DEVICES);
        assert!(notes.is_empty(), "{notes:?}");
        // 7 pseudo devices, pts (136, any minor, rw) and rtc (254, any minor, r).
        assert_eq!(rules.len(), 9);
        let p = device_program(&rules);
        // 6 loads, then per rule: pseudo (type, major, minor, r0, exit) = 5 each; pts 3 access + type + major + 2;
        // rtc likewise; then the final deny.
        assert_eq!(p.len(), 6 + 7 * 5 + 2 * 7 + 2);
        assert_eq!(p[p.len() - 2], insn(MOV32_K, R0, 0, 0, 0));
        const R: i32 = ACCESS_READ as i32;
        const W: i32 = ACCESS_WRITE as i32;
        assert_eq!(run_device(&p, DEV_CHAR, R | W, 1, 3), 1, "/dev/null rw");
        assert_eq!(run_device(&p, DEV_CHAR, R, 5, 2), 1, "/dev/ptmx");
        assert_eq!(run_device(&p, DEV_CHAR, R | W, 136, 7), 1, "a pty");
        assert_eq!(run_device(&p, DEV_CHAR, 1, 136, 7), 0, "mknod of a pty");
        assert_eq!(run_device(&p, DEV_CHAR, R, 254, 0), 1, "rtc read");
        assert_eq!(run_device(&p, DEV_CHAR, W, 254, 0), 0, "rtc write");
        assert_eq!(run_device(&p, DEV_BLOCK, R, 1, 3), 0, "a block device numbered as null");
        assert_eq!(run_device(&p, DEV_CHAR, R, 1, 11), 0, "/dev/kmsg");
    }

    #[test]
    fn strict_lets_only_the_list_through() {
        let a = access(&[("DevicePolicy", "strict"), ("DeviceAllow", "block-* r"), ("DeviceAllow", "char-tty")]);
        let (rules, notes) = resolve_devices(&a, PROC_DEVICES);
        assert!(notes.is_empty(), "{notes:?}");
        let p = device_program(&rules);
        assert_eq!(run_device(&p, DEV_CHAR, ACCESS_WRITE as i32, 1, 3), 0, "no /dev/null under strict");
        for major in [7, 8, 254] {
            assert_eq!(run_device(&p, DEV_BLOCK, ACCESS_READ as i32, major, 1), 1, "block {major}");
            assert_eq!(run_device(&p, DEV_BLOCK, ACCESS_WRITE as i32, major, 1), 0, "block {major} write");
        }
        assert_eq!(run_device(&p, DEV_CHAR, 7, 4, 64), 1, "char-tty rwm");
        let (_, notes) = resolve_devices(&access(&[("DeviceAllow", "char-nvidia*")]), PROC_DEVICES);
        assert_eq!(notes, ["DeviceAllow=char-nvidia*: no such device class in /proc/devices; skipped"]);
        let (_, notes) = resolve_devices(&access(&[("DeviceAllow", "/dev/aikore-nonexistent")]), PROC_DEVICES);
        assert!(notes[0].starts_with("DeviceAllow=/dev/aikore-nonexistent: "), "{notes:?}");
    }

    #[test]
    fn device_paths_resolve_through_stat() {
        let (rules, notes) =
            resolve_devices(&access(&[("DevicePolicy", "strict"), ("DeviceAllow", "/dev/null r")]), "");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            rules,
            [DeviceMatch { kind: DeviceKind::Char, major: Some(1), minor: Some(3), access: ACCESS_READ }]
        );
    }

    /// Runs an IP program on a packet (the header bytes skb_load_bytes reads).
    fn run_ip(p: &[Insn], protocol: u16, header: &[u8]) -> i32 {
        let mut r = [0i64; 11];
        let mut stack = [0u8; 16];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let mut next = pc + 1;
            match i.code {
                MOV64_X => r[dst] = r[src],
                ADD64_K => r[dst] += i64::from(i.imm),
                LDX_MEM_W if src == R6 as usize => {
                    assert_eq!(i.off, SKB_PROTOCOL);
                    r[dst] = i64::from(u32::from(protocol.to_be()));
                }
                LDX_MEM_W => {
                    let at = (16 + i.off) as usize;
                    r[dst] = i64::from(u32::from_ne_bytes(stack[at..at + 4].try_into().unwrap()));
                }
                CALL => {
                    assert_eq!(i.imm, BPF_FUNC_SKB_LOAD_BYTES);
                    let (off, len) = (r[2] as usize, r[4] as usize);
                    assert_eq!(r[3], -16);
                    r[0] = match header.get(off..off + len) {
                        Some(b) => {
                            stack[..len].copy_from_slice(b);
                            0
                        }
                        None => -14,
                    };
                }
                AND32_K => r[dst] = i64::from(r[dst] as u32 & i.imm as u32),
                OR32_K => r[dst] = i64::from(r[dst] as u32 | i.imm as u32),
                MOV32_X => r[dst] = i64::from(r[src] as u32),
                MOV32_K => r[dst] = i64::from(i.imm as u32),
                JNE32_K if r[dst] as u32 != i.imm as u32 => next = pc + 1 + i.off as usize,
                JEQ32_K if r[dst] as u32 == i.imm as u32 => next = pc + 1 + i.off as usize,
                JNE32_K | JEQ32_K => {}
                EXIT => return r[0] as i32,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc = next;
        }
    }

    fn v4_header(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45; 20];
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h
    }

    fn v6_header(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr) -> Vec<u8> {
        let mut h = vec![0x60; 40];
        h[8..24].copy_from_slice(&src.octets());
        h[24..40].copy_from_slice(&dst.octets());
        h
    }

    #[test]
    fn ip_program_allow_wins_over_deny() {
        let a = access(&[("IPAddressDeny", "any"), ("IPAddressAllow", "localhost 192.168.0.0/16 fd00::/8")]);
        let egress = ip_program(&a.ip_allow, &a.ip_deny, false, None);
        let ingress = ip_program(&a.ip_allow, &a.ip_deny, true, None);
        let here = [10, 0, 0, 1];
        let out = |dst: [u8; 4]| run_ip(&egress, 0x0800, &v4_header(here, dst));
        assert_eq!(out([127, 0, 0, 1]), 1);
        assert_eq!(out([127, 200, 1, 1]), 1);
        assert_eq!(out([192, 168, 77, 3]), 1, "a word with the top bit set");
        assert_eq!(out([10, 9, 9, 9]), 0);
        assert_eq!(out([192, 169, 0, 1]), 0);
        // Ingress looks at the source.
        assert_eq!(run_ip(&ingress, 0x0800, &v4_header([127, 0, 0, 1], here)), 1);
        assert_eq!(run_ip(&ingress, 0x0800, &v4_header([8, 8, 8, 8], [127, 0, 0, 1])), 0);
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        assert_eq!(run_ip(&egress, 0x86dd, &v6_header(v6("::1"), v6("::1"))), 1);
        assert_eq!(run_ip(&egress, 0x86dd, &v6_header(v6("::1"), v6("fd12::5"))), 1);
        assert_eq!(run_ip(&egress, 0x86dd, &v6_header(v6("::1"), v6("2001:db8::1"))), 0);
        assert_eq!(run_ip(&egress, 0x86dd, &v6_header(v6("::1"), v6("::2"))), 0);
        // Neither IPv4 nor IPv6 (ARP): not the firewall's business; a truncated header matches nothing.
        assert_eq!(run_ip(&egress, 0x0806, &[]), 1);
        assert_eq!(run_ip(&egress, 0x0800, &[0x45; 8]), 1);
    }

    #[test]
    fn ip_program_shape_without_an_allow_list() {
        let a = access(&[("IPAddressDeny", "10.0.0.0/8")]);
        let p = ip_program(&a.ip_allow, &a.ip_deny, false, None);
        // 3 setup, IPv4 only: family jump, 6 load, bail jump, one prefix (3 + or), 9 to decide.
        assert_eq!(p.len(), 3 + 1 + 6 + 1 + 4 + 9);
        assert_eq!(run_ip(&p, 0x0800, &v4_header([1, 1, 1, 1], [10, 2, 3, 4])), 0);
        assert_eq!(run_ip(&p, 0x0800, &v4_header([1, 1, 1, 1], [11, 2, 3, 4])), 1);
        assert_eq!(run_ip(&p, 0x86dd, &v6_header("::1".parse().unwrap(), "::1".parse().unwrap())), 1);
        // `any` is a prefix of length 0: no compare, just the `or`.
        let a = access(&[("IPAddressDeny", "any")]);
        let p = ip_program(&a.ip_allow, &a.ip_deny, false, None);
        assert_eq!(run_ip(&p, 0x0800, &v4_header([1, 1, 1, 1], [11, 2, 3, 4])), 0);
    }

    #[test]
    fn ip_accounting_counts_what_passes_in_this_directions_entry() {
        let a = access(&[("IPAccounting", "yes")]);
        for (ingress, key) in [(true, 0), (false, 1)] {
            let p = ip_program(&a.ip_allow, &a.ip_deny, ingress, Some(7));
            let keep = p.iter().position(|i| *i == insn(MOV64_X, R9, R0, 0, 0)).expect("the verdict kept in r9");
            let restore = p.len() - 2;
            assert_eq!(p[restore], insn(MOV64_X, R0, R9, 0, 0));
            assert_eq!(p[restore + 1], insn(EXIT, 0, 0, 0, 0));
            // A dropped packet skips to the restore; so does a failed lookup.
            assert_eq!(p[keep + 1].code, JEQ32_K);
            assert_eq!(keep + 1 + 1 + p[keep + 1].off as usize, restore);
            let lookup = p.iter().position(|i| i.code == JEQ64_K).unwrap();
            assert_eq!(lookup + 1 + p[lookup].off as usize, restore);
            assert_eq!(p[keep + 2], insn(ST_MEM_W, R10, 0, -4, key), "ingress counts in 0, egress in 1");
            assert_eq!(p[keep + 3], insn(LD_IMM64, R1, BPF_PSEUDO_MAP_FD, 0, 7));
            assert_eq!(p.iter().filter(|i| i.code == ATOMIC_ADD64).count(), 2, "bytes and packets");
            // Without a deny list: no family blocks, every packet passes.
            assert!(!p.iter().any(|i| i.imm == BPF_FUNC_SKB_LOAD_BYTES && i.code == CALL));
            // The decision's jumps land on the accounting block, not past it.
            let decide = p.iter().position(|i| *i == insn(JNE32_K, R1, 0, 4, 0)).unwrap();
            assert_eq!(decide + 1 + 4, keep);
        }
    }

    /// The kernel's verifier, where this process may load programs: every
    /// program shape, a long allow list included (hundreds of compares).
    #[test]
    fn the_verifier_accepts_the_programs() {
        let (rules, _) =
            resolve_devices(&access(&[("DevicePolicy", "closed"), ("DeviceAllow", "char-rtc r")]), PROC_DEVICES);
        match load(BPF_PROG_TYPE_CGROUP_DEVICE, 0, &device_program(&rules), "aikore_test") {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS)) => {
                eprintln!("PRECONDITION: this process may not load BPF programs ({e})");
                return;
            }
            other => drop(other.expect("the device program")),
        }
        let mut allow = String::from("localhost 10.0.0.0/8 192.168.1.7");
        for i in 0..200 {
            allow.push_str(&format!(" fd00:{i:x}::/48"));
        }
        let a = access(&[("IPAddressDeny", "any"), ("IPAddressAllow", &allow), ("IPAccounting", "yes")]);
        let map = counters_map().expect("the counters map");
        for (ingress, attach) in [(true, BPF_CGROUP_INET_INGRESS), (false, BPF_CGROUP_INET_EGRESS)] {
            let p = ip_program(&a.ip_allow, &a.ip_deny, ingress, Some(map.as_raw_fd()));
            // A /48 is two words: 2 × (load, mask, compare) and the `or`.
            assert!(p.len() > 200 * 7, "{}", p.len());
            load(BPF_PROG_TYPE_CGROUP_SKB, attach, &p, "aikore_test").expect("the IP program");
        }
        assert_eq!(read_counter(&map, 1).unwrap(), Counter::default());
    }

    #[test]
    fn delegation_hands_the_files_over_and_names_missing_controllers() {
        let dir = tempfile::tempdir().unwrap();
        for f in DELEGATED_FILES {
            fs::write(dir.path().join(f), "").unwrap();
        }
        fs::write(dir.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        let me = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        let d = Delegate::Controllers(vec!["pids".into(), "cpuacct".into(), "bpf-devices".into()]);
        assert!(delegate(dir.path(), &d, Some(me)).is_empty());
        let d = Delegate::Controllers(vec!["memory".into(), "pids".into()]);
        let problems = delegate(dir.path(), &d, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("Delegate=: the memory controller(s) are not available"), "{problems:?}");
        assert!(delegate(dir.path(), &Delegate::No, Some((12345, 12345))).is_empty(), "no delegation, no chown");
    }
}
