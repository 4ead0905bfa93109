//! Metadata filters: what the gateway checks before fanning a filtered search out, the
//! readable syntax and the JSON form the CLI takes, and how dates are read (the same way
//! when a document is indexed and when a filter names a date).
//!
//! The readable syntax is a list of conditions that must all hold:
//! `team=hr` (equals), `team!=hr`, `team=hr,legal` (one of), `year>=2020`, `year<2024`,
//! `published>=2024-01-01`, `reviewed?` (exists), `!reviewed?` (absent). A value is a number
//! when it reads as one, `true`/`false` a boolean, a day or RFC 3339 time a date in a range,
//! anything else text; double quotes force text (`code="007"`).
//! The JSON form nests: `{"all": [..]}`, `{"any": [..]}`, `{"not": {..}}`,
//! `{"field": "team", "equals": "hr"}`, `{"field": "team", "one_of": ["hr", "legal"]}`,
//! `{"field": "year", "range": {"gte": 2020, "lt": 2024}}`, `{"field": "x", "exists": true}`.

use crate::collections::FieldKinds;
use quarry_proto::v1::{
    field_condition::Test, filter::Kind, filter_value::Value, FieldCondition, Filter, FilterList,
    FilterRange, FilterValue, FilterValues,
};

/// Deepest nesting of all/any/not.
pub const MAX_DEPTH: usize = 16;
/// Most conditions and values in one filter.
pub const MAX_NODES: usize = 1024;
/// Longest field name.
pub const MAX_FIELD_BYTES: usize = 256;

/// A filter refused: the message names the field at fault (`filter` or `filter: <field>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    pub message: String,
}

fn refuse(field: Option<&str>, reason: impl std::fmt::Display) -> FilterError {
    let message = match field {
        Some(field) => format!("filter: {}: {reason}", clip(field)),
        None => format!("filter: {reason}"),
    };
    FilterError { message }
}

fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A date or time as µs since the Unix epoch: RFC 3339, or a day (`YYYY-MM-DD`, midnight
/// UTC). `None` for anything else.
pub fn parse_date(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let text = text.trim();
    if text.len() < 10 || !text.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    if let Ok(moment) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Some((moment.unix_timestamp_nanos() / 1000) as i64);
    }
    let day_format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(text, &day_format).ok()?;
    Some(day.midnight().assume_utc().unix_timestamp() * 1_000_000)
}

/// Checks a filter's shape: known kinds, named fields, ranges of numbers or dates with
/// bounds of one type, readable dates, bounded size. The retriever checks it again.
pub fn validate(filter: &Filter) -> Result<(), FilterError> {
    let mut nodes = 0;
    validate_node(filter, 0, &mut nodes)
}

fn validate_node(filter: &Filter, depth: usize, nodes: &mut usize) -> Result<(), FilterError> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(refuse(None, format!("more than {MAX_NODES} conditions")));
    }
    if depth > MAX_DEPTH {
        return Err(refuse(None, format!("nested deeper than {MAX_DEPTH}")));
    }
    match &filter.kind {
        None => Err(refuse(None, "a filter needs one of all, any, not or field")),
        Some(Kind::All(list)) | Some(Kind::Any(list)) => {
            for inner in &list.filters {
                validate_node(inner, depth + 1, nodes)?;
            }
            Ok(())
        }
        Some(Kind::Not(inner)) => validate_node(inner, depth + 1, nodes),
        Some(Kind::Field(condition)) => validate_condition(condition, nodes),
    }
}

fn validate_condition(condition: &FieldCondition, nodes: &mut usize) -> Result<(), FilterError> {
    let field = condition.field.as_str();
    if field.trim().is_empty() {
        return Err(refuse(None, "field: must name a metadata field"));
    }
    if field.len() > MAX_FIELD_BYTES {
        return Err(refuse(
            Some(field),
            format!("field names are at most {MAX_FIELD_BYTES} bytes"),
        ));
    }
    if field.starts_with('.') || field.ends_with('.') || field.contains("..") {
        return Err(refuse(Some(field), "empty part in a dotted field name"));
    }
    match &condition.test {
        None => Err(refuse(
            Some(field),
            "a condition needs one of equals, one_of, range or exists",
        )),
        Some(Test::Equals(value)) => check_value(field, value).map(|_| ()),
        Some(Test::OneOf(values)) => {
            if values.values.is_empty() {
                return Err(refuse(Some(field), "one_of: needs at least one value"));
            }
            *nodes += values.values.len();
            if *nodes > MAX_NODES {
                return Err(refuse(None, format!("more than {MAX_NODES} conditions")));
            }
            for value in &values.values {
                check_value(field, value)?;
            }
            Ok(())
        }
        Some(Test::Range(range)) => range_kind(field, range).map(|_| ()),
        Some(Test::Exists(_)) => Ok(()),
    }
}

