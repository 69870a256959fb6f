//! One link record: parsed from a JSON object and validated (SPEC §2).
//!
//! Everything a request needs is checked and precomputed here, once, at load time:
//! lowercase hosts and slugs, the destination split into parts, the validity window
//! in milliseconds. The request path then only compares and copies.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::destination::{Destination, HostPattern};

/// The redirect status a record may ask for. Never 301: browsers cache it and later
/// clicks would never reach the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectStatus {
    Found,
    TemporaryRedirect,
}

impl RedirectStatus {
    pub fn code(self) -> u16 {
        match self {
            RedirectStatus::Found => 302,
            RedirectStatus::TemporaryRedirect => 307,
        }
    }
}

/// The kinds of record that answer with a redirect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkKind {
    Tracking,
    Vanity,
    Domain,
    Fallback,
}

impl LinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Tracking => "tracking",
            LinkKind::Vanity => "vanity",
            LinkKind::Domain => "domain",
            LinkKind::Fallback => "fallback",
        }
    }
}

/// A record that redirects: tracking link, vanity URL, unique domain or fallback.
#[derive(Debug)]
pub struct Link {
    pub kind: LinkKind,
    /// Lowercase, no port, no trailing dot: compared as-is with the normalized `Host`.
    pub host: Box<str>,
    /// Vanity only; lowercase, because slugs match case-insensitively.
    pub slug: Option<Box<str>>,
    /// Vanity and domain records name their partner; a tracking link's partner comes
    /// from the request path instead.
    pub partner_id: Option<Box<str>>,
    pub campaign_id: Option<Box<str>>,
    pub ad_id: Option<Box<str>>,
    pub destination: Destination,
    /// Hosts a `u=` deep link may point at; empty means every deep link is rejected.
    pub deeplink_hosts: Box<[HostPattern]>,
    /// Mobile app settings, kept so records carrying them load (served by a later
    /// issue).
    pub app: Option<Value>,
    pub status: RedirectStatus,
    pub forward_query: bool,
    /// Per-record override of `--click-id-param`.
    pub click_id_param: Option<Box<str>>,
    /// Validity window in Unix milliseconds, inclusive start, exclusive end.
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
}

impl Link {
    /// Whether the record is in service at `now_ms`; outside its window a request is
    /// treated as unmatched.
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.valid_from_ms.is_none_or(|from| now_ms >= from)
            && self.valid_until_ms.is_none_or(|until| now_ms < until)
    }
}

/// The app-site association files a host serves (answered, never redirected).
#[derive(Debug)]
pub struct AppSite {
    pub host: Box<str>,
    /// Serialized once at load, served as-is.
    pub apple_app_site_association: Option<Box<str>>,
    pub assetlinks: Option<Box<str>>,
}

#[derive(Clone, Debug)]
pub enum Record {
    Link(Arc<Link>),
    AppSite(Arc<AppSite>),
}

/// A record's identity: a later record with the same key replaces the earlier one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordKey {
    Tracking {
        host: Box<str>,
        campaign_id: Box<str>,
        ad_id: Box<str>,
    },
    Vanity {
        host: Box<str>,
        slug: Box<str>,
    },
    Domain {
        host: Box<str>,
    },
    Fallback {
        host: Box<str>,
    },
    AppSite {
        host: Box<str>,
    },
}

/// The text form is the links topic's message key: `tracking|acme.sjv.io|9012|5678`.
impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordKey::Tracking {
                host,
                campaign_id,
                ad_id,
            } => write!(f, "tracking|{host}|{campaign_id}|{ad_id}"),
            RecordKey::Vanity { host, slug } => write!(f, "vanity|{host}|{slug}"),
            RecordKey::Domain { host } => write!(f, "domain|{host}"),
            RecordKey::Fallback { host } => write!(f, "fallback|{host}"),
            RecordKey::AppSite { host } => write!(f, "app_site|{host}"),
        }
    }
}

