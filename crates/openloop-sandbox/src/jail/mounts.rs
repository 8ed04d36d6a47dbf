//! Each step of the jail's root carried out in the set-up root: directories, files, links,
//! bind and overlay mounts, tmpfs, `/proc`, written files; and the `mkdir` and `mount`
//! wrappers they use.

use super::plan::Step;
use super::sys::{check, cstr};
use std::ffi::{CStr, CString};
use std::io::{Error, Result};

/// Carry out one step of assembling the root; `sources` names the bind sources.
pub(super) fn apply(step: &Step, sources: &[CString]) -> Result<()> {
    {
        match step {
            Step::Dir(p) => mkdir(p),
            Step::File(p) => {
                let fd = unsafe {
                    libc::open(
                        p.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    )
                };
                check(fd, &format!("creating {p:?}"))?;
                unsafe { libc::close(fd) };
                Ok(())
            }
            Step::Symlink { target, at } => {
                let rc = unsafe { libc::symlink(target.as_ptr(), at.as_ptr()) };
                if rc < 0 && Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                    return check(rc, &format!("symlink {at:?}"));
                }
                Ok(())
            }
            Step::Bind {
                src,
                dst,
                writable,
                device,
            } => {
                mount(
                    Some(&sources[*src]),
                    dst,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )?;
                if *device {
                    return Ok(());
                }
                let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                if !writable {
                    flags |= libc::MS_RDONLY;
                }
                flags |= locked_flags(dst);
                mount(None, dst, None, flags, None)
            }
            Step::Overlay { src, dst } => {
                let opts = cstr(format!(
                    "lowerdir={}:/empty",
                    sources[*src].to_string_lossy()
                ))?;
                mount(
                    Some(c"overlay"),
                    dst,
                    Some(c"overlay"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                    Some(&opts),
                )
            }
            Step::Cover {
                name,
                contents,
                dst,
            } => {
                apply(
                    &Step::Write {
                        dst: name.clone(),
                        contents: contents.clone(),
                    },
                    sources,
                )?;
                mount(Some(name), dst, None, libc::MS_BIND, None)?;
                mount(
                    None,
                    dst,
                    None,
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    None,
                )
            }
            Step::Tmpfs { dst, opts } => mount(
                Some(c"tmpfs"),
                dst,
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(opts),
            ),
            Step::Proc(dst) => mount(
                Some(c"proc"),
                dst,
                Some(c"proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            ),
            Step::Write { dst, contents } => {
                let fd = unsafe {
                    libc::open(
                        dst.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
                        0o444,
                    )
                };
                check(fd, &format!("creating {dst:?}"))?;
                let mut off = 0;
                while off < contents.len() {
                    let n = unsafe {
                        libc::write(
                            fd,
                            contents[off..].as_ptr() as *const libc::c_void,
                            contents.len() - off,
                        )
                    };
                    if n <= 0 {
                        unsafe { libc::close(fd) };
                        return check(-1, &format!("writing {dst:?}"));
                    }
                    off += n as usize;
                }
                unsafe { libc::close(fd) };
                Ok(())
            }
        }
    }
}

pub(super) fn mkdir(p: &CStr) -> Result<()> {
    let rc = unsafe { libc::mkdir(p.as_ptr(), 0o755) };
    if rc < 0 && Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return check(rc, &format!("mkdir {p:?}"));
    }
    Ok(())
}

pub(super) fn mount(
    src: Option<&CStr>,
    dst: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<()> {
    let rc = unsafe {
        libc::mount(
            src.map_or(std::ptr::null(), |s| s.as_ptr()),
            dst.as_ptr(),
            fstype.map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    };
    check(rc, &format!("mount {dst:?}"))
}

/// Flags a remount inside a user namespace must keep (the kernel locks them).
fn locked_flags(p: &CStr) -> libc::c_ulong {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_RDONLY, libc::MS_RDONLY),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    flags
}
