//! The `victron-poller` binary: parse the command line, run it, map the
//! outcome to an exit code. Everything else lives in the library.

use std::process::ExitCode;

use victron_poller::cli::{self, Cli, Exit};

fn main() -> ExitCode {
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(error) => {
            // `--help` and `--version` print to stdout and succeed.
            let _ = error.print();
            return if error.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    // A panic anywhere is an error in the daemon's log, with its place.
    victron_poller::daemon::supervise::log_panics();
    // One thread runs every task: a poller's work is a few small steps a
    // second, and hand-offs between worker threads (wake-ups, futexes) cost
    // more CPU than the work itself. SQLite and blocking calls keep their
    // own threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("victron-poller: error: cannot start the async runtime: {e}");
            return Exit::Internal.into();
        }
    };
    let outcome = runtime.block_on(cli::run(cli));
    // A stop that was forced leaves tasks behind: give them no more time.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    // The last log lines are written before the error line and the exit.
    victron_poller::logging::flush();
    match outcome {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("victron-poller: error: {error:#}");
            cli::exit_for(&error).into()
        }
    }
}
