//! The prompt: a system message with the rules plus an instruction for the question's type,
//! and a user message with the passages numbered `[n]` and the question.

use quarry_kit::openai::ChatMessage;
use quarry_proto::v1::{Analysis, Passage, QueryType};

const RULES: &str = "You answer questions using only the numbered passages you are given. \
Cite every statement with the number of the passage it comes from, in square brackets, like [1] or [2][3]. \
Cite only passage numbers that appear in the list. \
If the passages do not contain the answer, say so in one sentence and cite nothing. \
Do not use outside knowledge.";

/// What a prompt could not be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("passages: {total} characters exceed the generator's context budget of {budget}")]
    OverBudget { total: usize, budget: usize },
}

fn instruction(analysis: Option<&Analysis>) -> &'static str {
    let query_type = analysis
        .and_then(|analysis| QueryType::try_from(analysis.query_type).ok())
        .unwrap_or(QueryType::Unspecified);
    match query_type {
        QueryType::Factual => {
            "The question asks for a fact: answer it directly in one or two sentences."
        }
        QueryType::Procedural => {
            "The question asks how to do something: answer with short numbered steps, each cited."
        }
        QueryType::Analytical => {
            "The question asks for analysis: weigh what the passages say, compare where they differ, \
             and conclude briefly."
        }
        QueryType::Creative => {
            "The question asks for original writing: write it, drawing its facts only from the passages."
        }
        QueryType::Unspecified => "Answer concisely.",
    }
}

/// The messages for `question` over `passages`. Passage texts together may hold at most
/// `max_prompt_chars` characters; `max_answer_chars` (0: no limit) is asked of the model.
pub fn build_messages(
    question: &str,
    passages: &[Passage],
    analysis: Option<&Analysis>,
    max_answer_chars: u32,
    max_prompt_chars: usize,
) -> Result<Vec<ChatMessage>, PromptError> {
    let total: usize = passages
        .iter()
        .map(|passage| passage.title.chars().count() + passage.text.chars().count())
        .sum();
    if total > max_prompt_chars {
        return Err(PromptError::OverBudget {
            total,
            budget: max_prompt_chars,
        });
    }
    let mut system = format!("{RULES} {}", instruction(analysis));
    if max_answer_chars > 0 {
        system.push_str(&format!(
            " Keep the answer under {max_answer_chars} characters."
        ));
    }
    let mut user = String::from("Passages:\n");
    for passage in passages {
        user.push_str(&format!("[{}] ", passage.number));
        if !passage.title.trim().is_empty() {
            user.push_str(passage.title.trim());
            user.push_str(": ");
        }
        user.push_str(passage.text.trim());
        user.push('\n');
    }
    user.push_str(&format!("\nQuestion: {}", question.trim()));
    Ok(vec![ChatMessage::system(system), ChatMessage::user(user)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(number: u32, title: &str, text: &str) -> Passage {
        Passage {
            number,
            doc_id: format!("doc-{number}"),
            title: title.to_string(),
            text: text.to_string(),
            score: 1.0,
        }
    }

    #[test]
    fn passages_are_numbered_and_the_instruction_follows_the_type() {
        let analysis = Analysis {
            query_type: QueryType::Procedural as i32,
            ..Analysis::default()
        };
        let passages = [
            passage(1, "Bread", "Knead the dough."),
            passage(2, "", "Bake it."),
        ];
        let messages =
            build_messages(" How do I bake? ", &passages, Some(&analysis), 300, 1000).unwrap();
        assert_eq!(messages[0].role, "system");
        assert!(messages[0].content.contains("numbered steps"));
        assert!(messages[0].content.contains("under 300 characters"));
        assert_eq!(
            messages[1].content,
            "Passages:\n[1] Bread: Knead the dough.\n[2] Bake it.\n\nQuestion: How do I bake?"
        );
        let factual = build_messages("Who?", &passages, None, 0, 1000).unwrap();
        assert!(factual[0].content.contains("Answer concisely."));
    }

    #[test]
    fn passages_over_the_budget_are_refused() {
        let passages = [passage(1, "", &"x".repeat(50))];
        let error = build_messages("q", &passages, None, 0, 40).unwrap_err();
        assert_eq!(
            error.to_string(),
            "passages: 50 characters exceed the generator's context budget of 40"
        );
    }
}
