//! Template references: which `facts.*`, `secrets.*`, `vars.*` and `env.*`
//! names a template string uses, found without rendering it.

use std::collections::BTreeSet;

/// The roots a template may read from.
pub const ROOTS: [&str; 4] = ["facts", "secrets", "vars", "env"];

/// A dotted reference such as `secrets.db_password`, split at the first dot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    pub root: String,
    pub name: Option<String>,
}

pub use crate::template::{describe_error, is_template};

/// Parses `text` as a MiniJinja template and returns the variables it reads.
pub fn references(text: &str) -> Result<BTreeSet<Reference>, String> {
    if !is_template(text) {
        return Ok(BTreeSet::new());
    }
    let env = minijinja::Environment::new();
    let template = env
        .template_from_str(text)
        .map_err(|err| describe_error(&err))?;
    Ok(to_references(&env, template.undeclared_variables(true)))
}

/// MiniJinja's undeclared variables (`secrets.db`, `range`, ...) as
/// references, without the environment's built-in globals (`range`, `dict`,
/// `namespace`, ...), which are not references.
pub fn to_references(
    env: &minijinja::Environment<'_>,
    undeclared: std::collections::HashSet<String>,
) -> BTreeSet<Reference> {
    let builtins: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
    undeclared
        .into_iter()
        .filter(|var| !builtins.contains(var.split('.').next().unwrap_or(var)))
        .map(|var| match var.split_once('.') {
            Some((root, rest)) => Reference {
                root: root.to_string(),
                name: Some(rest.split('.').next().unwrap_or(rest).to_string()),
            },
            None => Reference {
                root: var,
                name: None,
            },
        })
        .collect()
}

/// What templates and `when:` conditions read besides secrets: `facts`,
/// `vars` and `env` (bootplan's own environment). Built once per run;
/// cloning shares the values.
#[derive(Debug, Clone)]
pub struct TemplateScope {
    facts: minijinja::Value,
    vars: minijinja::Value,
    env: minijinja::Value,
}

impl TemplateScope {
    /// `facts` as templates see them (see `Facts::template_value`).
    pub fn new(
        facts: minijinja::Value,
        vars: &indexmap::IndexMap<String, serde_json::Value>,
    ) -> TemplateScope {
        let process_env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        TemplateScope {
            facts,
            vars: minijinja::Value::from(minijinja::value::Serde(vars)),
            env: minijinja::Value::from(minijinja::value::Serde(&process_env)),
        }
    }

    /// The full context: this scope plus `secrets` (an empty map for none).
    pub fn context(&self, secrets: minijinja::Value) -> minijinja::Value {
        minijinja::context! {
            facts => self.facts.clone(),
            vars => self.vars.clone(),
            env => self.env.clone(),
            secrets => secrets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_references() {
        let refs =
            references("{{ secrets.db }} {% if facts.cloud == 'aws' %}{{ vars.x.y }}{% endif %}")
                .unwrap();
        let names: Vec<String> = refs
            .iter()
            .map(|r| format!("{}.{}", r.root, r.name.clone().unwrap_or_default()))
            .collect();
        assert_eq!(names, ["facts.cloud", "secrets.db", "vars.x"]);
    }

    #[test]
    fn builtin_globals_are_not_references() {
        let refs =
            references("{% for i in range(3) %}{{ i }}{{ loop.index }}{% endfor %}{{ dict(a=1) }}")
                .unwrap();
        assert!(refs.is_empty(), "{refs:?}");
    }

    #[test]
    fn plain_text_has_no_references() {
        assert!(references("hello {world}").unwrap().is_empty());
    }

    #[test]
    fn syntax_error_is_reported_with_line() {
        let err = references("line one\n{{ oops ").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }
}
