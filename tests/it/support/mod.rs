//! Shared test plumbing: a real edge on 127.0.0.1:0, a plain HTTP/1.1 client over a
//! socket, and a Kafka consumer that reads the events back. The consumer here is
//! written against rdkafka directly, not through clickedge's own `consume`, so the
//! code under test does not grade itself.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use clickedge::{Config, Server};

pub mod tls;

/// Links used by most tests: every kind, windows, a 307, overrides.
pub const LINKS: &str = r#"
# tracking links on acme.sjv.io
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/summer?utm_source=impact","deeplink_hosts":["www.acme.com","*.acme-shop.com"]}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5679","url":"https://www.acme.com/temp","status":307}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5680","url":"https://www.acme.com/nofwd?fixed=1","forward_query":false}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5681","url":"https://www.acme.com/own","click_id_param":"irclickid"}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"1000","url":"https://www.acme.com/expired","valid_until":"2020-01-01T00:00:00Z"}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"1001","url":"https://www.acme.com/future","valid_from":"2999-01-01T00:00:00Z"}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"1002","url":"https://www.acme.com/current","valid_from":"2020-01-01T00:00:00Z","valid_until":"2999-01-01T00:00:00Z"}
{"type":"fallback","host":"acme.sjv.io","url":"https://www.acme.com/home"}
{"type":"app_site","host":"acme.sjv.io","apple_app_site_association":{"applinks":{"details":[]}},"assetlinks":[{"relation":["delegate_permission/common.handle_all_urls"]}]}
# vanity URLs on acme.pxf.io (no fallback on this host)
{"type":"vanity","host":"acme.pxf.io","slug":"Janes-Picks","partner_id":"1234","campaign_id":"9012","ad_id":"7001","url":"https://www.acme.com/jane"}
# a unique domain
{"type":"domain","host":"acmeradio.example","partner_id":"3456","campaign_id":"9020","ad_id":"8001","url":"https://www.acme.com/radio#listen"}
"#;

pub const BROWSER_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

/// A running edge; shuts down (and drains) when `stop` is called.
pub struct TestEdge {
    pub http: SocketAddr,
    /// With `--tls-certs`.
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub bootstrap: String,
    pub topic: String,
    pub actions_topic: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    links_file: tempfile::NamedTempFile,
    _spool_dir: Option<tempfile::TempDir>,
}

