//! Progress of long work: a bar with rate and ETA on a terminal, silent elsewhere.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether long-running work shows a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar on stderr when it is a terminal (indicatif hides it otherwise).
    #[default]
    Bar,
    /// Nothing.
    Hidden,
}

/// A progress bar over a known number of steps.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar titled `label` over `total` steps.
    pub fn new(label: &str, total: u64, mode: ProgressMode) -> Self {
        let bar = match mode {
            ProgressMode::Bar => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
            ProgressMode::Hidden => ProgressBar::hidden(),
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
                .expect("template is valid")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Self { bar }
    }

    /// Advance by `n` steps.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Set the trailing message (loss, accuracy...).
    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Jump to `pos` (resumed work).
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Finish and leave the bar on screen.
    pub fn finish(&self) {
        self.bar.finish();
    }
}
