//! A link's `rules` and `split` (SPEC §9), compiled at load: conditions as
//! bitsets and small sorted lists, destinations parsed once, so a click only
//! compares (no parsing, no allocation).
//!
//! The first rule whose conditions all hold gives the destination; when none
//! does, a `split` picks a variant by weight from a stable hash of the visitor
//! id (the same visitor always gets the same variant, on every node and after
//! every restart), or of the click id without a visitor.

use serde_json::Value;

use super::record::{invalid, RecordError};
use super::LoadCache;
use crate::destination::Destination;
use crate::useragent::{Device, Os};

/// Rules per link and variants per split, at most: a link is not a program.
pub const MAX_RULES: usize = 32;
pub const MAX_VARIANTS: usize = 16;

/// One rule: when its conditions hold, its destination.
#[derive(Debug)]
pub struct Rule {
    pub when: Conditions,
    pub destination: Destination,
}

/// A rule's conditions; an empty one holds for everyone.
#[derive(Debug, Default)]
pub struct Conditions {
    /// Bit per [`Device`]; 0: any.
    devices: u8,
    /// Bit per [`Os`]; 0: any.
    oses: u8,
    /// ISO 3166-1 alpha-2, upper case; empty: any.
    countries: Box<[[u8; 2]]>,
    /// Primary language subtags, lower case; empty: any.
    languages: Box<[Box<str>]>,
    /// Query parameters that must be present with exactly this value.
    query: Box<[(Box<str>, Box<str>)]>,
}

/// What a click offers the conditions.
#[derive(Debug, Clone, Copy)]
pub struct Visit<'a> {
    pub device: Device,
    pub os: Os,
    pub country: Option<[u8; 2]>,
    /// The primary subtag of the first `Accept-Language` entry, as sent.
    pub language: Option<&'a str>,
    /// The raw query, before any parameter is consumed.
    pub query: Option<&'a str>,
}

impl Conditions {
    pub fn hold(&self, visit: &Visit<'_>) -> bool {
        (self.devices == 0 || self.devices & (1 << visit.device as u8) != 0)
            && (self.oses == 0 || self.oses & (1 << visit.os as u8) != 0)
            && (self.countries.is_empty()
                || visit.country.is_some_and(|c| self.countries.contains(&c)))
            && (self.languages.is_empty()
                || visit.language.is_some_and(|language| {
                    self.languages
                        .iter()
                        .any(|wanted| wanted.eq_ignore_ascii_case(language))
                }))
            && self.query.iter().all(|(name, value)| {
                visit.query.is_some_and(|query| {
                    form_urlencoded::parse(query.as_bytes())
                        .any(|(n, v)| n == **name && v == **value)
                })
            })
    }

    /// Whether any condition asks for the country (a lookup is needed).
    pub fn need_country(&self) -> bool {
        !self.countries.is_empty()
    }
}

/// The first rule that holds, by index.
pub fn first_match(rules: &[Rule], visit: &Visit<'_>) -> Option<usize> {
    rules.iter().position(|rule| rule.when.hold(visit))
}

/// A weighted choice of destinations.
#[derive(Debug)]
pub struct Split {
    pub variants: Box<[Variant]>,
    total: u64,
}

#[derive(Debug)]
pub struct Variant {
    pub destination: Destination,
    pub weight: u32,
}

