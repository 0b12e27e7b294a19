//! `bootplan import cloud-config`: the plan to stdout (or a file), the
//! migration report to stderr (or, with `--json`, everything as JSON). The
//! plan is checked like any plan before it is handed out.

use std::io::Read;
use std::path::Path;

use crate::error::{ErrorCode, exit};
use crate::stdio::{errln, outln};

/// User data larger than this is not user data (the clouds cap it at 64 KiB).
const MAX_INPUT: u64 = 16 * 1024 * 1024;

pub fn cloud_config(file: &Path, output: Option<&Path>, json: bool) -> i32 {
    let source = file.display().to_string();
    let bytes = match read_input(file) {
        Ok(bytes) => bytes,
        Err(err) => {
            errln!(
                "bootplan: cannot read {source}: {err} [{}]",
                ErrorCode::PlanInvalid
            );
            return exit::USAGE;
        }
    };
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| s != "-")
        .unwrap_or_else(|| "user-data".into());
    let imported = match crate::import::import(&bytes, &name) {
        Ok(imported) => imported,
        Err(err) => {
            errln!("bootplan: {source}: {err} [{}]", ErrorCode::PlanInvalid);
            return ErrorCode::PlanInvalid.exit_code();
        }
    };
    // The import checked the plan already; only writing it can still fail.
    let problems = imported
        .plan
        .as_deref()
        .map(|text| match &imported.problems[..] {
            [] => write_plan(text, output),
            found => Err(found.to_vec()),
        });
    let valid = matches!(problems, Some(Ok(())));
    if json {
        let report = serde_json::json!({
            "source": source,
            "valid": valid,
            "plan": if output.is_none() { imported.plan.clone() } else { None },
            "problems": match &problems { Some(Err(p)) => p.clone(), _ => Vec::new() },
            "entries": imported.entries,
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        errln!("{}", imported.report_text(&source).trim_end());
        match (&imported.plan, output) {
            (Some(text), None) if valid => crate::stdio::write_out_raw(text.as_bytes()),
            (Some(_), Some(path)) if valid => errln!("bootplan: the plan is in {}", path.display()),
            _ => {}
        }
        if let Some(Err(found)) = &problems {
            for problem in found {
                errln!("bootplan: the imported plan is invalid: {problem}");
            }
        }
    }
    match problems {
        None => {
            errln!(
                "bootplan: nothing in {source} could be mapped to a step [{}]",
                ErrorCode::PlanInvalid
            );
            ErrorCode::PlanInvalid.exit_code()
        }
        Some(Err(_)) => ErrorCode::PlanInvalid.exit_code(),
        Some(Ok(())) => exit::READY,
    }
}

fn read_input(file: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin().take(MAX_INPUT).read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    crate::plan::bounded::read_bounded(file, MAX_INPUT)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Writes the plan to `output`, when given.
fn write_plan(text: &str, output: Option<&Path>) -> Result<(), Vec<String>> {
    let Some(path) = output else { return Ok(()) };
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
        .map_err(|err| vec![format!("cannot write {}: {err}", path.display())])
}
