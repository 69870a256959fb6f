//! The `clickedge` binary: parse flags, validate, then run the library's server.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clickedge::config::RunArgs;
use clickedge::consume::ConsumeArgs;
use clickedge::links::LoadError;
use clickedge::{Config, Server};

/// Bad flags or configuration (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// A links file that cannot become the map (sysexits EX_DATAERR).
const EXIT_LINKS: u8 = 65;

/// A click-redirect edge: link map -> 302 -> click event in Kafka.
#[derive(Debug, Parser)]
#[command(
    name = "clickedge",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a topic's messages (key, headers, value) as JSON lines.
    Consume(ConsumeArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are answers, not errors.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging();

    if let Some(Command::Consume(args)) = &cli.command {
        let mut stdout = std::io::stdout().lock();
        return match clickedge::consume::run(args, &mut stdout) {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("clickedge consume: {error:#}");
                ExitCode::FAILURE
            }
        };
    }

    let config = match Config::from_args(cli.run) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("clickedge: {error:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.check {
        return check(&config);
    }

    // The control runtime: admin API, signals, reloads, the links topic. The edge
    // serves from its own threads, one runtime per core (`--workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("clickedge: cannot start the runtime: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = Server::bind(config).await?;
        server.run(clickedge::signal::shutdown()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("clickedge: {error:#}");
            if error.downcast_ref::<LoadError>().is_some() {
                ExitCode::from(EXIT_LINKS)
            } else if error
                .downcast_ref::<clickedge::geoip::GeoIpError>()
                .is_some()
            {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `--check`: the configuration parsed; now the certificates (when TLS is on),
/// the GeoIP database (with `--geoip-db`) and the links file, every bad line
/// named.
fn check(config: &Config) -> ExitCode {
    if let Some((_, dir)) = &config.https {
        match clickedge::tls::CertStore::load(dir) {
            Ok((store, errors)) => {
                for error in &errors {
                    eprintln!("{}: {} (skipped)", error.path.display(), error.reason);
                }
                println!(
                    "{}: OK, {} certificates, {} skipped",
                    dir.display(),
                    store.index().certs.len(),
                    errors.len()
                );
            }
            Err(error) => {
                eprintln!(
                    "clickedge: cannot read --tls-certs {}: {error}",
                    dir.display()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    if let Some(path) = &config.geoip_db {
        match clickedge::geoip::GeoIp::open(path) {
            Ok(geoip) => println!(
                "{}: OK, {} built at {} (Unix seconds)",
                path.display(),
                geoip.database,
                geoip.build_epoch
            ),
            Err(error) => {
                eprintln!("clickedge: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    match config.links.load(config.strict) {
        Ok(loaded) => {
            for error in &loaded.invalid {
                eprintln!("{}: {error} (skipped)", config.links);
            }
            let counts = loaded.map.counts();
            println!(
                "{}: OK, {} records ({} tracking, {} vanity, {} domain, {} fallback, {} app_site, {} brand, {} promo), {} invalid skipped",
                config.links,
                loaded.map.len(),
                counts.tracking,
                counts.vanity,
                counts.domain,
                counts.fallback,
                counts.app_site,
                counts.brand,
                counts.promo,
                loaded.invalid.len()
            );
            // The process ends now: freeing millions of records one by one would
            // only make `--check` slower.
            std::mem::forget(loaded);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("clickedge: {error:#}");
            ExitCode::from(EXIT_LINKS)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
