//! Flows (issue #15): a query as a graph of tasks. This crate is the
//! format (versioned JSON, [`FlowDoc`]), its validation into typed steps
//! ([`Flow::parse`], [`FlowError`]: every mistake named with its node), and
//! the order a run takes ([`Flow::needed`], [`Flow::order`], [`Schedule`]:
//! only the outputs' ancestors run, every ready node at once, a failure
//! skips its descendants while other branches finish). The relay runs
//! flows; the crate builds for wasm32 too, for the editor page to check
//! flows with the same code (not wired yet).
//!
//! The format, with an example per node type (each one validated by this
//! crate's tests), is in `FORMAT.md`:
#![doc = include_str!("../FORMAT.md")]

use std::collections::{BTreeMap, BTreeSet};

pub mod plan;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The format version this crate reads.
pub const VERSION: u32 = 1;
/// Nodes a flow may have.
pub const MAX_NODES: usize = 256;
/// Characters a node id may have.
pub const MAX_ID_CHARS: usize = 64;

/// The node types, as `type` names them.
pub const TYPES: [&str; 11] = [
    "input", "output", "llm", "embed", "retrieve", "scrape", "python", "template", "split", "map",
    "merge",
];

/// A connection: another node's named output, `["<node id>", "<output>"]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Source(pub String, pub String);

/// A flow as written: nodes by id, the editor's layout in `ui` (kept as
/// given, never read by a run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowDoc {
    /// [`VERSION`].
    pub version: u32,
    /// The nodes, by id.
    pub nodes: BTreeMap<String, RawNode>,
    /// The editor's layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<Value>,
}

/// A node as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// One of [`TYPES`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Its parameters (which depend on the type).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// Its inputs: name → the output feeding it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Source>,
}

/// What travels on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A string.
    Text,
    /// A list of strings (`split`'s chunks, `map`'s results, links).
    List,
    /// An embedding.
    Vector,
    /// Any JSON (a retrieval's points).
    Json,
}

impl Kind {
    /// How messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::List => "a list",
            Kind::Vector => "a vector",
            Kind::Json => "JSON",
        }
    }
}

/// Why a flow is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlowError {
    /// Not JSON of the flow's shape.
    #[error("not a flow: {0}")]
    Json(String),
    /// Another version of the format.
    #[error("flow version {0} is not supported (this relay reads version {VERSION})")]
    Version(u32),
    /// Too many nodes.
    #[error("{count} nodes; a flow has at most {max}")]
    TooManyNodes {
        /// Nodes given.
        count: usize,
        /// [`MAX_NODES`].
        max: usize,
    },
    /// A node id that is empty, too long or has other characters.
    #[error("node id {0:?}: 1 to {MAX_ID_CHARS} letters, digits, '_' or '-'")]
    BadId(String),
    /// A `type` this relay does not run.
    #[error("node {node}: unknown type {kind:?} (one of {})", TYPES.join(", "))]
    UnknownType {
        /// The node.
        node: String,
        /// Its type.
        kind: String,
    },
    /// A parameter missing, of the wrong type or out of range.
    #[error("node {node}: parameter {param}: {reason}")]
    Param {
        /// The node.
        node: String,
        /// The parameter.
        param: String,
        /// What is wrong.
        reason: String,
    },
    /// A parameter the type does not have (a typo, usually).
    #[error("node {node}: unknown parameter {param:?} (it takes {takes})")]
    UnknownParam {
        /// The node.
        node: String,
        /// The parameter.
        param: String,
        /// The ones it takes.
        takes: String,
    },
    /// A required input not connected.
    #[error("node {node}: input {input:?} is not connected")]
    MissingInput {
        /// The node.
        node: String,
        /// The input.
        input: String,
    },
    /// An input the type does not have.
    #[error("node {node}: no input named {input:?} (it takes {takes})")]
    UnknownInput {
        /// The node.
        node: String,
        /// The input.
        input: String,
        /// The ones it takes.
        takes: String,
    },
    /// An input naming a node that is not in the flow.
    #[error("node {node}: input {input:?} names node {from:?}, which is not in the flow")]
    DanglingNode {
        /// The node.
        node: String,
        /// The input.
        input: String,
        /// The node it names.
        from: String,
    },
    /// An input naming an output its node does not have.
    #[error(
        "node {node}: input {input:?} names output {output:?} of node {from}, which gives {gives}"
    )]
    DanglingOutput {
        /// The node.
        node: String,
        /// The input.
        input: String,
        /// The node it names.
        from: String,
        /// The output it names.
        output: String,
        /// The outputs that node has.
        gives: String,
    },
    /// A connection between ports of different kinds.
    #[error("node {node}: input {input:?} takes {}, but {from}.{output} gives {}", .expected.name(), .got.name())]
    Mismatch {
        /// The node.
        node: String,
        /// The input.
        input: String,
        /// The node feeding it.
        from: String,
        /// That node's output.
        output: String,
        /// What the input takes.
        expected: Kind,
        /// What the output gives.
        got: Kind,
    },
    /// The connections loop.
    #[error("the flow has a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    /// Nothing to compute.
    #[error("the flow has no output node")]
    NoOutput,
}

