//! The flow format: every example of FORMAT.md validates; each kind of
//! mistake is refused with the error naming it; the run order, the nodes a
//! run needs, and a failure skipping only its descendants.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tabnode_flows::{fill, placeholders, Flow, FlowError, Schedule, Status, Step, MAX_NODES};

fn flow(v: Value) -> Result<Flow, FlowError> {
    Flow::from_json(v.to_string().as_bytes())
}

/// The ```json blocks of FORMAT.md.
fn examples() -> Vec<String> {
    let doc = include_str!("../FORMAT.md");
    doc.split("```json")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn every_documented_example_validates_and_round_trips() {
    let all = examples();
    assert_eq!(all.len(), 6);
    let mut types = std::collections::BTreeSet::new();
    for ex in &all {
        let f = Flow::from_json(ex.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{ex}"));
        types.extend(f.nodes.values().map(|n| n.step.kind()));
        // Written back, the document (its `ui` too) reads the same.
        let again = serde_json::to_string(&f.doc).expect("write");
        assert_eq!(Flow::from_json(again.as_bytes()).expect("again").doc, f.doc);
    }
    assert_eq!(
        types.len(),
        tabnode_flows::TYPES.len(),
        "an example per type: {types:?}"
    );
    let answer = Flow::from_json(all[0].as_bytes()).expect("answer");
    assert_eq!(
        answer.doc.ui,
        Some(json!({"in": {"x": 40, "y": 80}, "prompt": {"x": 240, "y": 80}}))
    );
    assert_eq!(answer.order(), ["in", "prompt", "answer", "out"]);
    assert_eq!(
        answer.input_names().into_iter().collect::<Vec<_>>(),
        ["question"]
    );
    let Step::Llm(llm) = &answer.nodes["answer"].step else {
        panic!("llm")
    };
    assert_eq!(
        (llm.max_tokens, llm.temperature, llm.system.as_deref()),
        (64, 0.0, Some("You are concise."))
    );
}

fn minimal() -> Value {
    json!({
        "version": 1,
        "nodes": {
            "in": {"type": "input"},
            "a": {"type": "llm", "params": {"model": "m"}, "inputs": {"prompt": ["in", "q"]}},
            "out": {"type": "output", "inputs": {"x": ["a", "text"]}}
        }
    })
}

/// `minimal()` with `path` (node, field) replaced by `v`.
fn with(node: &str, field: &str, v: Value) -> Value {
    let mut f = minimal();
    f["nodes"][node][field] = v;
    f
}

#[test]
fn each_mistake_is_a_precise_error() {
    assert!(flow(minimal()).is_ok());
    let cases: Vec<(Value, &str)> = vec![
        (json!({"version": 1}), "not a flow: missing field `nodes`"),
        (json!([1, 2]), "not a flow"),
        ({ let mut f = minimal(); f["version"] = json!(2); f }, "flow version 2 is not supported"),
        ({ let mut f = minimal(); f["extra"] = json!(1); f }, "unknown field `extra`"),
        (with("a", "type", json!("llama")), "node a: unknown type \"llama\" (one of input, output, llm"),
        (with("a", "params", json!({})), "node a: parameter model: required"),
        (with("a", "params", json!({"model": "  "})), "node a: parameter model: empty"),
        (with("a", "params", json!({"model": 5})), "node a: parameter model: a string, not 5"),
        (with("a", "params", json!({"model": "m", "max_tokens": 0})), "node a: parameter max_tokens: 0 is not an integer from 1 to 4096"),
        (with("a", "params", json!({"model": "m", "max_tokens": 5000})), "max_tokens: 5000 is not an integer from 1 to 4096"),
        (with("a", "params", json!({"model": "m", "max_tokens": 1.5})), "max_tokens: 1.5 is not an integer"),
        (with("a", "params", json!({"model": "m", "temperature": 3})), "temperature: 3 is not a number from 0 to 2"),
        (with("a", "params", json!({"model": "m", "mode": "shout"})), "mode: \"chat\" or \"completion\", not \"shout\""),
        (with("a", "params", json!({"model": "m", "mode": "completion", "system": "s"})), "system: a completion has no system message"),
        (with("a", "params", json!({"model": "m", "max_token": 5})), "node a: unknown parameter \"max_token\" (it takes model, mode, max_tokens, temperature, system)"),
        (with("a", "inputs", json!({})), "node a: input \"prompt\" is not connected"),
        (with("a", "inputs", json!({"prompt": ["in", "q"], "text": ["in", "q"]})), "node a: no input named \"text\" (it takes prompt)"),
        (with("a", "inputs", json!({"prompt": ["nope", "q"]})), "node a: input \"prompt\" names node \"nope\", which is not in the flow"),
        (with("out", "inputs", json!({"x": ["a", "txt"]})), "node out: input \"x\" names output \"txt\" of node a, which gives text"),
        (with("a", "inputs", json!({"prompt": ["out", "x"]})), "names output \"x\" of node out, which gives nothing"),
        (with("a", "inputs", json!({"prompt": "in"})), "not a flow"),
        (with("out", "inputs", json!({})), "node out: input \"(at least one)\" is not connected"),
    ];
    for (v, says) in cases {
        let e = flow(v.clone()).expect_err(&v.to_string());
        assert!(e.to_string().contains(says), "{e}\nwanted: {says}");
    }
    // Ids.
    for bad in ["", "a b", "é", &"x".repeat(65)] {
        let mut f = minimal();
        f["nodes"][bad] = json!({"type": "input"});
        assert_eq!(flow(f), Err(FlowError::BadId(bad.to_owned())));
    }
    // No output.
    let e = flow(json!({"version": 1, "nodes": {"in": {"type": "input"}}})).expect_err("no output");
    assert_eq!(e, FlowError::NoOutput);
    // Too many nodes.
    let mut nodes = serde_json::Map::new();
    for i in 0..=MAX_NODES {
        nodes.insert(format!("n{i}"), json!({"type": "input"}));
    }
    let e = flow(json!({"version": 1, "nodes": nodes})).expect_err("too many");
    assert_eq!(
        e,
        FlowError::TooManyNodes {
            count: MAX_NODES + 1,
            max: MAX_NODES
        }
    );
}

#[test]
fn connections_carry_one_kind() {
    // An llm's prompt takes text, not split's chunks.
    let v = json!({"version": 1, "nodes": {
        "in": {"type": "input"},
        "s": {"type": "split", "inputs": {"text": ["in", "t"]}},
        "a": {"type": "llm", "params": {"model": "m"}, "inputs": {"prompt": ["s", "chunks"]}},
        "out": {"type": "output", "inputs": {"x": ["a", "text"]}}
    }});
    let e = flow(v).expect_err("kind");
    assert_eq!(
        e.to_string(),
        "node a: input \"prompt\" takes text, but s.chunks gives a list"
    );
    // A map takes a list, not text; a template's placeholders take text.
    let v = json!({"version": 1, "nodes": {
        "in": {"type": "input"},
        "m": {"type": "map", "params": {"step": {"type": "llm", "params": {"model": "m"}}}, "inputs": {"items": ["in", "t"]}},
        "out": {"type": "output", "inputs": {"x": ["m", "text"]}}
    }});
    assert!(flow(v)
        .expect_err("map")
        .to_string()
        .contains("takes a list, but in.t gives text"));
    let v = json!({"version": 1, "nodes": {
        "in": {"type": "input"},
        "e": {"type": "embed", "inputs": {"text": ["in", "t"]}},
        "t": {"type": "template", "params": {"text": "{{v}}"}, "inputs": {"v": ["e", "vector"]}},
        "out": {"type": "output", "inputs": {"x": ["t", "text"]}}
    }});
    assert!(flow(v)
        .expect_err("template")
        .to_string()
        .contains("takes text, but e.vector gives a vector"));
    // Input names: only the listed ones.
    let v = json!({"version": 1, "nodes": {
        "in": {"type": "input", "params": {"names": ["question"]}},
        "out": {"type": "output", "inputs": {"x": ["in", "questoin"]}}
    }});
    assert!(flow(v)
        .expect_err("names")
        .to_string()
        .contains("names output \"questoin\" of node in, which gives question"));
}

#[test]
fn templates_maps_splits_and_python_check_their_params() {
    let one = |node: Value| {
        flow(json!({"version": 1, "nodes": {
            "in": {"type": "input"},
            "n": node,
            "out": {"type": "output", "inputs": {"x": ["n", "text"]}}
        }}))
    };
    let e = one(
        json!({"type": "template", "params": {"text": "Hi {{name}} and {{other}}"}, "inputs": {"name": ["in", "a"]}}),
    );
    assert_eq!(
        e.expect_err("missing").to_string(),
        "node n: input \"other\" is not connected"
    );
    let e = one(
        json!({"type": "template", "params": {"text": "Hi {{name}}"}, "inputs": {"name": ["in", "a"], "x": ["in", "b"]}}),
    );
    assert!(e
        .expect_err("extra")
        .to_string()
        .contains("no input named \"x\" (it takes its placeholders: name)"));
    let e = one(json!({"type": "template", "params": {"text": "Hi {{name"}}));
    assert!(e
        .expect_err("open")
        .to_string()
        .contains("parameter text: \"{{\" at byte 3 is not closed"));
    let e = one(json!({"type": "template", "params": {"text": "Hi {{na me}}"}}));
    assert!(e
        .expect_err("name")
        .to_string()
        .contains("{{na me}} is not a placeholder name"));
    let e = one(
        json!({"type": "python", "params": {"code": "print(1)"}, "inputs": {"not a name": ["in", "a"]}}),
    );
    assert!(e
        .expect_err("py")
        .to_string()
        .contains("(it takes Python variable names)"));
    let e = one(json!({"type": "python", "params": {"code": "print(1)", "timeout_ms": 120000}}));
    assert!(e
        .expect_err("timeout")
        .to_string()
        .contains("timeout_ms: 120000 is not an integer from 100 to 60000"));
    let e = one(json!({"type": "merge", "params": {"separator": 1}, "inputs": {"a": ["in", "a"]}}));
    assert!(e
        .expect_err("sep")
        .to_string()
        .contains("separator: a string, not 1"));
    let split = |params: Value| {
        flow(json!({"version": 1, "nodes": {
            "in": {"type": "input"},
            "s": {"type": "split", "params": params, "inputs": {"text": ["in", "t"]}},
            "out": {"type": "output", "inputs": {"x": ["s", "chunks"]}}
        }}))
    };
    assert!(split(json!({"chunk_chars": 500, "overlap": 100})).is_ok());
    assert!(split(json!({"chunk_chars": 500, "overlap": 500}))
        .expect_err("overlap")
        .to_string()
        .contains("overlap: 500 is not less than chunk_chars (500)"));
    assert!(split(json!({"chunk_chars": 50}))
        .expect_err("small")
        .to_string()
        .contains("chunk_chars: 50 is not an integer from 100 to 100000"));
    let map = |params: Value| {
        flow(json!({"version": 1, "nodes": {
            "in": {"type": "input"},
            "s": {"type": "split", "inputs": {"text": ["in", "t"]}},
            "m": {"type": "map", "params": params, "inputs": {"items": ["s", "chunks"]}},
            "out": {"type": "output", "inputs": {"x": ["m", "texts"]}}
        }}))
    };
    let m = map(json!({"step": {"type": "scrape"}})).expect("scrape map");
    assert!(matches!(&m.nodes["m"].step, Step::Map { port, max_parallel: 8, .. } if port == "url"));
    for (params, says) in [
        (json!({}), "parameter step: required"),
        (json!({"step": 3}), "step: an object, not 3"),
        (
            json!({"step": {"type": "map"}}),
            "type \"map\": a map runs an llm, template, python or scrape step",
        ),
        (
            json!({"step": {"type": "llm", "params": {"model": "m"}, "extra": 1}}),
            "unknown field \"extra\"",
        ),
        (
            json!({"step": {"type": "llm", "params": {}}}),
            "node m.step: parameter model: required",
        ),
        (
            json!({"step": {"type": "llm", "params": {"model": "m"}}, "port": "text"}),
            "port: \"text\" is not the one input of the llm step",
        ),
        (
            json!({"step": {"type": "template", "params": {"text": "{{a}} {{b}}"}}, "port": "a"}),
            "port: \"a\" is not the one input of the template step",
        ),
        (
            json!({"step": {"type": "python", "params": {"code": "print(item)"}}, "max_parallel": 65}),
            "max_parallel: 65 is not an integer from 1 to 64",
        ),
    ] {
        let e = map(params.clone()).expect_err(&params.to_string());
        assert!(e.to_string().contains(says), "{e}\nwanted: {says}");
    }
}

#[test]
fn a_cycle_is_named() {
    let v = json!({"version": 1, "nodes": {
        "in": {"type": "input"},
        "a": {"type": "template", "params": {"text": "{{x}} {{y}}"}, "inputs": {"x": ["in", "q"], "y": ["c", "text"]}},
        "b": {"type": "llm", "params": {"model": "m"}, "inputs": {"prompt": ["a", "text"]}},
        "c": {"type": "llm", "params": {"model": "m"}, "inputs": {"prompt": ["b", "text"]}},
        "out": {"type": "output", "inputs": {"x": ["c", "text"]}}
    }});
    let Err(FlowError::Cycle(cycle)) = flow(v) else {
        panic!("a cycle")
    };
    assert_eq!(cycle.first(), cycle.last());
    let mut members: Vec<&str> = cycle[1..].iter().map(String::as_str).collect();
    members.sort_unstable();
    assert_eq!(members, ["a", "b", "c"]);
    // A node feeding itself.
    let v = json!({"version": 1, "nodes": {
        "a": {"type": "merge", "inputs": {"x": ["a", "text"]}},
        "out": {"type": "output", "inputs": {"x": ["a", "text"]}}
    }});
    assert_eq!(flow(v), Err(FlowError::Cycle(vec!["a".into(), "a".into()])));
}

#[test]
fn a_run_needs_only_the_outputs_ancestors_and_a_failure_skips_its_descendants() {
    // in → a → c → out, in → b → out, in → unused (no output needs it).
    let f = flow(json!({"version": 1, "nodes": {
        "in": {"type": "input"},
        "a": {"type": "llm", "params": {"model": "m"}, "inputs": {"prompt": ["in", "q"]}},
        "b": {"type": "llm", "params": {"model": "m"}, "inputs": {"prompt": ["in", "q"]}},
        "c": {"type": "llm", "params": {"model": "m"}, "inputs": {"prompt": ["a", "text"]}},
        "unused": {"type": "llm", "params": {"model": "m"}, "inputs": {"prompt": ["in", "q"]}},
        "out": {"type": "output", "inputs": {"x": ["c", "text"], "y": ["b", "text"]}}
    }}))
    .expect("flow");
    assert_eq!(f.order(), ["in", "a", "b", "c", "out"]);
    let mut s = Schedule::new(&f);
    assert_eq!(s.status("unused"), Some(Status::Skipped));
    assert_eq!(s.ready(), ["in"]);
    assert!(s.ready().is_empty(), "nothing new until in is done");
    s.done("in");
    // Both branches at once.
    assert_eq!(s.ready(), ["a", "b"]);
    assert_eq!(s.failed("a"), ["c", "out"]);
    assert!(!s.finished(), "b still runs");
    s.done("b");
    assert!(s.ready().is_empty());
    assert!(s.finished());
    assert_eq!(
        ["in", "a", "b", "c", "out", "unused"].map(|id| s.status(id).expect("node")),
        [
            Status::Done,
            Status::Failed,
            Status::Done,
            Status::Skipped,
            Status::Skipped,
            Status::Skipped
        ]
    );
}

#[test]
fn placeholders_are_found_and_filled() {
    assert_eq!(placeholders("{{a}} {{ b }} {{a}}").expect("ok"), ["a", "b"]);
    assert_eq!(
        placeholders("no braces { here }").expect("ok"),
        Vec::<String>::new()
    );
    let values: BTreeMap<String, String> = [("a", "1"), ("b", "{{a}}")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into_iter()
        .collect();
    // A value is inserted as is, never expanded again.
    assert_eq!(fill("x{{a}}y{{ b }}z{{c}}", &values), "x1y{{a}}z");
}
