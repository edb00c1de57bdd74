//! The `bpf(2)` calls that put a device program on a cgroup: load it
//! (`BPF_PROG_LOAD`, type `BPF_PROG_TYPE_CGROUP_DEVICE`) and attach it to
//! the cgroup's directory (`BPF_PROG_ATTACH`, `BPF_CGROUP_DEVICE`, with
//! `BPF_F_ALLOW_MULTI` so programs of parent cgroups, such as a container
//! runtime's, keep applying: the kernel allows an access only when every
//! program on the way up does).
//!
//! The attachment holds the program: both file descriptors are closed on
//! return, and the program lives until the cgroup is removed.
//!
//! The workspace denies `unsafe`; this module is the agent's one exception,
//! for the syscall and the `union bpf_attr` layouts it passes, which the
//! `libc` crate does not define.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::device_cgroup::Insn;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// The verifier's log, returned in the error when it refuses a program.
const VERIFIER_LOG_BYTES: usize = 64 * 1024;
const LICENSE: &str = "MPL-2.0";
const PROGRAM_NAME: &[u8] = b"caravan_devices";

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`; the
/// kernel reads the rest as zero.
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

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialized `repr(C)` value laid out as the
    // kernel's `union bpf_attr` prefix for `command`, and its size is passed
    // with it; every pointer inside it points at memory that outlives the call.
    let result =
        unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut T as *mut libc::c_void, size_of::<T>() as u32) };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

/// Loads `program` as a cgroup device program; the error carries the
/// verifier's log when it refused the program.
fn load(program: &[Insn]) -> io::Result<OwnedFd> {
    let license = CString::new(LICENSE).map_err(io::Error::other)?;
    let mut log = vec![0u8; VERIFIER_LOG_BYTES];
    let mut name = [0u8; 16];
    name[..PROGRAM_NAME.len()].copy_from_slice(PROGRAM_NAME);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(program.len()).map_err(io::Error::other)?,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: VERIFIER_LOG_BYTES as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(err) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let text = text.trim();
            if text.is_empty() { Err(err) } else { Err(io::Error::new(err.kind(), format!("{err}; verifier: {text}"))) }
        }
    }
}

/// Loads `program` and attaches it to the cgroup v2 directory `cgroup`.
pub(crate) fn attach_device_program(cgroup: &Path, program: &[Insn]) -> io::Result<()> {
    let prog = load(program).map_err(|err| io::Error::new(err.kind(), format!("BPF_PROG_LOAD: {err}")))?;
    let dir = std::fs::File::open(cgroup)
        .map_err(|err| io::Error::new(err.kind(), format!("open {}: {err}", cgroup.display())))?;
    let mut attr = ProgAttachAttr {
        target_fd: u32::try_from(dir.as_raw_fd()).map_err(io::Error::other)?,
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).map_err(io::Error::other)?,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
        .map(|_| ())
        .map_err(|err| io::Error::new(err.kind(), format!("BPF_PROG_ATTACH to {}: {err}", cgroup.display())))
}
