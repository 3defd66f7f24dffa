//! Planning: the shipped templates (`templates/*.json`, each a flow of the
//! format) and three ways to turn a query into a flow: the rules that pick
//! a template with its inputs ([`plan`]); a model choosing the template
//! ([`choice_prompt`], its answer checked by [`read_choice`]); and a model
//! writing the whole flow ([`flow_prompt`], its answer validated by
//! [`read_flow`], one repair asked with [`repair_prompt`], else refused).
//! The prompts and the checks are here, without I/O; the relay asks the
//! model.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Flow, FlowDoc, FlowError};

/// A shipped flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// Its name (`{"template": name}` runs it).
    pub name: &'static str,
    /// What it does.
    pub about: &'static str,
    /// The inputs it reads.
    pub inputs: &'static [&'static str],
    json: &'static str,
}

impl Template {
    /// Its flow.
    ///
    /// # Errors
    /// [`FlowError::Json`] (never, for the shipped ones: tested).
    pub fn doc(&self) -> Result<FlowDoc, FlowError> {
        serde_json::from_str(self.json).map_err(|e| FlowError::Json(e.to_string()))
    }
}

/// The shipped templates.
pub const TEMPLATES: [Template; 5] = [
    Template {
        name: "answer",
        about: "a model answers the question",
        inputs: &["question"],
        json: include_str!("../templates/answer.json"),
    },
    Template {
        name: "rag",
        about: "the nearest texts of a vector-store collection, then a model answers from them",
        inputs: &["question"],
        json: include_str!("../templates/rag.json"),
    },
    Template {
        name: "summarize-url",
        about: "a page scraped, split, each part summarized at once, the summaries summarized",
        inputs: &["url"],
        json: include_str!("../templates/summarize-url.json"),
    },
    Template {
        name: "compare-urls",
        about: "two pages scraped and summarized side by side, then compared",
        inputs: &["url_a", "url_b", "question"],
        json: include_str!("../templates/compare-urls.json"),
    },
    Template {
        name: "python-calc",
        about: "an arithmetic expression computed exactly in Python",
        inputs: &["expression"],
        json: include_str!("../templates/python-calc.json"),
    },
];

/// The template named `name`.
pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// Each `llm` node's (and `map` step's) model set to `model`.
pub fn set_model(doc: &mut FlowDoc, model: &str) {
    for node in doc.nodes.values_mut() {
        let params = match node.kind.as_str() {
            "llm" => Some(&mut node.params),
            "map" => node
                .params
                .get_mut("step")
                .filter(|s| s["type"] == "llm")
                .and_then(|s| s.get_mut("params"))
                .and_then(Value::as_object_mut),
            _ => None,
        };
        if let Some(p) = params {
            p.insert("model".into(), Value::String(model.to_owned()));
        }
    }
}

/// Each `retrieve` node's collection set to `collection`.
pub fn set_collection(doc: &mut FlowDoc, collection: &str) {
    for node in doc.nodes.values_mut().filter(|n| n.kind == "retrieve") {
        node.params
            .insert("collection".into(), Value::String(collection.to_owned()));
    }
}

/// A query's template and the inputs it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The template.
    pub template: &'static str,
    /// Its inputs.
    pub inputs: BTreeMap<String, String>,
    /// Which rule chose it.
    pub why: String,
}

/// The URLs in `text` (http and https, trailing punctuation left out).
pub fn urls(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches(['(', '<', '"', '\'']))
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(|w| w.trim_end_matches(['.', ',', ';', ':', '!', '?', ')', '>', '"', '\'']))
        .filter(|w| w.len() > "https://".len())
        .map(str::to_owned)
        .collect()
}

