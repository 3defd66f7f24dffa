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

#[test]
fn a_models_choice_is_read_and_checked() {
    use tabnode_flows::plan::{choice_prompt, inputs_for, read_choice};
    let q = "Summarize https://example.com/a for me";
    let p = choice_prompt(q);
    for t in TEMPLATES {
        assert!(p.contains(&format!("- {}: {}", t.name, t.about)), "{p}");
    }
    assert!(p.contains(q));
    // The first whole name the answer gives, with the inputs the query
    // fills.
    let c = read_choice("summarize-url (then answer)", q).expect("a choice");
    assert_eq!(c.template, "summarize-url");
    assert_eq!(c.inputs["url"], "https://example.com/a");
    assert_eq!(
        read_choice("The flow: answer.", q)
            .expect("a choice")
            .inputs["question"],
        q
    );
    // Not a whole name, no name, or a template the query cannot fill.
    assert_eq!(
        read_choice("answers", q),
        Err(
            "the answer names none of answer, rag, summarize-url, compare-urls, python-calc".into()
        )
    );
    assert_eq!(
        read_choice("python-calc", q),
        Err("python-calc: the query is not an arithmetic expression".into())
    );
    assert_eq!(
        read_choice("compare-urls", q),
        Err("compare-urls: the query does not name two URLs to compare".into())
    );
    let t = template("python-calc").expect("t");
    assert_eq!(
        inputs_for(t, "What is 3 * 7?").expect("inputs")["expression"],
        "3 * 7"
    );
}

#[test]
fn a_model_written_flow_is_validated_or_refused() {
    use tabnode_flows::plan::{first_object, flow_prompt, read_flow, repair_prompt, PlanError};
    use tabnode_flows::FlowError;
    let prompt = flow_prompt("What is the tallest mountain?", "smollm2-135m-instruct");
    // The prompt's own example is a valid flow.
    let example = prompt
        .lines()
        .find_map(|l| l.strip_prefix("Example: "))
        .expect("an example");
    read_flow(example).expect("the example is valid");
    // Found inside a fence and words, braces in strings not counted.
    let answer = format!("Here it is:\n```json\n{example}\n```\nDone {{not json}}.");
    assert_eq!(first_object(&answer), Some(example));
    assert_eq!(
        first_object(r#"x {"a": "}{", "b": {"c": 1}} y"#),
        Some(r#"{"a": "}{", "b": {"c": 1}}"#)
    );
    assert_eq!(first_object("{ unclosed"), None);
    read_flow(&answer).expect("valid");
    // No JSON, JSON that is no flow, a flow with an unknown node type, a
    // flow reading other inputs.
    assert_eq!(read_flow("I cannot."), Err(PlanError::NoJson));
    assert!(matches!(
        read_flow(r#"{"nodes": 3}"#),
        Err(PlanError::Flow(FlowError::Json(_)))
    ));
    let bad = example.replace("\"template\"", "\"tmpl\"");
    let e = read_flow(&bad).expect_err("unknown type");
    assert!(e.to_string().contains("tmpl"), "{e}");
    let other = example
        .replace(
            r#"{"type": "input", "params": {"names": ["query"]}}"#,
            r#"{"type": "input"}"#,
        )
        .replace(r#"["in", "query"]"#, r#"["in", "question"]"#);
    assert_eq!(
        read_flow(&other),
        Err(PlanError::Inputs(vec!["question".into()]))
    );
    let repair = repair_prompt("Q?", "m", "{bad}", &e.to_string());
    assert!(
        repair.contains("{bad}")
            && repair.contains(&e.to_string())
            && repair.ends_with("Reply with the corrected JSON flow only.")
    );
}
