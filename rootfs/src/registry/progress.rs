//! Progress bars for long transfers (indicatif), drawn on stderr only when
//! it is a terminal, so logs and tests stay clean.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Blobs smaller than this get no bar of their own.
const MIN_BAR_SIZE: u64 = 4 << 20;

/// A set of progress bars shared by the transfers of one command.
#[derive(Clone, Debug)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars on stderr when `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Self {
        let multi = enabled.then(|| {
            // `stderr()` hides itself when stderr is not a terminal.
            MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
        });
        Self { multi }
    }

    /// A bar for one transfer of `size` bytes (hidden for small or unknown sizes).
    pub fn bar(&self, label: &str, size: Option<u64>) -> ProgressBar {
        match (&self.multi, size) {
            (Some(multi), Some(size)) if size >= MIN_BAR_SIZE => {
                let bar = multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(label.to_string());
                bar
            }
            _ => ProgressBar::hidden(),
        }
    }

    /// Prints a line above the bars (or to stderr when there are none).
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(multi) if !multi.is_hidden() => {
                let _ = multi.println(line);
            }
            _ => eprintln!("{line}"),
        }
    }
}
