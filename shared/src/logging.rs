//! Log output of the binaries: to stderr, filtered by `RUST_LOG`, else by
//! a default level raised with `-v`.

/// Sets up logging to stderr: `quiet` by default (`warn`, `info`), debug
/// with `-v`, trace with `-vv`; `RUST_LOG` overrides both. Colors only on
/// a terminal.
pub fn init(quiet: &str, verbose: u8) {
    let default = match verbose {
        0 => quiet,
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
