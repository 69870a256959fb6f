//! The records the map holds (SPEC §2 and §8): links, app-site files, brands and
//! promo codes, in the shape the request path reads them (parsed and validated
//! by `parse`, keyed by `key`).
//!
//! Everything a request needs is precomputed at load time: lowercase hosts and
//! slugs, the destination split into parts, the validity window in
//! milliseconds, packed ids. The request path then only compares and copies.
//!
//! Why one long file: more than half of it is the record tests (parsing, keys,
//! brands and promos), kept with the types they build.

use std::sync::Arc;

use serde_json::Value;

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
    pub(super) ids: LinkIds,
    /// Its text shared by every record with the same `url`.
    pub destination: Destination,
    /// Hosts a `u=` deep link may point at; none means every deep link is
    /// rejected. One list shared by every record that names the same hosts (a
    /// brand's links all do), not a copy per link.
    pub(super) deeplink_hosts: Option<HostPatterns>,
    pub(super) extras: Option<Box<LinkExtras>>,
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
    pub(super) fn from_value(value: &Value) -> Result<AppLink, RecordError> {
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
pub(super) struct LinkExtras {
    /// The brand's app, for mobile visitors.
    pub(super) app: Option<AppLink>,
    /// Per-record override of `--click-id-param`.
    pub(super) click_id_param: Option<Box<str>>,
    /// Validity window in Unix milliseconds, inclusive start, exclusive end.
    pub(super) valid_from_ms: Option<i64>,
    pub(super) valid_until_ms: Option<i64>,
    /// Ordered: the first that holds gives the destination (SPEC §9).
    pub(super) rules: Box<[super::rules::Rule]>,
    /// When no rule holds: a variant by weight.
    pub(super) split: Option<super::rules::Split>,
    /// Every click on it is a test click (never paid).
    pub(super) test: bool,
    /// Its host serves the STAT tag (`/stat.js`) for it (SPEC §9).
    pub(super) stat: bool,
}

/// A link's ids and slug in one string, `campaign/ad/partner/slug`, an absent
/// one empty. Ids are `[A-Za-z0-9_-]` and slugs hold no `/`, so `/` separates.
/// A tracking link's ids (the most records) fit the 24 inline bytes: one string
/// instead of four saves 72 bytes per record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LinkIds(Id);

impl LinkIds {
    pub(super) fn new(parts: [Option<&str>; 4]) -> LinkIds {
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

    pub fn rules(&self) -> &[super::rules::Rule] {
        self.extras.as_ref().map_or(&[], |e| &e.rules)
    }

    pub fn split(&self) -> Option<&super::rules::Split> {
        self.extras.as_ref().and_then(|e| e.split.as_ref())
    }

    /// A record of test clicks: `"test": true`.
    pub fn is_test(&self) -> bool {
        self.extras.as_ref().is_some_and(|e| e.test)
    }

    /// The tracking record the host's STAT tag makes links for.
    pub fn is_stat(&self) -> bool {
        self.extras.as_ref().is_some_and(|e| e.stat)
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
        self.write_location_from(&self.destination, query, default_param, click_id, out)
    }

    /// [`Link::write_location`] from `base` (a rule's or a variant's URL)
    /// instead of the record's `url`: deep links, query and click id as §2.
    pub fn write_location_from(
        &self,
        base: &Destination,
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
            _ => base,
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
    Brand(Arc<Brand>),
    Promo(Arc<Promo>),
}

/// A brand that reports actions (SPEC §8): the tracking hosts its reports are
/// taken on, the keys they are signed with, the origins its pages post from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brand {
    pub brand_id: Box<str>,
    /// Lowercase, no trailing dot.
    pub hosts: Box<[Box<str>]>,
    /// SHA-256 of each server-to-server key (never the key itself).
    pub action_keys: Box<[[u8; 32]]>,
    /// SHA-256 of each test key: every action sent with one is a test.
    pub test_keys: Box<[[u8; 32]]>,
    /// Browser origins (`https://www.acme.com`) allowed to post beacons.
    pub origins: Box<[Box<str>]>,
    /// How long after a click an action is still attributed to it.
    pub click_window_days: u32,
}

/// A promo code attributed to a partner (influencers without links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promo {
    pub brand_id: Box<str>,
    /// Lowercase: codes are case-insensitive.
    pub code: Box<str>,
    pub partner_id: Box<str>,
    /// Validity window in Unix milliseconds, inclusive start, exclusive end.
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
}

impl Promo {
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.valid_from_ms.is_none_or(|from| now_ms >= from)
            && self.valid_until_ms.is_none_or(|until| now_ms < until)
    }
}

