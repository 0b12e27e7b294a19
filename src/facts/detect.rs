//! Detection without probing: decide which provider to ask from local
//! evidence alone. Reads a few small files; never opens a socket.
//!
//! In order, the first match wins:
//! 1. the kernel command line names NoCloud (`ds=nocloud`, `ds=nocloud;s=...`);
//! 2. DMI strings (sys_vendor, product_name, bios_vendor, chassis_asset_tag,
//!    board_vendor, product_version, bios_version, product_uuid, product_serial)
//!    name a platform, with the values cloud-init's ds-identify and afterburn use;
//! 3. an attached config drive: filesystem label `config-2` (OpenStack) or
//!    `cidata` (NoCloud);
//! 4. a NoCloud seed directory with a `meta-data` file.
//!
//! To teach it a platform: add its DMI rule to [`dmi_rules`].

use std::path::Path;

use super::settings::{EvidencePaths, ProviderKind};

/// Azure's fixed chassis asset tag (all Azure VMs carry it).
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// The provider local evidence names, and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub kind: ProviderKind,
    pub evidence: String,
}

/// The DMI files read, in the order rules mention them.
const DMI_FIELDS: [&str; 9] = [
    "sys_vendor",
    "product_name",
    "bios_vendor",
    "chassis_asset_tag",
    "board_vendor",
    "product_version",
    "bios_version",
    "product_uuid",
    "product_serial",
];

/// Names the provider local evidence points at, if any.
pub fn detect(paths: &EvidencePaths) -> Option<Detected> {
    if let Some(found) = from_cmdline(&read_small(&paths.cmdline).unwrap_or_default()) {
        return Some(found);
    }
    // Containers and some VMs have no DMI directory: one look instead of
    // a failed open per field.
    let dmi: Vec<(&str, String)> = if paths.dmi_root.is_dir() {
        DMI_FIELDS
            .iter()
            .filter_map(|f| read_small(&paths.dmi_root.join(f)).map(|v| (*f, v)))
            .collect()
    } else {
        Vec::new()
    };
    if let Some(found) = from_dmi(&dmi) {
        return Some(found);
    }
    if let Some(found) = from_labels(&paths.labels_dir) {
        return Some(found);
    }
    paths
        .seed_dirs
        .iter()
        .find(|dir| dir.join("meta-data").is_file())
        .map(|dir| Detected {
            kind: ProviderKind::NoCloud,
            evidence: format!("seed directory {}", dir.display()),
        })
}

