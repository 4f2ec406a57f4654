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
use crate::nn::pose::TURNS;
use crate::rotation::{Rotation, RotationDistribution};

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

/// Which turned copies of each posed cloud test-time augmentation adds. A pose lays the digit
/// flat but cannot tell its two faces apart (they look the same), so a cloud that came turned
/// over lands mirrored; its copies turned over again show the digit as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum TtaTurns {
    /// The posed cloud only.
    #[default]
    None,
    /// Also the posed cloud turned over about x and about y.
    Over,
    /// Also the posed cloud turned over either way and turned half-way round within its plane.
    All,
}

impl TtaTurns {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TtaTurns::None => "none",
            TtaTurns::Over => "over",
            TtaTurns::All => "all",
        }
    }

    /// The turns, the identity first.
    pub fn turns(self) -> &'static [Rotation] {
        match self {
            TtaTurns::None => &TURNS[..1],
            TtaTurns::Over => &OVER,
            TtaTurns::All => &TURNS,
        }
    }
}

/// The identity and the two turns over (see [`TURNS`]).
const OVER: [Rotation; 3] = [TURNS[0], TURNS[2], TURNS[3]];

/// One way of showing samples to a model: the clouds rotated by `augment`, posed, and turned by
/// `turn` before they are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pass {
    pub augment: Augment,
    pub turn: Rotation,
}

impl Pass {
    /// The clouds as they are.
    pub const PLAIN: Pass = Pass { augment: Augment::None, turn: Rotation::IDENTITY };
}

/// Test-time augmentation: the cosines averaged over `rotations` rotations of each cloud (none,
/// then rotations drawn as in training), and each posed rotated cloud turned by each of
/// `turns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tta {
    pub rotations: usize,
    pub turns: TtaTurns,
}

impl Tta {
    /// One pass, the clouds as they are.
    pub const NONE: Tta = Tta { rotations: 1, turns: TtaTurns::None };

    /// The passes, rotations drawn from `distribution` with `seed`.
    pub fn passes(self, distribution: RotationDistribution, seed: u64) -> Vec<Pass> {
        // Pass numbers far from any training epoch keep test-time draws apart from training ones.
        const FIRST_PASS: usize = 1 << 20;
        let rotations = std::iter::once(Augment::None).chain(
            (1..self.rotations.max(1)).map(|pass| Augment::Random {
                distribution,
                seed,
                epoch: FIRST_PASS + pass,
            }),
        );
        rotations
            .flat_map(|augment| self.turns.turns().iter().map(move |&turn| Pass { augment, turn }))
            .collect()
    }

