//! Parsing a record: one reader for every field of a JSON object (its JSON
//! type checked once, with a reason naming the field), then the values
//! validated and the record built (SPEC §2). Records and key objects (`DELETE
//! /admin/links`) go through the same reader.
//!
//! Everything a request needs is checked and precomputed here, once, at load
//! time: lowercase hosts and slugs, the destination split into parts, the
//! validity window in milliseconds. The request path then only compares and
//! copies.
//!
//! Why one long file: the field table, its reader and each field's validation are
//! one parser; the load cache shares its lifetime.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::record::{
    invalid, AppLink, AppSite, Brand, Id, Link, LinkExtras, LinkIds, LinkKind, Promo, Record,
    RecordError, RedirectStatus,
};
use crate::destination::{Destination, HostPatterns};
use crate::json::{given, FieldName};

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

    pub(super) fn destination(&mut self, url: &str) -> Result<Destination, RecordError> {
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
    validate(Fields::read(line, "record")?, cache)
}

/// The record fields a line holds, each as its raw JSON text (borrowed from the
/// line), by the table of names below; unknown fields are ignored, and a field
/// given twice keeps its last value (as JSON objects usually are read).
#[derive(Default)]
struct RawFields<'a> {
    kind: Option<&'a RawValue>,
    host: Option<&'a RawValue>,
    slug: Option<&'a RawValue>,
    url: Option<&'a RawValue>,
    partner_id: Option<&'a RawValue>,
    campaign_id: Option<&'a RawValue>,
    ad_id: Option<&'a RawValue>,
    deeplink_hosts: Option<&'a RawValue>,
    app: Option<&'a RawValue>,
    status: Option<&'a RawValue>,
    forward_query: Option<&'a RawValue>,
    click_id_param: Option<&'a RawValue>,
    valid_from: Option<&'a RawValue>,
    valid_until: Option<&'a RawValue>,
    apple_app_site_association: Option<&'a RawValue>,
    assetlinks: Option<&'a RawValue>,
    brand_id: Option<&'a RawValue>,
    hosts: Option<&'a RawValue>,
    action_keys: Option<&'a RawValue>,
    test_keys: Option<&'a RawValue>,
    origins: Option<&'a RawValue>,
    click_window_days: Option<&'a RawValue>,
    code: Option<&'a RawValue>,
    rules: Option<&'a RawValue>,
    split: Option<&'a RawValue>,
    test: Option<&'a RawValue>,
    stat: Option<&'a RawValue>,
}

