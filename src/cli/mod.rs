//! Command-line arguments and the commands they run.

mod bench;
mod eval;
mod info;
mod lift;
mod model;
mod predict;
mod train;
mod views;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use clap::{Parser, Subcommand};
use digit3d::dataset::LoadReport;
use indicatif::{MultiProgress, ProgressBar};

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
    /// Train a model, writing checkpoints and metrics into a run folder.
    Train(train::Args),
    /// Score a checkpoint: accuracy, per-class accuracy, confusion matrix.
    Eval(eval::Args),
    /// Predict a test set to a submission CSV.
    Predict(predict::Args),
    /// Show a model's layers and parameter counts.
    Model(model::Args),
    /// Measure: train and score several configurations side by side.
    Bench(bench::Args),
    /// Open the desktop program: rotate a cloud, see its views, train, inspect mistakes.
    #[cfg(feature = "gui")]
    Gui(crate::gui::Args),
}

/// The progress bars on standard error; log lines are printed above them.
static PROGRESS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// Shows `bar` under the log lines.
pub fn progress_bar(bar: ProgressBar) -> ProgressBar {
    PROGRESS.add(bar)
}

/// A log line, written to standard error in one piece with the progress bars moved out of its
/// way.
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        PROGRESS.suspend(|| {
            let _ = io::stderr().write_all(&line);
        });
    }
}

/// Sends `tracing` logs to standard error; `DIGIT3D_LOG` (for example `debug`) sets the level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIGIT3D_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time()
        .with_ansi(io::stderr().is_terminal())
        .with_writer(|| LogLine(Vec::new()))
        .init();
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Info(args)) => info::run(args),
        Some(Command::Views(args)) => views::run(args),
        Some(Command::Lift(args)) => lift::run(args),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Predict(args)) => predict::run(args),
        Some(Command::Model(args)) => model::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        #[cfg(feature = "gui")]
        Some(Command::Gui(args)) => crate::gui::run(args, bundled_data()),
        None => open_desktop(),
    }
}

/// Opens the desktop program on the bundled sample.
#[cfg(feature = "gui")]
fn open_desktop() -> anyhow::Result<()> {
    crate::gui::run(crate::gui::Args::default(), bundled_data())
}

/// A build without the desktop program summarises the bundled sample instead.
#[cfg(not(feature = "gui"))]
fn open_desktop() -> anyhow::Result<()> {
    let data = bundled_data();
    println!(
        "this build of digit3d has no desktop program (build with the `gui` feature); {} holds:\n",
        data.display()
    );
    info::run(info::Args { path: data, strict: false })
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
    let counts: Vec<String> =
        report.counts().iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    tracing::warn!("skipped {} samples: {}", report.skipped.len(), counts.join(", "));
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
