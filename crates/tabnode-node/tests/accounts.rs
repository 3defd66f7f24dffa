//! Accounts and API keys (issue #16): a node's identity is its account; it
//! makes, lists and revokes keys over its connection to the relay; a
//! request with a key is charged to the account in points, exactly its
//! tokens; an account without points is refused (402); a revoked or
//! unknown key stops working at once (401); consuming your own node's
//! tokens does not pay; requests without a key stop at the free allowance
//! (429) while keyed ones go on.

use serde_json::{json, Value};
use tabnode_core::{ApiKeyCommand, ApiKeyList, ErrorCode, Request, Response};

#[path = "common/http.rs"]
mod http_client;
use http_client::http;
#[path = "common/serving.rs"]
mod serving;
use serving::*;

async fn keys(node: &tabnode_node::NodeHandle, command: ApiKeyCommand) -> ApiKeyList {
    match node.request(None, Request::ApiKeys(command)).await {
        Ok(Response::ApiKeys(list)) => list,
        other => panic!("{other:?}"),
    }
}

/// A chat request with `key` (if any): status and body.
async fn chat(addr: std::net::SocketAddr, key: Option<&str>) -> (u16, Value) {
    let body = json!({
        "model": model(),
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 6,
        "temperature": 0,
    })
    .to_string();
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let r = http(addr, "POST", "/v1/chat/completions", Some(&body), &headers).await;
    (r.status, r.json())
}

/// What a request's usage costs at `price`.
fn charge(v: &Value, price: tabnode_relay::catalog::Price) -> u64 {
    let used = |k: &str| v["usage"][k].as_u64().expect("usage");
    price.of(used("prompt_tokens"), used("completion_tokens"))
}

