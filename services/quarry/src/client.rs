//! Client commands: `ingest`, `search`, `ask` and `status` against a gateway.

use anyhow::{bail, Context};
use quarry_kit::server::endpoint;
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{
    ask_chunk, AskRequest, ClusterStatusRequest, CreateCollectionRequest, DeleteCollectionRequest,
    Filter, GetCollectionRequest, ListCollectionsRequest, SearchMode, SearchRequest,
};
use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

use crate::cli::{
    AskArgs, ClientArgs, CollectionCommand, IngestArgs, ModeArg, SearchArgs, StatusArgs, TargetArgs,
};
use crate::jsonl::parse_documents;
use crate::output;

/// A client of the gateway that sends the API key, if any, with every call.
pub(crate) type GatewayClient = QuarryClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub(crate) fn new(api_key: Option<&str>) -> anyhow::Result<Self> {
        let value = api_key
            .map(|key| MetadataValue::try_from(format!("Bearer {}", key.trim())))
            .transpose()
            .map_err(|_| anyhow::anyhow!("--api-key: not a valid header value"))?;
        Ok(Self(value))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(crate) async fn connect(client: &ClientArgs) -> anyhow::Result<GatewayClient> {
    let channel = endpoint(&client.addr, client.tls_ca.as_deref(), None)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", client.addr))?;
    let bearer = Bearer::new(client.api_key.as_deref())?;
    Ok(QuarryClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub async fn ingest(args: &IngestArgs) -> anyhow::Result<()> {
    let content = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let (documents, malformed) = parse_documents(&content);
    for line in &malformed {
        eprintln!(
            "{}:{}: {}",
            args.file.display(),
            line.line_number,
            line.reason
        );
    }
    let line_numbers: Vec<usize> = documents.iter().map(|line| line.line_number).collect();
    let mut client = connect(&args.client).await?;
    let default_collection = args.collection.clone();
    let stream = tokio_stream::iter(documents.into_iter().map(move |line| {
        let mut document = line.document;
        if document.collection.is_empty() {
            document.collection = default_collection.clone();
        }
        document
    }));
    let summary = client
        .ingest(stream)
        .await
        .map_err(status_error)?
        .into_inner();
    for error in &summary.errors {
        let line = line_numbers.get(error.index as usize).copied().unwrap_or(0);
        eprintln!(
            "{}:{line}: {} {}",
            args.file.display(),
            error.code,
            error.message
        );
    }
    if args.client.json {
        println!("{}", output::ingest_json(&summary, malformed.len()));
    } else {
        println!(
            "accepted {}, rejected {} by the server, {} malformed line(s)",
            summary.accepted,
            summary.rejected,
            malformed.len()
        );
    }
    if summary.rejected > 0 || !malformed.is_empty() {
        bail!(
            "{} document(s) were not ingested",
            summary.rejected as usize + malformed.len()
        );
    }
    Ok(())
}

pub async fn search(args: &SearchArgs) -> anyhow::Result<()> {
    let mode = match args.mode {
        ModeArg::Keyword => SearchMode::Keyword,
        ModeArg::Semantic => SearchMode::Semantic,
        ModeArg::Hybrid => SearchMode::Hybrid,
    };
    let mut client = connect(&args.client).await?;
    let response = client
        .search(SearchRequest {
            query: args.query.clone(),
            k: args.k,
            mode: mode as i32,
            fusion: 0,
            collection: args.target.collection.clone(),
            filter: filter_of(&args.target)?,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.client.json {
        println!("{}", output::search_json(&response));
    } else {
        print!("{}", output::search_text(&response));
    }
    Ok(())
}

pub async fn ask(args: &AskArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let request = AskRequest {
        question: args.question.clone(),
        k: args.k,
        mode: SearchMode::Hybrid as i32,
        collection: args.target.collection.clone(),
        filter: filter_of(&args.target)?,
        skip_cache: args.skip_cache,
    };
    let response = if args.stream && !args.client.json {
        let mut stream = client
            .ask_stream(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let mut done = None;
        while let Some(chunk) = stream.next().await {
            match chunk.map_err(status_error)?.chunk {
                Some(ask_chunk::Chunk::Token(token)) => print!("{token}"),
                Some(ask_chunk::Chunk::Done(response)) => done = Some(response),
                None => {}
            }
        }
        println!();
        done.context("the answer stream ended without a final message")?
    } else {
        client
            .ask(request)
            .await
            .map_err(status_error)?
            .into_inner()
    };
    if args.client.json {
        println!("{}", output::ask_json(&response));
    } else {
        print!("{}", output::ask_text(&response, !args.stream));
    }
    Ok(())
}

pub async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let response = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if args.client.json {
        println!("{}", output::status_json(&response));
    } else {
        print!("{}", output::status_text(&response));
    }
    Ok(())
}

/// `--filter`, read (the readable syntax or JSON).
pub(crate) fn filter_of(target: &TargetArgs) -> anyhow::Result<Option<Filter>> {
    target
        .filter
        .as_deref()
        .map(quarry_kit::filter::parse)
        .transpose()
        .map_err(|error| anyhow::anyhow!("--filter: {error}"))
}

pub async fn collection(command: &CollectionCommand) -> anyhow::Result<()> {
    let (client_args, infos) = match command {
        CollectionCommand::Create(args) => {
            let mut client = connect(&args.client).await?;
            let created = client
                .create_collection(CreateCollectionRequest {
                    name: args.name.clone(),
                    description: args.description.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            (&args.client, vec![created])
        }
        CollectionCommand::Delete(args) => {
            let mut client = connect(&args.client).await?;
            let deleted = client
                .delete_collection(DeleteCollectionRequest {
                    name: args.name.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if args.client.json {
                println!(
                    "{}",
                    serde_json::json!({"deleted": args.name, "deleted_docs": deleted.deleted_docs})
                );
            } else {
                println!(
                    "deleted collection {} ({} documents)",
                    args.name, deleted.deleted_docs
                );
            }
            return Ok(());
        }
        CollectionCommand::List(args) => {
            let mut client = connect(&args.client).await?;
            let listed = client
                .list_collections(ListCollectionsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            (&args.client, listed.collections)
        }
        CollectionCommand::Get(args) => {
            let mut client = connect(&args.client).await?;
            let info = client
                .get_collection(GetCollectionRequest {
                    name: args.name.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            (&args.client, vec![info])
        }
    };
    for info in &infos {
        if client_args.json {
            println!("{}", output::collection_json(info));
        } else {
            print!("{}", output::collection_text(info));
        }
    }
    Ok(())
}
