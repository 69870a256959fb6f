//! The query form of an action (`GET /v1/px?event=sale&order_id=…`): a pixel's
//! parameters turned into the JSON object the checker reads, so both forms obey
//! one set of rules. Items come as repeated `sku`, `price`, `qty` (or
//! `quantity`) and `category`, matched by position; metadata as `metadata.NAME`.
//! An empty value counts as absent (a page template's unfilled placeholder).

use serde_json::{Map, Value};

use super::{refuse, ActionError, FIELDS};

/// Fields given once, as strings: all but the nested ones.
fn is_single(name: &str) -> bool {
    !matches!(name, "items" | "metadata")
}

/// Items' fields, repeated once per item, and their names in the JSON form.
const ITEM_FIELDS: &[(&str, &str)] = &[
    ("sku", "sku"),
    ("price", "price"),
    ("qty", "quantity"),
    ("quantity", "quantity"),
    ("category", "category"),
];
/// Parameters of the pixel itself, not of the action.
const CHANNEL: &str = "channel";

/// A query turned into an action's JSON, and whether the tag sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryForm {
    pub json: String,
    /// `channel=tag`: sent by the first-party tag (else a pixel).
    pub from_tag: bool,
}

/// The action a query describes, as JSON for [`super::parse_action`].
pub fn from_query(query: &str) -> Result<QueryForm, ActionError> {
    let mut action = Map::new();
    let mut metadata = Map::new();
    // Each item field's values in order, by its JSON name.
    let mut columns: Vec<(&'static str, Vec<String>)> = Vec::new();
    let mut from_tag = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if let Some(key) = name.strip_prefix("metadata.") {
            if metadata
                .insert(key.to_owned(), Value::String(value.into_owned()))
                .is_some()
            {
                return Err(refuse(&name, "given twice"));
            }
            continue;
        }
        if name == CHANNEL {
            let tag = match &*value {
                "tag" => true,
                "pixel" => false,
                _ => return Err(refuse(CHANNEL, "must be pixel or tag")),
            };
            if from_tag.replace(tag).is_some() {
                return Err(refuse(CHANNEL, "given twice"));
            }
            continue;
        }
        if let Some((_, json_name)) = ITEM_FIELDS
            .iter()
            .find(|(query_name, _)| *query_name == name)
        {
            match columns.iter_mut().find(|(n, _)| n == json_name) {
                Some((_, values)) => values.push(value.into_owned()),
                None => columns.push((json_name, vec![value.into_owned()])),
            }
            continue;
        }
        let Some(field) = FIELDS
            .iter()
            .find(|field| **field == name && is_single(field))
        else {
            return Err(refuse(&name, "unknown field"));
        };
        if action.contains_key(*field) {
            return Err(refuse(field, "given twice"));
        }
        if value.is_empty() {
            action.insert(field.to_string(), Value::Null);
            continue;
        }
        let value = match (*field, &*value) {
            ("test", "true" | "1") => Value::Bool(true),
            ("test", "false" | "0") => Value::Bool(false),
            _ => Value::String(value.into_owned()),
        };
        action.insert(field.to_string(), value);
    }
    if !columns.is_empty() {
        action.insert("items".to_owned(), Value::Array(items(&columns)?));
    }
    if !metadata.is_empty() {
        action.insert("metadata".to_owned(), Value::Object(metadata));
    }
    Ok(QueryForm {
        json: Value::Object(action).to_string(),
        from_tag: from_tag.unwrap_or(false),
    })
}

/// The items of repeated fields: one per `sku`, each other field given once per
/// sku or not at all.
fn items(columns: &[(&'static str, Vec<String>)]) -> Result<Vec<Value>, ActionError> {
    let count = columns
        .iter()
        .find(|(name, _)| *name == "sku")
        .map_or(0, |(_, skus)| skus.len());
    for (name, values) in columns {
        if values.len() != count {
            return Err(refuse(
                name,
                format!(
                    "given {} times for {count} sku: give one per sku, in the same order",
                    values.len()
                ),
            ));
        }
    }
    Ok((0..count)
        .map(|i| {
            let mut item = Map::new();
            for (name, values) in columns {
                let text = &values[i];
                let value = if text.is_empty() {
                    Value::Null
                } else if *name == "quantity" {
                    // A number when it is digits (the checker refuses anything else).
                    text.parse::<u64>()
                        .map_or_else(|_| Value::String(text.clone()), Value::from)
                } else {
                    Value::String(text.clone())
                };
                item.insert(name.to_string(), value);
            }
            Value::Object(item)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_of(query: &str) -> Value {
        serde_json::from_str(&from_query(query).unwrap().json).unwrap()
    }

    #[test]
    fn single_fields_items_by_position_and_metadata() {
        let value = json_of(
            "event=sale&order_id=A-1&currency=EUR&sku=S1&price=9.95&qty=2&sku=S2&price=1&qty=1\
             &metadata.store=berlin&test=1&click_id=01JD0000000000000000000000",
        );
        assert_eq!(
            value,
            json!({
                "event": "sale", "order_id": "A-1", "currency": "EUR",
                "click_id": "01JD0000000000000000000000", "test": true,
                "items": [
                    {"sku": "S1", "price": "9.95", "quantity": 2},
                    {"sku": "S2", "price": "1", "quantity": 1}
                ],
                "metadata": {"store": "berlin"}
            })
        );
    }

    #[test]
    fn empty_values_are_absent_and_the_channel_is_the_pixels_own() {
        let form = from_query("event=lead&promo_code=&channel=tag").unwrap();
        assert!(form.from_tag);
        assert_eq!(
            serde_json::from_str::<Value>(&form.json).unwrap(),
            json!({"event": "lead", "promo_code": null})
        );
        assert!(!from_query("event=lead").unwrap().from_tag);
    }

    #[test]
    fn refusals_name_the_parameter() {
        for (query, field, reason) in [
            ("event=lead&color=red", "color", "unknown field"),
            ("event=lead&event=sale", "event", "given twice"),
            (
                "event=sale&sku=A&sku=B&price=1",
                "price",
                "given 1 times for 2 sku",
            ),
            ("event=sale&price=1", "price", "given 1 times for 0 sku"),
            ("event=lead&channel=api", "channel", "must be pixel or tag"),
            (
                "event=lead&metadata.a=1&metadata.a=2",
                "metadata.a",
                "given twice",
            ),
        ] {
            let error = from_query(query).unwrap_err();
            assert_eq!(error.field, field, "{query}");
            assert!(
                error.reason.starts_with(reason),
                "{query}: {}",
                error.reason
            );
        }
    }

    #[test]
    fn a_quantity_that_is_not_digits_stays_text_for_the_checker_to_refuse() {
        let value = json_of("event=sale&sku=A&qty=2%2C5");
        assert_eq!(value["items"][0]["quantity"], json!("2,5"));
        let value = json_of("event=sale&sku=A&qty=1e3");
        assert_eq!(value["items"][0]["quantity"], json!("1e3"));
    }
}
