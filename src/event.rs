//! The click event (SPEC §4): one JSON object per tracked GET, schema `click.v1`.

use std::io::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;

/// The value of the `schema` header on every click message.
pub const SCHEMA_HEADER: &str = "schema";
pub const SCHEMA_VERSION: &str = "click.v1";

/// Borrowed views of the request and the resolution: serializing allocates only the
/// output buffer.
///
/// [`ClickEvent::to_json`] writes the JSON by hand, once per click: serde_json's
/// generic string escaping was the request path's largest user-space cost
/// (~7,000 instructions per click of ~33,000, callgrind). The `Serialize` derive
/// stays as the reference the tests compare the hand-written output with.
#[derive(Debug, Serialize)]
pub struct ClickEvent<'a> {
    pub v: u8,
    pub click_id: &'a str,
    /// RFC 3339 UTC with milliseconds: the same instant as the click id's timestamp.
    #[serde(serialize_with = "ts_millis")]
    pub ts: OffsetDateTime,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub outcome: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub partner_id: Option<&'a str>,
    pub ad_id: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub slug: Option<&'a str>,
    pub location: &'a str,
    pub status: u16,
    pub shared_id: Option<&'a str>,
    pub sub_ids: [Option<&'a str>; 3],
    pub deeplink: Option<&'a str>,
    pub visitor_id: Option<&'a str>,
    pub new_visitor: bool,
    pub ip: IpAddr,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub accept_language: Option<&'a str>,
    pub device: &'a str,
    pub os: &'a str,
    pub bot: bool,
    pub scheme: &'a str,
    pub node: &'a str,
    /// SPEC §9: the rule that gave the destination, the split's variant (by
    /// index), the client's country (ISO 3166-1 alpha-2), a test click.
    pub rule: Option<u32>,
    pub variant: Option<u32>,
    pub country: Option<&'a str>,
    pub test: bool,
}

impl ClickEvent<'_> {
    /// The event as compact JSON, fields in schema order: byte for byte what
    /// `serde_json::to_vec` of the derive writes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(768);
        self.write_json(&mut out);
        out
    }

    /// [`ClickEvent::to_json`] appended to `buf` (the worker's batch: no buffer of
    /// its own per click).
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        let mut out = Json(buf);
        out.raw(b"{\"v\":");
        out.number(u64::from(self.v));
        out.field("click_id", self.click_id);
        out.raw(b",\"ts\":\"");
        out.timestamp(&self.ts);
        out.raw(b"\"");
        out.field("type", self.kind);
        out.field("outcome", self.outcome);
        out.field("host", self.host);
        out.field("path", self.path);
        out.optional_field("partner_id", self.partner_id);
        out.optional_field("ad_id", self.ad_id);
        out.optional_field("campaign_id", self.campaign_id);
        out.optional_field("slug", self.slug);
        out.field("location", self.location);
        out.raw(b",\"status\":");
        out.number(u64::from(self.status));
        out.optional_field("shared_id", self.shared_id);
        out.raw(b",\"sub_ids\":[");
        for (i, sub_id) in self.sub_ids.iter().enumerate() {
            if i > 0 {
                out.raw(b",");
            }
            out.optional_string(*sub_id);
        }
        out.raw(b"]");
        out.optional_field("deeplink", self.deeplink);
        out.optional_field("visitor_id", self.visitor_id);
        out.raw(b",\"new_visitor\":");
        out.boolean(self.new_visitor);
        out.raw(b",\"ip\":\"");
        out.ip(self.ip);
        out.raw(b"\"");
        out.optional_field("user_agent", self.user_agent);
        out.optional_field("referer", self.referer);
        out.optional_field("accept_language", self.accept_language);
        out.field("device", self.device);
        out.field("os", self.os);
        out.raw(b",\"bot\":");
        out.boolean(self.bot);
        out.field("scheme", self.scheme);
        out.field("node", self.node);
        out.optional_number("rule", self.rule);
        out.optional_number("variant", self.variant);
        out.optional_field("country", self.country);
        out.raw(b",\"test\":");
        out.boolean(self.test);
        out.raw(b"}");
    }
}

/// A JSON output buffer with the few value kinds a click event has.
struct Json<'b>(&'b mut Vec<u8>);

