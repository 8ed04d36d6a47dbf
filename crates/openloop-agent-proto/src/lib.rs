//! The wire protocol between the Openloop server and the agent that runs as the
//! first process inside every devbox.
//!
//! One request per Unix-socket connection. Every message is a frame:
//! `[kind: u8][len: u32 big-endian][payload: len bytes]`. The first frame from the
//! server is a [`Request`] encoded as JSON in a `REQUEST` frame; file uploads follow
//! it with `DATA` frames and an `END` frame. The agent answers with frames of the
//! kinds below. Output from user commands travels only inside `STDOUT`/`STDERR`
//! payloads, so it can never be mistaken for protocol.
//!
//! Two requests change the connection after their first answer:
//! - an `Exec` with `stdin: true` reads the server's `DATA` frames into the command's
//!   standard input, `END` closes it and `SIGNAL` (payload `INTERRUPT`) interrupts the
//!   command's process group;
//! - a `Connect` answers `OK` once it has connected to `127.0.0.1:port` inside the devbox
//!   (or `ERROR`), and from then on the connection carries raw bytes both ways, spliced with
//!   that TCP connection (tunnels).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// Largest payload a single frame may carry.
pub const MAX_FRAME: usize = 1 << 20;

pub mod kind {
    pub const REQUEST: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// JSON [`super::ExitStatus`]; last frame of an exec.
    pub const EXIT: u8 = 3;
    pub const DATA: u8 = 4;
    pub const END: u8 = 5;
    /// JSON [`super::AgentError`]; last frame of a failed request.
    pub const ERROR: u8 = 6;
    /// JSON `{}` or a small result; last frame of a successful file request.
    pub const OK: u8 = 7;
    /// Server to agent, on an exec with stdin: a signal for the command (`INTERRUPT`).
    pub const SIGNAL: u8 = 8;
}

/// The `SIGNAL` payload that sends SIGINT to the command's process group.
pub const SIGNAL_INTERRUPT: &[u8] = b"INTERRUPT";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run `command` with `/bin/bash -c`, streaming its output.
    Exec {
        command: String,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        cwd: Option<String>,
        /// Give the command a pipe as standard input, fed by the server's `DATA` frames
        /// (closed by `END`); otherwise its standard input is `/dev/null`.
        #[serde(default)]
        stdin: bool,
    },
    /// Connect to `127.0.0.1:port` inside the devbox, answer `OK` (or `ERROR` with code
    /// `refused` when nothing listens), then splice the connection with it.
    Connect {
        port: u16,
    },
    /// Stream the contents of a file back in DATA frames, then END.
    ReadFile {
        path: String,
    },
    /// Replace (or create) a file with the DATA frames that follow, up to END.
    WriteFile {
        path: String,
        #[serde(default)]
        create_dirs: bool,
    },
    DeleteFile {
        path: String,
    },
    Ping,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code when the command exited normally.
    pub code: Option<i32>,
    /// Signal number when the command was killed.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// Shell-style status: the code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => -1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentError {
    /// `not_found`, `permission_denied`, `is_directory`, `invalid` or `io`.
    pub code: String,
    pub message: String,
}

impl AgentError {
    pub fn from_io(err: &io::Error, path: &str) -> Self {
        let code = match err.kind() {
            io::ErrorKind::NotFound => "not_found",
            io::ErrorKind::PermissionDenied => "permission_denied",
            io::ErrorKind::IsADirectory => "is_directory",
            io::ErrorKind::InvalidInput => "invalid",
            _ => "io",
        };
        AgentError {
            code: code.to_string(),
            message: format!("{path}: {err}"),
        }
    }
}

impl From<io::Error> for AgentError {
    fn from(e: io::Error) -> Self {
        AgentError {
            code: "io".into(),
            message: e.to_string(),
        }
    }
}

/// Write one frame (blocking).
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 5];
    header[0] = kind;
    header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    w.write_all(&header)?;
    w.write_all(payload)
}

