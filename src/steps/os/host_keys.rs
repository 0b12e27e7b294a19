//! `ssh_host_keys`: new host keys when the disk was made for another
//! instance or machine (a clone, an image's first boot), never on a reboot.
//! Which instance the keys were made for is kept beside them, so the record
//! travels with the disk. The fingerprints go to the log every run: the
//! console is where operators look for them.

use std::path::PathBuf;

use super::{Env, Mode, Report};
use crate::error::ErrorCode;
use crate::fsutil;
use crate::plan::os::{Regenerate, SshHostKeysSpec};
use crate::steps::StepError;
use crate::system::ssh;

pub async fn converge(
    spec: &SshHostKeysSpec,
    env: &Env<'_>,
    report: &mut Report,
) -> Result<(), StepError> {
    let now = ssh::Made {
        instance_id: env.facts.instance_id.clone().unwrap_or_default(),
        machine_id: env.facts.machine_id.clone(),
        made_at: String::new(),
    };
    let record_path = ssh::made_path();
    let record: Option<ssh::Made> =
        super::read_existing(&record_path)?.and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let missing: Vec<_> = spec
        .types
        .iter()
        .copied()
        .filter(|t| !ssh::host_key_path(t.as_str()).exists())
        .collect();
    let all_again = if spec.regenerate != Regenerate::PerInstance {
        None
    } else {
        match &record {
            None => {
                Some("no record of the instance they were made for (an image's keys)".to_string())
            }
            Some(made) if made.machine_id != now.machine_id => Some(format!(
                "made for machine id {}, this is {} (a cloned disk)",
                made.machine_id, now.machine_id
            )),
            Some(made) if made.instance_id != now.instance_id => Some(format!(
                "made for instance {}, this is {} (a cloned disk)",
                made.instance_id, now.instance_id
            )),
            Some(_) => None,
        }
        .filter(|_| !ssh::existing_host_key_files().is_empty())
    };
    let (make, planned): (Vec<_>, Option<String>) = if let Some(why) = &all_again {
        (
            spec.types.clone(),
            Some(format!("make new host keys ({why})")),
        )
    } else if missing.is_empty() {
        (missing, None)
    } else {
        let names: Vec<&str> = missing.iter().map(|t| t.as_str()).collect();
        let text = format!("make the missing host keys ({})", names.join(", "));
        (missing, Some(text))
    };
    let record_stale = record
        .as_ref()
        .is_none_or(|m| m.machine_id != now.machine_id || m.instance_id != now.instance_id);
    if env.mode == Mode::Change {
        if all_again.is_some() {
            for file in ssh::existing_host_key_files() {
                fsutil::remove_file(&file)?;
            }
        }
        for kind in &make {
            let path = ssh::host_key_path(kind.as_str());
            // The host name now: a `hostname` step may have just set it.
            let host =
                crate::system::hostname::kernel().unwrap_or_else(|_| env.facts.hostname.clone());
            let comment = format!("root@{host}");
            let tool = ssh::keygen(*kind, &path, &comment)?;
            env.sys
                .run(&tool)
                .await?
                .ok_or(ErrorCode::SshHostKeysFailed)?;
        }
        report.changes.extend(planned);
        if record_stale || !make.is_empty() {
            let made = ssh::Made {
                made_at: crate::telemetry::timestamp(std::time::SystemTime::now()),
                ..now
            };
            let json = serde_json::to_vec_pretty(&made).unwrap_or_default();
            fsutil::write_atomic(&record_path, &json, 0o644)?;
        }
        for kind in &spec.types {
            let public = PathBuf::from(format!(
                "{}.pub",
                ssh::host_key_path(kind.as_str()).display()
            ));
            if let Some(line) = super::read_existing(&public)?
                .and_then(|b| ssh::describe_public_key(&String::from_utf8_lossy(&b)))
            {
                env.sys.say(format!("ssh host key {line}"));
            }
        }
    } else {
        report.changes.extend(planned);
    }
    report.satisfied = "the host keys were made for this instance and machine".to_string();
    Ok(())
}
