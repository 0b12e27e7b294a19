//! The journal: which steps completed, with what definition, on which boot
//! and instance. A step is recorded only after it succeeded; the file is
//! rewritten atomically (temp, fsync, rename, fsync dir) by a background
//! writer, so recording never stalls the next step. A crash before a record
//! is durable only means the step runs again (at-least-once), never that a
//! step is marked done without having run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::facts::Facts;
use crate::fsutil::BackgroundWriter;
use crate::plan::{Frequency, Step};

pub const JOURNAL_FILE: &str = "journal.json";
/// The journal file's format version.
const VERSION: u32 = 1;
const LOCK_FILE: &str = "lock";

/// The journal file: records by plan name, then step name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct JournalDoc {
    pub version: u32,
    pub plans: BTreeMap<String, BTreeMap<String, Record>>,
}

/// One completed step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: String,
    pub frequency: Frequency,
    pub completed_at: String,
    pub bootstrap_id: String,
    pub boot_id: String,
    pub instance_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another bootplan is running with state directory {path}")]
    Locked { path: PathBuf },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
}

/// The journal as a run holds it: its own plan's records parsed, every
/// other plan's kept as the JSON text read from the file and written back
/// as it was. A run then parses (and re-serializes) only its own records,
/// however many plans share the state directory.
#[derive(Debug, Default)]
struct OpenDoc {
    version: u32,
    mine: BTreeMap<String, Record>,
    others: BTreeMap<String, Box<RawValue>>,
}

/// The journal file, with each plan's records left unparsed.
#[derive(Deserialize)]
struct RawJournalDoc {
    version: u32,
    plans: BTreeMap<String, Box<RawValue>>,
}

impl OpenDoc {
    fn empty() -> OpenDoc {
        OpenDoc {
            version: VERSION,
            ..Default::default()
        }
    }

    /// Reads the journal for `plan`; a missing file is an empty journal.
    fn read(state_dir: &Path, plan: &str) -> Result<OpenDoc, (PathBuf, String)> {
        let Some((path, RawJournalDoc { version, mut plans })) = read_file(state_dir)? else {
            return Ok(OpenDoc::empty());
        };
        let mine = match plans.remove(plan) {
            Some(records) => {
                serde_json::from_str(records.get()).map_err(|e| (path, e.to_string()))?
            }
            None => BTreeMap::new(),
        };
        Ok(OpenDoc {
            version,
            mine,
            others: plans,
        })
    }

    /// The file's bytes: every plan, by name, as [`JournalDoc`] has them.
    fn render(&self, plan: &str) -> Vec<u8> {
        /// One plan's records on the way back to the file.
        #[derive(Serialize)]
        #[serde(untagged)]
        enum PlanRecords<'a> {
            Parsed(&'a BTreeMap<String, Record>),
            Raw(&'a RawValue),
        }
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            plans: BTreeMap<&'a str, PlanRecords<'a>>,
        }
        let mut plans: BTreeMap<&str, PlanRecords> = self
            .others
            .iter()
            .map(|(name, records)| (name.as_str(), PlanRecords::Raw(records)))
            .collect();
        if !self.mine.is_empty() {
            plans.insert(plan, PlanRecords::Parsed(&self.mine));
        }
        let out = Out {
            version: self.version,
            plans,
        };
        serde_json::to_vec_pretty(&out).unwrap_or_default()
    }
}

/// The open journal of one plan, holding the state directory's lock.
pub struct Journal {
    doc: Arc<Mutex<OpenDoc>>,
    writer: BackgroundWriter,
    _lock: Flock<std::fs::File>,
    /// Set when the file was unreadable and set aside.
    pub recovered_from: Option<PathBuf>,
}

/// Takes the state directory's exclusive lock (released by the kernel if
/// bootplan dies), so two runs never interleave their records. The lock
/// file is never a link. The directory must exist (see
/// [`crate::fsutil::ensure_own_dir`]); nothing is written before the lock
/// is held.
pub fn lock_state_dir(state_dir: &Path) -> Result<Flock<std::fs::File>, JournalError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => JournalError::Fs(crate::fsutil::FsError::UnsafeLink {
                link: path.clone(),
                reason: "the lock file is a link; bootplan's own files never are".into(),
            }),
            _ => JournalError::Io {
                path: path.clone(),
                source,
            },
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => JournalError::Locked {
            path: state_dir.to_path_buf(),
        },
        other => JournalError::Io {
            path,
            source: std::io::Error::from(other),
        },
    })
}

/// Reads the journal file; a missing file is an empty journal.
pub fn read_doc(state_dir: &Path) -> Result<JournalDoc, (PathBuf, String)> {
    Ok(match read_file(state_dir)? {
        Some((_, doc)) => doc,
        None => JournalDoc {
            version: VERSION,
            ..Default::default()
        },
    })
}

