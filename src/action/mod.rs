//! One reported action (SPEC §8), checked: what a brand says happened after a
//! click. Pure: the caller gives the time, the brand's click window and a way to
//! find promo codes; the endpoints (`POST /v1/actions`, `/v1/px`) and the
//! `action.v1` event build on this.
//!
//! Amounts and prices are decimals kept as the text that was sent (never a
//! float); without an `amount`, the items' sum is computed exactly. Every
//! refusal names its field.
//!
//! Why one long file: one action's rules, field by field, and their table tests;
//! the endpoints live elsewhere.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::click_id::ClickId;
use crate::json::{given, FieldName};

pub mod event;
pub mod query;

/// Items in one action, at most.
pub const MAX_ITEMS: usize = 500;
/// `metadata` values, at most.
pub const MAX_METADATA: usize = 20;
/// How far ahead of the edge's clock `occurred_at` and a click id may be.
const FUTURE_SLACK_MS: i64 = 5 * 60 * 1000;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// Why an action was refused: the field at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct ActionError {
    pub field: String,
    pub reason: String,
}

fn refuse(field: &str, reason: impl Into<String>) -> ActionError {
    ActionError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// What checking an action needs besides the action.
pub struct Context<'c> {
    /// The edge's clock, Unix milliseconds.
    pub now_ms: i64,
    /// The brand's `click_window_days`.
    pub click_window_days: u32,
    /// The partner of a promo code (given lowercase) in service now.
    pub promo_partner: &'c dyn Fn(&str) -> Option<Box<str>>,
}

/// A checked action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub event: String,
    pub order_id: Option<String>,
    /// Exactly as sent, or the items' exact sum.
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub items: Vec<Item>,
    pub click_id: Option<ClickId>,
    pub click_status: Option<ClickStatus>,
    pub promo_code: Option<String>,
    pub promo_partner_id: Option<Box<str>>,
    pub customer_id: Option<String>,
    pub customer_email_sha256: Option<String>,
    pub customer_status: Option<String>,
    /// Unix milliseconds; the receipt time when not given.
    pub occurred_at_ms: i64,
    pub test: bool,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub sku: String,
    pub category: Option<String>,
    pub price: Option<String>,
    pub quantity: u64,
}

/// How a click id relates to the brand's click window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickStatus {
    Valid,
    /// Older than the brand's `click_window_days`.
    Expired,
    /// Ahead of the edge's clock by more than five minutes.
    Future,
}

impl ClickStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ClickStatus::Valid => "valid",
            ClickStatus::Expired => "expired",
            ClickStatus::Future => "future",
        }
    }
}

/// An object's members as raw JSON, in order (names unescaped).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::new();
                while let Some(FieldName(name)) = map.next_key::<FieldName<'de>>()? {
                    members.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// The members of the JSON object `text`, each name at most once, every name
/// one of `known` (`what` names the object in reasons).
fn members<'a>(text: &'a str, known: &[&str], what: &str) -> Result<Fields<'a>, ActionError> {
    let Members(list) = serde_json::from_str::<Members<'a>>(text)
        .map_err(|e| refuse(what, format!("must be a JSON object ({e})")))?;
    let mut fields = BTreeMap::new();
    for (name, value) in list {
        if !known.contains(&&*name) {
            return Err(refuse(&format!("{what}.{name}"), "unknown field"));
        }
        if fields.insert(name.clone(), value).is_some() {
            return Err(refuse(&format!("{what}.{name}"), "given twice"));
        }
    }
    Ok(Fields(fields))
}

/// An object's known fields, by name.
struct Fields<'a>(BTreeMap<Cow<'a, str>, &'a RawValue>);

impl<'a> Fields<'a> {
    /// A field's raw JSON, `None` when absent or `null`.
    fn get(&self, name: &str) -> Option<&'a str> {
        given(self.0.get(name).copied())
    }
}

const FIELDS: &[&str] = &[
    "event",
    "order_id",
    "amount",
    "currency",
    "items",
    "click_id",
    "promo_code",
    "customer_id",
    "customer_email_sha256",
    "customer_status",
    "occurred_at",
    "test",
    "metadata",
];
const ITEM_FIELDS: &[&str] = &["sku", "category", "price", "quantity"];

