//! TLS certificates (SPEC §6): every certificate under `--tls-certs` is loaded,
//! `NAME.crt` + `NAME.key` pairs or folders holding `tls.crt` + `tls.key` (a
//! mounted Kubernetes TLS Secret, as cert-manager writes them), and chosen by SNI
//! against the DNS names inside the certificate (its SANs, wildcards included), so
//! file names do not matter. An unknown SNI gets no certificate.
//!
//! A broken file is reported and skipped; the others keep serving. The directory
//! is reloaded on SIGHUP and when its files change, without a restart: a new
//! handshake sees the new set, connections already up are not touched.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// One certificate in service.
#[derive(Debug)]
pub struct LoadedCert {
    /// The file's or folder's name, for logs and the expiry metric.
    pub name: String,
    /// Its DNS names, lowercase (`*.example.com` for a wildcard).
    pub names: Vec<String>,
    /// `notAfter`, in Unix seconds.
    pub not_after: i64,
    key: Arc<CertifiedKey>,
}

/// Certificates by name, swapped whole on reload.
#[derive(Debug, Default)]
pub struct CertIndex {
    exact: HashMap<String, Arc<LoadedCert>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<LoadedCert>>,
    pub certs: Vec<Arc<LoadedCert>>,
}

impl CertIndex {
    /// The certificate for an SNI name: an exact name, else a wildcard one label up.
    pub fn find(&self, server_name: &str) -> Option<&Arc<LoadedCert>> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        self.exact.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }

    fn add(&mut self, cert: Arc<LoadedCert>) {
        for name in &cert.names {
            let table = match name.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
                None => (&mut self.exact, name.clone()),
            };
            let (map, key) = table;
            // Two certificates for one name: the one valid longer serves it.
            match map.get(&key) {
                Some(current) if current.not_after >= cert.not_after => {}
                _ => {
                    map.insert(key, cert.clone());
                }
            }
        }
        self.certs.push(cert);
    }
}

/// A file that could not be loaded, and why.
#[derive(Debug, Clone)]
pub struct CertError {
    pub path: PathBuf,
    pub reason: String,
}

/// The certificates in service, and where they come from.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
    index: ArcSwap<CertIndex>,
}

impl CertStore {
    /// Loads the directory. Fails only when it cannot be read at all.
    pub fn load(dir: &Path) -> std::io::Result<(Arc<CertStore>, Vec<CertError>)> {
        let (index, errors) = load_dir(dir)?;
        let store = Arc::new(CertStore {
            dir: dir.to_owned(),
            index: ArcSwap::from_pointee(index),
        });
        Ok((store, errors))
    }

    pub fn index(&self) -> Arc<CertIndex> {
        self.index.load_full()
    }

    /// Loads the directory again and swaps the set in; an unreadable directory
    /// keeps the current set.
    pub fn reload(&self) -> std::io::Result<(usize, Vec<CertError>)> {
        let (index, errors) = load_dir(&self.dir)?;
        let count = index.certs.len();
        self.index.store(Arc::new(index));
        Ok((count, errors))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `clickedge_tls_certificate_expiry_timestamp_seconds{name}` for the set in
    /// service now (rendered from it, so a removed certificate leaves no series).
    pub fn render_expiry(&self, out: &mut String) {
        let index = self.index.load();
        use crate::metrics::{help, TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS as NAME};
        let _ = writeln!(out, "# HELP {NAME} {}", help(NAME));
        let _ = writeln!(out, "# TYPE {NAME} gauge");
        for cert in &index.certs {
            let name = cert.name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "clickedge_tls_certificate_expiry_timestamp_seconds{{name=\"{name}\"}} {}",
                cert.not_after
            );
        }
    }
}

/// Answers each handshake from the set in service.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertStore>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name()?;
        self.0.index.load().find(name).map(|cert| cert.key.clone())
    }
}

/// The rustls configuration of the HTTPS listener: TLS 1.2 and 1.3, the server's
/// cipher order, ALPN h2 and http/1.1, session resumption by tickets (RFC 5077 on
/// TLS 1.2, TLS 1.3 tickets) and by session ids from a cache.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order (rustls' provider order: AEAD suites, forward secrecy,
    // strongest first) rather than whatever a client prefers.
    config.ignore_client_order = true;
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    Ok(Arc::new(config))
}

