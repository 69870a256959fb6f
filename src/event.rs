//! The click event (SPEC §4): one JSON object per tracked GET, schema `click.v1`.

use serde::Serialize;
use time::OffsetDateTime;

/// The value of the `schema` header on every click message.
pub const SCHEMA_HEADER: &str = "schema";
pub const SCHEMA_VERSION: &str = "click.v1";

/// Borrowed views of the request and the resolution: serializing allocates only the
/// output buffer.
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
    pub ip: String,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub accept_language: Option<&'a str>,
    pub device: &'a str,
    pub os: &'a str,
    pub bot: bool,
    pub scheme: &'a str,
    pub node: &'a str,
}

impl ClickEvent<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(768);
        serde_json::to_writer(&mut out, self).expect("a click event always serializes");
        out
    }
}

fn ts_millis<S: serde::Serializer>(ts: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    let ts = ts.to_offset(time::UtcOffset::UTC);
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        ts.year(),
        u8::from(ts.month()),
        ts.day(),
        ts.hour(),
        ts.minute(),
        ts.second(),
        ts.millisecond()
    );
    serializer.serialize_str(&text)
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
            ip: "203.0.113.9".into(),
            user_agent: None,
            referer: None,
            accept_language: None,
            device: "desktop",
            os: "other",
            bot: false,
            scheme: "http",
            node: "edge-1",
        };
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
        ];
        let mut sorted_expected = expected.to_vec();
        sorted_expected.sort();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort();
        assert_eq!(sorted_keys, sorted_expected);
    }
}
