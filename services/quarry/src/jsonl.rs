//! Reading documents from JSON lines: BEIR corpus lines (`{"_id","title","text"}`) and plain
//! `{"id","text"}` lines; a line that is not a document is reported with its number.

use quarry_proto::v1::Document;
use serde_json::Value;

/// One line that could not be read as a document.
#[derive(Debug, Clone, PartialEq)]
pub struct MalformedLine {
    pub line_number: usize,
    pub reason: String,
}

/// A parsed document with the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentLine {
    pub line_number: usize,
    pub document: Document,
}

/// Parses every non-blank line; returns the documents and the lines that are not documents.
/// A line with an empty id or text is still returned, for the server to refuse by name.
pub fn parse_documents(content: &str) -> (Vec<DocumentLine>, Vec<MalformedLine>) {
    let mut documents = Vec::new();
    let mut malformed = Vec::new();
    for (index, line) in content.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(document) => documents.push(DocumentLine {
                line_number,
                document,
            }),
            Err(reason) => malformed.push(MalformedLine {
                line_number,
                reason,
            }),
        }
    }
    (documents, malformed)
}

fn parse_line(line: &str) -> Result<Document, String> {
    let value: Value = serde_json::from_str(line).map_err(|error| format!("not JSON: {error}"))?;
    let Value::Object(object) = value else {
        return Err("not a JSON object".to_string());
    };
    let id = match object.get("_id").or_else(|| object.get("id")) {
        Some(Value::String(id)) => id.clone(),
        Some(Value::Number(number)) => number.to_string(),
        Some(_) => return Err("\"_id\"/\"id\" must be a string or a number".to_string()),
        None => return Err("missing \"_id\" or \"id\"".to_string()),
    };
    let text_field = |name: &str| -> Result<String, String> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(format!("\"{name}\" must be a string")),
        }
    };
    let title = text_field("title")?;
    let text = text_field("text")?;
    if !object.contains_key("text") {
        return Err("missing \"text\"".to_string());
    }
    let metadata_json = match object.get("metadata") {
        None | Some(Value::Null) => String::new(),
        Some(Value::Object(fields)) => Value::Object(fields.clone()).to_string(),
        Some(_) => return Err("\"metadata\" must be an object".to_string()),
    };
    let collection = text_field("collection")?;
    Ok(Document {
        id,
        title,
        text,
        metadata_json,
        collection,
        ..Document::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_beir_and_plain_lines_and_numbers_the_bad_ones() {
        let content = concat!(
            "{\"_id\": \"4983\", \"title\": \"Microstructural\", \"text\": \"Alterations\", \"metadata\": {\"year\": 2001}, \"collection\": \"papers\"}\n",
            "\n",
            "{\"id\": 7, \"text\": \"plain\"}\n",
            "{not json\n",
            "[1, 2]\n",
            "{\"id\": \"x\"}\n",
            "{\"id\": \"y\", \"text\": \"\"}\n",
        );
        let (documents, malformed) = parse_documents(content);
        assert_eq!(documents.len(), 3);
        assert_eq!(documents[0].line_number, 1);
        assert_eq!(documents[0].document.id, "4983");
        assert_eq!(documents[0].document.metadata_json, r#"{"year":2001}"#);
        assert_eq!(documents[0].document.collection, "papers");
        assert_eq!(documents[1].line_number, 3);
        assert_eq!(documents[1].document.id, "7");
        assert_eq!(
            documents[2].document.text, "",
            "empty text is left for the server to refuse"
        );
        let numbers: Vec<usize> = malformed.iter().map(|line| line.line_number).collect();
        assert_eq!(numbers, [4, 5, 6]);
        assert!(malformed[2].reason.contains("text"));
    }
}
