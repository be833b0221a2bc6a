//! Crash-safe publication of a snapshot directory.
//!
//! A snapshot is written into a temporary sibling of its target, `.<name>.tmp-<pid>-<random>`,
//! whose files and directory are fsynced before it is published:
//!
//! - no target yet: `renameat2(RENAME_NOREPLACE)` of the temporary directory to the target;
//! - a target exists: `renameat2(RENAME_EXCHANGE)` swaps the two atomically, then the old one
//!   (now under the temporary name) is removed. Where the file system cannot exchange, the old
//!   target is first renamed to `.<name>.old-<pid>-<random>` (the recoverable marker), then the
//!   new one is renamed into place, then the old one is removed.
//!
//! The parent directory is fsynced after each rename. Killing the process at any instant
//! therefore leaves the target as the complete old snapshot or the complete new one — or, only
//! between the two renames of the fallback, no target and a complete `.old-` sibling, which
//! [`recover`] (run by every snapshot and restore of that target) renames back. Temporary
//! directories of processes that no longer run are removed by the next snapshot of the target.
//!
//! `renameat2` and the liveness check of another process (`kill` with signal 0), which the
//! standard library does not offer, come from `rustix`'s safe wrappers.

use super::SnapshotError;
use rustix::fs::RenameFlags;
use rustix::fs::CWD;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

/// The parts of a target path.
pub(crate) struct Target {
    pub path: PathBuf,
    pub parent: PathBuf,
    pub name: String,
}

impl Target {
    /// Splits `path` (which must name a directory entry: no trailing `..`, not `/`).
    pub fn new(path: &Path) -> Result<Self, SnapshotError> {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .filter(|name| !name.starts_with('.') || name.len() > 1)
            .ok_or_else(|| SnapshotError::InvalidArgument {
                what: format!(
                    "snapshot directory {} must end in a file name (UTF-8)",
                    path.display()
                ),
            })?
            .to_owned();
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        Ok(Self {
            path: path.to_owned(),
            parent,
            name,
        })
    }

    fn sibling(&self, kind: &str) -> PathBuf {
        let random = &super::new_id()[..8];
        self.parent.join(format!(
            ".{}.{kind}-{}-{random}",
            self.name,
            std::process::id()
        ))
    }

    /// The siblings `.<name>.<kind>-<pid>-<random>` with their pids.
    fn siblings(&self, kind: &str) -> Vec<(PathBuf, Option<u32>)> {
        let prefix = format!(".{}.{kind}-", self.name);
        let Ok(entries) = fs::read_dir(&self.parent) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let rest = name.to_str()?.strip_prefix(&prefix)?.to_owned();
                let pid = rest.split('-').next().and_then(|pid| pid.parse().ok());
                Some((entry.path(), pid))
            })
            .collect()
    }
}

fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // Signal 0 only checks that the process exists; nothing is delivered. EPERM: it exists but
    // belongs to someone else.
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(error) => error == rustix::io::Errno::PERM,
    }
}

/// Puts back a target that a crash between the two renames of the fallback left missing.
pub(crate) fn recover(target: &Target) -> Result<(), SnapshotError> {
    if target.path.exists() {
        return Ok(());
    }
    let mut old = target.siblings("old");
    old.sort();
    if let Some((path, _)) = old.pop() {
        rename(&path, &target.path, RenameMode::NoReplace)?;
        sync_dir(&target.parent)?;
    }
    Ok(())
}

/// Creates the temporary directory for a new snapshot of `target` (after recovering the target
/// and removing what dead writers left).
pub(crate) fn create_temp(target: &Target) -> Result<PathBuf, SnapshotError> {
    fs::create_dir_all(&target.parent)
        .map_err(|error| SnapshotError::io("create directory", &target.parent, error))?;
    recover(target)?;
    let me = std::process::id();
    for kind in ["tmp", "old"] {
        for (path, pid) in target.siblings(kind) {
            let stale = match pid {
                Some(pid) => pid != me && !process_alive(pid),
                None => false,
            };
            // An `.old-` sibling with the target present is garbage too; without the target
            // it was just recovered.
            if stale || (kind == "old" && pid != Some(me) && target.path.exists()) {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
    let temp = target.sibling("tmp");
    fs::create_dir(&temp).map_err(|error| SnapshotError::io("create directory", &temp, error))?;
    Ok(temp)
}

/// fsyncs a directory (its entries become durable).
pub(crate) fn sync_dir(path: &Path) -> Result<(), SnapshotError> {
    fs::File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| SnapshotError::io("fsync directory", path, error))
}

#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub(crate) enum RenameMode {
    NoReplace,
    Exchange,
}

fn rename(from: &Path, to: &Path, mode: RenameMode) -> Result<(), SnapshotError> {
    let flags = match mode {
        RenameMode::NoReplace => RenameFlags::NOREPLACE,
        RenameMode::Exchange => RenameFlags::EXCHANGE,
    };
    rustix::fs::renameat_with(CWD, from, CWD, to, flags)
        .map_err(|error| SnapshotError::io("rename", from, io::Error::from(error)))
}

/// Whether a rename failed because the file system cannot do that kind of rename.
fn unsupported(error: &SnapshotError) -> bool {
    matches!(error, SnapshotError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)))
}

/// Publishes the complete, synced directory `temp` as `target` (see the module docs).
/// `exchange` false forces the fallback (for tests).
pub(crate) fn publish(temp: &Path, target: &Target, exchange: bool) -> Result<(), SnapshotError> {
    sync_dir(temp)?;
    if !target.path.exists() {
        rename(temp, &target.path, RenameMode::NoReplace)?;
        return sync_dir(&target.parent);
    }
    if exchange {
        match rename(temp, &target.path, RenameMode::Exchange) {
            Ok(()) => {
                sync_dir(&target.parent)?;
                // `temp` now holds the old snapshot.
                let _ = fs::remove_dir_all(temp);
                return Ok(());
            }
            Err(error) if unsupported(&error) => {}
            Err(error) => return Err(error),
        }
    }
    let old = target.sibling("old");
    rename(&target.path, &old, RenameMode::NoReplace)?;
    sync_dir(&target.parent)?;
    rename(temp, &target.path, RenameMode::NoReplace)?;
    sync_dir(&target.parent)?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}