/// The arithmetic of `query` ("What is 2**100?" → `2**100`), if that is
/// all it asks.
pub fn arithmetic(query: &str) -> Option<String> {
    let mut q = query
        .trim()
        .trim_end_matches(['?', '.', '!', '='])
        .to_owned();
    let lower = q.to_lowercase();
    for lead in [
        "what is",
        "what's",
        "calculate",
        "compute",
        "evaluate",
        "how much is",
    ] {
        if lower.starts_with(lead) {
            q = q[lead.len()..].to_owned();
            break;
        }
    }
    let q = q.trim();
    let ok = !q.is_empty()
        && q.chars()
            .all(|c| c.is_ascii_digit() || " \t+-*/%().".contains(c))
        && q.chars().any(|c| c.is_ascii_digit())
        && q.chars().any(|c| "+-*/%".contains(c));
    ok.then(|| q.to_owned())
}

/// Picks a template for `query` by rules: two URLs → `compare-urls`, one →
/// `summarize-url`, arithmetic alone → `python-calc`, a collection to
/// search → `rag`, else `answer`.
pub fn plan(query: &str, collection: Option<&str>) -> Plan {
    let input = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let found = urls(query);
    if let [a, b, ..] = found.as_slice() {
        return Plan {
            template: "compare-urls",
            inputs: input(&[
                ("url_a", a.clone()),
                ("url_b", b.clone()),
                ("question", query.to_owned()),
            ]),
            why: format!("the query names {} URLs", found.len()),
        };
    }
    if let [url] = found.as_slice() {
        return Plan {
            template: "summarize-url",
            inputs: input(&[("url", url.clone())]),
            why: "the query names a URL".into(),
        };
    }
    if let Some(expression) = arithmetic(query) {
        return Plan {
            template: "python-calc",
            inputs: input(&[("expression", expression)]),
            why: "the query is arithmetic".into(),
        };
    }
    if collection.is_some() {
        return Plan {
            template: "rag",
            inputs: input(&[("question", query.to_owned())]),
            why: "a collection to search was given".into(),
        };
    }
    Plan {
        template: "answer",
        inputs: input(&[("question", query.to_owned())]),
        why: "no rule matched: a model answers".into(),
    }
}

/// The inputs `t` gets from `query`, or why the query cannot fill them (a
/// page's template with no URL in the query, a calculation with no
/// arithmetic).
///
/// # Errors
/// What the query lacks.
pub fn inputs_for(t: &Template, query: &str) -> Result<BTreeMap<String, String>, String> {
    let found = urls(query);
    let mut inputs = BTreeMap::new();
    for name in t.inputs {
        let value = match (t.name, *name) {
            (_, "question") => query.to_owned(),
            ("summarize-url", "url") => found
                .first()
                .cloned()
                .ok_or("the query names no URL to summarize")?,
            ("compare-urls", "url_a" | "url_b") => {
                let [a, b, ..] = found.as_slice() else {
                    return Err("the query does not name two URLs to compare".into());
                };
                if *name == "url_a" {
                    a.clone()
                } else {
                    b.clone()
                }
            }
            ("python-calc", "expression") => {
                arithmetic(query).ok_or("the query is not an arithmetic expression")?
            }
            (_, other) => return Err(format!("no rule fills the input {other}")),
        };
        inputs.insert((*name).to_owned(), value);
    }
    Ok(inputs)
}

/// The prompt asking a model which template suits `query`.
pub fn choice_prompt(query: &str) -> String {
    let mut p = String::from("Choose the flow that best does the task. The flows:\n");
    for t in &TEMPLATES {
        p.push_str(&format!("- {}: {}\n", t.name, t.about));
    }
    p.push_str(&format!(
        "\nTask: {query}\n\nReply with the flow's name only, one of: {}.",
        TEMPLATES.map(|t| t.name).join(", ")
    ));
    p
}

