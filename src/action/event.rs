//! The action event (SPEC §8): one JSON object per accepted action, schema
//! `action.v1`, on `--actions-topic`.
//!
//! Serialized by serde, unlike `click.v1`: an action is rare next to a click
//! (a report per sale, not per page view), and its items and metadata are
//! nested; the schema in `deploy/schema/action.v1.json` is checked against
//! what this writes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;

use super::{Action, Item};
use crate::click_id::ClickId;
use crate::metrics::ActionChannel;

pub const SCHEMA_VERSION: &str = "action.v1";

/// What the request adds to a checked action.
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    pub received_at: OffsetDateTime,
    pub brand_id: &'a str,
    pub channel: ActionChannel,
    /// Reported with one of the brand's keys (`POST /v1/actions`).
    pub verified: bool,
    /// Reported with one of the brand's test keys: every action is a test.
    pub test_key: bool,
    /// The tracking host the report came to.
    pub host: &'a str,
    pub ip: IpAddr,
    pub user_agent: Option<&'a str>,
    pub node: &'a str,
}

/// One `action.v1` event, fields in schema order.
#[derive(Debug, Serialize)]
pub struct ActionEvent<'a> {
    v: u8,
    action_id: &'a str,
    #[serde(serialize_with = "crate::event::ts_millis")]
    received_at: OffsetDateTime,
    #[serde(serialize_with = "crate::event::ts_millis")]
    occurred_at: OffsetDateTime,
    brand_id: &'a str,
    event: &'a str,
    channel: &'static str,
    verified: bool,
    test: bool,
    order_id: Option<&'a str>,
    amount: Option<&'a str>,
    currency: Option<&'a str>,
    items: Vec<EventItem<'a>>,
    click_id: Option<&'a str>,
    click_status: Option<&'static str>,
    promo_code: Option<&'a str>,
    promo_partner_id: Option<&'a str>,
    customer_id: Option<&'a str>,
    customer_email_sha256: Option<&'a str>,
    customer_status: Option<&'a str>,
    metadata: &'a BTreeMap<String, String>,
    host: &'a str,
    ip: IpAddr,
    user_agent: Option<&'a str>,
    node: &'a str,
}

#[derive(Debug, Serialize)]
struct EventItem<'a> {
    sku: &'a str,
    category: Option<&'a str>,
    price: Option<&'a str>,
    quantity: u64,
}

impl<'a> ActionEvent<'a> {
    pub fn new(action: &'a Action, action_id: &'a ClickId, receipt: &Receipt<'a>) -> Self {
        let occurred_at = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(action.occurred_at_ms) * 1_000_000,
        )
        .unwrap_or(receipt.received_at);
        ActionEvent {
            v: 1,
            action_id: action_id.as_str(),
            received_at: receipt.received_at,
            occurred_at,
            brand_id: receipt.brand_id,
            event: &action.event,
            channel: receipt.channel.as_str(),
            verified: receipt.verified,
            test: action.test || receipt.test_key,
            order_id: action.order_id.as_deref(),
            amount: action.amount.as_deref(),
            currency: action.currency.as_deref(),
            items: action.items.iter().map(EventItem::from).collect(),
            click_id: action.click_id.as_ref().map(ClickId::as_str),
            click_status: action.click_status.map(|status| status.as_str()),
            promo_code: action.promo_code.as_deref(),
            promo_partner_id: action.promo_partner_id.as_deref(),
            customer_id: action.customer_id.as_deref(),
            customer_email_sha256: action.customer_email_sha256.as_deref(),
            customer_status: action.customer_status.as_deref(),
            metadata: &action.metadata,
            host: receipt.host,
            ip: receipt.ip,
            user_agent: receipt.user_agent,
            node: receipt.node,
        }
    }

    /// The message key: `{brand_id}|{event}|{order_id}` when there is an order
    /// id, so retries of one report land on one partition, together; else the
    /// action id.
    pub fn key(&self) -> String {
        match self.order_id {
            Some(order_id) => format!("{}|{}|{order_id}", self.brand_id, self.event),
            None => self.action_id.to_owned(),
        }
    }

    /// The event's JSON, appended to `buf`.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        serde_json::to_writer(buf, self).expect("an action event serializes");
    }
}

