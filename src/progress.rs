//! Progress of long work: a bar with rate and ETA on a terminal; elsewhere (notebooks, logs)
//! a line with the same information every tenth of the way, on stdout: in a notebook, stderr
//! is reserved for errors (a headless run fails on any stderr output).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

/// Whether long-running work reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar on a terminal, progress lines on stdout otherwise (notebooks show those live).
    #[default]
    Bar,
    /// Nothing.
    Hidden,
}

#[derive(Debug)]
enum Sink {
    Bar(ProgressBar),
    Lines(Mutex<LineState>),
    Hidden,
}

#[derive(Debug)]
struct LineState {
    label: String,
    total: u64,
    pos: u64,
    start_pos: u64,
    started: Instant,
    next_report: u64,
    /// Steps between line reports.
    interval: u64,
    message: String,
}

/// A progress report over a known number of steps.
#[derive(Debug)]
pub struct Progress {
    sink: Sink,
}

impl Progress {
    /// Progress titled `label` over `total` steps.
    pub fn new(label: &str, total: u64, mode: ProgressMode) -> Self {
        let sink = match mode {
            ProgressMode::Hidden => Sink::Hidden,
            ProgressMode::Bar if std::io::stderr().is_terminal() => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
                        .expect("template is valid")
                        .progress_chars("=> "),
                );
                bar.set_prefix(label.to_string());
                Sink::Bar(bar)
            }
            ProgressMode::Bar => Sink::Lines(Mutex::new(LineState {
                label: label.to_string(),
                total,
                pos: 0,
                start_pos: 0,
                started: Instant::now(),
                next_report: total.div_ceil(10).max(1),
                interval: total.div_ceil(10).max(1),
                message: String::new(),
            })),
        };
        Self { sink }
    }

    /// In line mode (notebooks, logs), report at least every `steps` steps as well as every
    /// tenth of the way: a long training run then reports once per epoch.
    pub fn report_every(self, steps: u64) -> Self {
        if let Sink::Lines(m) = &self.sink {
            let mut s = m.lock().expect("progress lock");
            s.interval = s.interval.min(steps.max(1));
            s.next_report = s.pos + s.interval;
        }
        self
    }

    /// Advance by `n` steps.
    pub fn inc(&self, n: u64) {
        match &self.sink {
            Sink::Bar(b) => b.inc(n),
            Sink::Lines(m) => {
                let mut s = m.lock().expect("progress lock");
                s.pos += n;
                if s.pos >= s.next_report || s.pos == s.total {
                    s.report();
                    let step = s.interval;
                    while s.next_report <= s.pos {
                        s.next_report += step;
                    }
                }
            }
            Sink::Hidden => {}
        }
    }

    /// Set the trailing message (loss, accuracy...).
    pub fn message(&self, msg: String) {
        match &self.sink {
            Sink::Bar(b) => b.set_message(msg),
            Sink::Lines(m) => m.lock().expect("progress lock").message = msg,
            Sink::Hidden => {}
        }
    }

    /// Report an event once, now, above the bar or as a line of its own (such as a run
    /// resumed from a checkpoint).
    pub fn note(&self, msg: &str) {
        match &self.sink {
            Sink::Bar(b) => b.println(msg),
            Sink::Lines(m) => println!("{} {msg}", m.lock().expect("progress lock").label),
            Sink::Hidden => {}
        }
    }

    /// Jump to `pos` (resumed work); the rate counts only steps done from here.
    pub fn set_position(&self, pos: u64) {
        match &self.sink {
            Sink::Bar(b) => b.set_position(pos),
            Sink::Lines(m) => {
                let mut s = m.lock().expect("progress lock");
                s.pos = pos;
                s.start_pos = pos;
                s.started = Instant::now();
                s.next_report = pos + s.interval;
            }
            Sink::Hidden => {}
        }
    }

    /// Finish and leave the bar on screen.
    pub fn finish(&self) {
        if let Sink::Bar(b) = &self.sink {
            b.finish();
        }
    }
}

impl LineState {
    fn report(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        let done = (self.pos - self.start_pos) as f64;
        let rate = if secs > 0.0 { done / secs } else { 0.0 };
        let eta = if rate > 0.0 { (self.total - self.pos) as f64 / rate } else { 0.0 };
        let pct = 100.0 * self.pos as f64 / self.total.max(1) as f64;
        println!(
            "{} {:>3.0}% {}/{} [{:.1}s, {:.1} steps/s, ETA {:.0}s] {}",
            self.label, pct, self.pos, self.total, secs, rate, eta, self.message
        );
    }
}