async fn balance(addr: std::net::SocketAddr, peer: &str) -> Value {
    http(addr, "GET", &format!("/api/ledger/{peer}"), None, &[])
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_charge_their_account_and_stop_when_revoked() {
    let dir = tempfile::tempdir().expect("dir");
    // Three requests an hour without a key, from this (the only) address;
    // the model priced 2 points a prompt token and 3 a completion token.
    let mut cfg = tabnode_relay::RelayConfig::ephemeral(
        dir.path().join("relay"),
        std::path::PathBuf::from("."),
    );
    cfg.infer = tabnode_relay::InferConfig {
        anonymous_per_hour: 3,
        ..test_config()
    };
    let price = tabnode_relay::catalog::Price {
        prompt: 2,
        completion: 3,
    };
    for m in cfg.catalog.models.iter_mut().filter(|m| m.id == model()) {
        m.price = price;
    }
    let relay = tabnode_relay::start(cfg).await.expect("relay");
    let addr = relay.http_addr;
    let tcp = relay.tcp_addr().expect("tcp");
    let server = serving_node(tcp.clone(), 2);
    let client = node_serving_nothing(tcp);
    wait_for_model(addr, 1).await;
    client.wait_reachable(WAIT).await.expect("the client joins");
    // The server earns points with anonymous requests (an OpenAI client's
    // placeholder key is no tabnode key: anonymous).
    for key in [None, Some("unused")] {
        let (s, v) = chat(addr, key).await;
        assert_eq!(s, 200, "{v}");
    }
    // The third anonymous request is the last one this hour; past it, a
    // 429 that says how to get a key.
    let (s, v) = chat(addr, None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = chat(addr, Some("unused")).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (429, &json!("anonymous_limit_exceeded")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("create an API key")),
        "{v}"
    );
    let server_id = server.peer_id.to_string();
    let earned = balance(addr, &server_id).await;
    assert!(earned["points"].as_u64().unwrap_or(0) > 0, "{earned}");

    // A client account (its points: a proof) spends them; once at zero
    // it is refused.
    let made = keys(
        &client,
        ApiKeyCommand::Create {
            label: "laptop".into(),
        },
    )
    .await;
    let poor = made.created.expect("the secret, once");
    let client_id = client.peer_id.to_string();
    assert!(balance(addr, &client_id).await["points"].as_u64() > Some(0));
    let (mut refused, mut charged) = (None, 0);
    for _ in 0..6 {
        let (s, v) = chat(addr, Some(&poor)).await;
        if s == 402 {
            refused = Some(v);
            break;
        }
        assert_eq!(s, 200, "{v}");
        charged += charge(&v, price);
    }
    let v = refused.expect("refused once its points ran out");
    let spent = balance(addr, &client_id).await;
    assert_eq!(spent["points"], 0, "the balance stops at zero: {spent}");
    assert_eq!(spent["spent_points"], charged, "{spent}");
    assert_eq!(v["error"]["code"], "insufficient_points", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("earn")),
        "{v}"
    );
    let again = balance(addr, &client_id).await;
    assert_eq!(
        again["spent_requests"], spent["spent_requests"],
        "a refused request costs nothing"
    );
    // A flow run with the key is the account's too: its model step is
    // refused at zero points, and nothing is charged.
    let flow = json!({
        "flow": {"version": 1, "nodes": {
            "in": {"type": "input", "params": {"names": ["q"]}},
            "ask": {"type": "llm", "params": {"model": model(), "max_tokens": 4},
                    "inputs": {"prompt": ["in", "q"]}},
            "out": {"type": "output", "inputs": {"a": ["ask", "text"]}}
        }},
        "inputs": {"q": "Say hi."},
        "stream": false,
    })
    .to_string();
    let auth = format!("Bearer {poor}");
    let r = http(
        addr,
        "POST",
        "/v1/flows/run",
        Some(&flow),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let run = r.json();
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["nodes"]["ask"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no points left")),
        "{run}"
    );
    assert_eq!(
        balance(addr, &client_id).await["spent_requests"],
        spent["spent_requests"]
    );

    // The server's own key: the request is charged exactly its tokens, and
    // consuming its own tokens earns it nothing.
    let made = keys(
        &server,
        ApiKeyCommand::Create {
            label: "scripts".into(),
        },
    )
    .await;
    let key = made.created.expect("secret");
    assert_eq!(made.keys.len(), 1);
    let before = balance(addr, &server_id).await;
    let (s, v) = chat(addr, Some(&key)).await;
    assert_eq!(s, 200, "{v}");
    let tokens = v["usage"]["prompt_tokens"].as_u64().expect("prompt")
        + v["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion");
    let after = balance(addr, &server_id).await;
    assert_eq!(after["spent_requests"], 1, "{after}");
    assert_eq!(after["spent_tokens"], tokens, "{after}");
    assert_eq!(
        after["spent_points"],
        charge(&v, price),
        "the model's prices: {after}"
    );
    assert!(
        after["points"].as_u64() <= before["points"].as_u64(),
        "self-dealing paid: {before} → {after}"
    );

    // Revoked: refused at once; an unknown tabnode key too.
    let id = made.keys[0].id.clone();
    let listed = keys(&server, ApiKeyCommand::Revoke { id: id.clone() }).await;
    assert!(listed.keys[0].revoked && listed.created.is_none());
    for k in [key.as_str(), "tn-0123456789abcdef"] {
        let (s, v) = chat(addr, Some(k)).await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (401, &json!("invalid_api_key")),
            "{v}"
        );
    }
    // Another account cannot revoke it, nor see it.
    match client
        .request(None, Request::ApiKeys(ApiKeyCommand::Revoke { id }))
        .await
    {
        Ok(Response::Error { code, .. }) => assert_eq!(code, ErrorCode::Invalid),
        other => panic!("{other:?}"),
    }
    let theirs = keys(&client, ApiKeyCommand::List).await;
    assert_eq!(theirs.keys.len(), 1, "only the client's own key");
    assert_eq!(theirs.keys[0].label, "laptop");
}

/// An anonymous request naming no served model, from `forwarded` (an
/// `X-Forwarded-For` or `Forwarded` header) if given: 404 while the
/// allowance lasts (it is counted before the model is looked up), then 429.
async fn anonymous(addr: std::net::SocketAddr, forwarded: Option<(&str, &str)>) -> (u16, Value) {
    let body = json!({"model": "no-such-model", "prompt": "hi", "max_tokens": 1}).to_string();
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(forwarded);
    let r = http(addr, "POST", "/v1/completions", Some(&body), &headers).await;
    (r.status, r.json())
}

