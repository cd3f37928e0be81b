//! Progress on long replays and exports: a bar on stderr, and only on a terminal (never in a
//! pipe, a file or CI, where stderr is for messages).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Below this many events a replay or export is quick: no bar.
const LONG: u64 = 20_000;

/// A bar for `total` steps of `what`, or a hidden one when the work is short or stderr is not
/// a terminal.
pub fn bar(total: u64, what: &'static str) -> ProgressBar {
    if total < LONG || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style =
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} events ({percent}%, {eta} left)").unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what);
    bar
}
