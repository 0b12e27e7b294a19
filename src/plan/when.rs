//! `when:` conditions: a MiniJinja expression over `facts.*`, `vars.*` and
//! `env.*` (e.g. `facts.cloud == "aws" and vars.role == "web"`). Parsed and
//! checked at load time (syntax, and that it reads only known names);
//! evaluated just before the step would run. Secrets are not allowed in a
//! condition: the skip reason would tell the world something about them.

use std::collections::BTreeSet;

use super::refs::{Reference, TemplateScope, describe_error, to_references};

/// The names `expr` reads, or why it does not parse.
pub fn references(expr: &str) -> Result<BTreeSet<Reference>, String> {
    if expr.trim().is_empty() {
        return Err("the condition is empty".into());
    }
    let env = minijinja::Environment::new();
    let compiled = env
        .compile_expression(expr)
        .map_err(|err| describe_error(&err))?;
    Ok(to_references(&env, compiled.undeclared_variables(true)))
}

/// Evaluates `expr` with the run's facts and vars; true means "run the step".
/// Strict about undefined names, so a typo fails instead of silently skipping.
pub fn evaluate(expr: &str, scope: &TemplateScope) -> Result<bool, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let compiled = env
        .compile_expression(expr)
        .map_err(|err| describe_error(&err))?;
    // Secrets are not in scope: validation rejects them in conditions.
    let value = compiled
        .eval(scope.context(minijinja::Value::from(())))
        .map_err(|err| describe_error(&err))?;
    Ok(value.is_true())
}

/// The skip reason shown when the condition is false.
pub fn skip_reason(expr: &str) -> String {
    format!("when: `{expr}` is false")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_functions_are_not_references() {
        let refs = references("facts.cpu_count in range(1, 64)").unwrap();
        assert_eq!(refs.len(), 1, "{refs:?}");
        assert_eq!(refs.iter().next().map(|r| r.root.as_str()), Some("facts"));
    }

    #[test]
    fn finds_references_and_rejects_bad_syntax() {
        let refs = references("facts.cloud == 'aws' and vars.role in ['web']").unwrap();
        let names: Vec<String> = refs
            .iter()
            .map(|r| format!("{}.{}", r.root, r.name.clone().unwrap_or_default()))
            .collect();
        assert_eq!(names, ["facts.cloud", "vars.role"]);
        assert!(references("facts.cloud ==").is_err());
        assert!(references("  ").is_err());
    }

    #[test]
    fn evaluates_over_facts() {
        let facts = minijinja::context! {
            cloud => "aws",
            public_ipv4 => minijinja::Value::from(()),
            user_data => minijinja::Value::from(()),
        };
        let scope = TemplateScope::new(facts, &indexmap::IndexMap::new());
        assert!(evaluate("facts.cloud == 'aws'", &scope).unwrap());
        assert!(!evaluate("facts.cloud == 'gcp'", &scope).unwrap());
        assert!(!evaluate("facts.public_ipv4", &scope).unwrap());
        assert!(evaluate("facts.user_data is none", &scope).unwrap());
        assert!(evaluate("facts.nope == 1", &scope).is_err());
    }
}