impl TestEdge {
    /// Starts an edge serving `links` with `args` added to the command line, on a
    /// spool directory of its own unless `args` name one.
    pub async fn start(links: &str, args: &[&str]) -> TestEdge {
        let spool_dir = (!args.contains(&"--spool-dir")).then(|| tempfile::tempdir().unwrap());
        let spool_path = spool_dir
            .as_ref()
            .map(|d| d.path().to_str().unwrap().to_owned());
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(links.as_bytes()).unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let mut argv = vec![
            "clickedge",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--links",
            &path,
            "--node-id",
            "edge-test",
        ];
        if args.contains(&"--tls-certs") {
            argv.extend_from_slice(&["--https", "127.0.0.1:0"]);
        }
        if !args.contains(&"--shutdown-timeout") {
            argv.extend_from_slice(&["--shutdown-timeout", "5s"]);
        }
        if let Some(path) = &spool_path {
            argv.extend_from_slice(&["--spool-dir", path]);
        }
        argv.extend_from_slice(args);
        let config = Config::from_argv(argv).unwrap();
        let topic = config.kafka.topic.clone();
        let actions_topic = config.kafka.actions_topic.clone();
        let server = Server::bind(config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let edge = TestEdge {
            http: server.http_addr(),
            https: server.https_addr(),
            admin: server.admin_addr(),
            bootstrap: server.kafka_bootstrap().to_owned(),
            topic,
            actions_topic,
            stop: Some(stop),
            task: None,
            links_file: file,
            _spool_dir: spool_dir,
        };
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestEdge {
            task: Some(task),
            ..edge
        }
    }

    /// The links file the edge was started with (rewrite it, then reload).
    pub fn links_path(&self) -> &std::path::Path {
        self.links_file.path()
    }

    pub async fn get(&self, host: &str, target: &str) -> TestResponse {
        request(
            self.http,
            "GET",
            host,
            target,
            &[("user-agent", BROWSER_UA)],
        )
        .await
    }

    pub async fn get_with(
        &self,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        request(self.http, "GET", host, target, headers).await
    }

    pub async fn admin_get(&self, path: &str) -> TestResponse {
        request(self.admin, "GET", "localhost", path, &[]).await
    }

    /// Reads the click topic until `count` events arrived, then a little longer to
    /// catch any extra one.
    pub async fn events(&self, count: usize) -> Vec<Consumed> {
        consume(&self.bootstrap, &self.topic, count).await
    }

    /// Reads the actions topic as [`TestEdge::events`] reads the clicks'.
    pub async fn actions(&self, count: usize) -> Vec<Consumed> {
        consume(&self.bootstrap, &self.actions_topic, count).await
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    /// Starts the shutdown without waiting for it.
    pub fn begin_stop(&mut self) -> JoinHandle<anyhow::Result<()>> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.body
    }

    /// Waits until `series` reads `want` in `/metrics` (failing after 20 s), and
    /// returns that page.
    pub async fn wait_for_sample(&self, series: &str, want: f64) -> String {
        self.wait_for_metrics(&format!("{series} at {want}"), |m| {
            sample(m, series) == Some(want)
        })
        .await
    }

    /// Waits until `done` holds for `/metrics` (failing after 20 s, saying
    /// `what` never happened), and returns that page.
    pub async fn wait_for_metrics(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let (edge, done) = (self, &done);
        eventually(
            Duration::from_secs(20),
            Duration::from_millis(20),
            what,
            move || async move {
                let metrics = edge.metrics().await;
                if done(&metrics) {
                    Ok(metrics)
                } else {
                    Err(format!("\n{metrics}"))
                }
            },
        )
        .await
    }

    /// Waits until `/readyz` answers 200 (the broker answered for the topic).
    pub async fn wait_ready(&self) {
        self.wait_readyz(200).await;
    }

    /// Polls `/readyz` until it answers `status` (failing after 20 s).
    pub async fn wait_readyz(&self, status: u16) -> TestResponse {
        let edge = self;
        let what = format!("/readyz answering {status}");
        eventually(
            Duration::from_secs(20),
            Duration::from_millis(20),
            &what,
            move || async move {
                let r = edge.admin_get("/readyz").await;
                if r.status == status {
                    Ok(r)
                } else {
                    Err(format!("it answered {} {}", r.status, r.body))
                }
            },
        )
        .await
    }
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as text (invalid UTF-8 replaced); `bytes` as sent.
    pub body: String,
    pub bytes: Vec<u8>,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn location(&self) -> &str {
        self.header("location").expect("a Location header")
    }

    /// The `name=value` the response's `Set-Cookie` sets (its attributes left
    /// out): what a browser sends back in `Cookie`.
    pub fn cookie_pair(&self) -> &str {
        let cookie = self.header("set-cookie").expect("a Set-Cookie header");
        cookie.split(';').next().unwrap_or_default()
    }

    /// The click id the redirect carries in `param`.
    pub fn click_id(&self, param: &str) -> String {
        let url = url::Url::parse(self.location()).unwrap();
        let id = url
            .query_pairs()
            .find(|(k, _)| k == param)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {param} in {}", self.location()));
        assert_eq!(id.len(), 26, "click id {id:?}");
        id
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> TestResponse {
    request_with_body(addr, method, host, target, headers, String::new()).await
}

/// One HTTP/1.1 request with a body on a fresh connection.
pub async fn request_with_body(
    addr: SocketAddr,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: String,
) -> TestResponse {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = sender
        .send_request(
            builder
                .body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    TestResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body.to_vec(),
    }
}

/// A message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: Option<String>,
    pub headers: HashMap<String, String>,
    pub value: Value,
}

impl Consumed {
    pub fn field(&self, name: &str) -> &Value {
        &self.value[name]
    }
}

/// Reads `topic` from the beginning until `count` messages arrived (or 30 s
/// passed), then 500 ms more so that an unexpected extra message is seen too.
pub async fn consume(bootstrap: &str, topic: &str, count: usize) -> Vec<Consumed> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        consume_blocking(&bootstrap, &topic, count, Duration::from_secs(30))
    })
    .await
    .unwrap()
}

pub fn consume_blocking(
    bootstrap: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    consume_blocking_with(bootstrap, &[], topic, count, timeout)
}

/// As [`consume_blocking`], with librdkafka `options` (TLS, SASL).
pub fn consume_blocking_with(
    bootstrap: &str,
    options: &[(&str, &str)],
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "clickedge-tests")
        .set("enable.auto.commit", "false");
    for (key, value) in options {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .unwrap_or_default();
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    let mut extra_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || extra_until.is_some_and(|until| now > until) {
            break;
        }
        if out.len() >= count && extra_until.is_none() {
            extra_until = Some(now + Duration::from_millis(500));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        let mut headers = HashMap::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Consumed {
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            value: serde_json::from_slice(message.payload().unwrap_or_default()).unwrap(),
        });
    }
    out
}

/// Clicks `per_connection` tracking links on each of `connections` keep-alive
/// connections, pausing `pause` between a connection's requests. Returns the click
/// ids of the redirects answered, and whether a connection failed (the edge died).
/// Every answer that comes back must be a 302.
pub async fn click_steadily(
    addr: SocketAddr,
    connections: usize,
    per_connection: usize,
    pause: Duration,
) -> (Vec<String>, bool) {
    let mut workers = Vec::new();
    for worker in 0..connections {
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per_connection);
            let Ok(stream) = TcpStream::connect(addr).await else {
                return (ids, true);
            };
            let Ok((mut sender, connection)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return (ids, true);
            };
            tokio::spawn(connection);
            for i in 0..per_connection {
                let request = hyper::Request::get(format!("/c/{worker}/5678/9012?n={i}"))
                    .header("host", "acme.sjv.io")
                    .header("user-agent", BROWSER_UA)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let Ok(response) = sender.send_request(request).await else {
                    return (ids, true);
                };
                assert_eq!(response.status(), 302);
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                if response.into_body().collect().await.is_err() {
                    return (ids, true);
                }
                let id = location.rsplit("clickid=").next().unwrap().to_owned();
                assert_eq!(id.len(), 26, "{location}");
                ids.push(id);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            (ids, false)
        }));
    }
    let mut all = Vec::new();
    let mut failed = false;
    for worker in workers {
        let (ids, worker_failed) = worker.await.unwrap();
        all.extend(ids);
        failed |= worker_failed;
    }
    (all, failed)
}

