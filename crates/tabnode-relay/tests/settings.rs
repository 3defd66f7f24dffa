//! The relay's settings (issue #18): a config file covering every flag,
//! flags and environment variables over it, `--print-config`, and clear
//! errors for bad files and values. Runs the real binary.

use std::path::Path;
use std::process::{Command, Output};

const RELAY: &str = env!("CARGO_BIN_EXE_tabnode-relay");

/// Every setting, none at its default.
const EVERY: &str = r#"
http = "127.0.0.1:9191"
listen-ip = ["0.0.0.0", "::"]
external-address = ["203.0.113.7", "/ip4/203.0.113.7/udp/443/webrtc-direct"]
tcp-port = 5001
quic-port = 5002
webrtc-port = 5003
data-dir = "/var/lib/tabnode"
site-root = "/usr/share/tabnode"
models-dir = "/srv/models"
pof-interval = 1800.0
pof-max-n = 1024
pof-min-n = 128
stall-timeout = 30.0
first-token-timeout = 120.0
queue-timeout = 10.0
rate-limit = 60
anonymous-per-hour = 10
max-peers-per-ip = 512
catalog = "/etc/tabnode/catalog.json"
hnsw-threshold = 1000
max-vector-points = 5000
bootstrap-file = "/run/tabnode/bootstrap.json"
trusted-proxy = ["10.0.0.0/8", "::1"]
check-rate = 0.1
check-new-node-rate = 0.5
check-new-node-requests = 40
strikes-to-exclude = 5
check-same-address = true
shutdown-grace = 12.5
tls-cert = "/etc/tabnode/cert.pem"
tls-key = "/etc/tabnode/key.pem"
http-redirect = "0.0.0.0:80"
log-format = "json"
"#;

/// The relay with `args` and `env` (and no TABNODE_* from this process).
fn relay(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(RELAY);
    for (k, _) in std::env::vars() {
        if k.starts_with("TABNODE_") {
            c.env_remove(k);
        }
    }
    c.args(args).envs(env.iter().copied());
    c.output().expect("the relay runs")
}

fn printed(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let out = relay(args, env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("--print-config writes TOML")
}

fn file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

/// The error of a relay that must not start: exit status 2, the message.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = relay(args, env);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_file_sets_every_setting_and_print_config_shows_them() {
    let dir = tempfile::tempdir().expect("dir");
    let every = file(dir.path(), "every.toml", EVERY);
    let want: toml::Table = EVERY.parse().expect("toml");
    let got = printed(&["--config", &every, "--print-config"], &[]);
    assert_eq!(got, want);
    // And the file covers every setting there is: the defaults print no
    // key it lacks.
    let defaults = printed(&["--print-config"], &[]);
    for key in defaults.keys() {
        assert!(want.contains_key(key), "the test's file lacks `{key}`");
    }
    // The printed settings are themselves a valid file.
    let again = file(
        dir.path(),
        "again.toml",
        &toml::to_string(&got).expect("toml"),
    );
    assert_eq!(printed(&["--config", &again, "--print-config"], &[]), want);
}

/// An installed relay (`scripts/install.sh`: `PREFIX/bin/tabnode-relay`,
/// the site in `PREFIX/share/tabnode`) finds its site beside its binary,
/// whatever the directory it is started from; a binary without a site
/// there serves the current directory (a checkout); `--site-root` wins.
#[test]
fn an_installed_relay_finds_its_site_beside_its_binary() {
    let prefix = tempfile::tempdir().expect("prefix");
    let bin = prefix.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let installed = bin.join("tabnode-relay");
    // A hard link where the file system allows it (the binary is large),
    // else a copy; not a symbolic link, which the binary resolves.
    if std::fs::hard_link(RELAY, &installed).is_err() {
        std::fs::copy(RELAY, &installed).expect("copy the relay");
    }
    let elsewhere = tempfile::tempdir().expect("a working directory");
    let site_root = || {
        let out = Command::new(&installed)
            .arg("--print-config")
            .current_dir(elsewhere.path())
            .env_remove("TABNODE_SITE_ROOT")
            .output()
            .expect("the installed relay runs");
        assert!(out.status.success(), "{out:?}");
        let printed: toml::Table = String::from_utf8_lossy(&out.stdout)
            .parse()
            .expect("--print-config writes TOML");
        printed["site-root"].as_str().expect("a path").to_owned()
    };
    // No site installed yet: the current directory.
    assert_eq!(site_root(), ".");
    let site = prefix.path().join("share").join("tabnode");
    std::fs::create_dir_all(site.join("www")).expect("www");
    std::fs::write(site.join("www").join("index.html"), "<!doctype html>").expect("index");
    assert_eq!(site_root(), site.display().to_string());
    let flagged = Command::new(&installed)
        .args(["--print-config", "--site-root", "/srv/site"])
        .env_remove("TABNODE_SITE_ROOT")
        .output()
        .expect("the installed relay runs");
    assert!(String::from_utf8_lossy(&flagged.stdout).contains("site-root = \"/srv/site\""));
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    let every = file(dir.path(), "every.toml", EVERY);
    let base = ["--config", every.as_str(), "--print-config"];
    // The environment over the file.
    let v = printed(
        &base,
        &[("TABNODE_RATE_LIMIT", "7"), ("TABNODE_LOG_FORMAT", "text")],
    );
    assert_eq!(v["rate-limit"].as_integer(), Some(7));
    assert_eq!(v["log-format"].as_str(), Some("text"));
    assert_eq!(
        v["pof-max-n"].as_integer(),
        Some(1024),
        "the rest from the file"
    );
    // A flag over both.
    let v = printed(
        &[&base[..], &["--rate-limit", "9", "--pof-max-n", "512"]].concat(),
        &[("TABNODE_RATE_LIMIT", "7")],
    );
    assert_eq!(v["rate-limit"].as_integer(), Some(9));
    assert_eq!(v["pof-max-n"].as_integer(), Some(512));
    // A repeatable flag adds to the file's list.
    let v = printed(
        &[&base[..], &["--trusted-proxy", "192.0.2.1"]].concat(),
        &[],
    );
    let proxies: Vec<_> = v["trusted-proxy"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "::1", "192.0.2.1"]);
    // The file named by the environment.
    let v = printed(&["--print-config"], &[("TABNODE_CONFIG", &every)]);
    assert_eq!(v["http"].as_str(), Some("127.0.0.1:9191"));
}

