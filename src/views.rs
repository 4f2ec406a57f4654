//! The 24 projected views of a cloud and the grid image the network sees.
//!
//! A cloud is projected three ways, onto the (x, y), (x, z) and (y, z) planes, each giving a
//! binary *board* of `S x S` pixels (`S` = [`VIEW_SIZE`] by default). Every board yields eight
//! *views*: itself and its left-right mirror image, each turned by 0, 1, 2 and 3 counter-clockwise
//! quarter turns. The 24 views are tiled five to a row into the *grid*, a
//! [`grid_side`]`(S)`-square image (256 for `S = 46`).
//!
//! The boards are kept as rows of bits. The 24 views are then re-indexings of three boards and
//! their transposes, and the grid is written eight pixels at a time.

use rayon::prelude::*;

use crate::Point;

/// The side of one view in pixels, `S`.
pub const VIEW_SIZE: usize = 46;

/// The number of views of one cloud.
pub const VIEW_COUNT: usize = 24;

/// Coordinates in `-EXTENT..EXTENT` map onto a view; others clip to its border.
pub const EXTENT: f32 = 0.75;

/// The largest view side the bit-row boards can hold.
pub const MAX_VIEW_SIZE: usize = 64;

/// Zero pixels between neighbouring cells of the grid.
const CELL_GAP: usize = 4;

/// Zero pixels around the tiled cells.
const BORDER: usize = 5;

/// Cells per row of the grid.
const CELLS_PER_ROW: usize = 5;

/// The side of the grid for views of side `size`: `5 * size + 16` for the tiles plus a border of
/// 5 on each side (256 for the default 46).
pub const fn grid_side(size: usize) -> usize {
    CELLS_PER_ROW * size + (CELLS_PER_ROW - 1) * CELL_GAP + 2 * BORDER
}

/// One of the three orthographic projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Projection {
    /// A short name: `"xy"`, `"xz"` or `"yz"`.
    pub name: &'static str,
    /// The coordinate that becomes the image row.
    pub row_axis: usize,
    /// The coordinate that becomes the image column.
    pub col_axis: usize,
}

/// The projections in the order their views appear.
pub const PROJECTIONS: [Projection; 3] = [
    Projection { name: "xy", row_axis: 0, col_axis: 1 },
    Projection { name: "xz", row_axis: 0, col_axis: 2 },
    Projection { name: "yz", row_axis: 1, col_axis: 2 },
];

/// What one of the 24 views shows: which projection, mirrored or not, turned how far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewKind {
    /// The projection, an entry of [`PROJECTIONS`].
    pub projection: Projection,
    /// Whether the board was mirrored left-right before turning.
    pub mirrored: bool,
    /// Counter-clockwise quarter turns, 0..=3.
    pub turns: u8,
}

impl ViewKind {
    /// The kind of view `index` (0..24): projection-major, then turns, mirrored after plain.
    ///
    /// # Panics
    ///
    /// When `index >= VIEW_COUNT`.
    pub fn of(index: usize) -> Self {
        assert!(index < VIEW_COUNT, "view index {index} out of 0..{VIEW_COUNT}");
        ViewKind {
            projection: PROJECTIONS[index / 8],
            mirrored: index % 2 == 1,
            turns: (index % 8 / 2) as u8,
        }
    }

    /// A label such as `xz mirrored 90°`.
    pub fn label(&self) -> String {
        let flip = if self.mirrored { "mirrored" } else { "plain" };
        format!("{} {flip} {}°", self.projection.name, 90 * u32::from(self.turns))
    }

    /// A file-name stem such as `xz-mirrored-090`.
    pub fn file_stem(&self) -> String {
        let flip = if self.mirrored { "mirrored" } else { "plain" };
        format!("{}-{flip}-{:03}", self.projection.name, 90 * u32::from(self.turns))
    }
}

/// Where each view sits in the grid: the row and column of its top-left pixel.
pub fn cell_origin(index: usize, size: usize) -> (usize, usize) {
    let pitch = size + CELL_GAP;
    (BORDER + index / CELLS_PER_ROW * pitch, BORDER + index % CELLS_PER_ROW * pitch)
}

/// Adding and subtracting 1.5 * 2^23 rounds any |x| < 2^22 to the nearest integer, ties to
/// even; after the addition alone, the integer sits in the low bits of the float.
const ROUND: f32 = 12_582_912.0;

/// The board pixel a coordinate falls in: `round((v + 0.75) / 1.5 * size)` with ties to even
/// (as numpy rounds), clipped to `0..size`. NaN maps to 0.
#[inline(always)]
pub fn pixel_of(v: f32, size: usize) -> usize {
    let s = size as f32;
    // The same operations, in the same order, as the method's formula in f32: the result is
    // bit-for-bit numpy's on float32 clouds, exact halves included.
    let x = ((v + EXTENT) / (2.0 * EXTENT)) * s;
    // Comparisons rather than f32::max/min: they compile to plain SIMD min/max (and send NaN to
    // -1, hence pixel 0).
    let x = if x > -1.0 { x } else { -1.0 };
    let x = if x < s { x } else { s };
    let rounded = (x + ROUND).to_bits() as i32 - ROUND.to_bits() as i32;
    rounded.clamp(0, size as i32 - 1) as usize
}

/// Points per block of [`voxel_keys`]: small enough for the keys to stay in L1 cache, and a
/// multiple of the 16 points the AVX-512 kernel takes at once.
const BLOCK: usize = 256;

