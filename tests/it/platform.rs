//! Platform signals of the verdict (`report:`): CloudFormation
//! `SignalResource`, EC2 Auto Scaling `CompleteLifecycleAction`, the Azure
//! wireserver health report and GCE guest attributes, on success, on a
//! failed step and on the deadline.
//!
//! Peers: moto (5.2.5, in `.tools`) implements neither `SignalResource` nor
//! `CompleteLifecycleAction` (its `cloudformation/responses.py` and
//! `autoscaling/responses.py` have no such action), so both AWS calls go to
//! a loopback fixture of the documented query API (form body in, XML out),
//! which records each request; the test recomputes its SigV4 signature
//! with the credentials the IMDSv2 fixture handed out. The Azure wireserver
//! and the GCE metadata server are loopback fixtures of their documented
//! protocols (`x-ms-version: 2012-11-30`; `Metadata-Flavor: Google`).

use std::collections::HashMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use crate::facts::{AWS_TOKEN, MetadataServer, Req, aws_handler, ok, reply, status};
use crate::harness::{Sandbox, code, dump};

const ACCESS_KEY: &str = "ASIAPLATFORMFIXTURE1";
const SECRET_KEY: &str = "platformFixtureSecretKey/0123456789abcdef";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEPlatformFixtureSessionToken==";
const INSTANCE_ID: &str = "i-1234567890abcdef0";
const HOOK_TOKEN: &str = "071a0d5e-0000-4000-8000-00000000a11c";

/// IMDSv2 with an instance role: the facts fixture's answers plus the
/// role's credentials (IMDSv2 session token required, as on EC2).
fn imds() -> MetadataServer {
    MetadataServer::start(|req, seen| {
        let base = "/latest/meta-data/iam/security-credentials/";
        if let Some(role) = req.path().strip_prefix(base) {
            if req.header("x-aws-ec2-metadata-token") != Some(AWS_TOKEN) {
                return status(401);
            }
            return match role {
                "" => ok("platform-role"),
                "platform-role" => ok(format!(
                    r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{ACCESS_KEY}","SecretAccessKey":"{SECRET_KEY}","Token":"{SESSION_TOKEN}","Expiration":"2099-01-01T00:00:00Z"}}"#
                )),
                _ => status(404),
            };
        }
        aws_handler(req, seen)
    })
}

/// The form fields of a query-protocol request.
fn form(req: &Req) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(&req.body).into_owned();
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// How the AWS fixture answers.
#[derive(Clone, Copy, PartialEq)]
enum AwsMode {
    /// Both actions succeed.
    Accept,
    /// `SignalResource` answers 503 once, then succeeds; `CompleteLifecycleAction`
    /// answers the documented 400 `ValidationError` (no lifecycle action pending).
    Refuse,
}

/// The CloudFormation and Auto Scaling query APIs, as documented: a signed
/// form POST to `/`, an XML answer with the request id.
fn aws_api(mode: AwsMode) -> MetadataServer {
    let signals = Arc::new(AtomicUsize::new(0));
    MetadataServer::start(move |req, _| {
        if req.method != "POST" || req.path() != "/" {
            return status(404);
        }
        if !req
            .header("authorization")
            .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 "))
        {
            return reply(
                403,
                "<ErrorResponse><Error><Type>Sender</Type><Code>MissingAuthenticationToken</Code><Message>Request is missing Authentication Token</Message></Error></ErrorResponse>",
            );
        }
        let fields = form(req);
        match fields.get("Action").map(String::as_str) {
            Some("SignalResource") => {
                if mode == AwsMode::Refuse && signals.fetch_add(1, Ordering::SeqCst) == 0 {
                    return status(503);
                }
                ok(
                    "<SignalResourceResponse xmlns=\"http://cloudformation.amazonaws.com/doc/2010-05-15/\">\
                     <ResponseMetadata><RequestId>cfn-req-1</RequestId></ResponseMetadata></SignalResourceResponse>",
                )
            }
            Some("CompleteLifecycleAction") if mode == AwsMode::Refuse => reply(
                400,
                format!(
                    "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><Error><Type>Sender</Type>\
                     <Code>ValidationError</Code><Message>No active Lifecycle Action found with instance ID {INSTANCE_ID}</Message>\
                     </Error><RequestId>asg-req-2</RequestId></ErrorResponse>"
                ),
            ),
            Some("CompleteLifecycleAction") => ok(
                "<CompleteLifecycleActionResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
                 <CompleteLifecycleActionResult/><ResponseMetadata><RequestId>asg-req-1</RequestId></ResponseMetadata>\
                 </CompleteLifecycleActionResponse>",
            ),
            _ => status(400),
        }
    })
}

