//! One link record: parsed from a JSON object and validated (SPEC §2).
//!
//! Everything a request needs is checked and precomputed here, once, at load time:
//! lowercase hosts and slugs, the destination split into parts, the validity window
//! in milliseconds. The request path then only compares and copies.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::destination::{Destination, HostPatterns};

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

/// Partner, ad and campaign ids, and slugs: at most 24 bytes stay inline, so the
/// common id costs no allocation.
pub type Id = compact_str::CompactString;

/// A record that redirects: tracking link, vanity URL, unique domain or fallback.
/// Kept small, since a map holds millions: the host, the destination's text and
/// the deep-link hosts are shared, the ids packed inline, and the fields few
/// records use boxed apart.
#[derive(Debug)]
pub struct Link {
    pub kind: LinkKind,
    pub status: RedirectStatus,
    pub forward_query: bool,
    /// Lowercase, no port, no trailing dot; shared by every record of the host.
    /// A thin pointer (8 bytes, not `Arc<str>`'s 16): the link then fits a
    /// smaller allocation class, 16 bytes less per record.
    pub host: Arc<Box<str>>,
    /// Campaign, ad and partner ids and the slug (see the accessors).
    ids: LinkIds,
    /// Its text shared by every record with the same `url`.
    pub destination: Destination,
    /// Hosts a `u=` deep link may point at; none means every deep link is
    /// rejected. One list shared by every record that names the same hosts (a
    /// brand's links all do), not a copy per link.
    deeplink_hosts: Option<HostPatterns>,
    extras: Option<Box<LinkExtras>>,
}

/// A record's mobile app (SPEC §2 "Mobile apps"): for iOS and Android visitors,
/// an interstitial page or a redirect to the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppLink {
    /// The App Store page (http/https).
    pub ios_url: Option<Box<str>>,
    /// The Play Store page (http/https).
    pub android_url: Option<Box<str>>,
    /// Opens the app: its own scheme (`acme://home`) or a universal link.
    pub deeplink: Option<Box<str>>,
    /// Show the page offering app, store and website, rather than redirecting.
    pub interstitial: bool,
}

impl AppLink {
    fn from_value(value: &Value) -> Result<AppLink, RecordError> {
        let Value::Object(obj) = value else {
            return Err(invalid("field `app` must be an object"));
        };
        let text = |field: &str| -> Result<Option<&str>, RecordError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(invalid(format!("field `app.{field}` must be a string"))),
            }
        };
        let store = |field: &str| -> Result<Option<Box<str>>, RecordError> {
            text(field)?
                .map(|url| {
                    Destination::parse(url)
                        .map(|d| d.as_str().into())
                        .map_err(|reason| invalid(format!("field `app.{field}`: {reason}")))
                })
                .transpose()
        };
        let deeplink = text("deeplink")?
            .map(|link| {
                let parsed = url::Url::parse(link).map_err(|e| {
                    invalid(format!("field `app.deeplink` {link:?} is not a URL: {e}"))
                })?;
                if matches!(parsed.scheme(), "javascript" | "data" | "vbscript" | "file") {
                    return Err(invalid(format!(
                        "field `app.deeplink` may not use the `{}:` scheme",
                        parsed.scheme()
                    )));
                }
                Ok(parsed.as_str().into())
            })
            .transpose()?;
        let interstitial = match obj.get("interstitial") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("field `app.interstitial` must be true or false")),
        };
        Ok(AppLink {
            ios_url: store("ios_url")?,
            android_url: store("android_url")?,
            deeplink,
            interstitial,
        })
    }
}

/// What few records carry.
#[derive(Debug, Default)]
struct LinkExtras {
    /// The brand's app, for mobile visitors.
    app: Option<AppLink>,
    /// Per-record override of `--click-id-param`.
    click_id_param: Option<Box<str>>,
    /// Validity window in Unix milliseconds, inclusive start, exclusive end.
    valid_from_ms: Option<i64>,
    valid_until_ms: Option<i64>,
}

/// A link's ids and slug in one string, `campaign/ad/partner/slug`, an absent
/// one empty. Ids are `[A-Za-z0-9_-]` and slugs hold no `/`, so `/` separates.
/// A tracking link's ids (the most records) fit the 24 inline bytes: one string
/// instead of four saves 72 bytes per record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkIds(Id);

