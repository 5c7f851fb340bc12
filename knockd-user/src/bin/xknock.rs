//! xknock: knock's client. Exits non-zero, with a reason, when it cannot knock.

use std::process::ExitCode;

use clap::Parser;
use xknock::client::{run, KnockArgs};

fn main() -> ExitCode {
    let args = KnockArgs::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xknock: {e}");
            ExitCode::FAILURE
        }
    }
}
