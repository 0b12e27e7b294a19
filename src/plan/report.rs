//! `report:` — where the verdict goes off the machine: the webhook (the
//! final status document) and the platforms' own signals (CloudFormation
//! `SignalResource`, EC2 Auto Scaling `CompleteLifecycleAction`, the Azure
//! wireserver health report, GCE guest attributes). Raw types mirror the
//! file; [`resolve`] checks every field and returns the [`ReportSpec`]
//! with its problems, so nothing is sent for a plan with a bad section.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::{Diagnostic, Severity};
use super::duration::HumanDuration;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS: u32 = 3;
/// The Azure wireserver's fixed address.
pub const AZURE_WIRESERVER: &str = "http://168.63.129.16";
/// The GCE metadata server.
pub const GCE_METADATA: &str = "http://metadata.google.internal";

/// `report:` — send the final status off the machine.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    /// URL that receives the final status JSON as a POST.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Limit for each request (webhook and signals). Default 5s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Total tries of each destination, including the first. Default 3.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// CloudFormation `SignalResource`: SUCCESS when ready, FAILURE otherwise
    /// (for a `CreationPolicy` or `UpdatePolicy` waiting on this machine).
    #[serde(default)]
    pub cloudformation: Option<RawCloudFormation>,
    /// EC2 Auto Scaling `CompleteLifecycleAction`: CONTINUE when ready,
    /// ABANDON otherwise (for a launch lifecycle hook).
    #[serde(default)]
    pub autoscaling: Option<RawAutoScaling>,
    /// The Azure wireserver health report: Ready, or NotReady with
    /// `ProvisioningFailed` and the error code.
    #[serde(default)]
    pub azure: Option<RawAzure>,
    /// A GCE guest attribute with the verdict (`ready` or `failed:CODE`).
    #[serde(default)]
    pub gce_guest_attributes: Option<RawGceGuestAttributes>,
}

/// `report.cloudformation`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCloudFormation {
    /// The stack's name or ID (`StackName`).
    pub stack: String,
    /// The logical ID of the resource waiting for signals (`LogicalResourceId`).
    pub resource: String,
    /// `UniqueId` of the signal. Default: the instance id from the facts,
    /// else the run's bootstrap id.
    #[serde(default)]
    pub unique_id: Option<String>,
    /// Region. Default: `backends.aws.region`, `$AWS_REGION`, the facts, IMDS.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL. Default `https://cloudformation.REGION.amazonaws.com/`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `report.autoscaling`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAutoScaling {
    /// The Auto Scaling group (`AutoScalingGroupName`).
    pub group: String,
    /// The lifecycle hook (`LifecycleHookName`).
    pub hook: String,
    /// `InstanceId`. Default: the instance id from the facts.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `LifecycleActionToken`, when the hook's notification gave one.
    #[serde(default)]
    pub token: Option<String>,
    /// Region. Default: `backends.aws.region`, `$AWS_REGION`, the facts, IMDS.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL. Default `https://autoscaling.REGION.amazonaws.com/`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `report.azure`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAzure {
    /// The wireserver. Default `http://168.63.129.16`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `report.gce_guest_attributes`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGceGuestAttributes {
    /// The attribute's namespace. Default `bootplan`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The attribute's key. Default `verdict`.
    #[serde(default)]
    pub key: Option<String>,
    /// The metadata server. Default `http://metadata.google.internal`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Where the verdict goes, resolved.
#[derive(Debug, Clone)]
pub struct ReportSpec {
    pub webhook: Option<String>,
    pub timeout: Duration,
    pub attempts: u32,
    pub signals: Vec<PlatformSignal>,
}

impl ReportSpec {
    /// Only a webhook, with the default limits (`--report-url`).
    pub fn webhook(url: &str) -> ReportSpec {
        ReportSpec {
            webhook: Some(url.to_string()),
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            signals: Vec::new(),
        }
    }
}