/// The quantiser's fast multiply by `S / 1.5` agrees with the method's division except within a
/// few ulps of a half-way point; a coordinate whose fraction is farther than this from the
/// nearest integer is safe.
const NEAR_TIE: f32 = 0.5 - 1.0 / 16384.0;

/// The voxel key of each point (`x * size + y` in the low 16 bits, `z` above them, with x, y, z
/// the pixels of the three coordinates), exactly as [`pixel_of`] rounds. `kernel` computes the
/// keys by multiplying by `S / 1.5` and says whether a coordinate came near enough a tie for that
/// to round differently from the method's division.
#[inline(always)]
fn voxel_keys(
    points: &[Point],
    keys: &mut [u32],
    size: usize,
    kernel: impl Fn(&[Point], &mut [u32], usize) -> bool,
) {
    // NOTE: the division in pixel_of is the slow step. The kernels multiply instead while
    // watching for near-ties, and a block with one is redone exactly.
    if kernel(points, keys, size) {
        for (&[x, y, z], key) in points.iter().zip(keys.iter_mut()) {
            let [x, y, z] = [x, y, z].map(|v| pixel_of(v, size) as u32);
            *key = (x * size as u32 + y) | z << 16;
        }
    }
}

#[inline(always)]
fn voxel_keys_portable(points: &[Point], keys: &mut [u32], size: usize) -> bool {
    let s = size as f32;
    let scale = s / (2.0 * EXTENT);
    let last = size as i32 - 1;
    let fast = |v: f32| {
        let x = (v + EXTENT) * scale;
        let x = if x > -1.0 { x } else { -1.0 };
        let x = if x < s { x } else { s };
        let shifted = x + ROUND;
        // Distance to the rounded value, as bits: for non-negative floats the order of the bits
        // is the order of the numbers, and an integer maximum vectorises.
        let distance = (x - (shifted - ROUND)).abs().to_bits();
        let pixel = (shifted.to_bits() as i32 - ROUND.to_bits() as i32).clamp(0, last) as u32;
        (pixel, distance)
    };
    let mut farthest = 0u32;
    for (&[x, y, z], key) in points.iter().zip(keys.iter_mut()) {
        let ((x, dx), (y, dy), (z, dz)) = (fast(x), fast(y), fast(z));
        farthest = farthest.max(dx).max(dy).max(dz);
        *key = (x * size as u32 + y) | z << 16;
    }
    farthest > NEAR_TIE.to_bits()
}

