//! The JSON Lines output against its documentation (tests only): docs/output.md has one field
//! table per line type (`## \`type\`` sections, columns field / type / meaning). Every field a
//! line has must be documented under its type with a type its value fits, and every
//! documented field must be in every line of its type unless the doc marks it optional (and
//! then in at least one of the lines rendered here).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::fixtures;
use super::{FormatSink, JsonSink, Show};

const DOC: &str = include_str!("../../../docs/output.md");

/// A value's JSON type, as a doc's type column names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    /// `u8`, `u16`, `u32`, `u64`: a non-negative integer up to this.
    Unsigned(u64),
    /// `i64`.
    Signed,
    /// `string`.
    Str,
    /// `bool`.
    Bool,
    /// `object`.
    Object,
    /// `array`.
    Array,
    /// `[string]`.
    StrArray,
}

/// A type column: `BASE`, then ` or null`, then `, optional`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FieldType {
    base: Base,
    nullable: bool,
    optional: bool,
}

impl FieldType {
    fn parse(cell: &str) -> Result<Self, String> {
        let (rest, optional) = strip(cell.trim(), ", optional");
        let (rest, nullable) = strip(rest, " or null");
        let base = match rest {
            "u8" => Base::Unsigned(u8::MAX.into()),
            "u16" => Base::Unsigned(u16::MAX.into()),
            "u32" => Base::Unsigned(u32::MAX.into()),
            "u64" => Base::Unsigned(u64::MAX),
            "i64" => Base::Signed,
            "string" => Base::Str,
            "bool" => Base::Bool,
            "object" => Base::Object,
            "array" => Base::Array,
            "[string]" => Base::StrArray,
            other => return Err(format!("unknown type {other:?} in {cell:?}")),
        };
        Ok(FieldType {
            base,
            nullable,
            optional,
        })
    }

    /// Whether `v` is a value of this type.
    fn fits(&self, v: &Value) -> bool {
        match (self.base, v) {
            (_, Value::Null) => self.nullable,
            (Base::Unsigned(max), v) => v.as_u64().is_some_and(|n| n <= max),
            (Base::Signed, v) => v.is_i64(),
            (Base::Str, v) => v.is_string(),
            (Base::Bool, v) => v.is_boolean(),
            (Base::Object, v) => v.is_object(),
            (Base::Array, v) => v.is_array(),
            (Base::StrArray, Value::Array(a)) => a.iter().all(Value::is_string),
            (Base::StrArray, _) => false,
        }
    }
}

fn strip<'a>(s: &'a str, suffix: &str) -> (&'a str, bool) {
    match s.strip_suffix(suffix) {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// Line type → field → its documented type.
type Schema = BTreeMap<String, BTreeMap<String, FieldType>>;

/// The field tables of the doc's `## \`type\`` sections.
fn parse_doc(doc: &str) -> Result<Schema, String> {
    let mut schema = Schema::new();
    let mut section: Option<String> = None;
    for line in doc.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title
                .strip_prefix('`')
                .and_then(|t| t.strip_suffix('`'))
                .map(str::to_owned);
            continue;
        }
        let Some(ty) = &section else { continue };
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let cells: Vec<&str> = row.splitn(3, '|').map(str::trim).collect();
        let [fields, typ, _meaning] = cells[..] else {
            return Err(format!("short table row in `{ty}`: {line}"));
        };
        if fields == "field" || fields.starts_with("---") {
            continue;
        }
        let typ = FieldType::parse(typ).map_err(|e| format!("`{ty}`: {e}"))?;
        let table = schema.entry(ty.clone()).or_default();
        for name in backticked(fields) {
            if table.insert(name.to_owned(), typ).is_some() {
                return Err(format!("`{ty}`: `{name}` documented twice"));
            }
        }
    }
    Ok(schema)
}