impl Json<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// `,"name":`: names are constants that need no escaping.
    fn key(&mut self, name: &str) {
        self.raw(b",\"");
        self.raw(name.as_bytes());
        self.raw(b"\":");
    }

    fn field(&mut self, name: &str, value: &str) {
        self.key(name);
        self.string(value);
    }

    fn optional_field(&mut self, name: &str, value: Option<&str>) {
        self.key(name);
        self.optional_string(value);
    }

    fn optional_number(&mut self, name: &str, value: Option<u32>) {
        self.key(name);
        match value {
            Some(n) => self.number(u64::from(n)),
            None => self.raw(b"null"),
        }
    }

    fn optional_string(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.string(value),
            None => self.raw(b"null"),
        }
    }

    /// A JSON string. Clicks' strings almost never need escaping, so whole 16-byte
    /// chunks are checked at once (the check vectorizes) and copied as they are.
    fn string(&mut self, value: &str) {
        self.0.push(b'"');
        let bytes = value.as_bytes();
        let mut start = 0;
        let mut chunks = bytes.chunks_exact(16);
        let mut at = 0;
        for chunk in chunks.by_ref() {
            if chunk.iter().fold(false, |any, &b| any | needs_escape(b)) {
                self.escaped(&bytes[start..at], chunk);
                start = at + 16;
            }
            at += 16;
        }
        let rest = chunks.remainder();
        if rest.iter().any(|&b| needs_escape(b)) {
            self.escaped(&bytes[start..at], rest);
        } else {
            self.0.extend_from_slice(&bytes[start..]);
        }
        self.0.push(b'"');
    }

    /// Writes `clean`, then `chunk` with its special bytes escaped as serde_json
    /// does (short escapes where JSON has them, else `\u00XX`).
    fn escaped(&mut self, clean: &[u8], chunk: &[u8]) {
        self.0.extend_from_slice(clean);
        for &b in chunk {
            match b {
                b'"' => self.raw(b"\\\""),
                b'\\' => self.raw(b"\\\\"),
                b'\n' => self.raw(b"\\n"),
                b'\r' => self.raw(b"\\r"),
                b'\t' => self.raw(b"\\t"),
                0x08 => self.raw(b"\\b"),
                0x0c => self.raw(b"\\f"),
                b if b < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.raw(b"\\u00");
                    self.0.push(HEX[usize::from(b >> 4)]);
                    self.0.push(HEX[usize::from(b & 0xf)]);
                }
                b => self.0.push(b),
            }
        }
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.0.extend_from_slice(&digits[at..]);
    }

    fn boolean(&mut self, value: bool) {
        self.raw(if value { b"true" } else { b"false" });
    }

    /// `n` as exactly `width` digits.
    fn padded(&mut self, n: u32, width: usize) {
        let mut digits = [b'0'; 4];
        let mut n = n;
        for at in (0..width).rev() {
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.0.extend_from_slice(&digits[..width]);
    }

    /// RFC 3339, UTC, milliseconds: `2026-11-21T10:00:00.123Z`.
    fn timestamp(&mut self, ts: &OffsetDateTime) {
        let ts = ts.to_offset(time::UtcOffset::UTC);
        self.padded(ts.year().clamp(0, 9999) as u32, 4);
        self.0.push(b'-');
        self.padded(u32::from(u8::from(ts.month())), 2);
        self.0.push(b'-');
        self.padded(u32::from(ts.day()), 2);
        self.0.push(b'T');
        self.padded(u32::from(ts.hour()), 2);
        self.0.push(b':');
        self.padded(u32::from(ts.minute()), 2);
        self.0.push(b':');
        self.padded(u32::from(ts.second()), 2);
        self.0.push(b'.');
        self.padded(u32::from(ts.millisecond()), 3);
        self.0.push(b'Z');
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push(b'.');
                    }
                    self.number(u64::from(octet));
                }
            }
            // Rare on the edge; std's formatting picks the canonical short form.
            IpAddr::V6(v6) => {
                let _ = write!(self.0, "{v6}");
            }
        }
    }
}

/// Bytes JSON strings must escape: control characters, `"` and `\`.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

