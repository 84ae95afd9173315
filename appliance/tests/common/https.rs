//! The whole daemon's console over real HTTPS (rustls, trusting the console's own
//! certificate only), and a daemon claimed through it.

use std::net::SocketAddr;
use std::sync::Arc;

use appliance::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::InProcess;

/// An HTTP/1.1 answer: the status, the header block and the body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// The daemon's console over HTTPS, trusting its certificate only.
pub(crate) struct Https {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: tokio_rustls::TlsConnector,
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

/// A TLS client (HTTP/1.1) for the daemon's console that trusts its own certificate only,
/// as an admin who compared its fingerprint.
pub(crate) fn connector(
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

impl Https {
    pub(crate) fn new(daemon: &InProcess, state: &std::path::Path) -> Https {
        let cert = std::fs::read(state.join("console/console-cert.der")).unwrap();
        let url = daemon.console_url();
        Https {
            addr: url.strip_prefix("https://").unwrap().parse().unwrap(),
            tls: connector(&cert.into()),
            cookie: String::new(),
            csrf: String::new(),
        }
    }

    /// One request on its own connection: the body is written in 64 KiB pieces while the
    /// answer is read, as a client streaming a file does.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = self.tls.connect(name, tcp).await.unwrap();
        let (mut read, mut write) = tokio::io::split(stream);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if !self.cookie.is_empty() {
            head.push_str(&format!("Cookie: {}\r\n", self.cookie));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let body = body.to_vec();
        let writer = tokio::spawn(async move {
            write.write_all(head.as_bytes()).await?;
            for piece in body.chunks(64 * 1024) {
                write.write_all(piece).await?;
            }
            write.flush().await
        });
        let mut answer = Vec::new();
        match read.read_to_end(&mut answer).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
            Err(e) => panic!("{method} {path}: {e}"),
        }
        let _ = writer.await;
        parse(&answer)
    }

    /// A JSON API call with the session and its CSRF token.
    pub(crate) async fn api(&self, method: &str, path: &str, body: Value) -> Answer {
        let body = body.to_string();
        let headers = [
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", self.csrf.as_str()),
        ];
        self.send(method, path, &headers, body.as_bytes()).await
    }

    /// A bundle to `POST /api/update` (`query` after the path), with `extra` headers.
    pub(crate) async fn upload(
        &self,
        query: &str,
        bundle: &[u8],
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut headers = vec![
            ("Content-Type", "application/octet-stream"),
            ("X-CSRF-Token", self.csrf.as_str()),
        ];
        headers.extend_from_slice(extra);
        let path = format!("/api/update{query}");
        self.send("POST", &path, &headers, bundle).await
    }
}

/// Splits an HTTP/1.1 answer, decoding a chunked body.
pub(crate) fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head.to_owned();
    let status = head[9..12].parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    Answer { status, head, body }
}

/// The daemon in this process, with `update_socket` at the box's installer, claimed
/// through the API; the admin's HTTPS session and the recovery code.
pub(crate) async fn claimed(
    dir: &std::path::Path,
    socket: &std::path::Path,
) -> (InProcess, Https, String) {
    let state = dir.join("state");
    let config = Config {
        state_dir: state.clone(),
        console_listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: None,
        update_socket: socket.to_owned(),
        ..Config::default()
    };
    let daemon = InProcess::start(config).await;
    let mut https = Https::new(&daemon, &state);
    let code = daemon.started.setup_code.clone().unwrap();
    let setup = json!({ "setup_code": code, "password": super::ADMIN_PASSWORD, "confirm": super::ADMIN_PASSWORD, "passphrase": super::ADMIN_PASSWORD });
    let answer = https.api("POST", "/api/setup", setup).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let cookie = answer.header("set-cookie").unwrap();
    https.cookie = cookie.split(';').next().unwrap().to_owned();
    https.csrf = answer.json()["csrf"].as_str().unwrap().to_owned();
    let recovery = answer.json()["recovery_code"].as_str().unwrap().to_owned();
    (daemon, https, recovery)
}
