//! Host: hostname, kernel (uname) and OS (`/etc/os-release`).

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub hostname: String,
    /// Go's `GOOS`: `linux`.
    pub kernel_name: String,
    /// `uname -r`.
    pub kernel_version: String,
    /// `uname -m`: `x86_64`.
    pub kernel_arch: String,
    /// os-release `ID`: `ubuntu`, `debian`.
    pub os_name: Option<String>,
    /// os-release `VERSION_ID`: `22.04`.
    pub os_version: Option<String>,
}

/// `ID` and `VERSION_ID` of an os-release file.
pub fn parse_os_release(text: &str) -> (Option<String>, Option<String>) {
    let mut id = None;
    let mut version = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else { continue };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
        match key.trim() {
            "ID" if !value.is_empty() => id = Some(value),
            "VERSION_ID" if !value.is_empty() => version = Some(value),
            _ => {}
        }
    }
    (id, version)
}

/// Read this machine's host facts.
pub fn read(root: &Path) -> HostInfo {
    let uname = rustix::system::uname();
    let text = |s: &std::ffi::CStr| s.to_string_lossy().into_owned();
    // /etc/os-release, or the path it links to on systemd machines.
    let os_release = std::fs::read_to_string(root.join("etc/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))
        .unwrap_or_default();
    let (os_name, os_version) = parse_os_release(&os_release);
    HostInfo {
        hostname: text(uname.nodename()),
        kernel_name: std::env::consts::OS.to_owned(),
        kernel_version: text(uname.release()),
        kernel_arch: text(uname.machine()),
        os_name,
        os_version,
    }
}
