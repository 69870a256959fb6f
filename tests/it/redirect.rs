//! SPEC §2 over real sockets: matching, destination building, unmatched requests,
//! visitors.

use crate::support::{request, TestEdge, BROWSER_UA, LINKS};

#[tokio::test]
async fn tracking_link_redirects_with_click_id_and_no_cache() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = edge.get("acme.sjv.io", "/c/1234/5678/9012").await;
    assert_eq!(r.status, 302);
    let id = r.click_id("clickid");
    assert_eq!(
        r.location(),
        format!("https://www.acme.com/summer?utm_source=impact&clickid={id}")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-robots-tag"), Some("noindex"));
    assert_eq!(r.body, "");
    // Every click gets its own id.
    let again = edge.get("acme.sjv.io", "/c/1234/5678/9012").await;
    assert_ne!(again.click_id("clickid"), id);
}

#[tokio::test]
async fn tracking_link_ignores_extra_segments_and_records_any_partner() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for target in ["/c/1234/5678/9012/extra", "/c/Partner_X-9/5678/9012/a/b/c"] {
        let r = edge.get("acme.sjv.io", target).await;
        assert_eq!(r.status, 302, "{target}");
        assert!(
            r.location().starts_with("https://www.acme.com/summer?"),
            "{target}"
        );
    }
}

#[tokio::test]
async fn malformed_partner_id_goes_to_the_fallback() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let too_long = format!("/c/{}/5678/9012", "p".repeat(65));
    for target in [
        "/c/12%2034/5678/9012",
        too_long.as_str(),
        "/c/a.b/5678/9012",
    ] {
        let r = edge.get("acme.sjv.io", target).await;
        assert_eq!(r.status, 302, "{target}");
        assert!(
            r.location()
                .starts_with("https://www.acme.com/home?clickid="),
            "{target}: {}",
            r.location()
        );
    }
}

#[tokio::test]
async fn vanity_slug_is_case_insensitive_and_one_trailing_slash_is_ignored() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for target in ["/janes-picks", "/JANES-PICKS", "/Janes-Picks/"] {
        let r = edge.get("acme.pxf.io", target).await;
        assert_eq!(r.status, 302, "{target}");
        assert!(
            r.location()
                .starts_with("https://www.acme.com/jane?clickid="),
            "{target}"
        );
    }
    // Two slashes is another path; this host has no fallback.
    assert_eq!(edge.get("acme.pxf.io", "/janes-picks//").await.status, 404);
}

#[tokio::test]
async fn unique_domain_matches_any_path_on_host_and_www() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for (host, target) in [
        ("acmeradio.example", "/"),
        ("acmeradio.example", "/anything/here?x=1"),
        ("www.acmeradio.example", "/summer"),
    ] {
        let r = edge.get(host, target).await;
        assert_eq!(r.status, 302, "{host}{target}");
        let id = r.click_id("clickid");
        assert!(
            r.location().starts_with("https://www.acme.com/radio?"),
            "{}",
            r.location()
        );
        assert!(
            r.location().ends_with(&format!("clickid={id}#listen")),
            "{}",
            r.location()
        );
    }
}

#[tokio::test]
async fn host_matching_ignores_case_port_and_trailing_dot() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for host in [
        "ACME.SJV.IO",
        "acme.sjv.io:8080",
        "acme.sjv.io.",
        "Acme.Sjv.Io.:443",
    ] {
        let r = edge.get(host, "/c/1/5678/9012").await;
        assert_eq!(r.status, 302, "{host}");
        assert!(
            r.location().starts_with("https://www.acme.com/summer?"),
            "{host}"
        );
    }
}

#[tokio::test]
async fn status_307_when_the_record_asks() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = edge.get("acme.sjv.io", "/c/1/5679/9012").await;
    assert_eq!(r.status, 307);
    assert!(r
        .location()
        .starts_with("https://www.acme.com/temp?clickid="));
}

#[tokio::test]
async fn outside_the_validity_window_a_link_is_unmatched() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for ad in ["1000", "1001"] {
        let r = edge.get("acme.sjv.io", &format!("/c/1/{ad}/9012")).await;
        assert!(
            r.location().starts_with("https://www.acme.com/home?"),
            "ad {ad}: {}",
            r.location()
        );
    }
    let r = edge.get("acme.sjv.io", "/c/1/1002/9012").await;
    assert!(r.location().starts_with("https://www.acme.com/current?"));
}

