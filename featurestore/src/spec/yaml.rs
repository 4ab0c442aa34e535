//! A YAML reader that keeps the line and column of every node and enforces limits.
//!
//! Feature repos are untrusted input. This reader builds a small tree ([`Node`]) from
//! saphyr's event stream and stops with a located error as soon as the input passes a
//! bound: nesting depth, node count (aliases count with their full expansion, so an
//! alias bomb fails after a bounded amount of work), scalar size and document count.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::limits::Limits;

/// A position in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    /// Line, starting at 1.
    pub line: u32,
    /// Column, starting at 1.
    pub col: u32,
}

impl Loc {
    fn from_span(span: &Span) -> Self {
        Self {
            line: span.start.line() as u32,
            col: span.start.col() as u32 + 1,
        }
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// What the node holds.
    pub value: Value,
    /// Where it starts.
    pub loc: Loc,
}

/// The shape of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A scalar as written, and whether it was plain (unquoted), so that `null`, `~`
    /// and empty plain scalars can be told from the string `"null"`.
    Scalar {
        /// The text.
        text: String,
        /// True when unquoted and not a block scalar.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping in source order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// True for a plain `null`, `~`, `Null`, `NULL` or empty scalar.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A short name of the node's shape, for error messages.
    pub(crate) fn shape(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn count(&self) -> usize {
        match &self.value {
            Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(pairs) => {
                1 + pairs
                    .iter()
                    .map(|(k, v)| k.count() + v.count())
                    .sum::<usize>()
            }
        }
    }
}

/// A YAML problem at a position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct YamlError {
    /// Where.
    pub loc: Loc,
    /// What.
    pub message: String,
    /// What to write instead, when there is a useful suggestion.
    pub hint: Option<String>,
}

impl YamlError {
    fn new(loc: Loc, message: impl Into<String>, hint: Option<&str>) -> Self {
        Self {
            loc,
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }
}

enum Frame {
    Seq {
        loc: Loc,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        loc: Loc,
        anchor: usize,
        pairs: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Parse every document of `text`. Empty documents are skipped.
pub(crate) fn parse_documents(text: &str, limits: &Limits) -> Result<Vec<Node>, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut nodes = 0usize;
    let mut doc_root: Option<Node> = None;

    while let Some(item) = parser.next_event() {
        let (event, span) = item.map_err(|e| {
            let m = e.marker();
            let loc = Loc {
                line: m.line() as u32,
                col: m.col() as u32 + 1,
            };
            if e.info().contains("recursion limit") {
                // The scanner looks ahead and meets its own bound on `[`/`{` nesting
                // before our depth check sees the events.
                return YamlError::new(
                    loc,
                    format!("nesting deeper than {} levels", limits.max_depth),
                    Some("feature definitions need only a few levels; flatten this value"),
                );
            }
            YamlError::new(
                loc,
                format!("malformed YAML: {}", e.info()),
                Some("check the indentation and quoting near this position"),
            )
        })?;
        let loc = Loc::from_span(&span);
        let complete: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                if let Some(root) = doc_root.take() {
                    if docs.len() >= limits.max_documents_per_file {
                        return Err(YamlError::new(
                            loc,
                            format!(
                                "more than {} documents in one file",
                                limits.max_documents_per_file
                            ),
                            Some("split the definitions over several files"),
                        ));
                    }
                    docs.push(root);
                }
                None
            }
            Event::Scalar(text, style, anchor, _tag) => {
                if text.len() > limits.max_scalar_bytes {
                    return Err(YamlError::new(
                        loc,
                        format!(
                            "a value of {} bytes is over the limit of {} bytes",
                            text.len(),
                            limits.max_scalar_bytes
                        ),
                        None,
                    ));
                }
                nodes += 1;
                Some((
                    Node {
                        value: Value::Scalar {
                            text: text.into_owned(),
                            plain: style == ScalarStyle::Plain,
                        },
                        loc,
                    },
                    anchor,
                ))
            }
            Event::Alias(id) => {
                let Some((node, count)) = anchors.get(&id) else {
                    return Err(YamlError::new(loc, "alias to an unknown anchor", None));
                };
                nodes += count;
                if nodes > limits.max_yaml_nodes {
                    return Err(over_nodes(loc, limits, true));
                }
                let mut node = node.clone();
                node.loc = loc;
                Some((node, 0))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= limits.max_depth {
                    return Err(YamlError::new(
                        loc,
                        format!("nesting deeper than {} levels", limits.max_depth),
                        Some("feature definitions need only a few levels; flatten this value"),
                    ));
                }
                nodes += 1;
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        loc,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        loc,
                        anchor,
                        pairs: Vec::new(),
                        key: None,
                    }
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { loc, anchor, items }) => Some((
                    Node {
                        value: Value::Seq(items),
                        loc,
                    },
                    anchor,
                )),
                Some(Frame::Map {
                    loc, anchor, pairs, ..
                }) => Some((
                    Node {
                        value: Value::Map(pairs),
                        loc,
                    },
                    anchor,
                )),
                None => return Err(YamlError::new(loc, "unbalanced YAML structure", None)),
            },
        };
        if nodes > limits.max_yaml_nodes {
            return Err(over_nodes(loc, limits, false));
        }
        let Some((node, anchor)) = complete else {
            continue;
        };
        if anchor != 0 {
            let count = node.count();
            anchors.insert(anchor, (node.clone(), count));
        }
        match stack.last_mut() {
            None => doc_root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { pairs, key, .. }) => match key.take() {
                None => {
                    if !matches!(node.value, Value::Scalar { .. }) {
                        return Err(YamlError::new(
                            node.loc,
                            format!("a mapping key must be a scalar, found {}", node.shape()),
                            None,
                        ));
                    }
                    if let Value::Scalar { text, .. } = &node.value
                        && let Some((prev, _)) = pairs.iter().find(
                            |(k, _)| matches!(&k.value, Value::Scalar { text: t, .. } if t == text),
                        )
                    {
                        return Err(YamlError::new(
                            node.loc,
                            format!("duplicate key `{text}` (first at line {})", prev.loc.line),
                            Some("each key may appear once in a mapping"),
                        ));
                    }
                    *key = Some(node);
                }
                Some(k) => pairs.push((k, node)),
            },
        }
    }
    Ok(docs)
}

