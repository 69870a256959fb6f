//! The action checker over any text, in both forms (a JSON object, and a
//! pixel's query string turned into one): never a panic; an accepted action's
//! amount and prices are non-negative decimals of at most 4 decimals, kept as
//! text; a query form always becomes JSON the checker can read.
#![no_main]

use clickedge::action::query::from_query;
use clickedge::action::{parse_action, Action, Context};
use libfuzzer_sys::fuzz_target;

fn is_decimal(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.len() <= 4
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let promos = |code: &str| (code == "jane10").then(|| Box::<str>::from("1234"));
    let context = Context {
        now_ms: 1_800_000_000_000,
        click_window_days: 30,
        promo_partner: &promos,
    };
    if let Ok(action) = parse_action(text, &context) {
        holds(&action, &context);
    }
    if let Ok(form) = from_query(text) {
        serde_json::from_str::<serde_json::Value>(&form.json).expect("the query form is JSON");
        if let Ok(action) = parse_action(&form.json, &context) {
            holds(&action, &context);
        }
    }
});

fn holds(action: &Action, context: &Context<'_>) {
    assert!(action.amount.as_deref().is_none_or(is_decimal), "{:?}", action.amount);
    for item in &action.items {
        assert!(item.price.as_deref().is_none_or(is_decimal));
        assert!(item.quantity >= 1);
    }
    if action.amount.is_some() {
        assert!(action.currency.is_some(), "an amount without a currency");
    }
    assert!(action.occurred_at_ms <= context.now_ms + 5 * 60 * 1000);
}