/// A small sysfs/procfs file, trimmed; `None` when absent or unreadable
/// (product_uuid and product_serial are root-only).
fn read_small(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `ds=nocloud` or `ds=nocloud-net`, optionally followed by `;key=value`.
pub fn from_cmdline(cmdline: &str) -> Option<Detected> {
    let arg = nocloud_cmdline_arg(cmdline)?;
    Some(Detected {
        kind: ProviderKind::NoCloud,
        evidence: format!("kernel command line `{arg}`"),
    })
}

/// The `ds=nocloud...` word of a kernel command line.
pub fn nocloud_cmdline_arg(cmdline: &str) -> Option<&str> {
    cmdline.split_whitespace().find(|word| {
        let Some(value) = word.strip_prefix("ds=") else {
            return false;
        };
        let ds = value.split(';').next().unwrap_or("");
        ds.eq_ignore_ascii_case("nocloud") || ds.eq_ignore_ascii_case("nocloud-net")
    })
}

type Rule = (ProviderKind, &'static str, fn(&str) -> bool);

/// (provider, DMI field, test on its value).
fn dmi_rules() -> [Rule; 14] {
    fn amazon(v: &str) -> bool {
        v.eq_ignore_ascii_case("Amazon EC2")
    }
    fn has_amazon(v: &str) -> bool {
        v.to_ascii_lowercase().contains("amazon")
    }
    fn ec2_uuid(v: &str) -> bool {
        v.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ec2"))
    }
    fn google(v: &str) -> bool {
        v == "Google" || v == "Google Compute Engine"
    }
    fn azure_tag(v: &str) -> bool {
        v == AZURE_ASSET_TAG
    }
    fn digitalocean(v: &str) -> bool {
        v == "DigitalOcean"
    }
    fn openstack_product(v: &str) -> bool {
        matches!(v, "OpenStack Nova" | "OpenStack Compute")
    }
    fn openstack_vendor(v: &str) -> bool {
        v == "OpenStack Foundation"
    }
    fn openstack_tag(v: &str) -> bool {
        matches!(v, "OpenTelekomCloud" | "SAP CCloud VM" | "HUAWEICLOUD")
    }
    fn nocloud_serial(v: &str) -> bool {
        v.starts_with("ds=nocloud")
    }
    [
        (ProviderKind::NoCloud, "product_serial", nocloud_serial),
        (ProviderKind::Aws, "sys_vendor", amazon),
        (ProviderKind::Aws, "bios_vendor", amazon),
        (ProviderKind::Aws, "bios_version", has_amazon),
        (ProviderKind::Aws, "product_version", has_amazon),
        (ProviderKind::Aws, "product_uuid", ec2_uuid),
        (ProviderKind::Gcp, "product_name", google),
        (ProviderKind::Gcp, "sys_vendor", google),
        (ProviderKind::Gcp, "bios_vendor", google),
        (ProviderKind::Azure, "chassis_asset_tag", azure_tag),
        (ProviderKind::DigitalOcean, "sys_vendor", digitalocean),
        (ProviderKind::OpenStack, "product_name", openstack_product),
        (ProviderKind::OpenStack, "sys_vendor", openstack_vendor),
        (ProviderKind::OpenStack, "chassis_asset_tag", openstack_tag),
    ]
}

/// Applies the DMI rules to (field, value) pairs.
pub fn from_dmi(dmi: &[(&str, String)]) -> Option<Detected> {
    dmi_rules().into_iter().find_map(|(kind, field, test)| {
        let value = dmi.iter().find(|(f, _)| *f == field).map(|(_, v)| v)?;
        test(value).then(|| Detected {
            kind,
            evidence: format!("DMI {field} \"{value}\""),
        })
    })
}

/// A config drive attached by its well-known filesystem label.
fn from_labels(dir: &Path) -> Option<Detected> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut labels: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    labels.sort();
    labels.iter().find_map(|label| {
        let kind = match label.to_ascii_lowercase().as_str() {
            "config-2" => ProviderKind::OpenStack,
            "cidata" => ProviderKind::NoCloud,
            _ => return None,
        };
        Some(Detected {
            kind,
            evidence: format!("config drive labelled {label} in {}", dir.display()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_in(dir: &Path) -> EvidencePaths {
        EvidencePaths {
            dmi_root: dir.join("dmi"),
            cmdline: dir.join("cmdline"),
            seed_dirs: vec![dir.join("seed")],
            labels_dir: dir.join("labels"),
            mounts: dir.join("mounts"),
        }
    }

    #[test]
    fn dmi_files_are_read_when_the_directory_exists_and_skipped_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path());
        assert_eq!(detect(&paths), None, "no DMI directory, no evidence");
        std::fs::create_dir(dir.path().join("seed")).unwrap();
        std::fs::write(dir.path().join("seed/meta-data"), "").unwrap();
        let found = detect(&paths).unwrap();
        assert_eq!(
            found.kind,
            ProviderKind::NoCloud,
            "later evidence still seen"
        );
        std::fs::create_dir(dir.path().join("dmi")).unwrap();
        std::fs::write(dir.path().join("dmi/sys_vendor"), "Amazon EC2\n").unwrap();
        assert_eq!(detect(&paths).unwrap().kind, ProviderKind::Aws);
    }

    fn dmi(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(f, v)| (*f, v.to_string())).collect()
    }

    #[test]
    fn dmi_names_each_platform() {
        let cases = [
            (dmi(&[("sys_vendor", "Amazon EC2")]), ProviderKind::Aws),
            (dmi(&[("bios_version", "4.11.amazon")]), ProviderKind::Aws),
            (
                dmi(&[("product_uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF")]),
                ProviderKind::Aws,
            ),
            (
                dmi(&[("product_name", "Google Compute Engine")]),
                ProviderKind::Gcp,
            ),
            (
                dmi(&[
                    ("sys_vendor", "Microsoft Corporation"),
                    ("chassis_asset_tag", AZURE_ASSET_TAG),
                ]),
                ProviderKind::Azure,
            ),
            (
                dmi(&[("sys_vendor", "DigitalOcean")]),
                ProviderKind::DigitalOcean,
            ),
            (
                dmi(&[("product_name", "OpenStack Nova")]),
                ProviderKind::OpenStack,
            ),
            (
                dmi(&[("product_serial", "ds=nocloud;s=file:///seed/")]),
                ProviderKind::NoCloud,
            ),
        ];
        for (fields, kind) in cases {
            assert_eq!(from_dmi(&fields).map(|d| d.kind), Some(kind), "{fields:?}");
        }
    }

    #[test]
    fn plain_hardware_and_bare_hyper_v_are_not_clouds() {
        assert_eq!(
            from_dmi(&dmi(&[
                ("sys_vendor", "QEMU"),
                ("product_name", "Standard PC")
            ])),
            None
        );
        assert_eq!(
            from_dmi(&dmi(&[
                ("sys_vendor", "Microsoft Corporation"),
                ("product_name", "Virtual Machine")
            ])),
            None
        );
    }

    #[test]
    fn cmdline_nocloud_forms() {
        assert!(from_cmdline("root=/dev/sda1 ds=nocloud quiet").is_some());
        assert!(from_cmdline("ds=nocloud;s=file:///var/seed/").is_some());
        assert!(from_cmdline("ds=nocloud-net;s=http://10.0.0.1:8000/").is_some());
        assert!(from_cmdline("root=/dev/sda1 ds=ec2 nodsnocloud").is_none());
    }
}