fn over_nodes(loc: Loc, limits: &Limits, alias: bool) -> YamlError {
    YamlError::new(
        loc,
        format!(
            "more than {} YAML nodes in one file{}",
            limits.max_yaml_nodes,
            if alias {
                " after expanding aliases (an alias bomb?)"
            } else {
                ""
            }
        ),
        Some("write fewer, smaller documents, and avoid aliases that expand to large trees"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<Node>, YamlError> {
        parse_documents(s, &Limits::default())
    }

    #[test]
    fn keeps_locations() {
        let docs = parse("kind: Entity\nname: user\n---\nkind: Source\n").unwrap();
        assert_eq!(docs.len(), 2);
        let Value::Map(pairs) = &docs[0].value else {
            panic!()
        };
        assert_eq!(pairs[1].1.loc, Loc { line: 2, col: 7 });
        assert_eq!(docs[1].loc.line, 4);
    }

    #[test]
    fn rejects_duplicate_keys() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.loc.line, 3);
        assert!(e.message.contains("duplicate key `a`"));
    }

    #[test]
    fn rejects_deep_nesting() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("nesting"), "{e:?}");
        let mut block = String::new();
        for i in 0..200 {
            block.push_str(&" ".repeat(i * 2));
            block.push_str("a:\n");
        }
        assert!(parse(&block).unwrap_err().message.contains("nesting"));
    }

    #[test]
    fn alias_bomb_fails_fast() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..20 {
            let prev = format!("*a{}", i - 1);
            s.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                std::iter::repeat_n(prev.as_str(), 10)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let t = std::time::Instant::now();
        let e = parse(&s).unwrap_err();
        assert!(e.message.contains("alias bomb"), "{e:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn small_aliases_work() {
        let docs = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        let Value::Map(pairs) = &docs[0].value else {
            panic!()
        };
        assert!(matches!(pairs[1].1.value, Value::Map(_)));
    }

    #[test]
    fn malformed_yaml_is_located() {
        let e = parse("kind: Entity\nname: [a, b\n").unwrap_err();
        assert!(e.message.starts_with("malformed YAML"), "{e:?}");
        assert!(e.loc.line >= 2);
    }
}
