//! `bootplan run --user-data`: the plan comes from the machine's user data,
//! fetched from the detected (or named) provider. A `#bootplan` header or
//! a `text/x-bootplan` MIME part is a plan as it is; cloud-config (and
//! multipart user data with cloud-config, scripts or boot hooks) is
//! imported on the fly, the migration report going to the run's log;
//! anything else is refused before anything runs.

use std::path::{Path, PathBuf};

use crate::facts::{FactsSettings, ProviderChoice};
use crate::import::userdata::{self as parts, PartKind};
use crate::plan::{Plan, PlanError, facts::FactsConfig, source::Verification};
use crate::telemetry::Level;

/// A plan made from user data, and what to log about how it was made.
pub struct UserDataPlan {
    pub plan: Plan,
    pub notices: Vec<(Level, String)>,
}

/// How the user data became a plan.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// A bootplan plan: its text.
    Plan(String),
    /// Cloud-init user data, to import.
    CloudInit,
}

/// The path a plan from user data is shown as (in the status file, logs
/// and diagnostics): it names the provider it came from.
pub fn shown_path(provider: &str) -> PathBuf {
    PathBuf::from(format!("{}{provider}", crate::plan::load::USER_DATA_SCHEME))
}

/// Fetches the user data from `provider` (or the detected one) and turns it
/// into a plan. Errors are plan errors: nothing has run yet.
pub fn load(
    provider: Option<&str>,
    verification: &Verification,
) -> Result<UserDataPlan, PlanError> {
    let mut config = FactsConfig::default();
    if let Some(name) = provider {
        config.provider = ProviderChoice::from_name(name).ok_or_else(|| PlanError::UserData {
            from: "user data".into(),
            message: format!(
                "unknown provider `{name}`; use auto, aws, gcp, azure, openstack, digitalocean, nocloud or local"
            ),
        })?;
    }
    let gathered = crate::facts::gather(&FactsSettings::from_env(&config)).map_err(|err| {
        PlanError::Fetch {
            url: "user data".into(),
            message: err.to_string(),
        }
    })?;
    let shown = shown_path(gathered.provider);
    let Some(data) = &gathered.facts.user_data else {
        return Err(PlanError::UserData {
            from: shown.display().to_string(),
            message: format!(
                "{} has no user data; give the plan as a file or URL instead",
                gathered.provider
            ),
        });
    };
    from_bytes(&shown, data.expose(), verification)
}

/// The plan in user data `bytes`, shown as `shown`.
pub fn from_bytes(
    shown: &Path,
    bytes: &[u8],
    verification: &Verification,
) -> Result<UserDataPlan, PlanError> {
    let refused = |message: String| PlanError::UserData {
        from: shown.display().to_string(),
        message,
    };
    let mut notices = Vec::new();
    let text = match kind(bytes).map_err(refused)? {
        Kind::Plan(text) => {
            notices.push((
                Level::Info,
                format!(
                    "the plan is the user data's bootplan part ({} bytes)",
                    text.len()
                ),
            ));
            text
        }
        Kind::CloudInit => {
            let imported = crate::import::import(bytes, "user-data")
                .map_err(|err| refused(err.to_string()))?;
            notices.extend(report_notices(&imported, shown));
            let report = imported.report_text(&shown.display().to_string());
            match (imported.plan, imported.problems.as_slice()) {
                (Some(text), []) => text,
                (Some(_), problems) => {
                    return Err(refused(format!(
                        "the cloud-config imported into an invalid plan: {}",
                        problems.join("; ")
                    )));
                }
                (None, _) => {
                    return Err(refused(format!(
                        "nothing in the cloud-config could be mapped to a step: {}",
                        report.trim_end()
                    )));
                }
            }
        }
    };
    let plan = crate::plan::load_text(shown, &text, true, verification)?;
    Ok(UserDataPlan { plan, notices })
}

