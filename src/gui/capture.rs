//! Unattended runs of the window: a screenshot once the scene is ready, frame-time statistics
//! (optionally while the cloud turns as under a drag), and the time from launch to the first
//! complete frame.
//!
//! Render pipelines compile in the background, so the first frames of a fresh window are
//! partly black. The window counts as ready once every pipeline the renderer has asked for
//! exists and that has held for a few frames in a row.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bevy::prelude::*;
use bevy::render::render_resource::{CachedPipelineState, PipelineCache};
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use bevy::render::{Render, RenderApp};
use bevy::window::PrimaryWindow;
use digit3d::atomic::write_atomically;
use digit3d::dataset::DataError;

use super::Args;
use super::scene::{self, Scene};
use super::session::Session;
use super::training::TrainingPanel;

/// Frames in a row with every pipeline compiled before the window counts as ready.
const STEADY_FRAMES: u32 = 5;

/// Whether the render world has compiled every pipeline asked for, shared with the main world.
#[derive(Resource, Clone, Default)]
struct PipelinesReady(Arc<AtomicBool>);

/// When the window became ready, and what an unattended run waits for and measures.
#[derive(Resource)]
pub struct Capture {
    launched: Instant,
    screenshot: Option<PathBuf>,
    after_frames: u32,
    exit_after: Option<f64>,
    frames: u32,
    steady: u32,
    ready_at: Option<Instant>,
    requested: bool,
    /// Seconds per frame since the window became ready.
    frame_seconds: Vec<f64>,
    /// Radians to turn the cloud by every frame once the window is ready.
    spin: Option<f64>,
    /// Seconds each recomputation of the views took while spinning.
    views_seconds: Vec<f64>,
}

impl Capture {
    /// Whether every render pipeline has compiled, for a few frames in a row.
    pub fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }
}

pub fn add(app: &mut App, args: &Args) {
    let ready = PipelinesReady::default();
    app.insert_resource(ready.clone())
        .insert_resource(Capture {
            launched: Instant::now(),
            screenshot: args.screenshot.clone(),
            after_frames: args.after_frames,
            exit_after: args.exit_after,
            frames: 0,
            steady: 0,
            ready_at: None,
            requested: false,
            frame_seconds: Vec::new(),
            spin: args.spin.map(f64::to_radians),
            views_seconds: Vec::new(),
        })
        .add_systems(Last, watch);
    app.sub_app_mut(RenderApp).insert_resource(ready).add_systems(Render, check_pipelines);
}

/// In the render world: are all pipelines compiled?
fn check_pipelines(cache: Res<PipelineCache>, ready: Res<PipelinesReady>) {
    let mut any = false;
    let done = cache.pipelines().all(|p| {
        any = true;
        matches!(p.state, CachedPipelineState::Ok(_) | CachedPipelineState::Err(_))
    });
    ready.0.store(any && done, Ordering::Relaxed);
}

/// Counts frames, notes when the window became ready, takes the screenshot and ends timed runs.
fn watch(
    mut commands: Commands,
    mut capture: ResMut<Capture>,
    ready: Res<PipelinesReady>,
    time: Res<Time<Real>>,
    training: NonSend<TrainingPanel>,
    mut session: NonSendMut<Session>,
    mut exit: MessageWriter<AppExit>,
) {
    capture.frames += 1;
    if ready.0.load(Ordering::Relaxed) {
        capture.steady += 1;
    } else {
        capture.steady = 0;
    }
    let Some(ready_at) = capture.ready_at else {
        if capture.steady >= STEADY_FRAMES && capture.frames >= capture.after_frames {
            let seconds = capture.launched.elapsed().as_secs_f64();
            tracing::info!("first complete frame {seconds:.2} s after the window opened");
            capture.ready_at = Some(Instant::now());
        }
        return;
    };
    capture.frame_seconds.push(time.delta_secs_f64());
    if let Some(angle) = capture.spin {
        // The views of the previous turn were recomputed during this frame.
        if capture.frame_seconds.len() > 1 {
            capture.views_seconds.push(session.views_seconds);
        }
        session.turn(&scene::screen_turn(angle, 0.0));
    }

    // A timed run reports (and takes its screenshot) at the end; an untimed one shoots at once.
    let due = capture.exit_after.is_none_or(|limit| ready_at.elapsed().as_secs_f64() >= limit);
    if !due || capture.requested {
        return;
    }
    capture.requested = true;
    if capture.exit_after.is_some() {
        report(&capture, &training);
    }
    if capture.screenshot.is_some() {
        commands.spawn(Screenshot::primary_window()).observe(save_and_exit);
    } else {
        exit.write(AppExit::Success);
    }
}

/// Prints the frame times (median and 95th percentile), the time the views took while the
/// cloud spun, and the training throughput.
fn report(capture: &Capture, training: &TrainingPanel) {
    let (frames, median, p95) = quantiles(capture.frame_seconds.iter().skip(1));
    println!("frames {frames} median {median:.1} ms p95 {p95:.1} ms");
    if capture.spin.is_some() {
        let (updates, median, p95) = quantiles(&capture.views_seconds);
        println!("views recomputed {updates} times, median {median:.3} ms p95 {p95:.3} ms");
    }
    if let Some(rate) = training.samples_per_second() {
        let last = training.last_samples_per_second().unwrap_or(0.0);
        println!("training {rate:.1} samples/s over the run, {last:.1} samples/s at the end");
    }
}

/// Writes the screenshot, prints where the grid image sits in it, and closes the window.
fn save_and_exit(
    captured: On<ScreenshotCaptured>,
    capture: Res<Capture>,
    scene: Res<Scene>,
    window: Single<&Window, With<PrimaryWindow>>,
    mut exit: MessageWriter<AppExit>,
) {
    let Some(path) = &capture.screenshot else { return };
    if let Err(e) = save_png(&captured.image, path) {
        tracing::error!("{e}");
        exit.write(AppExit::error());
        return;
    }
    tracing::info!("saved {}", path.display());
    if let Some(rect) = scene.grid_rect {
        let scale = window.scale_factor();
        let [x, y, w, h] =
            [rect.min.x, rect.min.y, rect.width(), rect.height()].map(|v| (v * scale).round());
        println!("grid at {x} {y} size {w} {h}");
    }
    exit.write(AppExit::Success);
}

/// The count, median and 95th percentile of `seconds`, the latter two in milliseconds.
fn quantiles<'a>(seconds: impl IntoIterator<Item = &'a f64>) -> (usize, f64, f64) {
    let mut ms: Vec<f64> = seconds.into_iter().map(|s| s * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at =
        |q: f64| ms.get(((ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    (ms.len(), at(0.5), at(0.95))
}

fn save_png(image: &Image, path: &Path) -> Result<(), DataError> {
    let fail = |detail: String| DataError::Write { path: path.to_owned(), detail };
    let rgb = image.clone().try_into_dynamic().map_err(|e| fail(e.to_string()))?.to_rgb8();
    write_atomically(path, |tmp| {
        rgb.save_with_format(tmp, image::ImageFormat::Png).map_err(|e| fail(e.to_string()))
    })
}