/// Click ids served that are not among `events`, and how many events are
/// duplicates.
pub fn missing_and_duplicates(served: &[String], events: &[Consumed]) -> (Vec<String>, usize) {
    let got: std::collections::HashSet<&str> = events
        .iter()
        .map(|e| e.field("click_id").as_str().unwrap())
        .collect();
    let missing = served
        .iter()
        .filter(|id| !got.contains(id.as_str()))
        .cloned()
        .collect();
    (missing, events.len() - got.len())
}

/// The value of one sample line `name{labels} value` in a Prometheus text page.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether `tool` runs; a missing tool fails under CI (`.ci/run` installs every
/// tool the tests use) and skips the test, saying so, otherwise.
pub fn have(tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--help")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed (.ci/run installs it)"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

/// Headless Chromium with the flags every browser test wants (no sandbox, GPU,
/// QUIC, first-run or background traffic), its profile in `profile`, and
/// `hosts` resolved to 127.0.0.1; `None` where it is not installed (a failure
/// under CI, as for [`have`]).
pub fn chromium(profile: &std::path::Path, hosts: &[&str]) -> Option<std::process::Command> {
    let Some(binary) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide chromium (see .ci/run)"
        );
        eprintln!("SKIPPED: chromium not installed");
        return None;
    };
    let rules: Vec<String> = hosts.iter().map(|h| format!("MAP {h} 127.0.0.1")).collect();
    let mut command = std::process::Command::new(binary);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]);
    command.arg(format!("--host-resolver-rules={}", rules.join(", ")));
    command.arg(format!("--user-data-dir={}", profile.display()));
    Some(command)
}

/// A port nothing listens on right now, for a process that must be told its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The event whose click id is `click_id`.
pub fn event_for<'a>(events: &'a [Consumed], click_id: &str) -> &'a Consumed {
    events
        .iter()
        .find(|e| e.field("click_id") == click_id)
        .unwrap_or_else(|| {
            panic!(
                "no event for click {click_id} among {} events",
                events.len()
            )
        })
}

/// A real small filesystem (tmpfs with `size=`) mounted over a temporary
/// directory, for tests of a full disk; unmounted on drop. Needs root (the tests
/// run as root in CI, where a failure to mount fails the test); elsewhere the
/// test is skipped, saying so.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs (the tests need root)"
            );
            eprintln!("skipped: cannot mount a tmpfs (not root?)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the filesystem with `filler` until it refuses a byte, then frees
    /// `leave` bytes of it (whole pages on tmpfs).
    pub fn fill(&self, leave: u64) {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let page = [0xAAu8; 4096];
        while file.write_all(&page).and_then(|()| file.flush()).is_ok() {}
        let len = std::fs::metadata(&path).unwrap().len();
        file.set_len(len.saturating_sub(leave)).unwrap();
    }

    /// Frees everything `fill` took.
    pub fn empty(&self) {
        let _ = std::fs::remove_file(self.path().join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Tries `attempt` every `every` until it succeeds, for at most `within`; then
/// fails, naming `what` never happened and what the last try saw (its `Err`).
pub async fn eventually<T, E, Attempt, Tried>(
    within: Duration,
    every: Duration,
    what: &str,
    mut attempt: Attempt,
) -> T
where
    E: std::fmt::Display,
    Attempt: FnMut() -> Tried,
    Tried: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "never {what} within {within:?}: {seen}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

/// [`eventually`] for a thread outside the runtime.
pub fn eventually_blocking<T, E: std::fmt::Display>(
    within: Duration,
    every: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match attempt() {
            Ok(done) => return done,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "never {what} within {within:?}: {seen}"
            ),
        }
        std::thread::sleep(every);
    }
}

/// librdkafka's mock cluster (one broker) with `topics` made (name, partitions),
/// and its bootstrap address: for fault injection (`broker_down`, round-trip
/// times, request errors). End-to-end tests use a real tansu broker instead.
pub fn mock_kafka(
    topics: &[(&str, i32)],
) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    for (topic, partitions) in topics {
        cluster
            .create_topic(topic, *partitions, 1)
            .expect("a mock topic");
    }
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

/// Writes `messages` (key, value; `None` a tombstone) to `topic` and waits until
/// the broker has them.
pub fn produce(bootstrap: &str, topic: &str, messages: &[(&str, Option<&str>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (key, value) in messages {
        let mut record = BaseRecord::<str, str>::to(topic).key(*key);
        if let Some(value) = value {
            record = record.payload(*value);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}