#[test]
fn bad_files_and_values_are_clear_errors() {
    let dir = tempfile::tempdir().expect("dir");
    for (name, text, says) in [
        (
            "unknown.toml",
            "rate-limitt = 5\n",
            "unknown setting `rate-limitt`",
        ),
        ("notoml.toml", "rate-limit = \n", "not TOML"),
        (
            "range.toml",
            "check-rate = 2.5\n",
            "is not a share from 0 to 1",
        ),
        (
            "type.toml",
            "tcp-port = \"many\"\n",
            "invalid value 'many' for '--tcp-port",
        ),
        (
            "list.toml",
            "http = [\"127.0.0.1:1\"]\n",
            "`http` takes one value, not a list",
        ),
        (
            "switch.toml",
            "check-same-address = \"yes\"\n",
            "`check-same-address` is a switch",
        ),
        (
            "table.toml",
            "[http]\nport = 1\n",
            "`http` must be a string, a number or a boolean",
        ),
        (
            "external.toml",
            "external-address = [\"0.0.0.0\"]\n",
            "cannot be reached from anywhere",
        ),
        (
            "seconds.toml",
            "shutdown-grace = -1\n",
            "not a number of seconds",
        ),
        (
            "config.toml",
            "config = \"other.toml\"\n",
            "unknown setting `config`",
        ),
    ] {
        let path = file(dir.path(), name, text);
        let err = refused(&["--config", &path, "--print-config"], &[]);
        assert!(err.contains(says), "{name}: {err}");
        assert!(
            err.contains(&path),
            "{name}: the error names the file: {err}"
        );
    }
    let missing = dir.path().join("missing.toml").display().to_string();
    let err = refused(&["--config", &missing], &[]);
    assert!(
        err.contains(&missing) && err.contains("No such file"),
        "{err}"
    );
    // Bad flags and environment values are clap's errors, which name them.
    let err = refused(&["--check-rate", "7"], &[]);
    assert!(
        err.contains("--check-rate") && err.contains("share"),
        "{err}"
    );
    let err = refused(
        &["--print-config"],
        &[("TABNODE_EXTERNAL_ADDRESSES", "relay.example.com")],
    );
    assert!(
        err.contains("neither an IP address nor a multiaddr"),
        "{err}"
    );
}

/// One HTTP/1.1 GET on a fresh connection: the status line, the headers
/// (lower-case names) and the body.
fn get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

#[test]
fn json_logs_carry_request_ids_health_answers_and_sigterm_stops_cleanly() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("relay").display().to_string();
    let mut child = Command::new(RELAY)
        .args([
            "--http",
            "127.0.0.1:0",
            "--tcp-port",
            "0",
            "--quic-port",
            "0",
            "--webrtc-port",
            "0",
        ])
        .args(["--data-dir", &data, "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the relay starts");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let kept = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("tabnode relay ready: open http://") {
                let _ = ready_tx.send(addr.trim_end_matches('/').to_owned());
            }
            kept.lock().expect("lines").push(line);
        }
    });
    let addr = ready_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the relay is ready");
    let (status, headers, body) = get(&addr, "/healthz", &[]);
    assert!(status.ends_with("200 OK"), "{status}");
    assert_eq!(body, "ok");
    let id = headers
        .iter()
        .find(|(k, _)| k == "x-request-id")
        .map(|(_, v)| v.clone());
    assert!(
        id.is_some_and(|id| !id.is_empty()),
        "a request id is made: {headers:?}"
    );
    let (status, _, body) = get(&addr, "/readyz", &[]);
    assert!(status.ends_with("200 OK"), "{status} {body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    // An API request with the client's id: answered with it, logged (at
    // info; the site's files and health checks at debug) under it.
    let (status, headers, _) = get(&addr, "/api/nodes", &[("X-Request-Id", "test-42")]);
    assert!(status.ends_with("200 OK"), "{status}");
    assert!(
        headers.contains(&("x-request-id".into(), "test-42".into())),
        "{headers:?}"
    );

    // SIGTERM: a clean exit, "stopped" logged.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    reader.join().expect("reader");
    let lines = lines.lock().expect("lines");
    // Every log line is a JSON object; the request's names its id.
    let logs: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    assert!(logs.len() >= 3, "{lines:?}");
    assert!(
        logs.iter().any(|l| l["message"] == "answered"
            && l["status"] == 200
            && l["span"]["id"] == "test-42"
            && l["span"]["path"] == "/api/nodes"),
        "{lines:?}"
    );
    assert!(logs.iter().any(|l| l["message"] == "stopped"), "{lines:?}");
}
