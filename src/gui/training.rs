//! The training panel: settings, Train / Pause / Stop, and live plots of the run.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bevy_egui::egui;
use clap::ValueEnum;
use digit3d::align::Alignment;
use digit3d::nn::curricular::TRule;
use digit3d::nn::model::{Architecture, InputForm};
use digit3d::train::checkpoint::EpochRecord;
use digit3d::train::{DeviceChoice, Event, Reason, StepStats, TrainConfig, Trainer, TrainerHandle};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::session::{Mistakes, Session};

/// Loss values are smoothed with this weight on the newest one.
const SMOOTHING: f64 = 0.05;

/// The panel's settings, the run in progress and what it reported.
pub struct TrainingPanel {
    pub config: TrainConfig,
    pub time_limit: f64,
    pub out: String,
    run: Option<TrainerHandle>,
    /// Start training at the first frame (from `--train`).
    start_at_launch: bool,
    paused: bool,
    stopping: bool,
    steps: Vec<StepStats>,
    smoothed: Vec<f64>,
    epochs: Vec<EpochRecord>,
    batches: usize,
    total_steps: u64,
    started: Option<Instant>,
    /// Samples trained in this window session, and for how long, for the throughput figure.
    samples: u64,
    status: String,
}

impl TrainingPanel {
    pub fn new(start_at_launch: bool) -> Self {
        TrainingPanel {
            config: TrainConfig::new(Architecture::Compact),
            time_limit: 0.0,
            out: default_run_folder(),
            run: None,
            start_at_launch,
            paused: false,
            stopping: false,
            steps: Vec::new(),
            smoothed: Vec::new(),
            epochs: Vec::new(),
            batches: 0,
            total_steps: 0,
            started: None,
            samples: 0,
            status: String::new(),
        }
    }

    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// Mean training throughput since the run started, in samples per second.
    pub fn samples_per_second(&self) -> Option<f64> {
        let seconds = self.started?.elapsed().as_secs_f64();
        (self.samples > 0).then(|| self.samples as f64 / seconds)
    }

    /// The newest throughput the trainer reported.
    pub fn last_samples_per_second(&self) -> Option<f64> {
        self.steps.last().map(|s| s.samples_per_sec)
    }

    /// Starts a run with the panel's settings on the session's training clouds.
    fn start(&mut self, session: &mut Session) {
        let Some(set) = session.data.train.clone() else {
            session.say(true, "this dataset has no training clouds (train.h5)".into());
            return;
        };
        let mut config = self.config.clone();
        config.time_limit_minutes = (self.time_limit > 0.0).then_some(self.time_limit);
        let out = PathBuf::from(self.out.trim());
        match Trainer::new(config, set, Some(out.clone()), None) {
            Ok(trainer) => {
                digit3d::tune_allocator();
                *self = TrainingPanel {
                    config: self.config.clone(),
                    time_limit: self.time_limit,
                    out: self.out.clone(),
                    run: Some(trainer.spawn()),
                    started: Some(Instant::now()),
                    status: format!("starting; writing {}", out.display()),
                    ..TrainingPanel::new(false)
                };
            }
            Err(e) => session.say(true, format!("cannot start training: {e}")),
        }
    }

