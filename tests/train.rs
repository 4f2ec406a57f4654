//! Training end to end on a tiny set: learning happens, runs are reproducible, a resumed run
//! continues exactly, and bad settings and checkpoints are refused clearly.

use std::path::Path;
use std::sync::Arc;

use digit3d::Point;
use digit3d::align::Alignment;
use digit3d::dataset::{CloudSet, Role};
use digit3d::lift::{DIGIT_SIDE, Digit, LiftConfig, lift_digit};
use digit3d::nn::compact::CompactConfig;
use digit3d::nn::model::{Architecture, InputForm};
use digit3d::rotation::RotationDistribution;
use digit3d::train::checkpoint::{Checkpoint, CheckpointError, EpochRecord};
use digit3d::train::{DeviceChoice, Event, Reason, TrainConfig, TrainError, Trainer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A simple shape per label, distinct however it is centred: a horizontal bar, a vertical
/// bar, a diagonal, a square outline.
fn shape_digit(label: u8) -> Digit {
    let mut pixels = vec![0.0; DIGIT_SIDE * DIGIT_SIDE];
    for k in 6..22 {
        let cells = match label {
            0 => vec![(13, k), (14, k)],
            1 => vec![(k, 13), (k, 14)],
            2 => vec![(k, k), (k, k + 1)],
            _ => vec![(6, k), (21, k), (k, 6), (k, 21)],
        };
        for (r, c) in cells {
            pixels[r * DIGIT_SIDE + c] = 1.0;
        }
    }
    Digit { label, pixels }
}

/// `n` lifted shapes, labels cycling through four classes, slightly rotated.
fn tiny_set(n: usize) -> Arc<CloudSet> {
    let config = LiftConfig {
        density: 2.0,
        rotation: RotationDistribution::PiOverK { max_k: 32 },
        ..LiftConfig::default()
    };
    let samples = (0..n)
        .map(|i| {
            let label = (i % 4) as u8;
            let (cloud, _): (Vec<Point>, _) =
                lift_digit(&shape_digit(label), &config, &mut ChaCha8Rng::seed_from_u64(i as u64));
            (i as u32, Some(label), cloud)
        })
        .collect();
    Arc::new(CloudSet::from_samples(Role::Train, "tiny/train.h5".into(), samples))
}

/// A compact backbone small enough to train in a test: two stages of one convolution each.
fn tiny_net(stem_kernel: usize, stem_stride: usize) -> CompactConfig {
    CompactConfig { stem: 8, stem_kernel, stem_stride, stages: vec![12, 16], depths: vec![1, 1] }
}

fn tiny_config(epochs: usize) -> TrainConfig {
    let mut config = TrainConfig::new(Architecture::Compact);
    config.model.compact = tiny_net(1, 1);
    config.epochs = epochs;
    config.batch = 8;
    config.lr = 1e-2;
    config.val_fraction = 0.25;
    config.calibration_batches = 2;
    config.augment = RotationDistribution::None;
    config
}

/// Runs to the end (or to the end of the first epoch, with `one_epoch`); returns every event.
fn run_for(
    config: TrainConfig,
    set: &Arc<CloudSet>,
    out: Option<&Path>,
    resume: Option<&Checkpoint>,
    one_epoch: bool,
) -> Vec<Event> {
    let trainer = Trainer::new(config, Arc::clone(set), out.map(Path::to_owned), resume).unwrap();
    let handle = trainer.spawn();
    if one_epoch {
        handle.stop_after_epoch();
    }
    let mut events = Vec::new();
    while let Some(event) = handle.next_event() {
        if let Event::Failed(e) = &event {
            panic!("training failed: {e}");
        }
        events.push(event);
    }
    events
}

fn run(
    config: TrainConfig,
    set: &Arc<CloudSet>,
    out: Option<&Path>,
    resume: Option<&Checkpoint>,
) -> Vec<Event> {
    run_for(config, set, out, resume, false)
}

fn losses(events: &[Event]) -> Vec<f64> {
    events.iter().filter_map(|e| if let Event::Step(s) = e { Some(s.loss) } else { None }).collect()
}

#[test]
fn a_tiny_model_learns_and_reports_every_step() {
    let set = tiny_set(64);
    let dir = tempfile::tempdir().unwrap();
    let events = run(tiny_config(6), &set, Some(dir.path()), None);
    let steps = losses(&events);
    // 48 training samples in batches of 8: 6 steps per epoch.
    assert_eq!(steps.len(), 36);
    let first: f64 = steps[..6].iter().sum::<f64>() / 6.0;
    let last: f64 = steps[30..].iter().sum::<f64>() / 6.0;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let epochs: Vec<_> = events
        .iter()
        .filter_map(|e| if let Event::Epoch(r) = e { Some(r) } else { None })
        .collect();
    assert_eq!(epochs.len(), 6);
    let final_epoch = epochs.last().unwrap();
    assert_eq!(final_epoch.confusion.total(), 16);
    assert!(final_epoch.record.val_accuracy > 0.5, "{:?}", final_epoch.record);
    assert!(matches!(events.last(), Some(Event::Finished { reason: Reason::Completed, .. })));
    for name in ["best.safetensors", "best.json", "last.safetensors", "last.json", "metrics.csv"] {
        assert!(dir.path().join(name).exists(), "{name}");
    }
    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 7, "{metrics}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let set = tiny_set(48);
    let a = losses(&run(tiny_config(1), &set, None, None));
    let b = losses(&run(tiny_config(1), &set, None, None));
    assert_eq!(a, b);
    let mut other = tiny_config(1);
    other.seed = 1;
    assert_ne!(losses(&run(other, &set, None, None)), a);
}

#[test]
fn a_resumed_run_continues_exactly() {
    let set = tiny_set(48);
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = losses(&run(tiny_config(3), &set, Some(straight_dir.path()), None));

    // The same run stopped after one epoch, then resumed from its last checkpoint.
    let split_dir = tempfile::tempdir().unwrap();
    let mut resumed = losses(&run_for(tiny_config(3), &set, Some(split_dir.path()), None, true));
    let checkpoint = Checkpoint::read(&split_dir.path().join("last.safetensors")).unwrap();
    assert_eq!(checkpoint.meta.position.epoch, 1);
    resumed.extend(losses(&run(tiny_config(3), &set, Some(split_dir.path()), Some(&checkpoint))));
    assert_eq!(resumed, straight);

    let a = Checkpoint::read(&straight_dir.path().join("last.safetensors")).unwrap();
    let b = Checkpoint::read(&split_dir.path().join("last.safetensors")).unwrap();
    let name = "cosine.weight";
    let (wa, wb): (Vec<f32>, Vec<f32>) = (
        a.tensors[name].flatten_all().unwrap().to_vec1().unwrap(),
        b.tensors[name].flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(wa, wb);
    assert_eq!(a.meta.history.len(), 3);
    let timeless = |h: &[EpochRecord]| {
        h.iter().map(|r| EpochRecord { seconds: 0.0, ..r.clone() }).collect::<Vec<_>>()
    };
    assert_eq!(timeless(&b.meta.history), timeless(&a.meta.history));
}

#[test]
fn stop_ends_the_run_with_an_evaluation_and_a_checkpoint() {
    let set = tiny_set(64);
    let dir = tempfile::tempdir().unwrap();
    let trainer =
        Trainer::new(tiny_config(50), Arc::clone(&set), Some(dir.path().to_owned()), None).unwrap();
    let handle = trainer.spawn();
    let mut events = Vec::new();
    while let Some(event) = handle.next_event() {
        if matches!(event, Event::Step(ref s) if s.step == 3) {
            handle.stop();
        }
        events.push(event);
    }
    assert!(
        matches!(events.last(), Some(Event::Finished { reason: Reason::Stopped, .. })),
        "{:?}",
        events.last()
    );
    assert!(events.iter().any(|e| matches!(e, Event::Epoch(_))));
    let checkpoint = Checkpoint::read(&dir.path().join("last.safetensors")).unwrap();
    assert_eq!(checkpoint.meta.position.epoch, 0);
    assert!(checkpoint.meta.position.batch >= 3);
}

#[test]
fn bad_settings_and_checkpoints_are_refused_clearly() {
    let set = tiny_set(16);
    let unlabelled = Arc::new(CloudSet::from_samples(
        Role::Test,
        "x/test.h5".into(),
        vec![(0, None, vec![[0.0; 3]])],
    ));
    let err = Trainer::new(tiny_config(1), unlabelled, None, None).err().unwrap();
    assert!(matches!(err, TrainError::NoLabels(_)), "{err}");
    assert!(err.to_string().contains("no labels"));

    let mut no_val = tiny_config(1);
    no_val.val_fraction = 0.0;
    let err = Trainer::new(no_val, Arc::clone(&set), None, None).err().unwrap();
    assert!(err.to_string().contains("validation split is empty"), "{err}");

    let mut cuda = tiny_config(1);
    cuda.device = DeviceChoice::Cuda;
    if !candle_core::utils::cuda_is_available() {
        let err = Trainer::new(cuda, Arc::clone(&set), None, None).err().unwrap();
        assert!(err.to_string().contains("no CUDA support"), "{err}");
    }

    // A checkpoint of the tiny compact model cannot resume a run of another model.
    let dir = tempfile::tempdir().unwrap();
    run(tiny_config(1), &set, Some(dir.path()), None);
    let checkpoint = Checkpoint::read(&dir.path().join("last.safetensors")).unwrap();
    let err = Trainer::new(
        TrainConfig::new(Architecture::Xception),
        Arc::clone(&set),
        None,
        Some(&checkpoint),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("last.safetensors"), "{err}");
    assert!(err.to_string().contains("Xception") || err.to_string().contains("xception"), "{err}");

    // A damaged checkpoint names itself.
    let corrupt = dir.path().join("corrupt.safetensors");
    let bytes = std::fs::read(dir.path().join("last.safetensors")).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 3]).unwrap();
    let err = Checkpoint::read(&corrupt).err().unwrap();
    assert!(matches!(err, CheckpointError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("corrupt.safetensors: not a digit3d checkpoint"), "{err}");
}

fn tiny_learned_config(epochs: usize) -> TrainConfig {
    let mut config = tiny_config(epochs);
    config.model.alignment = Alignment::Learned;
    config.model.input = InputForm::Boards;
    config.model.pose = tiny_net(3, 2);
    config.pose_epochs = 2;
    config.augment = RotationDistribution::PiOverK { max_k: 4 };
    config
}

fn pose_losses(events: &[Event]) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| if let Event::PoseStep(s) = e { Some(s.loss) } else { None })
        .collect()
}