impl Record {
    /// The `type` label of `clickedge_links{type}`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Record::Link(link) => link.kind.as_str(),
            Record::AppSite(_) => "app_site",
            Record::Brand(_) => "brand",
            Record::Promo(_) => "promo",
        }
    }
}

/// Why one record was refused. The loader adds the line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

pub(super) fn invalid(reason: impl Into<String>) -> RecordError {
    RecordError(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::{is_valid_id, parse_record, RecordKey};

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
        let key = RecordKey::from_json(&obj.to_string()).unwrap();
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
        assert!(RecordKey::from_json(&obj.to_string())
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

    /// The one reader: escapes in names and values, bare integer ids, `null` as
    /// absent, unknown fields ignored, a repeated field's last value kept.
    #[test]
    fn the_reader_takes_json_as_json_is_written() {
        let link = link(
            r#"{"t\u0079pe":"tracking","host":"ACME.sjv.io","host":"acme.pxf.io","campaign_id":9012,"ad_id":"56\u00378","url":"https://www.acme.com/caf\u00e9","slug":null,"note":{"any":[1]}}"#,
        );
        assert_eq!(&**link.host, "acme.pxf.io");
        assert_eq!(link.campaign_id(), Some("9012"));
        assert_eq!(link.ad_id(), Some("5678"));
        assert!(link
            .destination
            .as_str()
            .starts_with("https://www.acme.com/caf"));
    }

    #[test]
    fn a_key_object_is_read_as_a_record_is() {
        let key = RecordKey::from_json(
            r#"{"type":"tracking","host":"Acme.sjv.io.","campaign_id":9012,"ad_id":"5678"}"#,
        )
        .unwrap();
        assert_eq!(key.to_string(), "tracking|acme.sjv.io|9012|5678");
        let refused = RecordKey::from_json(
            r#"{"type":"tracking","host":"acme.sjv.io","campaign_id":[1],"ad_id":"5678"}"#,
        );
        assert_eq!(
            refused.unwrap_err().0,
            "field `campaign_id` must be a string"
        );
    }

    const KEY_DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// SPEC §8's records: a brand (hosts, key digests, origins, click window) and
    /// a promo code (case-insensitive, with a window), keyed apart from hosts.
    #[test]
    fn brand_and_promo_records_parse_with_their_keys() {
        let brand = parse_record(&format!(
            r#"{{"type":"brand","brand_id":"acme","hosts":["Acme.sjv.io","acme.pxf.io."],"action_keys":["{}"],"test_keys":["{KEY_DIGEST}"],"origins":["https://www.acme.com","http://shop.acme.com:8080/"]}}"#,
            KEY_DIGEST.to_uppercase()
        ))
        .unwrap();
        assert_eq!(brand.type_name(), "brand");
        assert_eq!(brand.key().to_string(), "brand|acme");
        let Record::Brand(brand) = brand else {
            panic!("not a brand")
        };
        assert_eq!(&*brand.hosts, &["acme.sjv.io".into(), "acme.pxf.io".into()]);
        assert_eq!(brand.action_keys[0][..2], [0x9f, 0x86]);
        assert_eq!(brand.action_keys, brand.test_keys);
        assert_eq!(
            &*brand.origins,
            &[
                "https://www.acme.com".into(),
                "http://shop.acme.com:8080".into()
            ]
        );
        assert_eq!(brand.click_window_days, 30, "the default");

        let promo = parse_record(
            r#"{"type":"promo","brand_id":"acme","code":"JANE10","partner_id":"1234","valid_until":"2999-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(promo.key().to_string(), "promo|acme|jane10");
        let Record::Promo(promo) = promo else {
            panic!("not a promo")
        };
        assert_eq!(&*promo.partner_id, "1234");
        assert!(promo.is_valid_at(1_800_000_000_000));
        assert!(!promo.is_valid_at(32_503_680_000_000));

        for text in ["brand|acme", "promo|acme|jane10"] {
            assert_eq!(RecordKey::parse_text(text).unwrap().to_string(), text);
        }
        assert_eq!(
            RecordKey::parse_text("promo|acme|JANE10")
                .unwrap()
                .to_string(),
            "promo|acme|jane10"
        );
        for bad in [
            "brand",
            "brand|",
            "brand|a|b",
            "promo|acme",
            "promo|ac me|x",
        ] {
            assert!(RecordKey::parse_text(bad).is_err(), "{bad}");
        }
        let key = RecordKey::from_json;
        assert_eq!(
            key(r#"{"type":"promo","brand_id":"acme","code":"Jane10"}"#)
                .unwrap()
                .to_string(),
            "promo|acme|jane10"
        );
        assert_eq!(
            key(r#"{"type":"brand","brand_id":"acme"}"#)
                .unwrap()
                .to_string(),
            "brand|acme"
        );
    }

    #[test]
    fn bad_brand_and_promo_records_say_why() {
        for (line, reason) in [
            (
                r#"{"type":"brand","hosts":["a.io"]}"#,
                "missing field `brand_id`",
            ),
            (
                r#"{"type":"brand","brand_id":"acme"}"#,
                "missing field `hosts`",
            ),
            (
                r#"{"type":"brand","brand_id":"acme","hosts":[]}"#,
                "missing field `hosts`",
            ),
            (
                r#"{"type":"brand","brand_id":"acme","hosts":["https://a.io/"]}"#,
                "field `hosts`",
            ),
            (
                r#"{"type":"brand","brand_id":"acme","hosts":["a.io"],"action_keys":["secret"]}"#,
                "not a SHA-256 hex digest",
            ),
            (
                r#"{"type":"brand","brand_id":"acme","hosts":["a.io"],"test_keys":"x"}"#,
                "field `test_keys` must be an array",
            ),
            (
                r#"{"type":"brand","brand_id":"acme","hosts":["a.io"],"origins":["https://a.io/path"]}"#,
                "not an origin",
            ),
            (
                r#"{"type":"brand","brand_id":"acme","hosts":["a.io"],"origins":["a.io"]}"#,
                "not an origin",
            ),
            (
                r#"{"type":"brand","brand_id":"acme","hosts":["a.io"],"click_window_days":0}"#,
                "`click_window_days` must be 1-365",
            ),
            (
                r#"{"type":"brand","brand_id":"acme","hosts":["a.io"],"click_window_days":"30"}"#,
                "whole number of days",
            ),
            (
                r#"{"type":"brand","brand_id":"ac me","hosts":["a.io"]}"#,
                "field `brand_id`",
            ),
            (
                r#"{"type":"promo","brand_id":"acme","partner_id":"1"}"#,
                "missing field `code`",
            ),
            (
                r#"{"type":"promo","brand_id":"acme","code":"JANE 10","partner_id":"1"}"#,
                "field `code`",
            ),
            (
                r#"{"type":"promo","brand_id":"acme","code":"a|b","partner_id":"1"}"#,
                "field `code`",
            ),
            (
                r#"{"type":"promo","brand_id":"acme","code":"JANE10"}"#,
                "missing field `partner_id`",
            ),
            (
                r#"{"type":"promo","brand_id":"acme","code":"J","partner_id":"1","valid_from":"2030-01-01T00:00:00Z","valid_until":"2020-01-01T00:00:00Z"}"#,
                "before",
            ),
        ] {
            let error = parse_record(line).unwrap_err();
            assert!(error.0.contains(reason), "{line}: {error}");
        }
    }
}
