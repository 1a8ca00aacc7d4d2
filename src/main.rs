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
use trainspotter::scenario::Scenario;

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
    /// Write simulated telemetry as native events, one JSON object per line, ending now: the demo
    /// fleet (the workloads `demo` runs), or with --scenario one scenario of the evaluation library
    /// (see --list-scenarios). Feed it to a broker or to `replay`.
    Simulate {
        /// Simulated cluster hours.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// Random seed (the same seed and hours give the same events, shifted to end now).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// A scenario of the evaluation library instead of the demo fleet.
        #[arg(long)]
        scenario: Option<String>,
        /// Instances of the scenario.
        #[arg(long, default_value_t = 1, requires = "scenario")]
        count: usize,
        /// Write each run's label and ground-truth FLOP as JSON lines to this file.
        #[arg(long, requires = "scenario")]
        labels: Option<PathBuf>,
        /// List the scenarios and exit.
        #[arg(long)]
        list_scenarios: bool,
        /// Output file, - for standard output, or kafka to produce to --topic on --brokers.
        #[arg(long, short, default_value = "-")]
        output: String,
        /// Kafka bootstrap servers (with --output kafka).
        #[arg(long, default_value = "localhost:9092")]
        brokers: String,
        /// Kafka topic (with --output kafka).
        #[arg(long, default_value = "gpu-usage")]
        topic: String,
    },
    /// Evaluate detection and compute estimates on a mix of labelled scenarios run through the
    /// real pipeline, plus the real traces in --data; writes evaluation.md, eval/eval.json and
    /// SVG plots under --out.
    Eval {
        /// default, quick, or a TOML mix file (name, positive_hours, negative_hours, fleet_pods,
        /// [scenarios] name = instances).
        #[arg(long, default_value = "default")]
        mix: String,
        /// Random seed of the mix.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Configuration file (TOML): detection, estimate and alert settings as the daemon uses.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The shared real traces (Helios, openb); their section is skipped if missing.
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// Worker threads (default: available cores).
        #[arg(long)]
        threads: Option<usize>,
        /// More seeds of the same mix whose targets are checked and reported too (comma
        /// separated), e.g. seeds held out from tuning the defaults.
        #[arg(long, value_delimiter = ',')]
        check_seeds: Vec<u64>,
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
    /// Measure throughput and memory on a generated fleet (see BENCHMARKS.md): decoding alone,
    /// the whole pipeline on one thread, the state's bytes per job and per device series, RSS,
    /// and writing and restoring a checkpoint of the state. Prints a markdown table. Logs nothing
    /// unless TRAINSPOTTER_LOG sets a filter, on standard error (e.g.
    /// trainspotter::partitions=debug,trainspotter::pipeline=debug: each evaluation and checkpoint
    /// encoding of a live run; trainspotter::kafka=debug (or trainspotter=debug) also logs each
    /// batch, with its partitions, alerts, how many more batches it took in for another partition's
    /// detection boundary, and the time to collect, apply and deliver it, and every alert
    /// delivered, which slows a run with thousands of alerts).
    Bench {
        /// Devices, one event each per round.
        #[arg(long, default_value_t = 1_000_000)]
        gpus: usize,
        /// Jobs the devices are divided into (consecutive devices).
        #[arg(long, default_value_t = 200_000)]
        jobs: usize,
        /// Tenants the jobs are spread over at random.
        #[arg(long, default_value_t = 100_000)]
        tenants: usize,
        /// Event time between rounds (each device's sampling interval). The throughput target's
        /// fleet samples every second: `--interval 1s --rounds 121` measures it (one evaluation
        /// of every job a minute), as scripts/bench.sh does after each run.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Rounds of events; the first creates every key and is reported apart. The default, 37
        /// rounds of 10 s, spans six minutes of event time; with the default 5-minute allowed
        /// lateness, every job is evaluated once a minute from round 7 on (six evaluations).
        #[arg(long, default_value_t = 37)]
        rounds: usize,
        /// Messages per pipeline batch (as the consumer hands them over).
        #[arg(long, default_value_t = 4096)]
        batch: usize,
        /// Random seed of names, placement and order.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Configuration file (TOML); windows and detection settings apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also write the outcome as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Kafka bootstrap servers: also measure catch-up from a preloaded topic, the daemon
        /// against a bare consumer reading the same topic (kafka.* settings of --config apply).
        #[arg(long)]
        brokers: Option<String>,
        /// Topic to preload (must exist, with 2 or more partitions, and be empty).
        #[arg(long, default_value = "bench-usage")]
        topic: String,
        /// Events to preload for the catch-up measurement.
        #[arg(long, default_value_t = 10_000_000)]
        kafka_events: u64,
        /// Skip the in-process measurements (with --brokers: the catch-up only).
        #[arg(long)]
        no_in_process: bool,
        /// With --brokers, instead of the catch-up: produce the fleet's events live (each device
        /// once per --interval, stamped with the wall clock) for this long while the daemon
        /// consumes them, and measure alert latency and memory over time. The topic must exist
        /// and the alert topic (kafka.alert_topic) too.
        #[arg(long, value_parser = humantime::parse_duration)]
        live: Option<std::time::Duration>,
        /// Every n-th job runs like a training job: the same steady activity on all its devices
        /// and 70 GiB of device memory, against 40 GiB and activity spread across devices for the
        /// others (0 for none). Default: 10 in the live run, 0 in process.
        #[arg(long)]
        training_every: Option<usize>,
        /// In-process measurements: with a tenant registry that spreads the tenants over this
        /// many organisations (so every sample also counts toward its tenant's organisation) and
        /// has two policy rules, one matching every generated tenant; 0 for no registry.
        #[arg(long, default_value_t = 0)]
        organisations: usize,
        /// Instead of the other measurements: run the pipeline in process for this long of wall
        /// time, as fast as it goes, with job churn, sampling the state's bytes and the RSS, and
        /// report their growth after the warm-up.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "live")]
        soak: Option<std::time::Duration>,
        /// Live run and soak: each job is renamed this often in event time, staggered per job,
        /// so jobs keep starting and ending (0s for no churn).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        job_lifetime: std::time::Duration,
        /// Live run and soak: memory samples before this (wall time) are left out of the growth
        /// figures.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        warmup: std::time::Duration,
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
    let lacking = trainspotter::cpu::missing();
    if !lacking.is_empty() {
        eprintln!("trainspotter: {}", trainspotter::cpu::refusal(&lacking));
        return ExitCode::from(2);
    }
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
            scenario,
            count,
            labels,
            list_scenarios,
            output,
            brokers,
            topic,
        } => {
            if list_scenarios {
                for s in Scenario::ALL {
                    println!(
                        "{:<18} {:<8} {}",
                        s.name(),
                        format!("{:?}", s.class()).to_lowercase(),
                        s.describe()
                    );
                }
                return ExitCode::SUCCESS;
            }
            report_exit(simulate(
                hours, seed, scenario, count, labels, &output, &brokers, &topic,
            ))
        }
        Command::Eval {
            mix,
            seed,
            config,
            data,
            out,
            threads,
            check_seeds,
        } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            let opts = EvalArgs {
                mix,
                seed,
                config,
                data,
                out,
                threads,
                check_seeds,
            };
            report_exit(eval(cfg, opts))
        }
        Command::Bench {
            gpus,
            jobs,
            tenants,
            interval,
            rounds,
            batch,
            seed,
            config,
            json,
            brokers,
            topic,
            kafka_events,
            no_in_process,
            live,
            training_every,
            organisations,
            soak,
            job_lifetime,
            warmup,
        } => {
            let mut cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if std::env::var_os("TRAINSPOTTER_LOG").is_some() {
                init_logging(&cfg);
            }
            let shape = trainspotter::bench::Shape {
                gpus,
                jobs,
                tenants,
                interval_ms: interval.as_millis() as i64,
                rounds,
                batch: batch.max(1),
                seed,
                training_every: training_every.unwrap_or(if live.is_some() { 10 } else { 0 }),
                organisations,
            };
            if let Some(duration) = soak {
                let opts = trainspotter::bench::soak::SoakOptions {
                    duration,
                    warmup,
                    job_lifetime,
                    sample_every: (duration / 60).clamp(
                        std::time::Duration::from_secs(1),
                        std::time::Duration::from_secs(60),
                    ),
                };
                return report_exit(soak_bench(&shape, &cfg, &opts, json.as_deref()));
            }
            let kafka = brokers.map(|b| {
                cfg.kafka.brokers = b;
                match live {
                    Some(duration) => KafkaBench::Live(
                        topic,
                        trainspotter::bench::live::LiveOptions {
                            duration,
                            warmup,
                            job_lifetime,
                        },
                    ),
                    None => KafkaBench::CatchUp(topic, kafka_events),
                }
            });
            report_exit(bench(&shape, &cfg, !no_in_process, kafka, json.as_deref()))
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
    let pipeline =
        trainspotter::replay::replay_into_pipeline(cfg, &mut reader, &mut io::sink(), None, false)?;
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
            tenant
                .map(|t| format!(" of tenant {t}"))
                .unwrap_or_default()
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

#[allow(clippy::too_many_arguments)]
fn simulate(
    hours: u32,
    seed: u64,
    scenario: Option<String>,
    count: usize,
    labels: Option<PathBuf>,
    output: &str,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let Some(name) = scenario else {
        if output == "kafka" {
            anyhow::bail!("--output kafka needs --scenario");
        }
        let n = with_output(output, |w| {
            trainspotter::sim::write_demo_ndjson(&mut *w, hours, seed, now)
        })?;
        eprintln!("trainspotter: {n} events written");
        return Ok(());
    };
    let scenario = Scenario::parse(&name).with_context(|| {
        format!("unknown scenario {name:?} (trainspotter simulate --list-scenarios)")
    })?;
    let spec = trainspotter::simulate::ScenarioSpec {
        scenario,
        count,
        hours,
        seed,
        end_ms: now,
    };
    let runs = spec.runs();
    if let Some(p) = labels {
        let f = File::create(&p).with_context(|| format!("cannot create {}", p.display()))?;
        let mut w = BufWriter::new(f);
        for r in &runs {
            serde_json::to_writer(&mut w, &trainspotter::simulate::label(r))?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    let n = if output == "kafka" {
        trainspotter::simulate::produce(brokers, topic, |send| {
            trainspotter::simulate::stream(&runs, seed, send)
        })?
    } else {
        with_output(output, |w| {
            trainspotter::simulate::stream(&runs, seed, |s| writeln!(w, "{}", s.to_json()))
        })?
    };
    eprintln!("trainspotter: {n} events of {} runs written", runs.len());
    Ok(())
}

/// Runs `f` on a buffered writer to `output` (a file, or - for standard output) and flushes it.
fn with_output(
    output: &str,
    f: impl FnOnce(&mut dyn Write) -> io::Result<u64>,
) -> anyhow::Result<u64> {
    let n = if output == "-" {
        let mut w = BufWriter::new(io::stdout().lock());
        let n = f(&mut w)?;
        w.flush()?;
        n
    } else {
        let file = File::create(output).with_context(|| format!("cannot create {output}"))?;
        let mut w = BufWriter::new(file);
        let n = f(&mut w)?;
        w.flush()?;
        n
    };
    Ok(n)
}

struct EvalArgs {
    mix: String,
    seed: u64,
    config: Option<PathBuf>,
    data: PathBuf,
    out: PathBuf,
    threads: Option<usize>,
    check_seeds: Vec<u64>,
}

fn eval(cfg: Config, args: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
        mix,
        seed,
        config,
        data,
        out,
        threads,
        check_seeds,
    } = args;
    let started = std::time::Instant::now();
    let mut command = format!("trainspotter eval --mix {mix} --seed {seed}");
    if !check_seeds.is_empty() {
        let seeds: Vec<String> = check_seeds.iter().map(u64::to_string).collect();
        command += &format!(" --check-seeds {}", seeds.join(","));
    }
    if let Some(c) = &config {
        command += &format!(" --config {}", c.display());
    }
    command += &format!(" --data {} --out {}", data.display(), out.display());
    let opts = trainspotter::eval::EvalOptions {
        check_seeds,
        mix: trainspotter::eval::Mix::load(&mix)?,
        seed,
        config: cfg,
        data: Some(data),
        threads: threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
        command,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let e = trainspotter::eval::run(&opts, &out)?;
    for t in &e.targets {
        eprintln!(
            "{:<4} {}: {} (required {})",
            if t.pass { "pass" } else { "FAIL" },
            t.name,
            t.value,
            t.target
        );
    }
    for o in &e.other_seeds {
        for t in &o.targets {
            eprintln!(
                "{:<4} seed {}: {}: {} (required {})",
                if t.pass { "pass" } else { "FAIL" },
                o.seed,
                t.name,
                t.value,
                t.target
            );
        }
    }
    eprintln!(
        "trainspotter: {} events, {} runs in {:.1} s; report in {}",
        e.events,
        e.runs.len(),
        started.elapsed().as_secs_f64(),
        out.join("evaluation.md").display()
    );
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

fn soak_bench(
    shape: &trainspotter::bench::Shape,
    cfg: &Config,
    opts: &trainspotter::bench::soak::SoakOptions,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let outcome = trainspotter::bench::soak::run(shape, cfg, opts)?;
    print!("{}", trainspotter::bench::soak::table(&outcome));
    if let Some(path) = json {
        let doc = serde_json::json!({ "soak": outcome });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The Kafka part of `bench`: catch-up from a preloaded topic (topic, events), or a live run.
enum KafkaBench {
    CatchUp(String, u64),
    Live(String, trainspotter::bench::live::LiveOptions),
}

fn bench(
    shape: &trainspotter::bench::Shape,
    cfg: &Config,
    in_process: bool,
    kafka: Option<KafkaBench>,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let scratch = tempfile_dir()?;
    let outcome = bench_in(shape, cfg, in_process, kafka, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let (local, kafka, live) = outcome?;
    if let Some(o) = &local {
        print!("{}", trainspotter::bench::table(o));
    }
    if let Some(k) = &kafka {
        print!("{}", trainspotter::bench::kafka::table(k));
    }
    if let Some(l) = &live {
        print!("{}", trainspotter::bench::live::table(l));
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "in_process": local, "kafka": kafka, "live": live });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

type BenchOutcome = (
    Option<trainspotter::bench::Outcome>,
    Option<trainspotter::bench::kafka::KafkaOutcome>,
    Option<trainspotter::bench::live::LiveOutcome>,
);

fn bench_in(
    shape: &trainspotter::bench::Shape,
    cfg: &Config,
    in_process: bool,
    kafka: Option<KafkaBench>,
    scratch: &std::path::Path,
) -> anyhow::Result<BenchOutcome> {
    let local = match in_process {
        true => Some(trainspotter::bench::run(shape, cfg, scratch)?),
        false => None,
    };
    let state = scratch.join("state");
    Ok(match kafka {
        Some(KafkaBench::CatchUp(topic, events)) => {
            let k = trainspotter::bench::kafka::run(cfg, shape, &topic, events, &state)?;
            (local, Some(k), None)
        }
        Some(KafkaBench::Live(topic, opts)) => {
            let l = trainspotter::bench::live::run(cfg, shape, &topic, &opts, &state)?;
            (local, None, Some(l))
        }
        None => (local, None, None),
    })
}

/// A fresh directory under the system temporary directory, for the benchmark's checkpoint.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("trainspotter-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