/// Finds the certificate pairs under `dir` and loads each.
fn load_dir(dir: &Path) -> std::io::Result<(CertIndex, Vec<CertError>)> {
    let mut pairs = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // Kubernetes' `..data` links and the like.
        }
        if path.is_dir() {
            let (crt, key) = (path.join("tls.crt"), path.join("tls.key"));
            if crt.is_file() && key.is_file() {
                pairs.push((name, crt, key));
            }
        } else if let Some(stem) = name.strip_suffix(".crt") {
            pairs.push((
                stem.to_owned(),
                path.clone(),
                dir.join(format!("{stem}.key")),
            ));
        }
    }
    let mut index = CertIndex::default();
    let mut errors = Vec::new();
    for (name, crt, key) in pairs {
        match load_pair(&name, &crt, &key) {
            Ok(cert) => index.add(Arc::new(cert)),
            Err(reason) => errors.push(CertError { path: crt, reason }),
        }
    }
    Ok((index, errors))
}

fn load_pair(name: &str, crt: &Path, key: &Path) -> Result<LoadedCert, String> {
    let chain = CertificateDer::pem_file_iter(crt)
        .map_err(|e| format!("cannot read certificates: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    let leaf = chain.first().ok_or("no certificate in the file")?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("unsupported key {}: {e}", key.display()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        Some(dns.trim_end_matches('.').to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err("the certificate names no DNS name (subjectAltName)".into());
    }
    let certified = CertifiedKey::new(chain.clone(), signer);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(LoadedCert {
        name: name.to_owned(),
        names,
        not_after: parsed.validity().not_after.timestamp(),
        key: Arc::new(certified),
    })
}

/// Reloads `store` whenever a file under its directory changes (checked every
/// `every`), calling `reloaded` with the outcome. Polling sees what inotify misses
/// across the symlink swaps of a mounted Secret.
pub fn watch(
    store: Arc<CertStore>,
    every: Duration,
    reloaded: impl Fn(std::io::Result<(usize, Vec<CertError>)>) + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("tls-watch".into())
        .spawn(move || {
            let mut seen = fingerprint(store.dir());
            loop {
                std::thread::sleep(every);
                let now = fingerprint(store.dir());
                if now != seen {
                    seen = now;
                    info!(message = "Certificate files changed; reloading.", dir = %store.dir().display());
                    reloaded(store.reload());
                }
            }
        });
    if let Err(error) = spawned {
        warn!(message = "Cannot watch the certificate directory; reload with SIGHUP.", %error);
    }
}

/// Names, sizes and modification times of the files two levels down.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut found = Vec::new();
    let mut visit = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            found.push((path, meta.len(), meta.modified().ok()));
        }
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                if let Ok(inner) = std::fs::read_dir(&path) {
                    for file in inner.filter_map(Result::ok) {
                        visit(file.path());
                    }
                }
            } else {
                visit(path);
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, stem: &str, names: &[&str]) {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{stem}.key")),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
    }

    #[test]
    fn names_come_from_the_certificate_and_wildcards_match_one_label() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "whatever", &["acme.sjv.io", "*.acme-deals.com"]);
        let secret = dir.path().join("radio-secret");
        std::fs::create_dir(&secret).unwrap();
        let cert =
            rcgen::generate_simple_self_signed(vec!["acmeradio.example".to_string()]).unwrap();
        std::fs::write(secret.join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(secret.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("broken.crt"), "not a certificate").unwrap();

        let (store, errors) = CertStore::load(dir.path()).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].path.ends_with("broken.crt"));
        let index = store.index();
        assert_eq!(index.certs.len(), 2);
        assert_eq!(index.find("ACME.sjv.io.").unwrap().name, "whatever");
        assert_eq!(
            index.find("summer.acme-deals.com").unwrap().name,
            "whatever"
        );
        assert!(
            index.find("acme-deals.com").is_none(),
            "a wildcard is not its apex"
        );
        assert!(index.find("a.b.acme-deals.com").is_none(), "one label only");
        assert_eq!(
            index.find("acmeradio.example").unwrap().name,
            "radio-secret"
        );
        assert!(index.find("unknown.example").is_none());
        let mut text = String::new();
        store.render_expiry(&mut text);
        assert!(
            text.contains("clickedge_tls_certificate_expiry_timestamp_seconds{name=\"whatever\"}"),
            "{text}"
        );
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "a", &["a.example"]);
        write_cert(dir.path(), "b", &["b.example"]);
        std::fs::copy(dir.path().join("b.key"), dir.path().join("a.key")).unwrap();
        let (store, errors) = CertStore::load(dir.path()).unwrap();
        assert_eq!(store.index().certs.len(), 1);
        assert!(errors[0].reason.contains("does not match"), "{errors:?}");
    }
}
