//! Link records, the map they form, and how a request finds its record (SPEC §2).

mod key;
mod map;
mod parse;
mod record;
mod resolve;
pub mod rules;
mod snapshot;
mod store;

use std::fmt;
use std::path::{Path, PathBuf};

pub use key::RecordKey;
pub use map::{HostLinks, LinkCounts, LinkMap};
pub use parse::{is_query_name, is_valid_id, parse_record, parse_record_with, LoadCache};
pub use record::{
    AppLink, AppSite, Brand, Id, Link, LinkKind, Record, RecordError, RedirectStatus,
};
pub use resolve::{resolve, AppSiteFile, Route};
pub use snapshot::{SnapshotError, TopicSnapshot};
pub use store::{Change, LinkStore};

/// The sample links served when no `--links` file is given, so that a first
/// `cargo run` redirects something real.
pub const SAMPLE_LINKS: &str = include_str!("../../examples/links.ndjson");

/// An invalid record: where it is and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based, as editors count.
    pub line: usize,
    pub reason: RecordError,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A map that loaded, with the records that were skipped.
#[derive(Debug)]
pub struct Loaded {
    pub map: LinkMap,
    /// Valid lines read (a later record with the same key counts again).
    pub valid: usize,
    pub invalid: Vec<LineError>,
}

/// Why a links file did not become the map. The previous map stays in service.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read links file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name} holds no valid link record{}", list(errors))]
    NoValidRecords {
        source_name: String,
        errors: Vec<LineError>,
    },
    #[error(
        "{source_name} has more invalid records ({}) than valid ones ({valid}); refusing it as garbled or the wrong file{}",
        errors.len(), list(errors)
    )]
    MostlyInvalid {
        source_name: String,
        valid: usize,
        errors: Vec<LineError>,
    },
    #[error("{source_name} has {} invalid record(s) and --strict is set{}", errors.len(), list(errors))]
    Strict {
        source_name: String,
        errors: Vec<LineError>,
    },
}

impl LoadError {
    /// The invalid lines behind the error, if it is about the content.
    pub fn line_errors(&self) -> &[LineError] {
        match self {
            LoadError::Read { .. } => &[],
            LoadError::NoValidRecords { errors, .. }
            | LoadError::MostlyInvalid { errors, .. }
            | LoadError::Strict { errors, .. } => errors,
        }
    }
}

/// Lists line errors in a message, but not ten thousand of them.
fn list(errors: &[LineError]) -> String {
    const SHOWN: usize = 20;
    let mut out = String::new();
    for error in errors.iter().take(SHOWN) {
        out.push_str("\n  ");
        out.push_str(&error.to_string());
    }
    if errors.len() > SHOWN {
        out.push_str(&format!("\n  … and {} more", errors.len() - SHOWN));
    }
    out
}

/// Where the links come from: a file, or the embedded sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinksSource {
    File(PathBuf),
    Sample,
}

impl LinksSource {
    pub fn load(&self, strict: bool) -> Result<Loaded, LoadError> {
        match self {
            LinksSource::File(path) => load_file(path, strict),
            LinksSource::Sample => load_str(SAMPLE_LINKS, "the embedded sample links", strict),
        }
    }
}

impl fmt::Display for LinksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinksSource::File(path) => write!(f, "{}", path.display()),
            LinksSource::Sample => f.write_str("embedded sample (examples/links.ndjson)"),
        }
    }
}

