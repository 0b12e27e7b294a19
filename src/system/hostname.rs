//! The host name: the kernel's (per UTS namespace), `/etc/hostname`, and
//! the `127.0.1.1` line of `/etc/hosts`.

use std::path::Path;

use super::OsError;

pub const HOSTNAME_FILE: &str = "/etc/hostname";
pub const HOSTS_FILE: &str = "/etc/hosts";

/// The address Debian and Ubuntu give the machine's own name in /etc/hosts.
const SELF_ADDRESS: &str = "127.0.1.1";

/// The inode of the initial (the host's) UTS namespace, fixed by the
/// kernel (`PROC_UTS_INIT_INO`).
const HOST_UTS_INODE: u64 = 0xEFFF_FFFE;

/// The kernel's host name.
pub fn kernel() -> Result<String, OsError> {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .map_err(|err| OsError::Read {
            path: "the kernel host name".into(),
            source: err.into(),
        })
}

/// Sets the kernel's host name (of this UTS namespace).
pub fn set_kernel(name: &str) -> Result<(), OsError> {
    nix::unistd::sethostname(name).map_err(|err| OsError::Hostname {
        name: name.to_string(),
        source: err.into(),
    })
}

/// Why the host name must be left alone, if it must: inside a container
/// that shares the host's UTS namespace, setting it would rename the host.
pub fn shared_with_host() -> Option<String> {
    let uts = std::fs::metadata("/proc/self/ns/uts").ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    let container = container_marker(
        Path::new("/.dockerenv").exists(),
        Path::new("/run/.containerenv").exists(),
        std::env::var("container").ok().as_deref(),
    );
    decide_shared(container.as_deref(), uts)
}

/// The evidence that this is a container, if any.
fn container_marker(dockerenv: bool, containerenv: bool, env: Option<&str>) -> Option<String> {
    if dockerenv {
        Some("/.dockerenv exists".into())
    } else if containerenv {
        Some("/run/.containerenv exists".into())
    } else {
        env.filter(|v| !v.is_empty())
            .map(|v| format!("$container is `{v}`"))
    }
}

fn decide_shared(container: Option<&str>, uts_inode: Option<u64>) -> Option<String> {
    match (container, uts_inode) {
        (Some(evidence), Some(HOST_UTS_INODE)) => Some(format!(
            "this is a container ({evidence}) that shares the host's UTS namespace: setting the host name would rename the host"
        )),
        _ => None,
    }
}

/// `/etc/hosts` with one `127.0.1.1 FQDN NAME` line (replacing the
/// earlier ones at the first one's place, else appended); other lines as
/// they were. `None` when it already is so.
pub fn hosts_with(text: &str, name: &str, fqdn: Option<&str>) -> Option<String> {
    let entry = match fqdn {
        Some(fqdn) if fqdn != name => format!("{SELF_ADDRESS}\t{fqdn} {name}"),
        _ => format!("{SELF_ADDRESS}\t{name}"),
    };
    let is_self = |line: &str| line.split_whitespace().next() == Some(SELF_ADDRESS);
    let mut out = String::new();
    let mut placed = false;
    for line in text.lines() {
        if is_self(line) {
            if !placed {
                out.push_str(&entry);
                out.push('\n');
                placed = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !placed {
        out.push_str(&entry);
        out.push('\n');
    }
    (out != text).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_gets_one_entry_and_keeps_the_rest() {
        let text =
            "127.0.0.1\tlocalhost\n127.0.1.1\told.example old\n::1 localhost ip6-localhost\n";
        let new = hosts_with(text, "web-1", Some("web-1.example.internal")).unwrap();
        assert_eq!(
            new,
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb-1.example.internal web-1\n::1 localhost ip6-localhost\n"
        );
        assert_eq!(
            hosts_with(&new, "web-1", Some("web-1.example.internal")),
            None
        );
        assert_eq!(
            hosts_with("127.0.0.1 localhost", "a", None).unwrap(),
            "127.0.0.1 localhost\n127.0.1.1\ta\n"
        );
    }

    #[test]
    fn only_a_container_in_the_hosts_namespace_is_left_alone() {
        assert!(decide_shared(Some("/.dockerenv exists"), Some(HOST_UTS_INODE)).is_some());
        assert!(decide_shared(Some("/.dockerenv exists"), Some(4026532000)).is_none());
        assert!(
            decide_shared(None, Some(HOST_UTS_INODE)).is_none(),
            "the host itself"
        );
        assert_eq!(
            container_marker(false, false, Some("podman")).as_deref(),
            Some("$container is `podman`")
        );
        assert!(container_marker(false, false, Some("")).is_none());
    }
}
