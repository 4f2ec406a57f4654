//! Command-line arguments and the commands they run.

mod info;
mod lift;
mod views;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use digit3d::dataset::LoadReport;

/// Classify handwritten digits given as 3D point clouds, and see why a model gets them right or
/// wrong. Without a command, opens the desktop program on the bundled sample in data/.
#[derive(Debug, Parser)]
#[command(name = "digit3d", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Summarise a dataset: samples, labels, points per cloud, coordinate range.
    Info(info::Args),
    /// Write the grid image (and optionally the 24 views) of one cloud as PNG files.
    Views(views::Args),
    /// Make a dataset in the Dacon layout from 2D digit images.
    Lift(lift::Args),
}

/// Sends `tracing` logs to standard error; `DIGIT3D_LOG` (for example `debug`) sets the level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIGIT3D_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Info(args)) => info::run(args),
        Some(Command::Views(args)) => views::run(args),
        Some(Command::Lift(args)) => lift::run(args),
        None => open_desktop(&bundled_data()),
    }
}

/// Until the desktop program is part of the build, says what it would open.
fn open_desktop(data: &Path) -> anyhow::Result<()> {
    println!(
        "digit3d would open the desktop program on {}; it is not part of this build yet.",
        data.display()
    );
    println!("Meanwhile the command line works on the same data:\n");
    info::run(info::Args {
        path: data.to_owned(),
        strict: false,
    })
}

/// The bundled sample: `data/` in the working folder when there is one (as under `cargo run`),
/// else the copy in the source tree this program was built from.
pub fn bundled_data() -> PathBuf {
    let local = PathBuf::from("data");
    if local.join("train.h5").exists() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
    }
}

/// Logs the samples that loading skipped: a count per problem, then the first few in full.
fn warn_skipped(report: &LoadReport) {
    const SHOWN: usize = 5;
    if report.skipped.is_empty() {
        return;
    }
    let counts: Vec<String> = report
        .counts()
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    tracing::warn!(
        "skipped {} samples: {}",
        report.skipped.len(),
        counts.join(", ")
    );
    for skipped in report.skipped.iter().take(SHOWN) {
        tracing::warn!("  {}: {skipped}", skipped.path.display());
    }
    if report.skipped.len() > SHOWN {
        tracing::warn!(
            "  ... and {} more (--strict stops at the first)",
            report.skipped.len() - SHOWN
        );
    }
}