/// Recomputes the request's SigV4 signature (AWS's algorithm, through
/// `aws-sigv4`) from what arrived: the credentials the instance role gave,
/// `region` and `service`, the request's own `X-Amz-Date`, URL and body.
fn assert_signed(req: &Req, url: &str, region: &str, service: &str) {
    let auth = req
        .header("authorization")
        .expect("an Authorization header");
    let date = req.header("x-amz-date").expect("an X-Amz-Date header");
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{}/{region}/{service}/aws4_request, ",
            &date[..8]
        )),
        "{auth}"
    );
    assert_eq!(
        req.header("x-amz-security-token"),
        Some(SESSION_TOKEN),
        "the instance role's session token is sent"
    );
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15]
    );
    let time: SystemTime = humantime::parse_rfc3339(&rfc3339).expect("X-Amz-Date");
    let identity = aws_credential_types::Credentials::new(
        ACCESS_KEY,
        SECRET_KEY,
        Some(SESSION_TOKEN.into()),
        None,
        "test",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let content_type = req.header("content-type").expect("a content type");
    let signable = aws_sigv4::http_request::SignableRequest::new(
        "POST",
        url,
        [("content-type", content_type)].into_iter(),
        aws_sigv4::http_request::SignableBody::Bytes(&req.body),
    )
    .unwrap();
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
        .unwrap()
        .into_parts();
    let expected = instructions
        .headers()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_string());
    assert_eq!(
        expected.as_deref(),
        Some(auth),
        "the signature matches the body"
    );
}

/// `bootplan run` with facts from the IMDS fixture (provider aws) and no
/// AWS settings from the test's own environment.
fn run(sb: &Sandbox, imds: &MetadataServer, extra: &[&str]) -> Output {
    let mut cmd = sb.cmd();
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_CLOUDFORMATION",
        "AWS_ENDPOINT_URL_AUTO_SCALING",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("BOOTPLAN_METADATA_URL_AWS", imds.url())
        .args(["run", "plan.yaml"])
        .args(extra)
        .output()
        .expect("run bootplan")
}

fn aws_plan(imds: &MetadataServer, api: &MetadataServer, steps: &str) -> String {
    format!(
        "version: 1\nname: platform\nfacts: {{ provider: aws }}\n\
         backends:\n  aws:\n    endpoints: {{ imds: \"{imds}\" }}\n\
         report:\n  timeout: 2s\n  attempts: 3\n\
         \x20 cloudformation: {{ stack: web-prod, resource: WebASG, endpoint: \"{api}\" }}\n\
         \x20 autoscaling: {{ group: web-asg, hook: launch-hook, token: {HOOK_TOKEN}, region: us-east-1, endpoint: \"{api}\" }}\n\
         steps:\n{steps}",
        imds = imds.url(),
        api = api.url(),
    )
}

/// The request of `action` the fixture received (the last one).
fn action(api: &MetadataServer, action: &str) -> Req {
    api.requests()
        .into_iter()
        .rfind(|r| form(r).get("Action").map(String::as_str) == Some(action))
        .unwrap_or_else(|| panic!("no {action} request"))
}

#[test]
fn aws_signals_are_signed_with_instance_role_credentials_on_success_and_failure() {
    // Ready: SUCCESS and CONTINUE.
    let (imds, api) = (imds(), aws_api(AwsMode::Accept));
    let sb = Sandbox::new();
    sb.plan(&aws_plan(&imds, &api, "  ok: { run: [\"true\"] }\n"));
    let out = run(&sb, &imds, &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let url = format!("{}/", api.url());

    let cfn = action(&api, "SignalResource");
    let fields = form(&cfn);
    assert_eq!(fields["Version"], "2010-05-15");
    assert_eq!(fields["StackName"], "web-prod");
    assert_eq!(fields["LogicalResourceId"], "WebASG");
    assert_eq!(fields["UniqueId"], INSTANCE_ID, "the facts' instance id");
    assert_eq!(fields["Status"], "SUCCESS");
    // No region in the plan or the environment: the facts' (us-west-2).
    assert_signed(&cfn, &url, "us-west-2", "cloudformation");

    let asg = action(&api, "CompleteLifecycleAction");
    let fields = form(&asg);
    assert_eq!(fields["Version"], "2011-01-01");
    assert_eq!(fields["AutoScalingGroupName"], "web-asg");
    assert_eq!(fields["LifecycleHookName"], "launch-hook");
    assert_eq!(fields["InstanceId"], INSTANCE_ID);
    assert_eq!(fields["LifecycleActionToken"], HOOK_TOKEN);
    assert_eq!(fields["LifecycleActionResult"], "CONTINUE");
    assert_signed(&asg, &url, "us-east-1", "autoscaling");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cloudformation signal sent: SUCCESS for web-prod/WebASG (i-1234567890abcdef0) (request cfn-req-1)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(SECRET_KEY) && !stderr.contains(SESSION_TOKEN),
        "{stderr}"
    );

    // A failed step: FAILURE and ABANDON, and the run's own exit code.
    let (imds, api) = (self::imds(), aws_api(AwsMode::Accept));
    let sb = Sandbox::new();
    sb.plan(&aws_plan(
        &imds,
        &api,
        "  migrate: { run: [\"sh\", \"-c\", \"exit 3\"] }\n",
    ));
    let out = run(&sb, &imds, &[]);
    assert_eq!(code(&out), 1, "{}", dump(&out));
    let url = format!("{}/", api.url());
    let cfn = action(&api, "SignalResource");
    assert_eq!(form(&cfn)["Status"], "FAILURE");
    assert_signed(&cfn, &url, "us-west-2", "cloudformation");
    let asg = action(&api, "CompleteLifecycleAction");
    assert_eq!(form(&asg)["LifecycleActionResult"], "ABANDON");
    assert_signed(&asg, &url, "us-east-1", "autoscaling");
    assert_eq!(
        sb.status()["error"]["code"],
        "step.exit_nonzero",
        "the verdict is the step's"
    );
}

