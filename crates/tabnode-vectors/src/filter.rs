//! Payload filters: the part of Qdrant's filter language a query needs.
//!
//! ```json
//! {"must": [{"key": "lang", "match": {"value": "fr"}}],
//!  "should": [{"key": "year", "range": {"gte": 2020}}, {"has_id": [1, "a"]}],
//!  "must_not": [{"is_empty": {"key": "tags"}}]}
//! ```
//!
//! A clause (`must`, `should`, `must_not`) holds one condition or a list;
//! `min_should` is `{"conditions": [..], "min_count": n}`. Conditions:
//! `{"key", "match": {"value"}}` (a string, integer or boolean equal to
//! the field), `{"key", "match": {"any": [..]}}`, `{"key", "match":
//! {"except": [..]}}`, `{"key", "match": {"text": ".."}}` (a substring of a
//! string field), `{"key", "range": {"gt"|"gte"|"lt"|"lte": n}}`,
//! `{"is_empty": {"key"}}` (missing, null or `[]`), `{"is_null": {"key"}}`,
//! `{"has_id": [..]}`, and a nested filter. Keys are paths (`a.b`, `a[].b`);
//! a field holding an array matches when one of its elements does, as in
//! Qdrant.

use serde_json::{Map, Value};

use crate::{PointId, VectorError};

