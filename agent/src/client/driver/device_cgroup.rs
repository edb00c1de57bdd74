//! The device allow list of an `exec` task, as a cgroup v2 device
//! controller: a `BPF_PROG_TYPE_CGROUP_DEVICE` program, generated here from
//! [`DeviceRule`]s (plain eBPF instructions, as runc and crun emit them; no
//! compiled BPF object, no BPF toolchain), loaded and attached to the
//! task's cgroup by [`super::bpf`].
//!
//! The kernel runs the program on every open of a device node and every
//! `mknod` by a process in the cgroup, with the device's type, major,
//! minor and the access asked for; it answers 1 (allow) or 0 (deny, the
//! open fails with `EPERM`). What a task may use: the devices every
//! container gets ([`standard_rules`]) and the device nodes of its assigned
//! GPUs; everything else, `mknod` included, is denied.

use std::path::PathBuf;

/// Most rules one program holds: the standard devices, a node's GPUs
/// (at most 64) and their MIG capabilities, with ample room; a bound on
/// the program's length (6 instructions a rule) far below the kernel's.
pub const DEVICE_RULES_MAX: usize = 512;

/// `BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`: the device type in the low
/// 16 bits of the context's `access_type`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// `BPF_DEVCG_ACC_*`: the access in the high 16 bits of `access_type`.
pub const ACCESS_MKNOD: u32 = 1;
pub const ACCESS_READ: u32 = 2;
pub const ACCESS_WRITE: u32 = 4;
const ACCESS_ALL: u32 = ACCESS_MKNOD | ACCESS_READ | ACCESS_WRITE;

/// The device's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// One allowed device (or range, with a wildcard major or minor) and the
/// accesses allowed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    /// `None`: any major.
    pub major: Option<u32>,
    /// `None`: any minor.
    pub minor: Option<u32>,
    /// `ACCESS_*` bits.
    pub access: u32,
    /// The node's path, for messages.
    pub path: PathBuf,
}

impl DeviceRule {
    /// Read and write of one character device.
    pub fn char_rw(path: impl Into<PathBuf>, major: u32, minor: Option<u32>) -> DeviceRule {
        DeviceRule {
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access: ACCESS_READ | ACCESS_WRITE,
            path: path.into(),
        }
    }
}

/// `rules` as cgroup v1 `devices.allow` lines (`c 195:0 rw`, `*` for a
/// wildcard major or minor; `m` for mknod), for a machine without a
/// cgroup2 mount: the task's `devices` cgroup first denies everything
/// (`a` into `devices.deny`), then allows each line.
pub fn v1_allow_lines(rules: &[DeviceRule]) -> Vec<String> {
    rules
        .iter()
        .map(|rule| {
            let kind = match rule.kind {
                DeviceKind::Char => 'c',
                DeviceKind::Block => 'b',
            };
            let number = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
            let mut access = String::new();
            for (bit, letter) in [(ACCESS_READ, 'r'), (ACCESS_WRITE, 'w'), (ACCESS_MKNOD, 'm')] {
                if rule.access & bit != 0 {
                    access.push(letter);
                }
            }
            format!("{kind} {}:{} {access}", number(rule.major), number(rule.minor))
        })
        .collect()
}

/// The devices every container gets (runc's default list, less its `mknod`
/// of any device and `/dev/net/tun`): `null`, `zero`, `full`, `random`,
/// `urandom`, `tty`, `console`, `ptmx` and the pseudo-terminals `pts/*`,
/// read and write.
pub fn standard_rules() -> Vec<DeviceRule> {
    vec![
        DeviceRule::char_rw("/dev/null", 1, Some(3)),
        DeviceRule::char_rw("/dev/zero", 1, Some(5)),
        DeviceRule::char_rw("/dev/full", 1, Some(7)),
        DeviceRule::char_rw("/dev/random", 1, Some(8)),
        DeviceRule::char_rw("/dev/urandom", 1, Some(9)),
        DeviceRule::char_rw("/dev/tty", 5, Some(0)),
        DeviceRule::char_rw("/dev/console", 5, Some(1)),
        DeviceRule::char_rw("/dev/ptmx", 5, Some(2)),
        // Unix98 pseudo-terminal slaves: major 136 to 143.
        DeviceRule::char_rw("/dev/pts/*", 136, None),
    ]
}

