//! A progress bar, shown only when stdout is a terminal: logs, pipes and CI
//! get the plain report and nothing else.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Bar over `total` units; `None` when stdout is not a terminal.
pub fn bar(total: u64, what: &str) -> Option<ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:40}}] {{percent:>3}}% {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let pb = ProgressBar::new(total).with_style(style);
    Some(pb)
}
