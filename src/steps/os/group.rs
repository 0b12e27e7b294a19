//! `group`: create, change the gid of, or remove a group (`groupadd`,
//! `groupmod`, `groupdel`).

use super::{Env, Report};
use crate::error::ErrorCode;
use crate::plan::os::{GroupSpec, Presence, syntax};
use crate::steps::StepError;
use crate::system::accounts;

pub async fn converge(
    spec: &GroupSpec,
    env: &Env<'_>,
    report: &mut Report,
) -> Result<(), StepError> {
    let name = env
        .render
        .checked(&spec.name, "group.name", syntax::account_name)?;
    let found = accounts::group(&name)?;
    match (spec.state, found) {
        (Presence::Absent, None) => report.satisfied = format!("group {name} does not exist"),
        (Presence::Absent, Some(_)) => {
            if env.mode.changes() {
                let tool = accounts::groupdel(&name)?;
                {
                    let _turn = accounts::changing().await;
                    env.sys.run(&tool).await?.ok_or(ErrorCode::GroupFailed)?;
                }
            }
            report.change(format!("remove group {name}"));
        }
        (Presence::Present, None) => {
            let gid = spec.gid.map_or_else(String::new, |g| format!(" (gid {g})"));
            if env.mode.changes() {
                let tool = accounts::groupadd(&name, spec.gid, spec.system)?;
                {
                    let _turn = accounts::changing().await;
                    env.sys.run(&tool).await?.ok_or(ErrorCode::GroupFailed)?;
                }
            }
            report.change(format!("create group {name}{gid}"));
        }
        (Presence::Present, Some(group)) => match spec.gid {
            Some(gid) if gid != group.gid => {
                if env.mode.changes() {
                    let tool = accounts::groupmod_gid(&name, gid)?;
                    {
                        let _turn = accounts::changing().await;
                        env.sys.run(&tool).await?.ok_or(ErrorCode::GroupFailed)?;
                    }
                }
                report.change(format!(
                    "group {name} exists, gid differs ({} → {gid})",
                    group.gid
                ));
            }
            _ => report.satisfied = format!("group {name} exists with gid {}", group.gid),
        },
    }
    Ok(())
}
