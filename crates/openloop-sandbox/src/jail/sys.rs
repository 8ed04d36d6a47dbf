//! The system-call helpers every part of the jail shares.

use std::ffi::CString;
use std::io::{Error, Result};
use std::path::Path;

pub(super) fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        let e = Error::last_os_error();
        Err(Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

pub(super) fn cstr(p: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(p.as_ref().to_vec()).map_err(|_| Error::other("a path contains a NUL byte"))
}

pub(super) fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
}
