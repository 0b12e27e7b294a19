//! CloudFormation `SignalResource` and EC2 Auto Scaling
//! `CompleteLifecycleAction`: AWS query-protocol POSTs (form bodies, XML
//! answers), SigV4-signed with the credentials and region of the secrets
//! layer's AWS chain (environment, web identity, container endpoint, the
//! instance role through IMDSv2), signed again for every attempt.
//!
//! Endpoints: the signal's `endpoint`, then `AWS_ENDPOINT_URL_CLOUDFORMATION`
//! / `AWS_ENDPOINT_URL_AUTO_SCALING`, then `AWS_ENDPOINT_URL`, then AWS's
//! regional endpoint.

use super::{Context, Net, SignalError, Verdict};
use crate::plan::report::PlatformSignal;
use crate::secrets::SecretError;
use crate::secrets::aws::AwsClient;

/// One query-protocol call, before signing.
struct Call {
    platform: &'static str,
    /// The SigV4 signing name, also the endpoint's host prefix.
    service: &'static str,
    endpoint_env: &'static str,
    region: Option<String>,
    endpoint: Option<String>,
    /// `Action`, `Version`, then the parameters, in order.
    params: Vec<(&'static str, String)>,
    /// What the call says, for the log.
    summary: String,
}

pub(super) async fn send(
    signal: &PlatformSignal,
    verdict: &Verdict,
    ctx: &Context,
    net: &Net,
) -> Result<String, SignalError> {
    let call = match signal {
        PlatformSignal::CloudFormation {
            stack,
            resource,
            unique_id,
            region,
            endpoint,
        } => {
            let status = if verdict.ready { "SUCCESS" } else { "FAILURE" };
            // The instance id is the unique id CloudFormation expects from
            // an instance of an Auto Scaling group; the bootstrap id is
            // unique per run elsewhere.
            let unique_id = unique_id
                .clone()
                .or_else(|| ctx.identity.instance_id.clone())
                .unwrap_or_else(|| ctx.identity.bootstrap_id.clone());
            Call {
                platform: signal.platform(),
                service: "cloudformation",
                endpoint_env: "AWS_ENDPOINT_URL_CLOUDFORMATION",
                region: region.clone(),
                endpoint: endpoint.clone(),
                summary: format!("{status} for {stack}/{resource} ({unique_id})"),
                params: vec![
                    ("Action", "SignalResource".into()),
                    ("Version", "2010-05-15".into()),
                    ("StackName", stack.clone()),
                    ("LogicalResourceId", resource.clone()),
                    ("UniqueId", unique_id),
                    ("Status", status.into()),
                ],
            }
        }
        PlatformSignal::AutoScaling {
            group,
            hook,
            instance_id,
            token,
            region,
            endpoint,
        } => {
            let result = if verdict.ready { "CONTINUE" } else { "ABANDON" };
            let Some(instance_id) = instance_id
                .clone()
                .or_else(|| ctx.identity.instance_id.clone())
            else {
                return Err(SignalError::NotSent {
                    platform: signal.platform(),
                    detail:
                        "no instance id: the facts have none; set `report.autoscaling.instance_id`"
                            .into(),
                });
            };
            let mut params = vec![
                ("Action", "CompleteLifecycleAction".into()),
                ("Version", "2011-01-01".into()),
                ("AutoScalingGroupName", group.clone()),
                ("LifecycleHookName", hook.clone()),
                ("InstanceId", instance_id.clone()),
                ("LifecycleActionResult", result.into()),
            ];
            if let Some(token) = token {
                params.push(("LifecycleActionToken", token.clone()));
            }
            Call {
                platform: signal.platform(),
                service: "autoscaling",
                endpoint_env: "AWS_ENDPOINT_URL_AUTO_SCALING",
                region: region.clone(),
                endpoint: endpoint.clone(),
                summary: format!("{result} for {instance_id} in {group} (hook {hook})"),
                params,
            }
        }
        _ => unreachable!("aws::send is called for AWS signals only"),
    };
    call.send(ctx, net).await
}

impl Call {
    async fn send(self, ctx: &Context, net: &Net) -> Result<String, SignalError> {
        let platform = self.platform;
        let not_sent = |err: SecretError| SignalError::NotSent {
            platform,
            detail: detail(err),
        };
        let mut config = ctx.aws.clone().unwrap_or_default();
        if self.region.is_some() {
            config.region = self.region.clone();
        }
        let name = format!("report.{platform}");
        let client = AwsClient::new(
            &config,
            ctx.identity.region.clone(),
            ctx.redactor.clone(),
            None,
            None,
        )
        .map_err(|detail| SignalError::NotSent { platform, detail })?;
        let region = client.resolved_region(&name).await.map_err(not_sent)?;
        let url = self
            .endpoint
            .clone()
            .or_else(|| std::env::var(self.endpoint_env).ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .map(|e| format!("{}/", e.trim_end_matches('/')))
            .unwrap_or_else(|| format!("https://{}.{region}.amazonaws.com/", self.service));
        let http = crate::secrets::http::client(None, false, false, Some(&url))
            .map_err(|detail| SignalError::NotSent { platform, detail })?;
        let body = form(&self.params);
        let (client, http, body, name, region, url_ref) =
            (&client, &http, &body, &name, &region, &url);
        let service = self.service;
        let answer = net
            .send(platform, &url, throttled, || async move {
                let headers = client
                    .signed_form_post(name, service, url_ref, region, body.as_bytes())
                    .await
                    .map_err(|err| SignalError::NotSent {
                        platform,
                        detail: detail(err),
                    })?;
                let mut request = http.post(url_ref).body(body.clone());
                for (key, value) in headers {
                    let mut value =
                        reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                            SignalError::NotSent {
                                platform,
                                detail: format!("the signed header {key} is not valid"),
                            }
                        })?;
                    if key.eq_ignore_ascii_case("authorization")
                        || key.eq_ignore_ascii_case("x-amz-security-token")
                    {
                        value.set_sensitive(true);
                    }
                    request = request.header(key, value);
                }
                Ok(request)
            })
            .await
            .map_err(|err| match err {
                SignalError::Undelivered {
                    platform,
                    url,
                    attempts,
                    last,
                } => SignalError::Undelivered {
                    platform,
                    url,
                    attempts,
                    last: aws_error(&last).unwrap_or(last),
                },
                other => other,
            })?;
        let request_id = super::xml_text(&answer, "RequestId")
            .map(|id| format!(" (request {id})"))
            .unwrap_or_default();
        Ok(format!("{}{request_id}", self.summary))
    }
}