#[tokio::test]
async fn known_host_without_a_match_uses_its_fallback() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for target in ["/", "/c/1/9999/9012", "/c/1/5678", "/some/page"] {
        let r = edge.get("acme.sjv.io", target).await;
        assert_eq!(r.status, 302, "{target}");
        assert!(
            r.location()
                .starts_with("https://www.acme.com/home?clickid="),
            "{target}"
        );
    }
}

/// Issue 13, item 2: an expired fallback answered 302 with a click id and an
/// event. Out of its window it is not in service: 404, no click.
#[tokio::test]
async fn a_fallback_out_of_its_window_answers_404_and_records_no_click() {
    let links = r#"
{"type":"fallback","host":"old.sjv.io","url":"https://www.old.com/","valid_until":"2020-01-01T00:00:00Z"}
{"type":"tracking","host":"old.sjv.io","campaign_id":"1","ad_id":"1","url":"https://www.old.com/x","valid_until":"2020-01-01T00:00:00Z"}
{"type":"fallback","host":"live.sjv.io","url":"https://www.live.com/","valid_from":"2020-01-01T00:00:00Z"}
"#;
    let edge = TestEdge::start(links, &[]).await;
    for target in ["/", "/c/1/1/1", "/anything"] {
        let r = edge.get("old.sjv.io", target).await;
        assert_eq!(r.status, 404, "{target}");
        assert!(r.header("location").is_none(), "{target}");
    }
    // A fallback within its window still answers, and is the only click.
    let r = edge.get("live.sjv.io", "/x").await;
    assert_eq!(r.status, 302);
    let events = edge.events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].field("host"), "live.sjv.io");
}

#[tokio::test]
async fn known_host_without_fallback_and_unknown_hosts_are_404() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = edge.get("acme.pxf.io", "/no-such-slug").await;
    assert_eq!(r.status, 404);
    assert!(r.header("location").is_none());
    let r = edge.get("unknown.example", "/c/1/5678/9012").await;
    assert_eq!(r.status, 404);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(
        !r.body.is_empty() && r.body.len() < 100,
        "short body: {:?}",
        r.body
    );
    assert!(r.header("location").is_none());
}

#[tokio::test]
async fn methods_other_than_get_and_head_are_405() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = request(edge.http, method, "acme.sjv.io", "/c/1/5678/9012", &[]).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
}

#[tokio::test]
async fn robots_txt_disallows_everything_on_any_host() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for host in ["acme.sjv.io", "acmeradio.example", "unknown.example"] {
        let r = edge.get(host, "/robots.txt").await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.body, "User-agent: *\nDisallow: /", "{host}");
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    }
}

#[tokio::test]
async fn head_gets_the_same_redirect_without_a_body() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = request(edge.http, "HEAD", "acme.sjv.io", "/c/1/5678/9012?a=1", &[]).await;
    assert_eq!(r.status, 302);
    let id = r.click_id("clickid");
    assert_eq!(
        r.location(),
        format!("https://www.acme.com/summer?utm_source=impact&a=1&clickid={id}")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body, "");
}

#[tokio::test]
async fn query_is_forwarded_incoming_wins_and_tracking_params_are_consumed() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = edge
        .get(
            "acme.sjv.io",
            "/c/1/5678/9012?utm_source=partner&color=red&subId1=a&subId2=b&subId3=c&sharedid=s&u=https%3A%2F%2Fevil.example%2F",
        )
        .await;
    let id = r.click_id("clickid");
    assert_eq!(
        r.location(),
        format!("https://www.acme.com/summer?utm_source=partner&color=red&clickid={id}")
    );
}

#[tokio::test]
async fn forward_query_false_sends_only_the_record_url_and_click_id() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = edge
        .get("acme.sjv.io", "/c/1/5680/9012?color=red&subId1=a")
        .await;
    let id = r.click_id("clickid");
    assert_eq!(
        r.location(),
        format!("https://www.acme.com/nofwd?fixed=1&clickid={id}")
    );
}

#[tokio::test]
async fn click_id_param_comes_from_the_flag_or_the_record() {
    let edge = TestEdge::start(LINKS, &["--click-id-param", "irclickid_g"]).await;
    let r = edge
        .get("acme.sjv.io", "/c/1/5678/9012?clickid=spoofed")
        .await;
    let id = r.click_id("irclickid_g");
    assert!(
        r.location().contains("clickid=spoofed&"),
        "other params forwarded: {}",
        r.location()
    );
    assert!(r.location().ends_with(&format!("irclickid_g={id}")));
    let r = edge.get("acme.sjv.io", "/c/1/5681/9012").await;
    let id = r.click_id("irclickid");
    assert_eq!(
        r.location(),
        format!("https://www.acme.com/own?irclickid={id}")
    );
}

