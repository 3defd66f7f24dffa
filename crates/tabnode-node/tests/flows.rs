//! Flows on the network (issue #15): `POST /v1/flows/run` with native
//! nodes serving the real model. Every node's status streamed and recorded;
//! a `map` over four chunks runs its llm steps on both nodes at once, each
//! answer the model's own; a failed node skips only its descendants; the
//! limits, cancellation and bad input; Python jobs handed to the requester
//! and their answers.

use serde_json::{json, Value};
use tabnode_core::infer::GenerateRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/http.rs"]
mod http_client;
use http_client::{http, json_call, EventStream};
#[path = "common/serving.rs"]
mod serving;
use serving::*;

/// What the model answers to `prompt` as a chat, greedy.
fn local(prompt: &str, max_tokens: u32) -> String {
    let mut r = GenerateRequest::new(tabnode_core::infer::Prompt::Chat(vec![
        tabnode_core::infer::ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        },
    ]));
    r.max_tokens = max_tokens;
    engine()
        .generate(&r, &|| false, &mut |_, _| {})
        .expect("local generation")
        .text
}

/// The `data:` events of a flow's stream, as JSON.
fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// The record of the run of `body` (`"stream": false`), which must start.
async fn finished_run(addr: std::net::SocketAddr, body: &Value) -> Value {
    let (s, record) = json_call(addr, "POST", "/v1/flows/run", Some(body)).await;
    assert_eq!(s, 200, "{record}");
    record
}

