//! Rotations of clouds: Euler angles, their matrix, and the distributions random rotations
//! are drawn from.
//!
//! The convention is the one the whole project shares: angles `a`, `b`, `c` (radians) about x,
//! y and z give `M = Rx(a) · Ry(b) · Rz(c)`, and a point `p` becomes `M p` (a cloud `P` of row
//! vectors becomes `P · Mᵀ`).

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::Point;

/// Angles in radians about the x, y and z axes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Angles {
    /// About x.
    pub a: f64,
    /// About y.
    pub b: f64,
    /// About z.
    pub c: f64,
}

impl Angles {
    /// No rotation at all.
    pub const ZERO: Angles = Angles { a: 0.0, b: 0.0, c: 0.0 };

    /// Angles from their three values in radians.
    pub const fn new(a: f64, b: f64, c: f64) -> Self {
        Angles { a, b, c }
    }

    /// The rotation these angles describe.
    pub fn rotation(self) -> Rotation {
        Rotation::from_angles(self)
    }
}

impl fmt::Display for Angles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.a, self.b, self.c)
    }
}

/// Parses `A,B,C` (three numbers in radians, separated by commas).
impl FromStr for Angles {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [a, b, c] = parts.as_slice() else {
            return Err(format!("expected three angles A,B,C in radians, got {s:?}"));
        };
        let parse = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("{v:?} is not a finite number of radians"))
        };
        Ok(Angles::new(parse(a)?, parse(b)?, parse(c)?))
    }
}

/// A 3 x 3 rotation matrix, applied to points as `M p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rotation {
    m: [[f64; 3]; 3],
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation::IDENTITY
    }
}

impl Rotation {
    /// The rotation that leaves every point where it is.
    pub const IDENTITY: Rotation =
        Rotation { m: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] };

    /// `Rx(a) · Ry(b) · Rz(c)`.
    pub fn from_angles(angles: Angles) -> Self {
        let (sa, ca) = angles.a.sin_cos();
        let (sb, cb) = angles.b.sin_cos();
        let (sc, cc) = angles.c.sin_cos();
        let rx = Rotation { m: [[1.0, 0.0, 0.0], [0.0, ca, -sa], [0.0, sa, ca]] };
        let ry = Rotation { m: [[cb, 0.0, sb], [0.0, 1.0, 0.0], [-sb, 0.0, cb]] };
        let rz = Rotation { m: [[cc, -sc, 0.0], [sc, cc, 0.0], [0.0, 0.0, 1.0]] };
        rx.then_apply(&ry).then_apply(&rz)
    }

    /// The rotation by `angle` radians about `axis` (any non-zero length), counter-clockwise
    /// when seen from the tip of the axis.
    pub fn about(axis: [f64; 3], angle: f64) -> Rotation {
        let norm = axis.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Rotation::IDENTITY;
        }
        let [x, y, z] = axis.map(|v| v / norm);
        let (s, c) = angle.sin_cos();
        let t = 1.0 - c;
        Rotation {
            m: [
                [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
                [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
                [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
            ],
        }
    }

    /// Angles whose rotation is this one, with `b` in `-π/2..=π/2` and `a`, `c` in `-π..=π`.
    /// At `b = ±π/2` only `a ± c` is determined; `c` is then 0.
    pub fn angles(&self) -> Angles {
        // M = Rx(a)·Ry(b)·Rz(c) has first row (cos b cos c, -cos b sin c, sin b) and last column
        // (sin b, -sin a cos b, cos a cos b).
        let m = self.m;
        let b = m[0][2].clamp(-1.0, 1.0).asin();
        if (1.0 - m[0][2].abs()) > 1e-12 {
            Angles::new((-m[1][2]).atan2(m[2][2]), b, (-m[0][1]).atan2(m[0][0]))
        } else {
            // Rx(a)·Ry(±π/2) has sin a and cos a in its middle column.
            Angles::new(m[2][1].atan2(m[1][1]), b, 0.0)
        }
    }

    /// The rotation whose matrix has these rows, which must be orthonormal and right-handed (as
    /// the rows of every rotation are).
    pub const fn from_rows(rows: [[f64; 3]; 3]) -> Rotation {
        Rotation { m: rows }
    }

    /// The matrix product `self · other`: the rotation that applies `other` first, then `self`.
    pub fn then_apply(&self, other: &Rotation) -> Rotation {
        let mut m = [[0.0; 3]; 3];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, value) in row.iter_mut().enumerate() {
                *value = (0..3).map(|k| self.m[i][k] * other.m[k][j]).sum();
            }
        }
        Rotation { m }
    }

    /// The inverse rotation (the transpose).
    pub fn inverse(&self) -> Rotation {
        let m = self.m;
        Rotation { m: [0, 1, 2].map(|i| [m[0][i], m[1][i], m[2][i]]) }
    }

    /// The matrix, row by row.
    pub fn matrix(&self) -> [[f64; 3]; 3] {
        self.m
    }

    /// `M p` for one point.
    pub fn apply(&self, p: Point) -> Point {
        let m = self.m;
        let [x, y, z] = p.map(f64::from);
        [0, 1, 2].map(|i| (m[i][0] * x + m[i][1] * y + m[i][2] * z) as f32)
    }

    /// Every point of `cloud` rotated, in a new vector.
    pub fn rotate(&self, cloud: &[Point]) -> Vec<Point> {
        let mut out = Vec::new();
        self.rotate_into(cloud, &mut out);
        out
    }

    /// Every point of `cloud` rotated into `out`, which is cleared first and keeps its
    /// allocation, so a caller that rotates often allocates once.
    pub fn rotate_into(&self, cloud: &[Point], out: &mut Vec<Point>) {
        // Single precision is plenty for coordinates in -0.75..0.75 and keeps the loop tight.
        let m = self.m.map(|row| row.map(|v| v as f32));
        out.clear();
        out.extend(
            cloud
                .iter()
                .map(|&[x, y, z]| [0, 1, 2].map(|i| m[i][0] * x + m[i][1] * y + m[i][2] * z)),
        );
    }
}