    /// How many passes [`Tta::passes`] makes.
    pub fn count(self) -> usize {
        self.rotations.max(1) * self.turns.turns().len()
    }
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

/// Scores the samples `indices` of `set`, in batches of `batch`, once per entry of `passes`,
/// averaging the cosines. With `loss`, also the mean
/// loss of the first pass.
pub fn evaluate(
    model: &Model,
    set: &Arc<CloudSet>,
    indices: &[usize],
    batch: usize,
    passes: &[Pass],
    loss: Option<&CurricularFace>,
    device: &Device,
) -> Result<Evaluation> {
    let inputs = model.inputs();
    let [c, h, w] = inputs.shape();
    let mut sums = vec![[0f32; CLASSES]; indices.len()];
    let mut loss_sum = 0.0;
    let plan: Vec<Vec<usize>> = indices.chunks(batch.max(1)).map(<[usize]>::to_vec).collect();

    for (number, pass) in passes.iter().enumerate() {
        let inputs = inputs.clone().turned(pass.turn);
        let prefetcher = Prefetcher::spawn(Arc::clone(set), plan.clone(), inputs, pass.augment, 2);
        let mut offset = 0;
        while let Some(b) = prefetcher.next_batch()? {
            let n = b.indices.len();
            let input = Tensor::from_vec(b.input, (n, c, h, w), device)?;
            let cosines = model.cosines(&input, Phase::Eval)?;
            if let (0, Some(loss), Some(labels)) = (number, loss, &b.labels) {
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

    let loss = (loss.is_some() && set.labels().is_some() && !indices.is_empty())
        .then(|| loss_sum / indices.len() as f64);
    Ok(Evaluation::of_sums(set, indices, sums, passes.len(), loss))
}

/// Scores the samples `indices` of `set` with every model of an ensemble, each with its own
/// passes, and averages all their cosines: the ensemble's evaluation (without a loss).
pub fn evaluate_ensemble(
    members: &[(&Model, Vec<Pass>)],
    set: &Arc<CloudSet>,
    indices: &[usize],
    batch: usize,
    device: &Device,
) -> Result<Evaluation> {
    let mut sums = vec![[0f32; CLASSES]; indices.len()];
    let mut count = 0;
    for (model, passes) in members {
        let evaluation = evaluate(model, set, indices, batch, passes, None, device)?;
        for (sum, cosines) in sums.iter_mut().zip(&evaluation.cosines) {
            for (s, c) in sum.iter_mut().zip(cosines) {
                *s += c;
            }
        }
        count += 1;
    }
    Ok(Evaluation::of_sums(set, indices, sums, count, None))
}

impl Evaluation {
    /// The evaluation of samples `indices` of `set` whose cosines summed over `count` passes
    /// (or models) are `sums`.
    fn of_sums(
        set: &CloudSet,
        indices: &[usize],
        sums: Vec<[f32; CLASSES]>,
        count: usize,
        loss: Option<f64>,
    ) -> Self {
        let scale = 1.0 / count.max(1) as f32;
        let cosines: Vec<[f32; CLASSES]> = sums.into_iter().map(|s| s.map(|v| v * scale)).collect();
        let predictions: Vec<u8> = cosines.iter().map(argmax).collect();
        let confusion = set.labels().map(|labels| {
            let mut confusion = Confusion::default();
            for (&i, &p) in indices.iter().zip(&predictions) {
                confusion.add(labels[i], p);
            }
            confusion
        });
        Evaluation { indices: indices.to_vec(), cosines, predictions, confusion, loss }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::Alignment;
    use crate::nn::model::{InputForm, Inputs, Preprocess};

    #[test]
    fn tta_gives_every_rotation_each_of_its_turns() {
        let tta = Tta { rotations: 3, turns: TtaTurns::Over };
        let passes = tta.passes(RotationDistribution::PiOverK { max_k: 32 }, 5);
        assert_eq!(passes.len(), tta.count());
        assert_eq!(passes.len(), 9);
        assert_eq!(passes[0], Pass::PLAIN);
        for (group, turns) in passes.chunks(3).zip(0..) {
            assert!(group.iter().all(|p| p.augment == group[0].augment));
            assert_eq!(group.iter().map(|p| p.turn).collect::<Vec<_>>(), OVER);
            assert_eq!(group[0].augment == Augment::None, turns == 0);
        }
        assert_ne!(passes[3].augment, passes[6].augment);
        assert_eq!(Tta::NONE.passes(RotationDistribution::Uniform, 5), vec![Pass::PLAIN]);
        assert_eq!(Tta { rotations: 2, turns: TtaTurns::All }.count(), 8);
    }

    #[test]
    fn a_turned_over_copy_shows_a_digit_that_came_turned_over_as_written() {
        // The plane pose cannot tell an L from an L turned over (its faces look the same): it
        // lands mirrored, and the pass turned over again shows the L as written.
        let flat = crate::lift::testing::l_shape(3);
        let over = TURNS[2].rotate(&flat);
        let inputs =
            Inputs::new(Preprocess { alignment: Alignment::Plane, form: InputForm::Boards });
        let draw = |inputs: &Inputs, cloud: &[crate::Point]| {
            let mut out = vec![0f32; inputs.values()];
            inputs.write(&[cloud.to_vec()], &mut out).unwrap();
            out
        };
        let written = draw(&inputs, &flat);
        assert_ne!(draw(&inputs, &over), written);
        assert_eq!(draw(&inputs.clone().turned(TURNS[2]), &over), written);
    }

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
