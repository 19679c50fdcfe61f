//! The `seaport` binary: parse flags, set up logging, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = seaport::cli::Cli::parse();
    seaport_shared::logging::init("warn", cli.verbose);
    match seaport::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(seaport::cli::exit_code(&err))
        }
    }
}
