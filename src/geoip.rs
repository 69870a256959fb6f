//! The client's country from a MaxMind DB (`--geoip-db`, e.g. GeoLite2-Country),
//! for link rules and the click event (SPEC §9).
//!
//! The file is read into memory rather than mapped: `maxminddb`'s map is
//! `unsafe` (the crate forbids unsafe code), and for good reason here — a
//! database updated by copying over the file in place would change the bytes
//! under a mapping and could crash the edge; read whole, a reload swaps in a
//! complete new copy. A country database is ~10 MB.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use maxminddb::{path, Reader};

#[derive(Debug, thiserror::Error)]
#[error("--geoip-db {}: {reason}", path.display())]
pub struct GeoIpError {
    pub path: PathBuf,
    pub reason: String,
}

/// One loaded database.
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    /// Its `database_type` (`GeoLite2-Country`), for `clickedge_geoip_info`.
    pub database: String,
    /// When it was built (Unix seconds), for `clickedge_geoip_info`.
    pub build_epoch: u64,
    /// The country of a data record, by the record's offset: a country
    /// database has a few hundred records for millions of networks, so a
    /// click mostly walks the tree and skips decoding the record's map.
    /// Direct-mapped, lock-free: each slot packs `offset + 1` (high 48 bits)
    /// and the code (low 16; `NO_COUNTRY` for none); 0 is an empty slot.
    decoded: Box<[AtomicU64]>,
}

const DECODED_SLOTS: usize = 1024;
const NO_COUNTRY: u64 = 0xffff;

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("database", &self.database)
            .field("build_epoch", &self.build_epoch)
            .finish()
    }
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        let reader = Reader::open_readfile(path).map_err(|error| GeoIpError {
            path: path.to_owned(),
            reason: format!("not a readable MaxMind DB: {error}"),
        })?;
        Ok(GeoIp {
            database: reader.metadata().database_type.clone(),
            build_epoch: reader.metadata().build_epoch,
            reader,
            decoded: (0..DECODED_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The ISO 3166-1 alpha-2 code of `ip`'s country; `None` for an address
    /// the database does not place (private ranges, unknown networks).
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let found = self.reader.lookup(ip.to_canonical()).ok()?;
        let offset = found.offset()? as u64;
        let slot = &self.decoded[offset as usize % DECODED_SLOTS];
        let cached = slot.load(Ordering::Relaxed);
        if cached >> 16 == offset + 1 {
            return unpack(cached & 0xffff);
        }
        let code: Option<&str> = found
            .decode_path(&path!["country", "iso_code"])
            .ok()
            .flatten();
        let country = code.and_then(|code| match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
            }
            _ => None,
        });
        let packed = country.map_or(NO_COUNTRY, |[a, b]| u64::from(a) << 8 | u64::from(b));
        slot.store((offset + 1) << 16 | packed, Ordering::Relaxed);
        country
    }
}

fn unpack(code: u64) -> Option<[u8; 2]> {
    (code != NO_COUNTRY).then_some([(code >> 8) as u8, code as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by the tests' own writer (Debian's
    /// libmaxmind-db-writer-perl); `None` where it is not installed.
    fn written(networks: &[&str]) -> Option<(tempfile::TempDir, PathBuf)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.mmdb");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/write_geoip.pl");
        let status = std::process::Command::new("perl")
            .arg(script)
            .arg(&path)
            .arg("1790000000")
            .args(networks)
            .status()
            .ok()?;
        if !status.success() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide libmaxmind-db-writer-perl"
            );
            return None;
        }
        Some((dir, path))
    }

    #[test]
    fn countries_by_network_v4_v6_and_mapped() {
        let Some((_dir, path)) = written(&[
            "203.0.113.0/24=DE",
            "198.51.100.0/24=fr",
            "2001:db8::/32=AT",
        ]) else {
            return;
        };
        let geoip = GeoIp::open(&path).unwrap();
        assert_eq!(geoip.database, "clickedge-Test-Country");
        assert_eq!(geoip.build_epoch, 1_790_000_000);
        let country = |ip: &str| {
            geoip
                .country(ip.parse().unwrap())
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
        };
        assert_eq!(country("203.0.113.9").as_deref(), Some("DE"));
        assert_eq!(
            country("198.51.100.1").as_deref(),
            Some("FR"),
            "upper-cased"
        );
        assert_eq!(country("2001:db8::1").as_deref(), Some("AT"));
        assert_eq!(
            country("::ffff:203.0.113.9").as_deref(),
            Some("DE"),
            "a v4-mapped address"
        );
        assert_eq!(country("192.0.2.1"), None, "not in the database");
        // Again, from the decoded-record cache: the same answers.
        for _ in 0..3 {
            assert_eq!(country("203.0.113.77").as_deref(), Some("DE"));
            assert_eq!(country("198.51.100.1").as_deref(), Some("FR"));
            assert_eq!(country("2001:db8::2").as_deref(), Some("AT"));
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.mmdb");
        std::fs::write(&path, b"not a database").unwrap();
        let error = GeoIp::open(&path).unwrap_err().to_string();
        assert!(
            error.contains("bad.mmdb") && error.contains("not a readable MaxMind DB"),
            "{error}"
        );
        assert!(GeoIp::open(&dir.path().join("missing.mmdb")).is_err());
    }
}