/// Loads a links file. Blocks of lines are parsed on every core while this thread
/// applies the results in file order, so a later record with the same key still
/// replaces an earlier one.
pub fn load_file(path: &Path, strict: bool) -> Result<Loaded, LoadError> {
    use std::collections::BTreeMap;
    use std::io::Read;

    const BLOCK: usize = 4 << 20;
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);

    let mut loader = Loader::default();
    let read = std::thread::scope(|scope| -> std::io::Result<()> {
        // (block number, number of its first line, whole lines)
        let (blocks_tx, blocks_rx) =
            crossbeam_channel::bounded::<(usize, usize, Vec<u8>)>(workers * 2);
        let (parsed_tx, parsed_rx) = crossbeam_channel::bounded::<(
            usize,
            Vec<(usize, Result<Record, RecordError>)>,
        )>(workers * 2);
        for _ in 0..workers {
            let (blocks, parsed) = (blocks_rx.clone(), parsed_tx.clone());
            scope.spawn(move || {
                let mut cache = LoadCache::default();
                for (number, first_line, bytes) in blocks {
                    let records = bytes
                        .split(|b| *b == b'\n')
                        .enumerate()
                        .filter_map(|(i, line)| {
                            let line_number = first_line + i;
                            let Ok(line) = std::str::from_utf8(line) else {
                                return Some((
                                    line_number,
                                    Err(RecordError("not valid UTF-8".into())),
                                ));
                            };
                            let line = line.trim();
                            (!line.is_empty() && !line.starts_with('#'))
                                .then(|| (line_number, parse_record_with(line, &mut cache)))
                        })
                        .collect();
                    if parsed.send((number, records)).is_err() {
                        return;
                    }
                }
            });
        }
        drop((blocks_rx, parsed_tx));

        // The reader: blocks cut at the last newline, the rest carried over.
        let reader = scope.spawn(move || -> std::io::Result<()> {
            let mut carry: Vec<u8> = Vec::new();
            let (mut number, mut first_line) = (0, 1);
            loop {
                let mut block = std::mem::take(&mut carry);
                let start = block.len();
                block.resize(start + BLOCK, 0);
                let n = file.read(&mut block[start..])?;
                block.truncate(start + n);
                let at_end = n == 0;
                // Whole lines go now; a partial last line waits for the next read.
                let cut = if at_end {
                    block.len()
                } else {
                    block.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
                };
                carry = block.split_off(cut);
                if !block.is_empty() {
                    let lines = block.iter().filter(|b| **b == b'\n').count();
                    if blocks_tx.send((number, first_line, block)).is_err() {
                        return Ok(());
                    }
                    number += 1;
                    first_line += lines;
                }
                if at_end {
                    return Ok(());
                }
            }
        });

        let mut waiting = BTreeMap::new();
        let mut next = 0;
        for (number, records) in parsed_rx {
            waiting.insert(number, records);
            while let Some(records) = waiting.remove(&next) {
                for (line_number, record) in records {
                    loader.accept(line_number, record);
                }
                next += 1;
            }
        }
        reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader panicked")))
    });
    read.map_err(read_error)?;
    loader.finish(&path.display().to_string(), strict)
}

/// Loads NDJSON text: one record per line; blank lines and `#` comments are skipped.
pub fn load_str(text: &str, source_name: &str, strict: bool) -> Result<Loaded, LoadError> {
    let mut loader = Loader::default();
    for line in text.lines() {
        loader.line(line);
    }
    loader.finish(source_name, strict)
}

/// Builds a map line by line, sharing hosts and destinations.
#[derive(Default)]
struct Loader {
    map: LinkMap,
    cache: LoadCache,
    line_number: usize,
    valid: usize,
    invalid: Vec<LineError>,
}

