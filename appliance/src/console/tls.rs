//! The console's HTTPS: a self-signed certificate kept in the console's state directory
//! (made on first start), its SHA-256 fingerprint, and the accept loop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest as _;
use tokio::net::TcpListener;

use super::ClientAddr;

/// The console's certificate and key.
pub struct Identity {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    key: zeroize::Zeroizing<Vec<u8>>,
}

impl Identity {
    /// The certificate's SHA-256 fingerprint, as browsers show it (`AB:CD:...`).
    pub fn fingerprint(&self) -> String {
        sha2::Sha256::digest(self.cert.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Loads the console's certificate from `dir`, or makes one (for `names`) the first time.
/// The key file is readable by the daemon's user only.
pub fn load_or_create(dir: &Path, names: Vec<String>) -> std::io::Result<Identity> {
    let cert_path = dir.join("console-cert.der");
    let key_path = dir.join("console-key.der");
    if let (Ok(cert), Ok(key)) = (std::fs::read(&cert_path), std::fs::read(&key_path)) {
        return Ok(Identity {
            cert: CertificateDer::from(cert),
            key: zeroize::Zeroizing::new(key),
        });
    }
    let key_pair = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
    let params = rcgen::CertificateParams::new(names).map_err(std::io::Error::other)?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(std::io::Error::other)?;
    let key = zeroize::Zeroizing::new(key_pair.serialize_der());
    super::write_private(&key_path, &key)?;
    super::write_private(&cert_path, cert.der())?;
    Ok(Identity {
        cert: cert.der().clone(),
        key,
    })
}

/// Serves `app` over HTTPS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, identity: &Identity, app: Router) -> std::io::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![identity.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.to_vec())),
        )
        .map_err(std::io::Error::other)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let acceptor = acceptor.clone();
        let app = app.clone().layer(axum::Extension(ClientAddr(peer)));
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}
