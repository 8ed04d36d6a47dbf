//! Client side of the agent protocol: one request per connection, each connection handed to
//! the agent over the devbox's control socket (never looked up by path).

use crate::SandboxError;
use openloop_agent_proto::{fdpass, kind, parse_header, AgentError, ExitStatus, Request};
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// A piece of a running command's output.
#[derive(Debug, Clone)]
pub enum OutputChunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// The collected result of a finished command.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True when output past `max_output` bytes per stream was dropped.
    pub truncated: bool,
}

/// Input for a running command's standard input (an exec started with `stdin: true`).
#[derive(Debug)]
pub enum StdinInput {
    Data(Vec<u8>),
    /// Close the command's standard input.
    Eof,
    /// SIGINT to the command's process group.
    Interrupt,
}

/// One piece of input and where to say it has been handed to the agent.
#[derive(Debug)]
pub struct StdinMessage {
    pub input: StdinInput,
    pub sent: oneshot::Sender<std::io::Result<()>>,
}

async fn write_frame(
    s: &mut (impl AsyncWrite + Unpin),
    k: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut header = [0u8; 5];
    header[0] = k;
    header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    s.write_all(&header).await?;
    s.write_all(payload).await
}

async fn read_frame(s: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match s.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (k, len) = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok(Some((k, payload)))
}

/// The server's end of a devbox's control socket.
#[derive(Debug)]
pub struct AgentLink {
    control: OwnedFd,
}

impl AgentLink {
    pub fn new(control: OwnedFd) -> AgentLink {
        AgentLink { control }
    }

    /// A fresh connection to the agent: one end of a new socket pair, the other end sent
    /// over the control socket.
    fn connect(&self) -> Result<UnixStream, SandboxError> {
        let (ours, theirs) = fdpass::stream_pair()?;
        // Never block the server on an agent that stopped reading (for example one that
        // was sent SIGSTOP from inside the devbox).
        fdpass::send_fd(
            self.control.as_raw_fd(),
            theirs.as_raw_fd(),
            libc::MSG_DONTWAIT,
        )
        .map_err(|e| SandboxError::NotRunning(format!("agent unreachable: {e}")))?;
        drop(theirs);
        let ours = std::os::unix::net::UnixStream::from(ours);
        ours.set_nonblocking(true)?;
        Ok(UnixStream::from_std(ours)?)
    }
}

async fn open(agent: &AgentLink, req: &Request) -> Result<UnixStream, SandboxError> {
    let mut s = agent.connect()?;
    let body = serde_json::to_vec(req).map_err(|e| SandboxError::Io(e.into()))?;
    write_frame(&mut s, kind::REQUEST, &body).await?;
    Ok(s)
}

fn agent_error(payload: &[u8]) -> SandboxError {
    match serde_json::from_slice::<AgentError>(payload) {
        Ok(e) => SandboxError::Agent {
            code: e.code,
            message: e.message,
        },
        Err(_) => SandboxError::Agent {
            code: "io".into(),
            message: String::from_utf8_lossy(payload).into_owned(),
        },
    }
}

fn unexpected_end() -> SandboxError {
    SandboxError::NotRunning("the agent closed the connection before the request finished".into())
}

/// Run a command; every chunk of output is also sent to `live` when given, and what
/// `stdin` receives goes to the command's standard input (the request must ask for it).
/// At most `max_output` bytes of each stream are kept in the result.
pub async fn exec(
    agent: &AgentLink,
    req: Request,
    max_output: usize,
    live: Option<mpsc::UnboundedSender<OutputChunk>>,
    stdin: Option<mpsc::Receiver<StdinMessage>>,
) -> Result<ExecOutput, SandboxError> {
    let (mut s, mut to_agent) = open(agent, &req).await?.into_split();
    // Input is written while output is read; the writer is only ever dropped when the command
    // has ended (its pending senders then learn it is gone).
    let writer = async move {
        if let Some(mut rx) = stdin {
            while let Some(msg) = rx.recv().await {
                let result = match msg.input {
                    StdinInput::Data(data) => {
                        let mut r = Ok(());
                        for chunk in data.chunks(openloop_agent_proto::MAX_FRAME / 2) {
                            r = write_frame(&mut to_agent, kind::DATA, chunk).await;
                            if r.is_err() {
                                break;
                            }
                        }
                        r
                    }
                    StdinInput::Eof => write_frame(&mut to_agent, kind::END, b"").await,
                    StdinInput::Interrupt => {
                        write_frame(
                            &mut to_agent,
                            kind::SIGNAL,
                            openloop_agent_proto::SIGNAL_INTERRUPT,
                        )
                        .await
                    }
                };
                let _ = msg.sent.send(result);
            }
        }
        // Keep the write half (closing it would end the command).
        std::future::pending::<()>().await;
        drop(to_agent);
    };
    let reader = read_exec(&mut s, max_output, live);
    tokio::select! {
        r = reader => r,
        _ = writer => unreachable!("the stdin writer never finishes"),
    }
}