impl<'a> RawFields<'a> {
    fn slot(&mut self, name: &str) -> Option<&mut Option<&'a RawValue>> {
        Some(match name {
            "type" => &mut self.kind,
            "host" => &mut self.host,
            "slug" => &mut self.slug,
            "url" => &mut self.url,
            "partner_id" => &mut self.partner_id,
            "campaign_id" => &mut self.campaign_id,
            "ad_id" => &mut self.ad_id,
            "deeplink_hosts" => &mut self.deeplink_hosts,
            "app" => &mut self.app,
            "status" => &mut self.status,
            "forward_query" => &mut self.forward_query,
            "click_id_param" => &mut self.click_id_param,
            "valid_from" => &mut self.valid_from,
            "valid_until" => &mut self.valid_until,
            "apple_app_site_association" => &mut self.apple_app_site_association,
            "assetlinks" => &mut self.assetlinks,
            "brand_id" => &mut self.brand_id,
            "hosts" => &mut self.hosts,
            "action_keys" => &mut self.action_keys,
            "test_keys" => &mut self.test_keys,
            "origins" => &mut self.origins,
            "click_window_days" => &mut self.click_window_days,
            "code" => &mut self.code,
            "rules" => &mut self.rules,
            "split" => &mut self.split,
            "test" => &mut self.test,
            "stat" => &mut self.stat,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for RawFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = RawFields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<RawFields<'de>, M::Error> {
                let mut fields = RawFields::default();
                while let Some(FieldName(name)) = map.next_key::<FieldName<'de>>()? {
                    match fields.slot(&name) {
                        Some(slot) => *slot = Some(map.next_value::<&'de RawValue>()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// A record's fields with their JSON types checked, not yet their values.
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
    brand_id: Option<Cow<'a, str>>,
    hosts: Option<Vec<Cow<'a, str>>>,
    action_keys: Option<Vec<Cow<'a, str>>>,
    test_keys: Option<Vec<Cow<'a, str>>>,
    origins: Option<Vec<Cow<'a, str>>>,
    click_window_days: Option<u64>,
    code: Option<Cow<'a, str>>,
    rules: Option<Value>,
    split: Option<Value>,
    test: Option<bool>,
    stat: Option<bool>,
}

/// A JSON string, borrowed from the line unless it has escapes. `text` is one
/// JSON value, already checked by the reader: between its quotes, a string
/// without a backslash is its own content.
fn json_string(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

impl<'a> Fields<'a> {
    /// Reads `line` (a `what`: record or key) into its fields, each field's JSON
    /// type checked with a reason naming it.
    fn read(line: &'a str, what: &str) -> Result<Fields<'a>, RecordError> {
        let raw = match serde_json::from_str::<RawFields<'a>>(line) {
            Ok(raw) => raw,
            Err(e) if e.is_data() => {
                return Err(invalid(format!("a {what} must be a JSON object")))
            }
            Err(e) => return Err(invalid(format!("not valid JSON: {e}"))),
        };
        let string = |raw: Option<&'a RawValue>, reason: &str| match given(raw) {
            None => Ok(None),
            Some(text) => json_string(text).map(Some).ok_or_else(|| invalid(reason)),
        };
        let must_be_string = |field: &str| format!("field `{field}` must be a string");
        // An id is a string or, as people often write them, a bare integer.
        let id = |raw: Option<&'a RawValue>, field: &str| match given(raw) {
            None => Ok(None),
            Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Some(Cow::Borrowed(text)))
            }
            Some(text) => json_string(text)
                .map(Some)
                .ok_or_else(|| invalid(must_be_string(field))),
        };
        // JSON kept as its text, served as it is.
        let json_text = |raw: Option<&'a RawValue>, open: char, reason: &str| match given(raw) {
            None => Ok(None),
            Some(text) if text.starts_with(open) => Ok(Some(Cow::Borrowed(text))),
            Some(_) => Err(invalid(reason)),
        };
        // An array of strings.
        let strings = |raw: Option<&'a RawValue>, reason: &str| match given(raw) {
            None => Ok(None),
            Some(text) => serde_json::from_str::<Vec<&RawValue>>(text)
                .ok()
                .and_then(|items| {
                    items
                        .iter()
                        .map(|item| json_string(item.get()))
                        .collect::<Option<Vec<_>>>()
                })
                .map(Some)
                .ok_or_else(|| invalid(reason)),
        };
        let deeplink_hosts = strings(
            raw.deeplink_hosts,
            "field `deeplink_hosts` must be an array of host names",
        )?;
        let app = match given(raw.app) {
            None => None,
            Some(text) if text.starts_with('{') => Some(
                serde_json::from_str::<Value>(text)
                    .map_err(|_| invalid("field `app` must be an object"))?,
            ),
            Some(_) => return Err(invalid("field `app` must be an object")),
        };
        // Nested JSON, read as a value (the few records with rules or splits).
        let json_value = |raw: Option<&'a RawValue>, reason: &str| match given(raw) {
            None => Ok(None),
            Some(text) => serde_json::from_str::<Value>(text)
                .map(Some)
                .map_err(|_| invalid(reason)),
        };
        let boolean = |raw: Option<&'a RawValue>, field: &str| match given(raw) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(invalid(format!("field `{field}` must be true or false"))),
        };
        let forward_query = boolean(raw.forward_query, "forward_query")?;
        let time = |raw, field: &str| {
            string(
                raw,
                &format!("field `{field}` must be an RFC 3339 time string"),
            )
        };
        Ok(Fields {
            kind: string(raw.kind, &must_be_string("type"))?,
            host: string(raw.host, &must_be_string("host"))?,
            slug: string(raw.slug, &must_be_string("slug"))?,
            url: string(raw.url, &must_be_string("url"))?,
            partner_id: id(raw.partner_id, "partner_id")?,
            campaign_id: id(raw.campaign_id, "campaign_id")?,
            ad_id: id(raw.ad_id, "ad_id")?,
            deeplink_hosts,
            app,
            status: given(raw.status).and_then(|text| serde_json::from_str::<Value>(text).ok()),
            forward_query,
            click_id_param: string(
                raw.click_id_param,
                "field `click_id_param` must be 1-64 characters of [A-Za-z0-9_.-]",
            )?,
            valid_from: time(raw.valid_from, "valid_from")?,
            valid_until: time(raw.valid_until, "valid_until")?,
            apple_app_site_association: json_text(
                raw.apple_app_site_association,
                '{',
                "field `apple_app_site_association` must be a JSON object",
            )?,
            assetlinks: json_text(
                raw.assetlinks,
                '[',
                "field `assetlinks` must be a JSON array",
            )?,
            brand_id: id(raw.brand_id, "brand_id")?,
            hosts: strings(raw.hosts, "field `hosts` must be an array of host names")?,
            action_keys: strings(
                raw.action_keys,
                "field `action_keys` must be an array of SHA-256 hex digests",
            )?,
            test_keys: strings(
                raw.test_keys,
                "field `test_keys` must be an array of SHA-256 hex digests",
            )?,
            origins: strings(raw.origins, "field `origins` must be an array of origins")?,
            click_window_days: match given(raw.click_window_days) {
                None => None,
                Some(text) => Some(text.parse::<u64>().map_err(|_| {
                    invalid("field `click_window_days` must be a whole number of days")
                })?),
            },
            code: string(raw.code, &must_be_string("code"))?,
            rules: json_value(raw.rules, "field `rules` must be valid JSON")?,
            split: json_value(raw.split, "field `split` must be valid JSON")?,
            test: boolean(raw.test, "test")?,
            stat: boolean(raw.stat, "stat")?,
        })
    }
}