#[tokio::test]
async fn deep_links_only_to_allowed_hosts() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let accepted = [
        (
            "https%3A%2F%2Fwww.acme.com%2Fshoes%3Fsize%3D9",
            "https://www.acme.com/shoes?size=9",
        ),
        (
            "https%3A%2F%2Feu.acme-shop.com%2Fsale",
            "https://eu.acme-shop.com/sale",
        ),
    ];
    for (u, want) in accepted {
        let r = edge
            .get("acme.sjv.io", &format!("/c/1/5678/9012?u={u}"))
            .await;
        let id = r.click_id("clickid");
        let sep = if want.contains('?') { '&' } else { '?' };
        assert_eq!(r.location(), format!("{want}{sep}clickid={id}"));
    }
    for u in [
        "https%3A%2F%2Fwww.acme.com.evil.example%2F",
        "https%3A%2F%2Facme-shop.com%2F",
        "%2F%2Fwww.acme.com%2F",
        "javascript%3Aalert(1)",
        "https%3A%2F%2Fwww.acme.com%40evil.example%2F",
    ] {
        let r = edge
            .get("acme.sjv.io", &format!("/c/1/5678/9012?u={u}"))
            .await;
        assert!(
            r.location()
                .starts_with("https://www.acme.com/summer?utm_source=impact&clickid="),
            "u={u} gave {}",
            r.location()
        );
    }
}

#[tokio::test]
async fn visitor_cookie_is_set_once_with_its_attributes() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = edge.get("acme.sjv.io", "/c/1/5678/9012").await;
    let cookie = r.header("set-cookie").expect("a new visitor gets a cookie");
    let (pair, attributes) = cookie.split_once(';').unwrap();
    let vid = pair.strip_prefix("ce_vid=").unwrap();
    assert!(
        clickedge::click_id::ClickId::parse(vid).is_some(),
        "click-id-shaped: {vid}"
    );
    assert_eq!(
        attributes,
        " Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    );
    assert!(!cookie.contains("Secure"), "not over plain HTTP");

    let cookie_header = format!("ce_vid={vid}");
    let r = edge
        .get_with(
            "acme.sjv.io",
            "/c/1/5678/9012",
            &[("cookie", &cookie_header)],
        )
        .await;
    assert!(
        r.header("set-cookie").is_none(),
        "a known visitor is not re-cookied"
    );
    let r = edge
        .get_with(
            "acme.sjv.io",
            "/c/1/5678/9012",
            &[("cookie", "ce_vid=not-an-id")],
        )
        .await;
    assert!(r.header("set-cookie").is_some(), "a garbled id is replaced");
}

#[tokio::test]
async fn gpc_dnt_and_the_flag_turn_the_visitor_cookie_off() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for header in [("sec-gpc", "1"), ("dnt", "1")] {
        let r = edge
            .get_with(
                "acme.sjv.io",
                "/c/1/5678/9012",
                &[header, ("user-agent", BROWSER_UA)],
            )
            .await;
        assert_eq!(r.status, 302);
        assert!(r.header("set-cookie").is_none(), "{header:?}");
    }
    let edge = TestEdge::start(LINKS, &["--no-visitor-cookie"]).await;
    let r = edge.get("acme.sjv.io", "/c/1/5678/9012").await;
    assert_eq!(r.status, 302);
    assert!(r.header("set-cookie").is_none());
}

#[tokio::test]
async fn app_site_files_are_served_as_json() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = edge
        .get("acme.sjv.io", "/.well-known/apple-app-site-association")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body, serde_json::json!({"applinks":{"details":[]}}));
    let r = edge
        .get("acme.sjv.io", "/.well-known/assetlinks.json")
        .await;
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body[0]["relation"][0],
        "delegate_permission/common.handle_all_urls"
    );
}

#[tokio::test]
async fn a_request_without_host_is_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = TestEdge::start(LINKS, &[]).await;
    let mut stream = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    stream
        .write_all(b"GET /c/1/5678/9012 HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.0 400") || response.starts_with("HTTP/1.1 400"),
        "{response}"
    );
}
