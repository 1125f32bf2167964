//! MQTT over WebSocket (path `/mqtt`, subprotocol `mqtt`): the handshake, and an
//! adapter that presents binary WebSocket messages as the byte stream the
//! connection loop reads and writes (MQTT packets may span messages, and a message
//! may hold several packets).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::ReadBuf;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Transport;
use super::codec::CONNECT_MAX;

/// The only path MQTT is served on.
pub(crate) const PATH: &str = "/mqtt";

/// Bytes a WebSocket may read off its socket before its client has logged in: the
/// upgrade request, a CONNECT of at most `CONNECT_MAX`, and framing. tungstenite
/// would otherwise buffer a whole message of up to `mqtt.max_packet_size` from
/// anyone who opens a socket.
const BEFORE_LOGIN: usize = 16 * 1024 + CONNECT_MAX + 1024;

/// Performs the server handshake on `io`: `GET /mqtt`, agreeing to the `mqtt`
/// subprotocol when the client offers it. Messages are bounded by `max_message`.
// The callback's error type is tungstenite's own HTTP response.
#[allow(clippy::result_large_err)]
pub(crate) async fn accept<S>(io: S, max_message: usize) -> Result<WsTransport<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != PATH {
            let mut err = ErrorResponse::new(Some(format!("MQTT is served on {PATH}")));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let offers_mqtt = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if offers_mqtt {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let io = Capped {
        inner: io,
        left: Some(BEFORE_LOGIN),
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(config)).await?;
    Ok(WsTransport {
        ws,
        pending: Bytes::new(),
        eof: false,
    })
}

/// A WebSocket carrying MQTT as binary messages.
#[derive(Debug)]
pub(crate) struct WsTransport<S> {
    ws: WebSocketStream<Capped<S>>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    eof: bool,
}

fn ws_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::ErrorKind::ConnectionAborted.into()
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsTransport<S> {
    /// Polls for the next binary payload; `Ok(false)` at a clean end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while self.pending.is_empty() {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(false)),
                Some(Ok(Message::Binary(b))) => self.pending = b,
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket uses binary messages",
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_io(e))),
            }
        }
        Poll::Ready(Ok(true))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsTransport<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut ws = Pin::new(&mut self.ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(ws_io)?;
        ws.start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_io)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsTransport<S> {
    async fn ready(&mut self) -> io::Result<()> {
        // Waits for the next message without a read buffer of ours; the message is
        // kept for `try_read`.
        if !self.eof {
            self.eof = !std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        }
        Ok(())
    }

    fn logged_in(&mut self) {
        self.ws.get_mut().left = None;
    }

    fn try_read(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            buf.extend_from_slice(&self.pending);
            self.pending = Bytes::new();
            return Ok(Some(n));
        }
        Ok(self.eof.then_some(0))
    }
}

/// A byte stream that yields at most `left` bytes, then fails, until the limit is
/// lifted (`left = None`, once the client has logged in; from then on it adds
/// nothing to a read).
#[derive(Debug)]
pub(crate) struct Capped<S> {
    inner: S,
    left: Option<usize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(left) = self.left else {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many bytes before CONNECT was accepted",
            )));
        }
        // Through a small buffer of our own, so that no read can take more than
        // is left (only before login: a few reads per connection).
        let mut chunk = [0u8; 4096];
        let want = left.min(chunk.len()).min(buf.remaining());
        let mut limited = ReadBuf::new(&mut chunk[..want]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let got = limited.filled();
        buf.put_slice(got);
        self.left = Some(left - got.len());
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
