//! `unit`: a systemd unit or drop-in written from content or a template,
//! one `daemon-reload` per run when units changed, enable / disable /
//! mask, start (restart when its file changed). Without a running systemd
//! (an image build) `systemctl --root=/` does what works offline; `start`
//! there is an error.

use super::{Env, Report};
use crate::error::ErrorCode;
use crate::plan::os::{UnitSpec, syntax};
use crate::steps::StepError;
use crate::system::{OsError, systemd};

pub async fn converge(
    spec: &UnitSpec,
    env: &Env<'_>,
    report: &mut Report,
) -> Result<(), StepError> {
    crate::system::checked("unit.name", &spec.name, syntax::unit_name)?;
    let mut file_changed = false;
    if let Some(source) = &spec.source {
        let text = if source.template {
            env.render.text(&source.text, &source.origin)?
        } else {
            source.text.clone()
        };
        let path = systemd::unit_path(&spec.name, spec.dropin.as_deref());
        if super::sync_file(env, &path, text.as_bytes(), 0o644)? {
            report.change(format!("write {}", path.display()));
            file_changed = true;
            if env.mode.changes() {
                let written = systemd::wrote_unit();
                if systemd::reload_for(env.sys, written).await? {
                    env.sys.say("systemctl daemon-reload");
                }
            }
        }
    }
    let unit = spec.name.as_str();
    let state = async |what: &str| -> Result<String, StepError> {
        let ran = env.sys.query(&systemd::systemctl([what, unit])?).await?;
        Ok(ran.stdout.lines().next().unwrap_or("").trim().to_string())
    };
    if spec.mask.is_some() || spec.enable.is_some() {
        let enabled = systemd::Enablement::parse(&state("is-enabled").await?);
        let is_masked = enabled == systemd::Enablement::Masked;
        let mut act = async |verb: &'static str, text: String| -> Result<(), StepError> {
            if env.mode.changes() {
                let tool = systemd::systemctl([verb, unit])?;
                env.sys.run(&tool).await?.ok_or(ErrorCode::UnitFailed)?;
            }
            report.change(text);
            Ok(())
        };
        match spec.mask {
            Some(true) if !is_masked => {
                act("mask", format!("mask {unit} (now {})", enabled.as_str())).await?
            }
            Some(false) if is_masked => act("unmask", format!("unmask {unit}")).await?,
            _ => {}
        }
        let masked_now = spec.mask.unwrap_or(is_masked);
        match spec.enable {
            Some(true)
                if !masked_now
                    && enabled != systemd::Enablement::Enabled
                    && enabled != systemd::Enablement::Static =>
            {
                act(
                    "enable",
                    format!("enable {unit} (now {})", enabled.as_str()),
                )
                .await?;
            }
            Some(false) if enabled == systemd::Enablement::Enabled => {
                act("disable", format!("disable {unit}")).await?;
            }
            _ => {}
        }
    }
    if spec.start {
        if !systemd::running() {
            if !env.mode.changes() {
                // The dry run says what the run would do: the rest, then fail.
                report.change(format!(
                    "start {unit}, which fails here: systemd is not running [unit.no_systemd]"
                ));
                return Ok(());
            }
            return Err(OsError::NoSystemd {
                unit: unit.to_string(),
                action: "start",
            }
            .into());
        }
        let active = state("is-active").await? == "active";
        let verb = match (active, file_changed) {
            (false, _) => Some(("start", format!("start {unit}"))),
            (true, true) => Some(("restart", format!("restart {unit} (its file changed)"))),
            (true, false) => None,
        };
        if let Some((verb, text)) = verb {
            if env.mode.changes() {
                let tool = systemd::systemctl([verb, unit])?;
                env.sys.run(&tool).await?.ok_or(ErrorCode::UnitFailed)?;
            }
            report.change(text);
        }
    }
    report.satisfied = format!(
        "{unit} is as planned{}{}",
        match spec.enable {
            Some(true) => ", enabled",
            Some(false) => ", disabled",
            None => "",
        },
        if spec.start { ", active" } else { "" }
    );
    Ok(())
}
