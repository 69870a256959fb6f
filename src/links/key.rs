//! A record's identity (SPEC §2): its key, the key's text form (the links
//! topic's message key) and a key object (`DELETE /admin/links`).

use std::fmt;

use serde_json::{Map, Value};

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
    /// A key object as `DELETE /admin/links` takes it: the record's `type` and its
    /// key fields, e.g. `{"type":"vanity","host":"acme.pxf.io","slug":"janes-picks"}`.
    /// Read as records are (one reader, the same reasons).
    pub fn from_object(obj: &Map<String, Value>) -> Result<RecordKey, RecordError> {
        let text = serde_json::to_string(obj).map_err(|e| invalid(e.to_string()))?;
        let key = KeyFields::read(&text)?;
        match &*key.kind {
            "brand" => Ok(RecordKey::Brand {
                brand_id: key.part("brand_id")?,
            }),
            "promo" => Ok(RecordKey::Promo {
                brand_id: key.part("brand_id")?,
                code: key.part("code")?,
            }),
            kind => RecordKey::build(kind, key.host()?, |field| key.part(field)),
        }
    }

    /// The text form, as the links topic keys its messages:
    /// `tracking|acme.sjv.io|9012|5678`, `vanity|acme.pxf.io|janes-picks`.
    pub fn parse_text(text: &str) -> Result<RecordKey, RecordError> {
        let mut parts = text.split('|');
        let kind = parts.next().unwrap_or_default();
        // A brand's records are keyed by the brand, not by a host.
        if matches!(kind, "brand" | "promo") {
            let fields: Vec<&str> = parts.collect();
            let valid_brand = |id: &str| {
                is_valid_id(id)
                    .then(|| Box::<str>::from(id))
                    .ok_or_else(|| invalid(format!("`brand_id` {id:?} is not an id")))
            };
            return match (kind, &fields[..]) {
                ("brand", [brand_id]) => Ok(RecordKey::Brand {
                    brand_id: valid_brand(brand_id)?,
                }),
                ("promo", [brand_id, code]) => Ok(RecordKey::Promo {
                    brand_id: valid_brand(brand_id)?,
                    code: parse_promo_code(code)?,
                }),
                _ => Err(invalid(format!(
                    "key {text:?} is not `brand|brand_id` or `promo|brand_id|code`"
                ))),
            };
        }
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