/// The x86-64 kernels, chosen at run time by what the CPU supports.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BitRows, Boards, EXTENT, MAX_VIEW_SIZE, NEAR_TIE, Point, voxel_keys_portable};

    /// [`Boards::fill`] compiled for AVX2: twice the lanes of the x86-64 baseline.
    #[target_feature(enable = "avx2,bmi2")]
    pub(super) fn fill_avx2(boards: &mut Boards, cloud: &[Point]) {
        let volume = boards.volume_with(cloud, voxel_keys_portable);
        boards.reduce(&volume);
    }

    /// [`Boards::fill`] compiled for AVX-512, with the keys from [`voxel_keys_avx512`] and the
    /// boards from [`reduce_avx512`].
    #[target_feature(enable = "avx512f,bmi2")]
    pub(super) fn fill_avx512(boards: &mut Boards, cloud: &[Point]) {
        let volume = boards.volume_with(cloud, |points, keys, size| {
            let whole = points.len() / 16 * 16;
            let (head, tail) = points.split_at(whole);
            let (head_keys, tail_keys) = keys.split_at_mut(whole);
            // The closure has fill_avx512's target features, so the kernel call is safe.
            let near = voxel_keys_avx512(head.as_flattened(), head_keys, size);
            voxel_keys_portable(tail, tail_keys, size) || near
        });
        reduce_avx512(&volume, boards.size, &mut boards.rows);
    }

    /// [`Boards::reduce`] eight words of a volume column at a time: a lit-word mask for xy, an OR
    /// across the column for xz, and ORs into eight running vectors for yz.
    #[target_feature(enable = "avx512f")]
    fn reduce_avx512(volume: &[u64], size: usize, rows: &mut [BitRows; 3]) {
        assert!(volume.len() == size * size && size <= MAX_VIEW_SIZE);
        let vectors = size.div_ceil(8);
        let last_mask = (0xffu16 >> (8 * vectors - size)) as __mmask8;
        let mut yz = [_mm512_setzero_si512(); MAX_VIEW_SIZE / 8];
        *rows = [[0; MAX_VIEW_SIZE]; 3];
        for (x, column) in volume.chunks_exact(size).enumerate() {
            let mut lit = 0u64;
            let mut any = _mm512_setzero_si512();
            for (k, running) in yz[..vectors].iter_mut().enumerate() {
                let mask = if k + 1 == vectors { last_mask } else { 0xff };
                // SAFETY: the mask covers the words 8k.. of the column that exist; a masked-out
                // word is neither read nor faulted on.
                let words =
                    unsafe { _mm512_maskz_loadu_epi64(mask, column.as_ptr().add(8 * k).cast()) };
                lit |= u64::from(_mm512_test_epi64_mask(words, words)) << (8 * k);
                any = _mm512_or_si512(any, words);
                *running = _mm512_or_si512(*running, words);
            }
            rows[0][x] = lit;
            rows[1][x] = _mm512_reduce_or_epi64(any) as u64;
        }
        for (k, running) in yz[..vectors].iter().enumerate() {
            // SAFETY: rows of 64 words hold the 8 at 8k for every k below 8.
            unsafe { _mm512_storeu_si512(rows[2].as_mut_ptr().add(8 * k).cast(), *running) };
        }
    }

    /// [`voxel_keys_portable`] sixteen points at a time: three loads of interleaved x, y, z,
    /// six lane permutations that gather each coordinate into a register of its own, then the
    /// same arithmetic. `coords` holds `3 * keys.len()` values, `keys.len()` a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) fn voxel_keys_avx512(coords: &[f32], keys: &mut [u32], size: usize) -> bool {
        assert!(keys.len().is_multiple_of(16) && coords.len() == 3 * keys.len());
        // Lanes of (a0, a1) holding the first coordinates of the group, then lanes of (that, a2)
        // completing them: x at 0, 3, ..., 45 of the 48 values, y one further, z two.
        let first = [
            _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0, 0, 0, 0, 0),
            _mm512_setr_epi32(1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 0, 0, 0, 0, 0),
            _mm512_setr_epi32(2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0, 0, 0, 0, 0, 0),
        ];
        let rest = [
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 20, 23, 26, 29),
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 18, 21, 24, 27, 30),
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 19, 22, 25, 28, 31),
        ];
        let scale = _mm512_set1_ps(size as f32 / (2.0 * EXTENT));
        let extent = _mm512_set1_ps(EXTENT);
        let last = _mm512_set1_ps((size - 1) as f32);
        let row_pitch = _mm512_set1_epi32(size as i32);
        let mut farthest = _mm512_setzero_ps();
        for (group, out) in coords.chunks_exact(48).zip(keys.chunks_exact_mut(16)) {
            // SAFETY: each group holds 48 values, three vectors of 16.
            let [a0, a1, a2] =
                [0, 16, 32].map(|k| unsafe { _mm512_loadu_ps(group.as_ptr().add(k)) });
            let pixels: [__m512i; 3] = std::array::from_fn(|k| {
                let v =
                    _mm512_permutex2var_ps(_mm512_permutex2var_ps(a0, first[k], a1), rest[k], a2);
                // max and min return their second operand for NaN: NaN lands on pixel 0.
                let x = _mm512_mul_ps(_mm512_add_ps(v, extent), scale);
                let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_setzero_ps()), last);
                let rounded =
                    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
                farthest = _mm512_max_ps(farthest, _mm512_abs_ps(_mm512_sub_ps(x, rounded)));
                _mm512_cvttps_epi32(rounded)
            });
            let cell = _mm512_add_epi32(_mm512_mullo_epi32(pixels[0], row_pitch), pixels[1]);
            let key = _mm512_or_si512(cell, _mm512_slli_epi32::<16>(pixels[2]));
            // SAFETY: out holds 16 keys.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), key) };
        }
        _mm512_reduce_max_ps(farthest) > NEAR_TIE
    }

    /// [`Boards::write_grid_bytes`] with one masked 64-byte store per view row: the row's bits
    /// are the store's mask, so no pixel outside the row is touched.
    #[target_feature(enable = "avx512bw,gfni")]
    pub(super) fn write_grid_bytes_avx512(boards: &Boards, out: &mut [u8]) {
        let ones = _mm512_set1_epi8(1);
        let row_mask = u64::MAX >> (64 - boards.size);
        boards.for_each_grid_line(out, |line, bits| {
            assert!(line.len() >= boards.size);
            // SAFETY: the mask covers the first `size` bytes of `line`, all in bounds.
            unsafe { _mm512_mask_storeu_epi8(line.as_mut_ptr().cast(), row_mask & bits, ones) };
        });
    }
}

/// Rows of up to 64 one-bit pixels, bit `c` of row `r` being pixel (r, c).
type BitRows = [u64; MAX_VIEW_SIZE];

/// Transposes a 64 x 64 bit matrix in place: bit `c` of row `r` becomes bit `r` of row `c`.
/// Swaps ever smaller off-diagonal blocks: 32 x 32, then 16 x 16 within each, down to 1 x 1.
fn transpose(rows: &mut BitRows) {
    let mut width = 32;
    let mut mask: u64 = 0x0000_0000_ffff_ffff;
    while width != 0 {
        let mut k = 0;
        while k < 64 {
            let t = ((rows[k] >> width) ^ rows[k + width]) & mask;
            rows[k + width] ^= t;
            rows[k] ^= t << width;
            k = (k + width + 1) & !width;
        }
        width >>= 1;
        mask ^= mask << width;
    }
}

/// Byte `i` of `EXPAND[b]` is bit `i` of `b`: eight pixels from bits to bytes in one look-up.
static EXPAND: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            table[b] |= ((b as u64 >> i) & 1) << (8 * i);
            i += 1;
        }
        b += 1;
    }
    table
};

/// The three binary boards of a cloud, one bit per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boards {
    size: usize,
    rows: [BitRows; 3],
}

impl Boards {
    /// Empty boards of side `size`.
    ///
    /// # Panics
    ///
    /// When `size` is 0 or above [`MAX_VIEW_SIZE`].
    pub fn new(size: usize) -> Self {
        assert!((1..=MAX_VIEW_SIZE).contains(&size), "view size {size} out of 1..={MAX_VIEW_SIZE}");
        Boards { size, rows: [[0; MAX_VIEW_SIZE]; 3] }
    }

    /// The boards of `cloud` (see [`Boards::new`] for the panics).
    pub fn from_cloud(cloud: &[Point], size: usize) -> Self {
        let mut boards = Boards::new(size);
        boards.fill(cloud);
        boards
    }