/// How an `llm` node asks its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmMode {
    /// The prompt as a user message in the model's chat template.
    Chat,
    /// The prompt as raw text to continue.
    Completion,
}

/// An `llm` node's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Llm {
    /// A catalog model (or its GGUF name).
    pub model: String,
    /// `chat` (default) or `completion`.
    pub mode: LlmMode,
    /// 1 to 4,096; default 256.
    pub max_tokens: u32,
    /// 0 to 2; default 0 (greedy).
    pub temperature: f32,
    /// A system message (chat mode only).
    pub system: Option<String>,
}

/// A node's task, its parameters checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The run's inputs: one text output per name (`names`, when given,
    /// lists the only ones allowed).
    Input {
        /// The names the run must give, when listed.
        names: Option<Vec<String>>,
    },
    /// Its inputs are the run's outputs, by name.
    Output,
    /// A model's answer to `prompt`.
    Llm(Llm),
    /// `text`'s embedding.
    Embed {
        /// An embedding model; `None`: the relay's default.
        model: Option<String>,
    },
    /// The points of a vector-store collection nearest to `query`.
    Retrieve {
        /// The collection.
        collection: String,
        /// 1 to 100; default 5.
        limit: u32,
    },
    /// A web page's readable text, title and links.
    Scrape {
        /// Rendered in a headless browser first (script-built pages).
        render: bool,
        /// 1 KiB to 10 MiB; default 2 MiB.
        max_bytes: u64,
    },
    /// Python (Pyodide in a sandboxed tab): the inputs as variables, what
    /// it prints as `text`.
    Python {
        /// The code.
        code: String,
        /// 100 ms to 60 s; default 10 s.
        timeout_ms: u64,
    },
    /// `text` with each `{{name}}` replaced by input `name`.
    Template {
        /// The text.
        text: String,
        /// Its placeholders, in order of first use.
        placeholders: Vec<String>,
    },
    /// `text` cut into chunks of at most `chunk_chars` characters.
    Split {
        /// 100 to 100,000; default 2,000.
        chunk_chars: u32,
        /// Characters repeated between neighbouring chunks; less than
        /// `chunk_chars`; default 0.
        overlap: u32,
    },
    /// `step` run over each of `items` at once (at most `max_parallel` at a
    /// time); the results as `texts`, and joined as `text`.
    Map {
        /// The step (an `llm`, `template`, `python` or `scrape`).
        step: Box<Step>,
        /// The step's input each item goes to.
        port: String,
        /// 1 to 64; default 8.
        max_parallel: u32,
    },
    /// Its inputs (texts or lists) joined, in input-name order.
    Merge {
        /// Between the parts; default a blank line.
        separator: String,
    },
}

/// Whether `s` names a variable: `[A-Za-z_][A-Za-z0-9_]*`, at most 64.
fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

