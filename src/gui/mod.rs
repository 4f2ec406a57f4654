//! The desktop program: a bevy window with the cloud in 3D, and egui panels around it for the
//! views, the sample browser, training and the mistakes a model makes.
//!
//! The window redraws on input and a few times a second while work runs in the background, not
//! in a busy loop, so that a trainer on the same machine keeps its cores. Everything slow (loading
//! a dataset, training, scoring, file dialogs) runs on threads of its own and reports back through
//! channels that [`jobs::poll_jobs`] drains once per frame.

mod capture;
mod jobs;
mod panels;
mod scene;
mod session;
mod training;

use std::path::PathBuf;
use std::time::Duration;

use bevy::prelude::*;
use bevy::window::WindowResolution;
use bevy::winit::{UpdateMode, WinitSettings};
use bevy_egui::{
    EguiInput, EguiPlugin, EguiPostUpdateSet, EguiPreUpdateSet, EguiPrimaryContextPass, egui,
};
use digit3d::rotation::Angles;

/// Arguments of `digit3d gui`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// The dataset to open: a folder in the Dacon layout or one .h5 file. Default: the bundled
    /// sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A checkpoint to load, for live predictions and mistakes.
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: Option<PathBuf>,
    /// The sample to show first (default: the first one).
    #[arg(long)]
    pub id: Option<u32>,
    /// The angles to show it at: A,B,C in radians.
    #[arg(long, value_name = "A,B,C", allow_hyphen_values = true)]
    pub rotate: Option<Angles>,
    /// Save a PNG of the whole window once the scene is ready (with --exit-after, at the end),
    /// then exit.
    #[arg(long, value_name = "PATH")]
    pub screenshot: Option<PathBuf>,
    /// With --screenshot: draw at least this many frames before taking it.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub after_frames: u32,
    /// Redraw continuously instead of on input (to measure frame times).
    #[arg(long)]
    pub continuous: bool,
    /// Start training at launch with the training panel's settings.
    #[arg(long)]
    pub train: bool,
    /// The tab the right panel opens on.
    #[arg(long, value_enum, default_value = "views")]
    pub tab: panels::Tab,
    /// Exit after this many seconds, printing frame times and training throughput.
    #[arg(long, value_name = "SECONDS")]
    pub exit_after: Option<f64>,
    /// Turn the cloud by this many degrees every frame about the screen's vertical axis, as a
    /// steady drag would (to measure frames and view updates while it turns).
    #[arg(long, value_name = "DEGREES", allow_hyphen_values = true)]
    pub spin: Option<f64>,
}

/// How long the window waits for input before it redraws anyway: often enough while work runs in
/// the background to show its progress, rarely when idle.
const BUSY_REDRAW: Duration = Duration::from_millis(400);
const IDLE_REDRAW: Duration = Duration::from_secs(5);

/// Window size at launch, in logical pixels.
const WINDOW_SIZE: (u32, u32) = (1280, 720);

/// Opens the window and runs until it is closed.
pub fn run(args: Args, bundled: PathBuf) -> anyhow::Result<()> {
    let data = args.data.clone().unwrap_or(bundled);
    let session = session::Session::open(&data, &args)?;
    anyhow::ensure!(
        std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty()),
        "no display to open the window on (DISPLAY is not set); the command line works without \
         one: see digit3d --help"
    );
    // The renderer gives up by panicking (no graphics driver, say): report that as an error.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx = std::sync::Mutex::new(tx);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = tx.lock().map(|tx| tx.send(info.to_string()));
    }));
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open(args, data, session)));
    std::panic::set_hook(previous);
    result.map_err(|_| {
        anyhow::anyhow!("the window failed: {}", rx.try_recv().unwrap_or_else(|_| "unknown".into()))
    })
}

fn open(args: Args, data: PathBuf, session: session::Session) {
    // A screenshot taken as soon as the window is ready must not wait for input to draw its
    // frames; a timed run keeps the usual pace, so that what it measures is what users get. A
    // spin stands for a drag, whose mouse events redraw every frame.
    let shoot_at_once = args.screenshot.is_some() && args.exit_after.is_none();
    let pace = Pace { continuous: args.continuous || args.spin.is_some() || shoot_at_once };

    let window = Window {
        title: format!("digit3d: {}", data.display()),
        resolution: WindowResolution::new(WINDOW_SIZE.0, WINDOW_SIZE.1),
        ..default()
    };
    let mut app = App::new();
    app.add_plugins(
        DefaultPlugins
            .set(WindowPlugin { primary_window: Some(window), ..default() })
            // The program's own tracing subscriber is already in place.
            .disable::<bevy::log::LogPlugin>(),
    )
    .add_plugins(EguiPlugin::default())
    .insert_resource(WinitSettings::continuous())
    .insert_resource(pace)
    .insert_resource(ClearColor(scene::BACKGROUND))
    .insert_resource(args.tab)
    .insert_non_send(session)
    .insert_non_send(training::TrainingPanel::new(args.train))
    .add_systems(Startup, scene::setup)
    .add_systems(
        PreUpdate,
        drop_unchanged_modifiers
            .after(EguiPreUpdateSet::ProcessInput)
            .before(EguiPreUpdateSet::BeginPass),
    )
    .add_systems(Update, (jobs::poll_jobs, scene::drag_and_zoom, pace_redraws).chain())
    .add_systems(EguiPrimaryContextPass, panels::draw)
    .add_systems(
        PostUpdate,
        (scene::show_cloud, scene::draw_frame).after(EguiPostUpdateSet::EndPass),
    );
    capture::add(&mut app, &args);
    app.run();
}

/// Removes the modifier-key event bevy_egui hands egui every frame when the keys have not
/// changed. egui takes any event as a reason to draw the next frame at once, so without this
/// the window would redraw in a busy loop however idle it is.
fn drop_unchanged_modifiers(
    mut inputs: Query<&mut EguiInput>,
    mut last: Local<Option<egui::Modifiers>>,
) {
    for mut input in &mut inputs {
        input.events.retain(|event| match event {
            egui::Event::ModifiersChanged(now) => last.replace(*now) != Some(*now),
            _ => true,
        });
    }
}

/// How the window paces its frames.
#[derive(Resource)]
struct Pace {
    /// Redraw continuously, not only on input.
    continuous: bool,
}

/// Redraws continuously until the scene is ready (its pipelines compile in the background, and
/// nothing else would draw the finished scene), then on input and a few times a second while
/// work runs in the background, and rarely otherwise.
fn pace_redraws(
    pace: Res<Pace>,
    capture: Res<capture::Capture>,
    session: NonSend<session::Session>,
    training: NonSend<training::TrainingPanel>,
    mut settings: ResMut<WinitSettings>,
) {
    let busy = session.busy() || training.running();
    let wait = if busy { BUSY_REDRAW } else { IDLE_REDRAW };
    let wanted = if pace.continuous || !capture.is_ready() {
        WinitSettings::continuous()
    } else {
        WinitSettings {
            focused_mode: UpdateMode::reactive(wait),
            unfocused_mode: UpdateMode::reactive_low_power(wait),
        }
    };
    if settings.focused_mode != wanted.focused_mode
        || settings.unfocused_mode != wanted.unfocused_mode
    {
        *settings = wanted;
    }
}