impl Split {
    /// The variant of the visitor (or click) with id `id`: FNV-1a (64-bit) of
    /// the id's text, modulo the total weight, falls in one variant's share.
    /// A documented, stable hash: the same id picks the same variant on every
    /// node, in every build.
    pub fn pick(&self, id: &str) -> usize {
        let mut point = fnv1a(id.as_bytes()) % self.total;
        for (i, variant) in self.variants.iter().enumerate() {
            let weight = u64::from(variant.weight);
            if point < weight {
                return i;
            }
            point -= weight;
        }
        self.variants.len() - 1
    }
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `rules`: an array of `{"if": {...}, "url": "..."}`.
pub(super) fn parse_rules(
    value: &Value,
    cache: &mut LoadCache,
) -> Result<Box<[Rule]>, RecordError> {
    let Value::Array(list) = value else {
        return Err(invalid(
            "field `rules` must be an array of {\"if\": {...}, \"url\": \"...\"}",
        ));
    };
    if list.len() > MAX_RULES {
        return Err(invalid(format!("field `rules`: at most {MAX_RULES} rules")));
    }
    list.iter()
        .enumerate()
        .map(|(i, rule)| {
            let at = |reason: String| invalid(format!("field `rules[{i}]`{reason}"));
            let Value::Object(rule) = rule else {
                return Err(at(" must be an object".into()));
            };
            if let Some(unknown) = rule.keys().find(|k| !matches!(k.as_str(), "if" | "url")) {
                return Err(at(format!(
                    ": unknown field `{unknown}` (expected `if` and `url`)"
                )));
            }
            let when = match rule.get("if") {
                None | Some(Value::Null) => Conditions::default(),
                Some(conditions) => {
                    conditions_of(conditions).map_err(|reason| at(format!(".if: {reason}")))?
                }
            };
            let destination = destination_of(rule.get("url"), cache)
                .map_err(|reason| at(format!(".url: {reason}")))?;
            Ok(Rule { when, destination })
        })
        .collect()
}

/// `split`: an array of `{"url": "...", "weight": N}`, weights positive.
pub(super) fn parse_split(value: &Value, cache: &mut LoadCache) -> Result<Split, RecordError> {
    let Value::Array(list) = value else {
        return Err(invalid(
            "field `split` must be an array of {\"url\": \"...\", \"weight\": N}",
        ));
    };
    if list.is_empty() || list.len() > MAX_VARIANTS {
        return Err(invalid(format!(
            "field `split`: 1 to {MAX_VARIANTS} variants"
        )));
    }
    let variants = list
        .iter()
        .enumerate()
        .map(|(i, variant)| {
            let at = |reason: String| invalid(format!("field `split[{i}]`{reason}"));
            let Value::Object(variant) = variant else {
                return Err(at(" must be an object".into()));
            };
            if let Some(unknown) = variant
                .keys()
                .find(|k| !matches!(k.as_str(), "url" | "weight"))
            {
                return Err(at(format!(
                    ": unknown field `{unknown}` (expected `url` and `weight`)"
                )));
            }
            let weight = variant
                .get("weight")
                .and_then(Value::as_u64)
                .filter(|w| (1..=1_000_000).contains(w))
                .ok_or_else(|| at(".weight: must be a whole number from 1 to 1000000".into()))?;
            let destination = destination_of(variant.get("url"), cache)
                .map_err(|reason| at(format!(".url: {reason}")))?;
            Ok(Variant {
                destination,
                weight: weight as u32,
            })
        })
        .collect::<Result<Box<[Variant]>, RecordError>>()?;
    let total = variants.iter().map(|v| u64::from(v.weight)).sum();
    Ok(Split { variants, total })
}

fn destination_of(url: Option<&Value>, cache: &mut LoadCache) -> Result<Destination, String> {
    match url {
        Some(Value::String(url)) => cache.destination(url).map_err(|e| {
            // The cache names the field `url`; the caller names the place.
            e.0.trim_start_matches("field `url`: ").to_owned()
        }),
        _ => Err("missing, or not a string".into()),
    }
}

/// One value or a list of them, as strings.
fn values<'v>(value: &'v Value, name: &str) -> Result<Vec<&'v str>, String> {
    let list: Vec<&Value> = match value {
        Value::Array(list) if !list.is_empty() => list.iter().collect(),
        Value::String(_) => vec![value],
        _ => {
            return Err(format!(
                "`{name}` must be a string or a non-empty array of strings"
            ))
        }
    };
    list.into_iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| format!("`{name}` must be a string or a non-empty array of strings"))
        })
        .collect()
}

