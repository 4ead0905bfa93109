//! What agents hand each other: the researcher's findings with their sources, and the
//! writer's text with the sources it cites; read back from dependency results.

use quarry_proto::v1::Passage;
use serde::{Deserialize, Serialize};

use super::DependencyResult;

/// One document the research found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub number: u32,
    pub doc_id: String,
    pub title: String,
    pub text: String,
}

impl Source {
    pub fn passage(&self) -> Passage {
        Passage {
            number: self.number,
            doc_id: self.doc_id.clone(),
            title: self.title.clone(),
            text: self.text.clone(),
            score: 0.0,
        }
    }
}

/// The researcher's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResearchResult {
    pub topic: String,
    /// A summary of the findings citing sources as [n].
    pub summary: String,
    pub sources: Vec<Source>,
}

/// A writer's result: an outline, a draft or an edited draft.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriterResult {
    pub task: String,
    pub text: String,
    /// The text without its title line and source list (what the reviewer judges).
    #[serde(default)]
    pub body: String,
    /// Document ids the text cites.
    pub cited: Vec<String>,
    pub sources: Vec<Source>,
}

/// The sources of the first dependency that carries some (research or writing).
pub fn sources_from(dependencies: &[DependencyResult]) -> Vec<Source> {
    for dependency in dependencies {
        if let Ok(research) = serde_json::from_str::<ResearchResult>(&dependency.result) {
            if !research.sources.is_empty() {
                return research.sources;
            }
        }
    }
    for dependency in dependencies {
        if let Ok(writing) = serde_json::from_str::<WriterResult>(&dependency.result) {
            if !writing.sources.is_empty() {
                return writing.sources;
            }
        }
    }
    Vec::new()
}

/// The text of the first dependency that is a writer's result with the given task.
pub fn writing_from(dependencies: &[DependencyResult], task: &str) -> Option<WriterResult> {
    dependencies.iter().find_map(|dependency| {
        serde_json::from_str::<WriterResult>(&dependency.result)
            .ok()
            .filter(|writing| writing.task == task)
    })
}

/// The document ids whose numbers a text cites as [n].
pub fn cited_ids(text: &str, sources: &[Source]) -> Vec<String> {
    let mut cited = Vec::new();
    for source in sources {
        if text.contains(&format!("[{}]", source.number)) && !cited.contains(&source.doc_id) {
            cited.push(source.doc_id.clone());
        }
    }
    cited
}
