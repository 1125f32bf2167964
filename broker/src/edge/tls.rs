//! TLS for the `mqtt.tls` and `mqtt.wss` listeners, with rustls on the `ring`
//! crypto backend.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::server::TlsStream;

use super::Transport;
use crate::error::StartError;

/// Builds the acceptor from PEM files: a certificate chain and its private key.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    let tls_err = |what: &str, e: &dyn std::fmt::Display| StartError::Tls(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(&format!("mqtt.tls_cert {}", cert.display()), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&format!("mqtt.tls_cert {}", cert.display()), &e))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "mqtt.tls_cert {}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_err(&format!("mqtt.tls_key {}", key.display()), &e))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("mqtt.tls_cert / mqtt.tls_key", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS connection. rustls may hold decrypted bytes that socket readiness would
/// not show, so waiting for input means reading: `ready` reads into `pending`,
/// which the next read hands out first.
#[derive(Debug)]
pub(crate) struct TlsTransport {
    inner: TlsStream<TcpStream>,
    pending: BytesMut,
    eof: bool,
}

impl TlsTransport {
    pub(crate) fn new(inner: TlsStream<TcpStream>) -> Self {
        TlsTransport {
            inner,
            pending: BytesMut::new(),
            eof: false,
        }
    }
}

impl AsyncRead for TlsTransport {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsTransport {
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

impl Transport for TlsTransport {
    async fn ready(&mut self) -> io::Result<()> {
        if self.pending.is_empty() && !self.eof {
            self.pending.reserve(4096);
            if self.inner.read_buf(&mut self.pending).await? == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    fn try_read(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            buf.extend_from_slice(&self.pending);
            self.pending = BytesMut::new();
            return Ok(Some(n));
        }
        Ok(self.eof.then_some(0))
    }
}
