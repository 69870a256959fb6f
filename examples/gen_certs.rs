//! Writes N self-signed certificates (ECDSA P-256) as `--tls-certs` takes them:
//! `domainI.crt` + `domainI.key`, each for `domainI.example` and `www.domainI.example`.
//! Used by `loadtest/tls_scale.sh`.
//!
//! cargo run --release --example gen_certs -- 10000 /var/tmp/certs

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("usage: gen_certs N DIR");
    let dir = std::path::PathBuf::from(args.next().expect("usage: gen_certs N DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..count {
        let names = vec![
            format!("domain{i}.example"),
            format!("www.domain{i}.example"),
        ];
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        std::fs::write(dir.join(format!("domain{i}.crt")), cert.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("domain{i}.key")),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
    }
}