impl LinkIds {
    fn new(parts: [Option<&str>; 4]) -> LinkIds {
        let mut packed = Id::default();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                packed.push('/');
            }
            packed.push_str(part.unwrap_or_default());
        }
        LinkIds(packed)
    }

    fn part(&self, index: usize) -> Option<&str> {
        let mut parts = Parts(Some(&self.0));
        for _ in 0..index {
            parts.next();
        }
        parts.next().filter(|part| !part.is_empty())
    }

    /// Campaign and ad id, `""` when absent: a tracking link's key.
    fn campaign_and_ad(&self) -> (&str, &str) {
        let mut parts = Parts(Some(&self.0));
        let campaign = parts.next().unwrap_or_default();
        (campaign, parts.next().unwrap_or_default())
    }
}

/// The `/`-separated parts of a packed id string, scanned byte by byte: the
/// strings are a few bytes long, and `str::split` set up a searcher per call
/// (~1,400 instructions per click, callgrind).
struct Parts<'a>(Option<&'a str>);

impl<'a> Iterator for Parts<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b'/') {
            Some(at) => {
                self.0 = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

impl Link {
    pub fn campaign_id(&self) -> Option<&str> {
        self.ids.part(0)
    }

    pub fn ad_id(&self) -> Option<&str> {
        self.ids.part(1)
    }

    /// Vanity and domain records name their partner; a tracking link's partner
    /// comes from the request path instead.
    pub fn partner_id(&self) -> Option<&str> {
        self.ids.part(2)
    }

    /// Vanity only; lowercase, because slugs match case-insensitively.
    pub fn slug(&self) -> Option<&str> {
        self.ids.part(3)
    }

    /// `(campaign_id, ad_id)`, `""` for an absent one.
    pub fn campaign_and_ad(&self) -> (&str, &str) {
        self.ids.campaign_and_ad()
    }

    /// Whether the record is in service at `now_ms`; outside its window a request is
    /// treated as unmatched.
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        let Some(extras) = &self.extras else {
            return true;
        };
        extras.valid_from_ms.is_none_or(|from| now_ms >= from)
            && extras.valid_until_ms.is_none_or(|until| now_ms < until)
    }

    pub fn deeplink_hosts(&self) -> Option<&HostPatterns> {
        self.deeplink_hosts.as_ref()
    }

    pub fn click_id_param(&self) -> Option<&str> {
        self.extras
            .as_ref()
            .and_then(|e| e.click_id_param.as_deref())
    }

    pub fn app(&self) -> Option<&AppLink> {
        self.extras.as_ref().and_then(|e| e.app.as_ref())
    }

    pub fn valid_from_ms(&self) -> Option<i64> {
        self.extras.as_ref().and_then(|e| e.valid_from_ms)
    }

    pub fn valid_until_ms(&self) -> Option<i64> {
        self.extras.as_ref().and_then(|e| e.valid_until_ms)
    }

    /// Writes the `Location` of a click on this record into `out`: the `u=` deep
    /// link if its host is allowed, else the record's `url`, with the incoming query
    /// merged and `{param}={click_id}` set (`param`: the record's, else
    /// `default_param`). Returns the deep link's fate: `None` when there was none,
    /// `Some("accepted")` or `Some("rejected")`.
    pub fn write_location(
        &self,
        query: &crate::destination::IncomingQuery<'_>,
        default_param: &str,
        click_id: &str,
        out: &mut String,
    ) -> Option<&'static str> {
        let deeplink = query
            .deeplink
            .as_deref()
            .map(|u| crate::destination::accept_deeplink(u, self.deeplink_hosts()));
        let destination = match &deeplink {
            Some(Some(accepted)) => accepted,
            _ => &self.destination,
        };
        let param = self.click_id_param().unwrap_or(default_param);
        destination.write_location(query, self.forward_query, Some((param, click_id)), out);
        deeplink.map(|accepted| {
            if accepted.is_some() {
                "accepted"
            } else {
                "rejected"
            }
        })
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
                let host: Box<str> = (**link.host).into();
                let text = |id: Option<&str>| Box::<str>::from(id.unwrap_or_default());
                match link.kind {
                    LinkKind::Tracking => RecordKey::Tracking {
                        host,
                        campaign_id: text(link.campaign_id()),
                        ad_id: text(link.ad_id()),
                    },
                    LinkKind::Vanity => RecordKey::Vanity {
                        host,
                        slug: text(link.slug()),
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

/// Shares hosts and destinations between the records of one load, so a million
/// links to a thousand landing pages hold a thousand destinations. Destinations
/// are found by the hash of their `url` and checked against it, so the cache
/// holds no second copy of the text. The destination and allow-list caches are
/// bounded ([`LoadCache::SHARED_MAX`] entries, then started afresh): a file of
/// a million unique URLs would otherwise hold an entry per URL until the load
/// ends, for nothing, at the load's peak memory.
#[derive(Debug, Default)]
pub struct LoadCache {
    hosts: hashbrown::HashMap<Box<str>, Arc<Box<str>>>,
    destinations: hashbrown::HashMap<u64, Destination>,
    /// By the hash of their text, checked against it (no second copy held).
    deeplink_hosts: hashbrown::HashMap<u64, HostPatterns>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl LoadCache {
    /// Distinct destinations (and allow-lists) remembered at once: far more
    /// than a brand has landing pages, a few MB at most.
    pub const SHARED_MAX: usize = 1 << 16;

    fn host(&mut self, host: &str) -> Arc<Box<str>> {
        if let Some(shared) = self.hosts.get(host) {
            return shared.clone();
        }
        let shared = Arc::new(Box::<str>::from(host));
        self.hosts.insert(host.into(), shared.clone());
        shared
    }

    fn destination(&mut self, url: &str) -> Result<Destination, RecordError> {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(url);
        if let Some(shared) = self.destinations.get(&hash) {
            // The URL parser may normalize; only an exact match is shared.
            if shared.as_str() == url {
                return Ok(shared.clone());
            }
        }
        let parsed =
            Destination::parse(url).map_err(|reason| invalid(format!("field `url`: {reason}")))?;
        remember(&mut self.destinations, hash, parsed.clone());
        Ok(parsed)
    }

    fn deeplink_hosts(
        &mut self,
        hosts: &[Cow<'_, str>],
    ) -> Result<Option<HostPatterns>, RecordError> {
        use std::hash::BuildHasher;
        let Some(parsed) = HostPatterns::parse(hosts)
            .map_err(|reason| invalid(format!("field `deeplink_hosts`: {reason}")))?
        else {
            return Ok(None);
        };
        let hash = self.hasher.hash_one(parsed.as_str());
        match self.deeplink_hosts.get(&hash) {
            Some(shared) if shared == &parsed => Ok(Some(shared.clone())),
            _ => {
                remember(&mut self.deeplink_hosts, hash, parsed.clone());
                Ok(Some(parsed))
            }
        }
    }
}

/// Keeps `value` under `hash` in a cache bounded to [`LoadCache::SHARED_MAX`]
/// entries (full: started afresh).
fn remember<T>(cache: &mut hashbrown::HashMap<u64, T>, hash: u64, value: T) {
    if cache.len() >= LoadCache::SHARED_MAX {
        cache.clear();
    }
    cache.insert(hash, value);
}

/// Parses one NDJSON line into a validated record.
pub fn parse_record(line: &str) -> Result<Record, RecordError> {
    parse_record_with(line, &mut LoadCache::default())
}

/// Parses one NDJSON line, sharing hosts and destinations through `cache`.
pub fn parse_record_with(line: &str, cache: &mut LoadCache) -> Result<Record, RecordError> {
    // Fast path: borrow the strings straight from the line. Anything unusual (a
    // wrong type, bad JSON) goes the slow way, which names the field at fault.
    if let Ok(raw) = serde_json::from_str::<RawRecord<'_>>(line) {
        if let Ok(fields) = raw.into_fields() {
            return validate(fields, cache);
        }
    }
    let value: Value =
        serde_json::from_str(line).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(invalid("a record must be a JSON object"));
    };
    validate(Fields::from_object(&obj)?, cache)
}

/// Validates a record already parsed as a JSON object.
pub fn record_from_object(obj: &Map<String, Value>) -> Result<Record, RecordError> {
    validate(Fields::from_object(obj)?, &mut LoadCache::default())
}

/// A record's fields with their JSON types checked, not yet their values.
#[derive(Default)]
struct Fields<'a> {
    kind: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
    slug: Option<Cow<'a, str>>,
    url: Option<Cow<'a, str>>,
    partner_id: Option<Cow<'a, str>>,
    campaign_id: Option<Cow<'a, str>>,
    ad_id: Option<Cow<'a, str>>,
    deeplink_hosts: Option<Vec<Cow<'a, str>>>,
    app: Option<Value>,
    status: Option<Value>,
    forward_query: Option<bool>,
    click_id_param: Option<Cow<'a, str>>,
    valid_from: Option<Cow<'a, str>>,
    valid_until: Option<Cow<'a, str>>,
    apple_app_site_association: Option<Cow<'a, str>>,
    assetlinks: Option<Cow<'a, str>>,
}

/// The fast path's shape: strings borrowed from the line where they need no
/// unescaping; other values kept raw and looked at only if present.
#[derive(serde::Deserialize)]
struct RawRecord<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    host: Option<Cow<'a, str>>,
    #[serde(borrow)]
    slug: Option<Cow<'a, str>>,
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partner_id: Option<&'a RawValue>,
    #[serde(borrow)]
    campaign_id: Option<&'a RawValue>,
    #[serde(borrow)]
    ad_id: Option<&'a RawValue>,
    #[serde(borrow)]
    deeplink_hosts: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    app: Option<&'a RawValue>,
    status: Option<u16>,
    forward_query: Option<bool>,
    #[serde(borrow)]
    click_id_param: Option<Cow<'a, str>>,
    #[serde(borrow)]
    valid_from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    valid_until: Option<Cow<'a, str>>,
    #[serde(borrow)]
    apple_app_site_association: Option<&'a RawValue>,
    #[serde(borrow)]
    assetlinks: Option<&'a RawValue>,
}

impl<'a> RawRecord<'a> {
    /// `Err` sends the record down the slow path for a precise reason.
    fn into_fields(self) -> Result<Fields<'a>, ()> {
        // An id is a string or a bare integer.
        let id = |raw: Option<&'a RawValue>| -> Result<Option<Cow<'a, str>>, ()> {
            let Some(raw) = raw else { return Ok(None) };
            let text = raw.get();
            if text.starts_with('"') {
                serde_json::from_str::<Cow<'a, str>>(text)
                    .map(Some)
                    .map_err(|_| ())
            } else if text.bytes().all(|b| b.is_ascii_digit()) {
                Ok(Some(Cow::Borrowed(text)))
            } else {
                Err(())
            }
        };
        let json_text =
            |raw: Option<&'a RawValue>, open: char| -> Result<Option<Cow<'a, str>>, ()> {
                match raw {
                    None => Ok(None),
                    Some(raw) if raw.get().starts_with(open) => Ok(Some(Cow::Borrowed(raw.get()))),
                    Some(_) => Err(()),
                }
            };
        let app = match self.app {
            None => None,
            Some(raw) => Some(serde_json::from_str::<Value>(raw.get()).map_err(|_| ())?),
        };
        Ok(Fields {
            kind: self.kind,
            host: self.host,
            slug: self.slug,
            url: self.url,
            partner_id: id(self.partner_id)?,
            campaign_id: id(self.campaign_id)?,
            ad_id: id(self.ad_id)?,
            deeplink_hosts: self.deeplink_hosts,
            app,
            status: self.status.map(Value::from),
            forward_query: self.forward_query,
            click_id_param: self.click_id_param,
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            apple_app_site_association: json_text(self.apple_app_site_association, '{')?,
            assetlinks: json_text(self.assetlinks, '[')?,
        })
    }
}

