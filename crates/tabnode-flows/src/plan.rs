//! Planning: the shipped templates (`templates/*.json`, each a flow of the
//! format) and the rules that pick one for a query, with its inputs.
//! (Scoring the templates with a model and a free-form planner are to
//! come.)

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{FlowDoc, FlowError};

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
