//! Progress of long work: a bar with rate and ETA when stderr is a terminal,
//! otherwise a plain line at most once a second (and at the end), so logs of
//! CI runs and pipes stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Reports `done` out of `total` units of work.
pub struct Progress {
    label: &'static str,
    unit: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    done: u64,
    total: u64,
}

impl Progress {
    /// Starts reporting; picks the bar on a terminal.
    pub fn new(label: &'static str, unit: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(label);
            bar
        });
        let now = Instant::now();
        Self { label, unit, bar, started: now, last_line: now, done: 0, total }
    }

    /// Sets the amount done (and the total, which may grow while working).
    pub fn set(&mut self, done: u64, total: u64) {
        self.done = done;
        self.total = total.max(done);
        match &self.bar {
            Some(bar) => {
                bar.set_length(self.total);
                bar.set_position(done);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(1) => {
                self.last_line = Instant::now();
                self.line();
            }
            None => {}
        }
    }

    fn line(&self) {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / seconds;
        let left = self.total.saturating_sub(self.done) as f64;
        let eta = if rate > 0.0 { left / rate } else { 0.0 };
        eprintln!("{}: {}/{} {} ({:.0} {}/s, eta {:.0}s)", self.label, self.done, self.total, self.unit, rate, self.unit, eta);
    }

    /// Ends the report with a last line.
    pub fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => self.line(),
        }
    }
}