    /// Clears the boards and lights the pixels of `cloud`.
    // LIMITATION: 7.4 µs for the views and grid of a 5,000-point cloud, 29x numpy's 212 µs,
    // short of 50x: each point still costs one scattered memory update (about 0.5 ns), and the
    // three 64 x 64 bit transposes and the 64 KiB grid take another 2 µs.
    pub fn fill(&mut self, cloud: &[Point]) {
        #[cfg(target_arch = "x86_64")]
        {
            let bmi2 = std::arch::is_x86_feature_detected!("bmi2");
            if bmi2 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F and BMI2, checked just above.
                return unsafe { x86::fill_avx512(self, cloud) };
            }
            if bmi2 && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 and BMI2, checked just above.
                return unsafe { x86::fill_avx2(self, cloud) };
            }
        }
        let volume = self.volume_with(cloud, voxel_keys_portable);
        self.reduce(&volume);
    }

    /// The occupancy volume of `cloud`, with the voxel keys from `kernel`; inlined into a copy
    /// per instruction set, so that the loops around the kernel are vectorised for it too.
    ///
    /// Each point lights one voxel of an S x S x S volume, kept as one u64 of z bits per (x, y),
    /// at x * S + y: one memory update per point instead of one per board, and the three boards
    /// are then cheap reductions of the volume.
    #[inline(always)]
    fn volume_with(
        &self,
        cloud: &[Point],
        kernel: impl Fn(&[Point], &mut [u32], usize) -> bool,
    ) -> Vec<u64> {
        // NOTE: the volume is packed to S x S words (17 KiB for S = 46) rather than laid out
        // 64 x 64, so that it stays in L1 cache beside the keys: the updates hit random words.
        let s = self.size;
        let mut volume = vec![0u64; s * s];
        let mut keys = [0u32; BLOCK];
        for block in cloud.chunks(BLOCK) {
            let keys = &mut keys[..block.len()];
            voxel_keys(block, keys, s, &kernel);
            // NOTE: neighbouring points usually share a voxel, and updating one word over and
            // over waits on each previous update. Four interleaved streams from far-apart parts
            // of the block keep four independent chains of updates in flight instead of one.
            let quarter = keys.len() / 4;
            let (streams, rest) = keys.split_at(4 * quarter);
            let (ab, cd) = streams.split_at(2 * quarter);
            let ((a, b), (c, d)) = (ab.split_at(quarter), cd.split_at(quarter));
            let mut light = |key: u32| {
                let word = key as usize & 0xffff;
                debug_assert!(word < volume.len());
                // SAFETY: voxel_keys clamps every pixel to 0..s, so x * s + y < s * s.
                *unsafe { volume.get_unchecked_mut(word) } |= 1 << (key >> 16 & 63);
            };
            for (((&a, &b), &c), &d) in a.iter().zip(b).zip(c).zip(d) {
                light(a);
                light(b);
                light(c);
                light(d);
            }
            rest.iter().for_each(|&key| light(key));
        }
        volume
    }

    /// Sets the boards to the three projections of `volume` (see [`Boards::volume_with`]).
    #[inline(always)]
    fn reduce(&mut self, volume: &[u64]) {
        let s = self.size;
        let [xy, xz, yz] = &mut self.rows;
        *xy = [0; MAX_VIEW_SIZE];
        *xz = [0; MAX_VIEW_SIZE];
        *yz = [0; MAX_VIEW_SIZE];
        for (x, column) in volume.chunks_exact(s).enumerate() {
            xy[x] =
                column.iter().enumerate().fold(0, |bits, (y, &zs)| bits | u64::from(zs != 0) << y);
            xz[x] = column.iter().fold(0, |bits, &zs| bits | zs);
            for (bits, &zs) in yz.iter_mut().zip(column) {
                *bits |= zs;
            }
        }
    }

    /// The side of each board.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether pixel (`row`, `col`) of board `projection` (an index into [`PROJECTIONS`]) is lit.
    pub fn is_lit(&self, projection: usize, row: usize, col: usize) -> bool {
        row < self.size && col < self.size && self.rows[projection][row] >> col & 1 == 1
    }

    /// The number of lit pixels of board `projection`.
    pub fn lit_count(&self, projection: usize) -> usize {
        self.rows[projection].iter().map(|r| r.count_ones() as usize).sum()
    }

    /// Calls `visit(view, row, bits)` for every row of every view.
    ///
    /// With `B` a board, `F` its mirror image and `T` its transpose, turning is re-indexing:
    /// pixel (r, c) of `B` lands at (c', r) after one counter-clockwise turn (c' = S-1-c), which
    /// is row c' of `T`; likewise for the other seven views.
    #[inline(always)]
    fn for_each_view_row(&self, mut visit: impl FnMut(usize, usize, u64)) {
        let s = self.size;
        // Whole boards at a time, so that the bit reversals vectorise.
        let mirror = |rows: &BitRows| -> BitRows { rows.map(|row| row.reverse_bits() >> (64 - s)) };
        for (board, b) in self.rows.iter().enumerate() {
            let mut t = *b;
            transpose(&mut t);
            let (mb, mt) = (mirror(b), mirror(&t));
            let first = 8 * board;
            for i in 0..s {
                let j = s - 1 - i;
                visit(first, i, b[i]); // B
                visit(first + 1, i, mb[i]); // F
                visit(first + 2, i, t[j]); // rot90(B)
                visit(first + 3, i, t[i]); // rot90(F)
                visit(first + 4, i, mb[j]); // rot90(B, 2)
                visit(first + 5, i, b[j]); // rot90(F, 2)
                visit(first + 6, i, mt[i]); // rot90(B, 3)
                visit(first + 7, i, mt[j]); // rot90(F, 3)
            }
        }
    }

    /// Calls `emit(view, row, col)` for every lit pixel of every view.
    fn for_each_lit_view_pixel(&self, mut emit: impl FnMut(usize, usize, usize)) {
        self.for_each_view_row(|view, row, mut bits| {
            while bits != 0 {
                emit(view, row, bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        });
    }

    /// The 24 views as images.
    pub fn views(&self) -> Views {
        let mut pixels = vec![0u8; VIEW_COUNT * self.size * self.size];
        self.write_views(&mut pixels, 1);
        Views { size: self.size, pixels }
    }

    /// Writes the 24 views, view-major then row-major, into `out` (`24 * size * size` values):
    /// `on` where a view is lit, `T::default()` elsewhere.
    ///
    /// # Panics
    ///
    /// When `out` has the wrong length.
    pub fn write_views<T: Copy + Default>(&self, out: &mut [T], on: T) {
        let area = self.size * self.size;
        assert_eq!(out.len(), VIEW_COUNT * area, "views buffer has the wrong length");
        out.fill(T::default());
        let size = self.size;
        self.for_each_lit_view_pixel(|view, row, col| out[view * area + row * size + col] = on);
    }

    /// Writes the three boards as they are (the first view of each projection), board-major then
    /// row-major, into `out` (`3 * size * size` values): `on` where lit, `T::default()` elsewhere.
    ///
    /// # Panics
    ///
    /// When `out` has the wrong length.
    pub fn write_boards<T: Copy + Default>(&self, out: &mut [T], on: T) {
        let s = self.size;
        assert_eq!(out.len(), PROJECTIONS.len() * s * s, "boards buffer has the wrong length");
        for (rows, board) in self.rows.iter().zip(out.chunks_exact_mut(s * s)) {
            for (&bits, line) in rows.iter().zip(board.chunks_exact_mut(s)) {
                for (c, pixel) in line.iter_mut().enumerate() {
                    *pixel = if bits >> c & 1 == 1 { on } else { T::default() };
                }
            }
        }
    }

    /// The grid image, with 1 where lit and 0 elsewhere.
    pub fn grid(&self) -> Grid {
        let side = grid_side(self.size);
        let mut pixels = vec![0u8; side * side];
        self.write_grid_bytes(&mut pixels);
        Grid { side, pixels }
    }

    /// Writes the grid as bytes into a zeroed `out`: one masked store per view row where the CPU
    /// has AVX-512, else eight pixels per look-up and store.
    fn write_grid_bytes(&self, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("gfni")
        {
            // SAFETY: the CPU supports AVX-512BW and GFNI, checked just above.
            return unsafe { x86::write_grid_bytes_avx512(self, out) };
        }
        self.write_grid_bytes_portable(out);
    }

    fn write_grid_bytes_portable(&self, out: &mut [u8]) {
        let s = self.size;
        let chunks = s.div_ceil(8);
        // Whole 8-byte stores run past the end of a view row by up to 7 zero bytes. That is
        // harmless when they land in the gap before the next cell (or the border); otherwise
        // write exactly the row's own pixels.
        let overshoot_fits = 8 * chunks - s <= CELL_GAP;
        self.for_each_grid_line(out, |line, bits| {
            if overshoot_fits {
                for (k, bytes) in line[..8 * chunks].chunks_exact_mut(8).enumerate() {
                    bytes.copy_from_slice(&EXPAND[(bits >> (8 * k)) as usize & 0xff].to_le_bytes());
                }
            } else {
                for (c, pixel) in line[..s].iter_mut().enumerate() {
                    *pixel = (bits >> c & 1) as u8;
                }
            }
        });
    }

    /// Calls `write(line, bits)` for every view row with a lit pixel, `line` being `out` from
    /// where that row's pixels go in the grid to the end of the grid.
    #[inline(always)]
    fn for_each_grid_line(&self, out: &mut [u8], mut write: impl FnMut(&mut [u8], u64)) {
        let (s, side) = (self.size, grid_side(self.size));
        let origins: [usize; VIEW_COUNT] = std::array::from_fn(|view| {
            let (top, left) = cell_origin(view, s);
            top * side + left
        });
        self.for_each_view_row(|view, r, bits| {
            if bits != 0 {
                write(&mut out[origins[view] + r * side..], bits);
            }
        });
    }

    /// Writes the grid, row-major, into `out` (`grid_side(size)²` values): `on` where lit,
    /// `T::default()` elsewhere.
    ///
    /// # Panics
    ///
    /// When `out` has the wrong length.
    pub fn write_grid<T: Copy + Default>(&self, out: &mut [T], on: T) {
        let side = grid_side(self.size);
        assert_eq!(out.len(), side * side, "grid buffer has the wrong length");
        out.fill(T::default());
        let origins: [(usize, usize); VIEW_COUNT] =
            std::array::from_fn(|view| cell_origin(view, self.size));
        self.for_each_lit_view_pixel(|view, row, col| {
            let (top, left) = origins[view];
            out[(top + row) * side + left + col] = on;
        });
    }
}

/// The 24 views of one cloud, each `size x size`, with 1 where lit and 0 elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Views {
    size: usize,
    pixels: Vec<u8>,
}