/// The `{{name}}` placeholders of a template's text, in order of first
/// use (`{{ name }}` too).
///
/// # Errors
/// What is wrong: a `{{` without its `}}`, or something other than a name
/// between them.
pub fn placeholders(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        let after = &rest[at + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "\"{{{{\" at byte {} is not closed",
                text.len() - rest.len() + at
            ));
        };
        let name = after[..end].trim();
        if !is_name(name) {
            return Err(format!(
                "{{{{{}}}}} is not a placeholder name",
                &after[..end]
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// `text` with each `{{name}}` replaced by `values[name]` (a missing one
/// by nothing; a validated template has them all).
pub fn fill(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        let after = &rest[at + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(&rest[..at]);
        if let Some(v) = values.get(after[..end].trim()) {
            out.push_str(v);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// A node's parameters being read: each one taken once, the rest refused.
struct Params<'a> {
    node: &'a str,
    map: Map<String, Value>,
    takes: &'static [&'static str],
}

impl<'a> Params<'a> {
    fn new(
        node: &'a str,
        map: &Map<String, Value>,
        takes: &'static [&'static str],
    ) -> Result<Self, FlowError> {
        if let Some(k) = map.keys().find(|k| !takes.contains(&k.as_str())) {
            return Err(FlowError::UnknownParam {
                node: node.to_owned(),
                param: k.clone(),
                takes: if takes.is_empty() {
                    "none".into()
                } else {
                    takes.join(", ")
                },
            });
        }
        Ok(Self {
            node,
            map: map.clone(),
            takes,
        })
    }

    fn bad(&self, param: &str, reason: impl Into<String>) -> FlowError {
        debug_assert!(self.takes.contains(&param));
        FlowError::Param {
            node: self.node.to_owned(),
            param: param.to_owned(),
            reason: reason.into(),
        }
    }

    fn text(&self, name: &str) -> Result<Option<String>, FlowError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.bad(name, format!("a string, not {other}"))),
        }
    }

    fn required_text(&self, name: &str) -> Result<String, FlowError> {
        match self.text(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(self.bad(name, "empty")),
            None => Err(self.bad(name, "required")),
        }
    }

    fn int(&self, name: &str, default: u64, lo: u64, hi: u64) -> Result<u64, FlowError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(self.bad(name, format!("{v} is not an integer from {lo} to {hi}"))),
            },
        }
    }

    fn small(&self, name: &str, default: u32, lo: u32, hi: u32) -> Result<u32, FlowError> {
        // In range of u32 by the bounds.
        self.int(name, default.into(), lo.into(), hi.into())
            .map(|n| u32::try_from(n).unwrap_or(hi))
    }

    fn flag(&self, name: &str) -> Result<bool, FlowError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.bad(name, format!("true or false, not {other}"))),
        }
    }
}