#[test]
fn an_undelivered_signal_is_retried_logged_and_counted_but_never_changes_the_verdict() {
    let (imds, api) = (imds(), aws_api(AwsMode::Refuse));
    let sb = Sandbox::new();
    sb.plan(&aws_plan(&imds, &api, "  ok: { run: [\"true\"] }\n"));
    let out = run(&sb, &imds, &["--metrics-textfile", "signals.prom"]);
    assert_eq!(code(&out), 0, "still ready: {}", dump(&out));
    assert_eq!(sb.status()["outcome"], "ready");
    let actions: Vec<String> = api
        .requests()
        .iter()
        .filter_map(|r| form(r).get("Action").cloned())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "SignalResource").count(),
        2,
        "a 503, then a retry that succeeded: {actions:?}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "CompleteLifecycleAction")
            .count(),
        1,
        "a 400 ValidationError is not retried: {actions:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: autoscaling signal to")
            && stderr.contains("failed after 1 attempt(s): HTTP 400 ValidationError: No active Lifecycle Action found with instance ID i-1234567890abcdef0 (the verdict stands)"),
        "{stderr}"
    );
    let metrics = sb.read("signals.prom");
    for line in [
        "bootplan_platform_signals_total{plan=\"platform\",platform=\"autoscaling\",result=\"failed\"} 1",
        "bootplan_platform_signals_total{plan=\"platform\",platform=\"cloudformation\",result=\"sent\"} 1",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
}

const GOAL_STATE: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
<GoalState xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:noNamespaceSchemaLocation=\"goalstate10.xsd\">\n\
  <Version>2012-11-30</Version>\n  <Incarnation>2</Incarnation>\n\
  <Machine><ExpectedState>Started</ExpectedState><StopRolesDeadlineHint>300000</StopRolesDeadlineHint></Machine>\n\
  <Container>\n    <ContainerId>7e1b8a3c-5d0f-4c1e-9a6e-2f4d3c2b1a00</ContainerId>\n\
    <RoleInstanceList><RoleInstance><InstanceId>b2a1c3d4e5f6.vm-web-1</InstanceId><State>Started</State></RoleInstance></RoleInstanceList>\n\
  </Container>\n</GoalState>\n";

/// The wireserver: the goal state and the health report, both only with
/// `x-ms-version` (it answers 400 without, as the real one does).
fn wireserver() -> MetadataServer {
    MetadataServer::start(|req, _| {
        if req.header("x-ms-version") != Some("2012-11-30") {
            return status(400);
        }
        match (req.method.as_str(), req.target.as_str()) {
            ("GET", "/machine/?comp=goalstate") => ok(GOAL_STATE),
            ("POST", "/machine?comp=health")
                if req
                    .header("content-type")
                    .is_some_and(|t| t.starts_with("text/xml")) =>
            {
                ok("")
            }
            _ => status(404),
        }
    })
}

fn health_report(server: &MetadataServer) -> HealthDoc {
    let req = server
        .requests()
        .into_iter()
        .rfind(|r| r.target == "/machine?comp=health")
        .expect("a health report");
    HealthDoc(String::from_utf8(req.body).expect("UTF-8"))
}

/// A health document as the wireserver received it.
struct HealthDoc(String);

impl HealthDoc {
    fn text(&self, name: &str) -> Option<String> {
        let doc = roxmltree::Document::parse(&self.0).expect("the health report is XML");
        doc.descendants()
            .find(|n| n.tag_name().name() == name)
            .and_then(|n| n.text())
            .map(str::to_string)
    }
}