/// AWS answers throttling with HTTP 400 and the code `Throttling`: worth
/// another try, unlike the other 400s.
fn throttled(status: u16, body: &str) -> bool {
    status == 400
        && super::xml_text(body, "Code")
            .is_some_and(|code| code == "Throttling" || code == "ThrottlingException")
}

/// `HTTP 400: <ErrorResponse>…` as `HTTP 400 ValidationError: message`.
fn aws_error(last: &str) -> Option<String> {
    let (status, body) = last.split_once(": ")?;
    let code = super::xml_text(body, "Code")?;
    let message = super::xml_text(body, "Message").unwrap_or_default();
    Some(format!("{status} {code}: {message}"))
}

/// The secret layer's error, without its "secret `…`" framing.
fn detail(err: SecretError) -> String {
    match err {
        SecretError::Unreachable { detail, .. }
        | SecretError::AuthFailed { detail, .. }
        | SecretError::Denied { detail, .. }
        | SecretError::NotFound { detail, .. }
        | SecretError::FileWrite { detail, .. } => detail,
    }
}

/// An `application/x-www-form-urlencoded` body (RFC 3986 unreserved
/// characters as they are, everything else percent-encoded, as SigV4 wants).
fn form(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_percent_encode_everything_but_unreserved() {
        let body = form(&[
            (
                "StackName",
                "arn:aws:cloudformation:us-east-1:1:stack/a b/x".into(),
            ),
            ("Status", "SUCCESS".into()),
        ]);
        assert_eq!(
            body,
            "StackName=arn%3Aaws%3Acloudformation%3Aus-east-1%3A1%3Astack%2Fa%20b%2Fx&Status=SUCCESS"
        );
    }

    #[test]
    fn aws_errors_are_read_from_their_xml() {
        let body = "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code>\
                    <Message>No active Lifecycle Action found</Message></Error></ErrorResponse>";
        assert_eq!(
            aws_error(&format!("HTTP 400: {body}")).as_deref(),
            Some("HTTP 400 ValidationError: No active Lifecycle Action found")
        );
        assert!(!throttled(400, body));
        assert!(throttled(
            400,
            "<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>"
        ));
    }
}
