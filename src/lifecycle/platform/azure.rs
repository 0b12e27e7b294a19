//! The Azure wireserver health report, as the Linux agents send it: fetch
//! the goal state (`GET /machine/?comp=goalstate`) for its incarnation,
//! container id and role instance id, then `POST /machine?comp=health` a
//! `Health` document: `Ready`, or `NotReady` with the sub-status
//! `ProvisioningFailed` and the error as its description. Both with
//! `x-ms-version: 2012-11-30`. The wireserver is plain http on a fixed
//! link-local address and needs no credentials.

use super::{Net, SignalError, Verdict, xml_escape, xml_text};

const PROTOCOL_VERSION: &str = "2012-11-30";
const AGENT_NAME: &str = "bootplan";
/// The agents trim the description to this many characters.
const DESCRIPTION_MAX: usize = 512;

/// What the health report needs from the goal state.
#[derive(Debug, PartialEq, Eq)]
struct GoalState {
    incarnation: String,
    container_id: String,
    instance_id: String,
}

pub(super) async fn send(
    endpoint: &str,
    verdict: &Verdict,
    net: &Net,
) -> Result<String, SignalError> {
    let platform = "azure";
    let not_sent = |detail: String| SignalError::NotSent { platform, detail };
    let http = crate::secrets::http::client(None, false, true, Some(endpoint)).map_err(not_sent)?;
    let goal_url = format!("{endpoint}/machine/?comp=goalstate");
    let http = &http;
    let goal_url_ref = &goal_url;
    let answer = net
        .send(platform, &goal_url, never, || async move {
            Ok(http
                .get(goal_url_ref)
                .header("x-ms-version", PROTOCOL_VERSION)
                .header("x-ms-agent-name", AGENT_NAME))
        })
        .await?;
    let goal = goal_state(&answer).ok_or_else(|| SignalError::NotSent {
        platform,
        detail: format!(
            "{goal_url}: the goal state lacks Incarnation, ContainerId or InstanceId: {}",
            super::quote(&answer)
        ),
    })?;
    let document = health(&goal, verdict);
    let health_url = format!("{endpoint}/machine?comp=health");
    let (health_url_ref, document_ref) = (&health_url, &document);
    net.send(platform, &health_url, never, || async move {
        Ok(http
            .post(health_url_ref)
            .header("x-ms-version", PROTOCOL_VERSION)
            .header("x-ms-agent-name", AGENT_NAME)
            .header(reqwest::header::CONTENT_TYPE, "text/xml;charset=utf-8")
            .body(document_ref.clone()))
    })
    .await?;
    let state = if verdict.ready {
        "Ready"
    } else {
        "NotReady (ProvisioningFailed)"
    };
    Ok(format!(
        "{state} for role instance {} (incarnation {})",
        goal.instance_id, goal.incarnation
    ))
}

fn never(_: u16, _: &str) -> bool {
    false
}

fn goal_state(xml: &str) -> Option<GoalState> {
    Some(GoalState {
        incarnation: xml_text(xml, "Incarnation")?,
        container_id: xml_text(xml, "ContainerId")?,
        instance_id: xml_text(xml, "InstanceId")?,
    })
}

/// The `Health` document for `verdict`.
fn health(goal: &GoalState, verdict: &Verdict) -> String {
    let details = if verdict.ready {
        String::new()
    } else {
        let reason: String = verdict.reason().chars().take(DESCRIPTION_MAX).collect();
        format!(
            "\n          <Details>\n            <SubStatus>ProvisioningFailed</SubStatus>\n            <Description>{}</Description>\n          </Details>",
            xml_escape(&reason)
        )
    };
    let state = if verdict.ready { "Ready" } else { "NotReady" };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <GoalStateIncarnation>{}</GoalStateIncarnation>
  <Container>
    <ContainerId>{}</ContainerId>
    <RoleInstanceList>
      <Role>
        <InstanceId>{}</InstanceId>
        <Health>
          <State>{state}</State>{details}
        </Health>
      </Role>
    </RoleInstanceList>
  </Container>
</Health>
"#,
        xml_escape(&goal.incarnation),
        xml_escape(&goal.container_id),
        xml_escape(&goal.instance_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOAL: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GoalState xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
        <Version>2012-11-30</Version><Incarnation>3</Incarnation>\
        <Machine><ExpectedState>Started</ExpectedState></Machine>\
        <Container><ContainerId>c6d5e1f0-0000-4000-8000-000000000001</ContainerId>\
        <RoleInstanceList><RoleInstance><InstanceId>896f1d18.vm-1</InstanceId></RoleInstance></RoleInstanceList>\
        </Container></GoalState>";

    #[test]
    fn the_health_report_carries_the_goal_state_and_the_reason() {
        let goal = goal_state(GOAL).expect("parses");
        assert_eq!(goal.incarnation, "3");
        assert_eq!(goal.instance_id, "896f1d18.vm-1");
        let failed = Verdict {
            ready: false,
            outcome: "failed",
            code: Some("step.exit_nonzero"),
            message: Some("command `sh` exited 3 <stderr>".into()),
            failed_step: Some("migrate".into()),
        };
        let doc = health(&goal, &failed);
        assert_eq!(xml_text(&doc, "State").as_deref(), Some("NotReady"));
        assert_eq!(
            xml_text(&doc, "SubStatus").as_deref(),
            Some("ProvisioningFailed")
        );
        assert_eq!(
            xml_text(&doc, "Description").as_deref(),
            Some("step.exit_nonzero (step migrate): command `sh` exited 3 <stderr>")
        );
        assert_eq!(
            xml_text(&doc, "ContainerId").as_deref(),
            Some("c6d5e1f0-0000-4000-8000-000000000001")
        );
        let ready = Verdict {
            ready: true,
            outcome: "ready",
            code: None,
            message: None,
            failed_step: None,
        };
        let doc = health(&goal, &ready);
        assert_eq!(xml_text(&doc, "State").as_deref(), Some("Ready"));
        assert_eq!(xml_text(&doc, "Details"), None);
    }
}