impl RecordKey {
    /// A key object as `DELETE /admin/links` takes it: the record's `type` and its
    /// key fields, e.g. `{"type":"vanity","host":"acme.pxf.io","slug":"janes-picks"}`.
    pub fn from_object(obj: &Map<String, Value>) -> Result<RecordKey, RecordError> {
        let kind = match obj.get("type") {
            Some(Value::String(s)) => s.as_str(),
            None => return Err(invalid("missing field `type`")),
            Some(_) => return Err(invalid("field `type` must be a string")),
        };
        let host = normalize_record_host(required_str(obj, "host")?)?;
        RecordKey::build(kind, host, |field| match field {
            "slug" => parse_slug(required_str(obj, "slug")?),
            id => required_id(obj, id),
        })
    }

    /// The text form, as the links topic keys its messages:
    /// `tracking|acme.sjv.io|9012|5678`, `vanity|acme.pxf.io|janes-picks`.
    pub fn parse_text(text: &str) -> Result<RecordKey, RecordError> {
        let mut parts = text.split('|');
        let kind = parts.next().unwrap_or_default();
        let host =
            normalize_record_host(parts.next().ok_or_else(|| invalid("the key has no host"))?)?;
        let fields: Vec<&str> = parts.collect();
        let expected = match kind {
            "tracking" => 2,
            "vanity" => 1,
            _ => 0,
        };
        if fields.len() != expected {
            return Err(invalid(format!(
                "key {text:?} is not `type|host[|…]` as the record type `{kind}` needs"
            )));
        }
        RecordKey::build(kind, host, |field| {
            let value = match field {
                "campaign_id" | "slug" => fields[0],
                _ => fields[1],
            };
            if field == "slug" {
                parse_slug(value)
            } else if is_valid_id(value) {
                Ok(value.into())
            } else {
                Err(invalid(format!("`{field}` {value:?} is not an id")))
            }
        })
    }

    fn build(
        kind: &str,
        host: Box<str>,
        mut field: impl FnMut(&str) -> Result<Box<str>, RecordError>,
    ) -> Result<RecordKey, RecordError> {
        Ok(match kind {
            "tracking" => RecordKey::Tracking {
                host,
                campaign_id: field("campaign_id")?,
                ad_id: field("ad_id")?,
            },
            "vanity" => RecordKey::Vanity {
                host,
                slug: field("slug")?,
            },
            "domain" => RecordKey::Domain { host },
            "fallback" => RecordKey::Fallback { host },
            "app_site" => RecordKey::AppSite { host },
            other => return Err(invalid(format!("unknown type `{other}`"))),
        })
    }
}

impl Record {
    pub fn key(&self) -> RecordKey {
        match self {
            Record::AppSite(site) => RecordKey::AppSite {
                host: site.host.clone(),
            },
            Record::Link(link) => {
                let host = link.host.clone();
                match link.kind {
                    LinkKind::Tracking => RecordKey::Tracking {
                        host,
                        campaign_id: link.campaign_id.clone().unwrap_or_default(),
                        ad_id: link.ad_id.clone().unwrap_or_default(),
                    },
                    LinkKind::Vanity => RecordKey::Vanity {
                        host,
                        slug: link.slug.clone().unwrap_or_default(),
                    },
                    LinkKind::Domain => RecordKey::Domain { host },
                    LinkKind::Fallback => RecordKey::Fallback { host },
                }
            }
        }
    }

    /// The `type` label of `clickedge_links{type}`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Record::Link(link) => link.kind.as_str(),
            Record::AppSite(_) => "app_site",
        }
    }
}

/// Why one record was refused. The loader adds the line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

fn invalid(reason: impl Into<String>) -> RecordError {
    RecordError(reason.into())
}

/// Parses one NDJSON line into a validated record.
pub fn parse_record(line: &str) -> Result<Record, RecordError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(invalid("a record must be a JSON object"));
    };
    record_from_object(&obj)
}

