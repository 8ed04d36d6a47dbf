//! File operations inside the devbox.

use crate::resolve;
use openloop_agent_proto::{kind, read_frame, write_frame, AgentError, MAX_FRAME};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

pub fn read(stream: &mut UnixStream, path: &str) -> Result<(), AgentError> {
    let full = resolve(path)?;
    let mut file = File::open(&full).map_err(|e| AgentError::from_io(&e, path))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(AgentError {
            code: "is_directory".into(),
            message: format!("{path} is a directory, not a file"),
        });
    }
    let mut buf = vec![0u8; MAX_FRAME / 4];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| AgentError::from_io(&e, path))?;
        if n == 0 {
            break;
        }
        write_frame(stream, kind::DATA, &buf[..n])?;
    }
    write_frame(stream, kind::END, b"")?;
    Ok(())
}

pub fn write(stream: &mut UnixStream, path: &str, create_dirs: bool) -> Result<(), AgentError> {
    let full = resolve(path)?;
    if create_dirs {
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|e| AgentError::from_io(&e, path))?;
        }
    }
    let mut file = File::create(&full).map_err(|e| AgentError::from_io(&e, path))?;
    let mut written: u64 = 0;
    loop {
        match read_frame(stream)? {
            Some((kind::DATA, data)) => {
                file.write_all(&data)
                    .map_err(|e| AgentError::from_io(&e, path))?;
                written += data.len() as u64;
            }
            Some((kind::END, _)) => break,
            _ => {
                return Err(AgentError {
                    code: "invalid".into(),
                    message: "upload ended before its END frame".into(),
                })
            }
        }
    }
    file.flush().map_err(|e| AgentError::from_io(&e, path))?;
    let body = format!("{{\"bytes\":{written}}}");
    write_frame(stream, kind::OK, body.as_bytes())?;
    Ok(())
}

pub fn delete(stream: &mut UnixStream, path: &str) -> Result<(), AgentError> {
    let full = resolve(path)?;
    std::fs::remove_file(&full).map_err(|e| AgentError::from_io(&e, path))?;
    write_frame(stream, kind::OK, b"{}")?;
    Ok(())
}
