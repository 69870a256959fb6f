//! The app interstitial (SPEC §2 "Mobile apps"): one small self-contained page
//! offering "Open in the app", "Get the app" and "Continue to the website".
//!
//! No script, no external resource: the Content-Security-Policy allows nothing
//! but this page's own stylesheet, pinned by its SHA-256. Every value is
//! HTML-escaped. Its links go straight to the app, the store and the destination,
//! never back to the edge, so following one makes no second click.

use std::sync::OnceLock;

use base64::Engine as _;
use html_escape::{encode_double_quoted_attribute as attribute, encode_text as text};

use crate::useragent::Os;

/// Large tap targets, readable on a phone, light and dark.
const STYLE: &str = "\
:root{color-scheme:light dark;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}\
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;background:Canvas;color:CanvasText}\
main{width:100%;max-width:26rem;padding:1.5rem;box-sizing:border-box}\
h1{font-size:1.4rem;margin:0 0 .5rem}\
p{margin:0 0 1.5rem;line-height:1.4;opacity:.8;overflow-wrap:anywhere}\
a{display:block;margin:.75rem 0;padding:1rem;border-radius:.75rem;text-align:center;font-size:1.1rem;font-weight:600;text-decoration:none;border:2px solid #2563eb;color:#2563eb}\
a.primary{background:#2563eb;color:#fff}\
a:focus-visible{outline:3px solid #f59e0b;outline-offset:2px}";

/// The page's Content-Security-Policy.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    })
}

/// What the page offers.
pub struct Choices<'a> {
    /// The destination's host, named in the text.
    pub site: &'a str,
    pub deeplink: Option<&'a str>,
    pub store: Option<&'a str>,
    pub os: Os,
    /// The normal destination, click id included.
    pub website: &'a str,
}

pub fn render(choices: &Choices<'_>) -> String {
    let store_name = match choices.os {
        Os::Ios => "the App Store",
        _ => "Google Play",
    };
    let mut page = String::with_capacity(2048 + STYLE.len());
    page.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">");
    page.push_str(
        "<meta name=\"robots\" content=\"noindex\"><title>Open in the app</title><style>",
    );
    page.push_str(STYLE);
    page.push_str("</style></head><body><main><h1>Open in the app?</h1><p>");
    page.push_str("You are on your way to <strong>");
    page.push_str(&text(choices.site));
    page.push_str("</strong>.</p><nav aria-label=\"Where to continue\">");
    if let Some(deeplink) = choices.deeplink {
        page.push_str("<a class=\"primary\" id=\"open-app\" href=\"");
        page.push_str(&attribute(deeplink));
        page.push_str("\">Open in the app</a>");
    }
    if let Some(store) = choices.store {
        page.push_str("<a id=\"get-app\" href=\"");
        page.push_str(&attribute(store));
        page.push_str("\" aria-label=\"Get the app on ");
        page.push_str(store_name);
        page.push_str("\">Get the app</a>");
    }
    page.push_str("<a id=\"website\" href=\"");
    page.push_str(&attribute(choices.website));
    page.push_str("\">Continue to the website</a></nav></main></body></html>");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_escaped() {
        let page = render(&Choices {
            site: "<script>alert(1)</script>",
            deeplink: Some("acme://x\"><script>alert(2)</script>"),
            store: Some("https://apps.apple.com/app/id1?a=1&b='2'"),
            os: Os::Ios,
            website: "https://www.acme.com/?q=\"onmouseover=alert(3)",
        });
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("\"onmouseover"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(
            page.contains("https://apps.apple.com/app/id1?a=1&amp;b='2'"),
            "{page}"
        );
        assert!(page.contains("Get the app on the App Store"));
    }

    #[test]
    fn the_csp_pins_the_stylesheet_and_allows_no_script() {
        let csp = content_security_policy();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        assert!(
            !csp.contains("script-src") && !csp.contains("unsafe"),
            "{csp}"
        );
        // The hash is of exactly the stylesheet the page carries.
        let page = render(&Choices {
            site: "a",
            deeplink: None,
            store: None,
            os: Os::Android,
            website: "https://a/",
        });
        let style = page
            .split("<style>")
            .nth(1)
            .unwrap()
            .split("</style>")
            .next()
            .unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        assert!(csp.contains(&hash));
        assert!(
            !page.contains("open-app") && !page.contains("get-app"),
            "absent choices are left out"
        );
    }
}