/// A model's answer to [`choice_prompt`], checked: the template it names
/// first (a name the answer does not contain is no choice) with the inputs
/// the query fills.
///
/// # Errors
/// No template named, or the query cannot fill the chosen one's inputs.
pub fn read_choice(answer: &str, query: &str) -> Result<Plan, String> {
    let lower = answer.to_lowercase();
    let named = |name: &str| {
        lower.match_indices(name).find(|(at, _)| {
            // A whole name: `answer` inside `answers` is not one.
            let before = lower[..*at].chars().next_back();
            let after = lower[at + name.len()..].chars().next();
            let part =
                |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_');
            !part(before) && !part(after)
        })
    };
    let chosen = TEMPLATES
        .iter()
        .filter_map(|t| named(t.name).map(|(at, _)| (at, t)))
        .min_by_key(|(at, _)| *at)
        .map(|(_, t)| t)
        .ok_or_else(|| {
            format!(
                "the answer names none of {}",
                TEMPLATES.map(|t| t.name).join(", ")
            )
        })?;
    let inputs = inputs_for(chosen, query).map_err(|why| format!("{}: {why}", chosen.name))?;
    Ok(Plan {
        template: chosen.name,
        inputs,
        why: "the model chose it".into(),
    })
}

/// The one input a model-written flow reads: the query.
pub const FREE_INPUT: &str = "query";

/// The prompt asking a model to write a flow for `query`, its `llm` nodes
/// on `model`.
pub fn flow_prompt(query: &str, model: &str) -> String {
    format!(
        r#"Write a tabnode flow (JSON) that does the task below. A flow is {{"version": 1, "nodes": {{id: node}}}}; each node has a "type", "params" and "inputs" (input name -> [other node id, its output name]). Node types:
- input: outputs the run's inputs; this flow reads one, "{FREE_INPUT}": {{"type": "input", "params": {{"names": ["{FREE_INPUT}"]}}}}
- template: params "text" with {{{{name}}}} placeholders, one input per placeholder; output "text"
- llm: params "model" ("{model}"), "max_tokens"; input "prompt"; output "text"
- scrape: input "url" (one URL); outputs "text", "title", "links"
- python: params "code" (prints its result); inputs become variables; output "text"
- split: input "text"; output "chunks"; map: params "step" ({{"type": "llm", "params": {{...}}}}), input "items"; outputs "texts", "text"
- merge: any inputs; output "text"
- output: its inputs are the results
Example: {{"version": 1, "nodes": {{"in": {{"type": "input", "params": {{"names": ["{FREE_INPUT}"]}}}}, "p": {{"type": "template", "params": {{"text": "Answer briefly: {{{{q}}}}"}}, "inputs": {{"q": ["in", "{FREE_INPUT}"]}}}}, "a": {{"type": "llm", "params": {{"model": "{model}", "max_tokens": 128}}, "inputs": {{"prompt": ["p", "text"]}}}}, "out": {{"type": "output", "inputs": {{"answer": ["a", "text"]}}}}}}}}

Task: {query}

Reply with the JSON flow only."#
    )
}

/// The prompt asking a model to fix the flow it wrote.
pub fn repair_prompt(query: &str, model: &str, previous: &str, error: &str) -> String {
    format!(
        "{}\n\nYour previous answer was:\n{previous}\n\nIt is not a valid flow: {error}\nReply with the corrected JSON flow only.",
        flow_prompt(query, model)
    )
}

/// Why a model's flow is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The answer holds no JSON object.
    #[error("the answer holds no JSON object")]
    NoJson,
    /// The JSON is not a valid flow.
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// The flow reads inputs the run will not give.
    #[error("the flow reads the inputs {0:?}; it may read only \"query\"")]
    Inputs(Vec<String>),
}

/// The first JSON object in `text` (braces balanced outside strings), if
/// any: a model's answer, with or without a code fence or words around it.
pub fn first_object(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text[start..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..=start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// A model's answer to [`flow_prompt`] or [`repair_prompt`], validated:
/// the flow, reading [`FREE_INPUT`] at most.
///
/// # Errors
/// [`PlanError`].
pub fn read_flow(answer: &str) -> Result<FlowDoc, PlanError> {
    let json = first_object(answer).ok_or(PlanError::NoJson)?;
    let doc: FlowDoc = serde_json::from_str(json).map_err(|e| FlowError::Json(e.to_string()))?;
    let flow = Flow::parse(doc.clone())?;
    let others: Vec<String> = flow
        .input_names()
        .into_iter()
        .filter(|n| n != FREE_INPUT)
        .collect();
    if !others.is_empty() {
        return Err(PlanError::Inputs(others));
    }
    Ok(doc)
}