/// Checks one action, given as the text of a JSON object.
pub fn parse_action(text: &str, context: &Context<'_>) -> Result<Action, ActionError> {
    let fields = members(text, FIELDS, "action").map_err(|e| ActionError {
        field: e.field.trim_start_matches("action.").to_owned(),
        ..e
    })?;
    let get = |name: &str| fields.get(name);

    let event = string(get("event"), "event")?.ok_or_else(|| refuse("event", "missing"))?;
    if !(1..=32).contains(&event.len())
        || !event
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(refuse(
            "event",
            "must be lead, sale, install, reversal or 1-32 characters of [a-z0-9_]",
        ));
    }
    let order_id = printable(get("order_id"), "order_id", 128)?;
    if order_id.is_none() && matches!(event.as_str(), "sale" | "reversal") {
        return Err(refuse("order_id", format!("missing: a {event} needs one")));
    }
    let mut amount = get("amount")
        .map(|raw| decimal(raw, "amount"))
        .transpose()?;
    let currency = string(get("currency"), "currency")?;
    if let Some(code) = &currency {
        if !is_currency(code) {
            return Err(refuse(
                "currency",
                format!("{code:?} is not an ISO 4217 code"),
            ));
        }
    }
    let items = match get("items") {
        None => Vec::new(),
        Some(text) => items(text)?,
    };
    if amount.is_none() && !items.is_empty() && items.iter().all(|item| item.price.is_some()) {
        amount = Some(sum(&items));
    }
    if amount.is_some() && currency.is_none() {
        return Err(refuse("currency", "missing: required with an amount"));
    }
    let click_id =
        match string(get("click_id"), "click_id")? {
            None => None,
            Some(text) => Some(ClickId::parse(&text).ok_or_else(|| {
                refuse("click_id", format!("{text:?} is not a click id (a ULID)"))
            })?),
        };
    let click_status = click_id.map(|id| {
        let at = id.timestamp_ms() as i64;
        if at > context.now_ms + FUTURE_SLACK_MS {
            ClickStatus::Future
        } else if at < context.now_ms - i64::from(context.click_window_days) * DAY_MS {
            ClickStatus::Expired
        } else {
            ClickStatus::Valid
        }
    });
    let promo_code = printable(get("promo_code"), "promo_code", 64)?;
    let promo_partner_id = promo_code
        .as_deref()
        .and_then(|code| (context.promo_partner)(&code.to_lowercase()));
    let customer_id = printable(get("customer_id"), "customer_id", 128)?;
    let customer_email_sha256 = string(get("customer_email_sha256"), "customer_email_sha256")?;
    if let Some(digest) = &customer_email_sha256 {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse(
                "customer_email_sha256",
                "must be the SHA-256 of the email as 64 hex digits",
            ));
        }
    }
    let customer_status = string(get("customer_status"), "customer_status")?;
    if customer_status
        .as_deref()
        .is_some_and(|s| s != "new" && s != "returning")
    {
        return Err(refuse("customer_status", "must be new or returning"));
    }
    let occurred_at_ms = match string(get("occurred_at"), "occurred_at")? {
        None => context.now_ms,
        Some(text) => {
            let at = OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
                refuse(
                    "occurred_at",
                    format!("{text:?} is not an RFC 3339 time: {e}"),
                )
            })?;
            let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
            if ms > context.now_ms + FUTURE_SLACK_MS {
                return Err(refuse("occurred_at", "more than 5 minutes in the future"));
            }
            ms
        }
    };
    let test = match get("test") {
        None => false,
        Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(refuse("test", "must be true or false")),
    };
    let metadata = match get("metadata") {
        None => BTreeMap::new(),
        Some(text) => metadata(text)?,
    };
    let action = Action {
        event,
        order_id,
        amount,
        currency,
        items,
        click_id,
        click_status,
        promo_code,
        promo_partner_id,
        customer_id,
        customer_email_sha256,
        customer_status,
        occurred_at_ms,
        test,
        metadata,
    };
    refuse_plain_emails(&action)?;
    Ok(action)
}

/// A JSON string field's value.
fn string(raw: Option<&str>, field: &str) -> Result<Option<String>, ActionError> {
    raw.map(|text| {
        serde_json::from_str::<String>(text).map_err(|_| refuse(field, "must be a string"))
    })
    .transpose()
}

/// A string of 1 to `max` printable characters.
fn printable(raw: Option<&str>, field: &str, max: usize) -> Result<Option<String>, ActionError> {
    let value = string(raw, field)?;
    if let Some(text) = &value {
        let length = text.chars().count();
        if length == 0 || length > max || text.chars().any(char::is_control) {
            return Err(refuse(
                field,
                format!("must be 1-{max} printable characters"),
            ));
        }
    }
    Ok(value)
}