impl Loader {
    fn line(&mut self, line: &str) {
        self.line_number += 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return;
        }
        let record = parse_record_with(trimmed, &mut self.cache);
        self.accept(self.line_number, record);
    }

    fn accept(&mut self, line: usize, record: Result<Record, RecordError>) {
        match record {
            Ok(record) => {
                self.map.upsert(record);
                self.valid += 1;
            }
            Err(reason) => self.invalid.push(LineError { line, reason }),
        }
    }

    fn finish(self, source_name: &str, strict: bool) -> Result<Loaded, LoadError> {
        let Loader {
            map,
            valid,
            invalid,
            ..
        } = self;
        let source_name = source_name.to_owned();
        if strict && !invalid.is_empty() {
            return Err(LoadError::Strict {
                source_name,
                errors: invalid,
            });
        }
        if valid == 0 {
            return Err(LoadError::NoValidRecords {
                source_name,
                errors: invalid,
            });
        }
        if invalid.len() > valid {
            return Err(LoadError::MostlyInvalid {
                source_name,
                valid,
                errors: invalid,
            });
        }
        Ok(Loaded {
            map,
            valid,
            invalid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"type":"fallback","host":"a.io","url":"https://a.com/"}"#;

    #[test]
    fn invalid_lines_are_reported_with_number_and_skipped() {
        let text = format!("# comment\n\n{GOOD}\n{{\"type\":\"vanity\"}}\n{GOOD}\n");
        let loaded = load_str(&text, "t", false).unwrap();
        assert_eq!(loaded.valid, 2);
        assert_eq!(loaded.map.len(), 1, "same key replaces");
        assert_eq!(loaded.invalid.len(), 1);
        assert_eq!(loaded.invalid[0].line, 4);
        assert!(loaded.invalid[0].reason.0.contains("host"));
    }

    #[test]
    fn strict_refuses_any_invalid_record() {
        let text = format!("{GOOD}\nnot json\n");
        let err = load_str(&text, "links.ndjson", true).unwrap_err();
        assert!(matches!(err, LoadError::Strict { .. }));
        let message = err.to_string();
        assert!(message.contains("line 2: not valid JSON"), "{message}");
    }

    #[test]
    fn a_file_without_valid_records_fails() {
        assert!(matches!(
            load_str("# only a comment\n", "t", false),
            Err(LoadError::NoValidRecords { .. })
        ));
    }

    #[test]
    fn more_invalid_than_valid_fails() {
        let text = format!("{GOOD}\nx\ny\n");
        let err = load_str(&text, "t", false).unwrap_err();
        assert!(matches!(err, LoadError::MostlyInvalid { valid: 1, .. }));
        assert_eq!(err.line_errors().len(), 2);
        // A tie still loads: only outnumbering refuses.
        assert!(load_str(&format!("{GOOD}\nx\n"), "t", false).is_ok());
    }

    #[test]
    fn a_file_of_many_blocks_keeps_file_order_and_line_numbers() {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let record = |ad: usize, url: &str| {
            format!(
                "{{\"type\":\"tracking\",\"host\":\"a.io\",\"campaign_id\":\"1\",\"ad_id\":\"{ad}\",\"url\":\"{url}\"}}\n"
            )
        };
        // About 20 MB: several blocks. Line 1 and the last line share a key.
        let mut text = record(0, "https://first.example/");
        let lines = 200_000;
        for ad in 1..lines {
            text.push_str(&record(ad, "https://middle.example/"));
        }
        text.push_str("not json\n");
        text.push_str(&record(0, "https://last.example/"));
        assert!(text.len() > 3 * (4 << 20));
        file.write_all(text.as_bytes()).unwrap();

        let loaded = load_file(file.path(), false).unwrap();
        assert_eq!(loaded.valid, lines + 1);
        assert_eq!(loaded.map.len(), lines);
        assert_eq!(loaded.invalid.len(), 1);
        assert_eq!(
            loaded.invalid[0].line,
            lines + 1,
            "line numbers run across blocks"
        );
        let winner = loaded.map.host("a.io").unwrap().tracking("1", "0").unwrap();
        assert_eq!(
            winner.destination.as_str(),
            "https://last.example/",
            "the later record wins"
        );
        let middle = loaded
            .map
            .host("a.io")
            .unwrap()
            .tracking("1", "100000")
            .unwrap();
        assert_eq!(middle.destination.as_str(), "https://middle.example/");
        // The same text read sequentially agrees.
        let sequential = load_str(&text, "t", false).unwrap();
        assert_eq!(sequential.map.len(), loaded.map.len());
        assert_eq!(sequential.invalid, loaded.invalid);
    }

    #[test]
    fn the_sample_links_load_cleanly() {
        let loaded = LinksSource::Sample.load(true).unwrap();
        let counts = loaded.map.counts();
        assert!(counts.tracking > 0 && counts.vanity > 0);
        assert!(counts.domain > 0 && counts.fallback > 0);
    }
}
