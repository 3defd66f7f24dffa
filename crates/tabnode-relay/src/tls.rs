//! HTTPS served by the relay itself: a certificate chain and key from PEM
//! files (`--tls-cert`, `--tls-key`), TLS by rustls on ring (the provider
//! already in the tree) through tokio-rustls, HTTP/1.1 and HTTP/2 by hyper
//! (chosen by ALPN), the same router and the same graceful shutdown as
//! plain HTTP. `--http-redirect ADDR` adds a plain-HTTP listener that
//! answers every request with a permanent redirect to the HTTPS origin.
//!
//! axum's `serve` takes one kind of listener and gives handlers the peer
//! address through `ConnectInfo` for plain TCP only; here each connection's
//! address is put into its requests the same way, so per-client limits and
//! trusted proxies work alike over HTTPS.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds no usable item.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refuses the certificate or the key (a key that does not
    /// match the certificate, an unsupported algorithm).
    #[error("the certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's TLS settings from a PEM certificate chain (the server's
/// certificate first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// [`TlsError`] for unreadable files, an empty chain, or a key rustls
/// refuses for the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem = |path: &Path, message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `stopped` resolves, then
/// lets the connections' requests in progress finish (like axum's
/// graceful shutdown).
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    stopped: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(stopped);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("HTTPS accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let service = app.map_request(move |mut request: axum::extract::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(addr));
                request
            });
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(tls),
                TowerToHyperService::new(service),
            );
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%addr, "HTTPS connection ended: {e}");
            }
        });
    }
    graceful.shutdown().await;
}

/// Answers every request on `listener` with a permanent redirect to the
/// same path at `https://{host}:{https_port}` (the request's host, without
/// its port), until `stopped` resolves.
pub async fn redirect(
    listener: TcpListener,
    https_port: u16,
    stopped: impl Future<Output = ()> + Send + 'static,
) {
    use axum::http::{header, StatusCode, Uri};
    use axum::response::IntoResponse;
    let to_https = move |headers: axum::http::HeaderMap, uri: Uri| async move {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<axum::http::uri::Authority>().ok());
        let Some(host) = host else {
            return (StatusCode::BAD_REQUEST, "a Host header is needed").into_response();
        };
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{}{port}{path}", host.host());
        (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response()
    };
    let app = Router::new().fallback(to_https);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!("HTTP redirect server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_mismatched_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let e = server_config(&empty, &empty)
            .expect_err("empty")
            .to_string();
        assert!(e.contains("no certificate"), "{e}");
        // A certificate with another certificate's key.
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, a.cert.pem()).expect("write");
        std::fs::write(&key, b.key_pair.serialize_pem()).expect("write");
        let e = server_config(&cert, &key)
            .expect_err("mismatch")
            .to_string();
        assert!(e.contains("cannot be used"), "{e}");
        // Its own key: fine.
        std::fs::write(&key, a.key_pair.serialize_pem()).expect("write");
        assert!(server_config(&cert, &key).is_ok());
    }
}