/// The kind of a value, checked (a date must read as one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Text,
    Number,
    Boolean,
    Date,
}

fn check_value(field: &str, value: &FilterValue) -> Result<ValueKind, FilterError> {
    match &value.value {
        None => Err(refuse(
            Some(field),
            "a value needs one of text, number, boolean or date",
        )),
        Some(Value::Text(_)) => Ok(ValueKind::Text),
        Some(Value::Number(number)) if !number.is_finite() => {
            Err(refuse(Some(field), "numbers must be finite"))
        }
        Some(Value::Number(_)) => Ok(ValueKind::Number),
        Some(Value::Boolean(_)) => Ok(ValueKind::Boolean),
        Some(Value::Date(text)) => match parse_date(text) {
            Some(_) => Ok(ValueKind::Date),
            None => Err(refuse(
                Some(field),
                format!("{:?} is not a date (RFC 3339 or YYYY-MM-DD)", clip(text)),
            )),
        },
    }
}

/// A range's kind: every bound a number, or every bound a date; at least one bound.
pub fn range_kind(field: &str, range: &FilterRange) -> Result<ValueKind, FilterError> {
    let mut kind = None;
    for bound in [&range.gt, &range.gte, &range.lt, &range.lte]
        .into_iter()
        .flatten()
    {
        let bound_kind = check_value(field, bound)?;
        if !matches!(bound_kind, ValueKind::Number | ValueKind::Date) {
            return Err(refuse(
                Some(field),
                "range: bounds must be numbers or dates",
            ));
        }
        if kind.is_some_and(|kind| kind != bound_kind) {
            return Err(refuse(Some(field), "range: bounds mix numbers and dates"));
        }
        kind = Some(bound_kind);
    }
    if range.gt.is_some() && range.gte.is_some() || range.lt.is_some() && range.lte.is_some() {
        return Err(refuse(
            Some(field),
            "range: at most one lower bound (gt or gte) and one upper bound (lt or lte)",
        ));
    }
    kind.ok_or_else(|| refuse(Some(field), "range: needs at least one bound"))
}

/// Checks that each condition compares its field with a kind of value the field has held
/// in the collection (`fields`, recorded at ingest): `year="2020"` against a field that
/// only ever held numbers is refused, naming the field, instead of matching nothing. A
/// field no document has had yet is not checked; `exists` never is.
pub fn check_kinds(
    filter: &Filter,
    fields: &std::collections::BTreeMap<String, FieldKinds>,
    collection: &str,
) -> Result<(), FilterError> {
    match &filter.kind {
        Some(Kind::All(list)) | Some(Kind::Any(list)) => list
            .filters
            .iter()
            .try_for_each(|inner| check_kinds(inner, fields, collection)),
        Some(Kind::Not(inner)) => check_kinds(inner, fields, collection),
        Some(Kind::Field(condition)) => {
            let Some(held) = fields.get(&condition.field).copied() else {
                return Ok(());
            };
            let wanted: Vec<FieldKinds> = match &condition.test {
                Some(Test::Equals(value)) => value_kind(value).into_iter().collect(),
                Some(Test::OneOf(values)) => values.values.iter().filter_map(value_kind).collect(),
                Some(Test::Range(range)) => [&range.gt, &range.gte, &range.lt, &range.lte]
                    .into_iter()
                    .flatten()
                    .filter_map(value_kind)
                    .take(1)
                    .collect(),
                Some(Test::Exists(_)) | None => Vec::new(),
            };
            match wanted.iter().find(|kind| !held.contains(**kind)) {
                Some(kind) => Err(refuse(
                    Some(&condition.field),
                    format!(
                        "compared with a {}, but in collection {collection:?} it holds {} values",
                        kind.name(),
                        held.describe()
                    ),
                )),
                None => Ok(()),
            }
        }
        None => Ok(()),
    }
}

fn value_kind(value: &FilterValue) -> Option<FieldKinds> {
    match &value.value {
        Some(Value::Text(_)) => Some(FieldKinds::TEXT),
        Some(Value::Number(_)) => Some(FieldKinds::NUMBER),
        Some(Value::Boolean(_)) => Some(FieldKinds::BOOLEAN),
        Some(Value::Date(_)) => Some(FieldKinds::DATE),
        None => None,
    }
}