/// The journal file of `state_dir` and what it holds, as `T`; `None` when
/// there is no file yet.
fn read_file<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
) -> Result<Option<(PathBuf, T)>, (PathBuf, String)> {
    let path = state_dir.join(JOURNAL_FILE);
    let bytes = match crate::fsutil::read_nofollow(&path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(e) => return Err((path, e.to_string())),
    };
    match serde_json::from_slice(&bytes) {
        Ok(doc) => Ok(Some((path, doc))),
        Err(e) => Err((path, e.to_string())),
    }
}

impl Journal {
    /// Keeps the state directory's lock held across an `exec` of bootplan
    /// (the lean supervisor): its descriptor stays open in the new image,
    /// and the lock with it. The journal must not be dropped afterwards,
    /// which would unlock it.
    pub fn keep_lock_across_exec(&self) -> std::io::Result<()> {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        use std::os::fd::AsFd;
        fcntl((*self._lock).as_fd(), FcntlArg::F_SETFD(FdFlag::empty()))
            .map(drop)
            .map_err(std::io::Error::from)
    }

    /// Opens the journal of `plan` under the state directory's `lock`.
    pub fn open(
        state_dir: &Path,
        plan: &str,
        lock: Flock<std::fs::File>,
    ) -> Result<Journal, JournalError> {
        let journal_path = state_dir.join(JOURNAL_FILE);
        if std::fs::symlink_metadata(&journal_path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(JournalError::Fs(crate::fsutil::FsError::UnsafeLink {
                link: journal_path,
                reason: "the journal is a link; bootplan's own files never are".into(),
            }));
        }
        let mut recovered_from = None;
        let doc = match OpenDoc::read(state_dir, plan) {
            Ok(doc) => doc,
            Err((path, _)) => {
                // Atomic writes make this nearly impossible; if it happens, keep
                // the evidence and start over: steps rerun, none is wrongly skipped.
                let aside = path.with_extension(format!("corrupt-{}", std::process::id()));
                let _ = std::fs::rename(&path, &aside);
                recovered_from = Some(aside);
                OpenDoc::empty()
            }
        };
        let doc = Arc::new(Mutex::new(doc));
        let (for_render, plan_name) = (doc.clone(), plan.to_string());
        let writer = BackgroundWriter::new(
            state_dir.join(JOURNAL_FILE),
            0o600,
            true,
            Box::new(move || {
                let doc = for_render.lock().unwrap_or_else(|p| p.into_inner());
                doc.render(&plan_name)
            }),
        );
        Ok(Journal {
            doc,
            writer,
            _lock: lock,
            recovered_from,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenDoc> {
        self.doc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why `step` need not run again, or `None` when it must run.
    pub fn skip_reason(&self, step: &Step, facts: &Facts) -> Option<String> {
        let doc = self.lock();
        let record = doc.mine.get(&step.name)?;
        skip_reason(record, step, facts)
    }

    /// A warning when `step` runs again because its `per-instance` record
    /// was made with the same instance id on another machine, or the same
    /// machine under another instance id: a cloned disk or a new instance.
    pub fn instance_change(&self, step: &Step, facts: &Facts) -> Option<String> {
        let doc = self.lock();
        let record = doc.mine.get(&step.name)?;
        instance_change(record, step, facts)
    }

    /// Records that `step` succeeded. Durable soon; see [`Journal::flush`].
    /// `always` steps are not recorded: no later run would skip them.
    pub fn record(&self, step: &Step, facts: &Facts, bootstrap_id: &str) {
        if step.frequency == Frequency::Always {
            return;
        }
        let record = Record {
            fingerprint: step.fingerprint.clone(),
            frequency: step.frequency,
            completed_at: crate::telemetry::timestamp(std::time::SystemTime::now()),
            bootstrap_id: bootstrap_id.to_string(),
            boot_id: facts.boot_id.clone(),
            instance_key: facts.instance_key(),
        };
        self.lock().mine.insert(step.name.clone(), record);
        self.writer.mark_dirty();
    }

    /// Waits until every record so far is durable.
    pub fn flush(&self) -> Result<(), String> {
        self.writer.flush()
    }
}

/// The decision, separate from I/O so it is easy to test.
pub fn skip_reason(record: &Record, step: &Step, facts: &Facts) -> Option<String> {
    if step.frequency == Frequency::Always || record.fingerprint != step.fingerprint {
        return None;
    }
    let when = format!(
        "done at {} by bootstrap {}",
        record.completed_at, record.bootstrap_id
    );
    match step.frequency {
        Frequency::Always => None,
        Frequency::Once => Some(format!("{when}; unchanged (frequency once)")),
        Frequency::PerBoot => (record.boot_id == facts.boot_id)
            .then(|| format!("{when}; unchanged, same boot (frequency per-boot)")),
        Frequency::PerInstance => (record.instance_key == facts.instance_key())
            .then(|| format!("{when}; unchanged, same instance (frequency per-instance)")),
    }
}

/// The clone check, separate from I/O so it is easy to test. Only for an
/// unchanged `per-instance` step whose key differs in exactly one half.
pub fn instance_change(record: &Record, step: &Step, facts: &Facts) -> Option<String> {
    if step.frequency != Frequency::PerInstance || record.fingerprint != step.fingerprint {
        return None;
    }
    let current = facts.instance_key();
    if record.instance_key == current {
        return None;
    }
    let (old_id, old_machine) = crate::facts::split_instance_key(&record.instance_key);
    let (new_id, new_machine) = crate::facts::split_instance_key(&current);
    if old_id == new_id && old_machine != new_machine {
        Some(format!(
            "step `{}` runs again: instance {new_id} ran it with machine id {old_machine}, \
             this machine id is {new_machine}; the disk looks cloned or re-imaged (per-instance)",
            step.name
        ))
    } else if old_machine == new_machine && old_id != new_id {
        Some(format!(
            "step `{}` runs again: this disk (machine id {new_machine}) ran it as instance {old_id}, \
             now it is instance {new_id}; the disk looks cloned onto a new instance (per-instance)",
            step.name
        ))
    } else {
        None
    }
}

/// Removes records: the named steps, or all of them; for one plan or all.
/// Returns how many were removed.
pub fn reset(
    state_dir: &Path,
    plan: Option<&str>,
    steps: &[String],
) -> Result<usize, JournalError> {
    if !state_dir.exists() {
        return Ok(0);
    }
    let _lock = lock_state_dir(state_dir)?;
    let mut doc = read_doc(state_dir).map_err(|(path, msg)| JournalError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
    })?;
    let mut removed = 0;
    for (name, records) in doc.plans.iter_mut() {
        if plan.is_some_and(|p| p != name) {
            continue;
        }
        let before = records.len();
        if steps.is_empty() {
            records.clear();
        } else {
            records.retain(|step, _| !steps.contains(step));
        }
        removed += before - records.len();
    }
    doc.plans.retain(|_, records| !records.is_empty());
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    crate::fsutil::write_atomic(&state_dir.join(JOURNAL_FILE), &bytes, 0o600)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fingerprint: &str) -> Record {
        Record {
            fingerprint: fingerprint.into(),
            frequency: Frequency::Once,
            completed_at: "2026-12-01T00:00:00.000Z".into(),
            bootstrap_id: "b-1".into(),
            boot_id: "boot-1".into(),
            instance_key: "i-1".into(),
        }
    }

    /// A run parses only its own plan's records; the others go back to the
    /// file exactly as they were read, and the file stays one document.
    #[test]
    fn other_plans_records_are_written_back_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let mut doc = JournalDoc {
            version: 1,
            ..Default::default()
        };
        doc.plans
            .entry("other".into())
            .or_default()
            .insert("kept".into(), record("sha256:other"));
        doc.plans
            .entry("mine".into())
            .or_default()
            .insert("old".into(), record("sha256:old"));
        let original = serde_json::to_vec_pretty(&doc).unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), &original).unwrap();

