//! digit3d: classify handwritten digits given as 3D point clouds, and see why a model gets
//! them right or wrong.
//!
//! The library holds everything but the window: reading datasets ([`dataset`]), rotating clouds
//! ([`rotation`]), turning a cloud into the 24 views and the grid the network sees ([`views`]),
//! making datasets from 2D digit images ([`lift`]), and the networks that classify them
//! ([`nn`]).

pub mod align;
pub mod atomic;
pub mod dataset;
pub mod lift;
pub mod nn;
pub mod rotation;
pub mod train;
pub mod views;

/// One point of a cloud: x, y, z.
pub type Point = [f32; 3];

/// Tunes the C allocator for training and prediction; call it once the data is loaded.
///
/// NOTE: every tensor operation allocates its result, and glibc's defaults hand allocations of
/// a few megabytes straight back to the kernel when freed, so each training step paid for
/// thousands of page faults and TLB flushes (about a third of a compact model's step), and
/// threads' own arenas kept returning pages too. This keeps freed memory in one arena for reuse
/// instead: the process holds on to its peak. Calling it before a
/// large dataset is loaded would make the loader's growing buffer copy where it now remaps.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; any value is valid to pass.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}
