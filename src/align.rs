//! Canonical orientation: turning a cloud so that any rotated copy of it lands in the same pose,
//! which makes a randomly rotated 3D digit a plain 2D digit again.
//!
//! The `pca` pose moves the cloud's mean to the origin and its principal axes onto x, y and z,
//! largest variance first: a lifted digit is a thin slab, so its plane becomes the (x, y) plane
//! and its thin extrusion axis becomes z. Each axis direction is only defined up to sign, and
//! the rule that picks it is: x and y point the way the cloud's third moment along them is
//! positive (the side its mass has the longer tail on), and z completes a right-handed frame, so
//! the pose is a proper rotation of the input (never a mirror image).
//!
//! The `plane` pose does less: it moves the mean to the origin and turns the cloud by the
//! smallest rotation that takes its thin axis (least variance, pointed towards +z) onto z. The
//! digit then lies in the (x, y) plane with its turn within that plane kept as it came, which is
//! the better choice when inputs are mostly upright (as with small random rotations): nothing
//! is lost to the sign rules, and a 6 stays a 6. A cloud turned over (by half a turn about x,
//! say) lands mirrored, which the classifier learns from the training rotations.
//!
//! The `upright` pose goes one step further than `plane`: it also turns the flattened digit
//! within its plane, by at most a quarter turn either way, until its long axis (the larger
//! variance within the plane) runs along y, the up-down direction of a lifted digit. Handwritten digits
//! are taller than wide, so one turned by less than a quarter turn comes back upright, its slant
//! removed; one turned further comes back upside down or on its side, as `plane` leaves it too.
//!
//! The `learned` pose starts from the upright pose and then undoes the rotation a small network
//! predicts from the digit's shape (see [`crate::nn::pose`]): a half turn in the plane, or a
//! turn over (which shows the digit's mirror image), which geometry cannot tell apart from the
//! digit as written. Here, without the network, it is the upright pose.
//!
//! What the `pca` pose cannot undo: when a third moment is near zero the sign of that axis is a coin toss,
//! so a symmetric digit can land turned by 180 degrees about z (a half turn, which maps the
//! board to its rot90(·, 2) view) or flipped over about x or y; and when two variances are nearly
//! equal the first two axes can swap. A 6 turned upside down is a 9, so those two digits are
//! exactly the pair such symmetries can confuse.

use serde::{Deserialize, Serialize};

use crate::Point;
use crate::rotation::Rotation;

/// How clouds are posed before their views are taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Alignment {
    /// As they come.
    #[default]
    None,
    /// Principal axes onto x, y, z, signs by the third moment.
    Pca,
    /// Only the thin axis onto z, by the smallest rotation; the turn in the plane stays.
    Plane,
    /// The plane pose, then the digit's long axis onto y by the smallest turn in the plane.
    Upright,
    /// The upright pose, then the rotation a trained network predicts from the digit's shape
    /// undone.
    Learned,
}

impl Alignment {
    /// The name the command line and the window use: `none`, `pca`, `plane` or `upright`.
    pub fn name(self) -> &'static str {
        match self {
            Alignment::None => "none",
            Alignment::Pca => "pca",
            Alignment::Plane => "plane",
            Alignment::Upright => "upright",
            Alignment::Learned => "learned",
        }
    }

    /// `cloud` posed, into `out` (cleared first). The learned pose's network is not at hand
    /// here, so it stops at its first, geometric step: the upright pose.
    pub fn apply(self, cloud: &[Point], out: &mut Vec<Point>) {
        match self {
            Alignment::None => {
                out.clear();
                out.extend_from_slice(cloud);
            }
            Alignment::Pca => pose(cloud, pca_pose(cloud), out),
            Alignment::Plane => pose(cloud, plane_pose(cloud), out),
            Alignment::Upright | Alignment::Learned => pose(cloud, upright_pose(cloud), out),
        }
    }
}

/// `cloud` moved by `-mean` and then turned by `rotation`, into `out` (cleared first).
fn pose(cloud: &[Point], (mean, rotation): (Point, Rotation), out: &mut Vec<Point>) {
    out.clear();
    out.extend(
        cloud.iter().map(|p| rotation.apply([p[0] - mean[0], p[1] - mean[1], p[2] - mean[2]])),
    );
}

/// The mean of `cloud` and its covariance matrix.
fn moments(cloud: &[Point]) -> ([f64; 3], [[f64; 3]; 3]) {
    let n = cloud.len() as f64;
    let mean = [0, 1, 2].map(|k| cloud.iter().map(|p| f64::from(p[k])).sum::<f64>() / n);
    let mut cov = [[0f64; 3]; 3];
    for p in cloud {
        let d = [0, 1, 2].map(|k| f64::from(p[k]) - mean[k]);
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += d[i] * d[j] / n;
            }
        }
    }
    (mean, cov)
}

