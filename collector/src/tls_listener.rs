//! The collector's TLS listener. rustls directly rather than tonic's
//! `tls_config`, whose settings are fixed when the server starts: here each
//! new connection takes the config in force, so a renewed collector
//! certificate (or CA) is put in force by a reload (SIGHUP, `rxsentry
//! reload-trust`, or the files' change, polled) while open connections,
//! sensors' streams included, keep theirs. A rotation drops nothing.

use std::io;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use futures::Stream;
use pki::tls::{HANDSHAKE_TIMEOUT, ServerFiles};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

/// Accepted connections waiting for the server; more wait in the kernel's
/// backlog.
const ACCEPTED_QUEUE: usize = 64;

/// The TLS settings in force and the files they come from.
#[derive(Debug)]
pub struct ReloadingTls {
    files: ServerFiles,
    config: RwLock<Arc<ServerConfig>>,
    /// The files' modification times when last loaded.
    stamp: Mutex<Vec<Option<SystemTime>>>,
}

impl ReloadingTls {
    pub fn load(files: ServerFiles) -> Result<Self, pki::PkiError> {
        let stamp = stamp(&files);
        let config = files.rustls_config()?;
        Ok(Self {
            files,
            config: RwLock::new(config),
            stamp: Mutex::new(stamp),
        })
    }

    /// Re-reads the files; on error the config in force stays.
    pub fn reload(&self) -> Result<(), pki::PkiError> {
        let stamp = stamp(&self.files);
        let config = self.files.rustls_config()?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        info!(cert = %self.files.cert.display(), "collector TLS certificate (re)loaded");
        Ok(())
    }

    /// [`ReloadingTls::reload`] when a file's modification time changed.
    pub fn reload_if_changed(&self) -> Result<bool, pki::PkiError> {
        let now = stamp(&self.files);
        if *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.config
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    /// TLS connections accepted on `listener`, each handshake in its own
    /// task (a slow client holds up nobody) within [`HANDSHAKE_TIMEOUT`].
    /// Ends when the server drops it.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + 'static {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors and the like: wait, go on.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = self.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn stamp(files: &ServerFiles) -> Vec<Option<SystemTime>> {
    [&files.cert, &files.key, &files.client_ca]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}