#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let start = |trusted: &[&str]| {
        let dir = tempfile::tempdir().expect("dir");
        let mut cfg = tabnode_relay::RelayConfig::ephemeral(
            dir.path().join("relay"),
            std::path::PathBuf::from("."),
        );
        cfg.infer = tabnode_relay::InferConfig {
            anonymous_per_hour: 1,
            ..test_config()
        };
        cfg.trusted_proxies =
            tabnode_relay::proxies::TrustedProxies::parse(trusted).expect("proxies");
        async move { (tabnode_relay::start(cfg).await.expect("relay"), dir) }
    };
    let code = |v: &Value| v["error"]["code"].clone();

    // No trusted proxy: a client naming another address in each request
    // still has one allowance (its connection's).
    let (relay, _dir) = start(&[]).await;
    let a = relay.http_addr;
    assert_eq!(
        anonymous(a, Some(("x-forwarded-for", "192.0.2.1"))).await.0,
        404
    );
    let (s, v) = anonymous(a, Some(("x-forwarded-for", "192.0.2.2"))).await;
    assert_eq!(
        (s, code(&v)),
        (429, json!("anonymous_limit_exceeded")),
        "{v}"
    );
    drop(relay);

    // Behind a trusted proxy (this test's loopback address): one allowance
    // per client the proxy names.
    let (relay, _dir) = start(&["127.0.0.0/8"]).await;
    let a = relay.http_addr;
    assert_eq!(
        anonymous(a, Some(("x-forwarded-for", "192.0.2.1"))).await.0,
        404
    );
    let (s, v) = anonymous(a, Some(("x-forwarded-for", "192.0.2.1"))).await;
    assert_eq!(s, 429, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("192.0.2.1")),
        "{v}"
    );
    assert_eq!(
        anonymous(a, Some(("x-forwarded-for", "192.0.2.2"))).await.0,
        404
    );
    assert_eq!(
        anonymous(a, Some(("forwarded", "for=\"[2001:db8::3]:4711\"")))
            .await
            .0,
        404
    );
    // A client cannot forge its way to a fresh allowance by prepending an
    // address: the proxy's own hop (the rightmost) names it.
    let (s, _) = anonymous(a, Some(("x-forwarded-for", "203.0.113.9, 192.0.2.1"))).await;
    assert_eq!(s, 429);
    // The proxy's own requests (no header) are the proxy's.
    assert_eq!(anonymous(a, None).await.0, 404);
    assert_eq!(anonymous(a, None).await.0, 429);
}

/// `tabnode-node … keys ARGS` as this identity: exit success, stdout,
/// stderr.
async fn keys_cli(
    relay: &libp2p::Multiaddr,
    key_file: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tabnode-node"))
        .arg("--relay")
        .arg(relay.to_string())
        .arg("--key-file")
        .arg(key_file)
        .arg("keys")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("tabnode-node runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_makes_lists_and_revokes_a_native_identitys_keys() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, test_config()).await;
    let tcp = relay.tcp_addr().expect("tcp");
    let identity = dir.path().join("node.key");
    let (ok, out, err) = keys_cli(&tcp, &identity, &["create", "--label", "ci"]).await;
    assert!(ok, "{err}");
    let made: Value = serde_json::from_str(&out).expect("JSON");
    let secret = made["created"]
        .as_str()
        .expect("the secret, once")
        .to_owned();
    assert!(secret.starts_with("tn-"), "{made}");
    assert_eq!(made["keys"][0]["label"], "ci");
    let id = made["keys"][0]["id"].as_str().expect("id").to_owned();

    // The key is the identity's: a request with it is the account's (it
    // gets past authentication; no node serves the model it names).
    let body = json!({"model": "no-such-model", "prompt": "hi"}).to_string();
    let auth = format!("Bearer {secret}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let ask = || {
        http(
            relay.http_addr,
            "POST",
            "/v1/completions",
            Some(&body),
            &headers,
        )
    };
    assert_eq!(ask().await.status, 404);

    // Listed again by the same identity (the key file kept it), without
    // the secret.
    let (ok, out, err) = keys_cli(&tcp, &identity, &["list"]).await;
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed["created"], Value::Null, "{listed}");
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(1), "{listed}");
    // Another identity sees none of them and cannot revoke it.
    let other = dir.path().join("other.key");
    let (ok, out, _) = keys_cli(&tcp, &other, &["list"]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("JSON")["keys"],
        json!([])
    );
    let (ok, _, err) = keys_cli(&tcp, &other, &["revoke", &id]).await;
    assert!(!ok && err.contains("refused"), "{err}");
    assert_eq!(ask().await.status, 404);

    let (ok, out, err) = keys_cli(&tcp, &identity, &["revoke", &id]).await;
    assert!(ok, "{err}");
    assert!(out.contains("\"revoked\": true"), "{out}");
    let r = ask().await;
    assert_eq!(r.status, 401, "{}", r.body);
}
