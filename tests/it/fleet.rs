//! Issue 14: a fleet behind a load balancer, rolled while clients click. Three
//! edges (each its own spool and links topic snapshot) behind HAProxy (health
//! check on `/readyz`, retries and redispatch, as SREs run it), one tansu broker,
//! clients that check every answer, and a rollout done the way one is done:
//! SIGTERM (readiness off, drain, flush, exit), a new process on the same spool,
//! ready again, then the next node.
//!
//! - healthy broker, with a link changed through the topic mid-rollout;
//! - broker hung (SIGSTOP) for the whole rollout and back afterwards.
//!
//! Asserted: no client-visible failure, every click id a client saw is in
//! Kafka (none lost), no duplicate, the link change served by every node.
//! Reported (not asserted: timings belong to the loadtest, `loadtest/fleet.sh`
//! runs these same tests longer and in release): p99 steady against during
//! the rollout, the link's propagation time, the backlog's drain time.
//!
//! Scale with `FLEET_CLIENTS` (4), `FLEET_PAUSE_MS` (5, between one client's
//! clicks) and `FLEET_STEADY_S` (3, before and after the rollout).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::cli::Running;
use crate::support::{
    consume_blocking, eventually, free_port, produce, request, sample, BROWSER_UA, LINKS,
};
use crate::tansu::{
    create_topic, require_tansu, start_broker_with_event_topics, start_haproxy, Broker, KillOnDrop,
};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One edge's place in the fleet: its ports and spool outlive its processes.
struct Node {
    name: String,
    http: u16,
    admin: u16,
    spool: tempfile::TempDir,
    links: std::path::PathBuf,
    broker: String,
    running: Option<Running>,
}

impl Node {
    fn start(&mut self) {
        let http = format!("127.0.0.1:{}", self.http);
        let admin = format!("127.0.0.1:{}", self.admin);
        let running = Running::start(&[
            "--http",
            &http,
            "--admin",
            &admin,
            "--links",
            self.links.to_str().unwrap(),
            "--kafka-brokers",
            &self.broker,
            "--links-topic",
            "links",
            "--links-topic-ready-timeout",
            "3s",
            "--spool-dir",
            self.spool.path().to_str().unwrap(),
            "--shutdown-timeout",
            "5s",
            "--node-id",
            &self.name,
        ]);
        running.wait_for("Serving.");
        self.running = Some(running);
    }

    /// SIGTERM: readiness off, drain, flush (up to the shutdown timeout), exit.
    fn stop(&mut self) {
        let running = self.running.take().expect("running");
        assert_eq!(running.terminate(), 0, "{} exits 0", self.name);
    }

    fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http))
    }

    fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }
}

struct Fleet {
    broker: Broker,
    nodes: Vec<Node>,
    front: SocketAddr,
    stats: SocketAddr,
    _proxy: KillOnDrop,
    _dir: tempfile::TempDir,
}

/// Clients clicking through a fleet, and what steers them.
struct Load {
    clients: tokio::task::JoinHandle<Seen>,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    started: Instant,
    /// How long to click before and after the rollout (`FLEET_STEADY_S`).
    steady: Duration,
}

