//! The outbox's redb file: its tables, and its creation, such that a crash at any instant leaves
//! either no file or an initialised one.

use super::error::{storage, OutboxError};
use redb::{Database, TableDefinition};
use std::path::Path;

/// The queued entries, by sequence number.
pub(super) const ENTRIES: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("entries");
/// The dead letters, by sequence number: a reason and the entry's bytes.
pub(super) const DEAD: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("dead_letters");
/// Counters: [`NEXT_SEQ`].
pub(super) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
/// What replays taught each session (its state as an unsigned session token), kept with the
/// removal of the entry replayed, so that a restart remembers it.
pub(super) const REPLAYED: TableDefinition<'static, u128, &[u8]> = TableDefinition::new("replayed");
/// The next sequence number: never reused, even after the entries before it are gone.
pub(super) const NEXT_SEQ: &str = "next_seq";

/// Creates the tables of `db` that it does not have yet, so that reads of an empty outbox find
/// them.
pub(super) fn create_tables(db: &Database) -> Result<(), OutboxError> {
    let txn = storage!(db.begin_write())?;
    storage!(txn.open_table(ENTRIES))?;
    storage!(txn.open_table(DEAD))?;
    storage!(txn.open_table(META))?;
    storage!(txn.open_table(REPLAYED))?;
    storage!(txn.commit())
}

/// Gives `path` an initialised outbox file if it has none, so that a crash at any instant leaves
/// either no file, or an initialised one, at `path`: the file is created and initialised under a
/// temporary name beside it, synced, linked into place (never over a file another process put
/// there first), and the directory synced. A file at `path` that was never initialised (empty,
/// or all zero bytes: a crash while an earlier version created it in place) holds nothing and is
/// replaced the same way; any other file is left as it is, however damaged, for the store to
/// open or refuse.
pub(super) fn create_atomically(path: &Path) -> Result<(), OutboxError> {
    let io = |e: std::io::Error| OutboxError::Storage(redb::Error::Io(e));
    let replace = match std::fs::File::open(path) {
        Ok(file) => {
            if !never_initialised(file).map_err(io)? {
                return Ok(());
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(e)),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "outbox".to_owned());
    remove_stale_temporaries(&dir, &name);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let temporary = dir.join(format!("{name}{CREATING}{}.{nanos}", std::process::id()));
    let placed = (|| {
        {
            let db = storage!(Database::create(&temporary))?;
            create_tables(&db)?;
        }
        std::fs::File::open(&temporary)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        if replace {
            std::fs::rename(&temporary, path).map_err(io)?;
        } else {
            if let Err(e) = std::fs::hard_link(&temporary, path) {
                // Another process created it first: theirs is the outbox.
                if !path.exists() {
                    return Err(io(e));
                }
            }
        }
        sync_dir(&dir).map_err(io)
    })();
    let _ = std::fs::remove_file(&temporary);
    placed
}

/// The suffix of the temporary name an outbox file is created under.
const CREATING: &str = ".ryw-creating.";

/// Whether `file` holds nothing: empty, or zero bytes throughout (an initialised file starts
/// with the store's magic number, so only the first block is read for one).
fn never_initialised(mut file: std::fs::File) -> std::io::Result<bool> {
    use std::io::Read;
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(true);
        }
        if block[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// Removes temporaries left by a crash during creation (older than a minute: a creation in
/// progress elsewhere is left alone).
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}{CREATING}");
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(&prefix)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Makes a new name in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
