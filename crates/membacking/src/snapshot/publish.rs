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
//! Only a snapshot or an empty directory is ever replaced ([`check_replaceable`]): any other
//! existing target is refused before anything is written, and checked again just before the
//! rename, so nothing of the caller's is removed.
//!
//! The parent directory is fsynced after each rename; a failure of that fsync does not undo
//! the rename, so the snapshot counts as published and the failure is reported as a warning
//! ([`SnapshotInfo::warning`](super::SnapshotInfo::warning)). Killing the process at any instant
//! therefore leaves the target as the complete old snapshot or the complete new one — or, only
//! between the two renames of the fallback, no target and a complete `.old-` sibling, which
//! [`recover`] (run by every snapshot and restore of that target) renames back. Temporary
//! directories of processes that no longer run are removed by the next snapshot of the target.
//!
//! `renameat2` and the liveness check of another process (`kill` with signal 0), which the
//! standard library does not offer, come from `rustix`'s safe wrappers.

use super::format;
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

/// The files a snapshot directory holds.
const SNAPSHOT_FILES: [&str; 3] = [
    format::MANIFEST_FILE,
    format::INDEX_FILE,
    format::MEMORY_FILE,
];

/// The largest `manifest.json` read to recognise a snapshot (a real one is a few KiB).
const MANIFEST_READ_LIMIT: u64 = 16 << 20;

/// Refuses a `target` that exists and is neither a snapshot nor an empty directory
/// ([`SnapshotError::TargetNotSnapshot`]). A snapshot is a directory holding nothing but
/// regular files named like the snapshot files, one of them a `manifest.json` of this project
/// (any version, even damaged: it is ours to replace). A missing target is fine.
pub(crate) fn check_replaceable(target: &Target) -> Result<(), SnapshotError> {
    let path = &target.path;
    let refuse = |errno: i32, what: String| SnapshotError::TargetNotSnapshot {
        dir: path.clone(),
        what,
        source: io::Error::from_raw_os_error(errno),
    };
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(SnapshotError::io("inspect", path, error)),
    };
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        return Err(refuse(libc::EEXIST, "it is a symbolic link".into()));
    }
    if !file_type.is_dir() {
        let what = if file_type.is_file() {
            "it is a file, not a directory"
        } else {
            "it is not a directory"
        };
        return Err(refuse(libc::EEXIST, what.into()));
    }
    let entries =
        fs::read_dir(path).map_err(|error| SnapshotError::io("read directory", path, error))?;
    let mut foreign = Vec::new();
    let mut has_manifest = false;
    let mut any = false;
    for entry in entries {
        let entry = entry.map_err(|error| SnapshotError::io("read directory", path, error))?;
        any = true;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        if is_file && SNAPSHOT_FILES.contains(&name.as_str()) {
            has_manifest |= name == format::MANIFEST_FILE;
        } else {
            foreign.push(name);
        }
    }
    if !any {
        return Ok(());
    }
    if !foreign.is_empty() {
        return Err(refuse(libc::ENOTEMPTY, foreign_entries(foreign)));
    }
    if !has_manifest {
        return Err(refuse(
            libc::ENOTEMPTY,
            format!(
                "it holds files named like snapshot files but no {}",
                format::MANIFEST_FILE
            ),
        ));
    }
    let manifest_path = path.join(format::MANIFEST_FILE);
    let mut bytes = Vec::new();
    fs::File::open(&manifest_path)
        .and_then(|file| {
            io::Read::read_to_end(
                &mut io::Read::take(file, MANIFEST_READ_LIMIT + 1),
                &mut bytes,
            )
        })
        .map_err(|error| SnapshotError::io("read", &manifest_path, error))?;
    if bytes.len() as u64 > MANIFEST_READ_LIMIT || !format::is_snapshot_manifest(&bytes) {
        return Err(refuse(
            libc::ENOTEMPTY,
            format!(
                "its {} is not a membacking snapshot manifest",
                format::MANIFEST_FILE
            ),
        ));
    }
    Ok(())
}