/// The `code` spans of a cell.
fn backticked(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

/// Every line type, rendered: meta with and without `--pid`, the fixture records, a summary
/// with only its fixed fields and one with every optional field.
fn rendered() -> Vec<serde_json::Map<String, Value>> {
    let mut sink = JsonSink::new(Vec::new(), Show::ALL);
    for pid in [None, Some(42)] {
        sink.meta(&fixtures::meta(pid)).unwrap();
    }
    fixtures::render(&mut sink);
    for s in [fixtures::summary_plain(), fixtures::summary_full()] {
        sink.summary(&s).unwrap();
    }
    let out = String::from_utf8(sink.into_inner()).unwrap();
    out.lines()
        .map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(m)) => m,
            other => panic!("not a JSON object: {l}: {other:?}"),
        })
        .collect()
}

/// What is wrong between lines and schema; empty when they agree.
fn mismatches(lines: &[serde_json::Map<String, Value>], schema: &Schema) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in lines {
        let Some(ty) = line.get("type").and_then(Value::as_str) else {
            problems.push(format!("a line without a type: {line:?}"));
            continue;
        };
        let Some(table) = schema.get(ty) else {
            problems.push(format!("type `{ty}` has no section in docs/output.md"));
            continue;
        };
        let seen = seen.entry(ty).or_default();
        for (name, value) in line.iter().filter(|(k, _)| *k != "type") {
            seen.insert(name.as_str());
            match table.get(name) {
                None => problems.push(format!("`{ty}`.`{name}` is not documented")),
                Some(t) if !t.fits(value) => {
                    problems.push(format!("`{ty}`.`{name}` = {value} is not a {t:?}"));
                }
                Some(_) => {}
            }
        }
        for (name, t) in table {
            if !t.optional && !line.contains_key(name) {
                problems.push(format!(
                    "`{ty}`.`{name}` is documented but missing: {line:?}"
                ));
            }
        }
    }
    for (ty, table) in schema {
        for name in table.keys() {
            if !seen
                .get(ty.as_str())
                .is_some_and(|s| s.contains(name.as_str()))
            {
                problems.push(format!("`{ty}`.`{name}` is documented but never written"));
            }
        }
    }
    problems
}

#[test]
fn json_lines_match_docs_output_md() {
    let schema = parse_doc(DOC).unwrap();
    let types: Vec<&str> = schema.keys().map(String::as_str).collect();
    assert_eq!(
        types,
        [
            "close",
            "close_wait_leak",
            "meta",
            "reset_sent",
            "summary",
            "transition"
        ]
    );
    let problems = mismatches(&rendered(), &schema);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check itself: a field the doc does not have, a missing one, or a wrong type is found.
#[test]
fn the_check_finds_undocumented_missing_and_mistyped_fields() {
    let schema = parse_doc(DOC).unwrap();
    let mut lines = rendered();
    let i = lines.iter().position(|l| l["type"] == "close").unwrap();
    lines[i].insert("new_field".into(), Value::from(1));
    lines[i].remove("kind");
    lines[i].insert("leaked".into(), Value::from("yes"));
    let problems = mismatches(&lines, &schema);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    for want in [
        "`close`.`new_field` is not documented",
        "`close`.`leaked` = \"yes\" is not a",
        "`close`.`kind` is documented but missing",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{want}: {problems:#?}"
        );
    }
}

#[test]
fn type_columns_parse() {
    let t = FieldType::parse("u32 or null").unwrap();
    assert!(t.nullable && !t.optional);
    assert!(t.fits(&Value::Null) && t.fits(&Value::from(7)));
    assert!(!t.fits(&Value::from(u64::from(u32::MAX) + 1)) && !t.fits(&Value::from(-1)));
    let t = FieldType::parse("u64, optional").unwrap();
    assert!(t.optional && !t.fits(&Value::Null));
    assert!(FieldType::parse("i64").unwrap().fits(&Value::from(-5)));
    assert!(
        FieldType::parse("[string]")
            .unwrap()
            .fits(&serde_json::json!(["A"]))
    );
    assert!(
        !FieldType::parse("[string]")
            .unwrap()
            .fits(&serde_json::json!([1]))
    );
    assert!(FieldType::parse("number").is_err());
}
