//! The `digit3d` program: the desktop tool when run without arguments, a headless command line
//! for the same work otherwise.

mod cli;
#[cfg(feature = "gui")]
mod gui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    restore_default_sigpipe();
    let args = cli::Cli::parse();
    cli::init_logging();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Lets `digit3d info data | head` end quietly when `head` closes the pipe, as command-line
/// tools do, instead of failing on the next write.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