/// Parses a `type` and its `params` into a [`Step`].
fn step(node: &str, kind: &str, params: &Map<String, Value>) -> Result<Step, FlowError> {
    Ok(match kind {
        "input" => {
            let p = Params::new(node, params, &["names"])?;
            let names = match p.map.get("names") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => {
                    let names: Option<Vec<String>> = a
                        .iter()
                        .map(|v| v.as_str().filter(|s| is_name(s)).map(str::to_owned))
                        .collect();
                    Some(names.ok_or_else(|| {
                        p.bad("names", "a list of names ([A-Za-z_][A-Za-z0-9_]*)")
                    })?)
                }
                Some(other) => return Err(p.bad("names", format!("a list of names, not {other}"))),
            };
            Step::Input { names }
        }
        "output" => {
            Params::new(node, params, &[])?;
            Step::Output
        }
        "llm" => {
            let p = Params::new(
                node,
                params,
                &["model", "mode", "max_tokens", "temperature", "system"],
            )?;
            let mode = match p.text("mode")?.as_deref() {
                None | Some("chat") => LlmMode::Chat,
                Some("completion") => LlmMode::Completion,
                Some(other) => {
                    return Err(p.bad("mode", format!("\"chat\" or \"completion\", not {other:?}")))
                }
            };
            let temperature = match p.map.get("temperature") {
                None | Some(Value::Null) => 0.0,
                Some(v) => match v.as_f64() {
                    Some(t) if (0.0..=2.0).contains(&t) => t as f32,
                    _ => {
                        return Err(p.bad("temperature", format!("{v} is not a number from 0 to 2")))
                    }
                },
            };
            let system = p.text("system")?;
            if system.is_some() && mode == LlmMode::Completion {
                return Err(p.bad("system", "a completion has no system message"));
            }
            Step::Llm(Llm {
                model: p.required_text("model")?,
                mode,
                max_tokens: p.small("max_tokens", 256, 1, 4096)?,
                temperature,
                system,
            })
        }
        "embed" => {
            let p = Params::new(node, params, &["model"])?;
            Step::Embed {
                model: p.text("model")?,
            }
        }
        "retrieve" => {
            let p = Params::new(node, params, &["collection", "limit"])?;
            Step::Retrieve {
                collection: p.required_text("collection")?,
                limit: p.small("limit", 5, 1, 100)?,
            }
        }
        "scrape" => {
            let p = Params::new(node, params, &["render", "max_bytes"])?;
            Step::Scrape {
                render: p.flag("render")?,
                max_bytes: p.int("max_bytes", 2 << 20, 1 << 10, 10 << 20)?,
            }
        }
        "python" => {
            let p = Params::new(node, params, &["code", "timeout_ms"])?;
            Step::Python {
                code: p.required_text("code")?,
                timeout_ms: p.int("timeout_ms", 10_000, 100, 60_000)?,
            }
        }
        "template" => {
            let p = Params::new(node, params, &["text"])?;
            let text = p.required_text("text")?;
            let placeholders = placeholders(&text).map_err(|e| p.bad("text", e))?;
            Step::Template { text, placeholders }
        }
        "split" => {
            let p = Params::new(node, params, &["chunk_chars", "overlap"])?;
            let chunk_chars = p.small("chunk_chars", 2000, 100, 100_000)?;
            let overlap = p.small("overlap", 0, 0, 100_000)?;
            if overlap >= chunk_chars {
                return Err(p.bad(
                    "overlap",
                    format!("{overlap} is not less than chunk_chars ({chunk_chars})"),
                ));
            }
            Step::Split {
                chunk_chars,
                overlap,
            }
        }
        "map" => {
            let p = Params::new(node, params, &["step", "port", "max_parallel"])?;
            let (kind, sub) = match p.map.get("step") {
                Some(Value::Object(o)) => {
                    if let Some(k) = o.keys().find(|k| !["type", "params"].contains(&k.as_str())) {
                        return Err(p.bad(
                            "step",
                            format!("unknown field {k:?} (a step is {{\"type\", \"params\"}})"),
                        ));
                    }
                    let kind = o
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let sub = match o.get("params") {
                        None | Some(Value::Null) => Map::new(),
                        Some(Value::Object(m)) => m.clone(),
                        Some(other) => {
                            return Err(p.bad("step", format!("params: an object, not {other}")))
                        }
                    };
                    (kind, sub)
                }
                None | Some(Value::Null) => return Err(p.bad("step", "required")),
                Some(other) => return Err(p.bad("step", format!("an object, not {other}"))),
            };
            let default_port = match kind.as_str() {
                "llm" => "prompt",
                "scrape" => "url",
                "template" | "python" => "item",
                other => {
                    return Err(p.bad(
                        "step",
                        format!(
                            "type {other:?}: a map runs an llm, template, python or scrape step"
                        ),
                    ))
                }
            };
            let inner = step(&format!("{node}.step"), &kind, &sub)?;
            let port = p.text("port")?.unwrap_or_else(|| default_port.to_owned());
            let fits = match &inner {
                Step::Llm(_) => port == "prompt",
                Step::Scrape { .. } => port == "url",
                Step::Python { .. } => is_name(&port),
                Step::Template { placeholders, .. } => placeholders == std::slice::from_ref(&port),
                _ => false,
            };
            if !fits {
                return Err(p.bad(
                    "port",
                    format!("{port:?} is not the one input of the {kind} step (a template's only placeholder, a python variable, an llm's prompt, a scrape's url)"),
                ));
            }
            Step::Map {
                step: Box::new(inner),
                port,
                max_parallel: p.small("max_parallel", 8, 1, 64)?,
            }
        }
        "merge" => {
            let p = Params::new(node, params, &["separator"])?;
            Step::Merge {
                separator: p.text("separator")?.unwrap_or_else(|| "\n\n".into()),
            }
        }
        other => {
            return Err(FlowError::UnknownType {
                node: node.to_owned(),
                kind: other.to_owned(),
            })
        }
    })
}