/// One platform signal, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformSignal {
    CloudFormation {
        stack: String,
        resource: String,
        unique_id: Option<String>,
        region: Option<String>,
        endpoint: Option<String>,
    },
    AutoScaling {
        group: String,
        hook: String,
        instance_id: Option<String>,
        token: Option<String>,
        region: Option<String>,
        endpoint: Option<String>,
    },
    Azure {
        endpoint: String,
    },
    GceGuestAttribute {
        namespace: String,
        key: String,
        endpoint: String,
    },
}

impl PlatformSignal {
    /// The platform's name in logs and the `platform` metric label.
    pub fn platform(&self) -> &'static str {
        match self {
            PlatformSignal::CloudFormation { .. } => "cloudformation",
            PlatformSignal::AutoScaling { .. } => "autoscaling",
            PlatformSignal::Azure { .. } => "azure",
            PlatformSignal::GceGuestAttribute { .. } => "gce_guest_attributes",
        }
    }
}

/// Collects problems for one plan file (also the lifecycle sections').
pub(super) struct Problems<'a> {
    pub(super) file: &'a std::path::Path,
    pub(super) found: Vec<Diagnostic>,
}

impl Problems<'_> {
    pub(super) fn push(
        &mut self,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: Option<&str>,
    ) {
        self.found.push(Diagnostic {
            severity: Severity::Error,
            file: self.file.to_path_buf(),
            position: None,
            field: field.into(),
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }

    /// `value` must be 1..=`max` characters, each allowed by `ok`.
    fn text(
        &mut self,
        field: &str,
        value: &str,
        max: usize,
        ok: impl Fn(char) -> bool,
        allowed: &str,
    ) {
        if value.is_empty() {
            self.push(field, "must not be empty", None);
        } else if value.chars().count() > max {
            self.push(field, format!("longer than {max} characters"), None);
        } else if let Some(bad) = value.chars().find(|&c| !ok(c)) {
            self.push(
                field,
                format!("`{value}` has {bad:?}: only {allowed} are allowed"),
                None,
            );
        }
    }

    /// An endpoint: an http(s) URL with a host; with `signed`, plain http
    /// only to this machine (the session token travels in a header).
    fn endpoint(&mut self, field: &str, url: &str, signed: bool) {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            self.push(field, format!("`{url}` is not a URL"), None);
            return;
        };
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            self.push(field, format!("`{url}` is not an http(s) URL"), None);
            return;
        }
        if signed
            && let Err(message) = crate::http::credential_transport(url, false, "AWS credentials")
        {
            self.push(
                field,
                message.replace(", or set `insecure_http: true` to accept the risk", ""),
                Some("AWS endpoints are https; plain http is for a loopback test double"),
            );
        }
    }

    fn region(&mut self, field: &str, region: &str) {
        self.text(
            field,
            region,
            32,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
            "lower-case letters, digits and `-`",
        );
    }
}

/// Checks `report:` and resolves it.
pub fn resolve(file: &std::path::Path, raw: &RawReport) -> (ReportSpec, Vec<Diagnostic>) {
    let mut p = Problems {
        file,
        found: Vec::new(),
    };
    if let Some(url) = &raw.webhook
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        p.push(
            "report.webhook",
            format!("`{url}` is not an http(s) URL"),
            None,
        );
    }
    let attempts = raw.attempts.unwrap_or(DEFAULT_ATTEMPTS);
    if attempts == 0 || attempts > 10 {
        p.push(
            "report.attempts",
            "attempts must be between 1 and 10",
            Some("the report must not hold up the verdict for long"),
        );
    }
    let mut signals = Vec::new();
    if let Some(cf) = &raw.cloudformation {
        signals.push(cloudformation(cf, &mut p));
    }
    if let Some(asg) = &raw.autoscaling {
        signals.push(autoscaling(asg, &mut p));
    }
    if let Some(azure) = &raw.azure {
        let endpoint = trimmed(azure.endpoint.as_deref().unwrap_or(AZURE_WIRESERVER));
        p.endpoint("report.azure.endpoint", &endpoint, false);
        signals.push(PlatformSignal::Azure { endpoint });
    }
    if let Some(gce) = &raw.gce_guest_attributes {
        signals.push(gce_guest_attribute(gce, &mut p));
    }
    if raw.webhook.is_none() && signals.is_empty() {
        p.push(
            "report",
            "nothing to report to",
            Some(
                "set `webhook`, or a platform signal: `cloudformation`, `autoscaling`, `azure`, `gce_guest_attributes`",
            ),
        );
    }
    let spec = ReportSpec {
        webhook: raw.webhook.clone(),
        timeout: raw.timeout.map_or(DEFAULT_TIMEOUT, HumanDuration::get),
        attempts: attempts.clamp(1, 10),
        signals,
    };
    (spec, p.found)
}