pub(crate) fn ts_millis<S: serde::Serializer>(
    ts: &OffsetDateTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut text = Vec::with_capacity(24);
    Json(&mut text).timestamp(ts);
    serializer.serialize_str(std::str::from_utf8(&text).expect("digits and punctuation"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_every_field_of_the_schema() {
        let ts = OffsetDateTime::from_unix_timestamp_nanos(1_795_255_200_123_456_789).unwrap();
        let event = ClickEvent {
            v: 1,
            click_id: "01JD",
            ts,
            kind: "tracking",
            outcome: "redirect",
            host: "acme.sjv.io",
            path: "/c/1/2/3",
            partner_id: Some("1"),
            ad_id: Some("2"),
            campaign_id: Some("3"),
            slug: None,
            location: "https://a/",
            status: 302,
            shared_id: None,
            sub_ids: [Some("a"), None, None],
            deeplink: None,
            visitor_id: None,
            new_visitor: false,
            ip: "203.0.113.9".parse().unwrap(),
            user_agent: None,
            referer: None,
            accept_language: None,
            device: "desktop",
            os: "other",
            bot: false,
            scheme: "http",
            node: "edge-1",
            rule: Some(2),
            variant: None,
            country: Some("DE"),
            test: true,
        };
        assert_eq!(event.to_json(), serde_json::to_vec(&event).unwrap());
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(value["ts"], "2026-11-21T10:00:00.123Z");
        assert_eq!(value["type"], "tracking");
        assert_eq!(value["sub_ids"], serde_json::json!(["a", null, null]));
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let expected = [
            "v",
            "click_id",
            "ts",
            "type",
            "outcome",
            "host",
            "path",
            "partner_id",
            "ad_id",
            "campaign_id",
            "slug",
            "location",
            "status",
            "shared_id",
            "sub_ids",
            "deeplink",
            "visitor_id",
            "new_visitor",
            "ip",
            "user_agent",
            "referer",
            "accept_language",
            "device",
            "os",
            "bot",
            "scheme",
            "node",
            "rule",
            "variant",
            "country",
            "test",
        ];
        let mut sorted_expected = expected.to_vec();
        sorted_expected.sort();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort();
        assert_eq!(sorted_keys, sorted_expected);
    }

    fn event_with<'a>(text: &'a str, optional: Option<&'a str>, ip: IpAddr) -> ClickEvent<'a> {
        ClickEvent {
            v: 1,
            click_id: text,
            ts: OffsetDateTime::from_unix_timestamp_nanos(1_795_255_200_007_000_000).unwrap(),
            kind: text,
            outcome: "redirect",
            host: text,
            path: text,
            partner_id: optional,
            ad_id: None,
            campaign_id: optional,
            slug: optional,
            location: text,
            status: 307,
            shared_id: optional,
            sub_ids: [optional, None, Some(text)],
            deeplink: optional,
            visitor_id: None,
            new_visitor: true,
            ip,
            user_agent: Some(text),
            referer: optional,
            accept_language: None,
            device: "mobile",
            os: "ios",
            bot: true,
            scheme: "https",
            node: text,
            rule: optional.map(|o| o.len() as u32),
            variant: Some(text.len() as u32),
            country: optional,
            test: optional.is_some(),
        }
    }

    proptest::proptest! {
        /// The hand-written JSON is serde_json's, byte for byte, whatever the
        /// strings hold (quotes, backslashes, control bytes, any Unicode) and at
        /// every length around the 16-byte chunks.
        #[test]
        fn hand_written_json_is_serde_json(
            text in "[\\x00-\\x1f\"\\\\a-z/?=&%\\u{e9}\\u{1f600}]{0,70}",
            optional in proptest::option::of("[\\x00-\\x7f\\u{80}-\\u{10ffff}]{0,40}"),
            v6 in proptest::prelude::any::<bool>(),
            octets in proptest::prelude::any::<[u8; 16]>(),
        ) {
            let ip = if v6 {
                IpAddr::from(octets)
            } else {
                IpAddr::from([octets[0], octets[1], octets[2], octets[3]])
            };
            let event = event_with(&text, optional.as_deref(), ip);
            let (hand_written, serde) = (event.to_json(), serde_json::to_vec(&event).unwrap());
            proptest::prop_assert_eq!(
                String::from_utf8_lossy(&hand_written),
                String::from_utf8_lossy(&serde)
            );
        }
    }
}