/// A step's inputs: fixed names with their kinds, or any names.
enum Inputs {
    Fixed(&'static [(&'static str, Kind)]),
    /// Any names (at least one), of these kinds; `names`: only those.
    Any {
        kinds: &'static [Kind],
        names: Option<Vec<String>>,
        python: bool,
    },
}

impl Step {
    /// Its type's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Input { .. } => "input",
            Step::Output => "output",
            Step::Llm(_) => "llm",
            Step::Embed { .. } => "embed",
            Step::Retrieve { .. } => "retrieve",
            Step::Scrape { .. } => "scrape",
            Step::Python { .. } => "python",
            Step::Template { .. } => "template",
            Step::Split { .. } => "split",
            Step::Map { .. } => "map",
            Step::Merge { .. } => "merge",
        }
    }

    /// What an output named `name` carries, if it has one.
    pub fn output(&self, name: &str) -> Option<Kind> {
        match self {
            Step::Input { names } => (is_name(name)
                && names.as_ref().is_none_or(|n| n.iter().any(|n| n == name)))
            .then_some(Kind::Text),
            Step::Output => None,
            Step::Embed { .. } => (name == "vector").then_some(Kind::Vector),
            Step::Retrieve { .. } => match name {
                "text" => Some(Kind::Text),
                "points" => Some(Kind::Json),
                _ => None,
            },
            Step::Scrape { .. } => match name {
                "text" | "title" => Some(Kind::Text),
                "links" => Some(Kind::List),
                _ => None,
            },
            Step::Split { .. } => (name == "chunks").then_some(Kind::List),
            Step::Map { .. } => match name {
                "text" => Some(Kind::Text),
                "texts" => Some(Kind::List),
                _ => None,
            },
            Step::Llm(_) | Step::Python { .. } | Step::Template { .. } | Step::Merge { .. } => {
                (name == "text").then_some(Kind::Text)
            }
        }
    }

    /// Its outputs' names, for messages.
    fn outputs(&self) -> String {
        match self {
            Step::Input { names: Some(n) } => n.join(", "),
            Step::Input { names: None } => "any name".into(),
            Step::Output => "nothing".into(),
            Step::Embed { .. } => "vector".into(),
            Step::Retrieve { .. } => "text, points".into(),
            Step::Scrape { .. } => "text, title, links".into(),
            Step::Split { .. } => "chunks".into(),
            Step::Map { .. } => "text, texts".into(),
            _ => "text".into(),
        }
    }

    fn inputs(&self) -> Inputs {
        const ANY: &[Kind] = &[Kind::Text, Kind::List, Kind::Vector, Kind::Json];
        const TEXTS: &[Kind] = &[Kind::Text, Kind::List];
        match self {
            Step::Input { .. } => Inputs::Fixed(&[]),
            Step::Output => Inputs::Any {
                kinds: ANY,
                names: None,
                python: false,
            },
            Step::Llm(_) => Inputs::Fixed(&[("prompt", Kind::Text)]),
            Step::Embed { .. } => Inputs::Fixed(&[("text", Kind::Text)]),
            Step::Retrieve { .. } => Inputs::Fixed(&[("query", Kind::Text)]),
            Step::Scrape { .. } => Inputs::Fixed(&[("url", Kind::Text)]),
            Step::Split { .. } => Inputs::Fixed(&[("text", Kind::Text)]),
            Step::Map { .. } => Inputs::Fixed(&[("items", Kind::List)]),
            Step::Python { .. } => Inputs::Any {
                kinds: ANY,
                names: None,
                python: true,
            },
            Step::Template { placeholders, .. } => Inputs::Any {
                kinds: &[Kind::Text],
                names: Some(placeholders.clone()),
                python: false,
            },
            Step::Merge { .. } => Inputs::Any {
                kinds: TEXTS,
                names: None,
                python: false,
            },
        }
    }
}

