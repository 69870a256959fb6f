//! `deploy/` checked for real: the alert rules by promtool (rules and their unit
//! tests), the Kubernetes manifests rendered by kustomize and validated against
//! the Kubernetes schemas, the Dockerfile by hadolint, the systemd unit by
//! systemd-analyze, every metric the alerts and the dashboard name exported
//! by a running edge, every event the edge produces valid against the click.v1
//! JSON Schema, and a real Prometheus scraping an edge and seeing its traffic.
//!
//! The tools are installed by `.ci/run`; without `CI` set a missing tool skips its
//! test with a message, under CI it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, free_port, have, TestEdge, BROWSER_UA, LINKS};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !have("promtool") {
        return;
    }
    let dir = deploy_dir().join("prometheus");
    let checked = run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(checked.contains("SUCCESS: 15 rules found"), "{checked}");
    let tested = run(Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Renders a kustomization and validates every resource against the Kubernetes
/// schemas; returns the rendering and the validator's report.
fn render_and_validate(dir: &str) -> (String, String) {
    let rendered = run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(deploy_dir().join(dir)));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &rendered).unwrap();
    let validated = run(Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33"])
        .arg(file.path()));
    assert!(!validated.contains("ERROR"), "{validated}");
    // cert-manager's and the Prometheus Operator's kinds have no schema here.
    assert!(rendered.contains("kind: Certificate\n"));
    assert!(rendered.contains("kind: ServiceMonitor\n"));
    (rendered, validated)
}

fn assert_validated(validated: &str, resources: &[&str]) {
    for kind in resources {
        assert!(
            validated.contains(&format!("passed for resource {kind} ")),
            "{kind} not validated:\n{validated}"
        );
    }
}

/// The pod outlives its drain: preStop plus the shutdown's two phases.
fn assert_grace_fits_the_shutdown(rendered: &str) {
    let grace = yaml_number(rendered, "terminationGracePeriodSeconds:");
    let pre_stop = yaml_number(rendered, "seconds:");
    let shutdown = rendered
        .lines()
        .skip_while(|l| !l.contains("name: CLICKEDGE_SHUTDOWN_TIMEOUT"))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("value: "))
        .and_then(|v| v.trim_end_matches('s').parse::<u64>().ok())
        .expect("CLICKEDGE_SHUTDOWN_TIMEOUT in the pod template");
    assert!(
        grace > pre_stop + 2 * shutdown,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + 2 x {shutdown}"
    );
}

#[test]
fn manifests_render_and_pass_the_kubernetes_schemas() {
    if !have("kubectl") || !have("kubernetes-validate") {
        return;
    }
    let (rendered, validated) = render_and_validate("kubernetes");
    assert_validated(
        &validated,
        &[
            "namespace/clickedge",
            "service/clickedge",
            "service/clickedge-admin",
            "deployment/clickedge",
            "poddisruptionbudget/clickedge",
            "horizontalpodautoscaler/clickedge",
        ],
    );
    assert_grace_fits_the_shutdown(&rendered);
}