/// Read one frame (blocking). `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// Split a frame header into kind and payload length, refusing oversized frames.
pub fn parse_header(header: &[u8; 5]) -> io::Result<(u8, usize)> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    Ok((header[0], len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, kind::STDOUT, b"hello").unwrap();
        write_frame(&mut buf, kind::END, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((kind::STDOUT, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some((kind::END, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut header = [kind::DATA, 0, 0, 0, 0];
        header[1..].copy_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(parse_header(&header).is_err());
    }

    #[test]
    fn request_json_shape() {
        let r: Request = serde_json::from_str(r#"{"op":"exec","command":"true"}"#).unwrap();
        assert!(matches!(r, Request::Exec { ref command, .. } if command == "true"));
        assert_eq!(
            ExitStatus {
                code: None,
                signal: Some(9)
            }
            .shell_code(),
            137
        );
    }
}

/// Handing connections to the agent without any path in the file system.
///
/// The agent inherits one end of a `SOCK_SEQPACKET` pair (the control socket) as a file
/// descriptor. For every request the server makes a fresh connected socket pair and sends
/// one end over the control socket (`SCM_RIGHTS`); the agent serves the request on it. No
/// socket is ever looked up by path, so nothing inside a devbox can redirect the server.
pub mod fdpass {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    /// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec.
    pub fn control_pair() -> io::Result<(OwnedFd, OwnedFd)> {
        pair(libc::SOCK_SEQPACKET)
    }

    /// A connected `SOCK_STREAM` pair, both ends close-on-exec.
    pub fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
        pair(libc::SOCK_STREAM)
    }

    fn pair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                kind | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    const SPACE: usize = 64;

    /// The buffers of a one-byte message with room for one control message.
    struct Message {
        byte: [u8; 1],
        iov: libc::iovec,
        space: [u64; SPACE / 8],
        msg: libc::msghdr,
    }

    impl Message {
        /// Boxed, so the pointers between its parts stay valid.
        fn new(control_len: usize) -> Box<Message> {
            let mut m = Box::new(Message {
                byte: [1],
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 1,
                },
                space: [0; SPACE / 8],
                msg: unsafe { std::mem::zeroed() },
            });
            m.iov.iov_base = m.byte.as_mut_ptr() as *mut libc::c_void;
            m.msg.msg_iov = &mut m.iov;
            m.msg.msg_iovlen = 1;
            m.msg.msg_control = m.space.as_mut_ptr() as *mut libc::c_void;
            m.msg.msg_controllen = control_len;
            m
        }
    }

    /// Send `fd` as one message on `control` (with `flags`, e.g. `MSG_DONTWAIT`).
    pub fn send_fd(control: RawFd, fd: RawFd, flags: libc::c_int) -> io::Result<()> {
        let m =
            Message::new(unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize);
        let msg = &m.msg;
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        }
        loop {
            let n = unsafe { libc::sendmsg(control, msg, flags | libc::MSG_NOSIGNAL) };
            if n == 1 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receive one descriptor from `control` (close-on-exec). `Ok(None)` when the peer
    /// closed the control socket; messages without a descriptor are skipped.
    pub fn recv_fd(control: RawFd) -> io::Result<Option<OwnedFd>> {
        loop {
            let mut m = Message::new(SPACE);
            let msg = &mut m.msg;
            let n = unsafe { libc::recvmsg(control, msg, libc::MSG_CMSG_CLOEXEC) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Ok(None);
            }
            let mut got = None;
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                    {
                        let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                        let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize)
                            / std::mem::size_of::<RawFd>();
                        for i in 0..count {
                            let fd = std::ptr::read_unaligned(data.add(i));
                            if got.is_none() {
                                got = Some(OwnedFd::from_raw_fd(fd));
                            } else {
                                libc::close(fd);
                            }
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(msg, cmsg);
                }
            }
            if got.is_some() {
                return Ok(got);
            }
        }
    }
}
