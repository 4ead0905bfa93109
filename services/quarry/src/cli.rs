//! The command line: global options, `serve`, `up`, and the client commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "quarry",
    version,
    about = "Retrieval-augmented question answering over your documents"
)]
pub struct Cli {
    /// Configuration file (default: ./quarry.toml when present).
    #[arg(long, global = true, env = "QUARRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one role.
    Serve(ServeArgs),
    /// Run the whole cluster in this process on loopback, every hop over gRPC.
    Up(UpArgs),
    /// Ingest a JSON-lines file (BEIR corpus lines `{"_id","title","text"}` or `{"id","text"}`).
    Ingest(IngestArgs),
    /// Search the indexed documents.
    Search(SearchArgs),
    /// Ask a question and get a cited answer.
    Ask(AskArgs),
    /// Show the cluster's members and shards.
    Status(StatusArgs),
    /// Cluster settings in etcd.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a BEIR queries file through the gateway and write a TREC run to stdout.
    SearchBatch(SearchBatchArgs),
    /// Benchmarks that print JSON.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Multi-step agent workflows: submit, run a template, watch, get, cancel.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// API keys of the gateway: create (the key is shown once), list, revoke.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Certificates: a cluster CA, role certificates for mutual TLS, a gateway certificate.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Collections: create, delete, list, get (documents and vectors counted).
    #[command(subcommand)]
    Collection(CollectionCommand),
}

#[derive(Debug, Subcommand)]
pub enum CollectionCommand {
    /// Creates an empty collection.
    Create(CollectionCreateArgs),
    /// Deletes a collection and its documents on every replica.
    Delete(CollectionNameArgs),
    /// Lists the collections (without counts).
    List(StatusArgs),
    /// One collection's settings and counts.
    Get(CollectionNameArgs),
}

#[derive(Debug, Args)]
pub struct CollectionCreateArgs {
    pub name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CollectionNameArgs {
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Where a search or a question looks.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    /// The collection (default: `default`).
    #[arg(long, default_value = "")]
    pub collection: String,
    /// Only documents whose metadata satisfies this: `team=hr year>=2020 tag=a,b draft? !x?`
    /// (all must hold), or the JSON form `{"any": [{"field": "team", "equals": "hr"}, ...]}`.
    #[arg(long)]
    pub filter: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Writes a new CA (ca.pem, ca-key.pem) into a directory.
    Ca(CertsCaArgs),
    /// Writes a certificate and key signed by the CA: for roles (mutual TLS) and/or names.
    Issue(CertsIssueArgs),
}

#[derive(Debug, Args)]
pub struct CertsCaArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "quarry cluster CA")]
    pub name: String,
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct CertsIssueArgs {
    /// The directory `certs ca` wrote.
    #[arg(long)]
    pub ca: PathBuf,
    /// Writes <NAME>.pem and <NAME>-key.pem here.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub name: String,
    /// Roles the certificate names (`<role>.<cluster>.quarry`), or `all` (`quarry up`).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    #[arg(long, default_value = "quarry")]
    pub cluster: String,
    /// Further DNS names or IP addresses (a gateway's public names).
    #[arg(long, value_delimiter = ',')]
    pub san: Vec<String>,
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Makes a key and prints it once; only its hash is stored.
    Create(KeysCreateArgs),
    /// Every stored key: id, scopes, collections, expiry, revoked (never a secret).
    List(KeyStoreArgs),
    /// Revokes a key: gateways refuse it within `auth.reload_ms`.
    Revoke(KeysRevokeArgs),
}

/// Where the keys are kept: a file, or etcd.
#[derive(Debug, Args)]
pub struct KeyStoreArgs {
    /// A JSON-lines key file (mount it into gateways, e.g. as a Kubernetes Secret).
    #[arg(long, conflicts_with = "etcd", required_unless_present = "etcd")]
    pub file: Option<PathBuf>,
    /// etcd endpoints, comma-separated: keys under /quarry/<cluster>/keys/.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    #[arg(long, default_value = "quarry")]
    pub cluster: String,
}

#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// read (Search, Ask, GetDocument, workflow reads), write (Ingest, Delete, workflow
    /// submit and cancel), admin (everything, ClusterStatus included).
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
    /// Collections the key may use (default: all).
    #[arg(long, value_delimiter = ',')]
    pub collections: Vec<String>,
    /// Lifetime, e.g. 90d, 12h, 30m (default: no expiry).
    #[arg(long)]
    pub expires: Option<String>,
    /// A note for whoever reads `keys list`.
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub store: KeyStoreArgs,
}