impl Views {
    /// The side of each view.
    pub fn size(&self) -> usize {
        self.size
    }

    /// View `index` (0..24), row-major.
    pub fn view(&self, index: usize) -> &[u8] {
        let area = self.size * self.size;
        &self.pixels[index * area..(index + 1) * area]
    }

    /// All views, view-major then row-major.
    pub fn as_slice(&self) -> &[u8] {
        &self.pixels
    }

    /// The grid these views tile into, built cell by cell as the method describes it. Equal to
    /// [`Boards::grid`] of the same boards, which writes it directly.
    pub fn tile(&self) -> Grid {
        let side = grid_side(self.size);
        let mut pixels = vec![0u8; side * side];
        for index in 0..VIEW_COUNT {
            let (top, left) = cell_origin(index, self.size);
            for (r, row) in self.view(index).chunks(self.size).enumerate() {
                let start = (top + r) * side + left;
                pixels[start..start + self.size].copy_from_slice(row);
            }
        }
        Grid { side, pixels }
    }
}

/// The grid image, `side x side`, with 1 where lit and 0 elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    side: usize,
    pixels: Vec<u8>,
}

impl Grid {
    /// The side in pixels.
    pub fn side(&self) -> usize {
        self.side
    }

    /// The pixels, row-major.
    pub fn as_slice(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixel at (`row`, `col`).
    pub fn get(&self, row: usize, col: usize) -> u8 {
        self.pixels[row * self.side + col]
    }
}

/// The grid of `cloud` with the default view size.
pub fn grid_of(cloud: &[Point]) -> Grid {
    Boards::from_cloud(cloud, VIEW_SIZE).grid()
}

/// Writes the grids of many clouds into `out`, one `grid_side(size)²` block per cloud, as `0.0`
/// and `1.0`, using every core.
///
/// # Panics
///
/// When `out` does not hold exactly one grid per cloud, or `size` is out of range.
pub fn write_grids(clouds: &[&[Point]], size: usize, out: &mut [f32]) {
    let area = grid_side(size) * grid_side(size);
    assert_eq!(out.len(), clouds.len() * area, "grid batch buffer has the wrong length");
    out.par_chunks_mut(area).zip(clouds.par_iter()).for_each_init(
        || Boards::new(size),
        |boards, (grid, cloud)| {
            boards.fill(cloud);
            boards.write_grid(grid, 1.0);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coordinate whose pixel is exactly `p` (with no rounding doubt).
    fn at(p: usize, size: usize) -> f32 {
        p as f32 / size as f32 * 1.5 - 0.75
    }

    /// A 4 x 4 board as text, `#` for lit, row by row.
    fn board_text(boards: &Boards, projection: usize) -> Vec<String> {
        (0..boards.size())
            .map(|r| {
                (0..boards.size())
                    .map(|c| if boards.is_lit(projection, r, c) { '#' } else { '.' })
                    .collect()
            })
            .collect()
    }

    fn view_text(views: &Views, index: usize) -> Vec<String> {
        views
            .view(index)
            .chunks(views.size())
            .map(|row| row.iter().map(|&v| if v == 1 { '#' } else { '.' }).collect())
            .collect()
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let mut rows = [0u64; 64];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (1 << (r * 7 % 64));
        }
        let mut t = rows;
        transpose(&mut t);
        for (r, row) in rows.iter().enumerate() {
            for (c, column) in t.iter().enumerate() {
                assert_eq!(column >> r & 1, row >> c & 1, "({r}, {c})");
            }
        }
    }

    /// Exact halves for size 8 (see pixel_of_rounds_ties_to_even_like_numpy), where the fast
    /// multiply could round the other way, and a fine sweep for size 46.
    fn key_test_sets() -> [(Vec<Point>, usize); 2] {
        let halves = [-0.65625, -0.46875, -0.28125, 0.28125];
        let tied: Vec<Point> = (0..32).map(|i| halves[i % 4]).map(|v| [v, -v, v]).collect();
        let swept: Vec<Point> = (0..3008)
            .map(|i| {
                let v = -0.8 + i as f32 * 0.000_533;
                [v, -v, (i as f32 * 0.618).sin() * 0.9]
            })
            .collect();
        [(tied, 8), (swept, 46)]
    }

    fn exact_key(p: &Point, size: usize) -> u32 {
        let [x, y, z] = p.map(|v| pixel_of(v, size) as u32);
        (x * size as u32 + y) | z << 16
    }

    type KeyKernel = fn(&[Point], &mut [u32], usize) -> bool;

    /// Every key kernel this CPU can run.
    fn kernels() -> Vec<(&'static str, KeyKernel)> {
        let mut kernels: Vec<(&str, KeyKernel)> = vec![("portable", voxel_keys_portable)];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F; the test sets hold multiples of 16 points.
            kernels.push(("avx512", |p, k, s| unsafe {
                x86::voxel_keys_avx512(p.as_flattened(), k, s)
            }));
        }
        kernels
    }

    #[test]
    fn voxel_keys_agree_with_pixel_of_near_ties_included() {
        for (name, kernel) in kernels() {
            for (points, size) in key_test_sets() {
                let mut keys = vec![0u32; points.len()];
                voxel_keys(&points, &mut keys, size, kernel);
                for (p, key) in points.iter().zip(&keys) {
                    assert_eq!(*key, exact_key(p, size), "{name}: {p:?} at size {size}");
                }
            }
        }
    }

    #[test]
    fn every_fast_kernel_is_exact_or_reports_a_near_tie() {
        let [(tied, tied_size), (swept, swept_size)] = key_test_sets();
        for (name, kernel) in kernels() {
            let mut keys = vec![0u32; tied.len()];
            assert!(kernel(&tied, &mut keys, tied_size), "{name} missed the exact halves");

            let mut keys = vec![0u32; swept.len()];
            let near_tie = kernel(&swept, &mut keys, swept_size);
            let wrong = swept.iter().zip(&keys).filter(|(p, k)| **k != exact_key(p, 46)).count();
            assert!(
                wrong == 0 || near_tie,
                "{name}: {wrong} keys differ with no near tie reported"
            );
            assert!(wrong < 4, "{name}: {wrong} keys differ");
        }
    }

    #[test]
    fn pixel_of_maps_the_extent_onto_the_board() {
        // (v + 0.75) / 1.5 * 46: -0.75 -> 0, 0 -> 23, 0.72 -> 45.08 -> 45.
        assert_eq!(pixel_of(-0.75, 46), 0);
        assert_eq!(pixel_of(0.0, 46), 23);
        assert_eq!(pixel_of(0.72, 46), 45);
        // 0.1 -> 26.07 -> 26; -0.3 -> 13.8 -> 14.
        assert_eq!(pixel_of(0.1, 46), 26);
        assert_eq!(pixel_of(-0.3, 46), 14);
    }

    #[test]
    fn pixel_of_rounds_ties_to_even_like_numpy() {
        // With size 8, (v + 0.75) / 1.5 * 8 is exactly 0.5 at v = -0.65625, 1.5 at -0.46875,
        // 2.5 at -0.28125 and 5.5 at 0.28125: halves go to the even neighbour.
        assert_eq!(pixel_of(-0.65625, 8), 0);
        assert_eq!(pixel_of(-0.46875, 8), 2);
        assert_eq!(pixel_of(-0.28125, 8), 2);
        assert_eq!(pixel_of(0.28125, 8), 6);
        // And agreement with the library rounding over a sweep of coordinates.
        for i in -2000..=2000 {
            let v = i as f32 * 0.00047;
            let x = ((v + 0.75) / 1.5) * 46.0;
            let want = x.round_ties_even().clamp(0.0, 45.0) as usize;
            assert_eq!(pixel_of(v, 46), want, "v = {v}");
        }
    }

    #[test]
    fn coordinates_outside_the_extent_clip_to_the_border() {
        assert_eq!(pixel_of(-3.0, 46), 0);
        assert_eq!(pixel_of(0.76, 46), 45);
        assert_eq!(pixel_of(1e30, 46), 45);
        assert_eq!(pixel_of(f32::NEG_INFINITY, 46), 0);
        assert_eq!(pixel_of(f32::NAN, 46), 0);
    }

    #[test]
    fn boards_project_onto_xy_xz_and_yz() {
        // One point at pixels x = 0, y = 1, z = 3 and one at x = 2, y = 2, z = 0.
        let cloud = [[at(0, 4), at(1, 4), at(3, 4)], [at(2, 4), at(2, 4), at(0, 4)]];
        let boards = Boards::from_cloud(&cloud, 4);
        assert_eq!(board_text(&boards, 0), [".#..", "....", "..#.", "...."]);
        assert_eq!(board_text(&boards, 1), ["...#", "....", "#...", "...."]);
        assert_eq!(board_text(&boards, 2), ["....", "...#", "#...", "...."]);
    }

    #[test]
    fn the_eight_views_follow_numpy_rot90_and_fliplr() {
        // Board xy with pixels (0, 0), (0, 1) and (2, 3) lit. Worked out by hand from rot90
        // (counter-clockwise: new[i][j] = old[j][n-1-i]) and fliplr (new[i][j] = old[i][n-1-j]).
        let cloud = [(0, 0), (0, 1), (2, 3)].map(|(x, y)| [at(x, 4), at(y, 4), at(0, 4)]);
        let views = Boards::from_cloud(&cloud, 4).views();
        let expected: [[&str; 4]; 8] = [
            ["##..", "....", "...#", "...."], // B
            ["..##", "....", "#...", "...."], // F = fliplr(B)
            ["..#.", "....", "#...", "#..."], // rot90(B)
            ["#...", "#...", "....", "..#."], // rot90(F)
            ["....", "#...", "....", "..##"], // rot90(B, 2)
            ["....", "...#", "....", "##.."], // rot90(F, 2)
            ["...#", "...#", "....", ".#.."], // rot90(B, 3)
            [".#..", "....", "...#", "...#"], // rot90(F, 3)
        ];
        for (k, want) in expected.iter().enumerate() {
            assert_eq!(view_text(&views, k), want, "view {k}");
        }
    }

    #[test]
    fn views_are_projection_major() {
        // A single point at x = 0, y = 1, z = 3 lights (0, 1) on xy, (0, 3) on xz, (1, 3) on yz:
        // the first view of each projection is its plain board.
        let views = Boards::from_cloud(&[[at(0, 4), at(1, 4), at(3, 4)]], 4).views();
        assert_eq!(view_text(&views, 0), [".#..", "....", "....", "...."]);
        assert_eq!(view_text(&views, 8), ["...#", "....", "....", "...."]);
        assert_eq!(view_text(&views, 16), ["....", "...#", "....", "...."]);
        assert_eq!(ViewKind::of(9).label(), "xz mirrored 0°");
        assert_eq!(ViewKind::of(22).file_stem(), "yz-plain-270");
    }

    #[test]
    fn written_boards_are_the_first_view_of_each_projection() {
        let cloud: Vec<Point> = (0..300)
            .map(|i| {
                let t = i as f32 * 0.29;
                [t.sin() * 0.6, (t * 1.1).cos() * 0.7, (t * 0.4).sin() * 0.5]
            })
            .collect();
        let boards = Boards::from_cloud(&cloud, 46);
        let views = boards.views();
        let mut out = vec![7u8; 3 * 46 * 46];
        boards.write_boards(&mut out, 1);
        for (p, board) in out.chunks(46 * 46).enumerate() {
            assert_eq!(board, views.view(8 * p), "projection {p}");
        }
        assert!(out.contains(&1));
    }

    #[test]
    fn turning_a_view_four_times_gives_it_back() {
        // View 2k+2 is view 2k turned once more, so turning view 6 once must give view 0 again.
        let cloud: Vec<Point> = (0..40)
            .map(|i| [((i * 7) % 13) as f32 * 0.1 - 0.6, ((i * 5) % 11) as f32 * 0.1 - 0.5, 0.0])
            .collect();
        let views = Boards::from_cloud(&cloud, 46).views();
        let n = 46;
        let turn = |img: &[u8]| -> Vec<u8> {
            // numpy rot90 once: new[i][j] = old[j][n - 1 - i].
            (0..n * n).map(|k| img[(k % n) * n + (n - 1 - k / n)]).collect()
        };
        for start in [0, 1] {
            let mut img = views.view(start).to_vec();
            for step in 1..=4 {
                img = turn(&img);
                let next = start + 2 * (step % 4);
                assert_eq!(img, views.view(next), "turn {step} of view {start}");
            }
        }
    }

    #[test]
    fn grid_places_cells_five_to_a_row_inside_a_border_of_five() {
        assert_eq!(grid_side(VIEW_SIZE), 256);
        assert_eq!(cell_origin(0, 46), (5, 5));
        assert_eq!(cell_origin(4, 46), (5, 205));
        assert_eq!(cell_origin(5, 46), (55, 5));
        assert_eq!(cell_origin(23, 46), (205, 155));
        // The point at pixel (0, 1) of board xy: view 0 puts it at grid (5, 6); view 1 (cell
        // origin (5, 55), mirrored: column 44) at (5, 99); view 5 (cell origin (55, 5),
        // rot90(F, 2): row 45, column 1) at (100, 6).
        let cloud = [[at(0, 46), at(1, 46), at(20, 46)]];
        let grid = grid_of(&cloud);
        assert_eq!(grid.get(5, 6), 1);
        assert_eq!(grid.get(5, 99), 1);
        assert_eq!(grid.get(100, 6), 1);
        assert_eq!(grid.get(5, 5), 0);
        // The border, the gaps and the empty 25th cell stay dark.
        let (top, left) = cell_origin(24, 46);
        for r in 0..256 {
            for c in 0..256 {
                let in_border = r < 5 || c < 5 || r >= 251 || c >= 251;
                let in_last = (top..top + 46).contains(&r) && (left..left + 46).contains(&c);
                if in_border || in_last {
                    assert_eq!(grid.get(r, c), 0, "({r}, {c})");
                }
            }
        }
    }

    #[test]
    fn direct_grid_equals_tiled_views() {
        let cloud: Vec<Point> = (0..500)
            .map(|i| {
                let t = i as f32 * 0.37;
                [t.sin() * 0.6, (t * 1.3).cos() * 0.5, (t * 0.7).sin() * 0.8]
            })
            .collect();
        let boards = Boards::from_cloud(&cloud, 46);
        let tiled = boards.views().tile();
        assert_eq!(boards.grid(), tiled);
        let mut portable = vec![0u8; 256 * 256];
        boards.write_grid_bytes_portable(&mut portable);
        assert_eq!(portable, tiled.as_slice());
    }

    #[test]
    fn every_instruction_set_gives_the_same_boards() {
        let cloud: Vec<Point> = (0..1001)
            .map(|i| {
                let t = i as f32 * 0.61;
                [t.sin() * 0.7, (t * 1.7).cos() * 0.6, (t * 0.3).sin() * 0.9]
            })
            .collect();
        for size in [4, 8, 46, 64] {
            let mut portable = Boards::new(size);
            let volume = portable.volume_with(&cloud, voxel_keys_portable);
            portable.reduce(&volume);
            assert!(portable.lit_count(0) > 0);
            assert_eq!(Boards::from_cloud(&cloud, size), portable, "size {size}");
        }
    }

    #[test]
    fn every_view_of_a_cloud_in_range_has_a_lit_pixel() {
        let cloud = [[0.74, -0.74, 0.1]];
        let views = Boards::from_cloud(&cloud, 46).views();
        for index in 0..VIEW_COUNT {
            assert_eq!(views.view(index).iter().filter(|&&v| v == 1).count(), 1, "view {index}");
        }
    }

    #[test]
    fn an_empty_cloud_gives_a_dark_grid() {
        assert!(grid_of(&[]).as_slice().iter().all(|&v| v == 0));
    }

    #[test]
    fn batch_grids_equal_one_at_a_time() {
        let a: Vec<Point> = vec![[0.1, 0.2, 0.3], [-0.5, 0.4, 0.0]];
        let b: Vec<Point> = vec![[0.7, -0.7, 0.7]];
        let clouds = [a.as_slice(), b.as_slice()];
        let mut out = vec![0.5f32; 2 * 256 * 256];
        write_grids(&clouds, 46, &mut out);
        for (cloud, block) in clouds.iter().zip(out.chunks(256 * 256)) {
            let want: Vec<f32> = grid_of(cloud).as_slice().iter().map(|&v| f32::from(v)).collect();
            assert_eq!(block, want.as_slice());
        }
    }
}
