//! TLS for the tests: a rustls client that accepts any certificate and tells
//! which one the server presented, certificate directories laid out as an
//! operator would, and a request over HTTP/2 or HTTP/1.1 as ALPN chose.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::BROWSER_UA;

/// Accepts any certificate, but remembers the one the server presented, so a
/// test can check which certificate SNI picked.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Option<CertificateDer<'static>>>);

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection to `addr` with SNI `name`; returns the stream and the DNS names
/// of the certificate the server presented.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<(TlsStream<TcpStream>, Vec<String>)> {
    connect_after(addr, b"", name, alpn).await
}

/// As `connect`, with `preamble` (a PROXY header) sent before the handshake.
pub async fn connect_after(
    addr: SocketAddr,
    preamble: &[u8],
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<(TlsStream<TcpStream>, Vec<String>)> {
    use tokio::io::AsyncWriteExt;
    let recorder = Arc::new(Recorder::default());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(recorder.clone())
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(preamble).await?;
    let stream = connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await?;
    let der = recorder
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("a certificate was presented");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect();
    Ok((stream, names))
}

/// A self-signed PEM pair `{stem}.crt` + `{stem}.key` for `names` in `dir`.
pub fn write_pair(dir: &Path, stem: &str, names: &[&str]) {
    let cert =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
}

/// A certificate directory as an operator would lay it out: a PEM pair, and a
/// mounted Kubernetes TLS Secret.
pub fn cert_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "tracking", &["acme.sjv.io", "*.acme-deals.com"]);
    let secret = dir.path().join("acmeradio-tls");
    std::fs::create_dir(&secret).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec![
        "acmeradio.example".to_string(),
        "www.acmeradio.example".to_string(),
    ])
    .unwrap();
    std::fs::write(secret.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(secret.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("broken.crt"),
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    dir
}

pub async fn https_get(
    stream: TlsStream<TcpStream>,
    host: &str,
    target: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = |uri: String| {
        hyper::Request::get(uri)
            .header("host", host)
            .header("user-agent", BROWSER_UA)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        sender
            .send_request(request(format!("https://{host}{target}")))
            .await
            .unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
            .send_request(request(target.to_owned()))
            .await
            .unwrap()
    }
}