#[derive(Debug, Args)]
pub struct KeysRevokeArgs {
    pub id: String,
    #[command(flatten)]
    pub store: KeyStoreArgs,
}

/// TLS and API keys of the gateway's public API.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// The gateway's TLS certificate chain (PEM); re-read when it changes.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The gateway's TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: also serve plaintext gRPC health alone here, for Kubernetes probes.
    #[arg(long, requires = "tls_cert")]
    pub health_listen: Option<String>,
    /// API keys (a JSON-lines file from `quarry keys create --file`); every call then needs one.
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    /// Serve a gateway on a non-loopback address with neither TLS nor API keys.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Submit a workflow file (JSON or YAML: name, description, steps).
    Submit(WorkflowSubmitArgs),
    /// Run a built-in template.
    #[command(subcommand)]
    Run(WorkflowTemplate),
    /// Print every state change of a workflow until it finishes.
    Watch(WorkflowIdArgs),
    /// Print a workflow's state.
    Get(WorkflowIdArgs),
    /// Cancel a workflow: its running steps are stopped, the rest cancelled.
    Cancel(WorkflowIdArgs),
    /// Every workflow the scheduler keeps, one line each.
    List(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum WorkflowTemplate {
    /// research (search + summary) → analyze → outline → draft → edit → review.
    ResearchAndWrite(ResearchAndWriteArgs),
}

#[derive(Debug, Args)]
pub struct WorkflowSubmitArgs {
    pub file: PathBuf,
    /// Watch it until it finishes.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ResearchAndWriteArgs {
    #[arg(long)]
    pub topic: String,
    #[arg(long, default_value = "plain")]
    pub style: String,
    #[arg(long, default_value = "general readers")]
    pub audience: String,
    /// Return once submitted instead of watching it to the end.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct WorkflowIdArgs {
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Writes the cluster's settings (shard count, partitions) to etcd, once.
    Create(ClusterCreateArgs),
    /// Grows or shrinks the retriever shards of a running cluster by moving partitions.
    Scale(ClusterScaleArgs),
    /// The placement: which shard owns each partition, and the moves under way.
    Status(ClusterStatusArgs),
}

#[derive(Debug, Args)]
pub struct ClusterScaleArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    #[arg(long, default_value = "quarry")]
    pub cluster: String,
    /// The shard count to reach (at most the partition count).
    #[arg(long, required_unless_present = "abort")]
    pub shards: Option<u32>,
    /// Waits until every move has finished (or rolled back), printing progress.
    #[arg(long)]
    pub wait: bool,
    /// Prints the moves it would make, and changes nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rolls back the moves of the scale under way that are not cut over yet.
    #[arg(long, conflicts_with_all = ["shards", "dry_run"])]
    pub abort: bool,
    /// Does nothing unless `--shards` is more than the shards serving now (Helm's
    /// post-upgrade hook).
    #[arg(long, conflicts_with = "if_shrinking")]
    pub if_growing: bool,
    /// Does nothing unless `--shards` is fewer than the shards serving now (Helm's
    /// pre-upgrade hook, draining shards before their StatefulSets go).
    #[arg(long)]
    pub if_shrinking: bool,
}

#[derive(Debug, Args)]
pub struct ClusterStatusArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    #[arg(long, default_value = "quarry")]
    pub cluster: String,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClusterCreateArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    #[arg(long, default_value = "quarry")]
    pub cluster: String,
    #[arg(long)]
    pub shards: u32,
    /// Partitions in all, a multiple of `--shards` (the most shards the cluster can grow
    /// to); default: at least 16.
    #[arg(long)]
    pub partitions: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Ranking quality, shard invariance and speed on a BEIR dataset, in-process.
    Beir(BeirArgs),
    /// Query-type accuracy of the rules, the embedding head (cross-validated) and both.
    Analyzer(AnalyzerBenchArgs),
    /// Tail latency with one replica slowed on 5% of its requests, hedging off and on.
    Tail(TailArgs),
    /// Moving partitions: move rate, and search and ingest during moves against steady.
    Scale(ScaleBenchArgs),
    /// Delay from a model server's first streamed token to a gRPC client's first token.
    FirstToken(FirstTokenArgs),
    /// Embedding throughput of short queries, one at a time and from concurrent clients.
    Embed(EmbedBenchArgs),
    /// Query throughput with tracing off and on (spans exported to a local OTLP receiver).
    Tracing(TracingBenchArgs),
    /// Scheduling overhead: no-op steps through the scheduler with durable state in etcd.
    Scheduler(SchedulerBenchArgs),
    /// One query across shards: latency by shard count, bytes from shards, in-process reference.
    QueryPath(QueryPathArgs),
    /// Asks offered at a multiple of measured capacity: admitted latency, refusals, memory, recovery.
    Overload(OverloadArgs),
    /// A filtered hybrid search (10% of the corpus) against an unfiltered one; a cached Ask.
    Filters(FiltersBenchArgs),
}

