//! `quarry search-batch`: runs every query of a BEIR `queries.jsonl` (or `{"id","text"}`
//! lines) through the gateway and writes a standard TREC run file to stdout, so anyone can
//! score Quarry with their own tools (trec_eval, pytrec_eval, ranx).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use quarry_proto::v1::{SearchMode, SearchRequest};
use serde_json::Value;

use crate::bench::dataset::trec_lines;
use crate::cli::{ModeArg, SearchBatchArgs};
use crate::client::connect;

pub async fn search_batch(args: &SearchBatchArgs) -> anyhow::Result<()> {
    let content = std::fs::read_to_string(&args.queries)
        .with_context(|| format!("reading {}", args.queries.display()))?;
    let mut client = connect(&args.client)
        .await?
        .max_decoding_message_size(256 * 1024 * 1024);
    let mode = match args.mode {
        ModeArg::Keyword => SearchMode::Keyword,
        ModeArg::Semantic => SearchMode::Semantic,
        ModeArg::Hybrid => SearchMode::Hybrid,
    };
    let filter = crate::client::filter_of(&args.target)?;
    let mut run = BTreeMap::new();
    for (index, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", args.queries.display(), index + 1))?;
        let id = match value.get("_id").or_else(|| value.get("id")) {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => anyhow::bail!("{}:{}: missing \"_id\"", args.queries.display(), index + 1),
        };
        let Some(text) = value.get("text").and_then(Value::as_str) else {
            anyhow::bail!("{}:{}: missing \"text\"", args.queries.display(), index + 1);
        };
        let response = client
            .search(SearchRequest {
                query: text.to_string(),
                k: args.k,
                mode: mode as i32,
                fusion: 0,
                collection: args.target.collection.clone(),
                filter: filter.clone(),
            })
            .await
            .map_err(|status| {
                anyhow::anyhow!("query {id}: {:?}: {}", status.code(), status.message())
            })?
            .into_inner();
        let hits: Vec<(String, f64)> = response
            .hits
            .into_iter()
            .map(|hit| (hit.doc_id, hit.score))
            .collect();
        run.insert(id, hits);
    }
    std::io::stdout().write_all(trec_lines(&run, "quarry").as_bytes())?;
    Ok(())
}
