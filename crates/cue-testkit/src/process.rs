//! Signals to the processes a harness started, by their pid.

use rustix::process::{Pid, Signal, kill_process};

pub(crate) fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, sig);
    }
}

/// kill -9 `pid` (a process the caller started, directly or through a child).
pub fn kill(pid: u32) {
    signal(pid, Signal::KILL);
}

/// Whether process `pid` has finished exiting. A killed process lingers as a zombie
/// leader while its other threads exit, and those still hold its files (a daemon's lock
/// among them): it is gone once no thread is left that is not a zombie.
pub fn gone(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    !tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        })
    })
}