/// Reads `--filter`: the JSON form when it starts with `{`, the readable syntax otherwise.
pub fn parse(text: &str) -> Result<Filter, FilterError> {
    let trimmed = text.trim();
    let filter = if trimmed.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(trimmed)
            .map_err(|error| refuse(None, format!("not JSON: {error}")))?;
        from_json(&json, 0)?
    } else {
        parse_readable(trimmed)?
    };
    validate(&filter)?;
    Ok(filter)
}

fn field_filter(field: &str, test: Test) -> Filter {
    Filter {
        kind: Some(Kind::Field(FieldCondition {
            field: field.to_string(),
            test: Some(test),
        })),
    }
}

fn negate(filter: Filter) -> Filter {
    Filter {
        kind: Some(Kind::Not(Box::new(filter))),
    }
}

fn parse_readable(text: &str) -> Result<Filter, FilterError> {
    let mut conditions = Vec::new();
    for word in split_words(text)? {
        conditions.push(parse_condition(&word)?);
    }
    if conditions.is_empty() {
        return Err(refuse(None, "empty"));
    }
    if conditions.len() == 1 {
        return Ok(conditions.remove(0));
    }
    Ok(Filter {
        kind: Some(Kind::All(FilterList {
            filters: conditions,
        })),
    })
}

/// Splits on spaces outside double quotes, leaving out empty words.
fn split_words(text: &str) -> Result<Vec<String>, FilterError> {
    let (words, unclosed) = split_unquoted(text, char::is_whitespace);
    if unclosed {
        return Err(refuse(None, "unclosed double quote"));
    }
    Ok(words.into_iter().filter(|word| !word.is_empty()).collect())
}

/// Pieces of `text` between `separator`s outside double quotes (quotes kept), and whether
/// a quote was left open.
fn split_unquoted(text: &str, separator: impl Fn(char) -> bool) -> (Vec<String>, bool) {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for character in text.chars() {
        if character == '"' {
            quoted = !quoted;
            current.push(character);
        } else if separator(character) && !quoted {
            pieces.push(std::mem::take(&mut current));
        } else {
            current.push(character);
        }
    }
    pieces.push(current);
    (pieces, quoted)
}

fn parse_condition(word: &str) -> Result<Filter, FilterError> {
    if let Some(field) = word.strip_suffix('?') {
        let (field, present) = match field.strip_prefix('!') {
            Some(field) => (field, false),
            None => (field, true),
        };
        return Ok(field_filter(field, Test::Exists(present)));
    }
    // Longest operators first, so `>=` is not read as `>`.
    for operator in ["!=", ">=", "<=", "=", ">", "<"] {
        let Some(position) = word.find(operator) else {
            continue;
        };
        let (field, value) = (&word[..position], &word[position + operator.len()..]);
        if field.is_empty() {
            return Err(refuse(
                None,
                format!("{:?}: no field before {operator}", clip(word)),
            ));
        }
        if value.is_empty() {
            return Err(refuse(Some(field), format!("no value after {operator}")));
        }
        return match operator {
            "=" | "!=" => {
                let values: Vec<FilterValue> = split_values(value)
                    .into_iter()
                    .map(|part| readable_value(&part, false))
                    .collect();
                let test = match values.len() {
                    1 => Test::Equals(values.into_iter().next().unwrap_or_default()),
                    _ => Test::OneOf(FilterValues { values }),
                };
                let filter = field_filter(field, test);
                Ok(match operator {
                    "!=" => negate(filter),
                    _ => filter,
                })
            }
            _ => {
                let bound = Some(readable_value(value, true));
                let mut range = FilterRange::default();
                match operator {
                    ">" => range.gt = bound,
                    ">=" => range.gte = bound,
                    "<" => range.lt = bound,
                    _ => range.lte = bound,
                }
                Ok(field_filter(field, Test::Range(range)))
            }
        };
    }
    Err(refuse(
        None,
        format!(
            "{:?}: expected field=value, field!=value, field>=value (or >, <, <=), field? or !field?",
            clip(word)
        ),
    ))
}

/// `a,b,"c,d"` → a, b, c,d (commas inside quotes kept).
fn split_values(text: &str) -> Vec<String> {
    split_unquoted(text, |character| character == ',').0
}