async fn read_exec(
    s: &mut (impl AsyncRead + Unpin),
    max_output: usize,
    live: Option<mpsc::UnboundedSender<OutputChunk>>,
) -> Result<ExecOutput, SandboxError> {
    let mut out = ExecOutput {
        exit: ExitStatus {
            code: None,
            signal: None,
        },
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    loop {
        let Some((k, payload)) = read_frame(s).await? else {
            return Err(unexpected_end());
        };
        match k {
            kind::STDOUT | kind::STDERR => {
                let buf = if k == kind::STDOUT {
                    &mut out.stdout
                } else {
                    &mut out.stderr
                };
                let room = max_output.saturating_sub(buf.len());
                if payload.len() > room {
                    out.truncated = true;
                }
                buf.extend_from_slice(&payload[..payload.len().min(room)]);
                if let Some(tx) = &live {
                    let chunk = if k == kind::STDOUT {
                        OutputChunk::Stdout(payload)
                    } else {
                        OutputChunk::Stderr(payload)
                    };
                    let _ = tx.send(chunk);
                }
            }
            kind::EXIT => {
                out.exit = serde_json::from_slice(&payload)
                    .map_err(|e| SandboxError::Io(std::io::Error::other(e)))?;
                return Ok(out);
            }
            kind::ERROR => return Err(agent_error(&payload)),
            _ => return Err(unexpected_end()),
        }
    }
}

/// A connection to `127.0.0.1:port` inside the devbox, made by the agent: once this returns,
/// the stream carries raw bytes to and from that port. Nothing listening there is
/// `SandboxError::Agent` with code `refused`.
pub async fn connect_port(agent: &AgentLink, port: u16) -> Result<UnixStream, SandboxError> {
    let mut s = open(agent, &Request::Connect { port }).await?;
    finish(&mut s).await?;
    Ok(s)
}

/// Read a whole file, refusing files larger than `max_bytes`.
pub async fn read_file(
    agent: &AgentLink,
    path: &str,
    max_bytes: usize,
) -> Result<Vec<u8>, SandboxError> {
    let mut s = open(agent, &Request::ReadFile { path: path.into() }).await?;
    let mut data = Vec::new();
    loop {
        match read_frame(&mut s).await? {
            Some((kind::DATA, chunk)) => {
                if data.len() + chunk.len() > max_bytes {
                    return Err(SandboxError::Agent {
                        code: "too_large".into(),
                        message: format!("{path} is larger than the {max_bytes}-byte limit for one read; use download_file"),
                    });
                }
                data.extend_from_slice(&chunk);
            }
            Some((kind::END, _)) => return Ok(data),
            Some((kind::ERROR, p)) => return Err(agent_error(&p)),
            _ => return Err(unexpected_end()),
        }
    }
}

/// Create or replace a file with `contents`, creating parent directories.
pub async fn write_file(
    agent: &AgentLink,
    path: &str,
    contents: &[u8],
) -> Result<(), SandboxError> {
    // Through the chunked writer: the agent refuses a bad path as soon as it reads the
    // request, and the refusal must win over the broken pipe the rest of the body then meets.
    let mut writer = FileWriter::open(agent, path).await?;
    writer.send(contents).await?;
    writer.finish().await
}

pub async fn delete_file(agent: &AgentLink, path: &str) -> Result<(), SandboxError> {
    let mut s = open(agent, &Request::DeleteFile { path: path.into() }).await?;
    finish(&mut s).await
}

async fn finish(s: &mut UnixStream) -> Result<(), SandboxError> {
    match read_frame(s).await? {
        Some((kind::OK, _)) => Ok(()),
        Some((kind::ERROR, p)) => Err(agent_error(&p)),
        _ => Err(unexpected_end()),
    }
}

/// A file being written in chunks (uploads): `send` each chunk, then `finish`.
pub struct FileWriter {
    stream: UnixStream,
}

impl FileWriter {
    pub async fn open(agent: &AgentLink, path: &str) -> Result<FileWriter, SandboxError> {
        let req = Request::WriteFile {
            path: path.into(),
            create_dirs: true,
        };
        Ok(FileWriter {
            stream: open(agent, &req).await?,
        })
    }

    pub async fn send(&mut self, data: &[u8]) -> Result<(), SandboxError> {
        for chunk in data.chunks(openloop_agent_proto::MAX_FRAME / 2) {
            if let Err(e) = write_frame(&mut self.stream, kind::DATA, chunk).await {
                return Err(self.refusal(e.into()).await);
            }
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<(), SandboxError> {
        if let Err(e) = write_frame(&mut self.stream, kind::END, b"").await {
            return Err(self.refusal(e.into()).await);
        }
        finish(&mut self.stream).await
    }

    /// A write failed: the agent refuses a file it cannot write (a bad path, a directory, …)
    /// by sending its error and closing, so the writer sees a broken pipe. Report the
    /// agent's error when it sent one; otherwise the connection really was lost.
    async fn refusal(&mut self, lost: SandboxError) -> SandboxError {
        let reply = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            read_frame(&mut self.stream),
        )
        .await;
        match reply {
            Ok(Ok(Some((kind::ERROR, p)))) => agent_error(&p),
            _ => lost,
        }
    }
}

/// A file being read in chunks (downloads).
pub struct FileReader {
    stream: UnixStream,
    first: Option<Vec<u8>>,
    done: bool,
}

impl FileReader {
    /// Open the file; errors such as "not found" surface here, before any data.
    pub async fn open(agent: &AgentLink, path: &str) -> Result<FileReader, SandboxError> {
        let mut stream = open(agent, &Request::ReadFile { path: path.into() }).await?;
        let (first, done) = match read_frame(&mut stream).await? {
            Some((kind::DATA, chunk)) => (Some(chunk), false),
            Some((kind::END, _)) => (None, true),
            Some((kind::ERROR, p)) => return Err(agent_error(&p)),
            _ => return Err(unexpected_end()),
        };
        Ok(FileReader {
            stream,
            first,
            done,
        })
    }

    /// The next chunk, or `None` at the end of the file.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, SandboxError> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        if self.done {
            return Ok(None);
        }
        match read_frame(&mut self.stream).await? {
            Some((kind::DATA, chunk)) => Ok(Some(chunk)),
            Some((kind::END, _)) => {
                self.done = true;
                Ok(None)
            }
            Some((kind::ERROR, p)) => Err(agent_error(&p)),
            _ => Err(unexpected_end()),
        }
    }
}
