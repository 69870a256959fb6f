//! The built binary: flags and their environment variables, `--check`, exit codes,
//! a real run stopped by SIGTERM, and `clickedge consume`.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{free_port, mock_kafka, request, BROWSER_UA};

/// The built binary, with the test environment's CLICKEDGE_* removed and a spool
/// directory of its own (a fresh one per call; kept until the process exits).
pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clickedge"));
    // The tests' own environment must not configure the edge under test.
    for (name, _) in std::env::vars() {
        if name.starts_with("CLICKEDGE_") {
            command.env_remove(name);
        }
    }
    command.env("CLICKEDGE_SPOOL_DIR", tempfile::tempdir().unwrap().keep());
    command
}

fn links_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

const MIXED: &str = "\
{\"type\":\"fallback\",\"host\":\"a.io\",\"url\":\"https://a.com/\"}
{\"type\":\"vanity\",\"host\":\"a.io\",\"slug\":\"x\",\"partner_id\":\"1\",\"campaign_id\":\"1\",\"ad_id\":\"1\",\"url\":\"https://a.com/x\"}

{\"type\":\"tracking\",\"host\":\"a.io\",\"campaign_id\":\"1\",\"url\":\"https://a.com/\"}
{\"type\":\"fallback\",\"host\":\"b.io\",\"url\":\"https://b.com/\",\"status\":301}
{\"type\":\"domain\",\"host\":\"c.io\",\"partner_id\":\"1\",\"campaign_id\":\"1\",\"ad_id\":\"1\",\"url\":\"https://c.com/\"}
";

#[test]
fn check_accepts_a_file_and_reports_skipped_lines() {
    let file = links_file(MIXED);
    let (code, stdout, stderr) = run(binary().args(["--check", "--links"]).arg(file.path()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("OK, 3 records"), "{stdout}");
    assert!(stderr.contains("line 4: missing field `ad_id`"), "{stderr}");
    assert!(
        stderr.contains("line 5: field `status` 301 is not allowed"),
        "{stderr}"
    );
}

/// SPEC §8: brand and promo records go in the same file as links.
#[test]
fn check_counts_brand_and_promo_records() {
    let file = links_file(
        "\
{\"type\":\"fallback\",\"host\":\"a.io\",\"url\":\"https://a.com/\"}
{\"type\":\"brand\",\"brand_id\":\"acme\",\"hosts\":[\"a.io\"],\"action_keys\":[\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"],\"origins\":[\"https://www.acme.com\"],\"click_window_days\":30}
{\"type\":\"promo\",\"brand_id\":\"acme\",\"code\":\"JANE10\",\"partner_id\":\"1234\"}
{\"type\":\"promo\",\"brand_id\":\"acme\",\"code\":\"JANE 10\",\"partner_id\":\"1234\"}
",
    );
    let (code, stdout, stderr) = run(binary().args(["--check", "--links"]).arg(file.path()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("OK, 3 records"), "{stdout}");
    assert!(stdout.contains("1 brand, 1 promo"), "{stdout}");
    assert!(stderr.contains("line 4: field `code`"), "{stderr}");
}

#[test]
fn check_strict_fails_naming_every_bad_line() {
    let file = links_file(MIXED);
    let (code, _, stderr) = run(binary()
        .args(["--check", "--strict", "--links"])
        .arg(file.path()));
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("2 invalid record(s) and --strict is set"),
        "{stderr}"
    );
    assert!(stderr.contains("line 4: missing field `ad_id`"), "{stderr}");
    assert!(stderr.contains("line 5:"), "{stderr}");
}

#[test]
fn a_garbled_or_unreadable_links_file_is_refused() {
    let garbled = links_file("this is\nnot\nndjson\n{\"type\":\"fallback\",\"host\":\"a.io\",\"url\":\"https://a.com/\"}\n");
    let (code, _, stderr) = run(binary().args(["--check", "--links"]).arg(garbled.path()));
    assert_eq!(code, 65);
    assert!(
        stderr.contains("more invalid records (3) than valid ones (1)"),
        "{stderr}"
    );

    let (code, _, stderr) = run(binary().args(["--check", "--links", "/nonexistent/links.ndjson"]));
    assert_eq!(code, 65);
    assert!(
        stderr.contains("cannot read links file /nonexistent/links.ndjson"),
        "{stderr}"
    );

    // Refused at start too, not only by --check.
    let (code, _, stderr) = run(binary()
        .args(["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--links"])
        .arg(garbled.path()));
    assert_eq!(code, 65, "{stderr}");
}

#[test]
fn check_reports_the_certificates_too() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["acme.sjv.io".to_string()]).unwrap();
    std::fs::write(dir.path().join("acme.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("acme.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.crt"), "nonsense").unwrap();
    let (code, stdout, stderr) = run(binary().args(["--check", "--tls-certs"]).arg(dir.path()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("OK, 1 certificates, 1 skipped"), "{stdout}");
    assert!(stderr.contains("broken.crt"), "{stderr}");
    let (code, _, stderr) = run(binary().args(["--check", "--tls-certs", "/nonexistent/certs"]));
    assert_eq!(code, 64);
    assert!(
        stderr.contains("cannot read --tls-certs /nonexistent/certs"),
        "{stderr}"
    );
}

#[test]
fn bad_configuration_exits_64_before_anything_starts() {
    let (code, _, stderr) = run(binary().args(["--http", "not-an-address", "--check"]));
    assert_eq!(code, 64);
    assert!(
        stderr.contains("--http \"not-an-address\" is not a socket address"),
        "{stderr}"
    );
    let (code, _, stderr) = run(binary().args(["--no-such-flag"]));
    assert_eq!(code, 64, "{stderr}");
    let (code, _, stderr) = run(binary().args(["--max-connections", "99999999999999999999999"]));
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--max-connections"), "{stderr}");
}

/// Issue 13, item 11: `--idle-timeout 100000000000000000000000` panicked in
/// `Duration::from_secs_f64`. Every duration and size flag exits 64, named.
#[test]
fn huge_durations_and_sizes_exit_64_with_the_flag_named() {
    for flag in [
        "--idle-timeout",
        "--header-read-timeout",
        "--send-timeout",
        "--shutdown-timeout",
        "--spool-fsync-interval",
        "--spool-max-bytes",
    ] {
        for value in ["100000000000000000000000", "1e400"] {
            let (code, _, stderr) = run(binary().args(["--check", flag, value]));
            assert_eq!(code, 64, "{flag} {value}: {stderr}");
            assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

/// Issue 13, item 10: segments found in the spool are replayed as clicks, so a
/// directory someone else can write is refused before anything starts.
#[test]
fn a_spool_directory_others_can_write_exits_64() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, stderr) = run(binary()
        .arg("--check")
        .env("CLICKEDGE_SPOOL_DIR", dir.path()));
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--spool-dir"), "{stderr}");
    assert!(
        stderr.contains("writable by its group or others"),
        "{stderr}"
    );
    // Another user's directory (the tests run as root, who can hand it over).
    if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let (code, _, stderr) = run(binary()
            .arg("--check")
            .env("CLICKEDGE_SPOOL_DIR", dir.path()));
        assert_eq!(code, 64, "{stderr}");
        assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    }
    // A directory the edge creates itself is private.
    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("spool");
    let (edge, _) = Running::serve(&["--spool-dir", fresh.to_str().unwrap()]);
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(edge.terminate(), 0);
}

#[test]
fn every_flag_reads_its_environment_variable_and_the_command_line_wins() {
    let file = links_file(MIXED);
    // CLICKEDGE_STRICT turns a passing check into a failing one.
    for truthy in ["true", "1", "yes", "on"] {
        let (code, _, _) = run(binary()
            .args(["--check", "--links"])
            .arg(file.path())
            .env("CLICKEDGE_STRICT", truthy));
        assert_eq!(code, 65, "CLICKEDGE_STRICT={truthy}");
    }
    let (code, _, _) = run(binary()
        .args(["--check", "--links"])
        .arg(file.path())
        .env("CLICKEDGE_STRICT", "0"));
    assert_eq!(code, 0, "CLICKEDGE_STRICT=0 is off");
    // CLICKEDGE_LINKS and CLICKEDGE_CHECK stand in for the flags.
    let (code, stdout, _) = run(binary()
        .env("CLICKEDGE_LINKS", file.path())
        .env("CLICKEDGE_CHECK", "1"));
    assert_eq!(code, 0);
    assert!(stdout.contains("OK, 3 records"), "{stdout}");
    // A bad value from the environment is refused, naming the flag.
    let (code, _, stderr) = run(binary()
        .arg("--check")
        .env("CLICKEDGE_CLICK_ID_PARAM", "a b"));
    assert_eq!(code, 64);
    assert!(stderr.contains("--click-id-param"), "{stderr}");
    // The command line wins over the environment.
    let (code, _, stderr) = run(binary()
        .args(["--check", "--http", "127.0.0.1:8081"])
        .env("CLICKEDGE_HTTP", "bogus"));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, _) = run(binary().arg("--check").env("CLICKEDGE_HTTP", "bogus"));
    assert_eq!(code, 64);
}

#[test]
fn every_edge_flag_names_its_environment_variable() {
    let (code, help, _) = run(binary().arg("--help"));
    assert_eq!(code, 0);
    // Each option's paragraph: its `--flag` line and the lines up to the next one.
    let mut paragraphs: Vec<(String, String)> = Vec::new();
    for line in help.lines().map(str::trim_start) {
        if let Some(rest) = line.strip_prefix("--") {
            let flag = rest.split([' ', '=']).next().unwrap().to_owned();
            paragraphs.push((flag, line.to_owned()));
        } else if line.starts_with("-h") || line.starts_with("-V") {
            paragraphs.push(("help".into(), String::new()));
        } else if let Some((_, text)) = paragraphs.last_mut() {
            text.push(' ');
            text.push_str(line);
        }
    }
    let flags: Vec<_> = paragraphs
        .iter()
        .filter(|(flag, _)| !matches!(flag.as_str(), "help" | "version"))
        .collect();
    for (flag, text) in &flags {
        // `[env: NAME=value]`, or `[env: NAME]` for a secret whose value is hidden.
        let name = format!("[env: CLICKEDGE_{}", flag.to_uppercase().replace('-', "_"));
        assert!(
            text.contains(&format!("{name}=")) || text.contains(&format!("{name}]")),
            "--{flag} lacks {name}: {text}"
        );
    }
    assert!(
        flags.len() >= 16,
        "found only {} flags in:\n{help}",
        flags.len()
    );
}

/// A running binary whose stderr is watched for its log lines.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, so a wait finds lines that came before it.
    seen: std::cell::RefCell<Vec<String>>,
    _spool: Option<tempfile::TempDir>,
}

impl Running {
    /// Starts the edge on free ports with `args` added, and waits until it serves.
    /// Returns it with its HTTP address.
    pub fn serve(args: &[&str]) -> (Running, std::net::SocketAddr) {
        let http = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut argv = vec!["--http", &http, "--admin", &admin];
        argv.extend_from_slice(args);
        let running = Running::start(&argv);
        running.wait_for("Serving.");
        (running, http.parse().unwrap())
    }

    /// Starts the edge with `args`, on a spool directory of its own unless `args`
    /// name one (edges sharing the default directory would refuse each other).
    pub fn start(args: &[&str]) -> Running {
        let spool = (!args.contains(&"--spool-dir")).then(|| tempfile::tempdir().unwrap());
        let mut command = binary();
        command.args(args);
        if let Some(dir) = &spool {
            command.arg("--spool-dir").arg(dir.path());
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Default::default(),
            _spool: spool,
        }
    }

    /// Waits for a log line containing `needle` (or finds one already logged).
    pub fn wait_for(&self, needle: &str) -> String {
        if let Some(line) = self.seen.borrow().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|error| {
                    // What the edge did say, to tell a slow start from an exit.
                    panic!(
                        "no log line with {needle:?} ({error}); its log so far:\n{}",
                        self.seen.borrow().join("\n")
                    )
                });
            self.seen.borrow_mut().push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Every line logged so far (for a failure's message).
    pub fn log(&self) -> String {
        let mut seen = self.seen.borrow_mut();
        seen.extend(self.lines.try_iter());
        seen.join("\n")
    }

    pub fn terminate(self) -> i32 {
        self.signal("-TERM")
    }

    pub fn signal(mut self, signal: &str) -> i32 {
        // Drop still runs afterwards; killing an exited child is harmless.
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }
}

/// A test that fails midway must not leave its edge running.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `bootstrap=HOST:PORT` out of a log line.
fn bootstrap_of(line: &str) -> String {
    line.split("bootstrap=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no bootstrap in {line:?}"))
        .trim_matches('"')
        .to_owned()
}

#[tokio::test]
async fn the_binary_serves_the_embedded_sample_then_consume_shows_the_click() {
    let http = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let edge = Running::start(&["--http", &http, "--admin", &admin, "--node-id", "cli-node"]);
    let bootstrap = bootstrap_of(&edge.wait_for("embedded development Kafka"));
    edge.wait_for("Serving.");

    // The sample links from examples/links.ndjson, as the README shows them.
    let r = request(
        http.parse().unwrap(),
        "GET",
        "acme.sjv.io",
        "/c/1234/5678/9012?subId1=readme",
        &[("user-agent", BROWSER_UA)],
    )
    .await;
    assert_eq!(r.status, 302);
    let click_id = r.click_id("clickid");
    let r = request(
        http.parse().unwrap(),
        "GET",
        "acme.pxf.io",
        "/janes-picks",
        &[],
    )
    .await;
    assert_eq!(r.status, 302);
    let r = request(
        http.parse().unwrap(),
        "GET",
        "www.acmeradio.example",
        "/",
        &[],
    )
    .await;
    r.click_id("irclickid");

    // `clickedge consume` finds the clicks, with key and headers.
    let consume = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (code, stdout, stderr) = run(binary().args([
                "consume",
                "--brokers",
                &bootstrap,
                "--topic",
                "clicks",
                "--timeout",
                "10s",
            ]));
            assert_eq!(code, 0, "{stderr}");
            assert!(
                !stderr.contains("PartitionEOF"),
                "the end of a partition is not an error: {stderr}"
            );
            if stdout.lines().count() >= 3 || std::time::Instant::now() > deadline {
                return stdout;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let messages: Vec<serde_json::Value> = consume
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(messages.len(), 3, "{consume}");
    let message = messages
        .iter()
        .find(|m| m["value"]["click_id"] == click_id.as_str())
        .expect("the tracking click");
    assert_eq!(message["headers"]["schema"], "click.v1");
    assert_eq!(message["key"], message["value"]["visitor_id"]);
    assert_eq!(message["value"]["sub_ids"][0], "readme");
    assert_eq!(message["value"]["node"], "cli-node");

    assert_eq!(edge.terminate(), 0, "SIGTERM drains and exits 0");
}

#[test]
fn sigint_drains_and_exits_zero_too() {
    let http = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut edge = Running::start(&["--http", &http, "--admin", &admin]);
    edge.wait_for("Serving.");
    let pid = edge.child.id().to_string();
    // Right after "Serving." every handler is installed: a SIGHUP (whose
    // default action ends a process) reloads, it does not kill.
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    edge.wait_for("Received SIGHUP");
    assert!(edge.child.try_wait().unwrap().is_none(), "SIGHUP killed it");
    let code = edge.signal("-INT");
    assert_eq!(code, 0, "pid {pid}");
}

#[test]
fn consume_reports_a_missing_topic() {
    let (cluster, _) = mock_kafka(&[("clicks", 1)]);
    let (code, _, stderr) = run(binary().args([
        "consume",
        "--brokers",
        &cluster.bootstrap_servers(),
        "--topic",
        "no-such-topic",
        "--timeout",
        "5s",
    ]));
    assert_ne!(code, 0);
    assert!(stderr.contains("no-such-topic"), "{stderr}");
}