/// How random rotations are drawn, for augmentation and for making datasets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationDistribution {
    /// No rotation.
    None,
    /// Each of a, b, c is `π / k` for an integer `k` drawn uniformly from `-max_k..=max_k`, with
    /// `k = 0` meaning no rotation about that axis. This is how participants of the original
    /// competition rotated their training clouds; with `max_k = 32` most angles are small.
    PiOverK {
        /// The largest `|k|`.
        max_k: u32,
    },
    /// Uniform over all orientations (the Haar measure on rotations).
    Uniform,
}

impl Default for RotationDistribution {
    fn default() -> Self {
        RotationDistribution::PiOverK { max_k: 32 }
    }
}

impl RotationDistribution {
    /// Draws one set of angles.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Angles {
        match *self {
            RotationDistribution::None => Angles::ZERO,
            RotationDistribution::PiOverK { max_k } => {
                let max_k = max_k as i32;
                let mut angle = || match rng.random_range(-max_k..=max_k) {
                    0 => 0.0,
                    k => PI / f64::from(k),
                };
                Angles::new(angle(), angle(), angle())
            }
            RotationDistribution::Uniform => {
                // For M = Rx(a)·Ry(b)·Rz(c) the Haar measure has density cos(b) on
                // b in [-π/2, π/2], with a and c uniform: draw sin(b) uniformly.
                let a = rng.random_range(-PI..PI);
                let b = rng.random_range(-1.0f64..=1.0).asin();
                let c = rng.random_range(-PI..PI);
                Angles::new(a, b, c)
            }
        }
    }
}

impl fmt::Display for RotationDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RotationDistribution::None => write!(f, "none"),
            RotationDistribution::PiOverK { max_k } => write!(f, "pi-over-k:{max_k}"),
            RotationDistribution::Uniform => write!(f, "uniform"),
        }
    }
}

