//! The identity of a worker's data directory: a random id made with the
//! directory and sent with every registration. Membership remembers it; a
//! worker that comes back with another id has a new (or wiped) disk, and
//! every copy it held is gone — its empty copies must not vote as if they
//! still held what the old disk acknowledged. Membership answers which
//! copies those were (`RegisterWorkerResponse.lost_copies`), and the worker
//! rebuilds them from their peers (`freshet_log::create_rebuilding`).
//!
//! Order makes it crash-safe: membership remembers an id only from a
//! registration that says it is durable; the worker writes a fresh id only
//! after marking the copies membership named, then registers again with it
//! confirmed; and until a confirmed registration has been answered (on
//! every start), the worker creates no log at all (`ShardRegistry`). So no
//! empty copy on a replaced disk ever answers an election as a voter: a
//! lost answer, or a crash at any point, only means being told again.
//! A worker whose earlier registrations named no disk (upgraded from a
//! build without disk ids) is not checked until its id is confirmed once.

use std::io::Write;
use std::path::Path;

const DISK_ID_FILE: &str = "disk-id";

/// This worker's data directory's id.
#[derive(Debug, Clone)]
pub struct DiskIdentity {
    pub id: String,
    /// Made now: not yet written (see [`DiskIdentity::make_durable`]).
    pub fresh: bool,
}

impl DiskIdentity {
    /// The directory's id, or a new one for a directory that has none.
    pub fn load_or_make(data_dir: &Path) -> std::io::Result<DiskIdentity> {
        match std::fs::read_to_string(data_dir.join(DISK_ID_FILE)) {
            Ok(id) if !id.trim().is_empty() => Ok(DiskIdentity {
                id: id.trim().to_owned(),
                fresh: false,
            }),
            Ok(_) => Ok(DiskIdentity::new()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(DiskIdentity::new()),
            Err(error) => Err(error),
        }
    }

    fn new() -> DiskIdentity {
        DiskIdentity {
            id: uuid::Uuid::new_v4().simple().to_string(),
            fresh: true,
        }
    }

    /// Writes a fresh id into the directory, durably.
    pub fn make_durable(&mut self, data_dir: &Path) -> std::io::Result<()> {
        if !self.fresh {
            return Ok(());
        }
        let temporary = data_dir.join(format!("{DISK_ID_FILE}.new"));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(self.id.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, data_dir.join(DISK_ID_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        self.fresh = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::DiskIdentity;

    #[test]
    fn an_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut made = DiskIdentity::load_or_make(dir.path()).expect("make");
        assert!(made.fresh);
        let again = DiskIdentity::load_or_make(dir.path()).expect("load");
        assert_ne!(again.id, made.id, "not written yet: another one each time");
        made.make_durable(dir.path()).expect("write");
        let loaded = DiskIdentity::load_or_make(dir.path()).expect("load");
        assert_eq!(
            (loaded.id.as_str(), loaded.fresh),
            (made.id.as_str(), false)
        );
    }
}