/// "it holds "a", "b" and 3 more entries, which are not snapshot files".
fn foreign_entries(mut names: Vec<String>) -> String {
    const SHOWN: usize = 3;
    names.sort();
    let count = names.len();
    let shown: Vec<String> = names
        .iter()
        .take(SHOWN)
        .map(|name| format!("\"{name}\""))
        .collect();
    let listed = match count {
        1 => format!("{}, which is not a snapshot file", shown.join(", ")),
        _ if count <= SHOWN => format!("{}, which are not snapshot files", shown.join(", ")),
        _ => format!(
            "{} and {} more entries, which are not snapshot files",
            shown.join(", "),
            count - SHOWN
        ),
    };
    format!("it holds {listed}")
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

/// Removes a snapshot directory this module made or replaced (a temporary directory, or the
/// old snapshot after a replacement): its files by name first, then the directory itself.
/// Unlinking by name needs no file descriptor, so a process at its descriptor limit (`EMFILE`,
/// which may be why the snapshot failed) still leaves nothing behind; `remove_dir_all`, which
/// must open the directory to list it, is the fallback for anything else found there.
pub(crate) fn remove_snapshot_dir(dir: &Path) {
    for name in [
        format::MEMORY_FILE,
        format::INDEX_FILE,
        format::MANIFEST_FILE,
    ] {
        let _ = fs::remove_file(dir.join(name));
    }
    if fs::remove_dir(dir).is_err() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Where the directory `dir`, created as `created`, is now (it moves with its parent
/// directory): the path the kernel gives for the open descriptor, if it still has the name it
/// was created with. `None` when it cannot tell or the directory was removed or renamed.
pub(crate) fn current_path(dir: &fs::File, created: &Path) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let path = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    (path.is_absolute() && path.file_name() == created.file_name()).then_some(path)
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
///
/// Once a rename has put the new snapshot in place it stays published: an fsync of the parent
/// directory failing after a rename does not undo the rename, so it is returned as a warning
/// (the first one) instead of an error, and publishing goes on.
pub(crate) fn publish(
    temp: &Path,
    target: &Target,
    exchange: bool,
) -> Result<Option<String>, SnapshotError> {
    // Again, just before the rename: the target may have changed while the files were written.
    check_replaceable(target)?;
    sync_dir(temp)?;
    let mut warning = None;
    let sync_parent = |warning: &mut Option<String>| {
        if let Err(error) = sync_parent_dir(target) {
            warning.get_or_insert_with(|| unsynced(target, &error));
        }
    };
    if !target.path.exists() {
        rename(temp, &target.path, RenameMode::NoReplace)?;
        sync_parent(&mut warning);
        return Ok(warning);
    }
    if exchange {
        match rename(temp, &target.path, RenameMode::Exchange) {
            Ok(()) => {
                sync_parent(&mut warning);
                // `temp` now holds the old snapshot.
                remove_snapshot_dir(temp);
                return Ok(warning);
            }
            Err(error) if unsupported(&error) => {}
            Err(error) => return Err(error),
        }
    }
    let old = target.sibling("old");
    rename(&target.path, &old, RenameMode::NoReplace)?;
    sync_parent(&mut warning);
    rename(temp, &target.path, RenameMode::NoReplace)?;
    sync_parent(&mut warning);
    remove_snapshot_dir(&old);
    Ok(warning)
}

/// The warning of a snapshot published at `target` whose parent directory could not be
/// fsynced after the rename.
fn unsynced(target: &Target, error: &SnapshotError) -> String {
    format!(
        "the snapshot is in place at {}, but {error}: the rename may not survive a crash of the \
         machine until the file system is synced (sync -f {})",
        target.path.display(),
        target.parent.display()
    )
}

/// fsyncs the parent directory of `target` after a rename.
fn sync_parent_dir(target: &Target) -> Result<(), SnapshotError> {
    #[cfg(test)]
    if failing_syncs::fails(&target.parent) {
        return Err(SnapshotError::io(
            "fsync directory",
            &target.parent,
            io::Error::from_raw_os_error(libc::EIO),
        ));
    }
    sync_dir(&target.parent)
}

/// A test seam: the parent directories whose fsync after a rename fails (with EIO).
#[cfg(test)]
pub(crate) mod failing_syncs {
    use std::path::Path;
    use std::path::PathBuf;
    use std::sync::Mutex;

    static FAILING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// From now on, fsyncing `parent` after a rename fails.
    pub(crate) fn fail(parent: &Path) {
        FAILING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(parent.to_owned());
    }

    pub(super) fn fails(parent: &Path) -> bool {
        FAILING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|failing| failing == parent)
    }
}
