//! A links file of any bytes: loading never panics; every skipped record names a
//! line that exists, with a reason; a file refused (nothing valid, or mostly
//! invalid) says which lines; the strict load fails exactly when a record was
//! skipped; and what loaded resolves without panicking.
#![no_main]

use clickedge::links::{load_str, resolve, LineError, LoadError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count();
    let check = |errors: &[LineError]| {
        for error in errors {
            assert!(
                (1..=lines).contains(&error.line),
                "line {} of {lines}: {}",
                error.line,
                error.reason.0
            );
            assert!(!error.reason.0.is_empty(), "a skipped line without a reason");
        }
    };
    let lenient = match load_str(text, "fuzz", false) {
        Ok(loaded) => loaded,
        Err(LoadError::NoValidRecords { errors, .. }) => return check(&errors),
        Err(LoadError::MostlyInvalid { valid, errors, .. }) => {
            assert!(errors.len() > valid);
            return check(&errors);
        }
        Err(other) => panic!("a lenient load of text failed: {other}"),
    };
    check(&lenient.invalid);
    let strict = load_str(text, "fuzz", true);
    assert_eq!(strict.is_err(), !lenient.invalid.is_empty());
    assert!(lenient.map.len() <= lenient.valid);

    // Every record's key as the topic and the API would send it.
    for line in text.lines() {
        let _ = clickedge::links::RecordKey::parse_text(line);
    }
    for host in ["acme.sjv.io", "a", ""] {
        let _ = resolve(&lenient.map, host, "/c/1/2/3", 0);
        let _ = resolve(&lenient.map, host, "/x", 0);
    }
});
