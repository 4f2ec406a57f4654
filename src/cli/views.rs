//! `digit3d views`: the grid (and the 24 views) of one cloud as PNG images.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use digit3d::atomic::write_atomically;
use digit3d::dataset::{DataError, Dataset};
use digit3d::rotation::Angles;
use digit3d::views::{Boards, VIEW_COUNT, VIEW_SIZE, ViewKind};

/// Arguments of `digit3d views`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A dataset folder or one .h5 file.
    pub path: PathBuf,
    /// The sample's ID.
    #[arg(long)]
    pub id: u32,
    /// Rotate the cloud first by angles A,B,C in radians about x, y and z (M = Rx·Ry·Rz).
    #[arg(long, value_name = "A,B,C", allow_hyphen_values = true, default_value = "0,0,0")]
    pub rotate: Angles,
    /// Where to write the grid: 256 x 256, 8-bit grayscale, 0 and 255.
    #[arg(long, value_name = "PNG")]
    pub out: PathBuf,
    /// Also write the 24 views, 46 x 46 each, into this folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub views_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sample = Dataset::read_sample(&args.path, args.id)?;
    let cloud = args.rotate.rotation().rotate(&sample.cloud);
    let boards = Boards::from_cloud(&cloud, VIEW_SIZE);

    let grid = boards.grid();
    write_png(&args.out, grid.as_slice(), grid.side())?;
    tracing::info!("wrote {} (sample {}, rotated by {})", args.out.display(), args.id, args.rotate);

    if let Some(dir) = &args.views_dir {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let views = boards.views();
        for index in 0..VIEW_COUNT {
            let path = dir.join(format!("{index:02}-{}.png", ViewKind::of(index).file_stem()));
            write_png(&path, views.view(index), views.size())?;
        }
        tracing::info!("wrote {VIEW_COUNT} views to {}", dir.display());
    }
    Ok(())
}

/// Writes a square 0/1 image as an 8-bit PNG of 0 and 255, atomically.
fn write_png(path: &Path, pixels: &[u8], side: usize) -> Result<(), DataError> {
    let bytes: Vec<u8> = pixels.iter().map(|&v| v * 255).collect();
    let image = image::GrayImage::from_raw(side as u32, side as u32, bytes)
        .expect("a square image has side² pixels");
    write_atomically(path, |tmp| {
        image
            .save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| DataError::Write { path: path.to_owned(), detail: e.to_string() })
    })
}