/// A non-negative decimal with at most 4 decimals, as a JSON string or number:
/// its text exactly as sent.
fn decimal(raw: &str, field: &str) -> Result<String, ActionError> {
    let text = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).map_err(|_| refuse(field, "must be a decimal"))?
    } else {
        raw.to_owned()
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let ok = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && (whole == "0" || !whole.starts_with('0'))
        && whole.len() <= 15
        && (!text.contains('.') || (1..=4).contains(&fraction.len()))
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(refuse(
            field,
            format!("{text:?} must be a non-negative decimal with at most 4 decimals"),
        ));
    }
    Ok(text)
}

/// A decimal's value in ten-thousandths, and how many decimals it was written
/// with.
fn ten_thousandths(decimal: &str) -> (u128, usize) {
    let (whole, fraction) = decimal.split_once('.').unwrap_or((decimal, ""));
    let mut padded = fraction.to_owned();
    padded.extend(std::iter::repeat_n('0', 4 - fraction.len()));
    let value = whole.parse::<u128>().unwrap_or(0) * 10_000 + padded.parse::<u128>().unwrap_or(0);
    (value, fraction.len())
}

/// The items' exact sum (price × quantity), with as many decimals as the most
/// precise price.
fn sum(items: &[Item]) -> String {
    let mut total = 0u128;
    let mut scale = 0;
    for item in items {
        let (price, decimals) = ten_thousandths(item.price.as_deref().unwrap_or("0"));
        total += price * u128::from(item.quantity);
        scale = scale.max(decimals);
    }
    let whole = total / 10_000;
    let fraction = format!("{:04}", total % 10_000);
    if scale == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", &fraction[..scale])
    }
}

fn items(text: &str) -> Result<Vec<Item>, ActionError> {
    let list = serde_json::from_str::<Vec<&RawValue>>(text)
        .map_err(|_| refuse("items", "must be an array of items"))?;
    if list.len() > MAX_ITEMS {
        return Err(refuse("items", format!("at most {MAX_ITEMS}")));
    }
    list.iter()
        .enumerate()
        .map(|(i, raw)| {
            let what = format!("items[{i}]");
            let fields = members(raw.get(), ITEM_FIELDS, &what)?;
            let get = |name: &str| fields.get(name);
            let field = |name: &str| format!("{what}.{name}");
            let sku = printable(get("sku"), &field("sku"), 128)?
                .ok_or_else(|| refuse(&field("sku"), "missing"))?;
            let category = printable(get("category"), &field("category"), 128)?;
            let price = get("price")
                .map(|raw| decimal(raw, &field("price")))
                .transpose()?;
            let quantity = match get("quantity") {
                None => 1,
                Some(text) => text
                    .parse::<u64>()
                    .ok()
                    .filter(|q| (1..=1_000_000).contains(q))
                    .ok_or_else(|| refuse(&field("quantity"), "must be a whole number ≥ 1"))?,
            };
            Ok(Item {
                sku,
                category,
                price,
                quantity,
            })
        })
        .collect()
}

fn metadata(text: &str) -> Result<BTreeMap<String, String>, ActionError> {
    let Members(list) = serde_json::from_str::<Members<'_>>(text)
        .map_err(|_| refuse("metadata", "must be an object of strings"))?;
    if list.len() > MAX_METADATA {
        return Err(refuse("metadata", format!("at most {MAX_METADATA} values")));
    }
    let mut values = BTreeMap::new();
    for (name, raw) in list {
        let field = format!("metadata.{name}");
        let value = printable(Some(raw.get()), &field, 256)?.unwrap_or_default();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(refuse(&field, "names must be 1-64 characters"));
        }
        values.insert(name.into_owned(), value);
    }
    Ok(values)
}

/// Something shaped like an email address: text, `@`, a domain of two labels or
/// more whose last is letters (`jane@example.co.uk`; not `PACK@2.5KG`).
fn looks_like_email(text: &str) -> bool {
    text.match_indices('@').any(|(at, _)| {
        let local = text[..at].chars().next_back();
        let domain: String = text[at + 1..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '.' | '-'))
            .collect();
        let domain = domain.trim_end_matches('.');
        let top = domain.rsplit('.').next().unwrap_or_default();
        local.is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
            && domain.contains('.')
            && !domain.starts_with('.')
            && top.chars().count() >= 2
            && top.chars().all(char::is_alphabetic)
    })
}

