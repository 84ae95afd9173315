//! The console's HTTPS: a self-signed certificate kept in the console's state directory
//! (made on first start), its SHA-256 fingerprint, and the server: the accept loop with
//! its connection cap, and each connection's deadlines.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper::body::Incoming;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ClientAddr;

/// The console's certificate and key.
pub(crate) struct Identity {
    /// The certificate (DER).
    cert: CertificateDer<'static>,
    key: zeroize::Zeroizing<Vec<u8>>,
}

impl Identity {
    /// The certificate's SHA-256 fingerprint, as browsers show it (`AB:CD:...`).
    pub(crate) fn fingerprint(&self) -> String {
        sha2::Sha256::digest(self.cert.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Loads the console's certificate from `dir`, or makes one (for `names`) the first time.
/// The key file is readable by the daemon's user only.
pub(crate) fn load_or_create(dir: &Path, names: Vec<String>) -> std::io::Result<Identity> {
    let cert_path = dir.join("console-cert.der");
    let key_path = dir.join("console-key.der");
    if let (Ok(cert), Ok(key)) = (std::fs::read(&cert_path), std::fs::read(&key_path)) {
        return Ok(Identity {
            cert: CertificateDer::from(cert),
            key: zeroize::Zeroizing::new(key),
        });
    }
    let identity = generate(names)?;
    super::write_private(&key_path, &identity.key)?;
    super::write_private(&cert_path, identity.cert.as_ref())?;
    Ok(identity)
}

/// A new self-signed certificate and key for `names`, kept in memory only: the locked
/// data console's, made at each start because the console's own is inside the volume.
pub(crate) fn generate(names: Vec<String>) -> std::io::Result<Identity> {
    let key_pair = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
    let params = rcgen::CertificateParams::new(names).map_err(std::io::Error::other)?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(std::io::Error::other)?;
    Ok(Identity {
        cert: cert.der().clone(),
        key: zeroize::Zeroizing::new(key_pair.serialize_der()),
    })
}

/// The most connections the console serves at once; more are closed as soon as they are
/// accepted. Half the process's open-file limit if that is lower ([`connection_cap`]).
const MAX_CONNECTIONS: usize = 1024;
/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has, once its handshake is done, to send its first request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection stays open with no request in progress after its last answer
/// (the next request's headers included).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection closed for idleness has to say goodbye (HTTP/2's GOAWAY).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The pause after a failed `accept` (out of file descriptors, say) before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How many connections the console serves at once, given the process's open-file limit
/// (`None`: unlimited): [`MAX_CONNECTIONS`], or half the limit if that is lower, since
/// each connection is a file and the node's agent, its store and its calls need the rest.
fn connection_cap(open_files: Option<u64>) -> usize {
    let half = open_files.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    MAX_CONNECTIONS.min(half).max(1)
}

/// Serves `app` over HTTPS on `listener` until the task is dropped: at most
/// [`connection_cap`] connections at once, each closed when its handshake, its first
/// request or its idleness last too long ([`HANDSHAKE_TIMEOUT`], [`HEADER_TIMEOUT`],
/// [`IDLE_TIMEOUT`]). A failing `accept` is retried after a pause, not in a loop.
pub(crate) async fn serve(
    listener: TcpListener,
    identity: &Identity,
    app: Router,
) -> std::io::Result<()> {
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
    let cap = connection_cap(rustix::process::getrlimit(rustix::process::Resource::Nofile).current);
    tracing::info!(
        event = "console.connection_cap",
        connections = cap,
        "the console serves at most {cap} connections at once"
    );
    let slots = Arc::new(Semaphore::new(cap));
    // Each is logged once, when it starts, not at every connection.
    let (mut failing, mut full) = (false, false);
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(accepted) => {
                failing = false;
                accepted
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(event = "console.accept_failed", error = %e, "the console cannot accept connections; retrying");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !full {
                tracing::warn!(
                    event = "console.connections_full",
                    connections = cap,
                    "the console has {cap} connections open; new ones are closed until some end"
                );
                full = true;
            }
            drop(tcp);
            continue;
        };
        full = false;
        tokio::spawn(connection(acceptor.clone(), app.clone(), tcp, peer, slot));
    }
}

/// Serves one connection, which holds `_slot` until it ends.
async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(Activity::new(Instant::now()));
    let service = {
        let activity = activity.clone();
        let app = hyper_util::service::TowerToHyperService::new(app);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            let busy = Activity::begin(&activity);
            let answer = hyper::service::Service::call(&app, request);
            async move {
                let answer = answer.await;
                drop(busy);
                answer
            }
        })
    };
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // TLS chose the protocol (ALPN): no guessing from the first bytes.
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        let deadline = activity.deadline();
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            () = activity.changed.notified() => {}
            () = expired => {
                if activity.deadline().is_some_and(|d| d <= Instant::now()) {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// What a connection is doing, for its deadline: how many requests are in progress, and
/// since when it has had none (its handshake, before the first).
struct Activity {
    state: Mutex<ActivityState>,
    /// Told when a request begins or ends.
    changed: Notify,
}

#[derive(Clone, Copy, Debug)]
struct ActivityState {
    in_progress: usize,
    since: Instant,
    served: bool,
}

impl ActivityState {
    /// When the connection is closed unless a request begins: none while one is in
    /// progress.
    fn deadline(self) -> Option<Instant> {
        let allowed = if self.served {
            IDLE_TIMEOUT
        } else {
            HEADER_TIMEOUT
        };
        (self.in_progress == 0).then(|| self.since + allowed)
    }
}

impl Activity {
    fn new(handshake_done: Instant) -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_progress: 0,
                since: handshake_done,
                served: false,
            }),
            changed: Notify::new(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deadline()
    }

    /// A request began; it is in progress until the guard is dropped.
    fn begin(activity: &Arc<Activity>) -> Busy {
        {
            let mut state = activity.state.lock().unwrap_or_else(|p| p.into_inner());
            state.in_progress += 1;
            state.served = true;
        }
        activity.changed.notify_one();
        Busy(activity.clone())
    }
}

/// A request in progress.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            state.in_progress = state.in_progress.saturating_sub(1);
            state.since = Instant::now();
        }
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_half_the_open_files_to_the_rest() {
        assert_eq!(connection_cap(None), MAX_CONNECTIONS);
        assert_eq!(connection_cap(Some(524_288)), MAX_CONNECTIONS);
        assert_eq!(connection_cap(Some(1024)), 512);
        assert_eq!(connection_cap(Some(1)), 1);
    }

    #[test]
    fn a_connection_is_closed_when_idle_never_while_busy() {
        let start = Instant::now();
        let fresh = ActivityState {
            in_progress: 0,
            since: start,
            served: false,
        };
        assert_eq!(fresh.deadline(), Some(start + HEADER_TIMEOUT));
        let busy = ActivityState {
            in_progress: 1,
            served: true,
            ..fresh
        };
        assert_eq!(busy.deadline(), None);
        let idle = ActivityState {
            in_progress: 0,
            ..busy
        };
        assert_eq!(idle.deadline(), Some(start + IDLE_TIMEOUT));
    }
}
