//! Checkpoints: the weights (and the optimiser's moments) in one safetensors file, whose header
//! also carries everything else a resumed run needs, copied to a JSON sidecar for people to
//! read.
//!
//! The safetensors file is the authority: it is written under a temporary name and renamed
//! into place, so a run killed while saving leaves the previous checkpoint whole. The sidecar is
//! renamed in after it and is only ever a copy.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::TrainConfig;
use super::optim::AdamW;
use crate::atomic::write_atomically;
use crate::dataset::DataError;
use crate::nn::model::{Model, ModelConfig};
use crate::nn::pose::PREFIX;

/// The version of the checkpoint layout.
pub const FORMAT: u32 = 1;

/// The header key under which the metadata is stored.
const META_KEY: &str = "digit3d";

/// Where a run stands: the next batch to train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The epoch, from 0.
    pub epoch: usize,
    /// The batch within the epoch, from 0.
    pub batch: usize,
    /// Optimiser steps taken in all.
    pub step: u64,
    /// Steps the pose network has trained (learned alignment only; it trains first).
    #[serde(default)]
    pub pose_step: u64,
    /// Whether the pose network is done training (its steps taken, or its time spent).
    #[serde(default)]
    pub pose_done: bool,
}

/// One finished (or stopped) epoch, as `metrics.csv` has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Optimiser steps taken in all by its end.
    pub step: u64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch's batches (as augmented).
    pub train_accuracy: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// The CurricularFace state at its end.
    pub t: f64,
    /// The learning rate of its last step.
    pub lr: f64,
    /// Seconds spent training and evaluating it.
    pub seconds: f64,
}

/// Everything in a checkpoint but the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`FORMAT`].
    pub format: u32,
    /// The model's shape.
    pub model: ModelConfig,
    /// The run's settings.
    pub train: TrainConfig,
    /// Where the run stands.
    pub position: Position,
    /// The CurricularFace state.
    pub t: f64,
    /// Whether the optimiser's moments are included (they are in `last`, not in `best`).
    pub has_optimizer: bool,
    /// The best validation accuracy so far.
    pub best_val_accuracy: Option<f64>,
    /// Every epoch so far.
    pub history: Vec<EpochRecord>,
    /// With the learned alignment: for each training cloud, which turn its own upright pose
    /// showed, as the pose network judged midway through its training (an index into
    /// [`TURNS`](crate::nn::pose::TURNS)); empty before then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pose_references: Vec<u8>,
}

/// A checkpoint that cannot be written, read or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file is missing or unreadable.
    #[error(transparent)]
    File(#[from] DataError),
    /// Not a digit3d checkpoint, or damaged.
    #[error("{}: not a digit3d checkpoint: {detail}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A checkpoint of a different model than the one asked for.
    #[error("{}: {detail}", .path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// How it differs.
        detail: String,
    },
}

/// The JSON sidecar beside `weights`: `NAME.json` for `NAME.safetensors`.
pub fn sidecar(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Saves `model` (with its pose network, if any, and, when given, the moments of the optimiser
/// in use) with `meta` to `path`, then the sidecar beside it; each file is replaced atomically.
pub fn save(
    path: &Path,
    model: &Model,
    optimizer: Option<&AdamW>,
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let fail = |detail: String| DataError::Write { path: path.to_owned(), detail };
    let mut tensors = model.params().tensors().map_err(|e| fail(e.to_string()))?;
    if let Some(pose) = model.pose() {
        tensors.extend(pose.params().tensors().map_err(|e| fail(e.to_string()))?);
    }
    if let Some(optimizer) = optimizer {
        tensors.extend(optimizer.state().map_err(|e| fail(e.to_string()))?);
    }
    let json = serde_json::to_string_pretty(meta).expect("checkpoint metadata always serialises");
    let header = HashMap::from([(META_KEY.to_owned(), json.clone())]);

    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(&tensors, Some(header), tmp).map_err(|e| fail(e.to_string()))
    })?;
    let json_path = sidecar(path);
    write_atomically(&json_path, |tmp| {
        fs::write(tmp, json + "\n").map_err(|e| DataError::io(&json_path, e))
    })?;
    Ok(())
}

/// A checkpoint read back: its metadata and every tensor, on the CPU.
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// Everything but the tensors.
    pub meta: CheckpointMeta,
    /// The tensors by name: the model's, and `adamw.*` moments when `meta.has_optimizer`.
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads a checkpoint written by [`save`].
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let invalid = |detail: String| CheckpointError::Invalid { path: path.to_owned(), detail };
        let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| invalid("the safetensors header has no digit3d metadata".into()))?;
        let meta: CheckpointMeta =
            serde_json::from_str(json).map_err(|e| invalid(format!("bad metadata: {e}")))?;
        if meta.format != FORMAT {
            return Err(invalid(format!("format {} (this program reads {FORMAT})", meta.format)));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Checkpoint { path: path.to_owned(), meta, tensors })
    }

    /// A model built from the checkpoint's configuration, with its weights, on `device`.
    pub fn model(&self, device: &Device) -> Result<Model, CheckpointError> {
        let model = Model::new(&self.meta.model, 0, device).map_err(|e| {
            CheckpointError::Invalid { path: self.path.clone(), detail: e.to_string() }
        })?;
        self.load_into(&model)?;
        Ok(model)
    }

    /// Sets `model`'s weights from the checkpoint; fails, changing nothing, when the checkpoint
    /// is of another model.
    pub fn load_into(&self, model: &Model) -> Result<(), CheckpointError> {
        if &self.meta.model != model.config() {
            return Err(CheckpointError::Mismatch {
                path: self.path.clone(),
                detail: format!(
                    "the checkpoint is of a {} model ({:?} input), not {} ({:?} input)",
                    architecture_name(&self.meta.model),
                    self.meta.model.input,
                    architecture_name(model.config()),
                    model.config().input
                ),
            });
        }
        let weights = |pose: bool| -> HashMap<String, Tensor> {
            self.tensors
                .iter()
                .filter(|(k, _)| !k.starts_with("adamw.") && k.starts_with(PREFIX) == pose)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let misfit = |detail: String| CheckpointError::Mismatch {
            path: self.path.clone(),
            detail: format!("its tensors do not fit the model: {detail}"),
        };
        model.params().load(&weights(false)).map_err(misfit)?;
        match model.pose() {
            Some(pose) => pose.params().load(&weights(true)).map_err(misfit),
            None => Ok(()),
        }
    }
}

fn architecture_name(config: &ModelConfig) -> String {
    serde_json::to_value(config.architecture)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