/// One eBPF instruction, in the kernel's `struct bpf_insn` layout: opcode,
/// destination register (low nibble) and source register (high nibble),
/// offset, immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes: class | operation | source (K: immediate, X: register).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers: R0 the result, R1 the context (`struct bpf_cgroup_dev_ctx`:
// u32 access_type, u32 major, u32 minor), R2 to R5 its fields.
const R0: u8 = 0;
const R1: u8 = 1;
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// A device number as an immediate; majors (12 bits) and minors (20 bits)
/// always fit.
fn imm(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Why rules cannot become a program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("{0} device rules, more than the limit of {DEVICE_RULES_MAX}")]
    TooManyRules(usize),
}

/// The program allowing exactly `rules` and denying everything else.
///
/// It loads the context's fields into R2 (type), R3 (access), R4 (major),
/// R5 (minor); each rule is a block of tests, each jumping past the block
/// when it fails, ending in `return 1`; after the last block, `return 0`.
/// An access test passes when the access asked for is a subset of the
/// rule's (`(access & allowed) == access`).
pub fn program(rules: &[DeviceRule]) -> Result<Vec<Insn>, ProgramError> {
    if rules.len() > DEVICE_RULES_MAX {
        return Err(ProgramError::TooManyRules(rules.len()));
    }
    let mut out = vec![
        insn(LDX_MEM_W, R_TYPE, R1, 0, 0),
        insn(ALU32_AND_K, R_TYPE, 0, 0, 0xffff),
        insn(LDX_MEM_W, R_ACCESS, R1, 0, 0),
        insn(ALU32_RSH_K, R_ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, R_MAJOR, R1, 4, 0),
        insn(LDX_MEM_W, R_MINOR, R1, 8, 0),
    ];
    for rule in rules {
        // Jumps hold offset 0 until the block's length is known.
        let mut block = Vec::new();
        let kind = match rule.kind {
            DeviceKind::Char => DEV_CHAR,
            DeviceKind::Block => DEV_BLOCK,
        };
        block.push(insn(JMP_JNE_K, R_TYPE, 0, 0, kind));
        let access = rule.access & ACCESS_ALL;
        if access != ACCESS_ALL {
            block.push(insn(ALU32_MOV_X, R1, R_ACCESS, 0, 0));
            block.push(insn(ALU32_AND_K, R1, 0, 0, imm(access)));
            block.push(insn(JMP_JNE_X, R1, R_ACCESS, 0, 0));
        }
        if let Some(major) = rule.major {
            block.push(insn(JMP_JNE_K, R_MAJOR, 0, 0, imm(major)));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JMP_JNE_K, R_MINOR, 0, 0, imm(minor)));
        }
        block.push(insn(ALU64_MOV_K, R0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (index, one) in block.iter_mut().enumerate() {
            if one.code == JMP_JNE_K || one.code == JMP_JNE_X {
                // Relative to the next instruction: past the block's end.
                one.off = i16::try_from(len - index - 1).unwrap_or(i16::MAX);
            }
        }
        out.extend(block);
    }
    out.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    out.push(insn(JMP_EXIT, 0, 0, 0, 0));
    Ok(out)
}

