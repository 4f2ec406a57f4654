//! `digit3d model`: a model's layers and parameter counts.

use candle_core::Device;
use digit3d::align::Alignment;
use digit3d::nn::model::{Architecture, InputForm, Model, ModelConfig};
use digit3d::nn::pose::PoseNet;

/// Arguments of `digit3d model`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the layer table and the parameter counts.
    #[arg(long)]
    pub summary: bool,
    /// Which model.
    #[arg(long, value_enum, default_value = "compact")]
    pub model: Architecture,
    /// Its input: the 256 x 256 grid, the 24 stacked 46 x 46 views or the three 46 x 46 boards
    /// (default: grid for xception, boards for compact).
    #[arg(long, value_enum)]
    pub input: Option<InputForm>,
    /// The pose clouds are put in first; `learned` adds the pose network (default: none for
    /// xception, plane for compact).
    #[arg(long, value_enum)]
    pub align: Option<Alignment>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = ModelConfig::new(args.model);
    if let Some(input) = args.input {
        config.input = input;
    }
    if let Some(alignment) = args.align {
        config.alignment = alignment;
    }
    let model = Model::new(&config, 0, &Device::Cpu)?;
    if args.summary {
        print_summary(&model);
    } else {
        println!(
            "{:?} model on {:?} input; pass --summary for its layers",
            config.architecture, config.input
        );
    }
    Ok(())
}

fn print_summary(model: &Model) {
    println!("{:<28} {:<24} {:<18} {:>12}", "layer", "kind", "output", "parameters");
    println!("{}", "-".repeat(85));
    let pose_rows = model.pose().map(PoseNet::summary).unwrap_or_default();
    for row in pose_rows.iter().chain(model.summary()) {
        let shape = row.output.iter().map(usize::to_string).collect::<Vec<_>>().join(" x ");
        println!("{:<28} {:<24} {:<18} {:>12}", row.name, row.kind, shape, thousands(row.params));
    }
    println!("{}", "-".repeat(85));

    let (all, trainable) = model.params().count();
    let head: usize = model
        .params()
        .iter()
        .filter(|p| p.name.starts_with("cosine."))
        .map(|p| p.var.elem_count())
        .sum();
    println!("backbone parameters:        {:>12}", thousands(all - head));
    println!("  trainable:                {:>12}", thousands(trainable - head));
    println!("  non-trainable:            {:>12}", thousands(all - trainable));
    println!("cosine head parameters:     {:>12}", thousands(head));
    let pose = model.pose().map_or(0, |p| p.params().count().0);
    if pose > 0 {
        println!("pose network parameters:    {:>12}", thousands(pose));
    }
    println!("total parameters:           {:>12}", thousands(all + pose));
}

/// 20860904 as `20,860,904`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
