//! Host names, in one place: what a request's `Host` is compared as, and what a
//! record's `host` or a deep-link host must look like.

use std::borrow::Cow;

/// A `Host` value (or absolute-form authority) made comparable with record hosts:
/// lowercase, no port, no trailing dot. `None` when there is no usable host.
pub fn normalize(raw: &str) -> Option<Cow<'_, str>> {
    let raw = raw.rsplit('@').next().unwrap_or(raw).trim();
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        &raw[..=raw.find(']')?]
    } else {
        match raw.rfind(':') {
            Some(colon) if raw[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..colon],
            Some(_) => return None,
            None => raw,
        }
    };
    let host = without_trailing_dot(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// `host` without one trailing dot: `acme.com.` is `acme.com` (the root label).
pub fn without_trailing_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// Dot-separated non-empty labels of letters, digits, `-` and `_`: what DNS
/// resolves (international names in punycode). No scheme, port, path, `*` or
/// empty label.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        for (raw, want) in [
            ("acme.sjv.io", Some("acme.sjv.io")),
            ("ACME.sjv.IO", Some("acme.sjv.io")),
            ("acme.sjv.io:8080", Some("acme.sjv.io")),
            ("acme.sjv.io.", Some("acme.sjv.io")),
            ("Acme.Sjv.Io.:443", Some("acme.sjv.io")),
            ("[::1]:8080", Some("[::1]")),
            ("user@acme.sjv.io", Some("acme.sjv.io")),
            ("", None),
            (":80", None),
            ("acme:x", None),
        ] {
            assert_eq!(normalize(raw).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn host_names_are_labels_of_the_dns_alphabet() {
        for good in [
            "acme.com",
            "a",
            "xn--bcher-kva.example",
            "my_host.acme-shop.com",
            "ACME.com",
        ] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in [
            "",
            ".acme.com",
            "acme..com",
            "acme.com.",
            "*.acme.com",
            "acme.com:80",
            "a/b",
            "a b",
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
        assert_eq!(without_trailing_dot("acme.com."), "acme.com");
        assert_eq!(without_trailing_dot("acme.com"), "acme.com");
    }
}