#[test]
fn the_learned_pose_trains_first_and_a_run_resumed_within_it_continues_exactly() {
    let set = tiny_set(48);
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = run(tiny_learned_config(2), &set, Some(straight_dir.path()), None);
    // 36 training samples in batches of 8: 4 steps an epoch, 2 epochs of each network; the
    // pose network first, then its report, then the classifier.
    assert_eq!(pose_losses(&straight).len(), 8);
    assert_eq!(losses(&straight).len(), 8);
    let report = straight.iter().position(|e| matches!(e, Event::Pose(_))).unwrap();
    let first_step = straight.iter().position(|e| matches!(e, Event::Step(_))).unwrap();
    let last_pose_step = straight.iter().rposition(|e| matches!(e, Event::PoseStep(_))).unwrap();
    assert!(last_pose_step < report && report < first_step);

    // The checkpoint carries both networks and which training clouds came turned; a model read
    // back from it poses and scores clouds.
    let best = Checkpoint::read(&straight_dir.path().join("best.safetensors")).unwrap();
    assert!(best.tensors.keys().any(|k| k.starts_with("pose.")));
    assert_eq!(best.meta.pose_references.len(), set.len());
    let model = best.model(&candle_core::Device::Cpu).unwrap();
    assert!(model.pose().is_some());
    let clouds = vec![set.get(0).cloud.to_vec()];
    let posed = model.inputs().posed(&clouds).unwrap();
    assert_eq!(posed[0].len(), clouds[0].len());

    // Stopped during the pose network's training, then resumed: the same steps as straight.
    let split_dir = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(
        tiny_learned_config(2),
        Arc::clone(&set),
        Some(split_dir.path().to_owned()),
        None,
    )
    .unwrap();
    let handle = trainer.spawn();
    let mut first = Vec::new();
    while let Some(event) = handle.next_event() {
        if matches!(event, Event::PoseStep(ref s) if s.step == 3) {
            handle.stop();
        }
        first.push(event);
    }
    assert!(matches!(first.last(), Some(Event::Finished { reason: Reason::Stopped, .. })));
    let last = Checkpoint::read(&split_dir.path().join("last.safetensors")).unwrap();
    assert!(!last.meta.position.pose_done);
    let rest = run(tiny_learned_config(2), &set, Some(split_dir.path()), Some(&last));
    let mut pose = pose_losses(&first);
    pose.extend(pose_losses(&rest));
    assert_eq!(pose, pose_losses(&straight));
    assert_eq!(losses(&rest), losses(&straight));
}