/// Tells what the user data is: a plan, cloud-init's, or neither (why).
fn kind(bytes: &[u8]) -> Result<Kind, String> {
    let found = parts::parts(bytes).map_err(|e| e.to_string())?;
    let plans: Vec<_> = found
        .iter()
        .filter(|p| p.kind == PartKind::Bootplan)
        .collect();
    match plans.as_slice() {
        [plan] if found.len() == 1 => return Ok(Kind::Plan(plan.text.clone())),
        [_] => {
            return Err(format!(
                "the user data holds a bootplan plan beside {} other part(s); put everything in the plan, or import the cloud-config into it",
                found.len() - 1
            ));
        }
        [] => {}
        many => {
            return Err(format!(
                "the user data holds {} bootplan plans; give one",
                many.len()
            ));
        }
    }
    let cloud_init = |kind: &PartKind| match kind {
        PartKind::CloudConfig | PartKind::Script | PartKind::Boothook | PartKind::Archive => true,
        PartKind::Jinja(inner) => matches!(**inner, PartKind::CloudConfig | PartKind::Script),
        _ => false,
    };
    // A single part must say what it is: cloud-init itself ignores text
    // without a header, so bootplan does not guess.
    let headed = match found.as_slice() {
        [single] if single.origin.is_empty() && single.kind == PartKind::CloudConfig => {
            single.text.trim_start().starts_with("#cloud-config")
        }
        _ => true,
    };
    if headed && found.iter().any(|p| cloud_init(&p.kind)) {
        return Ok(Kind::CloudInit);
    }
    Err(match found.first() {
        None => "the user data is empty".into(),
        Some(_) if !headed => "the user data starts with neither `#bootplan` nor `#cloud-config` (nor a `#!` script); add the header that says what it is".into(),
        Some(_) => format!(
            "the user data holds no bootplan plan, cloud-config or script (parts: {}); bootplan runs a `#bootplan` or `text/x-bootplan` plan, or imports cloud-config",
            found.iter().map(|p| p.kind.describe()).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// The migration report, a log line per key: changes and what was not
/// carried over at warn, the rest at info.
fn report_notices(imported: &crate::import::Import, shown: &Path) -> Vec<(Level, String)> {
    let source = shown.display().to_string();
    let mut notices = vec![(
        Level::Info,
        format!("{source} is cloud-config: imported on the fly, the migration report follows"),
    )];
    let lines = imported.report_text(&source);
    for (line, entry) in lines
        .lines()
        .zip(imported.entries.iter().map(Some).chain([None]))
    {
        let level = match entry.map(|e| e.outcome) {
            Some(crate::import::Outcome::Mapped) | None => Level::Info,
            Some(_) => Level::Warn,
        };
        notices.push((level, format!("import: {line}")));
    }
    notices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootplan_header_or_part_is_a_plan_and_cloud_config_is_imported() {
        let plan = "#bootplan\nversion: 1\nname: x\nsteps: {}\n";
        assert_eq!(kind(plan.as_bytes()), Ok(Kind::Plan(plan.into())));
        let mime = "Content-Type: multipart/mixed; boundary=\"B\"\nMIME-Version: 1.0\n\n--B\nContent-Type: text/x-bootplan\n\nversion: 1\nname: x\n--B--\n";
        assert!(matches!(kind(mime.as_bytes()), Ok(Kind::Plan(t)) if t.contains("name: x")));
        assert_eq!(
            kind(b"#cloud-config\nruncmd: [date]\n"),
            Ok(Kind::CloudInit)
        );
        assert_eq!(kind(b"#!/bin/sh\necho hi\n"), Ok(Kind::CloudInit));
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let headless = kind(b"runcmd: [date]\n").unwrap_err();
        assert!(headless.contains("#cloud-config"), "{headless}");
        assert!(kind(b"").is_err());
        let include = kind(b"#include\nhttps://example.invalid/x\n").unwrap_err();
        assert!(include.contains("#include"), "{include}");
        let both = "Content-Type: multipart/mixed; boundary=\"B\"\nMIME-Version: 1.0\n\n--B\nContent-Type: text/x-bootplan\n\nversion: 1\n--B\nContent-Type: text/cloud-config\n\nruncmd: [date]\n--B--\n";
        let both = kind(both.as_bytes()).unwrap_err();
        assert!(both.contains("beside 1 other"), "{both}");
    }
}