impl<'a> Fields<'a> {
    /// The slow path: every field's JSON type checked, with a reason naming it.
    fn from_object(obj: &'a Map<String, Value>) -> Result<Fields<'a>, RecordError> {
        let string = |field: &str| -> Result<Option<Cow<'a, str>>, RecordError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(Cow::Borrowed(s.as_str()))),
                Some(_) if field == "type" => Err(invalid("field `type` must be a string")),
                Some(_) => Err(invalid(format!("field `{field}` must be a string"))),
            }
        };
        let id = |field: &str| -> Result<Option<Cow<'a, str>>, RecordError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(Cow::Borrowed(s.as_str()))),
                Some(Value::Number(n)) if n.is_u64() => Ok(Some(Cow::Owned(n.to_string()))),
                Some(_) => Err(invalid(format!("field `{field}` must be a string"))),
            }
        };
        let deeplink_hosts = match obj.get("deeplink_hosts") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(Cow::Borrowed(s.as_str())),
                        _ => Err(invalid(
                            "field `deeplink_hosts` must be an array of host names",
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
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
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(invalid("field `forward_query` must be true or false")),
        };
        let apple_app_site_association = match obj.get("apple_app_site_association") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(Cow::Owned(v.to_string())),
            Some(_) => {
                return Err(invalid(
                    "field `apple_app_site_association` must be a JSON object",
                ))
            }
        };
        let assetlinks = match obj.get("assetlinks") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Array(_)) => Some(Cow::Owned(v.to_string())),
            Some(_) => return Err(invalid("field `assetlinks` must be a JSON array")),
        };
        let valid_time = |field: &str| -> Result<Option<Cow<'a, str>>, RecordError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(Cow::Borrowed(s.as_str()))),
                Some(_) => Err(invalid(format!(
                    "field `{field}` must be an RFC 3339 time string"
                ))),
            }
        };
        Ok(Fields {
            kind: string("type")?,
            host: string("host")?,
            slug: string("slug")?,
            url: string("url")?,
            partner_id: id("partner_id")?,
            campaign_id: id("campaign_id")?,
            ad_id: id("ad_id")?,
            deeplink_hosts,
            app,
            status: obj.get("status").filter(|v| !v.is_null()).cloned(),
            forward_query,
            click_id_param: match obj.get("click_id_param") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
                Some(_) => {
                    return Err(invalid(
                        "field `click_id_param` must be 1-64 characters of [A-Za-z0-9_.-]",
                    ))
                }
            },
            valid_from: valid_time("valid_from")?,
            valid_until: valid_time("valid_until")?,
            apple_app_site_association,
            assetlinks,
        })
    }
}

