//! The progress bar on stderr (indicatif): bytes done, rate, time left.
//! Drawn only when asked and stderr is a terminal (indicatif hides itself
//! otherwise), so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar, or nothing.
#[derive(Clone, Debug)]
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar of `total` bytes labelled `what`, when `enabled`.
    pub(crate) fn new(enabled: bool, what: &str, total: u64) -> Progress {
        if !enabled {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(5));
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress(Some(bar))
    }

    /// `n` more bytes done.
    pub(crate) fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Done (the bar stays on screen with its final numbers).
    pub(crate) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish();
        }
    }
}
