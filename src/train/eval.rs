//! Scoring a model: cosines for many samples in batches (averaged over test-time rotations),
//! predictions, accuracy and the confusion matrix.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{Augment, Prefetcher};
use crate::dataset::CloudSet;
use crate::nn::curricular::CurricularFace;
use crate::nn::head::CLASSES;
use crate::nn::layers::Phase;
use crate::nn::model::Model;
use crate::rotation::RotationDistribution;

/// Counts of (true label, predicted label) pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// `counts[truth][predicted]`.
    pub counts: [[u64; CLASSES]; CLASSES],
}

impl Confusion {
    /// Counts one prediction.
    pub fn add(&mut self, truth: u8, predicted: u8) {
        self.counts[usize::from(truth)][usize::from(predicted)] += 1;
    }

    /// How many predictions were counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// The share of correct predictions (0 when none were counted).
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..CLASSES).map(|i| self.counts[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// The accuracy of each true class, `None` for a class never seen.
    pub fn per_class(&self) -> [Option<f64>; CLASSES] {
        std::array::from_fn(|i| {
            let n: u64 = self.counts[i].iter().sum();
            (n > 0).then(|| self.counts[i][i] as f64 / n as f64)
        })
    }
}

/// The index of the largest value.
pub fn argmax(values: &[f32; CLASSES]) -> u8 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u8
}

/// The rotations of `k` test-time passes: none, then `k - 1` drawn from `distribution`.
pub fn tta_passes(k: usize, distribution: RotationDistribution, seed: u64) -> Vec<Augment> {
    // Pass numbers far from any training epoch keep test-time draws apart from training ones.
    const FIRST_PASS: usize = 1 << 20;
    std::iter::once(Augment::None)
        .chain((1..k.max(1)).map(|pass| Augment::Random {
            distribution,
            seed,
            epoch: FIRST_PASS + pass,
        }))
        .collect()
}

/// The result of scoring samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The scored samples, as indices into the set.
    pub indices: Vec<usize>,
    /// Their cosines, averaged over the passes.
    pub cosines: Vec<[f32; CLASSES]>,
    /// The predicted digits.
    pub predictions: Vec<u8>,
    /// Against the labels, when the set has them.
    pub confusion: Option<Confusion>,
    /// The mean CurricularFace loss of the first pass, when asked for and labelled.
    pub loss: Option<f64>,
}

/// Scores the samples `indices` of `set`, in batches of `batch`, once per entry of `passes`
/// (each a way of rotating the clouds first), averaging the cosines. With `loss`, also the mean
/// loss of the first pass.
pub fn evaluate(
    model: &Model,
    set: &Arc<CloudSet>,
    indices: &[usize],
    batch: usize,
    passes: &[Augment],
    loss: Option<&CurricularFace>,
    device: &Device,
) -> Result<Evaluation> {
    let inputs = model.inputs();
    let [c, h, w] = inputs.shape();
    let mut sums = vec![[0f32; CLASSES]; indices.len()];
    let mut loss_sum = 0.0;
    let plan: Vec<Vec<usize>> = indices.chunks(batch.max(1)).map(<[usize]>::to_vec).collect();

    for (pass, augment) in passes.iter().enumerate() {
        let prefetcher =
            Prefetcher::spawn(Arc::clone(set), plan.clone(), inputs.clone(), *augment, 2);
        let mut offset = 0;
        while let Some(b) = prefetcher.next_batch()? {
            let n = b.indices.len();
            let input = Tensor::from_vec(b.input, (n, c, h, w), device)?;
            let cosines = model.cosines(&input, Phase::Eval)?;
            if let (0, Some(loss), Some(labels)) = (pass, loss, &b.labels) {
                let labels = Tensor::from_vec(labels.clone(), n, device)?;
                let value: f32 = loss.loss(&cosines, &labels)?.loss.to_scalar()?;
                loss_sum += f64::from(value) * n as f64;
            }
            for (sum, row) in sums[offset..offset + n].iter_mut().zip(cosines.to_vec2::<f32>()?) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += v;
                }
            }
            offset += n;
        }
    }

    let scale = 1.0 / passes.len().max(1) as f32;
    let cosines: Vec<[f32; CLASSES]> = sums.into_iter().map(|s| s.map(|v| v * scale)).collect();
    let predictions: Vec<u8> = cosines.iter().map(argmax).collect();
    let confusion = set.labels().map(|labels| {
        let mut confusion = Confusion::default();
        for (&i, &p) in indices.iter().zip(&predictions) {
            confusion.add(labels[i], p);
        }
        confusion
    });
    let loss = (loss.is_some() && set.labels().is_some() && !indices.is_empty())
        .then(|| loss_sum / indices.len() as f64);
    Ok(Evaluation { indices: indices.to_vec(), cosines, predictions, confusion, loss })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_counts_accuracy_overall_and_per_class() {
        let mut c = Confusion::default();
        for (t, p) in [(1, 1), (1, 1), (1, 7), (3, 3), (7, 1)] {
            c.add(t, p);
        }
        assert_eq!(c.total(), 5);
        assert!((c.accuracy() - 0.6).abs() < 1e-12);
        let per = c.per_class();
        assert_eq!(per[1], Some(2.0 / 3.0));
        assert_eq!(per[3], Some(1.0));
        assert_eq!(per[7], Some(0.0));
        assert_eq!(per[0], None);
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        let mut v = [0f32; CLASSES];
        v[4] = 0.9;
        v[6] = 0.9;
        assert_eq!(argmax(&v), 4);
    }
}