/// A node, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its task.
    pub step: Step,
    /// Input name → the output feeding it.
    pub inputs: BTreeMap<String, Source>,
}

/// A validated flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// The nodes, by id.
    pub nodes: BTreeMap<String, Node>,
    /// The document it came from (its `ui` included).
    pub doc: FlowDoc,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Flow {
    /// Parses and validates a flow's JSON.
    ///
    /// # Errors
    /// [`FlowError`]: the first problem found, naming its node.
    pub fn from_json(json: &[u8]) -> Result<Self, FlowError> {
        let doc: FlowDoc =
            serde_json::from_slice(json).map_err(|e| FlowError::Json(e.to_string()))?;
        Self::parse(doc)
    }

    /// Validates a flow: the version, the node count and ids, each node's
    /// type and parameters, each input (known, connected to an existing
    /// output of the right kind, required ones present), no cycle, at
    /// least one output.
    ///
    /// # Errors
    /// [`FlowError`]: the first problem found, naming its node.
    pub fn parse(doc: FlowDoc) -> Result<Self, FlowError> {
        if doc.version != VERSION {
            return Err(FlowError::Version(doc.version));
        }
        if doc.nodes.len() > MAX_NODES {
            return Err(FlowError::TooManyNodes {
                count: doc.nodes.len(),
                max: MAX_NODES,
            });
        }
        if let Some(id) = doc.nodes.keys().find(|id| !valid_id(id)) {
            return Err(FlowError::BadId(id.clone()));
        }
        let mut nodes = BTreeMap::new();
        for (id, raw) in &doc.nodes {
            let step = step(id, &raw.kind, &raw.params)?;
            nodes.insert(
                id.clone(),
                Node {
                    step,
                    inputs: raw.inputs.clone(),
                },
            );
        }
        for (id, node) in &nodes {
            check_inputs(id, node, &nodes)?;
        }
        if !nodes.values().any(|n| n.step == Step::Output) {
            return Err(FlowError::NoOutput);
        }
        let flow = Self { nodes, doc };
        flow.topological(&flow.nodes.keys().cloned().collect())?;
        Ok(flow)
    }

    /// The nodes a run computes: the outputs and their ancestors.
    pub fn needed(&self) -> BTreeSet<String> {
        let mut needed = BTreeSet::new();
        let mut stack: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.step == Step::Output)
            .map(|(id, _)| id.as_str())
            .collect();
        while let Some(id) = stack.pop() {
            if needed.insert(id.to_owned()) {
                if let Some(n) = self.nodes.get(id) {
                    stack.extend(n.inputs.values().map(|s| s.0.as_str()));
                }
            }
        }
        needed
    }

    /// The needed nodes in an order where each comes after what feeds it
    /// (ties by id).
    pub fn order(&self) -> Vec<String> {
        // Validated: acyclic.
        self.topological(&self.needed()).unwrap_or_default()
    }

    /// The run's input names the flow reads (from its `input` nodes).
    pub fn input_names(&self) -> BTreeSet<String> {
        self.nodes
            .values()
            .flat_map(|n| n.inputs.values())
            .filter(|s| {
                matches!(
                    self.nodes.get(&s.0).map(|n| &n.step),
                    Some(Step::Input { .. })
                )
            })
            .map(|s| s.1.clone())
            .collect()
    }

    /// Kahn's order of `among`; a cycle named when there is one.
    fn topological(&self, among: &BTreeSet<String>) -> Result<Vec<String>, FlowError> {
        let mut waiting: BTreeMap<&str, usize> = among
            .iter()
            .map(|id| {
                let n = self.nodes.get(id).map_or(0, |n| {
                    n.inputs
                        .values()
                        .map(|s| s.0.as_str())
                        .collect::<BTreeSet<_>>()
                        .len()
                });
                (id.as_str(), n)
            })
            .collect();
        let mut ready: BTreeSet<&str> = waiting
            .iter()
            .filter(|(_, &n)| n == 0)
            .map(|(&id, _)| id)
            .collect();
        let mut order = Vec::with_capacity(among.len());
        while let Some(id) = ready.pop_first() {
            order.push(id.to_owned());
            waiting.remove(id);
            for (other, n) in waiting.iter_mut() {
                let feeds = self
                    .nodes
                    .get(*other)
                    .is_some_and(|o| o.inputs.values().any(|s| s.0 == id));
                if feeds {
                    *n -= 1;
                    if *n == 0 {
                        ready.insert(other);
                    }
                }
            }
        }
        if waiting.is_empty() {
            return Ok(order);
        }
        // Walk back from any node left along inputs still waiting until a
        // node repeats: that loop is a cycle.
        let mut path: Vec<&str> = Vec::new();
        let mut at = waiting.keys().next().copied().unwrap_or_default();
        while !path.contains(&at) {
            path.push(at);
            at = self
                .nodes
                .get(at)
                .and_then(|n| {
                    n.inputs
                        .values()
                        .map(|s| s.0.as_str())
                        .find(|s| waiting.contains_key(s))
                })
                .unwrap_or(at);
        }
        let start = path.iter().position(|p| *p == at).unwrap_or(0);
        let mut cycle: Vec<String> = path[start..]
            .iter()
            .rev()
            .map(|s| (*s).to_owned())
            .collect();
        cycle.push(cycle[0].clone());
        Err(FlowError::Cycle(cycle))
    }
}

