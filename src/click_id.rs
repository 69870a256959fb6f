//! Click ids (SPEC §3): ULIDs, 48-bit millisecond time then 80 random bits, in
//! 26-character Crockford base32. Unique across nodes without coordination, sortable
//! by time, and made from a thread-local RNG: no lock on the hot path.

use std::fmt;
use std::time::SystemTime;

use ulid::Ulid;

/// A click id as text, kept on the stack.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClickId([u8; ulid::ULID_LEN]);

impl ClickId {
    /// A new id stamped with `now`.
    pub fn generate(now: SystemTime) -> ClickId {
        ClickId::from_ulid(Ulid::from_datetime(now))
    }

    fn from_ulid(ulid: Ulid) -> ClickId {
        let mut text = [0u8; ulid::ULID_LEN];
        ulid.array_to_str(&mut text);
        ClickId(text)
    }

    /// Accepts a well-formed id (as in a `ce_vid` cookie), normalized to upper case.
    pub fn parse(text: &str) -> Option<ClickId> {
        // 26 base32 digits hold 130 bits: a first digit above 7 overflows 128.
        if text.len() != ulid::ULID_LEN || text.as_bytes()[0] > b'7' {
            return None;
        }
        Ulid::from_string(text).ok().map(ClickId::from_ulid)
    }

    pub fn as_str(&self) -> &str {
        // Crockford base32 output is ASCII.
        std::str::from_utf8(&self.0).expect("ULID text is ASCII")
    }

    /// The millisecond timestamp the id carries.
    pub fn timestamp_ms(&self) -> u64 {
        Ulid::from_string(self.as_str())
            .map(|u| u.timestamp_ms())
            .unwrap_or(0)
    }
}

impl fmt::Display for ClickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ClickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClickId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn ids_are_26_crockford_characters_with_their_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let id = ClickId::generate(now);
        assert_eq!(id.as_str().len(), 26);
        assert!(id
            .as_str()
            .bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)));
        assert_eq!(id.timestamp_ms(), 1_790_000_000_123);
    }

    #[test]
    fn ids_sort_by_time() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_000);
        let ids: Vec<ClickId> = (0..1000)
            .map(|i| ClickId::generate(base + Duration::from_millis(i)))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let now = SystemTime::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..10_000)
                        .map(|_| ClickId::generate(now))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for handle in handles {
            for id in handle.join().unwrap() {
                assert!(seen.insert(id), "duplicate {id}");
            }
        }
        assert_eq!(seen.len(), 40_000);
    }

    #[test]
    fn parse_accepts_ids_and_refuses_garbage() {
        let id = ClickId::generate(SystemTime::now());
        assert_eq!(ClickId::parse(id.as_str()), Some(id));
        assert_eq!(ClickId::parse(&id.as_str().to_lowercase()), Some(id));
        assert_eq!(ClickId::parse("not-a-ulid"), None);
        assert_eq!(ClickId::parse("UUUUUUUUUUUUUUUUUUUUUUUUUU"), None);
        assert_eq!(
            ClickId::parse("ZZZZZZZZZZZZZZZZZZZZZZZZZZ"),
            None,
            "overflows 128 bits"
        );
    }
}