/// Nesting deeper than this is refused (a request must not exhaust the
/// stack).
pub const MAX_DEPTH: usize = 16;
/// Conditions in one filter, counted through its nesting.
pub const MAX_CONDITIONS: usize = 1024;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    must: Vec<Condition>,
    should: Vec<Condition>,
    must_not: Vec<Condition>,
    min_should: Option<(Vec<Condition>, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Match { key: Vec<String>, test: Match },
    Range { key: Vec<String>, range: Range },
    IsEmpty(Vec<String>),
    IsNull(Vec<String>),
    HasId(Vec<PointId>),
    Nested(Box<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
enum Match {
    Value(Value),
    Any(Vec<Value>),
    Except(Vec<Value>),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Range {
    gt: Option<f64>,
    gte: Option<f64>,
    lt: Option<f64>,
    lte: Option<f64>,
}

fn bad(why: impl Into<String>) -> VectorError {
    VectorError::BadFilter(why.into())
}

struct Parser {
    conditions: usize,
}

impl Filter {
    /// Reads a filter.
    ///
    /// # Errors
    /// [`VectorError::BadFilter`] naming what is wrong.
    pub fn parse(v: &Value) -> Result<Self, VectorError> {
        Parser { conditions: 0 }.filter(v, 0)
    }

    /// Whether a point with this id and payload passes.
    pub fn matches(&self, id: &PointId, payload: Option<&Map<String, Value>>) -> bool {
        self.must.iter().all(|c| c.matches(id, payload))
            && (self.should.is_empty() || self.should.iter().any(|c| c.matches(id, payload)))
            && !self.must_not.iter().any(|c| c.matches(id, payload))
            && self
                .min_should
                .as_ref()
                .is_none_or(|(cs, n)| cs.iter().filter(|c| c.matches(id, payload)).count() >= *n)
    }
}

impl Parser {
    fn filter(&mut self, v: &Value, depth: usize) -> Result<Filter, VectorError> {
        if depth > MAX_DEPTH {
            return Err(bad(format!("nested more than {MAX_DEPTH} deep")));
        }
        let Some(o) = v.as_object() else {
            return Err(bad(format!("a filter is an object, not {v}")));
        };
        let mut f = Filter::default();
        for (k, v) in o {
            match k.as_str() {
                "must" => f.must = self.clause(v, depth)?,
                "should" => f.should = self.clause(v, depth)?,
                "must_not" => f.must_not = self.clause(v, depth)?,
                "min_should" => {
                    let conditions = v
                        .get("conditions")
                        .ok_or_else(|| bad("min_should needs conditions"))?;
                    let n = v
                        .get("min_count")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| bad("min_should needs a min_count (an unsigned integer)"))?;
                    let cs = self.clause(conditions, depth)?;
                    f.min_should = Some((cs, usize::try_from(n).unwrap_or(usize::MAX)));
                }
                other => {
                    return Err(bad(format!(
                        "unknown clause {other:?} (must, should, must_not, min_should)"
                    )))
                }
            }
        }
        Ok(f)
    }

    fn clause(&mut self, v: &Value, depth: usize) -> Result<Vec<Condition>, VectorError> {
        match v {
            Value::Array(a) => a.iter().map(|c| self.condition(c, depth)).collect(),
            Value::Object(_) => Ok(vec![self.condition(v, depth)?]),
            Value::Null => Ok(Vec::new()),
            other => Err(bad(format!(
                "a clause is a condition or a list of them, not {other}"
            ))),
        }
    }

    fn condition(&mut self, v: &Value, depth: usize) -> Result<Condition, VectorError> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(bad(format!("more than {MAX_CONDITIONS} conditions")));
        }
        let Some(o) = v.as_object() else {
            return Err(bad(format!("a condition is an object, not {v}")));
        };
        if let Some(ids) = o.get("has_id") {
            let ids = ids
                .as_array()
                .ok_or_else(|| bad("has_id is a list of point ids"))?
                .iter()
                .map(PointId::from_json)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("has_id: {e}")))?;
            return Ok(Condition::HasId(ids));
        }
        for (name, empty) in [("is_empty", true), ("is_null", false)] {
            if let Some(inner) = o.get(name) {
                let key = inner
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{name} needs {{\"key\": \"…\"}}")))?;
                let key = path(key)?;
                return Ok(if empty {
                    Condition::IsEmpty(key)
                } else {
                    Condition::IsNull(key)
                });
            }
        }
        if ["must", "should", "must_not", "min_should"]
            .iter()
            .any(|k| o.contains_key(*k))
        {
            return Ok(Condition::Nested(Box::new(self.filter(v, depth + 1)?)));
        }
        let Some(key) = o.get("key") else {
            return Err(bad(format!(
                "unknown condition {v} (key with match or range, is_empty, is_null, has_id, or a nested filter)"
            )));
        };
        let key = path(
            key.as_str()
                .ok_or_else(|| bad(format!("a key is a string, not {key}")))?,
        )?;
        if let Some(m) = o.get("match") {
            let test = if let Some(v) = m.get("value") {
                Match::Value(scalar(v)?.clone())
            } else if let Some(a) = m.get("any") {
                Match::Any(scalars(a, "any")?)
            } else if let Some(a) = m.get("except") {
                Match::Except(scalars(a, "except")?)
            } else if let Some(t) = m.get("text") {
                Match::Text(
                    t.as_str()
                        .ok_or_else(|| bad("match text is a string"))?
                        .to_owned(),
                )
            } else {
                return Err(bad(format!(
                    "match takes value, any, except or text, not {m}"
                )));
            };
            return Ok(Condition::Match { key, test });
        }
        if let Some(r) = o.get("range") {
            let Some(r) = r.as_object() else {
                return Err(bad("range is an object of gt, gte, lt, lte"));
            };
            let mut range = Range::default();
            for (k, v) in r {
                let n = v
                    .as_f64()
                    .ok_or_else(|| bad(format!("range {k} is a number, not {v}")))?;
                match k.as_str() {
                    "gt" => range.gt = Some(n),
                    "gte" => range.gte = Some(n),
                    "lt" => range.lt = Some(n),
                    "lte" => range.lte = Some(n),
                    other => {
                        return Err(bad(format!("range takes gt, gte, lt, lte, not {other:?}")))
                    }
                }
            }
            return Ok(Condition::Range { key, range });
        }
        Err(bad(format!(
            "the condition on {:?} needs match or range",
            key.join(".")
        )))
    }
}

fn path(key: &str) -> Result<Vec<String>, VectorError> {
    let parts: Vec<String> = key
        .split('.')
        .map(|p| p.strip_suffix("[]").unwrap_or(p).to_owned())
        .collect();
    if key.is_empty() || parts.iter().any(String::is_empty) {
        return Err(bad(format!("{key:?} is not a key path")));
    }
    Ok(parts)
}

fn scalar(v: &Value) -> Result<&Value, VectorError> {
    match v {
        Value::String(_) | Value::Bool(_) => Ok(v),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(v),
        other => Err(bad(format!(
            "match compares strings, integers and booleans, not {other}"
        ))),
    }
}

fn scalars(v: &Value, what: &str) -> Result<Vec<Value>, VectorError> {
    v.as_array()
        .ok_or_else(|| bad(format!("match {what} is a list")))?
        .iter()
        .map(|v| scalar(v).cloned())
        .collect()
}

