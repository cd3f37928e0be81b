//! Measuring a child process: wall time from spawn to reaping, and its peak resident set from
//! the kernel (`wait4`'s `ru_maxrss`), which is exact and needs no polling.
//!
//! The bench itself stays small (every heavy step runs in a child of its own), so a child's
//! `ru_maxrss` is its own peak and not the parent's pages it started from.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub wall: Duration,
    /// Peak resident set size, bytes.
    pub peak_rss: u64,
    pub user: Duration,
    pub system: Duration,
    /// The exit code, or None when a signal ended it.
    pub code: Option<i32>,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Where a child's standard output goes.
pub enum Output<'a> {
    Null,
    File(&'a Path),
}

/// Run `command` to its end with `stdin` as its standard input (then closed), its standard
/// output to `out`, its standard error to `err_file`.
#[allow(unsafe_code)] // wait4: the child's own peak memory; std has no wrapper.
pub fn run(command: &mut Command, stdin: &[u8], out: Output<'_>, err_file: &Path) -> std::io::Result<Run> {
    let stdout = match out {
        Output::Null => Stdio::null(),
        Output::File(p) => Stdio::from(File::create(p)?),
    };
    command.stdin(Stdio::piped()).stdout(stdout).stderr(Stdio::from(File::create(err_file)?));
    let started = Instant::now();
    let mut child = command.spawn()?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // The child may exit without reading: a broken pipe here is its business, not ours.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let wall = started.elapsed();
    // `child` is reaped already: dropping it neither waits nor kills.
    drop(child);
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let code = if libc::WIFEXITED(status) { Some(libc::WEXITSTATUS(status)) } else { None };
    Ok(Run {
        wall,
        // Linux reports kilobytes.
        peak_rss: usage.ru_maxrss as u64 * 1024,
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
        code,
    })
}

/// This process's own peak resident set size, bytes.
#[allow(unsafe_code)] // getrusage: std has no wrapper.
pub fn own_peak_rss() -> u64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is valid for writes.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_maxrss as u64 * 1024
}

/// Bytes under `path` (files' lengths; a directory recursively).
pub fn disk_usage(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += disk_usage(&entry?.path())?;
    }
    Ok(total)
}

/// The disk's durable-write ceiling where `dir` lives: small writes each followed by
/// `fdatasync`, for about `budget`. Returns syncs per second.
pub fn fsync_ceiling(dir: &Path, budget: Duration) -> std::io::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file = File::create(&path)?;
    let record = [b'x'; 128];
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < budget || syncs < 10 {
        file.write_all(&record)?;
        file.sync_data()?;
        syncs += 1;
    }
    let rate = syncs as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_timed_and_its_peak_memory_and_exit_code_read() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let err = dir.path().join("err");
        // `cat` copies its input: the pipe is written and closed, the output lands in the file.
        let run = super::run(&mut Command::new("cat"), b"hello\n", Output::File(&out), &err).unwrap();
        assert!(run.ok());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
        assert!(run.peak_rss > 0);
        let failed = super::run(Command::new("sh").args(["-c", "exit 3"]), b"", Output::Null, &err).unwrap();
        assert_eq!(failed.code, Some(3));
    }

    #[test]
    fn disk_usage_adds_up_a_tree_and_the_fsync_probe_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(disk_usage(dir.path()).unwrap(), 123);
        let rate = fsync_ceiling(dir.path(), Duration::from_millis(20)).unwrap();
        assert!(rate > 0.0);
        assert_eq!(disk_usage(dir.path()).unwrap(), 123);
    }
}
