//! xknock: knock's client, and fwknop's with --spa. Exits non-zero, with a reason,
//! when it cannot send.

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