async fn run(addr: std::net::SocketAddr, body: &Value) -> (u16, String) {
    let r = http(
        addr,
        "POST",
        "/v1/flows/run",
        Some(&body.to_string()),
        &[("content-type", "application/json")],
    )
    .await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flow_runs_on_the_network_in_parallel_and_is_recorded() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let tcp = relay.tcp_addr().expect("tcp");
    // Two slots each: the `q` branch takes one while the map's four items
    // arrive, so each node holds at least one of them whatever finishes
    // first.
    let nodes = [serving_node(tcp.clone(), 2), serving_node(tcp, 2)];
    wait_for_model(addr, 2).await;
    let peers: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();

    // Four short paragraphs, split into four chunks, each asked of the
    // model at once; a second branch asks one question; both merged.
    let facts = [
        "Paris is the capital of France.",
        "The Nile is a long river in Africa.",
        "Bees make honey from flower nectar.",
        "Mount Everest is the highest mountain.",
    ];
    let text = facts
        .map(|f| format!("{f}{}", " ".repeat(120 - f.len())))
        .join("");
    let flow = json!({
        "version": 1,
        "nodes": {
            "in": {"type": "input", "params": {"names": ["text", "question"]}},
            "parts": {"type": "split", "params": {"chunk_chars": 120}, "inputs": {"text": ["in", "text"]}},
            "ask": {"type": "map",
                    "params": {"step": {"type": "template", "params": {"text": "Repeat this sentence: {{item}}"}}},
                    "inputs": {"items": ["parts", "chunks"]}},
            "each": {"type": "map",
                     "params": {"step": {"type": "llm", "params": {"model": model(), "max_tokens": 12}}, "max_parallel": 4},
                     "inputs": {"items": ["ask", "texts"]}},
            "q": {"type": "llm", "params": {"model": model(), "max_tokens": 10},
                  "inputs": {"prompt": ["in", "question"]}},
            "all": {"type": "merge", "params": {"separator": "\n"},
                    "inputs": {"a": ["each", "texts"], "b": ["q", "text"]}},
            "unused": {"type": "llm", "params": {"model": model()}, "inputs": {"prompt": ["in", "question"]}},
            "out": {"type": "output", "inputs": {"answers": ["each", "texts"], "summary": ["all", "text"]}}
        },
        "ui": {"q": {"x": 10, "y": 20}}
    });
    let question = "What is the capital of Italy?";
    let (status, body) = run(
        addr,
        &json!({"flow": flow, "inputs": {"text": text, "question": question}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    let done = ev.last().expect("events");
    assert_eq!(done["type"], "done", "{body}");
    assert_eq!(done["status"], "done", "{body}");
    // Each map item is the model's own answer to its chunk's prompt.
    let want: Vec<String> = facts
        .iter()
        .map(|f| local(&format!("Repeat this sentence: {f}"), 12))
        .collect();
    assert_eq!(done["outputs"]["answers"], json!(want));
    let q = local(question, 10);
    assert_eq!(
        done["outputs"]["summary"],
        json!(format!("{}\n{q}", want.join("\n")))
    );
    // Per-node events: each needed node ran and finished; the unused one
    // never ran; the llm node's tokens were streamed and add up to its text.
    for id in ["in", "parts", "ask", "each", "q", "all", "out"] {
        assert!(
            ev.iter().any(|e| e["type"] == "node"
                && e["id"] == id
                && e["status"] == "done"
                && e["ms"].is_u64()),
            "{id} done: {body}"
        );
    }
    assert!(!ev.iter().any(|e| e["id"] == "unused"), "{body}");
    let streamed: String = ev
        .iter()
        .filter(|e| e["type"] == "token" && e["id"] == "q")
        .map(|e| e["text"].as_str().expect("text"))
        .collect();
    assert_eq!(streamed, q);
    assert!(ev.iter().any(|e| e["type"] == "node"
        && e["id"] == "q"
        && peers.contains(&e["peer"].as_str().unwrap_or_default().to_owned())));

    // The record, read back after the fact.
    let run_id = done["run"].as_str().expect("run id");
    let (s, record) = json_call(addr, "GET", &format!("/v1/flows/runs/{run_id}"), None).await;
    assert_eq!(s, 200, "{record}");
    assert_eq!(record["status"], "done");
    assert_eq!(record["inputs"]["question"], question);
    assert_eq!(record["flow"]["ui"], json!({"q": {"x": 10, "y": 20}}));
    assert_eq!(record["nodes"]["unused"]["status"], "skipped");
    assert_eq!(record["outputs"], done["outputs"]);
    let each = &record["nodes"]["each"];
    assert_eq!(each["status"], "done");
    let items = each["items"].as_array().expect("items");
    assert_eq!(items.len(), 4, "{each}");
    // Both nodes served the map, and items ran at the same time.
    let mut served: Vec<&str> = each["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    served.sort_unstable();
    let mut all: Vec<&str> = peers.iter().map(String::as_str).collect();
    all.sort_unstable();
    assert_eq!(served, all, "{each}");
    let spans: Vec<(u64, u64)> = items
        .iter()
        .map(|i| {
            let s = i["started_ms"].as_u64().expect("start");
            (s, s + i["ms"].as_u64().expect("ms"))
        })
        .collect();
    let overlapping = spans
        .iter()
        .enumerate()
        .any(|(i, a)| spans.iter().skip(i + 1).any(|b| a.0 < b.1 && b.0 < a.1));
    assert!(overlapping, "the items ran one after another: {spans:?}");
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_node_skips_its_descendants_while_the_others_finish() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let _node = serving_node(relay.tcp_addr().expect("tcp"), 1);
    wait_for_model(addr, 1).await;
    let flow = json!({
        "version": 1,
        "nodes": {
            "in": {"type": "input"},
            "bad": {"type": "llm", "params": {"model": "no-such-model"}, "inputs": {"prompt": ["in", "q"]}},
            "after": {"type": "template", "params": {"text": "got {{x}}"}, "inputs": {"x": ["bad", "text"]}},
            "good": {"type": "template", "params": {"text": "fine: {{q}}"}, "inputs": {"q": ["in", "q"]}},
            "out": {"type": "output", "inputs": {"a": ["after", "text"]}},
            "out2": {"type": "output", "inputs": {"b": ["good", "text"]}}
        }
    });
    let record = finished_run(
        addr,
        &json!({"flow": flow, "inputs": {"q": "hi"}, "stream": false}),
    )
    .await;
    assert_eq!(record["status"], "failed", "{record}");
    let n = &record["nodes"];
    assert_eq!(n["bad"]["status"], "failed");
    assert!(
        n["bad"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-model")),
        "{n}"
    );
    assert_eq!(
        [&n["after"]["status"], &n["out"]["status"]],
        ["skipped", "skipped"]
    );
    assert_eq!(
        [&n["good"]["status"], &n["out2"]["status"]],
        ["done", "done"]
    );
    assert_eq!(record["outputs"], json!({"b": "fine: hi"}));

    // A query planned into the `answer` template, which then runs as a
    // template by name: the model's own answer.
    let question = "What is the capital of France?";
    let (s, p) = json_call(
        addr,
        "POST",
        "/v1/flows/plan",
        Some(&json!({"query": question})),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["template"], "answer");
    assert_eq!(p["inputs"], json!({"question": question}));
    let record = finished_run(
        addr,
        &json!({"template": "answer", "inputs": p["inputs"], "model": model(), "stream": false}),
    )
    .await;
    assert_eq!(record["status"], "done", "{record}");
    assert_eq!(record["outputs"]["answer"], json!(local(question, 256)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_and_cancellation_stop_a_run() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let _node = serving_node(relay.tcp_addr().expect("tcp"), 2);
    wait_for_model(addr, 1).await;
    // A long completion (counting goes on) under a node limit of a second.
    let long = |ms: Option<u64>| {
        let mut b = json!({
            "flow": {"version": 1, "nodes": {
                "in": {"type": "input"},
                "count": {"type": "llm", "params": {"model": model(), "mode": "completion", "max_tokens": 4096},
                          "inputs": {"prompt": ["in", "p"]}},
                "out": {"type": "output", "inputs": {"x": ["count", "text"]}}
            }},
            "inputs": {"p": "1, 2, 3, 4, 5, 6, 7, 8,"},
            "stream": false
        });
        if let Some(ms) = ms {
            b["node_timeout_ms"] = json!(ms);
        }
        b
    };
    let record = finished_run(addr, &long(Some(1000))).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(
        record["nodes"]["count"]["error"],
        "the node's time limit (1000 ms) passed"
    );
    assert_eq!(record["nodes"]["out"]["status"], "skipped");

    // Cancelled while its llm node runs: the stream's first event names
    // the run; DELETE it once the node has a peer; the stream ends with
    // `cancelled` and so does the record.
    let mut body = long(None);
    body["stream"] = json!(true);
    let mut stream = EventStream::post(addr, "/v1/flows/run", &body).await;
    stream.until(|e| e.get("peer").is_some()).await;
    let run_id = stream.run_id.clone().expect("the run event came first");
    let (s, v) = json_call(addr, "DELETE", &format!("/v1/flows/runs/{run_id}"), None).await;
    assert_eq!(s, 200, "{v}");
    let done = stream
        .until(|e| e["type"] == "done")
        .await
        .pop()
        .expect("done");
    assert_eq!(done["status"], "cancelled", "{done}");
    let (s, record) = json_call(addr, "GET", &format!("/v1/flows/runs/{run_id}"), None).await;
    assert_eq!(s, 200, "{record}");
    assert_eq!(record["status"], "cancelled");
    assert_eq!(record["nodes"]["count"]["status"], "failed");
    assert_eq!(record["nodes"]["count"]["error"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_flows_and_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let ok_flow = json!({"version": 1, "nodes": {
        "in": {"type": "input"},
        "t": {"type": "template", "params": {"text": "{{q}}"}, "inputs": {"q": ["in", "q"]}},
        "out": {"type": "output", "inputs": {"x": ["t", "text"]}}
    }});
    let cases = [
        (json!([1]), 400, "invalid_json", "not a JSON object"),
        (
            json!({"inputs": {}}),
            400,
            "invalid_flow",
            "give the flow to run",
        ),
        (
            json!({"flow": {"version": 1, "nodes": {"a": {"type": "merge", "inputs": {"x": ["a", "text"]}}, "o": {"type": "output", "inputs": {"x": ["a", "text"]}}}}}),
            400,
            "invalid_flow",
            "the flow has a cycle: a → a",
        ),
        (
            json!({"flow": {"version": 1, "nodes": {"o": {"type": "output", "inputs": {"x": ["nope", "text"]}}}}}),
            400,
            "invalid_flow",
            "names node \"nope\", which is not in the flow",
        ),
        (
            json!({"flow": ok_flow, "inputs": {}}),
            400,
            "invalid_inputs",
            "inputs.q: the flow reads it and it is not given",
        ),
        (
            json!({"flow": ok_flow, "inputs": {"q": 5}}),
            400,
            "invalid_inputs",
            "inputs.q: a string",
        ),
        (
            json!({"flow": ok_flow, "inputs": {"q": "x"}, "timeout_ms": 10}),
            400,
            "invalid_limit",
            "timeout_ms: 10 is not an integer from 1000 to 600000",
        ),
        (
            json!({"flow": ok_flow, "inputs": {"q": "x"}, "python": "requester", "stream": false}),
            400,
            "invalid_request",
            "it needs \"stream\": true",
        ),
        (
            json!({"flow": ok_flow, "inputs": {"q": "x"}, "python": "anyone"}),
            400,
            "invalid_request",
            "python: \"requester\" (the requester runs the python steps), not \"anyone\"",
        ),
    ];
    let cases = cases.into_iter().chain([
        (
            json!({"template": "nope"}),
            400,
            "unknown_template",
            "template \"nope\": one of answer, rag, summarize-url, compare-urls, python-calc",
        ),
        (
            json!({"template": "answer", "flow": ok_flow}),
            400,
            "invalid_flow",
            "not both",
        ),
        (
            json!({"template": "answer", "model": 3, "inputs": {"question": "q"}}),
            400,
            "invalid_request",
            "model: a name, not 3",
        ),
    ]);
    for (body, status, code, says) in cases {
        let (s, v) = json_call(addr, "POST", "/v1/flows/run", Some(&body)).await;
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(says), "{m}\nwanted: {says}");
    }
    // A run of templates only needs no node; its record is kept.
    let record = finished_run(
        addr,
        &json!({"flow": ok_flow, "inputs": {"q": "<b>kept as text</b>"}, "stream": false}),
    )
    .await;
    assert_eq!(record["outputs"], json!({"x": "<b>kept as text</b>"}));
    let id = record["id"].as_str().expect("id");
    let (s, list) = json_call(addr, "GET", "/v1/flows/runs?limit=5", None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["runs"][0]["id"], id, "the newest first: {list}");
    assert_eq!(list["runs"][0]["status"], "done");
    let (s, v) = json_call(addr, "GET", "/v1/flows/runs?limit=0", None).await;
    assert_eq!((s, &v["error"]["code"]), (400, &json!("invalid_limit")));
    let (s, v) = json_call(addr, "DELETE", &format!("/v1/flows/runs/{id}"), None).await;
    assert_eq!((s, &v["error"]["code"]), (409, &json!("run_finished")));
    let (s, v) = json_call(addr, "GET", "/v1/flows/runs/run-0000000000000000", None).await;
    assert_eq!((s, &v["error"]["code"]), (404, &json!("run_not_found")));
    let (s, _) = json_call(addr, "DELETE", "/v1/flows/runs/run-0000000000000000", None).await;
    assert_eq!(s, 404);
    // Planning: the shipped templates, chosen by rules.
    let (s, t) = json_call(addr, "GET", "/v1/flows/templates", None).await;
    assert_eq!(s, 200);
    assert_eq!(t["templates"].as_array().map(Vec::len), Some(5), "{t}");
    for (query, extra, template) in [
        ("What is 2**100?", json!({}), "python-calc"),
        (
            "Summarize http://127.0.0.1:9/page.html",
            json!({}),
            "summarize-url",
        ),
        (
            "What does the manual say about fuses?",
            json!({"collection": "manuals"}),
            "rag",
        ),
    ] {
        let mut body = json!({"query": query});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (s, p) = json_call(addr, "POST", "/v1/flows/plan", Some(&body)).await;
        assert_eq!((s, p["template"].as_str()), (200, Some(template)), "{p}");
    }
    let (_, p) = json_call(
        addr,
        "POST",
        "/v1/flows/plan",
        Some(&json!({"query": "Q?", "collection": "manuals"})),
    )
    .await;
    assert_eq!(
        p["flow"]["nodes"]["hits"]["params"]["collection"],
        "manuals"
    );
    let (s, v) = json_call(addr, "POST", "/v1/flows/plan", Some(&json!({"query": " "}))).await;
    assert_eq!((s, &v["error"]["code"]), (400, &json!("invalid_request")));
}

/// A loopback HTTP server answering `/page.html` with `html` (every other
/// path 404).
async fn page_server(html: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let found = String::from_utf8_lossy(&req).starts_with("GET /page.html ");
                let (status, body) = if found {
                    ("200 OK", html.as_str())
                } else {
                    ("404 Not Found", "")
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn summarize_url_scrapes_a_page_and_summarizes_it_on_the_network() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = tabnode_relay::RelayConfig::ephemeral(dir.path().join("relay"), ".".into());
    cfg.infer = test_config();
    // The test's page is on loopback: the explicit test allowance.
    cfg.scrape.allow_loopback = true;
    let relay = tabnode_relay::start(cfg).await.expect("relay");
    let addr = relay.http_addr;
    let _node = serving_node(relay.tcp_addr().expect("tcp"), 1);
    wait_for_model(addr, 1).await;
    let para =
        "The honey bee collects nectar from flowers and turns it into honey inside the hive. ";
    let html = format!(
        "<html><head><title>Honey bees</title></head><body><article><h1>Honey bees</h1><p>{}</p><p>{}</p></article></body></html>",
        para.repeat(4),
        "Bees also pollinate crops, which helps farmers grow fruit. ".repeat(4)
    );
    let site = page_server(html).await;
    let url = format!("http://{site}/page.html");
    let (s, p) = json_call(
        addr,
        "POST",
        "/v1/flows/plan",
        Some(&json!({"query": format!("Summarize {url}")})),
    )
    .await;
    assert_eq!((s, &p["template"]), (200, &json!("summarize-url")), "{p}");
    let record = finished_run(addr, &json!({"template": "summarize-url", "inputs": p["inputs"], "model": model(), "stream": false})).await;
    assert_eq!(record["status"], "done", "{record}");
    let out = &record["outputs"];
    assert_eq!(out["title"], "Honey bees");
    let text = out["text"].as_str().expect("scraped text");
    assert!(
        text.contains("turns it into honey") && text.contains("pollinate crops"),
        "{text}"
    );
    // The summary is the model's own, step by step: the one chunk's notes,
    // then the notes summarized.
    let notes = local(&format!("Summarize in two sentences:\n{}", text.trim()), 96);
    let summary = local(
        &format!("Summarize these notes in one paragraph:\n{notes}"),
        192,
    );
    assert_eq!(out["summary"], json!(summary));

    // The guard holds inside a flow: a page on the metadata address fails
    // its node, with the reason.
    let record = finished_run(addr, &json!({"template": "summarize-url", "inputs": {"url": "http://169.254.169.254/latest/meta-data/"}, "stream": false})).await;
    assert_eq!(record["status"], "failed");
    assert!(
        record["nodes"]["page"]["error"].as_str().is_some_and(|e| e.contains("169.254.169.254 is 169.254.169.254, not a public address")),
        "{record}"
    );
    assert_eq!(record["nodes"]["summary"]["status"], "skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_steps_are_handed_to_the_requester_and_its_answers_used() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    // One python node, and a map of a python step over three chunks: the
    // requester (this test) is the runner.
    let flow = json!({"version": 1, "nodes": {
        "in": {"type": "input", "params": {"names": ["n", "text"]}},
        "py": {"type": "python", "params": {"code": "print(2 ** int(n))", "timeout_ms": 2000},
               "inputs": {"n": ["in", "n"]}},
        "parts": {"type": "split", "params": {"chunk_chars": 100}, "inputs": {"text": ["in", "text"]}},
        "each": {"type": "map", "params": {"step": {"type": "python", "params": {"code": "print(item.upper())"}}, "port": "item"},
                 "inputs": {"items": ["parts", "chunks"]}},
        "out": {"type": "output", "inputs": {"power": ["py", "text"], "loud": ["each", "texts"]}}
    }});
    let text = ["alpha ".repeat(16), "beta ".repeat(19), "gamma ".repeat(16)].concat();
    let mut stream = EventStream::post(
        addr,
        "/v1/flows/run",
        &json!({"flow": flow, "inputs": {"n": "100", "text": text}, "python": "requester"}),
    )
    .await;
    let first = stream.next().await.expect("the run event");
    assert_eq!(stream.status, 200);
    let run_id = first["id"].as_str().expect("run id").to_owned();
    let answer_path = format!("/v1/flows/runs/{run_id}/python");
    let mut jobs = Vec::new();
    while jobs.len() < 4 {
        let e = stream
            .until(|e| e["type"] == "python")
            .await
            .pop()
            .expect("an event");
        jobs.push(e);
    }
    let mut answered = None;
    for job in &jobs {
        let id = job["job"].as_str().expect("job id");
        assert_eq!(id.len(), 32, "128 random bits: {job}");
        let answer = match job["id"].as_str() {
            Some("py") => {
                assert_eq!(job["code"], "print(2 ** int(n))");
                assert_eq!(job["inputs"], json!({"n": "100"}));
                assert_eq!(job["timeout_ms"], 2000);
                (1u128 << 100).to_string()
            }
            Some("each") => {
                assert_eq!(job["timeout_ms"], 10000, "the format's default");
                let item = job["inputs"]["item"].as_str().expect("an item");
                assert!(job["item"].as_u64().is_some_and(|i| i < 3), "{job}");
                item.to_uppercase()
            }
            other => panic!("a python job for {other:?}"),
        };
        let (s, v) = json_call(
            addr,
            "POST",
            &answer_path,
            Some(&json!({"job": id, "text": answer})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if answered.is_none() {
            // An answer is taken once (checked while the run still waits
            // for the other jobs).
            let (s, v) = json_call(
                addr,
                "POST",
                &answer_path,
                Some(&json!({"job": id, "text": "again"})),
            )
            .await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (404, Some("job_not_found")),
                "{v}"
            );
        }
        answered = Some(id.to_owned());
    }
    let job = answered.expect("a job");
    // A job id is only good for its own run; a bad body says what to give.
    for (path, body, status, code) in [
        (
            "/v1/flows/runs/run-0000000000000000/python".to_owned(),
            json!({"job": job, "text": "x"}),
            404,
            "run_not_found",
        ),
        (
            answer_path.clone(),
            json!({"job": job, "text": 7}),
            400,
            "invalid_request",
        ),
        (
            answer_path.clone(),
            json!({"job": job, "text": "a", "error": "b"}),
            400,
            "invalid_request",
        ),
        (
            answer_path.clone(),
            json!({"text": "a"}),
            400,
            "invalid_request",
        ),
    ] {
        let (s, v) = json_call(addr, "POST", &path, Some(&body)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }
    let done = stream
        .until(|e| e["type"] == "done")
        .await
        .pop()
        .expect("done");
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["outputs"]["power"], "1267650600228229401496703205376");
    assert_eq!(
        done["outputs"]["loud"],
        json!([
            "ALPHA ".repeat(16).trim(),
            "BETA ".repeat(19).trim(),
            "GAMMA ".repeat(16).trim()
        ])
    );

    // Without the requester as runner, the job goes to a tab that runs
    // Python for others; with none, the node fails saying how to run it.
    let record = finished_run(
        addr,
        &json!({"template": "python-calc", "inputs": {"expression": "2**100"}, "stream": false}),
    )
    .await;
    assert_eq!(record["status"], "failed");
    let why = record["nodes"]["calc"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.starts_with("no tab runs Python for others now (none opted in); run it in your own tab with \"python\": \"requester\""),
        "{why}"
    );
    assert_eq!(record["nodes"]["out"]["status"], "skipped");

    // The runner's error fails the node and skips what depends on it; a
    // runner that never answers meets the node's limit.
    for (answer, says) in [
        (
            Some(json!({"error": "ZeroDivisionError: division by zero"})),
            "python: ZeroDivisionError: division by zero",
        ),
        (None, "the node's time limit (1000 ms) passed"),
    ] {
        let mut stream = EventStream::post(
            addr,
            "/v1/flows/run",
            &json!({"flow": {"version": 1, "nodes": {
                "py": {"type": "python", "params": {"code": "print(1 / 0)"}},
                "out": {"type": "output", "inputs": {"x": ["py", "text"]}}
            }}, "python": "requester", "node_timeout_ms": 1000}),
        )
        .await;
        let job = stream
            .until(|e| e["type"] == "python")
            .await
            .pop()
            .expect("a job");
        let run_id = stream.run_id.clone().expect("the run event came first");
        if let Some(mut a) = answer {
            a["job"] = job["job"].clone();
            let (s, v) = json_call(
                addr,
                "POST",
                &format!("/v1/flows/runs/{run_id}/python"),
                Some(&a),
            )
            .await;
            assert_eq!(s, 200, "{v}");
        }
        let events = stream.until(|e| e["type"] == "done").await;
        let failed = events
            .iter()
            .find(|e| e["id"] == "py" && e["status"] == "failed")
            .unwrap_or_else(|| panic!("py fails: {events:?}"));
        assert_eq!(failed["error"], says);
        assert!(events
            .iter()
            .any(|e| e["id"] == "out" && e["status"] == "skipped"));
        assert_eq!(
            events.last().map(|e| e["status"].clone()),
            Some(json!("failed"))
        );
        // The job is forgotten with its node.
        let (s, _) = json_call(
            addr,
            "POST",
            &format!("/v1/flows/runs/{run_id}/python"),
            Some(&json!({"job": job["job"], "text": "late"})),
        )
        .await;
        assert_eq!(s, 404);
    }
}

/// A node that says it runs Python for others, as an opted-in tab does:
/// `honest` answers as a sandbox would (here: the code and its inputs, so
/// the test sees what arrived), otherwise its runner is broken (Busy).
struct PythonTab {
    honest: bool,
    prover: std::sync::Arc<dyn tabnode_node::prover::RequestHandler>,
}

impl tabnode_node::prover::RequestHandler for PythonTab {
    fn handle(&self, peer: &str, request: tabnode_core::Request) -> tabnode_core::Response {
        use tabnode_core::{ErrorCode, PythonOutcome, Request, Response};
        match request {
            Request::Python(job) if self.honest => {
                Response::Python(PythonOutcome::Printed(format!(
                    "{} <- {} within {} ms",
                    job.code, job.inputs_json, job.timeout_ms
                )))
            }
            Request::Python(_) => Response::Error {
                code: ErrorCode::Busy,
                message: "the page's Python runner failed".into(),
            },
            other => self.prover.handle(peer, other),
        }
    }
}

fn python_tab(relay: libp2p::Multiaddr, honest: bool) -> tabnode_node::NodeHandle {
    let mut capabilities =
        tabnode_core::Capabilities::new(tabnode_core::NodeKind::Browser, "python-tab-test");
    capabilities.python = true;
    tabnode_node::spawn(tabnode_node::NodeConfig {
        relay,
        key: None,
        capabilities,
        max_backoff: std::time::Duration::from_millis(500),
        handler: std::sync::Arc::new(PythonTab {
            honest,
            prover: honest_prover(),
        }),
        server: None,
        embedder: None,
    })
    .expect("node starts")
}

/// Waits until `n` nodes have registered `python: true`.
async fn wait_for_python_tabs(addr: std::net::SocketAddr, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let net = http(addr, "GET", "/api/network", None, &[]).await.json();
        let tabs = net["nodes"].as_array().map_or(0, |nodes| {
            nodes
                .iter()
                .filter(|n| n["capabilities"]["python"] == true)
                .count()
        });
        if tabs >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{net}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_steps_go_to_tabs_that_opted_in_and_move_past_a_broken_one() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let tcp = relay.tcp_addr().expect("tcp");
    let calc =
        json!({"template": "python-calc", "inputs": {"expression": "2**100"}, "stream": false});
    // Only a broken runner: the step fails, saying why.
    let broken = python_tab(tcp.clone(), false);
    wait_for_python_tabs(addr, 1).await;
    let record = finished_run(addr, &calc).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(
        record["nodes"]["calc"]["error"],
        "no tab ran the python step (Error { code: Busy, message: \"the page's Python runner failed\" })"
    );
    assert_eq!(
        record["nodes"]["calc"]["peers"],
        json!([broken.peer_id.to_string()])
    );
    // With an honest one too, every run gets there, through the broken
    // one or not; the job carries the code, its inputs and its limit.
    let honest = python_tab(tcp, true);
    wait_for_python_tabs(addr, 2).await;
    let (_, templates) = json_call(addr, "GET", "/v1/flows/templates", None).await;
    let code = templates["templates"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "python-calc"))
        .map(|t| t["flow"]["nodes"]["calc"]["params"]["code"].clone())
        .expect("the template's code");
    for _ in 0..3 {
        let record = finished_run(addr, &calc).await;
        assert_eq!(record["status"], "done", "{record}");
        assert_eq!(
            record["outputs"]["result"],
            format!(
                "{} <- {{\"expression\":\"2**100\"}} within 5000 ms",
                code.as_str().expect("code")
            )
        );
        let peers = record["nodes"]["calc"]["peers"].as_array().expect("peers");
        assert_eq!(
            peers.last(),
            Some(&json!(honest.peer_id.to_string())),
            "{record}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planners_ask_the_model_and_check_what_it_answers() {
    use tabnode_flows::plan::{choice_prompt, flow_prompt, plan, read_choice, read_flow};
    let dir = tempfile::tempdir().expect("dir");
    let relay = relay_with(&dir, test_config()).await;
    let addr = relay.http_addr;
    let _node = serving_node(relay.tcp_addr().expect("tcp"), 2);
    wait_for_model(addr, 1).await;
    let plan_of =
        |body: Value| async move { json_call(addr, "POST", "/v1/flows/plan", Some(&body)).await };
    // The model chooses the template: its answer is the model's own
    // (greedy), and the choice is what checking it gives (the rules' plan
    // where the model's is refused).
    let q = "Tell me three facts about honey bees.";
    let (s, p) = plan_of(json!({"query": q, "planner": "model"})).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["planner"], "model");
    let answer = local(&choice_prompt(q), 16);
    assert_eq!(p["answers"], json!([answer]));
    let want = read_choice(&answer, q).unwrap_or_else(|_| plan(q, None));
    assert_eq!(p["template"], want.template, "{p}");
    assert_eq!(p["inputs"], json!(want.inputs));
    // The model writes the flow: valid (and then it runs), or refused
    // after one repair with the validation error.
    let q = "What is the capital of France?";
    let (s, p) = plan_of(json!({"query": q, "planner": "free"})).await;
    let first = local(
        &flow_prompt(q, &model()),
        tabnode_relay::flows::FREE_PLAN_TOKENS,
    );
    assert_eq!(p["answers"][0], first, "{p}");
    match s {
        200 => {
            let n = p["answers"].as_array().map_or(0, Vec::len);
            let last = p["answers"][n - 1].as_str().expect("answer");
            read_flow(last).expect("a flow the relay accepted is valid");
            finished_run(
                addr,
                &json!({"flow": p["flow"], "inputs": p["inputs"], "stream": false}),
            )
            .await;
        }
        422 => {
            assert_eq!(p["error"]["code"], "plan_refused");
            assert_eq!(p["answers"].as_array().map(Vec::len), Some(2), "{p}");
            let e = read_flow(p["answers"][1].as_str().expect("answer")).expect_err("refused");
            assert_eq!(
                p["error"]["message"],
                format!("the model's flow is not valid after a repair: {e}")
            );
        }
        other => panic!("{other}: {p}"),
    }
    // Qwen2.5-Coder writes a valid flow for this query (greedy: measured,
    // and the same bits every run); the relay accepts it, its llm nodes on
    // the planning model, and it runs.
    let _qwen = serving_node_with(relay.tcp_addr().expect("tcp"), 1, honest_prover(), qwen());
    let coder = catalog_id(&qwen().info.name);
    wait_for(addr, &coder, 1).await;
    let (s, p) = plan_of(json!({"query": q, "planner": "free", "model": coder})).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (&p["planner"], &p["inputs"]),
        (&json!("free"), &json!({"query": q}))
    );
    let flow = tabnode_flows::Flow::parse(serde_json::from_value(p["flow"].clone()).expect("doc"))
        .expect("valid");
    for n in flow.nodes.values() {
        if let tabnode_flows::Step::Llm(l) = &n.step {
            assert_eq!(l.model, coder);
        }
    }
    let (s, record) = json_call(
        addr,
        "POST",
        "/v1/flows/run",
        Some(&json!({"flow": p["flow"], "inputs": p["inputs"], "stream": false})),
    )
    .await;
    assert_eq!((s, &record["status"]), (200, &json!("done")), "{record}");

    // Bad planners and models are clear errors.
    let (s, p) = plan_of(json!({"query": q, "planner": "magic"})).await;
    assert_eq!(
        (s, &p["error"]["code"]),
        (400, &json!("invalid_request")),
        "{p}"
    );
    let (s, p) = plan_of(json!({"query": q, "planner": "model", "model": "nope"})).await;
    assert_eq!(
        (s, &p["error"]["code"]),
        (404, &json!("model_not_found")),
        "{p}"
    );
}
