//! The `trainspotter` command: argument parsing, logging, signals and exit codes. All logic lives in
//! the library.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use trainspotter::config::{Config, ConfigError, InputFormat, LogFormat};

/// Exit code for a configuration error (EX_USAGE-style, as linkerd does).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "trainspotter",
    version,
    about = "Detects large AI training runs from accelerator telemetry on Kafka."
)]
#[command(
    long_about = "Detects large AI training runs from accelerator telemetry on Kafka.\n\n\
Keeps exact per-tenant and per-job accelerator-hours in event-time sliding windows, estimates the \
training compute (FLOP) each workload used, and raises alerts before a reporting threshold is crossed.\n\n\
Configuration layers: built-in defaults, then --config FILE (TOML), then environment variables \
TRAINSPOTTER__SECTION__KEY (e.g. TRAINSPOTTER__KAFKA__BROKERS=host:9092)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: consume usage topics, keep windows, detect, produce alerts, serve HTTP.
    Run {
        /// Configuration file (TOML). Without it, built-in defaults and environment apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// See it work with no setup: embedded Kafka broker, simulated fleet, the daemon, live metrics.
    Demo {
        /// Simulated cluster hours to run.
        #[arg(long, default_value_t = 36)]
        hours: u32,
        /// Simulated seconds per wall-clock second.
        #[arg(long, default_value_t = 2400)]
        speed: u32,
        /// HTTP listen address for /metrics and the API while the demo runs.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
    },
    /// Run the same pipeline over a file of native events (NDJSON, optionally gzip; - for stdin).
    /// Alerts are written to stdout, one CloudEvent JSON per line.
    Replay {
        /// Configuration file (TOML); windows, detection and alert settings apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write the final report (totals, windows, jobs) as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Write rejected lines (line number, reason, payload) as JSON lines to this file.
        #[arg(long)]
        dead_letter: Option<PathBuf>,
        /// Format of the lines: native events, prometheus-kafka-adapter JSON, Vector metric JSON or
        /// OTLP/JSON (one ExportMetricsServiceRequest per line); metrics are joined into samples
        /// per GPU and scrape as the daemon does.
        #[arg(long, value_enum, default_value = "native")]
        format: ReplayFormat,
        /// Input file, or - for standard input.
        input: String,
    },
    /// Write simulated telemetry of the demo fleet (the workloads `demo` runs) as native events,
    /// one JSON object per line, ending now; feed it to a broker or to `replay`.
    Simulate {
        /// Simulated cluster hours.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// Random seed (the same seed and hours give the same events, shifted to end now).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output file, or - for standard output.
        #[arg(long, short, default_value = "-")]
        output: String,
    },
    /// Explain why a job is or is not suspected of training: replay a file (as `replay` does) and
    /// print, as JSON, the job's score and every feature against its thresholds, with the window,
    /// nodes, devices and time span involved. A running daemon answers the same question at
    /// GET /api/v1/explain?tenant=T&job=J.
    Explain {
        /// Job id to explain.
        #[arg(long)]
        job: String,
        /// Tenant of the job; without it, every tenant's job of that id is explained.
        #[arg(long)]
        tenant: Option<String>,
        /// Configuration file (TOML); detection settings apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Format of the lines (as for `replay`).
        #[arg(long, value_enum, default_value = "native")]
        format: ReplayFormat,
        /// Input file, or - for standard input.
        input: String,
    },
    /// Load and validate a configuration (and the tenant registry file it names); print the
    /// effective settings with secrets redacted.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReplayFormat {
    Native,
    PrometheusAdapter,
    Vector,
    OtlpJson,
}

fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_from_env("TRAINSPOTTER_LOG")
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    Config::load(path.map(PathBuf::as_path)).map_err(|e| {
        eprintln!("trainspotter: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(Some(&file)).and_then(|cfg| {
            // Builds the pipeline once: decoders and the tenant registry file are checked too.
            trainspotter::pipeline::Pipeline::new(
                &cfg,
                std::sync::Arc::new(trainspotter::metrics::Metrics::new()),
            )?;
            Ok(cfg)
        }) {
            Ok(cfg) => {
                print!("{}", cfg.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("trainspotter: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Simulate {
            hours,
            seed,
            output,
        } => {
            let now = chrono::Utc::now().timestamp_millis();
            let written = if output == "-" {
                let mut w = BufWriter::new(io::stdout().lock());
                trainspotter::sim::write_demo_ndjson(&mut w, hours, seed, now).and_then(|n| {
                    w.flush()?;
                    Ok(n)
                })
            } else {
                File::create(&output).and_then(|f| {
                    let mut w = BufWriter::new(f);
                    let n = trainspotter::sim::write_demo_ndjson(&mut w, hours, seed, now)?;
                    w.flush()?;
                    Ok(n)
                })
            };
            match written {
                Ok(n) => {
                    eprintln!("trainspotter: {n} events written");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("trainspotter: cannot write {output}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            report_exit(
                runtime()
                    .block_on(trainspotter::kafka::run(cfg, shutdown_signal()))
                    .map_err(Into::into),
            )
        }
        Command::Demo {
            hours,
            speed,
            listen,
        } => {
            let mut cfg = Config::default();
            cfg.http.listen = listen;
            cfg.log.level = "warn".into();
            init_logging(&cfg);
            let opts = trainspotter::demo::DemoOptions { hours, speed };
            report_exit(
                runtime()
                    .block_on(trainspotter::demo::run(cfg, opts, shutdown_signal()))
                    .map_err(Into::into),
            )
        }
        Command::Replay {
            config,
            report,
            dead_letter,
            format,
            input,
        } => {
            let cfg = match replay_config(config.as_ref(), format) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            report_exit(replay(&cfg, &input, report, dead_letter))
        }
        Command::Explain {
            job,
            tenant,
            config,
            format,
            input,
        } => {
            let cfg = match replay_config(config.as_ref(), format) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            report_exit(explain(&cfg, &input, &job, tenant.as_deref()))
        }
    }
}

/// The configuration of a file replay: `path` (or defaults) with the file's format.
fn replay_config(path: Option<&PathBuf>, format: ReplayFormat) -> Result<Config, ExitCode> {
    let mut cfg = load(path)?;
    cfg.input.formats.insert(
        trainspotter::pipeline::Shard::LOCAL_TOPIC.into(),
        match format {
            ReplayFormat::Native => InputFormat::Native,
            ReplayFormat::PrometheusAdapter => InputFormat::PrometheusAdapter,
            ReplayFormat::Vector => InputFormat::Vector,
            ReplayFormat::OtlpJson => InputFormat::OtlpJson,
        },
    );
    Ok(cfg)
}

fn explain(cfg: &Config, input: &str, job: &str, tenant: Option<&str>) -> anyhow::Result<()> {
    let mut reader = trainspotter::replay::open_input(input)?;
    let pipeline = trainspotter::replay::replay_into_pipeline(
        cfg,
        &mut reader,
        &mut io::sink(),
        None,
        false,
    )?;
    let tenants: Vec<String> = match tenant {
        Some(t) => vec![t.to_string()],
        None => pipeline
            .job_reports()
            .into_iter()
            .filter(|j| j.job == job)
            .map(|j| j.tenant)
            .collect(),
    };
    let explained: Vec<_> = tenants
        .iter()
        .filter_map(|t| pipeline.explain(t, job))
        .collect();
    if explained.is_empty() {
        anyhow::bail!(
            "no job {job}{} in {input}",
            tenant.map(|t| format!(" of tenant {t}")).unwrap_or_default()
        );
    }
    let mut out = BufWriter::new(io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, &explained)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built on any supported platform")
}

fn replay(
    cfg: &Config,
    input: &str,
    report: Option<PathBuf>,
    dead_letter: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut reader = trainspotter::replay::open_input(input)?;
    let stdout = io::stdout();
    let mut alerts = BufWriter::new(stdout.lock());
    let mut dl = match &dead_letter {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let r = trainspotter::replay::replay(
        cfg,
        &mut reader,
        &mut alerts,
        dl.as_mut().map(|w| w as &mut dyn Write),
        true,
    )?;
    if let Some(w) = dl.as_mut() {
        w.flush()?;
    }
    let e = &r.events;
    eprintln!(
        "replay: {} accepted, {} rejected, {} late, {} duplicate; {} tenants, {} jobs; latest event {}",
        e.accepted,
        e.rejected,
        e.late,
        e.duplicate,
        r.tenants.len(),
        r.jobs.len(),
        r.max_event_time.as_deref().unwrap_or("-")
    );
    if let Some(p) = report {
        let f = File::create(&p).with_context(|| format!("cannot create {}", p.display()))?;
        let mut w = BufWriter::new(f);
        serde_json::to_writer_pretty(&mut w, &r)?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    Ok(())
}

fn report_exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config_error = e.chain().any(|c| {
                c.downcast_ref::<ConfigError>().is_some()
                    || matches!(
                        c.downcast_ref::<trainspotter::kafka::DaemonError>(),
                        Some(trainspotter::kafka::DaemonError::Config(_))
                    )
            });
            eprintln!("trainspotter: {e:#}");
            ExitCode::from(if config_error { EXIT_CONFIG } else { 1 })
        }
    }
}
