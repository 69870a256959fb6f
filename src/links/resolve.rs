//! From a normalized host and a path to what the edge answers (SPEC §2).

use std::borrow::Cow;
use std::sync::Arc;

use super::map::LinkMap;
use super::parse::is_valid_id;
use super::record::{AppSite, Link};

/// Which app-site association file was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppSiteFile {
    AppleAppSiteAssociation,
    AssetLinks,
}

/// What a request resolves to. Borrows from the map snapshot and the request.
#[derive(Debug)]
pub enum Route<'m, 'r> {
    /// `GET /robots.txt` on any host.
    Robots,
    /// An app-site association file, served as JSON.
    AppSite(&'m AppSite, AppSiteFile),
    /// A redirect through `link`: a match, or the host's fallback record (then
    /// `link.kind` is `Fallback`).
    Redirect {
        link: &'m Arc<Link>,
        /// From the request path for tracking links, from the record otherwise.
        partner_id: Option<&'r str>,
    },
    /// `GET /stat.js` on a host with a `"stat": true` tracking record.
    Stat(&'m Arc<Link>),
    /// Known host, no matching record, no fallback.
    NotFound,
    /// No record at all for this host.
    UnknownHost,
}

const APPLE_ASSOCIATION: &str = "/.well-known/apple-app-site-association";
const ASSETLINKS: &str = "/.well-known/assetlinks.json";
const STAT_SCRIPT: &str = "/stat.js";

/// Resolves `path` on `host` (already normalized) at `now_ms`.
pub fn resolve<'m, 'r>(map: &'m LinkMap, host: &str, path: &'r str, now_ms: i64) -> Route<'m, 'r>
where
    'm: 'r,
{
    if path == "/robots.txt" {
        return Route::Robots;
    }
    let Some(links) = map.host(host) else {
        // A unique domain also answers on `www.{host}`.
        return match host.strip_prefix("www.").and_then(|bare| map.host(bare)) {
            Some(bare) if bare.domain.is_some() => {
                match bare.domain.as_ref().filter(|l| l.is_valid_at(now_ms)) {
                    Some(link) => redirect(link, None),
                    None => fallback_or_not_found(bare.fallback.as_ref(), now_ms),
                }
            }
            _ => Route::UnknownHost,
        };
    };

    if let Some(site) = &links.app_site {
        let file = match path {
            APPLE_ASSOCIATION if site.apple_app_site_association.is_some() => {
                Some(AppSiteFile::AppleAppSiteAssociation)
            }
            ASSETLINKS if site.assetlinks.is_some() => Some(AppSiteFile::AssetLinks),
            _ => None,
        };
        if let Some(file) = file {
            return Route::AppSite(site, file);
        }
    }

    // The STAT tag, only where a record asks for it: never a fallback's redirect.
    if path == STAT_SCRIPT {
        return links.stat.as_ref().map_or(Route::NotFound, Route::Stat);
    }

    if let Some(rest) = path.strip_prefix("/c/") {
        let mut segments = rest.split('/');
        if let (Some(partner_id), Some(ad_id), Some(campaign_id)) =
            (segments.next(), segments.next(), segments.next())
        {
            if let Some(link) = links.tracking(campaign_id, ad_id) {
                // A malformed partner id, or a link out of its window, is unmatched.
                if is_valid_id(partner_id) && link.is_valid_at(now_ms) {
                    return redirect(link, Some(partner_id));
                }
                return fallback_or_not_found(links.fallback.as_ref(), now_ms);
            }
        }
    }

    if let Some(slug) = vanity_slug(path) {
        if let Some(link) = links.vanity(&slug) {
            if link.is_valid_at(now_ms) {
                return redirect(link, None);
            }
            return fallback_or_not_found(links.fallback.as_ref(), now_ms);
        }
    }

    // A unique domain answers any path; on `www.{host}` the bare host's does too,
    // even when the www name has records of its own.
    let domain = links.domain.as_ref().or_else(|| {
        host.strip_prefix("www.")
            .and_then(|bare| map.host(bare))
            .and_then(|bare| bare.domain.as_ref())
    });
    if let Some(link) = domain.filter(|l| l.is_valid_at(now_ms)) {
        return redirect(link, None);
    }
    fallback_or_not_found(links.fallback.as_ref(), now_ms)
}

fn redirect<'m, 'r>(link: &'m Arc<Link>, path_partner: Option<&'r str>) -> Route<'m, 'r>
where
    'm: 'r,
{
    Route::Redirect {
        link,
        partner_id: path_partner.or(link.partner_id()),
    }
}

fn fallback_or_not_found<'m, 'r>(fallback: Option<&'m Arc<Link>>, now_ms: i64) -> Route<'m, 'r> {
    match fallback {
        // A fallback is in service within its own window, like any other record.
        Some(link) if link.is_valid_at(now_ms) => Route::Redirect {
            link,
            partner_id: None,
        },
        _ => Route::NotFound,
    }
}

/// `/{slug}` or `/{slug}/`: one segment, percent-decoded, lowercased.
fn vanity_slug(path: &str) -> Option<Cow<'_, str>> {
    let rest = path.strip_prefix('/')?;
    let slug = rest.strip_suffix('/').unwrap_or(rest);
    if slug.is_empty() || slug.contains('/') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(slug)
        .decode_utf8()
        .ok()?;
    if decoded.chars().any(char::is_uppercase) {
        Some(Cow::Owned(decoded.to_lowercase()))
    } else {
        Some(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::{load_str, LinkKind};

    const LINKS: &str = r#"
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/summer"}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"1","url":"https://www.acme.com/old","valid_until":"2020-01-01T00:00:00Z"}
{"type":"fallback","host":"acme.sjv.io","url":"https://www.acme.com/"}
{"type":"vanity","host":"acme.pxf.io","slug":"Janes-Picks","partner_id":"77","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/jane"}
{"type":"domain","host":"acmesummer.com","partner_id":"88","campaign_id":"9012","ad_id":"5679","url":"https://www.acme.com/radio"}
{"type":"app_site","host":"acme.sjv.io","assetlinks":[]}
"#;

    fn map() -> LinkMap {
        load_str(LINKS, "test", true).unwrap().map
    }

    fn kind_of(route: &Route<'_, '_>) -> Option<LinkKind> {
        match route {
            Route::Redirect { link, .. } => Some(link.kind),
            _ => None,
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn tracking_path_matches_and_ignores_extra_segments() {
        let map = map();
        for path in ["/c/1234/5678/9012", "/c/1234/5678/9012/extra/stuff"] {
            match resolve(&map, "acme.sjv.io", path, NOW) {
                Route::Redirect { link, partner_id } => {
                    assert_eq!(link.kind, LinkKind::Tracking);
                    assert_eq!(partner_id, Some("1234"));
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_partner_id_or_expired_link_goes_to_fallback() {
        let map = map();
        let bad = resolve(&map, "acme.sjv.io", "/c/12%2034/5678/9012", NOW);
        assert_eq!(kind_of(&bad), Some(LinkKind::Fallback));
        let expired = resolve(&map, "acme.sjv.io", "/c/1234/1/1", NOW);
        assert_eq!(kind_of(&expired), Some(LinkKind::Fallback));
        let unknown = resolve(&map, "acme.sjv.io", "/c/1234/0/0", NOW);
        assert_eq!(kind_of(&unknown), Some(LinkKind::Fallback));
    }

    /// Issue 13, item 2: an expired fallback answered 302 with a click.
    #[test]
    fn a_fallback_out_of_its_window_is_not_in_service() {
        let text = r#"
{"type":"tracking","host":"old.sjv.io","campaign_id":"1","ad_id":"1","url":"https://www.old.com/","valid_until":"2020-01-01T00:00:00Z"}
{"type":"fallback","host":"old.sjv.io","url":"https://www.old.com/","valid_until":"2020-01-01T00:00:00Z"}
{"type":"domain","host":"soon.example","partner_id":"1","campaign_id":"1","ad_id":"1","url":"https://www.soon.com/","valid_from":"2999-01-01T00:00:00Z"}
{"type":"fallback","host":"soon.example","url":"https://www.soon.com/","valid_from":"2999-01-01T00:00:00Z"}
"#;
        let map = load_str(text, "test", true).unwrap().map;
        for (host, path) in [
            ("old.sjv.io", "/c/1/1/1"),
            ("old.sjv.io", "/anything"),
            ("soon.example", "/"),
            ("www.soon.example", "/"),
        ] {
            assert!(
                matches!(resolve(&map, host, path, NOW), Route::NotFound),
                "{host}{path}"
            );
        }
        let early = 1_500_000_000_000;
        assert_eq!(
            kind_of(&resolve(&map, "old.sjv.io", "/anything", early)),
            Some(LinkKind::Fallback)
        );
    }

    #[test]
    fn vanity_slug_is_case_insensitive_with_one_trailing_slash() {
        let map = map();
        for path in ["/janes-picks", "/JANES-PICKS/", "/Janes%2DPicks"] {
            assert_eq!(
                kind_of(&resolve(&map, "acme.pxf.io", path, NOW)),
                Some(LinkKind::Vanity),
                "{path}"
            );
        }
        assert!(matches!(
            resolve(&map, "acme.pxf.io", "/janes-picks//", NOW),
            Route::NotFound
        ));
    }

    /// The path rules of the README's "Paths and queries": tracking segments are
    /// compared as sent (never decoded), a slug is decoded once, and no dot
    /// segments or doubled slashes are folded.
    #[test]
    fn paths_are_matched_as_sent_without_folding() {
        let map = map();
        for (path, want) in [
            ("/c/1234/%35678/9012", Some(LinkKind::Fallback)),
            ("/c/1234/5678/../9012", Some(LinkKind::Fallback)),
            ("/c//1234/5678/9012", Some(LinkKind::Fallback)),
            ("/C/1234/5678/9012", Some(LinkKind::Fallback)),
            ("/c/1234/5678/9012/../../x", Some(LinkKind::Tracking)),
        ] {
            assert_eq!(
                kind_of(&resolve(&map, "acme.sjv.io", path, NOW)),
                want,
                "{path}"
            );
        }
        for (path, vanity) in [
            ("/%4Aanes-picks", true),
            ("/janes%252Dpicks", false),
            ("/janes-picks%2F", false),
            ("/./janes-picks", false),
            ("/%ff", false),
        ] {
            let route = resolve(&map, "acme.pxf.io", path, NOW);
            assert_eq!(
                kind_of(&route) == Some(LinkKind::Vanity),
                vanity,
                "{path}: {route:?}"
            );
        }
    }

    #[test]
    fn domain_matches_any_path_on_host_and_www() {
        let map = map();
        for host in ["acmesummer.com", "www.acmesummer.com"] {
            match resolve(&map, host, "/anything/at/all", NOW) {
                Route::Redirect { link, partner_id } => {
                    assert_eq!(link.kind, LinkKind::Domain);
                    assert_eq!(partner_id, Some("88"));
                }
                other => panic!("{host}: {other:?}"),
            }
        }
        assert!(matches!(
            resolve(&map, "www.acme.sjv.io", "/", NOW),
            Route::UnknownHost
        ));
    }

    #[test]
    fn www_name_with_records_of_its_own_still_reaches_the_domain() {
        let text = format!(
            "{LINKS}\n{}\n",
            r#"{"type":"vanity","host":"www.acmesummer.com","slug":"jane","partner_id":"1","campaign_id":"2","ad_id":"3","url":"https://www.acme.com/jane"}"#
        );
        let map = load_str(&text, "test", true).unwrap().map;
        assert_eq!(
            kind_of(&resolve(&map, "www.acmesummer.com", "/jane", NOW)),
            Some(LinkKind::Vanity)
        );
        assert_eq!(
            kind_of(&resolve(&map, "www.acmesummer.com", "/other", NOW)),
            Some(LinkKind::Domain)
        );
    }

    #[test]
    fn unknown_host_robots_and_app_site() {
        let map = map();
        assert!(matches!(
            resolve(&map, "nope.example", "/x", NOW),
            Route::UnknownHost
        ));
        assert!(matches!(
            resolve(&map, "nope.example", "/robots.txt", NOW),
            Route::Robots
        ));
        assert!(matches!(
            resolve(&map, "acme.sjv.io", "/.well-known/assetlinks.json", NOW),
            Route::AppSite(_, AppSiteFile::AssetLinks)
        ));
        // Not configured on this record: the host's usual rules apply.
        assert_eq!(
            kind_of(&resolve(
                &map,
                "acme.sjv.io",
                "/.well-known/apple-app-site-association",
                NOW
            )),
            Some(LinkKind::Fallback)
        );
    }
}
