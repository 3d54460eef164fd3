//! Running helper programs (git, kustomize) with a time limit: a hung remote or a stuck
//! render is a process to kill, not a hub to lose.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why a helper program did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// It could not be started.
    #[error("{program}: could not start: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It wrote more to standard output than the caller allows, and was killed.
    #[error("{program}: wrote more than {limit} bytes of output; killed")]
    OutputTooLarge {
        /// The program.
        program: String,
        /// The cap on standard output.
        limit: u64,
    },
    /// It ran longer than allowed and was killed.
    #[error("{program}: killed after {timeout:?} without finishing")]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        timeout: Duration,
    },
}

/// Most of a helper's standard error kept (the rest is read and dropped): a remote's
/// `remote:` lines are a stranger's bytes.
pub const MAX_STDERR: u64 = 64 << 10;

/// Reads `from` to its end, keeping at most `limit` bytes; the rest is drained (so the
/// child never blocks on a full pipe) and dropped.
fn read_capped(mut from: impl Read, limit: u64) -> Vec<u8> {
    let mut kept = Vec::new();
    let _ = (&mut from).take(limit).read_to_end(&mut kept);
    let _ = std::io::copy(&mut from, &mut std::io::sink());
    kept
}

/// Runs `cmd` to completion or until `timeout`, collecting at most `max_stdout` bytes of
/// stdout (more is an error: the child is killed) and [`MAX_STDERR`] of stderr.
pub fn run(mut cmd: Command, timeout: Duration, max_stdout: u64) -> Result<Output, ProcessError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let too_much = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = too_much.clone();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout)
            .take(max_stdout.saturating_add(1))
            .read_to_end(&mut buf);
        if buf.len() as u64 > max_stdout {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            buf.truncate(max_stdout as usize);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || read_capped(&mut stderr, MAX_STDERR));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if too_much.load(std::sync::atomic::Ordering::SeqCst) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::OutputTooLarge {
                    program,
                    limit: max_stdout,
                });
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::Timeout { program, timeout });
            }
        }
    };
    if too_much.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = out_reader.join();
        return Err(ProcessError::OutputTooLarge {
            program,
            limit: max_stdout,
        });
    }
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.is_file()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_is_read_within_its_budget() {
        let out = run(sh("printf hello"), Duration::from_secs(10), 100).unwrap();
        assert_eq!(out.stdout, b"hello");
        let err = run(sh("yes | head -c 5000000"), Duration::from_secs(10), 1000).unwrap_err();
        assert!(
            matches!(err, ProcessError::OutputTooLarge { limit: 1000, .. }),
            "{err}"
        );
        // Standard error beyond its cap is dropped, not held, and the child still finishes.
        let out = run(
            sh("head -c 3000000 /dev/zero 1>&2; echo done"),
            Duration::from_secs(10),
            100,
        )
        .unwrap();
        assert_eq!(out.stderr.len() as u64, MAX_STDERR);
        assert_eq!(out.stdout, b"done\n");
    }
}
