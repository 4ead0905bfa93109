//! Tests of `LlmAnalyzer` against a local server that speaks OpenAI's chat-completions
//! protocol: a valid reply is used, the request carries the JSON schema, and a malformed
//! reply or a failing backend falls back to the rules and is counted.

use std::time::Duration;

use quarry_kit::openai::fake_server::{FakeChatServer, FakeReply};

use super::*;

fn config(base_url: &str) -> OpenAiChatConfig {
    OpenAiChatConfig {
        base_urls: vec![base_url.to_string()],
        model: "analyst".to_string(),
        max_retries: 0,
        timeout_ms: 2_000,
        ..OpenAiChatConfig::default()
    }
}

const QUESTION: &str = "How does NASA compare to ESA on Mars missions since 2019?";

#[test]
fn replies_are_checked_field_by_field() {
    let good = r#"{"query_type": "analytical", "intent": "comparison",
        "entities": [{"text": "NASA", "kind": "Acronym"}, {"text": "esa", "kind": "acronym"}],
        "complexity": 0.7, "confidence": 0.9}"#;
    let analysis = parse_reply(QUESTION, good).unwrap();
    assert_eq!(analysis.query_type, QueryType::Analytical as i32);
    assert_eq!(analysis.entities.len(), 2);
    assert_eq!(analysis.entities[0].kind, "acronym");
    for bad in [
        "It is analytical.",
        r#"{"query_type": "opinion", "intent": "x", "entities": [], "complexity": 0.5, "confidence": 0.5}"#,
        r#"{"query_type": "factual", "intent": " ", "entities": [], "complexity": 0.5, "confidence": 0.5}"#,
        r#"{"query_type": "factual", "intent": "x", "entities": [], "complexity": 1.5, "confidence": 0.5}"#,
        r#"{"query_type": "factual", "intent": "x", "entities": [{"text": "Jupiter", "kind": "planet"}], "complexity": 0.5, "confidence": 0.5}"#,
        r#"{"query_type": "factual", "intent": "x", "complexity": 0.5, "confidence": 0.5}"#,
    ] {
        assert!(parse_reply(QUESTION, bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn the_models_analysis_is_used_and_the_request_asks_for_the_schema() {
    let server = FakeChatServer::start(|_, _| {
        FakeReply::Completion(
            r#"{"query_type": "analytical", "intent": "comparison", "entities": [{"text": "NASA", "kind": "acronym"}], "complexity": 0.6, "confidence": 0.8}"#
                .to_string(),
        )
    })
    .await
    .unwrap();
    let analyzer = LlmAnalyzer::new(&config(&server.base_url)).unwrap();
    let analysis = analyzer.analyze(QUESTION).await.unwrap();
    assert_eq!(analysis.analyzer, "openai:analyst");
    assert_eq!(analysis.query_type, QueryType::Analytical as i32);
    assert_eq!(analysis.intent, "comparison");
    assert_eq!(analyzer.stats().answered(), 1);
    let request = &server.requests()[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.body["response_format"]["type"], "json_schema");
    assert_eq!(
        request.body["response_format"]["json_schema"]["schema"]["properties"]["query_type"]
            ["enum"][2],
        "analytical"
    );
    let user = request.body["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains(QUESTION), "{user}");
}

#[tokio::test]
async fn a_malformed_reply_or_a_failing_backend_falls_back_to_the_rules_and_is_counted() {
    let server = FakeChatServer::start(|index, _| match index {
        0 => FakeReply::Completion("Analytical, I would say.".to_string()),
        _ => FakeReply::error(500, None),
    })
    .await
    .unwrap();
    let analyzer = LlmAnalyzer::new(&config(&server.base_url)).unwrap();
    let rules = QuestionAnalyzer::rules().analyze(QUESTION).unwrap();

    let malformed = analyzer.analyze(QUESTION).await.unwrap();
    assert_eq!(malformed.analyzer, "rules (fallback: malformed)");
    assert_eq!(malformed.query_type, rules.query_type);
    assert_eq!(malformed.entities, rules.entities);
    let failed = analyzer.analyze(QUESTION).await.unwrap();
    assert_eq!(failed.analyzer, "rules (fallback: backend)");
    assert_eq!(
        (
            analyzer.stats().answered(),
            analyzer.stats().malformed_replies(),
            analyzer.stats().backend_failures()
        ),
        (0, 1, 1)
    );

    // Bad input is refused before any call, exactly as the rules refuse it.
    let calls = server.request_count();
    let error = analyzer.analyze("  ").await.unwrap_err();
    assert!(error.to_string().starts_with("query"), "{error}");
    assert_eq!(server.request_count(), calls);
}

#[tokio::test]
async fn a_backend_that_is_down_does_not_hang_the_analysis() {
    let analyzer = LlmAnalyzer::new(&config(
        &quarry_kit::openai::fake_server::unreachable_base_url(),
    ))
    .unwrap();
    let analysis = tokio::time::timeout(Duration::from_secs(5), analyzer.analyze(QUESTION))
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(analysis.analyzer, "rules (fallback: backend)");
}
