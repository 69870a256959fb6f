//! The request path's decision, pure: what the edge answers, given what the
//! request says ([`Facts`]), a snapshot of the map and the ids to hand out. No
//! socket, no clock, no Kafka: the SPEC §2 rules are tested here as tables, and
//! the response, the event and the metric labels are all derived from the
//! [`Answer`].
//!
//! Why one long file: two thirds of it are SPEC §2's rules as table tests, beside
//! the decision they test.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;

use crate::click_id::ClickId;
use crate::destination::IncomingQuery;
use crate::links::rules::{first_match, primary_language, Visit};
use crate::links::{resolve, AppLink, AppSiteFile, Link, LinkKind, LinkMap, Route};
use crate::metrics::{Outcome, RequestType};
use crate::useragent::{Classifier, Client, Os};

/// What the decision needs from a request, read from it by the parse phase.
#[derive(Debug)]
pub struct Facts<'r> {
    pub method: &'r Method,
    /// The host, normalized (lowercase, no port, no trailing dot); `None` when
    /// the request has no usable one.
    pub host: Option<Cow<'r, str>>,
    pub path: &'r str,
    pub query: Option<&'r str>,
    pub user_agent: Option<Cow<'r, str>>,
    /// For rules (the primary language) and the event.
    pub accept_language: Option<Cow<'r, str>>,
    /// The client's country (ISO 3166-1 alpha-2) from `--geoip-db`; `None`
    /// without a database or for an address it does not know.
    pub country: Option<[u8; 2]>,
    pub visitor: VisitorFact,
    pub now: SystemTime,
}

/// What the request says of its visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisitorFact {
    /// `Sec-GPC: 1`, `DNT: 1`, or `--no-visitor-cookie`: no cookie read or set.
    NotTracked,
    /// A well-formed `ce_vid` cookie.
    Known(ClickId),
    /// No cookie (or a malformed one): a new visitor.
    Unknown,
}

/// The server's settings the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'s> {
    /// `--click-id-param`; a record's own wins.
    pub click_id_param: &'s str,
}

/// What the edge answers.
// One lives on the stack per request; boxing the click would cost an
// allocation per click.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Answer<'m, 'r> {
    /// Neither GET nor HEAD: 405 with `Allow: GET, HEAD`.
    MethodNotAllowed,
    /// No usable `Host`: 400.
    NoHost,
    /// `GET /robots.txt` on any host.
    Robots,
    /// An app-site association file: 200, this JSON.
    AppSite(&'m str),
    /// No record for the host: 404, no event.
    UnknownHost,
    /// Known host, no matching record and no fallback: 404, no event.
    NotFound,
    /// A click on a record (a match, or the host's fallback).
    Click(ClickAnswer<'m, 'r>),
    /// `GET /stat.js?partner=…` on a host with a stat record: the STAT tag
    /// making that partner's links through `link` (SPEC §9).
    StatScript {
        link: &'m Link,
        partner_id: Cow<'r, str>,
    },
    /// `/stat.js` with a missing or malformed `partner`: 400.
    StatBadPartner,
}

/// A click: the way it is answered, and everything its event says.
#[derive(Debug)]
pub struct ClickAnswer<'m, 'r> {
    pub link: &'m Link,
    /// From the request path for tracking links, from the record otherwise.
    pub partner_id: Option<&'r str>,
    pub click_id: ClickId,
    pub visitor: Option<ClickId>,
    /// The visitor id is new: the response sets the cookie.
    pub new_visitor: bool,
    pub query: IncomingQuery<'r>,
    /// The destination as built (§2 "Destination building"), click id included.
    pub location: String,
    /// `"accepted"` or `"rejected"` when the request carried a deep link.
    pub deeplink: Option<&'static str>,
    pub client: Client,
    pub way: Way<'m>,
    /// A GET: the click is recorded. A HEAD gets the same answer and no event.
    pub recorded: bool,
    /// The index of the rule that gave the destination (SPEC §9).
    pub rule: Option<usize>,
    /// The split's variant, when no rule held.
    pub variant: Option<usize>,
    /// A test click: `ce_test=1` or a `"test": true` record.
    pub test: bool,
}

/// How a click is answered.
#[derive(Debug, Clone, Copy)]
pub enum Way<'m> {
    /// A redirect to the built location, with the record's status.
    Redirect { status: u16 },
    /// A phone, a record with an app and no interstitial: 302 to the store.
    Store { url: &'m str },
    /// A phone, a record with an app and `interstitial: true`: the 200 page.
    Interstitial {
        app: &'m AppLink,
        store: Option<&'m str>,
    },
}

impl ClickAnswer<'_, '_> {
    pub fn outcome(&self) -> Outcome {
        match self.way {
            Way::Redirect { .. } => Outcome::Redirect,
            Way::Store { .. } => Outcome::AppStore,
            Way::Interstitial { .. } => Outcome::Interstitial,
        }
    }