/// A key object's parts (`DELETE /admin/links`), read as a record's fields are.
pub(super) struct KeyFields<'a> {
    fields: Fields<'a>,
}

impl<'a> KeyFields<'a> {
    pub fn read(text: &'a str) -> Result<KeyFields<'a>, RecordError> {
        Ok(KeyFields {
            fields: Fields::read(text, "key")?,
        })
    }

    /// The record type the key is of.
    pub fn kind(&self) -> Result<&str, RecordError> {
        required(&self.fields.kind, "type")
    }

    pub fn host(&self) -> Result<Box<str>, RecordError> {
        normalize_record_host(required(&self.fields.host, "host")?)
    }

    /// The slug, the promo code, or an id (`campaign_id`, `ad_id`, `brand_id`),
    /// checked.
    pub fn part(&self, field: &str) -> Result<Box<str>, RecordError> {
        let id = |value| required_valid_id(value, field).map(|id| id.as_str().into());
        match field {
            "slug" => parse_slug(required(&self.fields.slug, "slug")?),
            "code" => parse_promo_code(required(&self.fields.code, "code")?),
            "campaign_id" => id(&self.fields.campaign_id),
            "brand_id" => id(&self.fields.brand_id),
            _ => id(&self.fields.ad_id),
        }
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
    match kind {
        "brand" => return brand(&fields),
        "promo" => return promo(&fields),
        _ => {}
    }
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
                "unknown type `{other}` (expected tracking, vanity, domain, fallback, app_site, brand or promo)"
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
    let (rules, split) = match kind {
        LinkKind::Fallback if fields.rules.is_some() || fields.split.is_some() => {
            return Err(invalid(
                "a fallback record has no `rules` or `split` (they apply to tracking, vanity and domain records)",
            ))
        }
        _ => (
            fields
                .rules
                .as_ref()
                .map(|rules| super::rules::parse_rules(rules, cache))
                .transpose()?
                .unwrap_or_default(),
            fields
                .split
                .as_ref()
                .map(|split| super::rules::parse_split(split, cache))
                .transpose()?,
        ),
    };
    let stat = fields.stat.unwrap_or(false);
    if stat && kind != LinkKind::Tracking {
        return Err(invalid("only a tracking record can carry `stat`"));
    }
    if stat && deeplink_hosts.is_none() {
        return Err(invalid(
            "a `stat` record needs `deeplink_hosts`: the brand's hosts whose links the STAT tag turns into tracking links",
        ));
    }
    let extras = LinkExtras {
        app,
        click_id_param,
        valid_from_ms,
        valid_until_ms,
        rules,
        split,
        test: fields.test.unwrap_or(false),
        stat,
    };
    let has_extras = extras.app.is_some()
        || extras.click_id_param.is_some()
        || extras.valid_from_ms.is_some()
        || extras.valid_until_ms.is_some()
        || !extras.rules.is_empty()
        || extras.split.is_some()
        || extras.test
        || extras.stat;

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

/// Longest a brand's click window may be: a year.
const MAX_CLICK_WINDOW_DAYS: u64 = 365;

/// A `brand` record (SPEC §8).
fn brand(fields: &Fields<'_>) -> Result<Record, RecordError> {
    let brand_id = required_valid_id(&fields.brand_id, "brand_id")?;
    let hosts = fields
        .hosts
        .as_deref()
        .filter(|hosts| !hosts.is_empty())
        .ok_or_else(|| {
            invalid("missing field `hosts` (the tracking hosts the brand's reports are taken on)")
        })?
        .iter()
        .map(|host| {
            normalize_record_host(host).map_err(|_| {
                invalid(format!(
                    "field `hosts`: {host:?} is not a host name (no scheme, port or path)"
                ))
            })
        })
        .collect::<Result<Box<[_]>, _>>()?;
    let digests = |list: &Option<Vec<Cow<'_, str>>>, field: &str| {
        list.as_deref()
            .unwrap_or_default()
            .iter()
            .map(|hex| {
                parse_sha256_hex(hex).ok_or_else(|| {
                    invalid(format!(
                        "field `{field}`: {hex:?} is not a SHA-256 hex digest (64 hex digits; keys are never stored in clear)"
                    ))
                })
            })
            .collect::<Result<Box<[_]>, _>>()
    };
    let action_keys = digests(&fields.action_keys, "action_keys")?;
    let test_keys = digests(&fields.test_keys, "test_keys")?;
    let origins = fields
        .origins
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|origin| {
            parse_origin(origin).ok_or_else(|| {
                invalid(format!(
                    "field `origins`: {origin:?} is not an origin (like https://www.acme.com, no path)"
                ))
            })
        })
        .collect::<Result<Box<[_]>, _>>()?;
    let click_window_days = match fields.click_window_days {
        None => 30,
        Some(days) if (1..=MAX_CLICK_WINDOW_DAYS).contains(&days) => days as u32,
        Some(_) => {
            return Err(invalid(format!(
                "field `click_window_days` must be 1-{MAX_CLICK_WINDOW_DAYS}"
            )))
        }
    };
    Ok(Record::Brand(Arc::new(Brand {
        brand_id: brand_id.as_str().into(),
        hosts,
        action_keys,
        test_keys,
        origins,
        click_window_days,
    })))
}

/// A `promo` record (SPEC §8).
fn promo(fields: &Fields<'_>) -> Result<Record, RecordError> {
    let brand_id = required_valid_id(&fields.brand_id, "brand_id")?;
    let code = parse_promo_code(required(&fields.code, "code")?)?;
    let partner_id = required_valid_id(&fields.partner_id, "partner_id")?;
    let valid_from_ms = parse_time(fields.valid_from.as_deref(), "valid_from")?;
    let valid_until_ms = parse_time(fields.valid_until.as_deref(), "valid_until")?;
    if let (Some(from), Some(until)) = (valid_from_ms, valid_until_ms) {
        if from >= until {
            return Err(invalid("`valid_from` must be before `valid_until`"));
        }
    }
    Ok(Record::Promo(Arc::new(Promo {
        brand_id: brand_id.as_str().into(),
        code,
        partner_id: partner_id.as_str().into(),
        valid_from_ms,
        valid_until_ms,
    })))
}

/// 64 hex digits, either case.
fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(digest)
}