/// The mean of `cloud` and the smallest rotation that takes its axis of least variance (pointed
/// to the +z side) onto z.
pub fn plane_pose(cloud: &[Point]) -> (Point, Rotation) {
    if cloud.is_empty() {
        return ([0.0; 3], Rotation::IDENTITY);
    }
    let (mean, cov) = moments(cloud);
    (mean.map(|v| v as f32), flattening(cov))
}

/// The mean of `cloud` and the rotation of its upright pose: the plane pose, then the turn about
/// z by at most a quarter turn either way that takes the long axis of the flattened digit (its
/// larger variance within the plane) onto y, the up-down direction of a digit as
/// [`lift`](crate::lift) makes clouds (image rows run along -y, columns along x).
pub fn upright_pose(cloud: &[Point]) -> (Point, Rotation) {
    if cloud.is_empty() {
        return ([0.0; 3], Rotation::IDENTITY);
    }
    let (mean, cov) = moments(cloud);
    let flat = flattening(cov);
    // The covariance after flattening, M C Mᵀ, needs only its (x, y) block.
    let m = flat.matrix();
    let c = |i: usize, j: usize| -> f64 {
        (0..3).map(|k| (0..3).map(|l| m[i][k] * cov[k][l] * m[j][l]).sum::<f64>()).sum()
    };
    // The long axis lies at angle psi from y, towards -x, with psi in -π/2..=π/2.
    let psi = 0.5 * (-2.0 * c(0, 1)).atan2(c(1, 1) - c(0, 0));
    let turn = Rotation::about([0.0, 0.0, 1.0], -psi);
    (mean.map(|v| v as f32), turn.then_apply(&flat))
}

/// The smallest rotation that takes the axis of least variance of covariance `cov` (pointed to
/// the +z side) onto z.
fn flattening(cov: [[f64; 3]; 3]) -> Rotation {
    let (values, vectors) = symmetric_eigen(cov);
    let thin = (0..3).min_by(|&a, &b| values[a].total_cmp(&values[b])).unwrap_or(2);
    let mut n = [vectors[0][thin], vectors[1][thin], vectors[2][thin]];
    if n[2] < 0.0 {
        n = n.map(|v| -v);
    }
    // About n × z by the angle between them: sin = |n × z|, cos = n · z.
    let axis = [n[1], -n[0], 0.0];
    let angle = (axis[0].hypot(axis[1])).atan2(n[2]);
    Rotation::about(axis, angle)
}

/// The mean of `cloud` and the rotation that takes it (once centred) to its canonical pose.
// LIMITATION: the third-moment sign rule can flip a digit over (a mirror image in the (x, y)
// view) where a moment is near zero; the pose knows nothing of which way up the input came.
pub fn pca_pose(cloud: &[Point]) -> (Point, Rotation) {
    if cloud.is_empty() {
        return ([0.0; 3], Rotation::IDENTITY);
    }
    let (mean, cov) = moments(cloud);
    let (values, vectors) = symmetric_eigen(cov);

    // Largest variance first.
    let mut order = [0, 1, 2];
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let axis = |k: usize| [vectors[0][order[k]], vectors[1][order[k]], vectors[2][order[k]]];
    let third_moment = |e: [f64; 3]| {
        cloud
            .iter()
            .map(|p| {
                let t: f64 = (0..3).map(|k| (f64::from(p[k]) - mean[k]) * e[k]).sum();
                t * t * t
            })
            .sum::<f64>()
    };
    let oriented = |e: [f64; 3]| if third_moment(e) < 0.0 { e.map(|v| -v) } else { e };
    let (x, y) = (oriented(axis(0)), oriented(axis(1)));
    let z = [x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0]];
    // The rows of the rotation are the new axes: p ↦ (p·x, p·y, p·z).
    (mean.map(|v| v as f32), Rotation::from_rows([x, y, z]))
}