fn check_inputs(id: &str, node: &Node, nodes: &BTreeMap<String, Node>) -> Result<(), FlowError> {
    let kinds_of = |input: &str, source: &Source, expected: &[Kind]| -> Result<(), FlowError> {
        let Some(from) = nodes.get(&source.0) else {
            return Err(FlowError::DanglingNode {
                node: id.to_owned(),
                input: input.to_owned(),
                from: source.0.clone(),
            });
        };
        let Some(got) = from.step.output(&source.1) else {
            return Err(FlowError::DanglingOutput {
                node: id.to_owned(),
                input: input.to_owned(),
                from: source.0.clone(),
                output: source.1.clone(),
                gives: from.step.outputs(),
            });
        };
        if !expected.contains(&got) {
            return Err(FlowError::Mismatch {
                node: id.to_owned(),
                input: input.to_owned(),
                from: source.0.clone(),
                output: source.1.clone(),
                expected: expected.first().copied().unwrap_or(Kind::Json),
                got,
            });
        }
        Ok(())
    };
    match node.step.inputs() {
        Inputs::Fixed(ports) => {
            let takes = || {
                if ports.is_empty() {
                    "none".to_owned()
                } else {
                    ports.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                }
            };
            for (input, source) in &node.inputs {
                let Some((_, kind)) = ports.iter().find(|(n, _)| n == input) else {
                    return Err(FlowError::UnknownInput {
                        node: id.to_owned(),
                        input: input.clone(),
                        takes: takes(),
                    });
                };
                kinds_of(input, source, std::slice::from_ref(kind))?;
            }
            if let Some((missing, _)) = ports.iter().find(|(n, _)| !node.inputs.contains_key(*n)) {
                return Err(FlowError::MissingInput {
                    node: id.to_owned(),
                    input: (*missing).to_owned(),
                });
            }
        }
        Inputs::Any {
            kinds,
            names,
            python,
        } => {
            for (input, source) in &node.inputs {
                let known = match &names {
                    Some(n) => n.contains(input),
                    None => !python || is_name(input),
                };
                if !known || input.is_empty() {
                    return Err(FlowError::UnknownInput {
                        node: id.to_owned(),
                        input: input.clone(),
                        takes: match &names {
                            Some(n) => format!("its placeholders: {}", n.join(", ")),
                            None => "Python variable names".into(),
                        },
                    });
                }
                kinds_of(input, source, kinds)?;
            }
            if let Some(missing) = names
                .iter()
                .flatten()
                .find(|n| !node.inputs.contains_key(*n))
            {
                return Err(FlowError::MissingInput {
                    node: id.to_owned(),
                    input: missing.clone(),
                });
            }
            if node.inputs.is_empty() && matches!(node.step, Step::Output | Step::Merge { .. }) {
                return Err(FlowError::MissingInput {
                    node: id.to_owned(),
                    input: "(at least one)".into(),
                });
            }
        }
    }
    Ok(())
}

