//! Request validation at the front door: every refusal is INVALID_ARGUMENT naming the field.

use std::collections::BTreeMap;

use quarry_kit::collections::{fields_of, metadata_of, FieldKinds};
use quarry_kit::config::Fusion as FusionMethod;
use quarry_kit::config::GatewayConfig;
use quarry_proto::v1::{Document, Fusion, SearchMode};

use crate::error::GatewayError;

/// A query or question: not blank, not longer than the limit.
pub fn validate_query(
    field: &'static str,
    text: &str,
    config: &GatewayConfig,
) -> Result<(), GatewayError> {
    if text.trim().is_empty() {
        return Err(GatewayError::invalid(field, "must not be empty"));
    }
    if text.len() > config.max_query_bytes {
        return Err(GatewayError::invalid(
            field,
            format!(
                "is {} bytes, the limit is {}",
                text.len(),
                config.max_query_bytes
            ),
        ));
    }
    Ok(())
}

/// k within 1..=max_k; 0 means the default.
pub fn resolve_k(
    requested: u32,
    default: u32,
    config: &GatewayConfig,
) -> Result<u32, GatewayError> {
    let k = if requested == 0 { default } else { requested };
    if k > config.max_k {
        return Err(GatewayError::invalid(
            "k",
            format!("must be within 1..={}, got {k}", config.max_k),
        ));
    }
    Ok(k)
}

/// A known search mode; UNSPECIFIED means HYBRID.
pub fn resolve_mode(raw: i32) -> Result<SearchMode, GatewayError> {
    match SearchMode::try_from(raw) {
        Ok(SearchMode::Unspecified) => Ok(SearchMode::Hybrid),
        Ok(mode) => Ok(mode),
        Err(_) => Err(GatewayError::invalid(
            "mode",
            format!("unknown search mode {raw} (known: KEYWORD, SEMANTIC, HYBRID)"),
        )),
    }
}

/// The fusion a request asks for; UNSPECIFIED means the configured default.
pub fn resolve_fusion(raw: i32, default: FusionMethod) -> Result<FusionMethod, GatewayError> {
    match Fusion::try_from(raw) {
        Ok(Fusion::Unspecified) => Ok(default),
        Ok(Fusion::Rrf) => Ok(FusionMethod::Rrf),
        Ok(Fusion::Weighted) => Ok(FusionMethod::Weighted),
        Err(_) => Err(GatewayError::invalid(
            "fusion",
            format!("unknown fusion {raw} (known: RRF, WEIGHTED)"),
        )),
    }
}

/// A document to ingest: an id and a text, within the size limits, and metadata that is a
/// JSON object. Returns the kinds of its metadata fields, or the field at fault.
pub fn validate_document(
    document: &Document,
    config: &GatewayConfig,
) -> Result<BTreeMap<String, FieldKinds>, GatewayError> {
    if document.id.trim().is_empty() {
        return Err(GatewayError::invalid("id", "must not be empty"));
    }
    if document.id.len() > config.max_id_bytes {
        return Err(GatewayError::invalid(
            "id",
            format!(
                "is {} bytes, the limit is {}",
                document.id.len(),
                config.max_id_bytes
            ),
        ));
    }
    if document.text.trim().is_empty() {
        return Err(GatewayError::invalid("text", "must not be empty"));
    }
    let size = document.text.len() + document.title.len();
    if size > config.max_document_bytes {
        return Err(GatewayError::invalid(
            "text",
            format!(
                "title and text are {size} bytes, the limit is {}",
                config.max_document_bytes
            ),
        ));
    }
    if document.metadata_json.len() > config.max_document_bytes {
        return Err(GatewayError::invalid(
            "metadata_json",
            format!(
                "is {} bytes, the limit is {}",
                document.metadata_json.len(),
                config.max_document_bytes
            ),
        ));
    }
    let metadata =
        metadata_of(document).map_err(|reason| GatewayError::invalid("metadata_json", reason))?;
    Ok(fields_of(&metadata))
}

/// The id of a single-document request.
pub fn validate_id(id: &str, config: &GatewayConfig) -> Result<(), GatewayError> {
    if id.trim().is_empty() {
        return Err(GatewayError::invalid("id", "must not be empty"));
    }
    if id.len() > config.max_id_bytes {
        return Err(GatewayError::invalid(
            "id",
            format!("longer than {} bytes", config.max_id_bytes),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_be_a_json_object() {
        let config = GatewayConfig::default();
        let document = |metadata_json: &str| Document {
            id: "a".to_string(),
            text: "text".to_string(),
            metadata_json: metadata_json.to_string(),
            ..Document::default()
        };
        assert!(validate_document(&document(r#"{"year": 2020}"#), &config).is_ok());
        assert!(validate_document(&document(""), &config).is_ok());
        for bad in ["[1]", "{", "3"] {
            let error = validate_document(&document(bad), &config).unwrap_err();
            assert!(
                error.to_string().starts_with("metadata_json:"),
                "{bad}: {error}"
            );
        }
        let mut mixed = document(r#"{"year": 2020}"#);
        mixed.metadata.insert("year".to_string(), "old".to_string());
        mixed.metadata.insert("team".to_string(), "hr".to_string());
        let fields = validate_document(&mixed, &config).unwrap();
        assert_eq!(
            fields["year"],
            FieldKinds::NUMBER,
            "metadata_json wins over the map"
        );
        assert_eq!(fields["team"], FieldKinds::TEXT);
    }

    fn config() -> GatewayConfig {
        GatewayConfig::default()
    }

    #[test]
    fn blank_and_oversized_queries_name_the_field() {
        let error = validate_query("query", " \t", &config()).unwrap_err();
        assert_eq!(error.to_string(), "query: must not be empty");
        let long = "a".repeat(config().max_query_bytes + 1);
        let error = validate_query("question", &long, &config()).unwrap_err();
        assert!(
            error.to_string().starts_with("question: is 4097 bytes"),
            "{error}"
        );
        assert!(validate_query("query", "insulin", &config()).is_ok());
    }

    #[test]
    fn k_zero_is_the_default_and_out_of_range_is_refused() {
        assert_eq!(resolve_k(0, 10, &config()).unwrap(), 10);
        assert_eq!(resolve_k(1000, 10, &config()).unwrap(), 1000);
        let error = resolve_k(1001, 10, &config()).unwrap_err();
        assert!(
            error.to_string().starts_with("k: must be within 1..=1000"),
            "{error}"
        );
    }

    #[test]
    fn unknown_modes_are_refused_and_unspecified_is_hybrid() {
        assert_eq!(resolve_mode(0).unwrap(), SearchMode::Hybrid);
        assert_eq!(resolve_mode(1).unwrap(), SearchMode::Keyword);
        assert!(resolve_mode(42)
            .unwrap_err()
            .to_string()
            .starts_with("mode: unknown"));
    }

    #[test]
    fn documents_need_an_id_and_a_text() {
        let document = |id: &str, text: &str| Document {
            id: id.to_string(),
            text: text.to_string(),
            ..Document::default()
        };
        assert!(validate_document(&document("", "x"), &config())
            .unwrap_err()
            .to_string()
            .starts_with("id:"));
        assert!(validate_document(&document("a", " "), &config())
            .unwrap_err()
            .to_string()
            .starts_with("text:"));
        let huge = "x".repeat(config().max_document_bytes + 1);
        assert!(validate_document(&document("a", &huge), &config())
            .unwrap_err()
            .to_string()
            .starts_with("text:"));
        assert!(validate_document(&document("a", "fine"), &config()).is_ok());
    }
}