/// Eigenvalues and eigenvectors (as the columns of the matrix) of a symmetric 3 x 3 matrix, by
/// Jacobi rotations.
fn symmetric_eigen(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..50 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        if off < 1e-15 * (a[0][0].abs() + a[1][1].abs() + a[2][2].abs()).max(1e-300) {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            // The rotation in the (p, q) plane that zeroes a[p][q].
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // A ← Jᵀ A J: columns p and q, then rows p and q.
            for row in &mut a {
                let (akp, akq) = (row[p], row[q]);
                row[p] = c * akp - s * akq;
                row[q] = s * akp + c * akq;
            }
            let (row_p, row_q) = (a[p], a[q]);
            for k in 0..3 {
                a[p][k] = c * row_p[k] - s * row_q[k];
                a[q][k] = s * row_p[k] + c * row_q[k];
            }
            for row in &mut v {
                let (vkp, vkq) = (row[p], row[q]);
                row[p] = c * vkp - s * vkq;
                row[q] = s * vkp + c * vkq;
            }
        }
    }
    ([a[0][0], a[1][1], a[2][2]], v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::{Angles, RotationDistribution};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let m = [[4.0, 1.0, 0.5], [1.0, 3.0, -0.2], [0.5, -0.2, 1.0]];
        let (values, v) = symmetric_eigen(m);
        for i in 0..3 {
            for j in 0..3 {
                let back: f64 = (0..3).map(|k| v[i][k] * values[k] * v[j][k]).sum();
                assert!((back - m[i][j]).abs() < 1e-9, "({i}, {j})");
            }
        }
    }

    fn l_shape() -> Vec<Point> {
        crate::lift::testing::l_shape(1)
    }

    #[test]
    fn a_cloud_and_any_rotation_of_it_land_in_the_same_pose() {
        let cloud = l_shape();
        let mut reference = Vec::new();
        Alignment::Pca.apply(&cloud, &mut reference);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut posed = Vec::new();
        for _ in 0..50 {
            let rotated = RotationDistribution::Uniform.sample(&mut rng).rotation().rotate(&cloud);
            Alignment::Pca.apply(&rotated, &mut posed);
            let worst = reference
                .iter()
                .zip(&posed)
                .map(|(a, b)| (0..3).map(|k| (a[k] - b[k]).abs()).fold(0f32, f32::max))
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{worst}");
        }
    }

    #[test]
    fn the_pose_puts_the_slab_in_the_xy_plane_largest_spread_on_x() {
        let mut posed = Vec::new();
        Alignment::Pca.apply(&l_shape(), &mut posed);
        let spread = |k: usize| posed.iter().map(|p| p[k] * p[k]).sum::<f32>();
        assert!(spread(0) > spread(1) && spread(1) > spread(2));
        let mean_z: f32 = posed.iter().map(|p| p[2]).sum::<f32>() / posed.len() as f32;
        assert!(mean_z.abs() < 1e-5);
    }

    #[test]
    fn the_plane_pose_undoes_a_tilt_and_keeps_the_turn_in_the_plane() {
        // The L with each point mirrored through z = 0 beside it: its thin axis is exactly z.
        let cloud: Vec<Point> =
            l_shape().into_iter().flat_map(|p| [p, [p[0], p[1], -p[2]]]).collect();
        let turn = 0.4;
        let turned = Angles::new(0.0, 0.0, turn).rotation().rotate(&cloud);
        // Tilting the turned digit about any axis in its plane and posing it gives the turned
        // digit back: the smallest rotation onto z is that tilt undone. (A tilt about an axis out
        // of the plane also turns the digit within it, and that turn stays.)
        for (axis, angle) in
            [([1.0, 0.0, 0.0], 0.5), ([0.6, 0.8, 0.0], -0.7), ([-0.3, 1.0, 0.0], 1.2)]
        {
            let tilt = Rotation::about(axis, angle);
            let tilted = tilt.rotate(&turned);
            let mut posed = Vec::new();
            Alignment::Plane.apply(&tilted, &mut posed);
            let (mean, _) = moments(&turned);
            let worst = turned
                .iter()
                .zip(&posed)
                .map(|(a, b)| {
                    (0..3).map(|k| (a[k] - mean[k] as f32 - b[k]).abs()).fold(0f32, f32::max)
                })
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "{axis:?} by {angle}: {worst}");
        }
    }

    #[test]
    fn the_upright_pose_undoes_tilts_and_turns_of_less_than_a_quarter() {
        let cloud: Vec<Point> =
            l_shape().into_iter().flat_map(|p| [p, [p[0], p[1], -p[2]]]).collect();
        let mut reference = Vec::new();
        Alignment::Upright.apply(&cloud, &mut reference);
        let mut posed = Vec::new();
        for (turn, axis, tilt) in [
            (0.4, [1.0, 0.0, 0.0], 0.5),
            (-0.9, [0.6, 0.8, 0.0], -0.7),
            (1.2, [0.0, 1.0, 0.0], 0.0),
        ] {
            let turned = Angles::new(0.0, 0.0, turn).rotation();
            let moved = Rotation::about(axis, tilt).then_apply(&turned).rotate(&cloud);
            Alignment::Upright.apply(&moved, &mut posed);
            let worst = reference
                .iter()
                .zip(&posed)
                .map(|(a, b)| (0..3).map(|k| (a[k] - b[k]).abs()).fold(0f32, f32::max))
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "turn {turn}, tilt {tilt} about {axis:?}: {worst}");
        }
        // The long bar of the L runs along y once upright, as it does lifted.
        let spread = |k: usize| reference.iter().map(|p| p[k] * p[k]).sum::<f32>();
        assert!(spread(1) > 2.0 * spread(0));
    }

    #[test]
    fn the_pose_is_a_rotation_not_a_mirror_image() {
        let (_, r) = pca_pose(&l_shape());
        let m = r.matrix();
        let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
        assert!((det - 1.0).abs() < 1e-9, "{det}");
    }
}