/// Parses `none`, `uniform`, `pi-over-k` (with `max_k = 32`) or `pi-over-k:N`.
impl FromStr for RotationDistribution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(RotationDistribution::None),
            "uniform" => Ok(RotationDistribution::Uniform),
            "pi-over-k" => Ok(RotationDistribution::default()),
            _ => s
                .strip_prefix("pi-over-k:")
                .and_then(|k| k.parse::<u32>().ok())
                .filter(|&max_k| max_k > 0)
                .map(|max_k| RotationDistribution::PiOverK { max_k })
                .ok_or_else(|| {
                    format!("unknown rotation {s:?}: use none, uniform, pi-over-k or pi-over-k:N")
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn close(p: Point, q: Point) -> bool {
        p.iter().zip(q).all(|(a, b)| (a - b).abs() < 1e-6)
    }

    #[test]
    fn zero_angles_are_the_identity() {
        let cloud = [[0.1, -0.2, 0.3], [0.7, 0.0, -0.5]];
        assert_eq!(Angles::ZERO.rotation().rotate(&cloud), cloud.to_vec());
    }

    #[test]
    fn quarter_turns_move_axes_as_written_in_the_matrices() {
        let quarter = std::f64::consts::FRAC_PI_2;
        // Rx(π/2) takes y to z; Ry(π/2) takes z to x; Rz(π/2) takes x to y.
        let rx = Angles::new(quarter, 0.0, 0.0).rotation();
        assert!(close(rx.apply([0.0, 1.0, 0.0]), [0.0, 0.0, 1.0]));
        let ry = Angles::new(0.0, quarter, 0.0).rotation();
        assert!(close(ry.apply([0.0, 0.0, 1.0]), [1.0, 0.0, 0.0]));
        let rz = Angles::new(0.0, 0.0, quarter).rotation();
        assert!(close(rz.apply([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0]));
    }

    #[test]
    fn the_product_applies_rz_first_then_ry_then_rx() {
        let quarter = std::f64::consts::FRAC_PI_2;
        // Rz takes x to y, Ry leaves y alone, Rx takes y to z.
        let m = Angles::new(quarter, quarter, quarter).rotation();
        assert!(close(m.apply([1.0, 0.0, 0.0]), [0.0, 0.0, 1.0]));
        // Written out: M = Rx(a)·Ry(b)·Rz(c) for a = 0.3, b = -1.1, c = 2.0 at one point.
        let (a, b, c) = (0.3f64, -1.1f64, 2.0f64);
        let p = [0.2f64, -0.4, 0.6];
        let after_z = [c.cos() * p[0] - c.sin() * p[1], c.sin() * p[0] + c.cos() * p[1], p[2]];
        let after_y = [
            b.cos() * after_z[0] + b.sin() * after_z[2],
            after_z[1],
            -b.sin() * after_z[0] + b.cos() * after_z[2],
        ];
        let after_x = [
            after_y[0],
            a.cos() * after_y[1] - a.sin() * after_y[2],
            a.sin() * after_y[1] + a.cos() * after_y[2],
        ];
        let got = Angles::new(a, b, c).rotation().apply(p.map(|v| v as f32));
        assert!(close(got, after_x.map(|v| v as f32)));
    }

    fn same_matrix(m: &Rotation, n: &Rotation) -> bool {
        m.matrix()
            .iter()
            .flatten()
            .zip(n.matrix().iter().flatten())
            .all(|(a, b)| (a - b).abs() < 1e-9)
    }

    #[test]
    fn angles_read_back_from_the_matrix_give_the_same_rotation() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let angles = RotationDistribution::Uniform.sample(&mut rng);
            let back = angles.rotation().angles();
            assert!(same_matrix(&back.rotation(), &angles.rotation()), "{angles} -> {back}");
            assert!((back.a - angles.a).abs() < 1e-9 && (back.c - angles.c).abs() < 1e-9);
        }
        // At b = ±π/2 the matrix fixes only a ± c: the angles differ, the rotation does not.
        let locked = Angles::new(0.7, std::f64::consts::FRAC_PI_2, -0.2);
        let back = locked.rotation().angles();
        assert_eq!(back.c, 0.0);
        assert!(same_matrix(&back.rotation(), &locked.rotation()));
    }

    #[test]
    fn about_an_axis_agrees_with_the_single_axis_matrices() {
        let angle = 0.83;
        for (axis, angles) in [
            ([2.0, 0.0, 0.0], Angles::new(angle, 0.0, 0.0)),
            ([0.0, 0.5, 0.0], Angles::new(0.0, angle, 0.0)),
            ([0.0, 0.0, 1.0], Angles::new(0.0, 0.0, angle)),
        ] {
            assert!(same_matrix(&Rotation::about(axis, angle), &angles.rotation()));
        }
        let turn = Rotation::about([1.0, 1.0, 1.0], 2.0 * std::f64::consts::PI / 3.0);
        assert!(close(turn.apply([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0]));
    }

    #[test]
    fn inverse_undoes_the_rotation() {
        let m = Angles::new(0.4, -2.2, 1.3).rotation();
        let p = [0.5, -0.25, 0.125];
        assert!(close(m.inverse().apply(m.apply(p)), p));
    }

    #[test]
    fn rotation_keeps_lengths() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..100 {
            let m = RotationDistribution::Uniform.sample(&mut rng).rotation();
            let p: Point = [0.3, -0.6, 0.2];
            let len = |p: Point| p.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((len(m.apply(p)) - len(p)).abs() < 1e-6);
        }
    }

    #[test]
    fn pi_over_k_draws_only_fractions_of_pi() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let dist = RotationDistribution::PiOverK { max_k: 4 };
        let allowed = [0.0, PI, PI / 2.0, PI / 3.0, PI / 4.0];
        let mut saw_zero = false;
        for _ in 0..200 {
            let angles = dist.sample(&mut rng);
            for v in [angles.a, angles.b, angles.c] {
                assert!(allowed.iter().any(|x| (x - v.abs()).abs() < 1e-12), "{v}");
                saw_zero |= v == 0.0;
            }
        }
        assert!(saw_zero);
    }

    #[test]
    fn uniform_rotations_spread_an_axis_evenly_over_the_sphere() {
        // Under the Haar measure the image of a fixed axis is uniform on the sphere, so its
        // z component is uniform on [-1, 1]: each quarter of that range gets about 25%.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            let z =
                RotationDistribution::Uniform.sample(&mut rng).rotation().apply([0.0, 0.0, 1.0])[2];
            counts[(((z + 1.0) * 2.0) as usize).min(3)] += 1;
        }
        for count in counts {
            let share = count as f64 / n as f64;
            assert!((share - 0.25).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn angles_and_distributions_parse_and_print() {
        assert_eq!("0.5, -1, 2".parse::<Angles>(), Ok(Angles::new(0.5, -1.0, 2.0)));
        assert!("1,2".parse::<Angles>().is_err());
        assert!("1,nan,2".parse::<Angles>().is_err());
        for text in ["none", "uniform", "pi-over-k:32", "pi-over-k:5"] {
            let dist: RotationDistribution = text.parse().unwrap();
            assert_eq!(dist.to_string(), text);
        }
        assert_eq!("pi-over-k".parse(), Ok(RotationDistribution::default()));
        assert!("pi-over-k:0".parse::<RotationDistribution>().is_err());
    }
}
