//! Progress display: an indicatif bar on a terminal, nothing otherwise.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `seconds` seconds when `interactive`, else a hidden one.
pub fn bar(interactive: bool, seconds: f64) -> ProgressBar {
    if !interactive {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(seconds.ceil() as u64);
    // The template is a constant known to parse; fall back to the default style if not.
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
