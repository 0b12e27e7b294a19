//! A GCE guest attribute with the verdict: `PUT
//! /computeMetadata/v1/instance/guest-attributes/NAMESPACE/KEY` on the
//! metadata server with `Metadata-Flavor: Google`; the value is `ready`, or
//! `failed:CODE` (`deadline_exceeded:deadline.exceeded`, ...). Readable
//! from outside with `gcloud compute instances get-guest-attributes`.

use super::{Net, SignalError, Verdict};

pub(super) async fn send(
    endpoint: &str,
    namespace: &str,
    key: &str,
    verdict: &Verdict,
    net: &Net,
) -> Result<String, SignalError> {
    let platform = "gce_guest_attributes";
    let http = crate::secrets::http::client(None, false, true, Some(endpoint))
        .map_err(|detail| SignalError::NotSent { platform, detail })?;
    let url = format!("{endpoint}/computeMetadata/v1/instance/guest-attributes/{namespace}/{key}");
    let value = value(verdict);
    let (http, url_ref, value_ref) = (&http, &url, &value);
    net.send(
        platform,
        &url,
        |_, _| false,
        || async move {
            Ok(http
                .put(url_ref)
                .header("Metadata-Flavor", "Google")
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .body(value_ref.clone()))
        },
    )
    .await?;
    Ok(format!("{namespace}/{key} = {value}"))
}

/// `ready`, or `OUTCOME:CODE`.
fn value(verdict: &Verdict) -> String {
    if verdict.ready {
        return "ready".into();
    }
    match verdict.code {
        Some(code) => format!("{}:{code}", verdict.outcome),
        None => verdict.outcome.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_says_ready_or_the_outcome_and_code() {
        let mut verdict = Verdict {
            ready: true,
            outcome: "ready",
            code: None,
            message: None,
            failed_step: None,
        };
        assert_eq!(value(&verdict), "ready");
        verdict.ready = false;
        verdict.outcome = "deadline_exceeded";
        verdict.code = Some("deadline.exceeded");
        assert_eq!(value(&verdict), "deadline_exceeded:deadline.exceeded");
    }
}