impl<'a> From<&'a Item> for EventItem<'a> {
    fn from(item: &'a Item) -> Self {
        EventItem {
            sku: &item.sku,
            category: item.category.as_deref(),
            price: item.price.as_deref(),
            quantity: item.quantity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{parse_action, Context};

    fn receipt(test_key: bool) -> Receipt<'static> {
        Receipt {
            received_at: OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap(),
            brand_id: "acme",
            channel: ActionChannel::Api,
            verified: true,
            test_key,
            host: "acme.sjv.io",
            ip: "203.0.113.9".parse().unwrap(),
            user_agent: Some("curl/8"),
            node: "edge-1",
        }
    }

    fn action(text: &str) -> Action {
        let promos = |code: &str| (code == "jane10").then(|| Box::<str>::from("1234"));
        let context = Context {
            now_ms: 1_795_000_000_000,
            click_window_days: 30,
            promo_partner: &promos,
        };
        parse_action(text, &context).unwrap()
    }

    #[test]
    fn every_field_of_the_schema_in_order() {
        let click = ClickId::generate(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_794_999_000),
        );
        let action = action(&format!(
            r#"{{"event":"sale","order_id":"A-1001","currency":"USD","items":[{{"sku":"SKU-1","category":"shoes","price":"29.95","quantity":2}}],"click_id":"{click}","promo_code":"JANE10","customer_id":"c-77","customer_status":"new","occurred_at":"2026-11-18T11:00:00.5Z","metadata":{{"store":"berlin"}}}}"#
        ));
        let id = ClickId::parse("01JD0000000000000000000000").unwrap();
        let event = ActionEvent::new(&action, &id, &receipt(false));
        let mut json = Vec::new();
        event.write_json(&mut json);
        let expected = format!(
            concat!(
                r#"{{"v":1,"action_id":"01JD0000000000000000000000","received_at":"2026-11-18T11:06:40.000Z","#,
                r#""occurred_at":"2026-11-18T11:00:00.500Z","brand_id":"acme","event":"sale","channel":"api","#,
                r#""verified":true,"test":false,"order_id":"A-1001","amount":"59.90","currency":"USD","#,
                r#""items":[{{"sku":"SKU-1","category":"shoes","price":"29.95","quantity":2}}],"#,
                r#""click_id":"{}","click_status":"valid","promo_code":"JANE10","promo_partner_id":"1234","#,
                r#""customer_id":"c-77","customer_email_sha256":null,"customer_status":"new","#,
                r#""metadata":{{"store":"berlin"}},"host":"acme.sjv.io","ip":"203.0.113.9","#,
                r#""user_agent":"curl/8","node":"edge-1"}}"#
            ),
            click
        );
        assert_eq!(String::from_utf8(json).unwrap(), expected);
        assert_eq!(event.key(), "acme|sale|A-1001");
    }

    #[test]
    fn without_an_order_id_the_key_is_the_action_id_and_a_test_key_makes_a_test() {
        let action = action(r#"{"event":"lead"}"#);
        let id = ClickId::parse("01JD0000000000000000000001").unwrap();
        let event = ActionEvent::new(&action, &id, &receipt(true));
        assert_eq!(event.key(), "01JD0000000000000000000001");
        let mut json = Vec::new();
        event.write_json(&mut json);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["test"], true);
        assert_eq!(value["items"], serde_json::json!([]));
        assert_eq!(value["click_status"], serde_json::Value::Null);
        // Received and occurred at the same instant when no time is given.
        assert_eq!(value["occurred_at"], value["received_at"]);
    }
}