/// Issue 14: the StatefulSet variant gives each pod a volume of its own for the
/// spool and the links snapshot, with the base's pod template (copied, not
/// rewritten) and no Deployment beside it.
#[test]
fn the_statefulset_variant_renders_and_passes_the_kubernetes_schemas() {
    if !have("kubectl") || !have("kubernetes-validate") {
        return;
    }
    let (base, _) = render_and_validate("kubernetes");
    let (rendered, validated) = render_and_validate("kubernetes-statefulset");
    assert_validated(
        &validated,
        &[
            "namespace/clickedge",
            "service/clickedge",
            "service/clickedge-pods",
            "statefulset/clickedge",
            "poddisruptionbudget/clickedge",
            "horizontalpodautoscaler/clickedge",
        ],
    );
    assert!(!rendered.contains("kind: Deployment"), "{rendered}");
    assert!(
        !rendered.contains("emptyDir"),
        "the spool is not an emptyDir: {rendered}"
    );
    assert!(rendered.contains("volumeClaimTemplates:"), "{rendered}");
    assert!(
        rendered.contains("kind: StatefulSet\n    name: clickedge"),
        "the autoscaler's target: {rendered}"
    );
    assert!(
        rendered.contains("namespace: clickedge\nspec:\n  persistentVolumeClaimRetentionPolicy"),
        "{rendered}"
    );
    // The same container as the base: every line of its environment, probes and
    // mounts.
    let container = |text: &str| -> String {
        text.lines()
            .skip_while(|l| !l.contains("containers:"))
            .take_while(|l| !l.contains("volumes:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(container(&base).len() > 1000);
    assert_eq!(container(&rendered), container(&base));
    assert_grace_fits_the_shutdown(&rendered);
}

fn yaml_number(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the rendered manifests"))
}

#[test]
fn the_systemd_unit_passes_systemd_analyze() {
    if !have("systemd-analyze") {
        return;
    }
    // The unit as installed, pointing at the binary just built.
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/clickedge.service"))
        .unwrap()
        .replace("/usr/local/bin/clickedge", env!("CARGO_BIN_EXE_clickedge"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clickedge.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn the_dockerfile_passes_hadolint() {
    if !have("hadolint") {
        return;
    }
    let linted = run(Command::new("hadolint")
        .arg("--no-color")
        .arg(deploy_dir().join("Dockerfile")));
    assert!(linted.trim().is_empty(), "{linted}");
}

/// Every `clickedge_*` name in `text`, without the histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("clickedge_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// An edge exporting every metric family: TLS on (the certificate gauges) and a
/// links topic (its staleness gauge exists only then).
async fn edge_with_every_family() -> (TestEdge, tempfile::TempDir) {
    let certs = crate::support::tls::cert_dir();
    let edge = TestEdge::start(
        LINKS,
        &[
            "--tls-certs",
            certs.path().to_str().unwrap(),
            "--links-topic",
            "links",
        ],
    )
    .await;
    (edge, certs)
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let (edge, _certs) = edge_with_every_family().await;
    edge.get("acme.sjv.io", "/c/1/5678/9012").await;
    let exported = metric_names(&edge.metrics().await);

    let alerts = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy_dir().join("grafana/clickedge.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let queries: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");

    let used = metric_names(&alerts)
        .into_iter()
        .chain(queries.iter().flat_map(|q| metric_names(q)))
        .filter(|n| n != "clickedge_" && !n.ends_with('_'));
    for name in used {
        assert!(
            exported.contains(&name),
            "{name} is used but not exported; exported: {exported:?}"
        );
    }
}

/// Issue 13, item 5: a scrape of a live edge (every family present: clicks,
/// refusals, TLS) passes `promtool check metrics`, which wants a HELP line per
/// family and Prometheus' naming conventions.
#[tokio::test]
async fn a_live_scrape_passes_promtool_check_metrics() {
    if !have("promtool") {
        return;
    }
    let (edge, _certs) = edge_with_every_family().await;
    edge.get("acme.sjv.io", "/c/1/5678/9012").await;
    edge.get("unknown.example", "/").await;
    edge.wait_for_sample(r#"clickedge_click_events_total{result="delivered"}"#, 1.0)
        .await;
    let scrape = edge.metrics().await;
    assert!(
        scrape.contains("# HELP clickedge_tls_certificate_expiry_timestamp_seconds "),
        "{scrape}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "{said}\n{scrape}"
    );
}

const APP_LINKS: &str = r#"
{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"10","url":"https://www.acme.com/app","app":{"ios_url":"https://apps.apple.com/app/id123","android_url":"https://play.google.com/store/apps/details?id=com.acme","deeplink":"acme://home","interstitial":true}}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"11","url":"https://www.acme.com/store","app":{"ios_url":"https://apps.apple.com/app/id123","android_url":"https://play.google.com/store/apps/details?id=com.acme"}}
"#;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";

pub fn click_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("schema/click.v1.json")).unwrap(),
    )
    .expect("the schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("a valid JSON Schema")
}

#[tokio::test]
async fn every_event_the_edge_produces_validates_against_the_click_schema() {
    let links = format!("{LINKS}{APP_LINKS}");
    let edge = TestEdge::start(&links, &["--trusted-proxies", "127.0.0.1"]).await;
    type Click<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let clicks: Vec<Click<'_>> = vec![
        (
            "acme.sjv.io",
            "/c/1/5678/9012?subId1=a&sharedid=s&u=https%3A%2F%2Fwww.acme.com%2Fshoes",
            vec![
                ("user-agent", BROWSER_UA),
                ("referer", "https://blog.example/"),
            ],
        ),
        (
            "acme.sjv.io",
            "/c/1/5678/9012?u=https%3A%2F%2Fevil.example%2F",
            vec![
                ("user-agent", BROWSER_UA),
                ("x-forwarded-for", "2001:db8::7"),
            ],
        ),
        ("acme.sjv.io", "/c/1/5679/9012", vec![("dnt", "1")]),
        (
            "acme.sjv.io",
            "/c/bad%20id/0/0",
            vec![("user-agent", "Googlebot/2.1")],
        ),
        (
            "acme.pxf.io",
            "/Janes-Picks",
            vec![
                ("accept-language", "de-DE"),
                ("cookie", "ce_vid=01JC0000000000000000000000"),
            ],
        ),
        ("www.acmeradio.example", "/anything", vec![]),
        ("acme.sjv.io", "/c/1/10/1", vec![("user-agent", IPHONE)]),
        ("acme.sjv.io", "/c/1/11/1", vec![("user-agent", ANDROID)]),
    ];
    for (host, target, headers) in &clicks {
        let status = edge.get_with(host, target, headers).await.status;
        assert!(
            [200, 302, 307].contains(&status),
            "{host}{target}: {status}"
        );
    }
    let events = edge.events(clicks.len()).await;
    assert_eq!(events.len(), clicks.len());

    let schema = click_schema();
    let mut outcomes = BTreeSet::new();
    for event in &events {
        let errors: Vec<String> = schema
            .iter_errors(&event.value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{}", event.value);
        outcomes.insert(format!(
            "{}/{}",
            event.field("type").as_str().unwrap(),
            event.field("outcome").as_str().unwrap()
        ));
    }
    // The clicks above cover every type and outcome.
    for want in [
        "tracking/redirect",
        "tracking/interstitial",
        "tracking/app_store",
        "fallback/redirect",
        "vanity/redirect",
        "domain/redirect",
    ] {
        assert!(outcomes.contains(want), "{want} not produced: {outcomes:?}");
    }

    // The schema is not vacuous: a changed event fails it.
    let mut wrong = events[0].value.clone();
    wrong["device"] = Value::from("phone");
    assert!(!schema.is_valid(&wrong));
    let mut extra = events[0].value.clone();
    extra["unexpected"] = Value::from(1);
    assert!(!schema.is_valid(&extra));
    let mut missing = events[0].value.clone();
    missing.as_object_mut().unwrap().remove("click_id");
    assert!(!schema.is_valid(&missing));
}

/// A real Prometheus (Debian's package) scrapes a running edge every second; the
/// test asks it, through its HTTP API, for the traffic it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_edge_and_sees_the_clicks() {
    if !have("prometheus") {
        return;
    }
    let edge = TestEdge::start(LINKS, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: clickedge\n    static_configs:\n      - targets: ['{}']\n",
            edge.admin
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(&mut prometheus);

    let series = r#"clickedge_requests_total{job="clickedge",type="tracking",outcome="redirect",status="302"}"#;
    // One click, and wait until Prometheus has it: the series starts at 1.
    assert_eq!(edge.get("acme.sjv.io", "/c/1/5678/9012").await.status, 302);
    let web_addr = &web;
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "Prometheus scraping the edge",
        move || async move {
            match query(web_addr, series).await {
                Some(1.0) => Ok(()),
                other => Err(format!("{series} = {other:?}")),
            }
        },
    )
    .await;
    // The rest over a few seconds, so several scrapes see the counter grow.
    const CLICKS: usize = 120;
    for n in 1..CLICKS {
        assert_eq!(edge.get("acme.sjv.io", "/c/1/5678/9012").await.status, 302);
        if n % 30 == 29 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }

    let what = format!("Prometheus seeing the {CLICKS} clicks");
    let (total, rate) = eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        &what,
        move || async move {
            let total = query(web_addr, series).await;
            let rate = query(web_addr, &format!("rate({series}[30s])")).await;
            match (total, rate) {
                (Some(total), Some(rate)) if total == CLICKS as f64 && rate > 0.0 => {
                    Ok((total, rate))
                }
                _ => Err(format!("last: {total:?}, rate {rate:?}")),
            }
        },
    )
    .await;
    assert_eq!(total, CLICKS as f64);
    // 120 clicks within ~5 s: the per-second rate over 30 s is a few per second.
    assert!(rate > 0.5 && rate < CLICKS as f64, "rate {rate}");
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of an instant query with one result, through the HTTP API.
async fn query(web: &str, promql: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut encoded = String::new();
    for byte in promql.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    let mut stream = tokio::net::TcpStream::connect(web).await.ok()?;
    let request = format!(
        "GET /api/v1/query?query={encoded} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let body = answer.split_once("\r\n\r\n")?.1;
    // Prometheus answers small bodies with a length, not chunked.
    let json: Value = serde_json::from_str(body).ok()?;
    let result = json["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}