/// Runs `program` on one access as the kernel would (a small interpreter
/// of the instructions [`program`] emits), for tests: whether it allows
/// `access` to the `kind` device `major:minor`.
pub fn evaluate(program: &[Insn], kind: DeviceKind, major: u32, minor: u32, access: u32) -> Option<bool> {
    let type_bits: u64 = match kind {
        DeviceKind::Char => DEV_CHAR as u64,
        DeviceKind::Block => DEV_BLOCK as u64,
    };
    let ctx = [(access as u64) << 16 | type_bits, u64::from(major), u64::from(minor)];
    let mut regs = [0u64; 11];
    let mut pc = 0usize;
    // Every jump goes forward, so a program ends within its length.
    for _ in 0..=program.len() {
        let one = program.get(pc)?;
        let (dst, src) = (usize::from(one.regs & 0xf), usize::from(one.regs >> 4));
        let immediate = i64::from(one.imm) as u64;
        pc += 1;
        match one.code {
            LDX_MEM_W => regs[dst] = ctx[usize::try_from(one.off).ok()? / 4] & 0xffff_ffff,
            ALU32_AND_K => regs[dst] = (regs[dst] & immediate) & 0xffff_ffff,
            ALU32_RSH_K => regs[dst] = (regs[dst] & 0xffff_ffff) >> immediate,
            ALU32_MOV_X => regs[dst] = regs[src] & 0xffff_ffff,
            ALU64_MOV_K => regs[dst] = immediate,
            JMP_JNE_K | JMP_JNE_X => {
                let other = if one.code == JMP_JNE_K { immediate } else { regs[src] };
                if regs[dst] != other {
                    pc += usize::try_from(one.off).ok()?;
                }
            }
            JMP_EXIT => return Some(regs[0] == 1),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(program: &[Insn], major: u32, minor: u32, access: u32) -> bool {
        evaluate(program, DeviceKind::Char, major, minor, access).expect("program runs to exit")
    }

    #[test]
    fn v1_lines_name_each_rule_with_wildcards_and_access() {
        let rules = vec![
            DeviceRule::char_rw("/dev/null", 1, Some(3)),
            DeviceRule::char_rw("/dev/pts/*", 136, None),
            DeviceRule { kind: DeviceKind::Block, major: None, minor: None, access: ACCESS_MKNOD, path: "b".into() },
            DeviceRule {
                kind: DeviceKind::Char,
                major: Some(195),
                minor: Some(255),
                access: ACCESS_READ,
                path: "/dev/nvidiactl".into(),
            },
        ];
        assert_eq!(v1_allow_lines(&rules), ["c 1:3 rw", "c 136:* rw", "b *:* m", "c 195:255 r"]);
    }

    #[test]
    fn standard_devices_are_allowed_and_everything_else_denied() {
        let prog = program(&standard_rules()).unwrap();
        let rw = ACCESS_READ | ACCESS_WRITE;
        assert!(allows(&prog, 1, 3, rw), "/dev/null");
        assert!(allows(&prog, 1, 9, ACCESS_READ), "/dev/urandom");
        assert!(allows(&prog, 136, 7, rw), "/dev/pts/7");
        assert!(!allows(&prog, 1, 11, ACCESS_READ), "/dev/kmsg");
        assert!(!allows(&prog, 1, 3, ACCESS_MKNOD), "no mknod, even of /dev/null");
        assert!(!allows(&prog, 1, 3, ACCESS_MKNOD | ACCESS_READ));
        assert!(!allows(&prog, 195, 0, rw), "no GPU");
        assert_eq!(evaluate(&prog, DeviceKind::Block, 1, 3, ACCESS_READ), Some(false), "a block device 1:3");
    }

    #[test]
    fn gpu_rules_allow_exactly_their_nodes() {
        let mut rules = standard_rules();
        rules.push(DeviceRule::char_rw("/dev/nvidia2", 195, Some(2)));
        rules.push(DeviceRule::char_rw("/dev/nvidiactl", 195, Some(255)));
        let prog = program(&rules).unwrap();
        assert!(allows(&prog, 195, 2, ACCESS_READ | ACCESS_WRITE));
        assert!(allows(&prog, 195, 255, ACCESS_READ));
        assert!(!allows(&prog, 195, 1, ACCESS_READ));
        assert!(!allows(&prog, 195, 3, ACCESS_READ));
    }

    #[test]
    fn program_shape() {
        // Prologue, one block (type, access ×3, major, minor, return 1), epilogue.
        let prog = program(&[DeviceRule::char_rw("/dev/null", 1, Some(3))]).unwrap();
        assert_eq!(prog.len(), 6 + 8 + 2);
        assert_eq!(prog[6], Insn { code: JMP_JNE_K, regs: R_TYPE, off: 7, imm: DEV_CHAR });
        assert_eq!(prog[9], Insn { code: JMP_JNE_X, regs: R1 | (R_ACCESS << 4), off: 4, imm: 0 });
        assert_eq!(prog[12], Insn { code: ALU64_MOV_K, regs: R0, off: 0, imm: 1 });
        // A rule allowing every access and any minor needs no access or minor test.
        let any = DeviceRule { access: ACCESS_ALL, minor: None, ..DeviceRule::char_rw("/dev/x", 10, None) };
        assert_eq!(program(&[any]).unwrap().len(), 6 + 4 + 2);
        // Nothing allowed: deny all.
        let none = program(&[]).unwrap();
        assert!(!allows(&none, 1, 3, ACCESS_READ));
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn too_many_rules_are_refused() {
        let rules = vec![DeviceRule::char_rw("/dev/null", 1, Some(3)); DEVICE_RULES_MAX + 1];
        assert_eq!(program(&rules), Err(ProgramError::TooManyRules(DEVICE_RULES_MAX + 1)));
    }
}