/// Validates a record already parsed as a JSON object.
pub fn record_from_object(obj: &Map<String, Value>) -> Result<Record, RecordError> {
    let kind = match obj.get("type") {
        None => return Err(invalid("missing field `type`")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid("field `type` must be a string")),
    };
    let host = normalize_record_host(required_str(obj, "host")?)?;
    let kind = match kind {
        "tracking" => LinkKind::Tracking,
        "vanity" => LinkKind::Vanity,
        "domain" => LinkKind::Domain,
        "fallback" => LinkKind::Fallback,
        "app_site" => return app_site_from_object(obj, host),
        other => {
            return Err(invalid(format!(
                "unknown type `{other}` (expected tracking, vanity, domain, fallback or app_site)"
            )))
        }
    };

    let needs_ids = kind != LinkKind::Fallback;
    let campaign_id = if needs_ids {
        Some(required_id(obj, "campaign_id")?)
    } else {
        None
    };
    let ad_id = if needs_ids {
        Some(required_id(obj, "ad_id")?)
    } else {
        None
    };
    let partner_id = match kind {
        LinkKind::Vanity | LinkKind::Domain => Some(required_id(obj, "partner_id")?),
        _ => None,
    };
    let slug = match kind {
        LinkKind::Vanity => Some(parse_slug(required_str(obj, "slug")?)?),
        _ => None,
    };

    let url = required_str(obj, "url")?;
    let destination =
        Destination::parse(url).map_err(|reason| invalid(format!("field `url`: {reason}")))?;

    let status = match obj.get("status") {
        None | Some(Value::Null) => RedirectStatus::Found,
        Some(v) => match v.as_u64() {
            Some(302) => RedirectStatus::Found,
            Some(307) => RedirectStatus::TemporaryRedirect,
            Some(301) => {
                return Err(invalid(
                    "field `status` 301 is not allowed: browsers cache it and later clicks would not reach the edge (use 302 or 307)",
                ))
            }
            _ => return Err(invalid("field `status` must be 302 or 307")),
        },
    };

    // Fallback records only redirect; the optional link fields belong to the others.
    let deeplink_hosts = match obj.get("deeplink_hosts") {
        None | Some(Value::Null) => Box::default(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => HostPattern::parse(s)
                    .map_err(|reason| invalid(format!("field `deeplink_hosts`: {reason}"))),
                _ => Err(invalid(
                    "field `deeplink_hosts` must be an array of host names",
                )),
            })
            .collect::<Result<Box<[_]>, _>>()?,
        Some(_) => {
            return Err(invalid(
                "field `deeplink_hosts` must be an array of host names",
            ))
        }
    };
    let app = match obj.get("app") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(invalid("field `app` must be an object")),
    };
    let forward_query = match obj.get("forward_query") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("field `forward_query` must be true or false")),
    };
    let click_id_param = match obj.get("click_id_param") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_query_name(s) => Some(s.as_str().into()),
        Some(_) => {
            return Err(invalid(
                "field `click_id_param` must be 1-64 characters of [A-Za-z0-9_.-]",
            ))
        }
    };
    let valid_from_ms = optional_time(obj, "valid_from")?;
    let valid_until_ms = optional_time(obj, "valid_until")?;
    if let (Some(from), Some(until)) = (valid_from_ms, valid_until_ms) {
        if from >= until {
            return Err(invalid("`valid_from` must be before `valid_until`"));
        }
    }

    Ok(Record::Link(Arc::new(Link {
        kind,
        host,
        slug,
        partner_id,
        campaign_id,
        ad_id,
        destination,
        deeplink_hosts,
        app,
        status,
        forward_query,
        click_id_param,
        valid_from_ms,
        valid_until_ms,
    })))
}

