//! Just enough WebSocket client to break the rules on purpose: the opening
//! handshake written by hand, frames encoded with whatever bits a case asks
//! for, and the server's frames decoded strictly (a server that masks, sets
//! reserved bits or pads a length is caught here).

use std::{net::SocketAddr, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use uuid::Uuid;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// How long the server gets for each answer before a case fails.
pub const WAIT: Duration = Duration::from_secs(3);

/// One frame; `rsv` holds RSV1..RSV3 as bits 2..0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A final frame with no reserved bits.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            payload: payload.into(),
        }
    }

    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub fn rsv(mut self, rsv: u8) -> Self {
        self.rsv = rsv;
        self
    }

    /// The bytes a client puts on the wire: the shortest length encoding and
    /// the payload masked with `mask`.
    pub fn encode(&self, mask: [u8; 4]) -> Vec<u8> {
        let len = self.payload.len();
        let mut out = Vec::with_capacity(len + 14);
        out.push(u8::from(self.fin) << 7 | (self.rsv & 0b111) << 4 | (self.opcode & 0x0f));
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(
            self.payload
                .iter()
                .zip(mask.iter().cycle())
                .map(|(b, m)| b ^ m),
        );
        out
    }

    /// One server frame from the front of `buf` and the bytes it took;
    /// `None` until the whole frame is there.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, String> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        if b1 & 0x80 != 0 {
            return Err("the server masked a frame".into());
        }
        let (len, start) = match b1 & 0x7f {
            126 => {
                let Some(&[hi, lo]) = buf.get(2..4) else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes([hi, lo]));
                if len < 126 {
                    return Err(format!("the server used 16 bits for a length of {len}"));
                }
                (len, 4)
            }
            127 => {
                let Some(bytes) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
                if len <= 0xffff || len >> 63 != 0 {
                    return Err(format!("the server used 64 bits for a length of {len}"));
                }
                (len, 10)
            }
            len => (u64::from(len), 2),
        };
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(start))
            .ok_or("frame length overflows")?;
        let Some(payload) = buf.get(start..end) else {
            return Ok(None);
        };
        let frame = Self {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0b111,
            opcode: b0 & 0x0f,
            payload: payload.to_vec(),
        };
        Ok(Some((frame, end)))
    }

    /// A short human description, for failure messages.
    pub fn describe(&self) -> String {
        let kind = match self.opcode {
            CONTINUATION => "continuation".to_owned(),
            TEXT => "text".to_owned(),
            BINARY => "binary".to_owned(),
            CLOSE => match close_code(&self.payload) {
                Ok(code) => format!("close {code}"),
                Err(err) => format!("close ({err})"),
            },
            PING => "ping".to_owned(),
            PONG => "pong".to_owned(),
            other => format!("opcode {other:#x}"),
        };
        let shown: String = String::from_utf8_lossy(&self.payload)
            .chars()
            .take(48)
            .collect();
        format!("{kind} [{} bytes: {shown:?}]", self.payload.len())
    }
}

/// A close frame's status code, 1005 for an empty payload; an error for a
/// payload no endpoint may send.
pub fn close_code(payload: &[u8]) -> Result<u16, String> {
    match payload {
        [] => Ok(1005),
        [_] => Err("a 1-byte close payload".into()),
        [hi, lo, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| "a close reason that is not UTF-8")?;
            Ok(u16::from_be_bytes([*hi, *lo]))
        }
    }
}

/// A close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// One client connection after a successful opening handshake.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet decoded.
    buf: Vec<u8>,
    /// A data message whose final fragment has not arrived.
    partial: Option<Frame>,
}

impl Conn {
    /// Connects and upgrades `path` with a bearer token, checking the
    /// server's answer as RFC 6455 §4.1 asks a client to.
    pub async fn open(addr: SocketAddr, path: &str, token: &str) -> Result<Self, String> {
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out")?
            .map_err(|err| format!("connect: {err}"))?;
        // Small writes must leave as small segments for the chunked cases.
        stream.set_nodelay(true).map_err(|err| err.to_string())?;
        let key = STANDARD.encode(Uuid::new_v4().as_bytes());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|err| format!("send the upgrade: {err}"))?;

        let mut buf = Vec::new();
        let head_len = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err("an endless upgrade response".into());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .map_err(|_| "no upgrade response")?
                .map_err(|err| format!("read the upgrade response: {err}"))?;
            if n == 0 {
                return Err("the connection ended during the upgrade".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);

        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101 ") {
            return Err(format!("upgrade refused: {status}"));
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
            return Err("no `Upgrade: websocket` in the answer".into());
        }
        if !header("connection").is_some_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        }) {
            return Err("no `Connection: Upgrade` in the answer".into());
        }
        if header("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err("a wrong Sec-WebSocket-Accept".into());
        }
        // The reserved-bit cases rely on no extension being in force.
        if let Some(ext) = header("sec-websocket-extensions") {
            return Err(format!("an extension nobody asked for: {ext}"));
        }
        Ok(Self {
            stream,
            buf,
            partial: None,
        })
    }

    /// Writes a frame, `chunk` bytes at a time (0: in one write).
    pub async fn send(&mut self, frame: &Frame, chunk: usize) -> std::io::Result<()> {
        let mask: [u8; 4] = Uuid::new_v4().as_bytes()[..4].try_into().expect("4 bytes");
        let bytes = frame.encode(mask);
        if chunk == 0 {
            return self.stream.write_all(&bytes).await;
        }
        for piece in bytes.chunks(chunk) {
            self.stream.write_all(piece).await?;
        }
        Ok(())
    }

    /// The next frame, or `None` once the server has ended the TCP connection
    /// (a FIN or a reset).
    async fn frame(&mut self) -> Result<Option<Frame>, String> {
        loop {
            if let Some((frame, used)) = Frame::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| format!("nothing from the server within {WAIT:?}"))?;
            match read {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err("the connection ended in the middle of a frame".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(err) => return Err(format!("read: {err}")),
            }
        }
    }

    /// The next control frame or whole data message (fragments joined, FIN
    /// set); `None` once the TCP connection has ended. Errors name what the
    /// server got wrong.
    pub async fn next(&mut self) -> Result<Option<Frame>, String> {
        loop {
            let Some(frame) = self.frame().await? else {
                return match self.partial {
                    Some(_) => Err("the connection ended in the middle of a message".into()),
                    None => Ok(None),
                };
            };
            if frame.rsv != 0 {
                return Err(format!(
                    "the server set reserved bits: {}",
                    frame.describe()
                ));
            }
            match (frame.opcode, self.partial.as_mut()) {
                (CLOSE | PING | PONG, _) if !frame.fin || frame.payload.len() > 125 => {
                    return Err(format!(
                        "a fragmented or oversized control frame: {}",
                        frame.describe()
                    ));
                }
                (CLOSE | PING | PONG, _) => return Ok(Some(frame)),
                (TEXT | BINARY, None) => self.partial = Some(frame),
                (CONTINUATION, Some(partial)) => {
                    partial.payload.extend_from_slice(&frame.payload);
                    partial.fin = frame.fin;
                }
                _ => return Err(format!("an out-of-place frame: {}", frame.describe())),
            }
            if self.partial.as_ref().is_some_and(|m| m.fin) {
                let message = self.partial.take().expect("checked above");
                if message.opcode == TEXT && std::str::from_utf8(&message.payload).is_err() {
                    return Err("the server sent text that is not UTF-8".into());
                }
                return Ok(Some(message));
            }
        }
    }
}
