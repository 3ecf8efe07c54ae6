//! Progress bars for registry transfers, drawn on stderr only when it is a terminal.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tollgate_oci::{TransferMeter, TransferProgress};

/// Draws a byte progress bar on stderr for each transfer (hidden when stderr is not a
/// terminal), cleared when the transfer completes.
pub struct TerminalProgress;

impl TransferProgress for TerminalProgress {
    fn start(&self, label: &str, total: u64) -> Box<dyn TransferMeter> {
        Box::new(Bar(transfer_bar(total, label.to_string())))
    }
}

struct Bar(ProgressBar);

impl TransferMeter for Bar {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A byte progress bar for a transfer of `total` bytes, labelled `message`. Hidden when stderr
/// is not a terminal.
fn transfer_bar(total: u64, message: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message);
    bar
}