fn required<'f>(value: &'f Option<Cow<'_, str>>, field: &str) -> Result<&'f str, RecordError> {
    value
        .as_deref()
        .ok_or_else(|| invalid(format!("missing field `{field}`")))
}

fn required_valid_id(value: &Option<Cow<'_, str>>, field: &str) -> Result<Id, RecordError> {
    let text = required(value, field)?;
    if !is_valid_id(text) {
        return Err(invalid(format!(
            "field `{field}` {text:?} is not an id: 1-64 characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(Id::new(text))
}

/// Checks the values and builds the record.
fn validate(fields: Fields<'_>, cache: &mut LoadCache) -> Result<Record, RecordError> {
    let kind = required(&fields.kind, "type")?;
    let host = normalize_record_host(required(&fields.host, "host")?)?;
    let kind = match kind {
        "tracking" => LinkKind::Tracking,
        "vanity" => LinkKind::Vanity,
        "domain" => LinkKind::Domain,
        "fallback" => LinkKind::Fallback,
        "app_site" => {
            let aasa = fields
                .apple_app_site_association
                .map(|t| t.into_owned().into_boxed_str());
            let assetlinks = fields.assetlinks.map(|t| t.into_owned().into_boxed_str());
            if aasa.is_none() && assetlinks.is_none() {
                return Err(invalid(
                    "an app_site record needs `apple_app_site_association` and/or `assetlinks`",
                ));
            }
            // Refused rather than ignored: a window that does nothing would mislead.
            if fields.valid_from.is_some() || fields.valid_until.is_some() {
                return Err(invalid(
                    "an app_site record has no validity window (`valid_from`/`valid_until` apply to tracking, vanity, domain and fallback records)",
                ));
            }
            return Ok(Record::AppSite(Arc::new(AppSite {
                host,
                apple_app_site_association: aasa,
                assetlinks,
            })));
        }
        other => {
            return Err(invalid(format!(
                "unknown type `{other}` (expected tracking, vanity, domain, fallback or app_site)"
            )))
        }
    };

    let needs_ids = kind != LinkKind::Fallback;
    let campaign_id = needs_ids
        .then(|| required_valid_id(&fields.campaign_id, "campaign_id"))
        .transpose()?;
    let ad_id = needs_ids
        .then(|| required_valid_id(&fields.ad_id, "ad_id"))
        .transpose()?;
    let partner_id = matches!(kind, LinkKind::Vanity | LinkKind::Domain)
        .then(|| required_valid_id(&fields.partner_id, "partner_id"))
        .transpose()?;
    let slug = (kind == LinkKind::Vanity)
        .then(|| parse_slug(required(&fields.slug, "slug")?).map(|s| Id::from(&*s)))
        .transpose()?;

    let destination = cache.destination(required(&fields.url, "url")?)?;

    let status = match &fields.status {
        None => RedirectStatus::Found,
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

    let deeplink_hosts =
        cache.deeplink_hosts(fields.deeplink_hosts.as_deref().unwrap_or_default())?;
    let click_id_param = match fields.click_id_param {
        None => None,
        Some(name) if is_query_name(&name) => Some(name.into_owned().into_boxed_str()),
        Some(_) => {
            return Err(invalid(
                "field `click_id_param` must be 1-64 characters of [A-Za-z0-9_.-]",
            ))
        }
    };
    let valid_from_ms = parse_time(fields.valid_from.as_deref(), "valid_from")?;
    let valid_until_ms = parse_time(fields.valid_until.as_deref(), "valid_until")?;
    if let (Some(from), Some(until)) = (valid_from_ms, valid_until_ms) {
        if from >= until {
            return Err(invalid("`valid_from` must be before `valid_until`"));
        }
    }
    let app = fields.app.as_ref().map(AppLink::from_value).transpose()?;
    let extras = LinkExtras {
        app,
        click_id_param,
        valid_from_ms,
        valid_until_ms,
    };
    let has_extras = extras.app.is_some()
        || extras.click_id_param.is_some()
        || extras.valid_from_ms.is_some()
        || extras.valid_until_ms.is_some();

    Ok(Record::Link(Arc::new(Link {
        kind,
        status,
        forward_query: fields.forward_query.unwrap_or(true),
        host: cache.host(&host),
        ids: LinkIds::new([
            campaign_id.as_deref(),
            ad_id.as_deref(),
            partner_id.as_deref(),
            slug.as_deref(),
        ]),
        destination,
        deeplink_hosts,
        extras: has_extras.then(|| Box::new(extras)),
    })))
}

fn parse_time(text: Option<&str>, field: &str) -> Result<Option<i64>, RecordError> {
    let Some(text) = text else { return Ok(None) };
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        invalid(format!(
            "field `{field}` {text:?} is not an RFC 3339 time: {e}"
        ))
    })?;
    Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
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
    let trimmed = crate::host::without_trailing_dot(host);
    if trimmed.len() > 253 || !crate::host::is_host_name(trimmed) {
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
    fn packed_ids_give_each_part_back() {
        let ids = LinkIds::new([Some("9012"), Some("5678"), None, Some("janes-picks")]);
        assert_eq!(ids.part(0), Some("9012"));
        assert_eq!(ids.part(1), Some("5678"));
        assert_eq!(ids.part(2), None);
        assert_eq!(ids.part(3), Some("janes-picks"));
        assert_eq!(ids.part(4), None);
        assert_eq!(ids.campaign_and_ad(), ("9012", "5678"));
        let fallback = LinkIds::new([None, None, None, None]);
        assert_eq!(fallback.campaign_and_ad(), ("", ""));
        assert_eq!(
            (0..4).map(|i| fallback.part(i)).collect::<Vec<_>>(),
            [None; 4]
        );
        assert_eq!(Parts(Some("a//b")).collect::<Vec<_>>(), ["a", "", "b"]);
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
        let from = l.valid_from_ms().unwrap();
        let until = l.valid_until_ms().unwrap();
        assert_eq!(until - from, 86_400_000);
        assert!(!l.is_valid_at(from - 1));
        assert!(l.is_valid_at(from));
        assert!(l.is_valid_at(until - 1));
        assert!(!l.is_valid_at(until));
    }

    #[test]
    fn an_app_site_record_refuses_a_window_it_would_ignore() {
        let err = parse_record(
            r#"{"type":"app_site","host":"a.io","assetlinks":[],"valid_until":"2020-01-01T00:00:00Z"}"#,
        )
        .unwrap_err();
        assert!(err.0.contains("no validity window"), "{err}");
    }

    #[test]
    fn app_field_is_kept() {
        let l = link(
            r#"{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"2","url":"https://a.com","app":{"ios_url":"https://apps.apple.com/app/id1","interstitial":true}}"#,
        );
        let app = l.app().unwrap();
        assert!(app.interstitial);
        assert_eq!(
            app.ios_url.as_deref(),
            Some("https://apps.apple.com/app/id1")
        );
        for (bad, needle) in [
            (r#"{"deeplink":"javascript:alert(1)"}"#, "javascript"),
            (r#"{"ios_url":"itms://x"}"#, "app.ios_url"),
            (r#"{"interstitial":"yes"}"#, "app.interstitial"),
            (r#"[1]"#, "object"),
        ] {
            let line = format!(
                r#"{{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"2","url":"https://a.com","app":{bad}}}"#
            );
            let err = parse_record(&line).unwrap_err();
            assert!(err.0.contains(needle), "{bad}: {err}");
        }
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
