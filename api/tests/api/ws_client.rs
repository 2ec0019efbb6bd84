//! A WebSocket test client over tokio-tungstenite.

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read ahead while [`Ws::join`] waited for the replay to end.
    pending: VecDeque<Message>,
}

/// A refused upgrade: the HTTP status, the problem+json body and the
/// `Retry-After` seconds, if any.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

pub const WAIT: Duration = Duration::from_secs(15);

impl Ws {
    /// Opens `path` (e.g. `/ws/lobby?since=3`) with a bearer token.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
    ) -> Result<Self, Refused> {
        Self::connect_with(addr, path, token, &[]).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Self, Refused> {
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap();
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(value).unwrap());
        }
        match tokio::time::timeout(WAIT, connect_async(request))
            .await
            .expect("connect in time")
        {
            Ok((stream, _)) => Ok(Self {
                stream,
                pending: VecDeque::new(),
            }),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                Err(Refused {
                    status,
                    body,
                    retry_after,
                })
            }
            Err(err) => panic!("websocket connect failed: {err}"),
        }
    }

    /// Like [`Ws::join`], over a socket with a tiny receive buffer, so that a
    /// client that stops reading pushes back on the server at once.
    pub async fn join_small_window(addr: SocketAddr, path: &str, token: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        let (stream, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
            .await
            .expect("upgrade");
        let mut ws = Self {
            stream,
            pending: VecDeque::new(),
        };
        assert_eq!(ws.next_json().await["type"], "welcome");
        ws.sync().await;
        ws
    }

    /// Reads every frame until the server closes: the JSON frames and the
    /// close code.
    pub async fn read_until_close(&mut self) -> (Vec<Value>, u16) {
        let (frames, code) = self.read_until_end().await;
        (
            frames,
            code.expect("a close frame before the connection ended"),
        )
    }

    /// Reads every frame until the connection ends: the JSON frames and the
    /// close code, or `None` when it ended without a close frame (a reset
    /// throws away what the kernel had not yet handed over).
    pub async fn read_until_end(&mut self) -> (Vec<Value>, Option<u16>) {
        let (frames, close) = self.read_until_end_with_reason().await;
        (frames, close.map(|(code, _)| code))
    }

    /// Like [`Ws::read_until_end`], with the close frame's reason beside its code.
    pub async fn read_until_end_with_reason(&mut self) -> (Vec<Value>, Option<(u16, String)>) {
        let mut frames = Vec::new();
        loop {
            let Some(next) = self.next_message(WAIT).await else {
                panic!("still open after {WAIT:?} and {} frames", frames.len());
            };
            match next {
                Some(Message::Text(text)) => frames.push(serde_json::from_str(&text).unwrap()),
                Some(Message::Close(frame)) => {
                    let close = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    });
                    return (frames, Some(close));
                }
                Some(_) => {}
                None => return (frames, None),
            }
        }
    }

    /// Like [`Ws::join`], but a refused upgrade is returned, not a panic.
    pub async fn try_join(
        addr: SocketAddr,
        path: &str,
        token: &str,
    ) -> Result<(Self, Value), Refused> {
        let mut ws = Self::connect(addr, path, Some(token)).await?;
        let welcome = ws.next_json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws.sync().await;
        Ok((ws, welcome))
    }

    /// Connects, reads `welcome`, and returns both.
    pub async fn join(addr: SocketAddr, path: &str, token: &str) -> (Self, Value) {
        let mut ws = Self::connect(addr, path, Some(token))
            .await
            .unwrap_or_else(|r| panic!("refused: {r:?}"));
        let welcome = ws.next_json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws.sync().await;
        (ws, welcome)
    }

    /// Waits until the server has sent everything it sent before reading
    /// our next frame — on `/ws`, that is the whole replay — keeping what
    /// arrives meanwhile for the next reads. A WebSocket ping is used, not
    /// the JSON one, so that the socket's rate limit is not touched.
    pub async fn sync(&mut self) {
        const MARK: &[u8] = b"test-sync";
        if self.stream.send(Message::Ping(MARK.into())).await.is_err() {
            return;
        }
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("pong in time")
            {
                Some(Ok(Message::Pong(data))) if data.as_ref() == MARK => return,
                Some(Ok(message)) => {
                    let closed = matches!(message, Message::Close(_));
                    self.pending.push_back(message);
                    if closed {
                        return;
                    }
                }
                Some(Err(_)) | None => return,
            }
        }
    }

    /// The next frame: one read ahead by [`Ws::sync`], else from the socket.
    async fn next_message(&mut self, wait: Duration) -> Option<Option<Message>> {
        if let Some(message) = self.pending.pop_front() {
            return Some(Some(message));
        }
        match tokio::time::timeout(wait, self.stream.next()).await {
            Err(_) => None,
            Ok(Some(Ok(message))) => Some(Some(message)),
            Ok(None | Some(Err(_))) => Some(None),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.into())).await.unwrap();
    }

    /// Sends, ignoring a connection the server already closed.
    pub async fn try_send_json(&mut self, value: &Value) -> bool {
        self.stream
            .send(Message::Text(value.to_string().into()))
            .await
            .is_ok()
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.stream
            .send(Message::Binary(data.into()))
            .await
            .unwrap();
    }

    /// The next text frame as JSON (skipping pings); panics on close or timeout.
    pub async fn next_json(&mut self) -> Value {
        self.try_next_json(WAIT).await.expect("a frame in time")
    }

    /// The next JSON frame within `wait`, or `None` (timeout or close).
    pub async fn try_next_json(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match self.next_message(wait).await {
                None | Some(None | Some(Message::Close(_))) => return None,
                Some(Some(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).unwrap());
                }
                Some(Some(_)) => continue,
            }
        }
    }

    /// The next JSON frame: `Ok(None)` when nothing came within `wait`,
    /// `Err(())` once the socket is closed or broken.
    pub async fn poll_json(&mut self, wait: Duration) -> Result<Option<Value>, ()> {
        loop {
            match self.next_message(wait).await {
                None => return Ok(None),
                Some(None | Some(Message::Close(_))) => return Err(()),
                Some(Some(Message::Text(text))) => {
                    return Ok(Some(serde_json::from_str(&text).unwrap()));
                }
                Some(Some(_)) => continue,
            }
        }
    }

    /// The next frame of one of `types`, skipping others (presence, acks...).
    pub async fn next_of(&mut self, types: &[&str]) -> Value {
        loop {
            let frame = self.next_json().await;
            if types.contains(&frame["type"].as_str().unwrap_or_default()) {
                return frame;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next_message(WAIT).await.expect("close in time") {
                Some(Message::Close(frame)) => {
                    return frame.map_or(1005, |f| u16::from(f.code));
                }
                Some(_) => continue,
                None => panic!("socket failed or ended without a close frame"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