fn app_site_from_object(obj: &Map<String, Value>, host: Box<str>) -> Result<Record, RecordError> {
    let apple_app_site_association = match obj.get("apple_app_site_association") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.to_string().into_boxed_str()),
        Some(_) => {
            return Err(invalid(
                "field `apple_app_site_association` must be a JSON object",
            ))
        }
    };
    let assetlinks = match obj.get("assetlinks") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Array(_)) => Some(v.to_string().into_boxed_str()),
        Some(_) => return Err(invalid("field `assetlinks` must be a JSON array")),
    };
    if apple_app_site_association.is_none() && assetlinks.is_none() {
        return Err(invalid(
            "an app_site record needs `apple_app_site_association` and/or `assetlinks`",
        ));
    }
    Ok(Record::AppSite(Arc::new(AppSite {
        host,
        apple_app_site_association,
        assetlinks,
    })))
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, RecordError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(invalid(format!("missing field `{field}`"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("field `{field}` must be a string"))),
    }
}

/// Ids may be written as strings or, as people often do, as bare integers.
fn required_id(obj: &Map<String, Value>, field: &str) -> Result<Box<str>, RecordError> {
    let text = match obj.get(field) {
        None | Some(Value::Null) => return Err(invalid(format!("missing field `{field}`"))),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(_) => return Err(invalid(format!("field `{field}` must be a string"))),
    };
    if !is_valid_id(&text) {
        return Err(invalid(format!(
            "field `{field}` {text:?} is not an id: 1-64 characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(text.into_boxed_str())
}

fn optional_time(obj: &Map<String, Value>, field: &str) -> Result<Option<i64>, RecordError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
                invalid(format!(
                    "field `{field}` {s:?} is not an RFC 3339 time: {e}"
                ))
            })?;
            Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
        }
        Some(_) => Err(invalid(format!(
            "field `{field}` must be an RFC 3339 time string"
        ))),
    }
}

/// Partner, ad and campaign ids: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Query parameter names we write ourselves (the click id) must need no escaping.
pub fn is_query_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn parse_slug(slug: &str) -> Result<Box<str>, RecordError> {
    let ok = !slug.is_empty()
        && slug.len() <= 256
        && !slug.contains('/')
        && slug
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '?' && c != '#' && c != '%');
    if !ok {
        return Err(invalid(format!(
            "field `slug` {slug:?} must be 1-256 characters with no '/', '?', '#', '%' or white space"
        )));
    }
    Ok(slug.to_lowercase().into_boxed_str())
}