    /// The event's `outcome`.
    pub fn event_outcome(&self) -> &'static str {
        match self.way {
            Way::Redirect { .. } => "redirect",
            Way::Store { .. } => "app_store",
            Way::Interstitial { .. } => "interstitial",
        }
    }

    /// Where the visitor is sent: the store for `Store`, else the location.
    pub fn sent_to(&self) -> &str {
        match self.way {
            Way::Store { url } => url,
            _ => &self.location,
        }
    }

    pub fn status(&self) -> u16 {
        match self.way {
            Way::Redirect { status } => status,
            Way::Store { .. } => 302,
            Way::Interstitial { .. } => 200,
        }
    }
}

impl Answer<'_, '_> {
    /// The metrics' labels: what was asked for, and how it was answered.
    pub fn labels(&self) -> (RequestType, Outcome) {
        match self {
            Answer::MethodNotAllowed => (RequestType::None, Outcome::MethodNotAllowed),
            Answer::NoHost => (RequestType::None, Outcome::BadRequest),
            Answer::Robots => (RequestType::None, Outcome::Robots),
            Answer::AppSite(_) => (RequestType::AppSite, Outcome::AppSite),
            Answer::UnknownHost => (RequestType::None, Outcome::UnknownHost),
            Answer::NotFound => (RequestType::None, Outcome::NotFound),
            Answer::Click(click) => (request_type(click.link.kind), click.outcome()),
            Answer::StatScript { .. } => (RequestType::Tracking, Outcome::StatScript),
            Answer::StatBadPartner => (RequestType::Tracking, Outcome::BadRequest),
        }
    }
}

/// Decides the answer. `new_id` hands out ids (the click's, then a new
/// visitor's): the caller's generator, or a fixed sequence in tests.
pub fn decide<'m, 'r>(
    facts: &Facts<'r>,
    map: &'m LinkMap,
    settings: Settings<'_>,
    classifier: &Classifier,
    mut new_id: impl FnMut() -> ClickId,
) -> Answer<'m, 'r>
where
    'm: 'r,
{
    if facts.method != Method::GET && facts.method != Method::HEAD {
        return Answer::MethodNotAllowed;
    }
    let Some(host) = facts.host.as_deref() else {
        return Answer::NoHost;
    };
    let now_ms = facts
        .now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let (link, partner_id) = match resolve(map, host, facts.path, now_ms) {
        Route::Robots => return Answer::Robots,
        Route::AppSite(site, file) => {
            let body = match file {
                AppSiteFile::AppleAppSiteAssociation => site.apple_app_site_association.as_deref(),
                AppSiteFile::AssetLinks => site.assetlinks.as_deref(),
            };
            return Answer::AppSite(body.unwrap_or_default());
        }
        Route::UnknownHost => return Answer::UnknownHost,
        Route::NotFound => return Answer::NotFound,
        Route::Stat(link) => {
            let partner = facts.query.and_then(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "partner")
                    .map(|(_, value)| value)
            });
            return match partner.filter(|p| crate::links::is_valid_id(p)) {
                Some(partner_id) => Answer::StatScript {
                    link,
                    partner_id: Cow::Owned(partner_id.into_owned()),
                },
                None => Answer::StatBadPartner,
            };
        }
        Route::Redirect { link, partner_id } => (&**link, partner_id),
    };

    let click_id = new_id();
    let (visitor, new_visitor) = match facts.visitor {
        VisitorFact::NotTracked => (None, false),
        VisitorFact::Known(known) => (Some(known), false),
        VisitorFact::Unknown => (Some(new_id()), true),
    };
    let query = IncomingQuery::parse(facts.query);
    let client = classifier.classify(facts.user_agent.as_deref());
    // SPEC §9: the first rule that holds, else the split's variant for this
    // visitor (or click), else the record's own URL.
    let rules = link.rules();
    let rule = (!rules.is_empty())
        .then(|| {
            let visit = Visit {
                device: client.device,
                os: client.os,
                country: facts.country,
                language: facts.accept_language.as_deref().and_then(primary_language),
                query: facts.query,
            };
            first_match(rules, &visit)
        })
        .flatten();
    let split = link.split().filter(|_| rule.is_none());
    let variant = split.map(|split| split.pick(visitor.as_ref().unwrap_or(&click_id).as_str()));
    let base = match (rule, split.zip(variant)) {
        (Some(i), _) => &rules[i].destination,
        (None, Some((split, i))) => &split.variants[i].destination,
        (None, None) => &link.destination,
    };
    let mut location = String::with_capacity(256);
    let deeplink = link.write_location_from(
        base,
        &query,
        settings.click_id_param,
        click_id.as_str(),
        &mut location,
    );
    let test = link.is_test() || query.test;

    // A person on a phone, for a record with an app: the app's way instead.
    let app = link
        .app()
        .filter(|_| !client.bot && matches!(client.os, Os::Ios | Os::Android));
    let store = app.and_then(|app| match client.os {
        Os::Ios => app.ios_url.as_deref(),
        _ => app.android_url.as_deref(),
    });
    let way = match (app, store) {
        (Some(app), store) if app.interstitial => Way::Interstitial { app, store },
        (Some(_), Some(url)) => Way::Store { url },
        _ => Way::Redirect {
            status: link.status.code(),
        },
    };
    Answer::Click(ClickAnswer {
        link,
        partner_id,
        click_id,
        visitor,
        new_visitor,
        query,
        location,
        deeplink,
        client,
        way,
        // HEADs come from link previews with browser agents: no event, or they
        // would count as clicks.
        recorded: facts.method == Method::GET,
        rule,
        variant,
        test,
    })
}