/// The values at `key` in `payload`, arrays opened at every step.
fn values<'a>(payload: Option<&'a Map<String, Value>>, key: &[String]) -> Vec<&'a Value> {
    let Some((first, rest)) = key.split_first() else {
        return Vec::new();
    };
    let mut at: Vec<&Value> = payload.and_then(|p| p.get(first)).into_iter().collect();
    for part in rest {
        at = at
            .into_iter()
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            })
            .filter_map(|v| v.get(part))
            .collect();
    }
    at.into_iter()
        .flat_map(|v| match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        })
        .collect()
}

/// JSON equality for integers of either sign representation.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_u64().is_some() && x.as_u64() == y.as_u64(),
        },
        _ => a == b,
    }
}

impl Condition {
    fn matches(&self, id: &PointId, payload: Option<&Map<String, Value>>) -> bool {
        match self {
            Self::HasId(ids) => ids.contains(id),
            Self::Nested(f) => f.matches(id, payload),
            Self::IsEmpty(key) => values(payload, key).iter().all(|v| v.is_null()),
            Self::IsNull(key) => {
                // The field itself is null (not missing, not an array).
                let (last, parents) = key
                    .split_last()
                    .map_or((None, &[][..]), |(l, p)| (Some(l), p));
                let holders: Vec<&Map<String, Value>> = if parents.is_empty() {
                    payload.into_iter().collect()
                } else {
                    values(payload, parents)
                        .into_iter()
                        .filter_map(Value::as_object)
                        .collect()
                };
                holders
                    .iter()
                    .any(|h| last.and_then(|l| h.get(l)).is_some_and(Value::is_null))
            }
            Self::Match { key, test } => {
                let vs = values(payload, key);
                match test {
                    Match::Value(want) => vs.iter().any(|v| same(v, want)),
                    Match::Any(wants) => vs.iter().any(|v| wants.iter().any(|w| same(v, w))),
                    Match::Except(nots) => vs.iter().all(|v| !nots.iter().any(|w| same(v, w))),
                    Match::Text(t) => vs
                        .iter()
                        .any(|v| v.as_str().is_some_and(|s| s.contains(t.as_str()))),
                }
            }
            Self::Range { key, range } => values(payload, key).iter().any(|v| {
                v.as_f64().is_some_and(|x| {
                    range.gt.is_none_or(|b| x > b)
                        && range.gte.is_none_or(|b| x >= b)
                        && range.lt.is_none_or(|b| x < b)
                        && range.lte.is_none_or(|b| x <= b)
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn passes(filter: Value, id: u64, payload: &Map<String, Value>) -> bool {
        Filter::parse(&filter)
            .expect("parses")
            .matches(&PointId::Num(id), Some(payload))
    }

    #[test]
    fn conditions_follow_qdrant() {
        let doc = p(json!({
            "lang": "fr", "year": 2021, "tags": ["a", "b"], "draft": false,
            "author": {"name": "Ada", "langs": ["en", "fr"]},
            "refs": [{"n": 1}, {"n": 5}], "none": null, "empty": [],
            "body": "the quick brown fox"
        }));
        for (f, want) in [
            (
                json!({"must": {"key": "lang", "match": {"value": "fr"}}}),
                true,
            ),
            (
                json!({"must": [{"key": "lang", "match": {"value": "en"}}]}),
                false,
            ),
            (
                json!({"must": {"key": "year", "match": {"value": 2021}}}),
                true,
            ),
            (
                json!({"must": {"key": "draft", "match": {"value": false}}}),
                true,
            ),
            (
                json!({"must": {"key": "tags", "match": {"value": "b"}}}),
                true,
            ),
            (
                json!({"must": {"key": "tags", "match": {"any": ["x", "a"]}}}),
                true,
            ),
            (
                json!({"must": {"key": "tags", "match": {"except": ["a"]}}}),
                false,
            ),
            (
                json!({"must": {"key": "lang", "match": {"except": ["en", "de"]}}}),
                true,
            ),
            (
                json!({"must": {"key": "author.name", "match": {"value": "Ada"}}}),
                true,
            ),
            (
                json!({"must": {"key": "author.langs", "match": {"value": "en"}}}),
                true,
            ),
            (
                json!({"must": {"key": "refs[].n", "range": {"gte": 5}}}),
                true,
            ),
            (
                json!({"must": {"key": "refs[].n", "range": {"gt": 5}}}),
                false,
            ),
            (
                json!({"must": {"key": "year", "range": {"gte": 2020, "lt": 2022}}}),
                true,
            ),
            (
                json!({"must": {"key": "year", "range": {"lt": 2021}}}),
                false,
            ),
            (json!({"must": {"key": "lang", "range": {"gt": 0}}}), false),
            (
                json!({"must": {"key": "body", "match": {"text": "brown"}}}),
                true,
            ),
            (json!({"must": {"is_empty": {"key": "empty"}}}), true),
            (json!({"must": {"is_empty": {"key": "missing"}}}), true),
            (json!({"must": {"is_empty": {"key": "none"}}}), true),
            (json!({"must": {"is_empty": {"key": "tags"}}}), false),
            (json!({"must": {"is_null": {"key": "none"}}}), true),
            (json!({"must": {"is_null": {"key": "missing"}}}), false),
            (json!({"must": {"has_id": [3, "x"]}}), true),
            (json!({"must": {"has_id": ["3"]}}), false),
            (
                json!({"should": [{"key": "lang", "match": {"value": "en"}}, {"key": "year", "match": {"value": 2021}}]}),
                true,
            ),
            (
                json!({"should": [{"key": "lang", "match": {"value": "en"}}]}),
                false,
            ),
            (
                json!({"must_not": {"key": "lang", "match": {"value": "fr"}}}),
                false,
            ),
            (
                json!({"must_not": [{"key": "lang", "match": {"value": "en"}}]}),
                true,
            ),
            (
                json!({"min_should": {"conditions": [
                {"key": "lang", "match": {"value": "fr"}},
                {"key": "draft", "match": {"value": true}},
                {"key": "year", "match": {"value": 2021}}], "min_count": 2}}),
                true,
            ),
            (
                json!({"min_should": {"conditions": [
                {"key": "lang", "match": {"value": "fr"}},
                {"key": "draft", "match": {"value": true}}], "min_count": 2}}),
                false,
            ),
            (
                json!({"must": [{"should": [{"has_id": [9]}, {"key": "lang", "match": {"value": "fr"}}]}]}),
                true,
            ),
            (json!({}), true),
        ] {
            assert_eq!(passes(f.clone(), 3, &doc), want, "{f}");
        }
        let f = Filter::parse(&json!({"must": {"key": "lang", "match": {"value": "fr"}}}))
            .expect("parses");
        assert!(!f.matches(&PointId::Num(1), None), "no payload, no field");
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for (f, says) in [
            (json!([1]), "a filter is an object"),
            (json!({"maybe": []}), "unknown clause \"maybe\""),
            (json!({"must": 3}), "a clause is a condition"),
            (json!({"must": [{"key": "a"}]}), "needs match or range"),
            (
                json!({"must": [{"key": "a", "match": {"value": 1.5}}]}),
                "strings, integers and booleans",
            ),
            (
                json!({"must": [{"key": "a", "match": {"like": "x"}}]}),
                "match takes value, any, except or text",
            ),
            (
                json!({"must": [{"key": "a", "range": {"gt": "x"}}]}),
                "range gt is a number",
            ),
            (
                json!({"must": [{"key": "a", "range": {"near": 1}}]}),
                "not \"near\"",
            ),
            (
                json!({"must": [{"key": "a..b", "match": {"value": 1}}]}),
                "not a key path",
            ),
            (json!({"must": [{"has_id": [-1]}]}), "has_id"),
            (json!({"must": [{"is_empty": {}}]}), "is_empty needs"),
            (json!({"must": [{"foo": 1}]}), "unknown condition"),
            (json!({"min_should": {"conditions": []}}), "min_count"),
        ] {
            let e = Filter::parse(&f).expect_err("refused");
            assert!(e.to_string().contains(says), "{f}: {e}");
        }
        let mut deep = json!({"must": {"key": "a", "match": {"value": 1}}});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"must": [deep]});
        }
        let e = Filter::parse(&deep).expect_err("too deep");
        assert!(e.to_string().contains("nested more than"), "{e}");
        let wide = json!({"should": vec![json!({"has_id": [1]}); MAX_CONDITIONS + 1]});
        let e = Filter::parse(&wide).expect_err("too many");
        assert!(e.to_string().contains("more than 1024 conditions"), "{e}");
    }
}