/// A node's state in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its inputs.
    Queued,
    /// Handed out.
    Running,
    /// Finished.
    Done,
    /// Finished with an error.
    Failed,
    /// Not run: no output needs it, or something it needs failed.
    Skipped,
}

/// The order of a run, sans I/O: which nodes may start now, given what
/// finished. The runner starts every node [`Schedule::ready`] hands out at
/// once and reports each end.
#[derive(Debug, Clone)]
pub struct Schedule<'f> {
    flow: &'f Flow,
    status: BTreeMap<String, Status>,
}

impl<'f> Schedule<'f> {
    /// The needed nodes queued, the rest skipped.
    pub fn new(flow: &'f Flow) -> Self {
        let needed = flow.needed();
        let status = flow
            .nodes
            .keys()
            .map(|id| {
                let s = if needed.contains(id) {
                    Status::Queued
                } else {
                    Status::Skipped
                };
                (id.clone(), s)
            })
            .collect();
        Self { flow, status }
    }

    /// The queued nodes whose inputs are all done, now running.
    pub fn ready(&mut self) -> Vec<String> {
        let ready: Vec<String> = self
            .status
            .iter()
            .filter(|(_, s)| **s == Status::Queued)
            .filter(|(id, _)| {
                self.flow.nodes.get(*id).is_some_and(|n| {
                    n.inputs
                        .values()
                        .all(|src| self.status.get(&src.0) == Some(&Status::Done))
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ready {
            self.status.insert(id.clone(), Status::Running);
        }
        ready
    }

    /// `id` finished.
    pub fn done(&mut self, id: &str) {
        if let Some(s) = self.status.get_mut(id) {
            *s = Status::Done;
        }
    }

    /// `id` failed: its queued descendants are skipped (returned, in id
    /// order); other branches go on.
    pub fn failed(&mut self, id: &str) -> Vec<String> {
        if let Some(s) = self.status.get_mut(id) {
            *s = Status::Failed;
        }
        let mut skipped = BTreeSet::new();
        let mut stack = vec![id.to_owned()];
        while let Some(at) = stack.pop() {
            for (other, node) in &self.flow.nodes {
                if node.inputs.values().any(|s| s.0 == at)
                    && self.status.get(other) == Some(&Status::Queued)
                    && skipped.insert(other.clone())
                {
                    stack.push(other.clone());
                }
            }
        }
        for s in &skipped {
            self.status.insert(s.clone(), Status::Skipped);
        }
        skipped.into_iter().collect()
    }

    /// Every node done, failed or skipped.
    pub fn finished(&self) -> bool {
        self.status
            .values()
            .all(|s| !matches!(s, Status::Queued | Status::Running))
    }

    /// A node's state.
    pub fn status(&self, id: &str) -> Option<Status> {
        self.status.get(id).copied()
    }
}