impl Fleet {
    /// A fleet with clients clicking through it; `None` (said) where tansu or
    /// HAProxy is missing outside CI.
    async fn under_load() -> Option<(Fleet, Load)> {
        let tansu = require_tansu()?;
        if !crate::support::have("haproxy") {
            return None;
        }
        let fleet = Fleet::start(&tansu).await;
        let (stop, phase) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU8::new(0)));
        let load = Load {
            clients: clients(fleet.front, stop.clone(), phase.clone()),
            stop,
            phase,
            started: Instant::now(),
            steady: Duration::from_secs(setting("FLEET_STEADY_S", 3)),
        };
        Some((fleet, load))
    }

    async fn start(tansu: &std::path::PathBuf) -> Fleet {
        let broker = start_broker_with_event_topics(tansu, 3).await;
        create_topic(&broker.address, "links", 1).await;
        let dir = tempfile::tempdir().unwrap();
        let links = dir.path().join("links.ndjson");
        std::fs::write(&links, LINKS).unwrap();
        let mut nodes: Vec<Node> = (0..3)
            .map(|i| Node {
                name: format!("edge-{i}"),
                http: free_port(),
                admin: free_port(),
                spool: tempfile::tempdir().unwrap(),
                links: links.clone(),
                broker: broker.address.clone(),
                running: None,
            })
            .collect();
        for node in &mut nodes {
            node.start();
        }
        // HAProxy assumes its servers UP until a check fails: start it only once
        // every edge is ready, or its first checks would take them all out.
        for node in &nodes {
            wait_ready(node.admin_addr()).await;
        }
        let (front, stats) = (free_port(), free_port());
        let servers: String = nodes
            .iter()
            .map(|n| {
                format!(
                    "  server {} 127.0.0.1:{} check port {}\n",
                    n.name, n.http, n.admin
                )
            })
            .collect();
        // As an SRE runs it: health from /readyz, GETs retried elsewhere on
        // any retryable error, redispatched when a server goes away.
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 4096\n\
                 defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
                 retries 3\n  retry-on all-retryable-errors\n  option redispatch 1\n\
                 frontend clicks\n  bind 127.0.0.1:{front}\n  default_backend edges\n\
                 frontend stats\n  bind 127.0.0.1:{stats}\n  stats enable\n  stats uri /stats\n\
                 backend edges\n  balance roundrobin\n  option httpchk GET /readyz\n  \
                 http-check expect status 200\n  default-server inter 200ms fall 1 rise 2\n{servers}"
            ),
        )
        .unwrap();
        let proxy = start_haproxy(&config, stats);
        let fleet = Fleet {
            broker,
            nodes,
            front: SocketAddr::from(([127, 0, 0, 1], front)),
            stats: SocketAddr::from(([127, 0, 0, 1], stats)),
            _proxy: proxy,
            _dir: dir,
        };
        for i in 0..3 {
            fleet.wait_in_rotation(i).await;
        }
        fleet
    }

    /// Waits until HAProxy's own health check has the node UP (its stats page,
    /// as CSV), failing after 30 s.
    async fn wait_in_rotation(&self, node: usize) {
        let (name, stats) = (&self.nodes[node].name, self.stats);
        let what = format!("{name} UP in HAProxy");
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            &what,
            move || async move {
                let csv = request(stats, "GET", "localhost", "/stats;csv", &[])
                    .await
                    .body;
                let up = csv.lines().any(|line| {
                    let fields: Vec<&str> = line.split(',').collect();
                    fields.len() > 17
                        && fields[0] == "edges"
                        && fields[1] == name
                        && fields[17] == "UP"
                });
                if up {
                    Ok(())
                } else {
                    Err(format!("\n{csv}"))
                }
            },
        )
        .await;
    }

    /// Restarts every node in turn, as a rollout does, while clients click.
    async fn roll(&mut self, between: impl Fn(usize)) {
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            tokio::task::block_in_place(|| {
                node.stop();
                node.start();
            });
            self.wait_in_rotation(i).await;
            between(i);
        }
    }

    fn signal_broker(&self, signal: &str) {
        self.broker.signal(signal);
    }

    /// Reads the clicks topic until every served id is there (or 120 s pass):
    /// the ids missing, the duplicates, and when the last one arrived.
    async fn read_back(&self, served: &[String]) -> (usize, usize, Duration) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        loop {
            let (bootstrap, count) = (self.broker.address.clone(), served.len());
            let events = tokio::task::spawn_blocking(move || {
                consume_blocking(&bootstrap, "clicks", count, Duration::from_secs(20))
            })
            .await
            .unwrap();
            let (missing, duplicates) = crate::support::missing_and_duplicates(served, &events);
            if missing.is_empty() || Instant::now() > deadline {
                return (missing.len(), duplicates, started.elapsed());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// What the clients saw: click ids, failures, latencies by phase.
#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    failures: Vec<String>,
    latencies: [Vec<Duration>; 2],
}

/// Clients on keep-alive connections through the load balancer, each checking
/// every answer is a 302 with a click id, until `stop`. Latencies are kept by
/// `phase`: 0 steady (before and after), 1 during the rollout.
fn clients(
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
) -> tokio::task::JoinHandle<Seen> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let count = setting("FLEET_CLIENTS", 4) as usize;
    let pause = Duration::from_millis(setting("FLEET_PAUSE_MS", 5));
    let workers: Vec<_> = (0..count)
        .map(|worker| {
            let (seen, stop, phase) = (seen.clone(), stop.clone(), phase.clone());
            tokio::spawn(async move {
                let mut sender = None;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if sender.is_none() {
                        let Ok(stream) = TcpStream::connect(front).await else {
                            seen.lock().unwrap().failures.push("connect".into());
                            continue;
                        };
                        let Ok((s, connection)) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                        else {
                            seen.lock().unwrap().failures.push("handshake".into());
                            continue;
                        };
                        tokio::spawn(connection);
                        sender = Some(s);
                    }
                    i += 1;
                    let request = hyper::Request::get(format!("/c/{worker}/5678/9012?n={i}"))
                        .header("host", "acme.sjv.io")
                        .header("user-agent", BROWSER_UA)
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let phase = phase.load(Ordering::Relaxed) as usize;
                    let sent = Instant::now();
                    let answer = match sender.as_mut().unwrap().send_request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let location = response
                                .headers()
                                .get("location")
                                .map(|l| l.to_str().unwrap().to_owned());
                            match response.into_body().collect().await {
                                Ok(_) => Ok((status, location)),
                                Err(error) => Err(error.to_string()),
                            }
                        }
                        Err(error) => Err(error.to_string()),
                    };
                    let took = sent.elapsed();
                    {
                        let mut seen = seen.lock().unwrap();
                        match answer {
                            Ok((302, Some(location))) => {
                                let id = location.rsplit("clickid=").next().unwrap().to_owned();
                                seen.ids.push(id);
                                seen.latencies[phase].push(took);
                            }
                            Ok((status, _)) => seen.failures.push(format!("status {status}")),
                            Err(error) => {
                                // A closed keep-alive connection: reconnect, and count
                                // it, since a client would have seen it.
                                seen.failures.push(error);
                                sender = None;
                            }
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    tokio::spawn(async move {
        for worker in workers {
            worker.await.unwrap();
        }
        Arc::try_unwrap(seen)
            .ok()
            .expect("every worker is done")
            .into_inner()
            .unwrap()
    })
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default()
}

/// Waits until the admin listener at `admin` answers `/readyz` with 200.
async fn wait_ready(admin: SocketAddr) {
    let what = format!("{admin} ready");
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        &what,
        || async {
            match request(admin, "GET", "localhost", "/readyz", &[])
                .await
                .status
            {
                200 => Ok(()),
                status => Err(status),
            }
        },
    )
    .await;
}

/// Waits until `node` answers `path` on `host` with a 302; how long that took.
async fn wait_for_link(node: SocketAddr, host: &str, path: &str, since: Instant) -> Duration {
    loop {
        if request(node, "GET", host, path, &[("user-agent", BROWSER_UA)])
            .await
            .status
            == 302
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{node} never served {host}{path}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ROLLOUT_LINK: &str = r#"{"type":"vanity","host":"fleet.pxf.io","slug":"rollout","partner_id":"7","campaign_id":"7","ad_id":"7","url":"https://www.acme.com/rollout"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_with_a_healthy_broker_loses_no_click_and_spreads_a_link_change() {
    let Some((mut fleet, load)) = Fleet::under_load().await else {
        return;
    };
    let (steady, stop, phase) = (load.steady, load.stop.clone(), load.phase.clone());
    let load = load.clients;
    tokio::time::sleep(steady).await;

    phase.store(1, Ordering::Relaxed);
    let changed = Arc::new(Mutex::new(None));
    let broker = fleet.broker.address.clone();
    let changed_at = changed.clone();
    fleet
        .roll(|restarted| {
            // After the first node is back: a link changed through the topic.
            if restarted == 0 {
                produce(
                    &broker,
                    "links",
                    &[("vanity|fleet.pxf.io|rollout", Some(ROLLOUT_LINK))],
                );
                *changed_at.lock().unwrap() = Some(Instant::now());
            }
        })
        .await;
    phase.store(0, Ordering::Relaxed);
    let since = changed.lock().unwrap().expect("the link was changed");
    let mut propagation = Duration::ZERO;
    for node in &fleet.nodes {
        let took = wait_for_link(node.http_addr(), "fleet.pxf.io", "/rollout", since).await;
        propagation = propagation.max(took);
    }
    tokio::time::sleep(steady).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = load.await.unwrap();

    let (lost, duplicates, read_in) = fleet.read_back(&seen.ids).await;
    let (steady_p99, rollout_p99) = (p99(&mut seen.latencies[0]), p99(&mut seen.latencies[1]));
    eprintln!(
        "fleet, healthy broker: {} clicks, {} failed, {lost} lost, {duplicates} duplicates; \
         link change on every node within {:.2} s; p99 steady {:.2} ms, during the rollout {:.2} ms; \
         read back in {:.1} s",
        seen.ids.len(),
        seen.failures.len(),
        propagation.as_secs_f64(),
        steady_p99.as_secs_f64() * 1e3,
        rollout_p99.as_secs_f64() * 1e3,
        read_in.as_secs_f64()
    );
    assert!(seen.ids.len() > 1000, "traffic flowed: {}", seen.ids.len());
    assert!(
        seen.failures.is_empty(),
        "client-visible failures: {:?}",
        seen.failures
    );
    assert_eq!(lost, 0, "every click a client saw is in Kafka");
    assert_eq!(duplicates, 0);
    assert!(
        propagation < Duration::from_secs(10),
        "the link reached every node: {propagation:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_during_a_hung_broker_loses_no_click_and_no_node_leaves_the_rotation() {
    let Some((mut fleet, load)) = Fleet::under_load().await else {
        return;
    };
    let (steady, stop, phase) = (load.steady, load.stop.clone(), load.phase.clone());
    let clicking = load.started;
    let load = load.clients;
    tokio::time::sleep(steady).await;

    // The broker hangs; every node is restarted while it does (each new process
    // must become ready from its links snapshot, within the bound).
    fleet.signal_broker("-STOP");
    let hung = Instant::now();
    phase.store(1, Ordering::Relaxed);
    fleet.roll(|_| {}).await;
    phase.store(0, Ordering::Relaxed);
    tokio::time::sleep(steady).await;
    let resumed = Instant::now();
    let outage = hung.elapsed();
    fleet.signal_broker("-CONT");
    tokio::time::sleep(steady).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = load.await.unwrap();
    let live_rate = seen.ids.len() as f64 / clicking.elapsed().as_secs_f64();

    // The backlog drains from every node's spool. Every node was restarted
    // during the outage, so its `replayed` count is its share of the backlog.
    let mut drained = Duration::ZERO;
    let mut backlog = 0.0;
    for node in &fleet.nodes {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let metrics = request(node.admin_addr(), "GET", "localhost", "/metrics", &[])
                .await
                .body;
            if sample(&metrics, "clickedge_spool_backlog_bytes") == Some(0.0)
                && sample(&metrics, "clickedge_kafka_queue_messages") == Some(0.0)
            {
                backlog += sample(
                    &metrics,
                    r#"clickedge_click_events_total{result="replayed"}"#,
                )
                .unwrap();
                break;
            }
            if Instant::now() > deadline {
                let log = node.running.as_ref().map(Running::log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                panic!(
                    "{} never drained:\n{metrics}\nits log, last lines first:\n{}",
                    node.name,
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drained = drained.max(resumed.elapsed());
    }
    let (lost, duplicates, read_in) = fleet.read_back(&seen.ids).await;
    let (steady_p99, rollout_p99) = (p99(&mut seen.latencies[0]), p99(&mut seen.latencies[1]));
    let drain_rate = backlog / drained.as_secs_f64();
    eprintln!(
        "fleet, broker hung through the rollout: {} clicks, {} failed, {lost} lost, {duplicates} duplicates; \
         p99 steady {:.2} ms, during the rollout {:.2} ms; a {:.1} s outage left {backlog:.0} events in the spools, \
         drained {:.1} s after the broker returned ({drain_rate:.0} events/s against {live_rate:.0} clicks/s live); \
         all read back from the start of the topic in {:.1} s ({:.0} events/s)",
        seen.ids.len(),
        seen.failures.len(),
        steady_p99.as_secs_f64() * 1e3,
        rollout_p99.as_secs_f64() * 1e3,
        outage.as_secs_f64(),
        drained.as_secs_f64(),
        read_in.as_secs_f64(),
        (seen.ids.len() + duplicates) as f64 / read_in.as_secs_f64()
    );
    assert!(seen.ids.len() > 1000, "traffic flowed: {}", seen.ids.len());
    assert!(
        seen.failures.is_empty(),
        "client-visible failures: {:?}",
        seen.failures
    );
    assert_eq!(lost, 0, "every click a client saw is in Kafka");
    // Late, not lost, and not for long: the backlog reaches Kafka faster than it
    // built up (issue 14 saw a consumer fall far behind after an outage).
    assert!(backlog > 0.0, "the outage went through the spools");
    assert!(
        drained < outage,
        "{backlog} events took {drained:?} to drain after a {outage:?} outage"
    );
    // Duplicates are possible here (acknowledgements lost with a hung broker);
    // attribution removes them by click id. Reported above.
}
