//! Counts TLS handshakes per second against a server: `full` makes a new session
//! every time, `resumed` reuses one client session cache. SNI is set (servers
//! that pick certificates by name need it; `openssl s_time` 3.0 cannot send it).
//! The certificate is not verified: the client spends its CPU on handshakes only.
//! Used by `loadtest/tls_vs_nginx.sh`.
//!
//! cargo run --release --example tls_handshakes -- 127.0.0.1:8443 acme.sjv.io 10 full

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn config(resume: bool) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(NoVerify))
    .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, sni, seconds, mode) = (
        args[1].clone(),
        args[2].clone(),
        args[3].parse::<u64>().unwrap(),
        args[4].clone(),
    );
    let resume = mode == "resumed";
    let connector = tokio_rustls::TlsConnector::from(config(resume));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (connector, done, addr, sni) =
            (connector.clone(), done.clone(), addr.clone(), sni.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let Ok(mut tls) = connector
                    .connect(ServerName::try_from(sni.clone()).unwrap(), tcp)
                    .await
                else {
                    continue;
                };
                // One request, so TLS 1.3 tickets arrive before the next connection.
                let request = format!(
                    "GET /c/1/5678/9012 HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
                );
                if tls.write_all(request.as_bytes()).await.is_ok() {
                    let mut sink = Vec::new();
                    let _ = tls.read_to_end(&mut sink).await;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    println!(
        "{:.0}",
        done.load(Ordering::Relaxed) as f64 / seconds as f64
    );
}
