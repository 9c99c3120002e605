//! The listener: HTTP/1.1 and HTTP/2 (by ALPN with TLS), graceful stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::ControlPlane;
use crate::config::TlsFiles;

/// A TLS server config from PEM files.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    control_api::tls::server_config(&files.cert, &files.key).map_err(|e| format!("tls: {e}"))
}

/// A running API server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serve the API on `listener`.
    pub fn start(
        cp: Arc<ControlPlane>,
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept(cp, listener, tls.map(TlsAcceptor::from), stop_rx));
        Ok(Self { addr, stop, task })
    }

    /// Stop accepting; open requests (watches included) are given `grace` to finish.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

async fn accept(
    cp: Arc<ControlPlane>,
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let cp = cp.clone();
        let service = service_fn(move |request| {
            let cp = cp.clone();
            async move { Ok::<_, std::convert::Infallible>(crate::api::handle(cp, request).await) }
        });
        let builder = builder.clone();
        match &tls {
            None => {
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        _ => return,
                    };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(error) = watcher.watch(connection).await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
