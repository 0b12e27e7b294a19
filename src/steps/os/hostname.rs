//! `hostname`: the kernel's host name, `/etc/hostname` and, with
//! `hosts: true`, the `127.0.1.1` line of `/etc/hosts`.

use std::path::Path;

use super::{Env, Report};
use crate::plan::os::{HostnameSpec, syntax};
use crate::steps::StepError;
use crate::system::hostname;

pub async fn converge(
    spec: &HostnameSpec,
    env: &Env<'_>,
    report: &mut Report,
) -> Result<(), StepError> {
    let name = env
        .render
        .checked(&spec.name, "hostname.name", syntax::host_label)?;
    let fqdn = spec
        .fqdn
        .as_deref()
        .map(|f| env.render.checked(f, "hostname.fqdn", syntax::fqdn))
        .transpose()?;
    if let Some(reason) = hostname::shared_with_host() {
        report.skipped = Some(reason);
        return Ok(());
    }
    let kernel = hostname::kernel()?;
    if kernel != name {
        if env.mode.changes() {
            hostname::set_kernel(&name)?;
        }
        report.change(format!("set the kernel host name ({kernel} → {name})"));
    }
    let file = Path::new(hostname::HOSTNAME_FILE);
    if super::sync_file(env, file, format!("{name}\n").as_bytes(), 0o644)? {
        report.change(format!("write {}", file.display()));
    }
    if spec.hosts {
        let hosts = Path::new(hostname::HOSTS_FILE);
        let text = super::read_existing(hosts)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Some(new) = hostname::hosts_with(&text, &name, fqdn.as_deref()) {
            if env.mode.changes() {
                crate::fsutil::write_atomic(hosts, new.as_bytes(), 0o644)?;
            }
            report.change(format!(
                "set the 127.0.1.1 entry of {} to {}",
                hosts.display(),
                fqdn.as_deref().unwrap_or(&name)
            ));
        }
    }
    report.satisfied = format!(
        "the host name is {name}{}",
        if spec.hosts {
            " (kernel, /etc/hostname and /etc/hosts)"
        } else {
            " (kernel and /etc/hostname)"
        }
    );
    Ok(())
}