/// A record's host: a DNS name (or IP literal), lowercased, trailing dot removed.
fn normalize_record_host(host: &str) -> Result<Box<str>, RecordError> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !trimmed.starts_with('.')
        && !trimmed.contains("..");
    if !ok {
        return Err(invalid(format!(
            "field `host` {host:?} is not a host name (no scheme, port or path)"
        )));
    }
    Ok(trimmed.to_ascii_lowercase().into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(line: &str) -> Arc<Link> {
        match parse_record(line).unwrap() {
            Record::Link(link) => link,
            other => panic!("expected a link, got {other:?}"),
        }
    }

    #[test]
    fn tracking_record_parses_and_keys() {
        let rec = parse_record(
            r#"{"type":"tracking","host":"ACME.sjv.io.","campaign_id":"9012","ad_id":5678,"url":"https://www.acme.com/summer"}"#,
        )
        .unwrap();
        assert_eq!(rec.key().to_string(), "tracking|acme.sjv.io|9012|5678");
        assert_eq!(rec.type_name(), "tracking");
    }

    #[test]
    fn vanity_key_is_lowercase() {
        let rec = parse_record(
            r#"{"type":"vanity","host":"acme.pxf.io","slug":"Janes-Picks","partner_id":"1","campaign_id":"2","ad_id":"3","url":"https://acme.com/"}"#,
        )
        .unwrap();
        assert_eq!(rec.key().to_string(), "vanity|acme.pxf.io|janes-picks");
    }

    #[test]
    fn keys_parse_from_objects_and_text_normalized() {
        let obj = serde_json::json!({"type":"vanity","host":"ACME.pxf.io","slug":"Janes-Picks"});
        let key = RecordKey::from_object(obj.as_object().unwrap()).unwrap();
        assert_eq!(key.to_string(), "vanity|acme.pxf.io|janes-picks");
        for text in [
            "tracking|acme.sjv.io|9012|5678",
            "vanity|acme.pxf.io|janes-picks",
            "domain|acmeradio.example",
            "fallback|acme.sjv.io",
            "app_site|acme.sjv.io",
        ] {
            assert_eq!(RecordKey::parse_text(text).unwrap().to_string(), text);
        }
        for bad in [
            "tracking|a.io|1",
            "vanity|a.io",
            "teleport|a.io",
            "",
            "domain|a.io|x",
            "tracking|a.io|1|a b",
        ] {
            assert!(RecordKey::parse_text(bad).is_err(), "{bad}");
        }
        let obj = serde_json::json!({"type":"tracking","host":"a.io","campaign_id":"1"});
        assert!(RecordKey::from_object(obj.as_object().unwrap())
            .unwrap_err()
            .0
            .contains("ad_id"));
    }

    #[test]
    fn status_301_is_refused_with_reason() {
        let err = parse_record(
            r#"{"type":"fallback","host":"a.io","url":"https://a.com/","status":301}"#,
        )
        .unwrap_err();
        assert!(err.0.contains("301"), "{err}");
        assert_eq!(
            link(r#"{"type":"fallback","host":"a.io","url":"https://a.com/","status":307}"#).status,
            RedirectStatus::TemporaryRedirect
        );
    }

    #[test]
    fn bad_fields_name_the_field() {
        let cases = [
            (
                r#"{"type":"tracking","host":"a.io","campaign_id":"1","url":"https://a.com"}"#,
                "ad_id",
            ),
            (
                r#"{"type":"tracking","host":"a.io","campaign_id":"1 2","ad_id":"1","url":"https://a.com"}"#,
                "campaign_id",
            ),
            (
                r#"{"type":"domain","host":"a.io","campaign_id":"1","ad_id":"1","url":"https://a.com"}"#,
                "partner_id",
            ),
            (
                r#"{"type":"fallback","host":"a.io","url":"ftp://a.com"}"#,
                "url",
            ),
            (
                r#"{"type":"fallback","host":"a.io","url":"/relative"}"#,
                "url",
            ),
            (
                r#"{"type":"fallback","host":"https://a.io","url":"https://a.com"}"#,
                "host",
            ),
            (r#"{"type":"teleport","host":"a.io"}"#, "teleport"),
            (
                r#"{"type":"vanity","host":"a.io","slug":"a/b","partner_id":"1","campaign_id":"1","ad_id":"1","url":"https://a.com"}"#,
                "slug",
            ),
            (
                r#"{"type":"fallback","host":"a.io","url":"https://a.com","valid_from":"yesterday"}"#,
                "valid_from",
            ),
            (
                r#"{"type":"app_site","host":"a.io"}"#,
                "apple_app_site_association",
            ),
            (r#"[1,2]"#, "object"),
            (r#"{"type":"#, "JSON"),
        ];
        for (line, needle) in cases {
            let err = parse_record(line).unwrap_err();
            assert!(err.0.contains(needle), "{line}: {err}");
        }
    }

    #[test]
    fn validity_window_is_half_open() {
        let l = link(
            r#"{"type":"fallback","host":"a.io","url":"https://a.com","valid_from":"2026-01-01T00:00:00Z","valid_until":"2026-01-02T00:00:00Z"}"#,
        );
        let from = l.valid_from_ms.unwrap();
        let until = l.valid_until_ms.unwrap();
        assert_eq!(until - from, 86_400_000);
        assert!(!l.is_valid_at(from - 1));
        assert!(l.is_valid_at(from));
        assert!(l.is_valid_at(until - 1));
        assert!(!l.is_valid_at(until));
    }

    #[test]
    fn app_field_is_kept() {
        let l = link(
            r#"{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"2","url":"https://a.com","app":{"ios_url":"https://apps.apple.com/app/id1","interstitial":true}}"#,
        );
        assert_eq!(l.app.as_ref().unwrap()["interstitial"], Value::Bool(true));
    }

    #[test]
    fn ids_follow_the_rule() {
        assert!(is_valid_id("a_B-9"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("12%34"));
        assert!(!is_valid_id("é"));
    }
}
