//! The kinds of value each metadata field of a collection has held (text, number, boolean,
//! date, object), recorded as documents are ingested, so that a filter comparing a field
//! with a value of a kind it never held is refused (`INVALID_ARGUMENT` naming the field)
//! instead of silently matching nothing — the way Elasticsearch's mapping refuses a
//! numeric range on a text field. Kinds only accumulate (a field may hold several); a field
//! no document has had yet is not checked. At most `MAX_FIELDS` fields are recorded per
//! collection (Elasticsearch's `mapping.total_fields.limit` is 1,000 too); past that, new
//! fields go unchecked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most fields whose kinds are recorded per collection.
pub const MAX_FIELDS: usize = 1000;
/// Longest field path recorded (as long as a filter may name).
pub const MAX_PATH_BYTES: usize = crate::filter::MAX_FIELD_BYTES;

/// A set of value kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FieldKinds(u8);

impl FieldKinds {
    pub const TEXT: Self = Self(1);
    pub const NUMBER: Self = Self(2);
    pub const BOOLEAN: Self = Self(4);
    pub const DATE: Self = Self(8);
    pub const OBJECT: Self = Self(16);
    const ALL: [(Self, &'static str); 5] = [
        (Self::TEXT, "text"),
        (Self::NUMBER, "number"),
        (Self::BOOLEAN, "boolean"),
        (Self::DATE, "date"),
        (Self::OBJECT, "object"),
    ];

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Each single kind of the set.
    pub fn each(self) -> impl Iterator<Item = Self> {
        Self::ALL
            .into_iter()
            .filter(move |(kind, _)| self.contains(*kind))
            .map(|(kind, _)| kind)
    }

    /// The name of a single kind (`text`, `number`, ...).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(kind, _)| *kind == self)
            .map_or("mixed", |(_, name)| name)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, known)| *known == name)
            .map(|(kind, _)| *kind)
    }

    /// "numbers and dates": the kinds, for a message.
    pub fn describe(self) -> String {
        let names: Vec<&str> = self.each().map(Self::name).collect();
        names.join(" and ")
    }
}

/// A document's metadata as one JSON object: `metadata_json`, plus the entries of the
/// older string map it has no field for. The gateway checks it with this on the way in and
/// each shard stores exactly this; the error is the reason, for the caller to name its field.
pub fn metadata_of(
    document: &quarry_proto::v1::Document,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut metadata = match document.metadata_json.trim() {
        "" => serde_json::Map::new(),
        text => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(_) => return Err("must be a JSON object".to_string()),
            Err(error) => return Err(format!("not JSON: {error}")),
        },
    };
    for (key, value) in &document.metadata {
        metadata
            .entry(key.clone())
            .or_insert_with(|| serde_json::Value::String(value.clone()));
    }
    Ok(metadata)
}

/// The fields of a metadata object and the kinds of their values; nested objects' fields
/// by dotted path, arrays by their elements' kinds. Paths over `MAX_PATH_BYTES` are left out.
pub fn fields_of(
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, FieldKinds> {
    let mut fields = BTreeMap::new();
    for (key, value) in metadata {
        collect(key, value, &mut fields);
    }
    fields
}

fn collect(path: &str, value: &serde_json::Value, fields: &mut BTreeMap<String, FieldKinds>) {
    if path.len() > MAX_PATH_BYTES || fields.len() > MAX_FIELDS {
        return;
    }
    let mut add = |kind: FieldKinds| {
        let entry = fields.entry(path.to_string()).or_default();
        *entry = entry.with(kind);
    };
    match value {
        serde_json::Value::Null => {}
        serde_json::Value::Bool(_) => add(FieldKinds::BOOLEAN),
        serde_json::Value::Number(_) => add(FieldKinds::NUMBER),
        serde_json::Value::String(text) => {
            add(FieldKinds::TEXT);
            if crate::filter::parse_date(text).is_some() {
                add(FieldKinds::DATE);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect(path, item, fields);
            }
        }
        serde_json::Value::Object(object) => {
            add(FieldKinds::OBJECT);
            for (key, inner) in object {
                collect(&format!("{path}.{key}"), inner, fields);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_values_arrays_and_nested_objects() {
        let metadata = serde_json::json!({
            "team": "hr", "year": 2020, "draft": false, "published": "2024-05-01",
            "tags": ["a", 3], "author": {"name": "ann"}, "gone": null,
        });
        let fields = fields_of(metadata.as_object().unwrap());
        assert_eq!(fields["team"], FieldKinds::TEXT);
        assert_eq!(fields["year"], FieldKinds::NUMBER);
        assert_eq!(fields["draft"], FieldKinds::BOOLEAN);
        assert_eq!(fields["published"], FieldKinds::TEXT.with(FieldKinds::DATE));
        assert_eq!(fields["tags"], FieldKinds::TEXT.with(FieldKinds::NUMBER));
        assert_eq!(fields["author"], FieldKinds::OBJECT);
        assert_eq!(fields["author.name"], FieldKinds::TEXT);
        assert!(!fields.contains_key("gone"));
        assert_eq!(fields["tags"].describe(), "text and number");
    }
}
