//! The peer endpoint: QUIC (quinn) with mutual TLS 1.3 (rustls), one UDP port.
//!
//! Each node presents a self-signed certificate for its own Ed25519 node key (made with
//! rcgen from the identity, never stored). There is no CA: the dialler pins the NodeId it
//! meant to reach and accepts exactly that key; the listener requires a client
//! certificate and learns the caller's NodeId from it. The TLS handshake signatures prove
//! possession of the keys. ALPN carries the protocol version (`pk/1`); a peer speaking
//! another version fails the handshake.
//!
//! Calls use the framed RPC of [`crate::rpc`], one bidirectional stream per call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_cert::der::Decode as _;

use crate::identity::{Identity, NodeId};

/// The ALPN protocol id: the peer protocol's version.
pub const ALPN: &[u8] = b"pk/1";

/// The Ed25519 algorithm identifier in a certificate's key info.
const ED25519_OID: &str = "1.3.101.112";

/// Why the endpoint or a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The node's certificate could not be made.
    #[error("cannot make the node's TLS certificate: {0}")]
    Certificate(String),
    /// TLS or QUIC configuration failed.
    #[error("cannot configure QUIC: {0}")]
    Config(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting failed (unreachable, refused, or not the node that was meant).
    #[error("cannot connect to {node} at {addr}: {reason}")]
    Connect {
        /// The node meant.
        node: NodeId,
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node that answered at that address is not the one asked for (the handshake
    /// proved another key).
    #[error("cannot connect to {node} at {addr}: the peer is another node than the one asked for")]
    WrongNode {
        /// The node meant.
        node: NodeId,
        /// Where.
        addr: SocketAddr,
    },
    /// An incoming connection failed its handshake.
    #[error("incoming connection failed: {0}")]
    Incoming(String),
}

/// The NodeId a certificate's Ed25519 key stands for.
pub fn cert_node_id(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid.to_string() != ED25519_OID {
        return None;
    }
    let key: [u8; 32] = spki.subject_public_key.raw_bytes().try_into().ok()?;
    NodeId::from_bytes(key).ok()
}

/// A renewal certificate: (subject, issuer) when the certificate's Ed25519 key is the
/// subject and its signature verifies under the issuer NodeId its CN names.
fn renewal_link(cert: &CertificateDer<'_>) -> Option<(NodeId, NodeId)> {
    use x509_cert::der::Encode as _;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    if parsed.signature_algorithm.oid.to_string() != ED25519_OID {
        return None;
    }
    let subject = cert_node_id(cert)?;
    let issuer_name = parsed.tbs_certificate.issuer.to_string();
    let issuer: NodeId = issuer_name.strip_prefix("CN=")?.parse().ok()?;
    if issuer == subject {
        return None;
    }
    let tbs = parsed.tbs_certificate.to_der().ok()?;
    let signature = parsed.signature.raw_bytes();
    match crate::identity::verify(&issuer, &tbs, signature) {
        Ok(true) => Some((subject, issuer)),
        _ => None,
    }
}

/// The earlier NodeIds of `leaf`, newest first, as proven by the renewal certificates
/// among `certs` (each signed by the key before).
pub fn earlier_ids(leaf: NodeId, certs: &[CertificateDer<'_>]) -> Vec<NodeId> {
    let links: Vec<(NodeId, NodeId)> = certs.iter().filter_map(renewal_link).collect();
    let mut out = Vec::new();
    let mut current = leaf;
    while out.len() < 16 {
        let Some((_, issuer)) = links.iter().find(|(subject, _)| *subject == current) else {
            break;
        };
        if *issuer == leaf || out.contains(issuer) {
            break;
        }
        out.push(*issuer);
        current = *issuer;
    }
    out
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake-signature half of both verifiers: the provider's checks, Ed25519 only.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

/// Accepts the server's certificate only if its key is the pinned NodeId.
#[derive(Debug)]
struct PinnedServer {
    expected: NodeId,
    algorithms: WebPkiSupportedAlgorithms,
    /// Set when another node's key answered, so the dialer can say so by type.
    other_node: Arc<AtomicBool>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match cert_node_id(end_entity) {
            Some(found) if found == self.expected => Ok(ServerCertVerified::assertion()),
            // The node renewed its key: its chain leads back to the NodeId asked for.
            Some(found) if earlier_ids(found, intermediates).contains(&self.expected) => {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => {
                self.other_node.store(true, Ordering::Relaxed);
                Err(rustls::Error::General(
                    "the peer is another node than the one asked for".into(),
                ))
            }
            None => Err(rustls::Error::General(
                "the peer's certificate is not an Ed25519 node key".into(),
            )),
        }
    }

    handshake_signatures!();
}

/// Requires a client certificate with an Ed25519 node key; who may do what is decided
/// later, per call, from the NodeId.
#[derive(Debug)]
struct AnyNode {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyNode {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        cert_node_id(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .ok_or_else(|| {
                rustls::Error::General("the client's certificate is not an Ed25519 node key".into())
            })
    }

    handshake_signatures!();
}

/// A node's QUIC endpoint: listens, and dials other nodes by NodeId.
pub struct Endpoint {
    inner: quinn::Endpoint,
    /// The node's certificate then its renewal certificates, and its key (PKCS#8).
    credentials: std::sync::Mutex<Credentials>,
}

/// The node's certificate then its renewal certificates, and its key (PKCS#8).
type Credentials = (
    Vec<CertificateDer<'static>>,
    Arc<zeroize::Zeroizing<Vec<u8>>>,
);

/// The server side of the node's TLS, and the credentials it presents.
fn server_config(
    identity: &Identity,
    renewals: Vec<CertificateDer<'static>>,
) -> Result<(quinn::ServerConfig, Credentials), NetError> {
    let (cert, key) = identity
        .tls_certificate()
        .map_err(|e| NetError::Certificate(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = std::iter::once(cert).chain(renewals).collect();
    let algorithms = provider().signature_verification_algorithms;
    let config = |e: rustls::Error| NetError::Config(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config)?
        .with_client_cert_verifier(Arc::new(AnyNode { algorithms }))
        .with_single_cert(
            chain.clone(),
            PrivateKeyDer::Pkcs8(key.as_slice().to_vec().into()),
        )
        .map_err(config)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| NetError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport());
    Ok((server, (chain, Arc::new(key))))
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// The most calls (bidirectional streams) a peer may have open on one connection at once.
pub const MAX_STREAMS: u32 = 32;
/// Bytes a peer may have in flight on one stream before it waits for us: room for one
/// chunk frame ([`crate::peer::MAX_RESPONSE`]) and a fast link's round trip.
pub const STREAM_WINDOW: u32 = 1_500_000;
/// Bytes a peer may have in flight on one connection, all streams together.
pub const CONNECTION_WINDOW: u32 = 4 << 20;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // A budget per connection: quinn's defaults (100 + 100 streams, an unlimited
    // connection window) let one connection make us buffer without bound.
    transport.max_concurrent_bidi_streams(MAX_STREAMS.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.stream_receive_window(STREAM_WINDOW.into());
    transport.receive_window(CONNECTION_WINDOW.into());
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_secs(30)) {
        transport.max_idle_timeout(Some(idle));
    }
    Arc::new(transport)
}

impl Endpoint {
    /// Binds a UDP socket at `addr` and serves QUIC with the node's identity.
    pub fn bind(addr: SocketAddr, identity: &Identity) -> Result<Endpoint, NetError> {
        let socket =
            std::net::UdpSocket::bind(addr).map_err(|source| NetError::Bind { addr, source })?;
        Endpoint::from_socket(socket, identity, Vec::new())
    }

    /// Serves QUIC with the node's identity on a bound UDP socket (the agent binds its
    /// port once at start, and makes an endpoint on it at each unlock).
    pub fn from_socket(
        socket: std::net::UdpSocket,
        identity: &Identity,
        renewals: Vec<CertificateDer<'static>>,
    ) -> Result<Endpoint, NetError> {
        let addr = socket
            .local_addr()
            .map_err(|e| NetError::Config(e.to_string()))?;
        let (server, credentials) = server_config(identity, renewals)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| NetError::Config("no async runtime to run QUIC on".into()))?;
        // The stateless-reset key is derived from the node key, so that after a crash and
        // restart this node can tell peers at once that their old connection is gone.
        // Connection ids are checked with a key derived the same way: a restarted node
        // recognises its own earlier ids, which a reset needs.
        let reset_key = identity.derive_key("quic stateless reset");
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key.as_ref());
        let cid_key = identity.derive_key("quic connection ids");
        let cid_key = u64::from_be_bytes(cid_key[..8].try_into().unwrap_or_default());
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let inner = quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(|source| NetError::Bind { addr, source })?;
        Ok(Endpoint {
            inner,
            credentials: std::sync::Mutex::new(credentials),
        })
    }

    /// Presents a new node key from now on (after `pk keys renew`): new connections, in
    /// and out, use it; existing ones keep the old until they close.
    pub fn set_identity(
        &self,
        identity: &Identity,
        renewals: Vec<CertificateDer<'static>>,
    ) -> Result<(), NetError> {
        let (server, credentials) = server_config(identity, renewals)?;
        self.inner.set_server_config(Some(server));
        *self.credentials.lock().unwrap_or_else(|p| p.into_inner()) = credentials;
        Ok(())
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Connects to the node `node` at `addr`; fails unless the peer proves it holds that
    /// node's key.
    pub async fn connect(&self, addr: SocketAddr, node: NodeId) -> Result<Connection, NetError> {
        let fail = |reason: String| NetError::Connect { node, addr, reason };
        let (chain, key) = self
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let algorithms = provider().signature_verification_algorithms;
        let other_node = Arc::new(AtomicBool::new(false));
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fail(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer {
                expected: node,
                algorithms,
                other_node: other_node.clone(),
            }))
            .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(key.as_slice().to_vec().into()))
            .map_err(|e| fail(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| fail(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(transport());
        // The server name is not checked (the key is pinned); the NodeId is a valid one.
        let connecting = self
            .inner
            .connect_with(client, addr, &node.to_string())
            .map_err(|e| fail(e.to_string()))?;
        let connection = connecting.await.map_err(|e| {
            if other_node.load(Ordering::Relaxed) {
                NetError::WrongNode { node, addr }
            } else {
                fail(e.to_string())
            }
        })?;
        let (peer, earlier) = peer_ids(&connection)
            .ok_or_else(|| fail("the peer presented no node certificate".into()))?;
        Ok(Connection {
            inner: connection,
            peer,
            earlier,
        })
    }

    /// The next incoming connection, with the caller's NodeId; `None` once closed.
    pub async fn accept(&self) -> Option<Result<Connection, NetError>> {
        Some(self.incoming().await?.accept().await)
    }

    /// The next connection attempt, before its handshake: the caller may refuse it (a
    /// budget of connections per address) before it costs a handshake.
    pub async fn incoming(&self) -> Option<Incoming> {
        self.inner.accept().await.map(Incoming)
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.inner.close(0u32.into(), b"closing");
    }
}

/// A connection attempt whose handshake has not run yet.
#[derive(Debug)]
pub struct Incoming(quinn::Incoming);

impl Incoming {
    /// Where it comes from (a UDP source address, not proven until the handshake ends).
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Refuses it at once (the peer sees CONNECTION_REFUSED).
    pub fn refuse(self) {
        self.0.refuse();
    }

    /// Runs the handshake; the connection, with the caller's NodeId.
    pub async fn accept(self) -> Result<Connection, NetError> {
        let connection = self
            .0
            .await
            .map_err(|e| NetError::Incoming(e.to_string()))?;
        let (peer, earlier) = peer_ids(&connection)
            .ok_or_else(|| NetError::Incoming("no node certificate".into()))?;
        Ok(Connection {
            inner: connection,
            peer,
            earlier,
        })
    }
}

/// The NodeId the peer's certificate holds, and its earlier NodeIds its renewal
/// certificates prove.
fn peer_ids(connection: &quinn::Connection) -> Option<(NodeId, Vec<NodeId>)> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let (leaf, rest) = certs.split_first()?;
    let peer = cert_node_id(leaf)?;
    Some((peer, earlier_ids(peer, rest)))
}

/// A connection to a known node.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    peer: NodeId,
    earlier: Vec<NodeId>,
}

impl Connection {
    /// The node at the other end, proven by the handshake (its current key).
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The peer's earlier NodeIds (it renewed its key), newest first, each proven by a
    /// certificate signed with the key before.
    pub fn earlier_ids(&self) -> &[NodeId] {
        &self.earlier
    }

    /// The address of the other end.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// The current round-trip estimate.
    pub fn rtt(&self) -> std::time::Duration {
        self.inner.rtt()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.close_reason().is_some()
    }

    /// Closes the connection (idle, or the node is going away).
    pub fn close(&self, reason: &str) {
        self.inner.close(0u32.into(), reason.as_bytes());
    }

    /// Waits until the connection ends.
    pub async fn closed(&self) {
        self.inner.closed().await;
    }

    /// Bytes sent and received on the wire so far (UDP payloads, all streams).
    pub fn wire_bytes(&self) -> (u64, u64) {
        let stats = self.inner.stats();
        (stats.udp_tx.bytes, stats.udp_rx.bytes)
    }

    /// Opens a stream for one call.
    pub async fn open(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
        self.inner.open_bi().await
    }

    /// Accepts the next call's stream.
    pub async fn accept(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
        self.inner.accept_bi().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{MAX_FRAME, expect_frame, write_frame};

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[tokio::test]
    async fn nodes_meet_by_node_id_and_call_over_a_stream() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let a = Endpoint::bind(loopback(), &alice).unwrap();
        let b = Endpoint::bind(loopback(), &bob).unwrap();
        let b_addr = b.local_addr().unwrap();
        let bob_id = bob.node_id();
        let server = tokio::spawn(async move {
            let conn = b.accept().await.unwrap().unwrap();
            let peer = conn.peer();
            let (mut send, mut recv) = conn.accept().await.unwrap();
            let ask: String = expect_frame(&mut recv, MAX_FRAME).await.unwrap();
            write_frame(&mut send, &format!("{ask} back"))
                .await
                .unwrap();
            send.finish().unwrap();
            let _ = send.stopped().await;
            peer
        });
        let conn = a.connect(b_addr, bob_id).await.unwrap();
        assert_eq!(conn.peer(), bob_id);
        let (mut send, mut recv) = conn.open().await.unwrap();
        write_frame(&mut send, &"ping".to_string()).await.unwrap();
        let answer: String = expect_frame(&mut recv, MAX_FRAME).await.unwrap();
        assert_eq!(answer, "ping back");
        assert_eq!(
            server.await.unwrap(),
            alice.node_id(),
            "the listener learns the caller"
        );
    }

    #[tokio::test]
    async fn a_node_is_refused_unless_it_is_the_one_pinned() {
        let alice = Identity::generate();
        let bob = Identity::generate();
        let mallory = Identity::generate();
        let a = Endpoint::bind(loopback(), &alice).unwrap();
        let m = Endpoint::bind(loopback(), &mallory).unwrap();
        let m_addr = m.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = m.accept().await {
                let _ = incoming;
            }
        });
        // Alice dials Bob's NodeId, but Mallory answers at that address.
        let err = a.connect(m_addr, bob.node_id()).await.unwrap_err();
        assert!(err.to_string().contains("another node"), "{err}");
        assert!(matches!(err, NetError::WrongNode { .. }), "{err:?}");
    }
}
