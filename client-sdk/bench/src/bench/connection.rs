//! One raw MQTT 3.1.1 connection: a `TcpStream` with a read buffer and a write buffer,
//! framed by rumqttc's v4 codec. No event loop, no task of its own, no timers: a bench
//! client costs a socket, two small buffers and whatever task drives it.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};

use super::BenchError;

/// Largest packet the bench accepts from a broker.
const MAX_PACKET: usize = 1 << 20;

/// An MQTT connection over TCP. Buffers start empty and grow on demand.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    read_chunk: usize,
}

impl Connection {
    /// Opens a TCP connection to `server`, first binding the socket to `source` (port
    /// chosen by the kernel) when given, so that many clients spread over several
    /// loopback addresses instead of sharing one source address's port range.
    /// `read_chunk` is how much free room a read asks for: small for idle
    /// subscribers, large for a publisher reading a stream of PUBACKs.
    /// `recv_buffer`, when given, is the socket's receive buffer (SO_RCVBUF), set
    /// before connecting so that the TCP window offered to the broker stays small.
    pub(crate) async fn open(
        server: SocketAddr,
        source: Option<IpAddr>,
        read_chunk: usize,
        recv_buffer: Option<u32>,
    ) -> Result<Self, BenchError> {
        let socket = if server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            read_chunk,
        })
    }

    /// Borrows the two directions separately, so one task can read and write at once.
    pub(crate) fn split(&mut self) -> (Reader<'_>, Writer<'_>) {
        let (read, write) = self.stream.split();
        (
            Reader {
                io: read,
                buf: &mut self.read_buf,
                chunk: self.read_chunk,
            },
            Writer {
                io: write,
                buf: &mut self.write_buf,
            },
        )
    }

    /// Writes one packet and flushes it.
    pub(crate) async fn send(&mut self, packet: &Packet) -> Result<(), BenchError> {
        let (_, mut writer) = self.split();
        writer.queue(packet)?;
        writer.flush().await
    }

    /// Reads the next packet. Cancel-safe: a partial packet stays in the buffer.
    pub(crate) async fn recv(&mut self) -> Result<Packet, BenchError> {
        self.split().0.recv().await
    }
}

/// The reading half of a [`Connection`].
#[derive(Debug)]
pub(crate) struct Reader<'a, R = ReadHalf<'a>> {
    io: R,
    buf: &'a mut BytesMut,
    chunk: usize,
}

impl<R: AsyncRead + Unpin> Reader<'_, R> {
    /// Reads the next packet. Cancel-safe: bytes read so far stay in the buffer.
    pub(crate) async fn recv(&mut self) -> Result<Packet, BenchError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            if self.buf.capacity() - self.buf.len() < self.chunk / 2 {
                self.buf.reserve(self.chunk);
            }
            if self.io.read_buf(self.buf).await? == 0 {
                return Err(BenchError::Closed);
            }
        }
    }

    /// The next packet if it is already complete in the buffer, without reading.
    pub(crate) fn buffered(&mut self) -> Result<Option<Packet>, BenchError> {
        match Packet::read(self.buf, MAX_PACKET) {
            Ok(packet) => Ok(Some(packet)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The writing half of a [`Connection`]: packets are queued, then flushed in one write.
#[derive(Debug)]
pub(crate) struct Writer<'a, W = WriteHalf<'a>> {
    io: W,
    buf: &'a mut BytesMut,
}

impl<W: AsyncWrite + Unpin> Writer<'_, W> {
    /// Encodes `packet` into the write buffer.
    pub(crate) fn queue(&mut self, packet: &Packet) -> Result<(), BenchError> {
        packet.write(self.buf, MAX_PACKET)?;
        Ok(())
    }

    /// Bytes queued and not yet flushed.
    pub(crate) fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), BenchError> {
        if !self.buf.is_empty() {
            self.io.write_all(self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}