fn trimmed(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

fn cloudformation(raw: &RawCloudFormation, p: &mut Problems) -> PlatformSignal {
    let field = "report.cloudformation";
    // A stack name (letters, digits, `-`, up to 128) or a stack ID (an ARN).
    if raw.stack.starts_with("arn:") {
        p.text(
            &format!("{field}.stack"),
            &raw.stack,
            256,
            |c| c.is_ascii_graphic(),
            "printable ASCII characters",
        );
    } else {
        p.text(
            &format!("{field}.stack"),
            &raw.stack,
            128,
            |c| c.is_ascii_alphanumeric() || c == '-',
            "letters, digits and `-`",
        );
    }
    p.text(
        &format!("{field}.resource"),
        &raw.resource,
        255,
        |c| c.is_ascii_alphanumeric(),
        "letters and digits (a logical ID)",
    );
    if let Some(id) = &raw.unique_id {
        p.text(
            &format!("{field}.unique_id"),
            id,
            64,
            |c| c.is_ascii_graphic(),
            "printable ASCII characters",
        );
    }
    if let Some(region) = &raw.region {
        p.region(&format!("{field}.region"), region);
    }
    if let Some(url) = &raw.endpoint {
        p.endpoint(&format!("{field}.endpoint"), url, true);
    }
    PlatformSignal::CloudFormation {
        stack: raw.stack.clone(),
        resource: raw.resource.clone(),
        unique_id: raw.unique_id.clone(),
        region: raw.region.clone(),
        endpoint: raw.endpoint.as_deref().map(trimmed),
    }
}

fn autoscaling(raw: &RawAutoScaling, p: &mut Problems) -> PlatformSignal {
    let field = "report.autoscaling";
    let name_chars = |c: char| c.is_ascii_graphic() || c == ' ';
    p.text(
        &format!("{field}.group"),
        &raw.group,
        255,
        name_chars,
        "printable characters",
    );
    p.text(
        &format!("{field}.hook"),
        &raw.hook,
        255,
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/'),
        "letters, digits, `-`, `_` and `/`",
    );
    if let Some(id) = &raw.instance_id {
        p.text(
            &format!("{field}.instance_id"),
            id,
            19,
            |c| c.is_ascii_alphanumeric() || c == '-',
            "letters, digits and `-` (an instance id, `i-...`)",
        );
    }
    if let Some(token) = &raw.token {
        p.text(
            &format!("{field}.token"),
            token,
            36,
            |c| c.is_ascii_hexdigit() || c == '-',
            "hex digits and `-` (a UUID)",
        );
    }
    if let Some(region) = &raw.region {
        p.region(&format!("{field}.region"), region);
    }
    if let Some(url) = &raw.endpoint {
        p.endpoint(&format!("{field}.endpoint"), url, true);
    }
    PlatformSignal::AutoScaling {
        group: raw.group.clone(),
        hook: raw.hook.clone(),
        instance_id: raw.instance_id.clone(),
        token: raw.token.clone(),
        region: raw.region.clone(),
        endpoint: raw.endpoint.as_deref().map(trimmed),
    }
}

fn gce_guest_attribute(raw: &RawGceGuestAttributes, p: &mut Problems) -> PlatformSignal {
    let field = "report.gce_guest_attributes";
    let namespace = raw.namespace.clone().unwrap_or_else(|| "bootplan".into());
    let key = raw.key.clone().unwrap_or_else(|| "verdict".into());
    let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    let allowed = "letters, digits, `-` and `_`";
    p.text(&format!("{field}.namespace"), &namespace, 63, word, allowed);
    p.text(&format!("{field}.key"), &key, 63, word, allowed);
    let endpoint = trimmed(raw.endpoint.as_deref().unwrap_or(GCE_METADATA));
    p.endpoint(&format!("{field}.endpoint"), &endpoint, false);
    PlatformSignal::GceGuestAttribute {
        namespace,
        key,
        endpoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawReport {
        serde_saphyr::from_str(yaml).expect("parses")
    }

    fn problems(yaml: &str) -> Vec<String> {
        let (_, found) = resolve(std::path::Path::new("/p/plan.yaml"), &raw(yaml));
        found
            .into_iter()
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect()
    }

    #[test]
    fn signals_resolve_with_their_defaults() {
        let (spec, found) = resolve(
            std::path::Path::new("/p/plan.yaml"),
            &raw(
                "cloudformation: { stack: web-prod, resource: WebASG, region: us-east-1, endpoint: \"http://127.0.0.1:5000/\" }\n\
                  autoscaling: { group: web, hook: launch }\n\
                  azure: {}\n\
                  gce_guest_attributes: {}\n",
            ),
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(spec.webhook, None);
        assert_eq!(
            spec.signals[0],
            PlatformSignal::CloudFormation {
                stack: "web-prod".into(),
                resource: "WebASG".into(),
                unique_id: None,
                region: Some("us-east-1".into()),
                endpoint: Some("http://127.0.0.1:5000".into()),
            }
        );
        assert_eq!(
            spec.signals[2],
            PlatformSignal::Azure {
                endpoint: AZURE_WIRESERVER.into()
            }
        );
        assert_eq!(
            spec.signals[3],
            PlatformSignal::GceGuestAttribute {
                namespace: "bootplan".into(),
                key: "verdict".into(),
                endpoint: GCE_METADATA.into()
            }
        );
        let names: Vec<_> = spec.signals.iter().map(PlatformSignal::platform).collect();
        assert_eq!(
            names,
            [
                "cloudformation",
                "autoscaling",
                "azure",
                "gce_guest_attributes"
            ]
        );
    }

    #[test]
    fn bad_signal_fields_are_named_by_their_path() {
        let text = problems(
            "cloudformation: { stack: \"my stack\", resource: Web-ASG, region: US_EAST, endpoint: \"http://cfn.example.com\" }\n\
             autoscaling: { group: \"\", hook: launch, instance_id: \"i-0123456789abcdef0123\", token: not-a-uuid! }\n\
             azure: { endpoint: \"ftp://x\" }\n\
             gce_guest_attributes: { namespace: \"a/b\" }\n",
        )
        .join("\n");
        for expected in [
            "report.cloudformation.stack: `my stack` has ' '",
            "report.cloudformation.resource: `Web-ASG` has '-'",
            "report.cloudformation.region: `US_EAST` has 'U'",
            "report.cloudformation.endpoint: refusing to send AWS credentials over plain http to cfn.example.com: use https://",
            "report.autoscaling.group: must not be empty",
            "report.autoscaling.instance_id: longer than 19 characters",
            "report.autoscaling.token: `not-a-uuid!` has 'n'",
            "report.azure.endpoint: `ftp://x` is not an http(s) URL",
            "report.gce_guest_attributes.namespace: `a/b` has '/'",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }

    #[test]
    fn a_report_with_no_destination_is_refused() {
        let text = problems("timeout: 2s\n").join("\n");
        assert!(text.contains("report: nothing to report to"), "{text}");
    }
}