fn conditions_of(value: &Value) -> Result<Conditions, String> {
    let Value::Object(object) = value else {
        return Err("must be an object of conditions".into());
    };
    let mut conditions = Conditions::default();
    for (name, value) in object {
        match name.as_str() {
            "device" => {
                for device in values(value, name)? {
                    let bit = match device {
                        "desktop" => Device::Desktop,
                        "mobile" => Device::Mobile,
                        "tablet" => Device::Tablet,
                        "bot" => Device::Bot,
                        other => {
                            return Err(format!(
                                "device {other:?} is not desktop, mobile, tablet or bot"
                            ))
                        }
                    };
                    conditions.devices |= 1 << bit as u8;
                }
            }
            "os" => {
                for os in values(value, name)? {
                    let bit = match os {
                        "ios" => Os::Ios,
                        "android" => Os::Android,
                        "windows" => Os::Windows,
                        "macos" => Os::Macos,
                        "linux" => Os::Linux,
                        "other" => Os::Other,
                        other => {
                            return Err(format!(
                                "os {other:?} is not ios, android, windows, macos, linux or other"
                            ))
                        }
                    };
                    conditions.oses |= 1 << bit as u8;
                }
            }
            "country" => {
                conditions.countries = values(value, name)?
                    .into_iter()
                    .map(|code| match code.as_bytes() {
                        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                            Ok([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
                        }
                        _ => Err(format!(
                            "country {code:?} is not an ISO 3166-1 alpha-2 code (like DE)"
                        )),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "language" => {
                conditions.languages = values(value, name)?
                    .into_iter()
                    .map(|tag| {
                        if (2..=3).contains(&tag.len())
                            && tag.bytes().all(|b| b.is_ascii_alphabetic())
                        {
                            Ok(tag.to_ascii_lowercase().into_boxed_str())
                        } else {
                            Err(format!(
                                "language {tag:?} is not a primary language subtag (like de)"
                            ))
                        }
                    })
                    .collect::<Result<_, _>>()?;
            }
            "query" => {
                let Value::Object(pairs) = value else {
                    return Err("`query` must be an object of {\"name\": \"value\"}".into());
                };
                conditions.query = pairs
                    .iter()
                    .map(|(name, value)| match value {
                        Value::String(value) => Ok((name.as_str().into(), value.as_str().into())),
                        _ => Err(format!("query value of {name:?} must be a string")),
                    })
                    .collect::<Result<_, String>>()?;
            }
            other => {
                return Err(format!(
                    "unknown condition `{other}` (expected device, os, country, language or query)"
                ))
            }
        }
    }
    Ok(conditions)
}

/// The primary subtag of the first `Accept-Language` entry (`de-DE,en;q=0.8`
/// gives `de`); `None` for `*` or nothing.
pub fn primary_language(accept_language: &str) -> Option<&str> {
    let first = accept_language.split(',').next()?.split(';').next()?.trim();
    let primary = first.split(['-', '_']).next()?.trim();
    (!primary.is_empty() && primary != "*").then_some(primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(query: Option<&'static str>) -> Visit<'static> {
        Visit {
            device: Device::Mobile,
            os: Os::Ios,
            country: Some(*b"DE"),
            language: Some("de"),
            query,
        }
    }

    fn rules(json: &str) -> Result<Box<[Rule]>, RecordError> {
        parse_rules(
            &serde_json::from_str(json).unwrap(),
            &mut LoadCache::default(),
        )
    }

    #[test]
    fn every_condition_must_hold_and_a_list_matches_any_value() {
        let rules = rules(
            r#"[
              {"if": {"device": ["desktop", "tablet"]}, "url": "https://a.example/1"},
              {"if": {"os": "ios", "country": ["AT", "de"], "language": "DE"}, "url": "https://a.example/2"},
              {"url": "https://a.example/3"}
            ]"#,
        )
        .unwrap();
        assert_eq!(first_match(&rules, &visit(None)), Some(1));
        let elsewhere = Visit {
            country: Some(*b"FR"),
            ..visit(None)
        };
        assert_eq!(first_match(&rules, &elsewhere), Some(2), "the catch-all");
        let unknown_country = Visit {
            country: None,
            ..visit(None)
        };
        assert_eq!(
            first_match(&rules, &unknown_country),
            Some(2),
            "no database: country never holds"
        );
        let desktop = Visit {
            device: Device::Desktop,
            ..visit(None)
        };
        assert_eq!(first_match(&rules, &desktop), Some(0));
    }

    #[test]
    fn query_conditions_are_exact_and_see_tracking_parameters() {
        let rules = rules(r#"[{"if": {"query": {"utm_source": "news letter", "subId1": "x"}}, "url": "https://a.example/q"}]"#).unwrap();
        assert_eq!(
            first_match(&rules, &visit(Some("subId1=x&utm_source=news+letter"))),
            Some(0)
        );
        assert_eq!(
            first_match(&rules, &visit(Some("subId1=x&utm_source=news"))),
            None
        );
        assert_eq!(
            first_match(&rules, &visit(Some("utm_source=news%20letter"))),
            None,
            "both needed"
        );
        assert_eq!(first_match(&rules, &visit(None)), None);
    }

    #[test]
    fn bad_rules_are_refused_with_the_place_and_the_reason() {
        for (json, said) in [
            (r#"{"if": {}}"#, "must be an array"),
            (
                r#"[{"if": {"planet": "mars"}, "url": "https://a.example/"}]"#,
                "rules[0]`.if: unknown condition `planet`",
            ),
            (
                r#"[{"if": {"device": "phone"}, "url": "https://a.example/"}]"#,
                "device \"phone\" is not",
            ),
            (
                r#"[{"if": {"country": "GER"}, "url": "https://a.example/"}]"#,
                "not an ISO 3166-1",
            ),
            (
                r#"[{"if": {"os": []}, "url": "https://a.example/"}]"#,
                "non-empty array",
            ),
            (r#"[{"url": "ftp://a.example/"}]"#, "rules[0]`.url:"),
            (r#"[{"if": {}}]"#, "rules[0]`.url: missing"),
            (
                r#"[{"when": {}, "url": "https://a.example/"}]"#,
                "unknown field `when`",
            ),
        ] {
            let error = rules(json).unwrap_err().to_string();
            assert!(error.contains(said), "{json}: {error}");
        }
    }

    fn split(json: &str) -> Result<Split, RecordError> {
        parse_split(
            &serde_json::from_str(json).unwrap(),
            &mut LoadCache::default(),
        )
    }

    #[test]
    fn a_split_keeps_its_weights_over_many_visitors_and_each_visitor_keeps_a_variant() {
        let split = split(r#"[{"url": "https://a.example/a", "weight": 70}, {"url": "https://a.example/b", "weight": 30}]"#).unwrap();
        let mut counts = [0usize; 2];
        for n in 0..10_000u64 {
            // Visitor ids as the edge makes them: ULIDs over time.
            let id = ulid::Ulid::from_parts(
                1_790_000_000_000 + n * 7919,
                u128::from(n) * 0x9e37_79b9_7f4a_7c15,
            )
            .to_string();
            let variant = split.pick(&id);
            assert_eq!(split.pick(&id), variant, "stable");
            counts[variant] += 1;
        }
        let share = counts[0] as f64 / 100.0;
        assert!((68.0..=72.0).contains(&share), "70/30 gave {counts:?}");
        // The hash is fixed by the contract: the same id, the same variant, anywhere.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn bad_splits_are_refused() {
        for (json, said) in [
            (r#"[]"#, "1 to 16 variants"),
            (
                r#"[{"url": "https://a.example/", "weight": 0}]"#,
                "split[0]`.weight",
            ),
            (
                r#"[{"url": "https://a.example/", "weight": -3}]"#,
                "split[0]`.weight",
            ),
            (
                r#"[{"url": "https://a.example/", "weight": 1.5}]"#,
                "split[0]`.weight",
            ),
            (
                r#"[{"url": "https://a.example/", "weight": 1}, {"weight": 1}]"#,
                "split[1]`.url: missing",
            ),
        ] {
            let error = split(json).unwrap_err().to_string();
            assert!(error.contains(said), "{json}: {error}");
        }
    }

    #[test]
    fn the_primary_language_is_the_first_entrys() {
        assert_eq!(
            primary_language("de-DE,en;q=0.8"),
            Some("de-DE".split('-').next().unwrap())
        );
        assert_eq!(primary_language("en_US"), Some("en"));
        assert_eq!(primary_language(" fr ; q=1"), Some("fr"));
        assert_eq!(primary_language("*"), None);
        assert_eq!(primary_language(""), None);
    }
}
