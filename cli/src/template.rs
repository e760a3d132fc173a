//! The `weir consume --format` template: literal text with `{key}`, `{value}`, `{offset}`,
//! `{partition}`, `{timestamp}` (ms since the epoch) and `{topic}`; `\n`, `\t` and `\\` are
//! escapes, `{{` and `}}` literal braces. Parsed once, then applied to each record.

use anyhow::{bail, Result};
use weir_client::ConsumerRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Key,
    Value,
    Offset,
    Partition,
    Timestamp,
    Topic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek().copied()) {
                ('{', Some('{')) | ('}', Some('}')) => {
                    chars.next();
                    literal.push(c);
                }
                ('\\', Some(escaped @ ('n' | 't' | '\\'))) => {
                    chars.next();
                    literal.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        _ => '\\',
                    });
                }
                ('{', _) => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    let part = match name.as_str() {
                        "key" => Part::Key,
                        "value" => Part::Value,
                        "offset" => Part::Offset,
                        "partition" => Part::Partition,
                        "timestamp" => Part::Timestamp,
                        "topic" => Part::Topic,
                        _ => bail!(
                            "--format: unknown field {{{name}}} (known: {{key}} {{value}} {{offset}} \
                             {{partition}} {{timestamp}} {{topic}})"
                        ),
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                }
                ('}', _) => bail!("--format: unmatched '}}' (write '}}}}' for a brace)"),
                _ => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// Appends the rendered record (bytes of key and value as they are) to `out`.
    pub fn render(&self, record: &ConsumerRecord, out: &mut Vec<u8>) {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Part::Key => out.extend_from_slice(record.key.as_deref().unwrap_or_default()),
                Part::Value => out.extend_from_slice(record.value.as_deref().unwrap_or_default()),
                Part::Offset => out.extend_from_slice(record.offset.to_string().as_bytes()),
                Part::Partition => out.extend_from_slice(record.partition.to_string().as_bytes()),
                Part::Timestamp => out.extend_from_slice(record.timestamp_ms.to_string().as_bytes()),
                Part::Topic => out.extend_from_slice(record.topic.as_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 17,
            timestamp_ms: 1_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: Vec::new(),
        }
    }

    fn render(template: &str, record: &ConsumerRecord) -> String {
        let mut out = Vec::new();
        Template::parse(template).unwrap().render(record, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_escapes_and_braces() {
        let record = record();
        assert_eq!(render("{value}", &record), "v");
        assert_eq!(
            render("{topic}/{partition}@{offset} {timestamp} {key}={value}", &record),
            "t/2@17 1000 k=v"
        );
        assert_eq!(render("{{{key}}}\\t|\\n", &record), "{k}\t|\n");
        let keyless = ConsumerRecord { key: None, ..record };
        assert_eq!(render("[{key}]", &keyless), "[]");
        assert!(Template::parse("{nope}").is_err());
        assert!(Template::parse("a}b").is_err());
    }
}