/// A value of the readable syntax; `in_range`: a date-looking value is a date.
fn readable_value(text: &str, in_range: bool) -> FilterValue {
    let value = if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        Value::Text(text[1..text.len() - 1].to_string())
    } else if text == "true" || text == "false" {
        Value::Boolean(text == "true")
    } else if let Some(number) = text.parse::<f64>().ok().filter(|number| number.is_finite()) {
        Value::Number(number)
    } else if in_range && parse_date(text).is_some() {
        Value::Date(text.to_string())
    } else {
        Value::Text(text.to_string())
    };
    FilterValue { value: Some(value) }
}

fn from_json(json: &serde_json::Value, depth: usize) -> Result<Filter, FilterError> {
    if depth > MAX_DEPTH {
        return Err(refuse(None, format!("nested deeper than {MAX_DEPTH}")));
    }
    let object = json
        .as_object()
        .ok_or_else(|| refuse(None, "each filter is a JSON object"))?;
    let list = |value: &serde_json::Value| -> Result<FilterList, FilterError> {
        let items = value
            .as_array()
            .ok_or_else(|| refuse(None, "all and any take an array of filters"))?;
        Ok(FilterList {
            filters: items
                .iter()
                .map(|item| from_json(item, depth + 1))
                .collect::<Result<_, _>>()?,
        })
    };
    if let Some(items) = object.get("all") {
        return Ok(Filter {
            kind: Some(Kind::All(list(items)?)),
        });
    }
    if let Some(items) = object.get("any") {
        return Ok(Filter {
            kind: Some(Kind::Any(list(items)?)),
        });
    }
    if let Some(inner) = object.get("not") {
        return Ok(negate(from_json(inner, depth + 1)?));
    }
    let Some(field) = object.get("field").and_then(|field| field.as_str()) else {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        return Err(refuse(
            None,
            format!("unknown operator in {keys:?}: expected all, any, not or field"),
        ));
    };
    let test = if let Some(value) = object.get("equals") {
        Test::Equals(json_value(field, value, false)?)
    } else if let Some(values) = object.get("one_of") {
        let values = values
            .as_array()
            .ok_or_else(|| refuse(Some(field), "one_of takes an array"))?;
        Test::OneOf(FilterValues {
            values: values
                .iter()
                .map(|value| json_value(field, value, false))
                .collect::<Result<_, _>>()?,
        })
    } else if let Some(bounds) = object.get("range") {
        let bounds = bounds
            .as_object()
            .ok_or_else(|| refuse(Some(field), "range takes an object of gt, gte, lt, lte"))?;
        let mut range = FilterRange::default();
        for (name, bound) in bounds {
            let bound = Some(json_value(field, bound, true)?);
            match name.as_str() {
                "gt" => range.gt = bound,
                "gte" => range.gte = bound,
                "lt" => range.lt = bound,
                "lte" => range.lte = bound,
                other => {
                    return Err(refuse(
                        Some(field),
                        format!(
                            "unknown range operator {:?} (gt, gte, lt, lte)",
                            clip(other)
                        ),
                    ))
                }
            }
        }
        Test::Range(range)
    } else if let Some(present) = object.get("exists") {
        Test::Exists(
            present
                .as_bool()
                .ok_or_else(|| refuse(Some(field), "exists takes true or false"))?,
        )
    } else {
        let keys: Vec<&str> = object
            .keys()
            .map(String::as_str)
            .filter(|key| *key != "field")
            .collect();
        return Err(refuse(
            Some(field),
            format!("unknown operator in {keys:?}: expected equals, one_of, range or exists"),
        ));
    };
    Ok(field_filter(field, test))
}