/// A plain email anywhere in an action is refused: reports carry its SHA-256.
fn refuse_plain_emails(action: &Action) -> Result<(), ActionError> {
    let texts = [
        ("order_id", action.order_id.as_deref()),
        ("promo_code", action.promo_code.as_deref()),
        ("customer_id", action.customer_id.as_deref()),
    ]
    .into_iter()
    .filter_map(|(field, value)| value.map(|v| (field.to_owned(), v)))
    .chain(action.items.iter().enumerate().flat_map(|(i, item)| {
        [
            ("sku", Some(item.sku.as_str())),
            ("category", item.category.as_deref()),
        ]
        .into_iter()
        .filter_map(move |(name, value)| value.map(|v| (format!("items[{i}].{name}"), v)))
    }))
    .chain(action.metadata.iter().flat_map(|(name, value)| {
        [
            (format!("metadata.{name}"), name.as_str()),
            (format!("metadata.{name}"), value.as_str()),
        ]
    }));
    for (field, text) in texts {
        if looks_like_email(text) {
            return Err(refuse(
                &field,
                "holds a plain email address: send customer_email_sha256 instead",
            ));
        }
    }
    Ok(())
}

/// ISO 4217 alphabetic codes in use (and the fund and test codes).
const CURRENCIES: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWL";

