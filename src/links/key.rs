//! A record's identity (SPEC §2): its key, the key's text form (the links
//! topic's message key) and a key object (`DELETE /admin/links`).

use std::fmt;

use super::parse::{is_valid_id, normalize_record_host, parse_promo_code, parse_slug, KeyFields};
use super::record::{invalid, LinkKind, Record, RecordError};

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
    Brand {
        brand_id: Box<str>,
    },
    Promo {
        brand_id: Box<str>,
        /// Lowercase.
        code: Box<str>,
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
            RecordKey::Brand { brand_id } => write!(f, "brand|{brand_id}"),
            RecordKey::Promo { brand_id, code } => write!(f, "promo|{brand_id}|{code}"),
        }
    }
}

impl RecordKey {
    /// A key object as `DELETE /admin/links` takes it, as JSON text: the
    /// record's `type` and its key fields, e.g.
    /// `{"type":"vanity","host":"acme.pxf.io","slug":"janes-picks"}`. Read as
    /// records are (one reader, the same reasons).
    pub fn from_json(text: &str) -> Result<RecordKey, RecordError> {
        let key = KeyFields::read(text)?;
        let kind = key.kind()?;
        // The host is checked before the other parts, as a record's is.
        let host = (!keyed_by_brand(kind)).then(|| key.host()).transpose()?;
        RecordKey::build(kind, host, |field| key.part(field))
    }

    /// The text form, as the links topic keys its messages:
    /// `tracking|acme.sjv.io|9012|5678`, `vanity|acme.pxf.io|janes-picks`,
    /// `brand|acme`, `promo|acme|jane10`.
    pub fn parse_text(text: &str) -> Result<RecordKey, RecordError> {
        let mut parts = text.split('|');
        let kind = parts.next().unwrap_or_default();
        let by_brand = keyed_by_brand(kind);
        let host = if by_brand {
            None
        } else {
            let host = parts.next().ok_or_else(|| invalid("the key has no host"))?;
            Some(normalize_record_host(host)?)
        };
        let fields: Vec<&str> = parts.collect();
        let names: &[&str] = match kind {
            "tracking" => &["campaign_id", "ad_id"],
            "vanity" => &["slug"],
            "brand" => &["brand_id"],
            "promo" => &["brand_id", "code"],
            _ => &[],
        };
        if fields.len() != names.len() {
            return Err(invalid(if by_brand {
                format!("key {text:?} is not `brand|brand_id` or `promo|brand_id|code`")
            } else {
                format!("key {text:?} is not `type|host[|…]` as the record type `{kind}` needs")
            }));
        }
        RecordKey::build(kind, host, |field| {
            let at = names.iter().position(|name| *name == field);
            let value = at.map_or("", |at| fields[at]);
            match field {
                "slug" => parse_slug(value),
                "code" => parse_promo_code(value),
                _ if is_valid_id(value) => Ok(value.into()),
                _ => Err(invalid(format!("`{field}` {value:?} is not an id"))),
            }
        })
    }

    /// The key of a record of type `kind`: its host (`None` for the types keyed
    /// by brand) and its other parts, by field name.
    fn build(
        kind: &str,
        host: Option<Box<str>>,
        mut field: impl FnMut(&str) -> Result<Box<str>, RecordError>,
    ) -> Result<RecordKey, RecordError> {
        let host = || host.ok_or_else(|| invalid("the key has no host"));
        Ok(match kind {
            "tracking" => RecordKey::Tracking {
                host: host()?,
                campaign_id: field("campaign_id")?,
                ad_id: field("ad_id")?,
            },
            "vanity" => RecordKey::Vanity {
                host: host()?,
                slug: field("slug")?,
            },
            "domain" => RecordKey::Domain { host: host()? },
            "fallback" => RecordKey::Fallback { host: host()? },
            "app_site" => RecordKey::AppSite { host: host()? },
            "brand" => RecordKey::Brand {
                brand_id: field("brand_id")?,
            },
            "promo" => RecordKey::Promo {
                brand_id: field("brand_id")?,
                code: field("code")?,
            },
            other => return Err(invalid(format!("unknown type `{other}`"))),
        })
    }
}

/// A brand's records are keyed by the brand, not by a host.
fn keyed_by_brand(kind: &str) -> bool {
    matches!(kind, "brand" | "promo")
}

impl Record {
    pub fn key(&self) -> RecordKey {
        match self {
            Record::AppSite(site) => RecordKey::AppSite {
                host: site.host.clone(),
            },
            Record::Brand(brand) => RecordKey::Brand {
                brand_id: brand.brand_id.clone(),
            },
            Record::Promo(promo) => RecordKey::Promo {
                brand_id: promo.brand_id.clone(),
                code: promo.code.clone(),
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
}