/// A browser origin as the `Origin` header sends it: `https://host[:port]`,
/// lowercase, nothing after (one trailing `/` is forgiven).
fn parse_origin(origin: &str) -> Option<Box<str>> {
    let origin = origin.strip_suffix('/').unwrap_or(origin);
    let url = url::Url::parse(origin).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && !origin.ends_with('/');
    plain.then(|| url.origin().ascii_serialization().into_boxed_str())
}

/// A promo code: 1-64 printable characters without white space or `|` (the
/// key's separator), compared without regard to case.
pub(super) fn parse_promo_code(code: &str) -> Result<Box<str>, RecordError> {
    let ok = (1..=64).contains(&code.chars().count())
        && code
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '|');
    if !ok {
        return Err(invalid(format!(
            "field `code` {code:?} must be 1-64 characters with no white space or '|'"
        )));
    }
    Ok(code.to_lowercase().into_boxed_str())
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

pub(super) fn parse_slug(slug: &str) -> Result<Box<str>, RecordError> {
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
pub(super) fn normalize_record_host(host: &str) -> Result<Box<str>, RecordError> {
    let trimmed = crate::host::without_trailing_dot(host);
    if trimmed.len() > 253 || !crate::host::is_host_name(trimmed) {
        return Err(invalid(format!(
            "field `host` {host:?} is not a host name (no scheme, port or path)"
        )));
    }
    Ok(trimmed.to_ascii_lowercase().into_boxed_str())
}
