//! The shipped templates and the rules that choose one.

use tabnode_flows::plan::{arithmetic, plan, set_collection, set_model, template, urls, TEMPLATES};
use tabnode_flows::{Flow, Step};

#[test]
fn every_template_is_a_valid_flow_reading_its_inputs() {
    for t in TEMPLATES {
        let flow =
            Flow::parse(t.doc().expect("json")).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        let reads: Vec<String> = flow.input_names().into_iter().collect();
        let mut want: Vec<String> = t.inputs.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(reads, want, "{}", t.name);
    }
    assert!(template("nope").is_none());
}

#[test]
fn model_and_collection_are_set_everywhere() {
    let t = template("summarize-url").expect("template");
    let mut doc = t.doc().expect("doc");
    set_model(&mut doc, "qwen2.5-coder-0.5b-instruct");
    let flow = Flow::parse(doc).expect("valid");
    let mut llms = 0;
    for n in flow.nodes.values() {
        let step = match &n.step {
            Step::Map { step, .. } => step.as_ref(),
            s => s,
        };
        if let Step::Llm(l) = step {
            assert_eq!(l.model, "qwen2.5-coder-0.5b-instruct");
            llms += 1;
        }
    }
    assert_eq!(llms, 2);
    let mut rag = template("rag").expect("rag").doc().expect("doc");
    set_collection(&mut rag, "manuals");
    let flow = Flow::parse(rag).expect("valid");
    assert!(
        matches!(&flow.nodes["hits"].step, Step::Retrieve { collection, .. } if collection == "manuals")
    );
}

#[test]
fn rules_pick_a_template_and_its_inputs() {
    let p = plan("Summarize https://example.org/a.html, please.", None);
    assert_eq!(p.template, "summarize-url");
    assert_eq!(p.inputs["url"], "https://example.org/a.html");
    let p = plan("Compare (https://a.test/x) and <http://b.test/y>?", None);
    assert_eq!(p.template, "compare-urls");
    assert_eq!(
        [&p.inputs["url_a"], &p.inputs["url_b"]],
        ["https://a.test/x", "http://b.test/y"]
    );
    let p = plan("What is 2**100?", None);
    assert_eq!(p.template, "python-calc");
    assert_eq!(p.inputs["expression"], "2**100");
    assert_eq!(
        arithmetic("calculate (3 + 4) * 12 ="),
        Some("(3 + 4) * 12".into())
    );
    assert_eq!(
        arithmetic("What is 2024?"),
        None,
        "a number alone is not a calculation"
    );
    assert_eq!(arithmetic("What is import os?"), None);
    assert_eq!(plan("Who wrote the manual?", Some("docs")).template, "rag");
    let p = plan("Why is the sky blue?", None);
    assert_eq!(
        (p.template, p.inputs["question"].as_str()),
        ("answer", "Why is the sky blue?")
    );
    assert!(urls("ftp://x.test and https:// alone").is_empty());
}