fn request_type(kind: LinkKind) -> RequestType {
    match kind {
        LinkKind::Tracking => RequestType::Tracking,
        LinkKind::Vanity => RequestType::Vanity,
        LinkKind::Domain => RequestType::Domain,
        LinkKind::Fallback => RequestType::Fallback,
    }
}

/// SPEC §2's rules as tables, without sockets or Kafka (the socket tests in
/// `tests/it` keep the wire: headers, cookies, events read back).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::load_str;

    const LINKS: &str = r#"
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/landing?src=aff","deeplink_hosts":["www.acme.com","*.shop.acme.com"]}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"2","url":"https://www.acme.com/q?a=1","forward_query":false,"status":307,"click_id_param":"irclickid"}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"3","ad_id":"4","url":"https://www.acme.com/old","valid_until":"2020-01-01T00:00:00Z"}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"5","ad_id":"6","url":"https://www.acme.com/app","app":{"ios_url":"https://apps.apple.com/app/id1","android_url":"https://play.google.com/store/apps/details?id=com.acme","deeplink":"acme://home"}}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"7","ad_id":"8","url":"https://www.acme.com/page","app":{"ios_url":"https://apps.apple.com/app/id1","deeplink":"acme://home","interstitial":true}}
{"type":"fallback","host":"acme.sjv.io","url":"https://www.acme.com/"}
{"type":"app_site","host":"acme.sjv.io","apple_app_site_association":{"applinks":{"details":[]}},"assetlinks":[]}
{"type":"vanity","host":"acme.pxf.io","slug":"janes-picks","partner_id":"77","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/jane"}
{"type":"domain","host":"acme-deals.com","partner_id":"88","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/deals"}
"#;
    const CLICK: &str = "01HZY8X6Q6A1B2C3D4E5F6G7H8";
    const NEW_VISITOR: &str = "01HZY8X6Q6A1B2C3D4E5F6G7H9";
    const KNOWN_VISITOR: &str = "01HZY8X6Q6A1B2C3D4E5F6G7HA";
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
    const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const SLACKBOT: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

    /// A request as the parse phase would see it.
    struct Ask<'a> {
        method: Method,
        host: Option<&'a str>,
        target: &'a str,
        user_agent: Option<&'a str>,
        accept_language: Option<&'a str>,
        country: Option<[u8; 2]>,
        visitor: VisitorFact,
    }

    fn get<'a>(host: &'a str, target: &'a str) -> Ask<'a> {
        Ask {
            method: Method::GET,
            host: Some(host),
            target,
            user_agent: Some(DESKTOP),
            accept_language: None,
            country: None,
            visitor: VisitorFact::Unknown,
        }
    }

    /// A click's status, where it sends the visitor, the event's outcome, the
    /// record kind, the partner id, the deep link's verdict.
    type ClickSummary = (
        u16,
        String,
        &'static str,
        LinkKind,
        Option<String>,
        Option<&'static str>,
    );

    /// What was decided, owned, for comparisons.
    #[derive(Debug, PartialEq)]
    struct Decided {
        labels: (RequestType, Outcome),
        click: Option<ClickSummary>,
    }

    /// What the parse phase would read from `ask`, at `now`.
    fn facts_of<'a>(ask: &'a Ask<'a>, now: SystemTime) -> Facts<'a> {
        let (path, query) = match ask.target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (ask.target, None),
        };
        Facts {
            method: &ask.method,
            host: ask.host.map(Cow::Borrowed),
            path,
            query,
            user_agent: ask.user_agent.map(Cow::Borrowed),
            accept_language: ask.accept_language.map(Cow::Borrowed),
            country: ask.country,
            visitor: ask.visitor,
            now,
        }
    }

    fn decided(ask: &Ask<'_>) -> Decided {
        let (answer, _) = decided_with(ask);
        answer
    }

    /// Also the click's ids and whether it is recorded.
    fn decided_with(ask: &Ask<'_>) -> (Decided, Option<(Option<String>, bool, bool)>) {
        let map = load_str(LINKS, "test", true).unwrap().map;
        let facts = facts_of(
            ask,
            UNIX_EPOCH + std::time::Duration::from_millis(1_800_000_000_000),
        );
        let mut ids = [CLICK, NEW_VISITOR].into_iter();
        let answer = decide(
            &facts,
            &map,
            Settings {
                click_id_param: "clickid",
            },
            &Classifier::new(),
            || ClickId::parse(ids.next().expect("two ids at most")).unwrap(),
        );
        let labels = answer.labels();
        match answer {
            Answer::Click(click) => {
                assert_eq!(click.click_id.as_str(), CLICK);
                let ids = (
                    click.visitor.map(|v| v.as_str().to_owned()),
                    click.new_visitor,
                    click.recorded,
                );
                let decided = Decided {
                    labels,
                    click: Some((
                        click.status(),
                        click.sent_to().to_owned(),
                        click.event_outcome(),
                        click.link.kind,
                        click.partner_id.map(str::to_owned),
                        click.deeplink,
                    )),
                };
                (decided, Some(ids))
            }
            _ => (
                Decided {
                    labels,
                    click: None,
                },
                None,
            ),
        }
    }

    fn redirect(
        kind: LinkKind,
        status: u16,
        location: &str,
        partner: Option<&str>,
        deeplink: Option<&'static str>,
    ) -> Decided {
        let outcome = match (kind, status) {
            (_, 200) => Outcome::Interstitial,
            _ if location.contains("apps.apple.com") || location.contains("play.google.com") => {
                Outcome::AppStore
            }
            _ => Outcome::Redirect,
        };
        Decided {
            labels: (request_type(kind), outcome),
            click: Some((
                status,
                location.to_owned(),
                match outcome {
                    Outcome::Interstitial => "interstitial",
                    Outcome::AppStore => "app_store",
                    _ => "redirect",
                },
                kind,
                partner.map(str::to_owned),
                deeplink,
            )),
        }
    }

    fn plain(labels: (RequestType, Outcome)) -> Decided {
        Decided {
            labels,
            click: None,
        }
    }

    #[test]
    fn link_kinds_match_their_shapes() {
        use LinkKind::*;
        let landing = format!("https://www.acme.com/landing?src=aff&clickid={CLICK}");
        let table = [
            // tracking: /c/{partner}/{ad}/{campaign}, trailing segments ignored.
            (
                get("acme.sjv.io", "/c/1234/5678/9012"),
                redirect(Tracking, 302, &landing, Some("1234"), None),
            ),
            (
                get("acme.sjv.io", "/c/1234/5678/9012/extra/x"),
                redirect(Tracking, 302, &landing, Some("1234"), None),
            ),
            // Any partner id of the right shape is accepted and recorded.
            (
                get("acme.sjv.io", "/c/any_Partner-9/5678/9012"),
                redirect(Tracking, 302, &landing, Some("any_Partner-9"), None),
            ),
            // vanity: slug case-insensitive, one trailing slash ignored.
            (
                get("acme.pxf.io", "/janes-picks"),
                redirect(
                    Vanity,
                    302,
                    &format!("https://www.acme.com/jane?clickid={CLICK}"),
                    Some("77"),
                    None,
                ),
            ),
            (
                get("acme.pxf.io", "/JANES-Picks/"),
                redirect(
                    Vanity,
                    302,
                    &format!("https://www.acme.com/jane?clickid={CLICK}"),
                    Some("77"),
                    None,
                ),
            ),
            // domain: any path, and www.{host}.
            (
                get("acme-deals.com", "/"),
                redirect(
                    Domain,
                    302,
                    &format!("https://www.acme.com/deals?clickid={CLICK}"),
                    Some("88"),
                    None,
                ),
            ),
            (
                get("www.acme-deals.com", "/spring/sale"),
                redirect(
                    Domain,
                    302,
                    &format!("https://www.acme.com/deals?clickid={CLICK}"),
                    Some("88"),
                    None,
                ),
            ),
            // app_site files, as JSON.
            (
                get("acme.sjv.io", "/.well-known/apple-app-site-association"),
                plain((RequestType::AppSite, Outcome::AppSite)),
            ),
            (
                get("acme.sjv.io", "/.well-known/assetlinks.json"),
                plain((RequestType::AppSite, Outcome::AppSite)),
            ),
        ];
        for (ask, want) in table {
            assert_eq!(decided(&ask), want, "{:?}{}", ask.host, ask.target);
        }
    }

    #[test]
    fn unmatched_requests() {
        use LinkKind::*;
        let fallback = format!("https://www.acme.com/?clickid={CLICK}");
        let post = Ask {
            method: Method::POST,
            ..get("acme.sjv.io", "/c/1234/5678/9012")
        };
        let long_partner = format!("/c/{}/5678/9012", "p".repeat(65));
        let no_host = Ask {
            host: None,
            ..get("acme.sjv.io", "/c/1234/5678/9012")
        };
        let table = [
            // Known host, no record: the host's fallback (which records no
            // partner: the fallback record has none).
            (
                get("acme.sjv.io", "/c/1234/0/0"),
                redirect(Fallback, 302, &fallback, None, None),
            ),
            (
                get("acme.sjv.io", "/anything"),
                redirect(Fallback, 302, &fallback, None, None),
            ),
            // A partner id not of the id shape: the fallback.
            (
                get("acme.sjv.io", "/c/12%2034/5678/9012"),
                redirect(Fallback, 302, &fallback, None, None),
            ),
            (
                get("acme.sjv.io", &long_partner),
                redirect(Fallback, 302, &fallback, None, None),
            ),
            // Out of its validity window: unmatched, so the fallback.
            (
                get("acme.sjv.io", "/c/1234/4/3"),
                redirect(Fallback, 302, &fallback, None, None),
            ),
            // Known host without a fallback: 404, no click.
            (
                get("acme.pxf.io", "/unknown-slug"),
                plain((RequestType::None, Outcome::NotFound)),
            ),
            // Unknown host: 404, no click.
            (
                get("nobody.example", "/c/1234/5678/9012"),
                plain((RequestType::None, Outcome::UnknownHost)),
            ),
            // robots.txt on any host, known or not.
            (
                get("acme.sjv.io", "/robots.txt"),
                plain((RequestType::None, Outcome::Robots)),
            ),
            (
                get("nobody.example", "/robots.txt"),
                plain((RequestType::None, Outcome::Robots)),
            ),
            // Other methods: 405; no Host: 400.
            (post, plain((RequestType::None, Outcome::MethodNotAllowed))),
            (no_host, plain((RequestType::None, Outcome::BadRequest))),
        ];
        for (ask, want) in table {
            assert_eq!(
                decided(&ask),
                want,
                "{} {:?}{}",
                ask.method,
                ask.host,
                ask.target
            );
        }
        for method in [Method::PUT, Method::DELETE, Method::OPTIONS, Method::PATCH] {
            let ask = Ask {
                method,
                ..get("acme.sjv.io", "/c/1234/5678/9012")
            };
            assert_eq!(
                decided(&ask),
                plain((RequestType::None, Outcome::MethodNotAllowed))
            );
        }
    }

    #[test]
    fn destinations_are_built_by_the_rules() {
        use LinkKind::*;
        let table = [
            // Incoming query appended, the incoming value winning on a clash;
            // subId1-3, sharedid and u consumed.
            (
                "/c/1234/5678/9012?src=partner&color=red&subId1=a&subId2=b&subId3=c&sharedid=s",
                format!("https://www.acme.com/landing?src=partner&color=red&clickid={CLICK}"),
                None,
            ),
            // A deep link on an allowed host replaces the url.
            (
                "/c/1234/5678/9012?u=https%3A%2F%2Fwww.acme.com%2Fshoes%3Fsize%3D9",
                format!("https://www.acme.com/shoes?size=9&clickid={CLICK}"),
                Some("accepted"),
            ),
            // `*.shop.acme.com` allows any subdomain of shop.acme.com.
            (
                "/c/1234/5678/9012?u=https%3A%2F%2Fde.shop.acme.com%2F",
                format!("https://de.shop.acme.com/?clickid={CLICK}"),
                Some("accepted"),
            ),
            // Another host, or another scheme: ignored, no open redirect.
            (
                "/c/1234/5678/9012?u=https%3A%2F%2Fevil.example%2F",
                format!("https://www.acme.com/landing?src=aff&clickid={CLICK}"),
                Some("rejected"),
            ),
            (
                "/c/1234/5678/9012?u=javascript%3Aalert(1)",
                format!("https://www.acme.com/landing?src=aff&clickid={CLICK}"),
                Some("rejected"),
            ),
        ];
        for (target, location, deeplink) in table {
            let got = decided(&get("acme.sjv.io", target));
            let want = redirect(Tracking, 302, &location, Some("1234"), deeplink);
            assert_eq!(got, want, "{target}");
        }
        // forward_query: false, the record's click id parameter and status 307.
        let got = decided(&get("acme.sjv.io", "/c/1234/2/1?color=red&subId1=a"));
        let want = redirect(
            Tracking,
            307,
            &format!("https://www.acme.com/q?a=1&irclickid={CLICK}"),
            Some("1234"),
            None,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn visitors_bots_and_heads() {
        // No cookie: a new visitor id, set by the response.
        let (_, ids) = decided_with(&get("acme.sjv.io", "/c/1234/5678/9012"));
        assert_eq!(ids, Some((Some(NEW_VISITOR.to_owned()), true, true)));
        // A known cookie is kept, not set again.
        let known = Ask {
            visitor: VisitorFact::Known(ClickId::parse(KNOWN_VISITOR).unwrap()),
            ..get("acme.sjv.io", "/c/1234/5678/9012")
        };
        assert_eq!(
            decided_with(&known).1,
            Some((Some(KNOWN_VISITOR.to_owned()), false, true))
        );
        // Sec-GPC / DNT / --no-visitor-cookie: no visitor at all.
        let untracked = Ask {
            visitor: VisitorFact::NotTracked,
            ..get("acme.sjv.io", "/c/1234/5678/9012")
        };
        assert_eq!(decided_with(&untracked).1, Some((None, false, true)));
        // HEAD: the same answer, not recorded.
        let head = Ask {
            method: Method::HEAD,
            ..get("acme.sjv.io", "/c/1234/5678/9012")
        };
        let (answer, ids) = decided_with(&head);
        assert_eq!(answer, decided(&get("acme.sjv.io", "/c/1234/5678/9012")));
        assert_eq!(ids.map(|(_, _, recorded)| recorded), Some(false));
        // A bot (or no User-Agent) is still redirected; the event says bot.
        for user_agent in [Some(SLACKBOT), None, Some("")] {
            let map = load_str(LINKS, "test", true).unwrap().map;
            let ask = Ask {
                user_agent,
                ..get("acme.sjv.io", "/c/1234/5678/9012")
            };
            let facts = Facts {
                method: &ask.method,
                host: ask.host.map(Cow::Borrowed),
                path: ask.target,
                query: None,
                user_agent: ask.user_agent.map(Cow::Borrowed),
                accept_language: None,
                country: None,
                visitor: ask.visitor,
                now: SystemTime::now(),
            };
            let settings = Settings {
                click_id_param: "clickid",
            };
            let answer = decide(&facts, &map, settings, &Classifier::new(), || {
                ClickId::generate(SystemTime::now())
            });
            match answer {
                Answer::Click(click) => {
                    assert!(click.client.bot, "{user_agent:?}");
                    assert_eq!(click.outcome(), Outcome::Redirect);
                }
                other => panic!("{user_agent:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn phones_take_the_apps_way() {
        use LinkKind::*;
        let store_ios = "https://apps.apple.com/app/id1";
        let store_android = "https://play.google.com/store/apps/details?id=com.acme";
        let website = format!("https://www.acme.com/app?clickid={CLICK}");
        let page = format!("https://www.acme.com/page?clickid={CLICK}");
        let with_agent = |user_agent, target| Ask {
            user_agent: Some(user_agent),
            ..get("acme.sjv.io", target)
        };
        let table = [
            // Without interstitial: the store of the phone's OS.
            (
                with_agent(IPHONE, "/c/1/6/5"),
                redirect(Tracking, 302, store_ios, Some("1"), None),
            ),
            (
                with_agent(ANDROID, "/c/1/6/5"),
                redirect(Tracking, 302, store_android, Some("1"), None),
            ),
            // Desktops and bots: the website, as usual.
            (
                with_agent(DESKTOP, "/c/1/6/5"),
                redirect(Tracking, 302, &website, Some("1"), None),
            ),
            (
                with_agent(SLACKBOT, "/c/1/6/5"),
                redirect(Tracking, 302, &website, Some("1"), None),
            ),
            // With interstitial: the 200 page, whose website link is the location.
            (
                with_agent(IPHONE, "/c/1/8/7"),
                redirect(Tracking, 200, &page, Some("1"), None),
            ),
            // An interstitial record without an Android store still shows the page.
            (
                with_agent(ANDROID, "/c/1/8/7"),
                redirect(Tracking, 200, &page, Some("1"), None),
            ),
            (
                with_agent(DESKTOP, "/c/1/8/7"),
                redirect(Tracking, 302, &page, Some("1"), None),
            ),
        ];
        for (ask, want) in table {
            assert_eq!(decided(&ask), want, "{:?} {}", ask.user_agent, ask.target);
        }
    }

    const RULES: &str = r#"
{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"1","url":"https://www.acme.com/default","deeplink_hosts":["www.acme.com"],"rules":[{"if":{"os":"ios"},"url":"https://apps.apple.com/app/id1"},{"if":{"country":"DE","language":["de"]},"url":"https://www.acme.com/de?x=1"},{"if":{"query":{"subId1":"vip"}},"url":"https://www.acme.com/vip"}],"split":[{"url":"https://www.acme.com/a","weight":70},{"url":"https://www.acme.com/b","weight":30}]}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"2","ad_id":"2","url":"https://www.acme.com/plain","test":true}
"#;

    /// (rule, variant, the location without its click id, test) of a click.
    fn ruled(ask: &Ask<'_>) -> (Option<usize>, Option<usize>, String, bool) {
        let map = load_str(RULES, "test", true).unwrap().map;
        let facts = facts_of(ask, SystemTime::now());
        let mut ids = [CLICK, NEW_VISITOR].into_iter();
        let settings = Settings {
            click_id_param: "clickid",
        };
        let new_id = || ClickId::parse(ids.next().expect("two ids at most")).unwrap();
        let Answer::Click(click) = decide(&facts, &map, settings, &Classifier::new(), new_id)
        else {
            panic!("not a click: {}", ask.target);
        };
        let location = click
            .location
            .replace(&format!("clickid={CLICK}"), "clickid=…");
        (click.rule, click.variant, location, click.test)
    }

    #[test]
    fn rules_then_split_then_the_records_url_and_deep_links_still_win() {
        let german = Ask {
            accept_language: Some("de-DE,de;q=0.9"),
            country: Some(*b"DE"),
            ..get("acme.sjv.io", "/c/9/1/1")
        };
        // (rule, variant, location) for each request.
        type Want<'w> = (Option<usize>, Option<usize>, &'w str);
        let table: Vec<(Ask<'_>, Want<'_>)> = vec![
            (
                Ask {
                    user_agent: Some(IPHONE),
                    ..get("acme.sjv.io", "/c/9/1/1")
                },
                (Some(0), None, "https://apps.apple.com/app/id1?clickid=…"),
            ),
            (
                german,
                (Some(1), None, "https://www.acme.com/de?x=1&clickid=…"),
            ),
            // Country without the language, or no country at all (no database).
            (
                Ask {
                    country: Some(*b"DE"),
                    ..get("acme.sjv.io", "/c/9/1/1")
                },
                (None, Some(0), "https://www.acme.com/a?clickid=…"),
            ),
            (
                Ask {
                    accept_language: Some("de"),
                    ..get("acme.sjv.io", "/c/9/1/1")
                },
                (None, Some(0), "https://www.acme.com/a?clickid=…"),
            ),
            // The query condition sees a tracking parameter before it is consumed.
            (
                get("acme.sjv.io", "/c/9/1/1?subId1=vip"),
                (Some(2), None, "https://www.acme.com/vip?clickid=…"),
            ),
            // An allowed deep link still wins over the rule's URL (§2's building).
            (
                Ask {
                    user_agent: Some(ANDROID),
                    ..get(
                        "acme.sjv.io",
                        "/c/9/1/1?subId1=vip&u=https%3A%2F%2Fwww.acme.com%2Fshoes",
                    )
                },
                (Some(2), None, "https://www.acme.com/shoes?clickid=…"),
            ),
        ];
        for (ask, (rule, variant, location)) in table {
            let (got_rule, got_variant, got_location, _) = ruled(&ask);
            assert_eq!(
                (got_rule, got_variant, got_location.as_str()),
                (rule, variant, location),
                "{}",
                ask.target
            );
        }
    }

    #[test]
    fn a_visitor_keeps_a_variant_and_without_one_the_click_id_picks() {
        let known = ClickId::parse("01HZY8X6Q6A1B2C3D4E5F6G7HB").unwrap();
        let as_known = Ask {
            visitor: VisitorFact::Known(known),
            ..get("acme.sjv.io", "/c/9/1/1")
        };
        let (_, variant, _, _) = ruled(&as_known);
        let split_pick = |id: &str| {
            let map = load_str(RULES, "test", true).unwrap().map;
            let (link, _) = match resolve(&map, "acme.sjv.io", "/c/9/1/1", 0) {
                Route::Redirect { link, partner_id } => (link, partner_id),
                _ => unreachable!(),
            };
            link.split().unwrap().pick(id)
        };
        assert_eq!(
            variant,
            Some(split_pick(known.as_str())),
            "the visitor's id picks"
        );
        for _ in 0..3 {
            assert_eq!(ruled(&as_known).1, variant, "and keeps picking the same");
        }
        let new = ruled(&get("acme.sjv.io", "/c/9/1/1")).1;
        assert_eq!(new, Some(split_pick(NEW_VISITOR)), "a new visitor's new id");
        let untracked = Ask {
            visitor: VisitorFact::NotTracked,
            ..get("acme.sjv.io", "/c/9/1/1")
        };
        assert_eq!(
            ruled(&untracked).1,
            Some(split_pick(CLICK)),
            "no visitor: the click id"
        );
    }

    #[test]
    fn test_clicks_come_from_the_query_or_the_record_and_ce_test_is_consumed() {
        let (_, _, location, test) = ruled(&get("acme.sjv.io", "/c/9/2/2?ce_test=1&keep=1"));
        assert!(test);
        assert_eq!(location, "https://www.acme.com/plain?keep=1&clickid=…");
        assert!(ruled(&get("acme.sjv.io", "/c/9/2/2")).3, "a test record");
        let (_, _, location, test) = ruled(&get("acme.sjv.io", "/c/9/1/1?ce_test=0&subId1=vip"));
        assert!(!test, "only ce_test=1");
        assert!(!location.contains("ce_test"), "{location}");
    }

    use proptest::prelude::*;

    /// Destinations the generated records may name; deep links may point at
    /// `www.acme.com` and `*.acme-shop.com`.
    const URLS: [&str; 4] = [
        "https://www.acme.com/x?a=1",
        "https://eu.acme-shop.com/y",
        "https://apps.apple.com/app/id1",
        "http://www.acme.com/z#frag",
    ];

    fn allowed(host: &str) -> bool {
        matches!(host, "www.acme.com" | "apps.apple.com")
            || (host.ends_with(".acme-shop.com") && host.len() > ".acme-shop.com".len())
    }

    fn condition() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(r#""device":["mobile","tablet"]"#.to_owned()),
            Just(r#""os":"ios""#.to_owned()),
            Just(r#""country":["DE","FR"]"#.to_owned()),
            Just(r#""language":"de""#.to_owned()),
            Just(r#""query":{"subId1":"vip"}"#.to_owned()),
        ]
    }

    fn record() -> impl Strategy<Value = String> {
        let rule = (proptest::collection::vec(condition(), 0..3), 0..URLS.len()).prop_map(
            |(conditions, url)| {
                format!(
                    r#"{{"if":{{{}}},"url":"{}"}}"#,
                    conditions.join(","),
                    URLS[url]
                )
            },
        );
        let variant = (0..URLS.len(), 1u32..100)
            .prop_map(|(url, weight)| format!(r#"{{"url":"{}","weight":{weight}}}"#, URLS[url]));
        (
            proptest::collection::vec(rule, 0..6),
            proptest::option::of(proptest::collection::vec(variant, 1..4)),
            0..URLS.len(),
        )
            .prop_map(|(rules, split, url)| {
                let split = split.map_or(String::new(), |v| format!(r#","split":[{}]"#, v.join(",")));
                format!(
                    r#"{{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"1","url":"{}","deeplink_hosts":["www.acme.com","*.acme-shop.com"],"rules":[{}]{split}}}"#,
                    URLS[url],
                    rules.join(",")
                )
            })
    }

    fn target() -> impl Strategy<Value = String> {
        let deeplink = prop_oneof![
            Just("https%3A%2F%2Fwww.acme.com%2Fshoes"),
            Just("https%3A%2F%2Fevil.example%2F"),
            Just("%2F%2Fevil.example%2F"),
            Just("https%3A%2F%2Fwww.acme.com.evil.example%2F"),
            Just("javascript%3Aalert(1)"),
        ];
        (proptest::option::of(deeplink), any::<bool>(), any::<bool>()).prop_map(|(u, vip, test)| {
            let mut query = vec!["keep=1".to_owned()];
            if let Some(u) = u {
                query.push(format!("u={u}"));
            }
            if vip {
                query.push("subId1=vip".into());
            }
            if test {
                query.push("ce_test=1".into());
            }
            format!("/c/9/1/1?{}", query.join("&"))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever the rules and the split, and whatever the request, the
        /// Location stays on a host the record names or its deep links allow.
        #[test]
        fn location_stays_on_an_allowed_host_whatever_the_rules(
            line in record(),
            target in target(),
            agent in prop_oneof![Just(IPHONE), Just(ANDROID), Just(DESKTOP)],
            country in proptest::option::of(prop_oneof![Just(*b"DE"), Just(*b"FR"), Just(*b"US")]),
            language in proptest::option::of(prop_oneof![Just("de-DE"), Just("en")]),
        ) {
            let map = load_str(&line, "prop", true).unwrap().map;
            let (path, query) = target.split_once('?').unwrap();
            let facts = Facts {
                method: &Method::GET,
                host: Some(Cow::Borrowed("acme.sjv.io")),
                path,
                query: Some(query),
                user_agent: Some(Cow::Borrowed(agent)),
                accept_language: language.map(Cow::Borrowed),
                country,
                visitor: VisitorFact::Unknown,
                now: SystemTime::now(),
            };
            let mut ids = [CLICK, NEW_VISITOR].into_iter();
            let settings = Settings { click_id_param: "clickid" };
            let new_id = || ClickId::parse(ids.next().unwrap()).unwrap();
            let Answer::Click(click) = decide(&facts, &map, settings, &Classifier::new(), new_id) else {
                panic!("not a click");
            };
            let location = url::Url::parse(&click.location).unwrap();
            let host = location.host_str().unwrap();
            prop_assert!(allowed(host), "{host} from {line} {target}");
            let with_id = format!("clickid={}", CLICK);
            prop_assert!(click.location.contains(&with_id));
            prop_assert!(!click.location.contains("ce_test"));
        }
    }
}
