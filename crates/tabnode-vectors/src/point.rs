//! Points: ids, and what an upsert carries.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::VectorError;

/// The longest string id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// A point's id: an unsigned integer or a string (Qdrant takes integers and
/// UUID strings; any string of 1 to [`MAX_ID_BYTES`] bytes is taken here).
/// `7` and `"7"` are different ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PointId {
    /// An integer id.
    Num(u64),
    /// A string id.
    Str(String),
}

impl PointId {
    /// A string id, checked.
    ///
    /// # Errors
    /// [`VectorError::BadId`] for an empty or over-long string.
    pub fn string(s: impl Into<String>) -> Result<Self, VectorError> {
        let s = s.into();
        if s.is_empty() || s.len() > MAX_ID_BYTES {
            return Err(VectorError::BadId {
                got: format!("{s:?}"),
            });
        }
        Ok(Self::Str(s))
    }

    /// The id as JSON (what the API echoes).
    pub fn to_json(&self) -> Value {
        match self {
            Self::Num(n) => Value::from(*n),
            Self::Str(s) => Value::from(s.as_str()),
        }
    }

    /// Reads an id from JSON.
    ///
    /// # Errors
    /// [`VectorError::BadId`] for anything but an unsigned integer or a
    /// string of 1 to [`MAX_ID_BYTES`] bytes.
    pub fn from_json(v: &Value) -> Result<Self, VectorError> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .map(Self::Num)
                .ok_or_else(|| VectorError::BadId { got: n.to_string() }),
            Value::String(s) => Self::string(s.clone()),
            other => Err(VectorError::BadId {
                got: other.to_string(),
            }),
        }
    }

    /// The database key: `n:<integer>` or `s:<string>`.
    pub(crate) fn key(&self) -> String {
        match self {
            Self::Num(n) => format!("n:{n}"),
            Self::Str(s) => format!("s:{s}"),
        }
    }

    /// Reads a database key.
    pub(crate) fn from_key(key: &str) -> Option<Self> {
        if let Some(n) = key.strip_prefix("n:") {
            n.parse().ok().map(Self::Num)
        } else {
            key.strip_prefix("s:").map(|s| Self::Str(s.to_owned()))
        }
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Num(n) => write!(f, "{n}"),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Serialize for PointId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Num(n) => s.serialize_u64(*n),
            Self::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for PointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PointId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a point id: an unsigned integer or a string of 1 to {MAX_ID_BYTES} bytes"
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PointId, E> {
                Ok(PointId::Num(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PointId, E> {
                PointId::string(v).map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// A point to upsert, its vector given (the relay embeds texts sent without
/// one before they get here).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPoint {
    /// Its id; a point with the same id is replaced.
    pub id: PointId,
    /// Its vector, any length but zero (stored normalised).
    pub vector: Vec<f32>,
    /// The text it was embedded from, returned with it.
    pub text: Option<String>,
    /// Its payload, returned with it and matched by filters.
    pub payload: Option<Map<String, Value>>,
}

/// `v` scaled to unit length.
///
/// # Errors
/// [`VectorError::BadVector`] for a zero vector or one holding a NaN or an
/// infinity (`what` names it in the message).
pub(crate) fn normalized(
    mut v: Vec<f32>,
    what: &dyn fmt::Display,
) -> Result<Vec<f32>, VectorError> {
    if !v.iter().all(|x| x.is_finite()) {
        return Err(VectorError::BadVector {
            id: what.to_string(),
            why: "a vector's components must be finite numbers",
        });
    }
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(VectorError::BadVector {
            id: what.to_string(),
            why: "a zero vector has no direction to compare by cosine",
        });
    }
    for x in &mut v {
        // The quotient of two finite values below f32::MAX, rounded to f32.
        *x = (f64::from(*x) / norm) as f32;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unsigned_integers_or_short_strings() {
        let ok: Vec<PointId> =
            serde_json::from_str(r#"[7, "7", "a b", 18446744073709551615]"#).expect("ids");
        assert_eq!(
            ok,
            [
                PointId::Num(7),
                PointId::Str("7".into()),
                PointId::Str("a b".into()),
                PointId::Num(u64::MAX)
            ]
        );
        assert_ne!(ok[0], ok[1], "7 and \"7\" are different points");
        for bad in ["-1", "1.5", "\"\"", "null", "[1]", "{}", "true"] {
            assert!(
                serde_json::from_str::<PointId>(bad).is_err(),
                "{bad} is not an id"
            );
            let v: Value = serde_json::from_str(bad).expect("json");
            let e = PointId::from_json(&v).expect_err(bad);
            assert!(
                e.to_string().contains("unsigned integers or strings"),
                "{e}"
            );
        }
        let long = Value::from("x".repeat(MAX_ID_BYTES + 1));
        assert!(PointId::from_json(&long).is_err());
        assert!(PointId::from_json(&Value::from("x".repeat(MAX_ID_BYTES))).is_ok());
    }

    #[test]
    fn keys_round_trip_and_keep_the_kinds_apart() {
        for id in [
            PointId::Num(0),
            PointId::Num(u64::MAX),
            PointId::Str("n:1".into()),
            PointId::Str("é ü".into()),
        ] {
            assert_eq!(PointId::from_key(&id.key()), Some(id.clone()));
        }
        assert_ne!(PointId::Num(1).key(), PointId::Str("1".into()).key());
        assert_eq!(PointId::from_key("x:1"), None);
        assert_eq!(PointId::from_key("n:one"), None);
    }

    #[test]
    fn vectors_are_scaled_to_unit_length_and_zero_is_refused() {
        let v = normalized(vec![3.0, 4.0], &"p").expect("unit");
        assert_eq!(v, [0.6, 0.8]);
        let tiny = normalized(vec![1e-30, 0.0], &"p").expect("tiny but not zero");
        assert_eq!(tiny, [1.0, 0.0]);
        let big = normalized(vec![f32::MAX, f32::MAX], &"p").expect("no overflow");
        assert!((big[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        for (bad, says) in [
            (vec![0.0, 0.0], "zero vector"),
            (vec![f32::NAN, 1.0], "finite"),
            (vec![f32::INFINITY, 1.0], "finite"),
        ] {
            let e = normalized(bad, &"p").expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