#[derive(Debug, Args)]
pub struct FiltersBenchArgs {
    /// A BEIR folder: its corpus gets synthetic metadata, its queries are searched.
    #[arg(long, default_value = "../shared/data/scifact")]
    pub dataset: PathBuf,
    /// Documents indexed (all by default).
    #[arg(long)]
    pub limit_docs: Option<usize>,
    /// Queries searched (all by default).
    #[arg(long)]
    pub limit_queries: Option<usize>,
    /// The collection the corpus goes into.
    #[arg(long, default_value = "bench")]
    pub collection: String,
    #[arg(long, default_value_t = 2)]
    pub shards: u32,
    /// Questions asked fresh and then from the cache.
    #[arg(long, default_value_t = 50)]
    pub asks: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScaleBenchArgs {
    /// A BEIR folder whose corpus is moved between shards.
    #[arg(long, default_value = "../shared/data/scifact")]
    pub dataset: PathBuf,
    /// Documents indexed (all by default).
    #[arg(long)]
    pub limit_docs: Option<usize>,
    /// Scales run in process after the resize at start (3 -> 2 -> 3 ...).
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Seconds of steady load between scales.
    #[arg(long, default_value_t = 4)]
    pub steady_s: u64,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct OverloadArgs {
    /// A BEIR folder whose corpus to index and whose queries to ask.
    #[arg(long, default_value = "../shared/data/scifact")]
    pub dataset: PathBuf,
    /// Documents indexed.
    #[arg(long, default_value_t = 1000)]
    pub limit_docs: usize,
    /// Length of the overload, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Offered load as a multiple of measured capacity.
    #[arg(long, default_value_t = 10.0)]
    pub factor: f64,
    /// Each Ask's deadline.
    #[arg(long, default_value_t = 3000)]
    pub deadline_ms: u64,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueryPathArgs {
    /// A BEIR folder whose corpus to index and whose queries to run.
    #[arg(long, default_value = "../shared/data/scifact")]
    pub dataset: PathBuf,
    /// Shard counts to compare (each gets its own in-process cluster and the same corpus).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub shards: Vec<u32>,
    /// Index only the first N documents (ingest embeds each one; latency is per query).
    #[arg(long)]
    pub limit_docs: Option<usize>,
    /// Queries whose bytes under the former protocol are measured.
    #[arg(long, default_value_t = 50)]
    pub byte_queries: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SchedulerBenchArgs {
    /// etcd endpoints; without, the benchmark starts a local etcd on free ports.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Workflows submitted at once.
    #[arg(long, default_value_t = 10)]
    pub workflows: usize,
    /// No-op steps per workflow, in layers of 10 (each step depends on two of the layer before).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TracingBenchArgs {
    /// A BEIR folder whose corpus to index and whose queries to ask.
    #[arg(long, default_value = "../shared/data/scifact")]
    pub dataset: PathBuf,
    /// Length of each measured window, in seconds.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Windows per setting; the median of the paired on/off ratios is reported.
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EmbedBenchArgs {
    /// A BEIR folder whose query texts to embed.
    #[arg(long, default_value = "../shared/data/scifact")]
    pub dataset: PathBuf,
    /// Texts embedded in each pass (the queries, repeated as needed).
    #[arg(long, default_value_t = 1000)]
    pub texts: usize,
    /// Concurrent clients in the second pass.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FirstTokenArgs {
    /// Measured asks.
    #[arg(long, default_value_t = 50)]
    pub asks: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// A BEIR folder whose corpus and queries to use.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Measured queries per run.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BeirArgs {
    /// A BEIR folder: corpus.jsonl, queries.jsonl, qrels-test.tsv.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Shard counts to run, e.g. 1,4 (the first is the reference for shard invariance).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub shards: Vec<u32>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "keyword,semantic,hybrid"
    )]
    pub modes: Vec<ModeArg>,
    /// Also run hybrid with the weighted-sum fusion, to compare it with RRF.
    #[arg(long)]
    pub compare_fusion: bool,
    /// Run only the first N judged queries.
    #[arg(long)]
    pub limit_queries: Option<usize>,
    /// Ingest only the first N documents (for rates and latency; nDCG needs them all).
    #[arg(long)]
    pub limit_docs: Option<usize>,
    /// Also time N Asks (the first N queries as questions, default mode and k) per shard count.
    #[arg(long, default_value_t = 0)]
    pub asks: usize,
    /// Also write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AnalyzerBenchArgs {
    /// Labelled questions: a header, then question<TAB>type per line.
    #[arg(long, default_value = "../shared/data/query-types.tsv")]
    pub file: PathBuf,
    /// Also score the rules and a head trained on --file on these labelled questions.
    #[arg(long)]
    pub held_out: Option<PathBuf>,
    /// Also train the query-type head on the whole file and write it here
    /// (services/analyzer/src/query_type_head.json is the one compiled in).
    #[arg(long)]
    pub train: Option<PathBuf>,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SearchBatchArgs {
    /// BEIR queries.jsonl (or {"id","text"} lines).
    #[arg(long)]
    pub queries: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub k: u32,
    #[arg(long, value_enum, default_value = "hybrid")]
    pub mode: ModeArg,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RoleArg {
    Gateway,
    Analyzer,
    Retriever,
    Generator,
    Evaluator,
    Scheduler,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    pub role: RoleArg,
    /// Address to listen on, e.g. 127.0.0.1:7701.
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub cluster: Option<String>,
    /// etcd endpoints, comma-separated: register there and find the other members there.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The address other members dial, when it differs from --listen.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Where a retriever keeps its shard.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Shard of a retriever.
    #[arg(long)]
    pub shard: Option<u32>,
    /// Replica of a retriever.
    #[arg(long)]
    pub replica: Option<u32>,
    /// Gateway without etcd: the analyzer's address.
    #[arg(long)]
    pub analyzer: Option<String>,
    /// Gateway without etcd: retriever addresses, one per shard, in shard order.
    #[arg(long, value_delimiter = ',')]
    pub retrievers: Vec<String>,
    /// Gateway without etcd: the generator's address.
    #[arg(long)]
    pub generator: Option<String>,
    /// Gateway without etcd: the evaluator's address.
    #[arg(long)]
    pub evaluator: Option<String>,
    /// Gateway without etcd: the scheduler's address.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the shards keep their data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Number of retriever shards; on an existing data directory with another count, the
    /// cluster is resized to it (partitions move while it serves).
    #[arg(long)]
    pub shards: Option<u32>,
    /// Partitions in all, when the data directory is new (default: at least 16).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Replicas per shard.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// The gateway's address; the other roles take free loopback ports.
    #[arg(long)]
    pub listen: Option<String>,
    /// Serve Prometheus metrics of every role of this process on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The gateway: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(long, env = "QUARRY_ADDR", default_value = "http://127.0.0.1:7700")]
    pub addr: String,
    /// An API key, sent as `authorization: Bearer <key>`.
    #[arg(long, env = "QUARRY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// gateway, instead of the system's.
    #[arg(long, env = "QUARRY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    pub file: PathBuf,
    /// The collection of lines that name none (a line's `"collection"` wins).
    #[arg(long, default_value = "")]
    pub collection: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ModeArg {
    Keyword,
    Semantic,
    Hybrid,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    pub query: String,
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    #[arg(long, value_enum, default_value = "hybrid")]
    pub mode: ModeArg,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    pub question: String,
    /// Passages to answer from (0: the gateway's default).
    #[arg(long, default_value_t = 0)]
    pub k: u32,
    /// Print answer text as it is written.
    #[arg(long)]
    pub stream: bool,
    /// Answer afresh even when a cached answer exists.
    #[arg(long)]
    pub skip_cache: bool,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}
