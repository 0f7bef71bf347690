//! One TCP connection to a memcached server: write a pipelined request, read its responses
//! under one deadline, with bounded buffers. A connection that failed in any way is dropped,
//! never reused (its stream may be out of step).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::codec::{self, Code, Header, MAX_LINE, ParseError};

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The deadline passed (connect, write or read).
    Timeout,
    /// The connection failed or was closed.
    Io(io::Error),
    /// The server answered something this client does not accept.
    Protocol(ParseError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Protocol(e) => write!(f, "{e}"),
        }
    }
}

fn io_failure(e: io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Io(e),
    }
}

/// One response: its header and, for `VA`, the data block.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) header: Header,
    pub(crate) value: Option<Vec<u8>>,
}

/// A connected socket and its read buffer.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Read buffer size (responses with larger values grow a separate vector, bounded by the
/// caller's `max_value`).
const BUF: usize = 16 * 1024;

impl Conn {
    /// Connects to `addr` (`host:port`; names are resolved here, every address is tried) by
    /// `deadline`.
    pub(crate) fn connect(addr: &str, deadline: Instant) -> Result<Conn, Failure> {
        let addrs = addr.to_socket_addrs().map_err(Failure::Io)?;
        let mut last = Failure::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        ));
        for a in addrs {
            let Some(left) = remaining(deadline) else {
                return Err(Failure::Timeout);
            };
            match TcpStream::connect_timeout(&a, left) {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(Failure::Io)?;
                    return Ok(Conn {
                        stream,
                        buf: vec![0; BUF],
                        start: 0,
                        end: 0,
                    });
                }
                Err(e) => last = io_failure(e),
            }
        }
        Err(last)
    }

    /// Writes `request` (one or more commands) and reads `responses` answers by `deadline`.
    /// A data block longer than `max_value` is refused (and the connection must be dropped).
    pub(crate) fn exchange(
        &mut self,
        request: &[u8],
        responses: usize,
        deadline: Instant,
        max_value: usize,
    ) -> Result<Vec<Response>, Failure> {
        if self.start != self.end {
            // Bytes nobody asked for: the stream is out of step.
            return Err(Failure::Protocol(ParseError::Garbage(
                "unsolicited data".into(),
            )));
        }
        self.start = 0;
        self.end = 0;
        let mut written = 0;
        while written < request.len() {
            let left = remaining(deadline).ok_or(Failure::Timeout)?;
            self.stream
                .set_write_timeout(Some(left))
                .map_err(Failure::Io)?;
            match self.stream.write(&request[written..]) {
                Ok(0) => return Err(Failure::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure(e)),
            }
        }
        let mut out = Vec::with_capacity(responses);
        for _ in 0..responses {
            let (a, b) = self.line(deadline)?;
            let header =
                codec::parse_header(&self.buf[a..b], max_value).map_err(Failure::Protocol)?;
            let value = match header.code {
                Some(Code::Value(len)) => Some(self.block(len, deadline)?),
                _ => None,
            };
            out.push(Response { header, value });
        }
        Ok(out)
    }

    /// Reads more bytes into the buffer by `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), Failure> {
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            let left = remaining(deadline).ok_or(Failure::Timeout)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(Failure::Io)?;
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure(e)),
            }
        }
    }

    /// The bounds in the buffer of the next header line, without its CRLF. Lines longer than
    /// [`MAX_LINE`] are refused.
    fn line(&mut self, deadline: Instant) -> Result<(usize, usize), Failure> {
        let mut scanned = 0;
        loop {
            let window = &self.buf[self.start + scanned..self.end];
            if let Some(i) = window.iter().position(|b| *b == b'\n') {
                let nl = self.start + scanned + i;
                let line_start = self.start;
                self.start = nl + 1;
                let line_end = if nl > line_start && self.buf[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                return Ok((line_start, line_end));
            }
            scanned = self.end - self.start;
            if scanned > MAX_LINE {
                return Err(Failure::Protocol(ParseError::Garbage(
                    "response line too long".into(),
                )));
            }
            if self.end == self.buf.len() && self.start == 0 {
                return Err(Failure::Protocol(ParseError::Garbage(
                    "response line too long".into(),
                )));
            }
            self.fill(deadline)?;
        }
    }

    /// A data block of `len` bytes and its CRLF.
    fn block(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>, Failure> {
        let mut out = Vec::with_capacity(len);
        let total = len + 2;
        let mut tail = Vec::with_capacity(2);
        let mut got = 0;
        while got < total {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                self.fill(deadline)?;
            }
            let take = (total - got).min(self.end - self.start);
            let chunk = &self.buf[self.start..self.start + take];
            for (i, b) in chunk.iter().enumerate() {
                if got + i < len {
                    out.push(*b);
                } else {
                    tail.push(*b);
                }
            }
            self.start += take;
            got += take;
        }
        if tail != b"\r\n" {
            return Err(Failure::Protocol(ParseError::Garbage(
                "data block without CRLF".into(),
            )));
        }
        Ok(out)
    }
}

/// Time left until `deadline`, `None` once it has passed.
pub(crate) fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot fake server that answers every connection with `reply`.
    fn fake(reply: Vec<u8>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut req = [0u8; 256];
                let _ = s.read(&mut req);
                // Byte by byte: the reader must reassemble lines and blocks split anywhere.
                let _ = s.set_nodelay(true);
                for b in &reply {
                    let _ = s.write_all(std::slice::from_ref(b));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        addr
    }

    fn run(reply: &[u8], max_value: usize) -> Result<Vec<Response>, Failure> {
        let addr = fake(reply.to_vec());
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut c = Conn::connect(&addr, deadline)?;
        c.exchange(b"mg a v\r\n", 1, deadline, max_value)
    }

    #[test]
    fn reads_values_split_anywhere() {
        let r = run(b"VA 5 t-1 c9\r\nhe\nlo\r\n", 10).unwrap();
        assert_eq!(r[0].value.as_deref(), Some(&b"he\nlo"[..]));
        assert_eq!(r[0].header.cas, Some(9));
    }

    #[test]
    fn hostile_replies_fail_without_panics_or_big_buffers() {
        assert!(matches!(
            run(b"VA 100000000\r\n", 1024),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(
            run(&[b'x'; 5000], 1024),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(
            run(b"VA 3\r\nabcXY", 10),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(run(b"WHAT\r\n", 10), Err(Failure::Protocol(_))));
        // Truncated: the server stops talking; the deadline ends the wait.
        assert!(matches!(run(b"VA 3\r\na", 10), Err(Failure::Timeout)));
    }
}
