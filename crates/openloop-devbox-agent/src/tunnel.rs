//! Tunnels: connect to a port inside the devbox and splice it with the server's connection.
//!
//! The server reaches a devbox's ports only through here, never over IP: a devbox may have no
//! network at all, and its loopback is its own.

use openloop_agent_proto::{kind, write_frame, AgentError};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long connecting to a port inside the devbox may take (a listener's backlog can be full).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn connect(server: &mut UnixStream, port: u16) -> Result<(), AgentError> {
    if port == 0 {
        return Err(AgentError {
            code: "invalid".into(),
            message: "port 0 is not a port; use 1 to 65535".into(),
        });
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(t) => t,
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::ConnectionRefused => "refused",
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout",
                _ => "io",
            };
            return Err(AgentError {
                code: code.into(),
                message: format!("connecting to port {port} inside the devbox: {e}"),
            });
        }
    };
    let _ = tcp.set_nodelay(true);
    // Both ends are ready before the server hears `OK` (the server sends nothing before it).
    let (server_r, tcp_w, server_w) = (server.try_clone()?, tcp.try_clone()?, server.try_clone()?);
    let upstream = std::thread::Builder::new()
        .spawn(move || pump(server_r, tcp_w))
        .map_err(|e| AgentError {
            code: "io".into(),
            message: format!("the devbox cannot start a thread for the tunnel: {e}"),
        })?;
    if write_frame(server, kind::OK, b"{}").is_err() {
        tcp.close_read();
        server.close_read();
    } else {
        pump(tcp, server_w);
    }
    let _ = upstream.join();
    Ok(())
}

/// Anything that can be half-closed.
trait HalfClose {
    fn close_write(&self);
    fn close_read(&self);
}

impl HalfClose for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
    fn close_read(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
}

impl HalfClose for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
    fn close_read(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
}

/// Copy `from` to `to` until `from` ends, then pass the end on. A failed write means the
/// other side is gone: stop reading too, so the opposite pump ends as well.
fn pump<R: Read + HalfClose, W: Write + HalfClose>(mut from: R, mut to: W) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            from.close_read();
            to.close_read();
            break;
        }
    }
    to.close_write();
}
