//! The YAML file as a tree of located nodes, so that the schema walk can report every error with
//! its line and column. serde-saphyr does the YAML (anchors, aliases, merges); we keep its spans.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// Where a node starts: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    /// Any scalar, as written (numbers and booleans too: the schema decides what they mean).
    Scalar(String),
    Seq(Vec<Node>),
    /// Entries in file order; keys keep their own position for "unknown key" errors.
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

impl Value {
    /// What a user would call this kind of value, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Scalar(_) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

pub fn read(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node {
            pos: Pos { line: 1, column: 1 },
            value: Value::Map(Vec::new()),
        });
    }
    match serde_saphyr::from_str::<Spanned<Raw>>(text) {
        Ok(root) => Ok(root.into()),
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line() as u32,
                    column: l.column() as u32,
                })
                .unwrap_or(Pos { line: 1, column: 1 });
            // serde-saphyr's Display repeats the position and a snippet; keep the first line's
            // message only, we print our own snippet.
            let full = e.to_string();
            let first = full.lines().next().unwrap_or("invalid YAML");
            let message = first
                .split_once(": ")
                .filter(|(head, _)| head.starts_with("line "))
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_else(|| first.to_string());
            Err(SyntaxError { pos, message })
        }
    }
}

/// The shape serde-saphyr deserializes into; turned into [`Node`] right away.
enum Raw {
    Null,
    Scalar(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<String>, Spanned<Raw>)>),
}

impl From<Spanned<Raw>> for Node {
    fn from(s: Spanned<Raw>) -> Self {
        let pos = Pos {
            line: s.referenced.line() as u32,
            column: s.referenced.column() as u32,
        };
        let value = match s.value {
            Raw::Null => Value::Null,
            Raw::Scalar(v) => Value::Scalar(v),
            Raw::Seq(items) => Value::Seq(items.into_iter().map(Node::from).collect()),
            Raw::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let pos = Pos {
                            line: k.referenced.line() as u32,
                            column: k.referenced.column() as u32,
                        };
                        (Key { pos, name: k.value }, Node::from(v))
                    })
                    .collect(),
            ),
        };
        Node { pos, value }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Scalar(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Scalar(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Scalar(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Scalar(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Scalar(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Scalar(v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value::<Spanned<Raw>>()?));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let root = read("a: 1\nb:\n  c: [x, 30s]\n").expect("valid yaml");
        let Value::Map(entries) = root.value else {
            panic!("root is a map")
        };
        assert_eq!(entries[1].0.name, "b");
        assert_eq!(entries[1].0.pos, Pos { line: 2, column: 1 });
        let Value::Map(inner) = &entries[1].1.value else {
            panic!("b is a map")
        };
        let Value::Seq(items) = &inner[0].1.value else {
            panic!("c is a list")
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 3,
                column: 10
            }
        );
        assert!(matches!(&items[1].value, Value::Scalar(s) if s == "30s"));
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = read("a: [1\n").expect_err("unclosed bracket");
        assert_eq!(err.pos.line, 1);
        assert!(err.message.contains("bracket"), "{}", err.message);
    }
}