        let mut open = OpenDoc::read(dir.path(), "mine").unwrap();
        assert_eq!(open.mine["old"].fingerprint, "sha256:old");
        assert!(open.others.contains_key("other"));
        open.mine.insert("new".into(), record("sha256:new"));
        let rendered = open.render("mine");

        let other_text = {
            let raw: RawJournalDoc = serde_json::from_slice(&original).unwrap();
            raw.plans["other"].get().to_string()
        };
        let text = String::from_utf8(rendered.clone()).unwrap();
        assert!(
            text.contains(&other_text),
            "other plan's records changed:\n{text}"
        );
        std::fs::write(dir.path().join(JOURNAL_FILE), &rendered).unwrap();
        let back = read_doc(dir.path()).unwrap();
        assert_eq!(back.plans["other"]["kept"].fingerprint, "sha256:other");
        assert_eq!(back.plans["mine"]["old"].fingerprint, "sha256:old");
        assert_eq!(back.plans["mine"]["new"].fingerprint, "sha256:new");
        // Formatted as a whole-document pretty print would have it.
        assert_eq!(rendered, serde_json::to_vec_pretty(&back).unwrap());
    }

    /// Records of this plan that do not parse make the journal unreadable,
    /// as before: it is set aside by `Journal::open`, never half-used.
    #[test]
    fn unreadable_records_of_this_plan_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"version": 1, "plans": {"mine": {"s": {"fingerprint": 3}}, "other": {}}}"#;
        std::fs::write(dir.path().join(JOURNAL_FILE), text).unwrap();
        assert!(OpenDoc::read(dir.path(), "mine").is_err());
        assert!(OpenDoc::read(dir.path(), "other").is_ok());
    }
}