fn json_value(
    field: &str,
    value: &serde_json::Value,
    in_range: bool,
) -> Result<FilterValue, FilterError> {
    let value = match value {
        serde_json::Value::String(text) if in_range && parse_date(text).is_some() => {
            Value::Date(text.clone())
        }
        serde_json::Value::String(text) => Value::Text(text.clone()),
        serde_json::Value::Number(number) => Value::Number(number.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::Bool(boolean) => Value::Boolean(*boolean),
        _ => {
            return Err(refuse(
                Some(field),
                "values are strings, numbers or booleans",
            ))
        }
    };
    Ok(FilterValue { value: Some(value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(filter: &Filter) -> &FieldCondition {
        match &filter.kind {
            Some(Kind::Field(condition)) => condition,
            other => panic!("not a field condition: {other:?}"),
        }
    }

    #[test]
    fn the_readable_syntax_reads_every_operator() {
        let filter = parse(
            "team=hr,legal year>=2020 published<2024-06-01 reviewed? !draft? code=\"007\" level!=3",
        )
        .unwrap();
        let Some(Kind::All(list)) = &filter.kind else {
            panic!("{filter:?}")
        };
        assert_eq!(list.filters.len(), 7);
        assert!(
            matches!(condition(&list.filters[0]).test, Some(Test::OneOf(ref values)) if values.values.len() == 2)
        );
        let Some(Test::Range(range)) = &condition(&list.filters[1]).test else {
            panic!()
        };
        assert_eq!(
            range.gte.as_ref().unwrap().value,
            Some(Value::Number(2020.0))
        );
        let Some(Test::Range(range)) = &condition(&list.filters[2]).test else {
            panic!()
        };
        assert_eq!(
            range.lt.as_ref().unwrap().value,
            Some(Value::Date("2024-06-01".to_string()))
        );
        assert_eq!(condition(&list.filters[3]).test, Some(Test::Exists(true)));
        assert_eq!(condition(&list.filters[4]).test, Some(Test::Exists(false)));
        assert_eq!(
            condition(&list.filters[5]).test,
            Some(Test::Equals(FilterValue {
                value: Some(Value::Text("007".to_string()))
            }))
        );
        assert!(matches!(list.filters[6].kind, Some(Kind::Not(_))));
    }

    #[test]
    fn the_json_form_nests() {
        let filter = parse(
            r#"{"any": [{"field": "team", "equals": "hr"}, {"not": {"field": "year", "range": {"gte": 2020, "lt": 2024}}}]}"#,
        )
        .unwrap();
        let Some(Kind::Any(list)) = &filter.kind else {
            panic!("{filter:?}")
        };
        assert_eq!(list.filters.len(), 2);
    }

    #[test]
    fn bad_filters_are_refused_naming_the_field() {
        let cases = [
            (
                r#"{"field": "year", "near": 3}"#,
                "filter: year: unknown operator",
            ),
            (
                r#"{"field": "year", "range": {"gte": 1, "lt": "2024-01-01"}}"#,
                "filter: year: range: bounds mix",
            ),
            (
                r#"{"field": "team", "range": {"gte": "abc"}}"#,
                "filter: team: range: bounds must be",
            ),
            (
                r#"{"field": "year", "range": {"about": 3}}"#,
                "filter: year: unknown range operator",
            ),
            (r#"{"where": 1}"#, "filter: unknown operator"),
            ("year>", "filter: year: no value"),
            ("=3", "filter: \"=3\": no field"),
            ("year~3", "filter: \"year~3\": expected"),
            ("team=\"hr legal", "filter: unclosed double quote"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.message.starts_with(expected), "{text}: {error}");
        }
        let empty_range = Filter {
            kind: Some(Kind::Field(FieldCondition {
                field: "year".to_string(),
                test: Some(Test::Range(FilterRange::default())),
            })),
        };
        assert!(validate(&empty_range)
            .unwrap_err()
            .message
            .starts_with("filter: year: range: needs"));
        assert!(validate(&Filter::default()).is_err());
    }

    #[test]
    fn a_value_of_a_kind_the_field_never_held_is_refused() {
        let metadata = serde_json::json!({"year": 2020, "team": "hr", "published": "2024-01-01"});
        let fields = crate::collections::fields_of(metadata.as_object().unwrap());
        for good in [
            "year>=2019",
            "team=hr",
            "published>=2023-01-01",
            "published=2024-01-01",
            "year? other=3",
        ] {
            assert!(
                check_kinds(&parse(good).unwrap(), &fields, "c").is_ok(),
                "{good}"
            );
        }
        for (bad, message) in [
            ("year=\"2020\"", "filter: year: compared with a text, but in collection \"c\" it holds number values"),
            ("team>=3", "filter: team: compared with a number"),
            ("team>=2020-01-01", "filter: team: compared with a date"),
        ] {
            let error = check_kinds(&parse(bad).unwrap(), &fields, "c").unwrap_err();
            assert!(error.message.starts_with(message), "{bad}: {error}");
        }
    }

    #[test]
    fn dates_read_as_days_or_rfc3339() {
        assert_eq!(parse_date("1970-01-02"), Some(86_400_000_000));
        assert_eq!(parse_date("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_date("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_date("2024"), None);
        assert_eq!(parse_date("hello world"), None);
    }
}
