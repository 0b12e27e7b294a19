//! `sysctl`: every key checked to exist first (nothing is applied when one
//! does not), the values that differ written to `/proc/sys`, and all of
//! them kept in one file under `/etc/sysctl.d` written atomically.

use std::path::Path;

use super::{Env, Report};
use crate::plan::os::{SysctlSpec, syntax};
use crate::steps::StepError;
use crate::system::{OsError, sysctl};

pub async fn converge(
    spec: &SysctlSpec,
    env: &Env<'_>,
    report: &mut Report,
) -> Result<(), StepError> {
    let root = Path::new(sysctl::PROC_SYS);
    let mut values = Vec::new();
    for (key, text) in &spec.values {
        let what = format!("sysctl.{key}");
        let rel = crate::system::checked(&what, key, syntax::sysctl_path)?;
        let value = env.render.checked(text, &what, syntax::sysctl_value)?;
        let path = sysctl::proc_path(root, &rel);
        let current = sysctl::read(&path).map_err(|source| OsError::Read {
            path: path.clone(),
            source,
        })?;
        let Some(current) = current else {
            return Err(OsError::SysctlUnknownKey {
                key: key.clone(),
                path,
            }
            .into());
        };
        values.push((key.clone(), value, path, current));
    }
    for (key, value, path, current) in &values {
        if sysctl::normalize(value) != *current {
            if env.mode.changes() {
                sysctl::write(key, path, value)?;
            }
            report.change(format!("set {key} ({current} → {value})"));
        }
    }
    let persist: Vec<(String, String)> = values
        .iter()
        .map(|(k, v, ..)| (k.clone(), v.clone()))
        .collect();
    let file = sysctl::persist_path(&env.step.name);
    let text = sysctl::persist_text(&env.step.name, &persist);
    if super::sync_file(env, &file, text.as_bytes(), 0o644)? {
        report.change(format!("write {}", file.display()));
    }
    report.satisfied = format!(
        "{} sysctl values set and kept in {}",
        values.len(),
        file.display()
    );
    Ok(())
}