/// A binary search over [`CURRENCIES`]: three letters each, one space apart,
/// sorted (a scan of the list was a pixel's largest single cost).
fn is_currency(code: &str) -> bool {
    let codes = CURRENCIES.as_bytes();
    let (mut low, mut high) = (0, codes.len().div_ceil(4));
    while low < high {
        let middle = (low + high) / 2;
        match codes[middle * 4..middle * 4 + 3].cmp(code.as_bytes()) {
            std::cmp::Ordering::Less => low = middle + 1,
            std::cmp::Ordering::Greater => high = middle,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_currency_list_is_sorted_codes_one_space_apart() {
        let codes: Vec<&str> = CURRENCIES.split(' ').collect();
        assert!(codes
            .iter()
            .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        for code in &codes {
            assert!(is_currency(code), "{code}");
        }
        for not in ["", "usd", "US", "USDX", "AAA", "ZZZ", "EUR ", "XXY"] {
            assert!(!is_currency(not), "{not:?}");
        }
    }

    const NOW_MS: i64 = 1_800_000_000_000;

    fn check(text: &str) -> Result<Action, ActionError> {
        let promos = |code: &str| (code == "jane10").then(|| Box::<str>::from("1234"));
        parse_action(
            text,
            &Context {
                now_ms: NOW_MS,
                click_window_days: 30,
                promo_partner: &promos,
            },
        )
    }

    fn click_id_at(ms: i64) -> String {
        ClickId::generate(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64))
            .as_str()
            .to_owned()
    }

    #[test]
    fn a_sale_keeps_its_decimals_as_sent_and_resolves_its_promo() {
        let click = click_id_at(NOW_MS - 3 * DAY_MS);
        let action = check(&format!(
            r#"{{"event":"sale","order_id":"A-1001","amount":59.90,"currency":"USD","items":[{{"sku":"SKU-1","category":"shoes","price":"29.95","quantity":2}}],"click_id":"{click}","promo_code":"JANE10","customer_id":"c-77","customer_status":"new","occurred_at":"2027-01-15T08:00:00Z","metadata":{{"store":"berlin"}}}}"#
        ))
        .unwrap();
        assert_eq!(action.amount.as_deref(), Some("59.90"));
        assert_eq!(action.items[0].price.as_deref(), Some("29.95"));
        assert_eq!(action.click_status, Some(ClickStatus::Valid));
        assert_eq!(action.promo_partner_id.as_deref(), Some("1234"));
        // 1.8e12 ms is 2027-01-15T08:00:00Z.
        assert_eq!(action.occurred_at_ms, NOW_MS);
        assert!(!action.test);
    }

    #[test]
    fn without_an_amount_the_items_are_summed_exactly() {
        let action = check(
            r#"{"event":"sale","order_id":"1","currency":"EUR","items":[{"sku":"a","price":"0.1","quantity":3},{"sku":"b","price":19.999},{"sku":"c","price":"5"}]}"#,
        )
        .unwrap();
        assert_eq!(action.amount.as_deref(), Some("25.299"));
        let unpriced = check(r#"{"event":"lead","items":[{"sku":"a"}]}"#).unwrap();
        assert_eq!(unpriced.amount, None);
        assert_eq!(unpriced.items[0].quantity, 1);
        let defaulted = check(r#"{"event":"lead"}"#).unwrap();
        assert_eq!(defaulted.occurred_at_ms, NOW_MS, "receipt time");
        assert_eq!(defaulted.click_status, None);
    }

    #[test]
    fn click_ids_are_placed_in_the_brands_window() {
        let status = |ms: i64| {
            check(&format!(
                r#"{{"event":"lead","click_id":"{}"}}"#,
                click_id_at(ms)
            ))
            .unwrap()
            .click_status
        };
        assert_eq!(status(NOW_MS - 29 * DAY_MS), Some(ClickStatus::Valid));
        assert_eq!(status(NOW_MS - 31 * DAY_MS), Some(ClickStatus::Expired));
        assert_eq!(status(NOW_MS + 4 * 60 * 1000), Some(ClickStatus::Valid));
        assert_eq!(status(NOW_MS + 6 * 60 * 1000), Some(ClickStatus::Future));
    }

    #[test]
    fn every_refusal_names_its_field() {
        for (text, field) in [
            (r#"{"order_id":"1"}"#, "event"),
            (r#"{"event":"Sale"}"#, "event"),
            (r#"{"event":"sale"}"#, "order_id"),
            (
                r#"{"event":"reversal","amount":"1","currency":"USD"}"#,
                "order_id",
            ),
            (r#"{"event":"lead","amount":"1.5"}"#, "currency"),
            (
                r#"{"event":"lead","amount":"-1","currency":"USD"}"#,
                "amount",
            ),
            (
                r#"{"event":"lead","amount":"1.23456","currency":"USD"}"#,
                "amount",
            ),
            (
                r#"{"event":"lead","amount":1e3,"currency":"USD"}"#,
                "amount",
            ),
            (
                r#"{"event":"lead","amount":"01.5","currency":"USD"}"#,
                "amount",
            ),
            (
                r#"{"event":"lead","amount":"1","currency":"usd"}"#,
                "currency",
            ),
            (
                r#"{"event":"lead","amount":"1","currency":"ABC"}"#,
                "currency",
            ),
            (r#"{"event":"lead","click_id":"not-a-ulid"}"#, "click_id"),
            (
                r#"{"event":"lead","items":[{"price":"1"}]}"#,
                "items[0].sku",
            ),
            (
                r#"{"event":"lead","items":[{"sku":"a","quantity":0}]}"#,
                "items[0].quantity",
            ),
            (
                r#"{"event":"lead","items":[{"sku":"a","colour":"red"}]}"#,
                "items[0].colour",
            ),
            (r#"{"event":"lead","items":{}}"#, "items"),
            (
                r#"{"event":"lead","customer_email_sha256":"jane@example.com"}"#,
                "customer_email_sha256",
            ),
            (
                r#"{"event":"lead","customer_status":"vip"}"#,
                "customer_status",
            ),
            (
                r#"{"event":"lead","occurred_at":"2027-01-15T08:06:00Z"}"#,
                "occurred_at",
            ),
            (
                r#"{"event":"lead","occurred_at":"yesterday"}"#,
                "occurred_at",
            ),
            (r#"{"event":"lead","test":"yes"}"#, "test"),
            (r#"{"event":"lead","metadata":{"a":1}}"#, "metadata.a"),
            (r#"{"event":"lead","surprise":1}"#, "surprise"),
            (r#"{"event":"lead","event":"sale"}"#, "event"),
            (
                r#"{"event":"lead","customer_id":"jane.doe@example.com"}"#,
                "customer_id",
            ),
            (
                r#"{"event":"lead","metadata":{"note":"mail jane@example.co.uk"}}"#,
                "metadata.note",
            ),
            (
                r#"{"event":"lead","items":[{"sku":"for x@y.io"}]}"#,
                "items[0].sku",
            ),
            (r#"[1]"#, "action"),
        ] {
            let error = check(text).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
        let many = format!(
            r#"{{"event":"lead","items":[{}]}}"#,
            vec![r#"{"sku":"a"}"#; MAX_ITEMS + 1].join(",")
        );
        assert_eq!(check(&many).unwrap_err().field, "items");
        // Not emails: a handle, a lone at sign, a size.
        assert!(check(
            r#"{"event":"lead","metadata":{"handle":"@jane","note":"2 @ 3"},"items":[{"sku":"PACK@2.5KG"}]}"#
        )
        .is_ok());
    }
}
