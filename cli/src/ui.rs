//! How the CLI talks to people and to scripts: the global flags (`-o`, `--json`, `-q`,
//! `--color`), documents on stdout, notes and progress on stderr, colours.
//!
//! Results go to stdout (text, or one JSON/YAML document with `-o json|yaml`); everything
//! else — progress, notes, warnings, errors — goes to stderr, so `kars … -o json | jq` always
//! reads one document. Colour is used on a terminal unless `NO_COLOR` is set or `--color never`.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kars_gitops_agent::progress::{Event, Progress};

use crate::failure::Failure;

/// Output formats of `-o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
    /// Text with more columns (tables).
    Wide,
}

/// When to use colour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The flags every command takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GlobalArgs {
    /// Output format: text, json, yaml, or wide (tables with more columns). JSON and YAML are
    /// one document on stdout, also when the command fails.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t = Format::Text,
        hide_possible_values = true,
        help_heading = "Global options"
    )]
    pub output: Format,
    /// The same as -o json.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Print results and errors only: no progress, no notes.
    #[arg(short = 'q', long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = ColorChoice::Auto,
        hide_possible_values = true,
        help_heading = "Global options"
    )]
    pub color: ColorChoice,
}

/// The settings in force for this process.
#[derive(Debug, Default)]
pub struct Ui {
    /// `-o` (with `--json` folded in).
    pub format: Format,
    /// `-q`.
    pub quiet: bool,
    color_out: bool,
    color_err: bool,
    progress_tty: bool,
}

static UI: OnceLock<Ui> = OnceLock::new();

/// Records the global flags (once, before the command runs).
pub fn init(g: &GlobalArgs) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let wants = |tty: bool| match g.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => tty && !no_color,
    };
    let err_tty = std::io::stderr().is_terminal();
    let _ = UI.set(Ui {
        format: if g.json { Format::Json } else { g.output },
        quiet: g.quiet,
        color_out: wants(std::io::stdout().is_terminal()),
        color_err: wants(err_tty),
        progress_tty: err_tty && !g.quiet,
    });
}

/// The settings in force.
pub fn get() -> &'static Ui {
    UI.get_or_init(Ui::default)
}

impl Ui {
    /// True for `-o json` and `-o yaml`: stdout carries one document.
    pub fn machine(&self) -> bool {
        matches!(self.format, Format::Json | Format::Yaml)
    }

    /// `text` in the ANSI colour `code` when stdout gets colour.
    pub fn paint_out(&self, code: &str, text: &str) -> String {
        paint(self.color_out, code, text)
    }

    /// `text` in the ANSI colour `code` when stderr gets colour.
    pub fn paint_err(&self, code: &str, text: &str) -> String {
        paint(self.color_err, code, text)
    }
}

fn paint(on: bool, code: &str, text: &str) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// A note for people on stderr (left out with `-q`).
pub fn note(message: impl std::fmt::Display) {
    if !get().quiet {
        eprintln!("{message}");
    }
}

/// A warning on stderr (printed even with `-q`).
pub fn warn(message: impl std::fmt::Display) {
    eprintln!("{} {message}", get().paint_err("33", "warning:"));
}

/// Prints `value` as the command's document: JSON (`-o json`, pretty) or YAML (`-o yaml`).
pub fn emit<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let v = serde_json::to_value(value).map_err(Failure::check)?;
    let text = match get().format {
        Format::Yaml => kars_renderer::output::object_yaml(&v).map_err(|e| Failure::msg(1, e))?,
        _ => format!(
            "{}\n",
            serde_json::to_string_pretty(&v).map_err(Failure::check)?
        ),
    };
    crate::out(&text);
    Ok(())
}

/// Shows a sync's progress on stderr: a spinner and bar on a terminal, a line per step (and
/// per 10% of the objects) otherwise, nothing with `-q` or `-o json|yaml`.
pub struct ProgressView {
    state: std::sync::Arc<Mutex<ViewState>>,
}

struct ViewState {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    last_tenth: usize,
    last_wait: Option<Instant>,
    started: Instant,
}

impl ProgressView {
    /// A view for this process's settings.
    pub fn new() -> ProgressView {
        let ui = get();
        let shown = !ui.quiet && !ui.machine();
        let bar = (shown && ui.progress_tty).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        ProgressView {
            state: std::sync::Arc::new(Mutex::new(ViewState {
                plain: shown && bar.is_none(),
                bar,
                last_tenth: 0,
                last_wait: None,
                started: Instant::now(),
            })),
        }
    }

    /// The sink to hand to the sync.
    pub fn sink(&self) -> Progress {
        let state = self.state.clone();
        Progress::to(move |event| {
            if let Ok(mut s) = state.lock() {
                s.show(event);
            }
        })
    }

    /// Clears the spinner.
    pub fn finish(&self) {
        if let Ok(s) = self.state.lock()
            && let Some(b) = &s.bar
        {
            b.finish_and_clear();
        }
    }
}

impl Default for ProgressView {
    fn default() -> Self {
        ProgressView::new()
    }
}

impl ViewState {
    fn line(&self, text: String) {
        if self.plain {
            eprintln!("[{:>5.1}s] {text}", self.started.elapsed().as_secs_f64());
        }
    }

    fn show(&mut self, event: Event) {
        match event {
            Event::Step(step) => {
                let text = match step {
                    "fetch" => "fetching and verifying",
                    "render" => "verifying signed bundles and rendering",
                    "apply" => "applying",
                    "prune" => "pruning what left Git",
                    "health" => "checking health",
                    "enforce" => "asking the routers what they enforce",
                    other => other,
                };
                if let Some(b) = &self.bar {
                    b.set_style(spinner_style());
                    b.set_message(format!("{text} …"));
                }
                self.line(format!("{text} …"));
            }
            Event::Applied { done, total } | Event::Pruned { done, total } => {
                let verb = if matches!(event, Event::Applied { .. }) {
                    "applied"
                } else {
                    "pruned"
                };
                if let Some(b) = &self.bar {
                    b.set_style(bar_style());
                    b.set_length(total as u64);
                    b.set_position(done as u64);
                    b.set_message(verb);
                }
                let tenth = (done * 10).checked_div(total).unwrap_or(10);
                if total > 0 && (done == total || tenth > self.last_tenth) {
                    self.last_tenth = if done == total { 0 } else { tenth };
                    self.line(format!("{verb} {done}/{total}"));
                }
            }
            Event::Waiting { pending, left } => {
                let text = format!(
                    "waiting for {pending} object(s) to become healthy ({}s left)",
                    left.as_secs()
                );
                if let Some(b) = &self.bar {
                    b.set_style(spinner_style());
                    b.set_message(text.clone());
                }
                if self
                    .last_wait
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                {
                    self.last_wait = Some(Instant::now());
                    self.line(text);
                }
            }
        }
    }
}

fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} [{elapsed}]")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}
