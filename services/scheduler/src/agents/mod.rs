//! The agents that do a step's work. Cluster agents call the cluster's own gRPC services:
//! the researcher searches through the gateway and summarises with the generator, the
//! analyzer analyses the topic, the writer outlines, drafts and edits through the generator,
//! the reviewer has the evaluator judge a draft against the research, the specialist asks the
//! gateway, the coordinator gathers its dependencies' results. `noop` (benchmarks) does
//! nothing; `test` (tests only, `scheduler.test_roles`) follows a directive.
//!
//! Steps run at least once: an attempt interrupted by a crash is run again, so every agent
//! is safe to repeat (they only read from the cluster and return text).

mod analyzer;
mod researcher;
mod reviewer;
mod sources;
mod specialist;
mod test_directive;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use quarry_kit::discovery::{Role, RoleChannels};
use quarry_kit::telemetry::TracedChannel;
use quarry_proto::v1::analyzer_client::AnalyzerClient;
use quarry_proto::v1::evaluator_client::EvaluatorClient;
use quarry_proto::v1::generator_client::GeneratorClient;
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::AgentRole;

pub use sources::{ResearchResult, Source, WriterResult};

/// What an agent is given: its step, which attempt this is, and what its dependencies returned.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub workflow_id: String,
    pub step_id: String,
    pub role: AgentRole,
    pub input: String,
    pub attempt: u32,
    pub dependencies: Vec<DependencyResult>,
}

#[derive(Debug, Clone)]
pub struct DependencyResult {
    pub step_id: String,
    pub role: AgentRole,
    pub result: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bad input: {0}")]
    Input(String),
    #[error("{service}: {message}")]
    Downstream {
        service: &'static str,
        message: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl AgentError {
    fn downstream(service: &'static str, status: tonic::Status) -> Self {
        AgentError::Downstream {
            service,
            message: format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

/// Every agent, with what they need: channels to the cluster, and the test switch.
pub struct Agents {
    cluster: Option<Arc<RoleChannels>>,
    max_message_bytes: usize,
    test_roles: bool,
    data_dir: PathBuf,
    /// `authorization` sent to a gateway that requires API keys.
    gateway_key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Agents {
    pub fn new(
        cluster: Option<Arc<RoleChannels>>,
        max_message_bytes: usize,
        test_roles: bool,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            cluster,
            max_message_bytes,
            test_roles,
            data_dir,
            gateway_key: None,
        }
    }

    /// Calls the gateway with this API key (`scheduler.gateway_api_key`).
    pub fn with_gateway_key(mut self, key: Option<&str>) -> Self {
        self.gateway_key = key.and_then(|key| format!("Bearer {}", key.trim()).parse().ok());
        self
    }

    /// A request to the gateway, carrying the API key when there is one.
    fn gateway_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(key) = &self.gateway_key {
            request.metadata_mut().insert("authorization", key.clone());
        }
        request
    }

    /// Runs one attempt of a step.
    pub async fn run(&self, context: StepContext) -> Result<String, AgentError> {
        match context.role {
            AgentRole::Noop => Ok(String::new()),
            AgentRole::Test if self.test_roles => {
                test_directive::run(&context, &self.data_dir).await
            }
            AgentRole::Test => Err(AgentError::Input(
                "the test role is disabled (scheduler.test_roles = false)".to_string(),
            )),
            AgentRole::Coordinator => Ok(coordinate(&context)),
            AgentRole::Researcher => researcher::run(self, &context).await,
            AgentRole::Analyzer => analyzer::run(self, &context).await,
            AgentRole::Writer => writer::run(self, &context).await,
            AgentRole::Reviewer => reviewer::run(self, &context).await,
            AgentRole::Specialist => specialist::run(self, &context).await,
            AgentRole::Unspecified => Err(AgentError::Input("no role".to_string())),
        }
    }

    fn channel(&self, role: Role) -> Result<TracedChannel, AgentError> {
        let cluster = self
            .cluster
            .as_ref()
            .ok_or_else(|| AgentError::Downstream {
                service: "cluster",
                message: "this scheduler has no cluster to call".to_string(),
            })?;
        cluster.pick(role).map_err(|error| AgentError::Downstream {
            service: role.as_str(),
            message: error.to_string(),
        })
    }

    fn gateway(&self) -> Result<QuarryClient<TracedChannel>, AgentError> {
        Ok(QuarryClient::new(self.channel(Role::Gateway)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    fn generator(&self) -> Result<GeneratorClient<TracedChannel>, AgentError> {
        Ok(GeneratorClient::new(self.channel(Role::Generator)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    fn analyzer(&self) -> Result<AnalyzerClient<TracedChannel>, AgentError> {
        Ok(AnalyzerClient::new(self.channel(Role::Analyzer)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    fn evaluator(&self) -> Result<EvaluatorClient<TracedChannel>, AgentError> {
        Ok(EvaluatorClient::new(self.channel(Role::Evaluator)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }
}

/// The coordinator gathers its dependencies' results into one JSON object by step id.
fn coordinate(context: &StepContext) -> String {
    let gathered: serde_json::Map<String, serde_json::Value> = context
        .dependencies
        .iter()
        .map(|dependency| {
            let value = serde_json::from_str(&dependency.result)
                .unwrap_or_else(|_| serde_json::Value::String(dependency.result.clone()));
            (dependency.step_id.clone(), value)
        })
        .collect();
    serde_json::json!({ "input": context.input, "results": gathered }).to_string()
}

/// A step's topic: its input's `topic` field when the input is JSON, else the input itself.
fn topic_of(input: &str) -> Result<String, AgentError> {
    let topic = match serde_json::from_str::<serde_json::Value>(input) {
        Ok(serde_json::Value::Object(fields)) => fields
            .get("topic")
            .and_then(|topic| topic.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => input.to_string(),
    };
    let topic = topic.trim().to_string();
    if topic.is_empty() {
        return Err(AgentError::Input(
            "the step's input names no topic".to_string(),
        ));
    }
    Ok(topic)
}
