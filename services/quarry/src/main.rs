//! The one Quarry binary: `quarry serve <role>`, `quarry up`, and the client commands.

mod bench;
mod certs;
mod cli;
mod client;
mod front_door;
#[cfg(test)]
mod fuzz_tests;
mod jsonl;
mod keys;
mod output;
mod roles;
mod scale;
mod search_batch;
mod serve;
mod up;
mod workflow;

use std::process::ExitCode;

use clap::Parser;
use quarry_kit::config::QuarryConfig;
use quarry_kit::discovery::Role;
use quarry_kit::telemetry::{init_logging, LogFormat, Telemetry, TelemetrySettings};
use serde_json::{json, Map, Value};

use cli::{
    BenchCommand, Cli, ClusterCommand, Command, LogFormatArg, RoleArg, ServeArgs, UpArgs,
    WorkflowCommand,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => {
            let config = load_config(&cli, serve_overrides(args))?;
            let role = role_of(args.role);
            let telemetry = init_telemetry(&config, &format!("quarry-{role}"), role.as_str())?;
            let shutdown = quarry_kit::shutdown::on_signal();
            let served = serve::run_serve(role, args, config, shutdown).await;
            telemetry.shutdown().await;
            served
        }
        Command::Up(args) => {
            let config = load_config(&cli, up_overrides(args))?;
            let telemetry = init_telemetry(&config, "quarry", "all")?;
            let shutdown = quarry_kit::shutdown::on_signal();
            let served = up::run_up(config, shutdown).await;
            telemetry.shutdown().await;
            served
        }
        Command::Ingest(args) => {
            init_client_logging(&cli);
            client::ingest(args).await
        }
        Command::Search(args) => {
            init_client_logging(&cli);
            client::search(args).await
        }
        Command::Ask(args) => {
            init_client_logging(&cli);
            client::ask(args).await
        }
        Command::Status(args) => {
            init_client_logging(&cli);
            client::status(args).await
        }
        Command::Collection(command) => {
            init_client_logging(&cli);
            client::collection(command).await
        }
        Command::Cluster(ClusterCommand::Create(args)) => {
            init_client_logging(&cli);
            let settings = quarry_kit::discovery::ClusterSettings {
                shards: args.shards,
                partitions: args.partitions,
            };
            let config = load_config(&cli, Map::new())?;
            let access = quarry_kit::discovery::EtcdAccess::with_endpoints(
                &config.discovery,
                args.etcd.clone(),
            );
            let created =
                quarry_kit::discovery::create_cluster(&access, &args.cluster, settings).await?;
            println!(
                "cluster {} was created with {} shard(s) and {} partitions",
                args.cluster,
                created.shards,
                created.partitioning()?.count()
            );
            Ok(())
        }
        Command::Cluster(ClusterCommand::Scale(args)) => {
            init_client_logging(&cli);
            let config = load_config(&cli, Map::new())?;
            scale::cluster_scale(&config, args).await
        }
        Command::Cluster(ClusterCommand::Status(args)) => {
            init_client_logging(&cli);
            let config = load_config(&cli, Map::new())?;
            scale::cluster_status(&config, args).await
        }
        Command::SearchBatch(args) => {
            init_client_logging(&cli);
            search_batch::search_batch(args).await
        }
        Command::Bench(BenchCommand::Beir(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_beir_bench(args, config).await
        }
        Command::Bench(BenchCommand::FirstToken(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_first_token_bench(args, config).await
        }
        Command::Bench(BenchCommand::Tail(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_tail_bench(args, config).await
        }
        Command::Bench(BenchCommand::Embed(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_embed_bench(args, config).await
        }
        Command::Bench(BenchCommand::Tracing(args)) => {
            init_client_logging(&cli);
            bench::run_tracing_bench(args).await
        }
        Command::Bench(BenchCommand::QueryPath(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_query_path_bench(args, config).await
        }
        Command::Bench(BenchCommand::Filters(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_filters_bench(args, config).await
        }
        Command::Bench(BenchCommand::Scale(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_scale_bench(args, config).await
        }
        Command::Bench(BenchCommand::Overload(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_overload_bench(args, config).await
        }
        Command::Bench(BenchCommand::Scheduler(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_scheduler_bench(args, config).await
        }
        Command::Certs(command) => certs::run(command),
        Command::Keys(command) => {
            init_client_logging(&cli);
            let config = load_config(&cli, Map::new())?;
            keys::run(command, &config.discovery).await
        }
        Command::Workflow(command) => {
            init_client_logging(&cli);
            match command {
                WorkflowCommand::Submit(args) => workflow::submit(args).await,
                WorkflowCommand::Run(template) => workflow::run_template(template).await,
                WorkflowCommand::Watch(args) => workflow::watch(args).await,
                WorkflowCommand::Get(args) => workflow::get(args).await,
                WorkflowCommand::Cancel(args) => workflow::cancel(args).await,
                WorkflowCommand::List(args) => workflow::list(args).await,
            }
        }
        Command::Bench(BenchCommand::Analyzer(args)) => {
            let config = load_config(&cli, Map::new())?;
            init_logging(config.log_format, "warn");
            bench::run_analyzer_bench(
                &args.file,
                args.held_out.as_deref(),
                args.train.as_deref(),
                args.out.as_deref(),
                &config,
            )
            .await
        }
    }
}

/// Logs, and spans when OpenTelemetry export is configured, for a serving process.
fn init_telemetry(
    config: &QuarryConfig,
    service_name: &str,
    role: &str,
) -> anyhow::Result<Telemetry> {
    let settings = TelemetrySettings {
        log_format: config.log_format,
        default_filter: "info".to_string(),
        service_name: service_name.to_string(),
        role: role.to_string(),
    };
    Ok(quarry_kit::telemetry::init(&settings)?)
}

fn init_client_logging(cli: &Cli) {
    let format = match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        _ => LogFormat::Human,
    };
    init_logging(format, "warn");
}

fn role_of(role: RoleArg) -> Role {
    match role {
        RoleArg::Gateway => Role::Gateway,
        RoleArg::Analyzer => Role::Analyzer,
        RoleArg::Retriever => Role::Retriever,
        RoleArg::Generator => Role::Generator,
        RoleArg::Evaluator => Role::Evaluator,
        RoleArg::Scheduler => Role::Scheduler,
    }
}

/// Loads the configuration layers, with the given flags as the top layer.
fn load_config(cli: &Cli, mut flags: Map<String, Value>) -> anyhow::Result<QuarryConfig> {
    if let Some(format) = cli.log_format {
        let name = match format {
            LogFormatArg::Human => "human",
            LogFormatArg::Json => "json",
        };
        flags.insert("log_format".to_string(), json!(name));
    }
    Ok(QuarryConfig::load(
        cli.config.as_deref(),
        Value::Object(flags),
    )?)
}

/// The TLS and API key flags, shaped like the configuration file.
fn security_overrides(args: &cli::SecurityArgs, flags: &mut Map<String, Value>) {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut tls = json!({ "cert": cert, "key": key });
        if let Some(health) = &args.health_listen {
            tls["health_listen"] = json!(health);
        }
        flags.insert("tls".to_string(), tls);
    }
    if let Some(keys_file) = &args.keys_file {
        flags.insert("auth".to_string(), json!({ "keys_file": keys_file }));
    }
    if args.insecure {
        flags.insert("insecure".to_string(), json!(true));
    }
}

fn serve_overrides(args: &ServeArgs) -> Map<String, Value> {
    let mut flags = Map::new();
    security_overrides(&args.security, &mut flags);
    if let Some(listen) = &args.listen {
        flags.insert("listen".to_string(), json!(listen));
    }
    if let Some(cluster) = &args.cluster {
        flags.insert("cluster".to_string(), json!(cluster));
    }
    if let Some(advertise) = &args.advertise {
        flags.insert("advertise".to_string(), json!(advertise));
    }
    if !args.etcd.is_empty() {
        flags.insert("discovery".to_string(), json!({ "etcd": args.etcd }));
    }
    if let Some(data_dir) = &args.data_dir {
        flags.insert("data_dir".to_string(), json!(data_dir));
    }
    if let Some(metrics_addr) = &args.metrics_addr {
        flags.insert("metrics".to_string(), json!({ "addr": metrics_addr }));
    }
    let mut retriever = Map::new();
    if let Some(shard) = args.shard {
        retriever.insert("shard".to_string(), json!(shard));
    }
    if let Some(replica) = args.replica {
        retriever.insert("replica".to_string(), json!(replica));
    }
    if !retriever.is_empty() {
        flags.insert("retriever".to_string(), Value::Object(retriever));
    }
    flags
}

fn up_overrides(args: &UpArgs) -> Map<String, Value> {
    let mut flags = Map::new();
    security_overrides(&args.security, &mut flags);
    if let Some(listen) = &args.listen {
        flags.insert("listen".to_string(), json!(listen));
    }
    if let Some(data_dir) = &args.data_dir {
        flags.insert("data_dir".to_string(), json!(data_dir));
    }
    if let Some(shards) = args.shards {
        flags.insert("shards".to_string(), json!(shards));
    }
    if let Some(partitions) = args.partitions {
        flags.insert("partitions".to_string(), json!(partitions));
    }
    if let Some(replicas) = args.replicas {
        flags.insert("replicas".to_string(), json!(replicas));
    }
    if let Some(metrics_addr) = &args.metrics_addr {
        flags.insert("metrics".to_string(), json!({ "addr": metrics_addr }));
    }
    flags
}