#[test]
fn azure_health_report_says_ready_or_provisioning_failed_with_the_reason() {
    let plan = |url: &str, steps: &str| {
        format!(
            "version: 1\nname: platform\nreport:\n  azure: {{ endpoint: \"{url}\" }}\nsteps:\n{steps}"
        )
    };
    let server = wireserver();
    let sb = Sandbox::new();
    sb.plan(&plan(&server.url(), "  ok: { run: [\"true\"] }\n"));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let doc = health_report(&server);
    assert_eq!(doc.text("GoalStateIncarnation").as_deref(), Some("2"));
    assert_eq!(
        doc.text("ContainerId").as_deref(),
        Some("7e1b8a3c-5d0f-4c1e-9a6e-2f4d3c2b1a00")
    );
    assert_eq!(
        doc.text("InstanceId").as_deref(),
        Some("b2a1c3d4e5f6.vm-web-1")
    );
    assert_eq!(doc.text("State").as_deref(), Some("Ready"));
    assert_eq!(doc.text("SubStatus"), None);

    let server = wireserver();
    let sb = Sandbox::new();
    sb.plan(&plan(
        &server.url(),
        "  migrate: { run: [\"sh\", \"-c\", \"exit 3\"] }\n",
    ));
    let out = sb.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    let doc = health_report(&server);
    assert_eq!(doc.text("State").as_deref(), Some("NotReady"));
    assert_eq!(doc.text("SubStatus").as_deref(), Some("ProvisioningFailed"));
    let description = doc.text("Description").unwrap_or_default();
    assert!(
        description.starts_with("step.exit_nonzero (step migrate): ")
            && description.contains("exited with status 3"),
        "{description}"
    );
    assert!(
        server
            .requests()
            .iter()
            .position(|r| r.target == "/machine/?comp=goalstate")
            < server
                .requests()
                .iter()
                .position(|r| r.target == "/machine?comp=health"),
        "the goal state is read first"
    );
}

/// The GCE metadata server's guest attributes: PUT only with
/// `Metadata-Flavor: Google` (403 without, as the real one does).
fn gce() -> MetadataServer {
    MetadataServer::start(|req, _| {
        if req.header("metadata-flavor") != Some("Google") {
            return status(403);
        }
        if req.method == "PUT"
            && req
                .path()
                .starts_with("/computeMetadata/v1/instance/guest-attributes/")
        {
            ok("")
        } else {
            status(404)
        }
    })
}

fn guest_attribute(server: &MetadataServer, path: &str) -> String {
    let req = server
        .requests()
        .into_iter()
        .rfind(|r| r.path() == path)
        .unwrap_or_else(|| panic!("no PUT of {path}"));
    String::from_utf8(req.body).unwrap()
}

#[test]
fn gce_guest_attribute_holds_the_verdict_on_success_and_deadline() {
    let server = gce();
    let sb = Sandbox::new();
    sb.plan(&format!(
        "version: 1\nname: platform\nreport:\n  gce_guest_attributes: {{ namespace: boot, key: state, endpoint: \"{}\" }}\nsteps:\n  ok: {{ run: [\"true\"] }}\n",
        server.url()
    ));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        guest_attribute(
            &server,
            "/computeMetadata/v1/instance/guest-attributes/boot/state"
        ),
        "ready"
    );

    let server = gce();
    let sb = Sandbox::new();
    sb.plan(&format!(
        "version: 1\nname: platform\ndeadline: 1s\nkill_grace: 200ms\nreport:\n  gce_guest_attributes: {{ endpoint: \"{}\" }}\nsteps:\n  slow: {{ run: [\"sleep\", \"10\"] }}\n",
        server.url()
    ));
    let out = sb.run();
    assert_eq!(code(&out), 75, "{}", dump(&out));
    assert_eq!(
        guest_attribute(
            &server,
            "/computeMetadata/v1/instance/guest-attributes/bootplan/verdict"
        ),
        "deadline_exceeded:deadline.exceeded"
    );
}

#[test]
fn a_bad_signal_section_is_refused_before_anything_is_sent() {
    let (imds, api) = (imds(), aws_api(AwsMode::Accept));
    let sb = Sandbox::new();
    sb.plan(&format!(
        "version: 1\nname: platform\nreport:\n  autoscaling: {{ group: web, hook: \"launch hook\", endpoint: \"{}\" }}\n  cloudformation: {{ stack: web, resource: WebASG, endpoint: \"http://cfn.example.com\" }}\nsteps:\n  ok: {{ run: [\"touch\", \"ran\"] }}\n",
        api.url()
    ));
    let out = run(&sb, &imds, &[]);
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "report.autoscaling.hook",
        "report.cloudformation.endpoint",
        "plain http to cfn.example.com",
    ] {
        assert!(text.contains(expected), "missing `{expected}`: {text}");
    }
    assert!(api.requests().is_empty(), "nothing sent");
    assert!(!sb.path().join("ran").exists(), "nothing ran");
}