    /// Takes the trainer's events; at the end, loads the best checkpoint for predictions.
    pub fn poll(&mut self, session: &mut Session) {
        if std::mem::take(&mut self.start_at_launch) {
            self.start(session);
        }
        let Some(run) = &self.run else { return };
        let mut finished = false;
        for event in run.poll() {
            match event {
                Event::Started { batches, total_steps, .. } => {
                    self.batches = batches;
                    self.total_steps = total_steps;
                }
                Event::Step(step) => {
                    let loss = step.loss;
                    let previous = self.smoothed.last().copied().unwrap_or(loss);
                    self.smoothed.push(previous + SMOOTHING * (loss - previous));
                    self.samples += self.config.batch as u64;
                    self.status = format!(
                        "epoch {} batch {}/{}: loss {:.3}, accuracy {:.3}, t {:.3}",
                        step.epoch, step.batch, step.batches, step.loss, step.accuracy, step.t
                    );
                    self.steps.push(step);
                }
                Event::PoseStep(step) => {
                    self.samples += self.config.batch as u64;
                    self.status = format!(
                        "learning the pose: epoch {} batch {}/{}: loss {:.3}, accuracy {:.3}",
                        step.epoch, step.batch, step.batches, step.loss, step.accuracy
                    );
                }
                Event::Pose(report) => session.say(
                    false,
                    format!(
                        "pose network: names the turn of {:.1}% of the validation clouds ({:.1}% \
                         are not turned)",
                        100.0 * report.accuracy,
                        100.0 * report.unturned
                    ),
                ),
                Event::Epoch(report) => {
                    let record = report.record.clone();
                    session.mistakes = Some(Mistakes {
                        source: format!("epoch {} validation", record.epoch),
                        confusion: report.confusion.clone(),
                        list: report.mistakes.clone(),
                        cell: None,
                    });
                    session.say(
                        false,
                        format!(
                            "epoch {}: validation accuracy {:.4}{}",
                            record.epoch,
                            record.val_accuracy,
                            if report.best { " (best so far)" } else { "" }
                        ),
                    );
                    self.epochs.push(record);
                }
                Event::Saved(path) => tracing::debug!("wrote {}", path.display()),
                Event::Paused => self.paused = true,
                Event::Resumed => self.paused = false,
                Event::Finished { reason, best_val_accuracy } => {
                    let why = match reason {
                        Reason::Completed => "all epochs done",
                        Reason::TimeLimit => "time limit reached",
                        Reason::Stopped => "stopped",
                    };
                    let best = best_val_accuracy.map_or("none".into(), |a| format!("{a:.4}"));
                    self.status = format!("finished ({why}); best validation accuracy {best}");
                    finished = true;
                    let best_path = PathBuf::from(self.out.trim()).join("best.safetensors");
                    if best_path.exists()
                        && let Err(e) = session.load_model(&best_path)
                    {
                        session.say(true, format!("{e:#}"));
                    }
                }
                Event::Failed(e) => {
                    self.status = format!("failed: {e}");
                    session.say(true, format!("training failed: {e}"));
                    finished = true;
                }
            }
        }
        if finished {
            self.run = None;
            self.paused = false;
            self.stopping = false;
            self.out = default_run_folder();
        }
    }

    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, session: &mut Session) {
        let idle = self.run.is_none();
        ui.add_enabled_ui(idle, |ui| self.settings(ui, session));
        ui.horizontal(|ui| {
            if idle {
                if ui.button("Train").clicked() {
                    self.start(session);
                }
            } else if let Some(run) = &self.run {
                if self.paused {
                    if ui.button("Resume").clicked() {
                        run.resume();
                    }
                } else if ui.button("Pause").clicked() {
                    run.pause();
                }
                let stop = ui.add_enabled(!self.stopping, egui::Button::new("Stop"));
                if stop.on_hover_text("stop after this step, evaluate and save").clicked() {
                    run.stop();
                    self.stopping = true;
                }
            }
            ui.label(&self.status);
        });
        if let Some(step) = self.steps.last() {
            let eta = eta(step, self.total_steps, self.config.batch);
            ui.label(format!(
                "{:.1} samples/s, step {}/{}, lr {:.2e}{eta}",
                step.samples_per_sec, step.step, self.total_steps, step.lr
            ));
        }
        self.plots(ui);
    }

    fn settings(&mut self, ui: &mut egui::Ui, session: &mut Session) {
        let config = &mut self.config;
        egui::Grid::new("training settings").num_columns(4).spacing([12.0, 4.0]).show(ui, |ui| {
            ui.label("model");
            let before = config.model.architecture;
            egui::ComboBox::from_id_salt("architecture")
                .selected_text(format!("{before:?}").to_lowercase())
                .show_ui(ui, |ui| {
                    for a in [Architecture::Compact, Architecture::Xception] {
                        ui.selectable_value(
                            &mut config.model.architecture,
                            a,
                            format!("{a:?}").to_lowercase(),
                        );
                    }
                });
            if config.model.architecture != before {
                // Each backbone has its own input, batch and learning-rate defaults.
                let keep = (config.epochs, config.device, config.model.alignment);
                *config = TrainConfig::new(config.model.architecture);
                (config.epochs, config.device, config.model.alignment) = keep;
            }
            ui.label("alignment");
            egui::ComboBox::from_id_salt("alignment")
                .selected_text(config.model.alignment.name())
                .show_ui(ui, |ui| {
                    for &a in Alignment::value_variants() {
                        ui.selectable_value(&mut config.model.alignment, a, a.name());
                    }
                });
            ui.end_row();

            ui.label("input");
            egui::ComboBox::from_id_salt("input")
                .selected_text(format!("{:?}", config.model.input).to_lowercase())
                .show_ui(ui, |ui| {
                    for &form in InputForm::value_variants() {
                        ui.selectable_value(
                            &mut config.model.input,
                            form,
                            format!("{form:?}").to_lowercase(),
                        );
                    }
                });
            ui.label("device");
            egui::ComboBox::from_id_salt("device")
                .selected_text(format!("{:?}", config.device).to_lowercase())
                .show_ui(ui, |ui| {
                    for d in [DeviceChoice::Cpu, DeviceChoice::Cuda] {
                        ui.selectable_value(&mut config.device, d, format!("{d:?}").to_lowercase());
                    }
                });
            ui.end_row();

            ui.label("epochs");
            ui.add(egui::DragValue::new(&mut config.epochs).range(1..=1000));
            ui.label("time limit");
            ui.add(
                egui::DragValue::new(&mut self.time_limit)
                    .range(0.0..=10_000.0)
                    .speed(0.5)
                    .custom_formatter(
                        |v, _| if v == 0.0 { "none".into() } else { format!("{v} min") },
                    )
                    .custom_parser(|text| text.trim().trim_end_matches("min").trim().parse().ok()),
            );
            ui.end_row();

            ui.label("batch");
            ui.add(egui::DragValue::new(&mut config.batch).range(1..=1024));
            ui.label("learning rate");
            ui.add(egui::DragValue::new(&mut config.lr).range(1e-6..=1.0).speed(1e-4));
            ui.end_row();

            ui.label("s");
            ui.add(egui::DragValue::new(&mut config.curricular.scale).range(1.0..=100.0));
            ui.label("m");
            ui.add(
                egui::DragValue::new(&mut config.curricular.margin).range(0.0..=1.5).speed(0.01),
            );
            ui.end_row();

            ui.label("α");
            ui.add(
                egui::DragValue::new(&mut config.curricular.momentum).range(0.0..=1.0).speed(0.001),
            );
            ui.label("t rule");
            egui::ComboBox::from_id_salt("t rule")
                .selected_text(format!("{:?}", config.curricular.rule).to_lowercase())
                .show_ui(ui, |ui| {
                    for rule in [TRule::Reference, TRule::Official] {
                        ui.selectable_value(
                            &mut config.curricular.rule,
                            rule,
                            format!("{rule:?}").to_lowercase(),
                        );
                    }
                });
            ui.end_row();

            ui.label("seed");
            ui.add(egui::DragValue::new(&mut config.seed));
            ui.label("validation");
            ui.add(
                egui::DragValue::new(&mut config.val_fraction)
                    .range(0.01..=0.9)
                    .speed(0.01)
                    .custom_formatter(|v, _| format!("{:.0}%", v * 100.0)),
            );
            ui.end_row();
        });
        ui.horizontal(|ui| {
            ui.label("run folder");
            ui.text_edit_singleline(&mut self.out);
            if ui.button("…").clicked() {
                session.jobs.dialog(
                    super::jobs::Dialog::RunFolder,
                    &std::env::current_dir().unwrap_or_default(),
                );
            }
        });
    }

    fn plots(&self, ui: &mut egui::Ui) {
        let per_step = |value: fn(&StepStats) -> f64| -> PlotPoints<'static> {
            self.steps.iter().map(|s| [s.step as f64, value(s)]).collect()
        };
        let height = (ui.available_height() / 3.0 - 8.0).max(80.0);
        Plot::new("loss").height(height).legend(Legend::default()).x_axis_label("step").show(
            ui,
            |plot| {
                plot.line(Line::new("loss", per_step(|s| s.loss)).width(1.0));
                let smoothed: PlotPoints = self
                    .steps
                    .iter()
                    .zip(&self.smoothed)
                    .map(|(s, &v)| [s.step as f64, v])
                    .collect();
                plot.line(Line::new("loss, smoothed", smoothed).width(2.0));
            },
        );
        Plot::new("accuracy")
            .height(height)
            .legend(Legend::default())
            .include_y(0.0)
            .include_y(1.0)
            .x_axis_label("epoch")
            .show(ui, |plot| {
                let per_epoch = |value: fn(&EpochRecord) -> f64| -> PlotPoints<'static> {
                    self.epochs.iter().map(|e| [e.epoch as f64, value(e)]).collect()
                };
                plot.line(Line::new("train", per_epoch(|e| e.train_accuracy)));
                plot.line(Line::new("validation", per_epoch(|e| e.val_accuracy)));
                let batches = self.batches.max(1) as f64;
                let batch_accuracy: PlotPoints = self
                    .steps
                    .iter()
                    .map(|s| [(s.epoch - 1) as f64 + s.batch as f64 / batches, s.accuracy])
                    .collect();
                plot.line(Line::new("batch", batch_accuracy).width(0.5));
            });
        Plot::new("t").height(height).legend(Legend::default()).x_axis_label("step").show(
            ui,
            |plot| {
                plot.line(Line::new("t", per_step(|s| s.t)));
            },
        );
    }
}

/// The time left at the current pace, as ", ETA 3m 20s".
fn eta(step: &StepStats, total_steps: u64, batch: usize) -> String {
    if step.samples_per_sec <= 0.0 || total_steps <= step.step {
        return String::new();
    }
    let seconds = ((total_steps - step.step) * batch as u64) as f64 / step.samples_per_sec;
    let seconds = seconds.round() as u64;
    format!(", ETA {}m {:02}s", seconds / 60, seconds % 60)
}

/// A fresh folder name for a run started from the window: `runs/run-UNIXSECONDS`.
fn default_run_folder() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("runs/run-{now}")
}
