//! Reading what the edge needs from a request: its host, headers as text, the
//! visitor cookie and the privacy signals.

use std::borrow::Cow;

use http::header::{COOKIE, HOST};
use http::{HeaderName, Request};

use crate::click_id::ClickId;

/// The visitor cookie's name.
pub const VISITOR_COOKIE: &str = "ce_vid";

/// The host a request is for: the absolute-form authority, else `Host`.
pub fn request_host<B>(request: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(HOST)?.to_str().ok()?,
    };
    crate::host::normalize(raw)
}

/// A header as text, replacing bytes that are not UTF-8 rather than dropping it.
pub fn header_text<'r, B>(request: &'r Request<B>, name: &HeaderName) -> Option<Cow<'r, str>> {
    let value = request.headers().get(name)?;
    Some(match value.to_str() {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(value.as_bytes()),
    })
}

/// `Sec-GPC: 1` or `DNT: 1`: the visitor cookie is neither read nor set.
pub fn asks_not_to_be_tracked<B>(request: &Request<B>) -> bool {
    let is_one = |name: &str| {
        request
            .headers()
            .get(name)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
    };
    is_one("sec-gpc") || is_one("dnt")
}

/// The visitor id from a well-formed `ce_vid` cookie.
pub fn visitor_cookie<B>(request: &Request<B>) -> Option<ClickId> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == VISITOR_COOKIE)
        .and_then(|c| ClickId::parse(c.value()))
}

/// The `Set-Cookie` value for a new visitor: a year, HTTP only, not sent on
/// cross-site subrequests, and `Secure` when the click came over TLS.
pub fn visitor_set_cookie(visitor: &str, secure: bool) -> String {
    const ATTRIBUTES: &str = "; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax";
    // Pieces pushed, not `format!`: this runs for every new visitor's click.
    let mut cookie = String::with_capacity(96);
    cookie.push_str(VISITOR_COOKIE);
    cookie.push('=');
    cookie.push_str(visitor);
    cookie.push_str(ATTRIBUTES);
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_visitor_cookie_is_found_among_others_and_checked() {
        let id = ClickId::generate(std::time::SystemTime::now());
        let cookie = format!("a=1; ce_vid={id}; b=2");
        assert_eq!(visitor_cookie(&request(&[("cookie", &cookie)])), Some(id));
        assert_eq!(
            visitor_cookie(&request(&[("cookie", "ce_vid=garbage")])),
            None
        );
        assert_eq!(visitor_cookie(&request(&[])), None);
    }

    #[test]
    fn privacy_signals() {
        assert!(asks_not_to_be_tracked(&request(&[("Sec-GPC", "1")])));
        assert!(asks_not_to_be_tracked(&request(&[("DNT", "1")])));
        assert!(!asks_not_to_be_tracked(&request(&[("DNT", "0")])));
        assert!(!asks_not_to_be_tracked(&request(&[])));
    }
}
