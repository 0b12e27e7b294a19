//! `bootplan facts`.

use std::path::Path;

use crate::error::exit;
use crate::facts::{FactsSettings, Gathered, ProviderChoice};
use crate::plan;
use crate::stdio::{errln, outln};

pub fn facts(json: bool, provider: Option<&str>, plan_path: Option<&Path>, user_data: bool) -> i32 {
    let mut config = match plan_path.map(plan::load).transpose() {
        Ok(plan) => plan.map(|p| p.facts).unwrap_or_default(),
        Err(err) => {
            crate::plan::print_error(&err);
            return err.code().exit_code();
        }
    };
    if let Some(name) = provider {
        match ProviderChoice::from_name(name) {
            // The fallback default follows the choice unless the plan set one.
            Some(choice) => config.provider = choice,
            None => {
                errln!(
                    "error: unknown provider `{name}`; use auto, aws, gcp, azure, openstack, digitalocean, nocloud or local [usage.invalid]"
                );
                return exit::USAGE;
            }
        }
    }
    let gathered: Gathered = match crate::facts::gather(&FactsSettings::from_env(&config)) {
        Ok(gathered) => gathered,
        Err(err) => {
            errln!("error: {err} [{}]", err.code());
            return err.code().exit_code();
        }
    };
    if user_data {
        return match &gathered.facts.user_data {
            Some(data) => {
                crate::stdio::write_out_raw(data.expose());
                exit::READY
            }
            None => {
                errln!("bootplan: {} has no user data", gathered.provider);
                exit::READY
            }
        };
    }
    errln!("bootplan: {}", gathered.summary());
    let facts = &gathered.facts;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(facts).unwrap_or_default()
        );
    } else if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(facts) {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            outln!("{k:<14} {text}");
        }
        if let Some(data) = &facts.user_data {
            outln!(
                "{:<14} ({} bytes; --user-data prints it)",
                "user_data",
                data.len()
            );
        }
    }
    exit::READY
}
