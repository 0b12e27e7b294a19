//! cloud-config modules mapped to steps, in cloud-init's order of modules.
//! Each mapping adds its steps to the [`Builder`] and one report entry per
//! key; a key that no function here knows is reported as not supported.

use std::io::Read;

use base64::Engine as _;
use indexmap::IndexMap;
use serde_json::{Value, json};
use serde_saphyr::Spanned;

use super::userdata::{Part, PartKind};
use super::{Builder, Entry, Outcome};

/// One top-level key of the (merged) cloud-config.
pub struct Item {
    pub key: String,
    pub value: Value,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub origin: String,
}

/// The keys bootplan maps, in the order cloud-init runs their modules.
const ORDER: &[&str] = &[
    "bootcmd",
    "write_files",
    "hostname",
    "fqdn",
    "prefer_fqdn_over_hostname",
    "manage_etc_hosts",
    "preserve_hostname",
    "groups",
    "users",
    "chpasswd",
    "ssh_pwauth",
    "disable_root",
    "ssh_deletekeys",
    "ssh_genkeytypes",
    "ssh_authorized_keys",
    "locale",
    "timezone",
    "ntp",
    "apt",
    "yum_repos",
    "package_update",
    "package_upgrade",
    "packages",
    "package_reboot_if_required",
    "runcmd",
    "phone_home",
    "final_message",
    "power_state",
];

/// Keys that only tune how cloud-init itself runs: nothing to carry over.
const CLOUD_INIT_ONLY: &[&str] = &[
    "merge_how",
    "merge_type",
    "output",
    "datasource",
    "datasource_list",
    "cloud_init_modules",
    "cloud_config_modules",
    "cloud_final_modules",
    "system_info",
    "reporting",
    "vendor_data",
    "vendordata",
];

/// Parses each cloud-config part and merges them: a later part's key
/// replaces an earlier one's (cloud-init's default `dict(replace)`).
pub fn parse_configs(builder: &mut Builder, parts: &[&Part]) -> Vec<Item> {
    let mut merged: IndexMap<String, Item> = IndexMap::new();
    for part in parts {
        let text = match &part.kind {
            PartKind::Jinja(_) => match translate_jinja(&part.text) {
                Ok(text) => text,
                Err(why) => {
                    builder.entry(entry_for_part(
                        part,
                        "jinja template",
                        Outcome::Unsupported,
                        why,
                    ));
                    continue;
                }
            },
            _ => part.text.clone(),
        };
        if let Some(why) = terraform_directive(&text) {
            builder.entry(entry_for_part(
                part,
                "cloud-config",
                Outcome::Unsupported,
                why,
            ));
            continue;
        }
        // PyYAML (cloud-init's reader) keeps the last of duplicate keys.
        let options = serde_saphyr::options! {
            duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
            with_snippet: false,
        };
        let yaml = binary_as_base64(&text);
        let parsed: Result<Option<IndexMap<String, Spanned<Value>>>, _> =
            serde_saphyr::from_str_with_options(&yaml, options);
        if parsed.is_ok() {
            for problem in super::schema::check(&yaml) {
                builder.entry(Entry {
                    key: problem.key.to_string(),
                    origin: part.origin.clone(),
                    line: problem.line,
                    column: problem.column,
                    outcome: Outcome::Invalid,
                    note: format!(
                        "{}; cloud-init would warn and go on; fix the value",
                        problem.message
                    ),
                    steps: Vec::new(),
                });
            }
        }
        let map = match parsed {
            Ok(Some(map)) if !map.is_empty() => map,
            Ok(_) => {
                builder.entry(entry_for_part(
                    part,
                    "cloud-config",
                    Outcome::Mapped,
                    "empty (comments only): nothing to do".into(),
                ));
                continue;
            }
            Err(err) => {
                let first = err
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let why = match inserted_block(&text) {
                    Some(placeholder) => format!(
                        "not YAML until rendered: {placeholder} stands for YAML a template (Terraform, Packer) inserts; render it and import the result ({first})"
                    ),
                    None => format!("not a YAML mapping: {first}"),
                };
                builder.entry(entry_for_part(
                    part,
                    "cloud-config",
                    Outcome::Unsupported,
                    why,
                ));
                continue;
            }
        };
        for (key, spanned) in map {
            let line = (spanned.referenced.line() > 0).then(|| spanned.referenced.line() as usize);
            let column = line.map(|_| spanned.referenced.column() as usize);
            let item = Item {
                key: key.clone(),
                value: spanned.value,
                line,
                column,
                origin: part.origin.clone(),
            };
            if let Some(earlier) = merged.insert(key.clone(), item) {
                builder.entry(Entry {
                    key: key.clone(),
                    origin: earlier.origin,
                    line: earlier.line,
                    column: earlier.column,
                    outcome: Outcome::Changed,
                    note: "replaced by the same key in a later part (cloud-init's default merge)"
                        .into(),
                    steps: Vec::new(),
                });
            }
        }
    }
    merged.into_values().collect()
}

/// Maps the merged cloud-config and the user scripts.
pub fn map_config(builder: &mut Builder, items: &[Item], scripts: &[&Part]) {
    let get = |key: &str| items.iter().find(|i| i.key == key);
    // Deferred files are written after the packages, before the commands.
    let mut deferred_done = false;
    for key in ORDER {
        let Some(item) = get(key) else { continue };
        if let Some(found) = placeholders(item) {
            note(
                builder,
                item,
                Outcome::Unsupported,
                &format!(
                    "holds unrendered template placeholders ({found}): render the template (Terraform, Packer) and import the result"
                ),
            );
            continue;
        }
        match *key {
            "bootcmd" => commands(builder, item, "bootcmd", "always"),
            "write_files" => write_files(builder, item, false),
            "hostname" => hostname(builder, items),
            "groups" => groups(builder, item),
            "users" => users(builder, item, get("chpasswd")),
            "chpasswd" => chpasswd(builder, item, get("users")),
            "ssh_pwauth" => ssh_pwauth(builder, item),
            "disable_root" => disable_root(builder, item),
            "ssh_deletekeys" | "ssh_genkeytypes" => host_keys(builder, items, key),
            "locale" => locale(builder, item),
            "timezone" => timezone(builder, item),
            "ntp" => ntp(builder, item),
            "package_upgrade" => package_upgrade(builder, item),
            "packages" => packages(builder, items),
            "package_reboot_if_required" => reboot_if_required(builder, item),
            "runcmd" => {
                deferred_files(builder, items);
                deferred_done = true;
                commands(builder, item, "runcmd", "per-instance");
            }
            "phone_home" => phone_home(builder, item),
            "final_message" => final_message(builder, item),
            "power_state" => power_state(builder, item),
            // Handled with the key they go with.
            "fqdn" | "prefer_fqdn_over_hostname" | "manage_etc_hosts" | "preserve_hostname" => {
                let anchor = if get("hostname").is_some() {
                    "hostname"
                } else {
                    "fqdn"
                };
                if get("hostname").is_none() && *key == "fqdn" {
                    hostname(builder, items);
                } else if *key != anchor && get(anchor).is_some() {
                    note(
                        builder,
                        item,
                        Outcome::Mapped,
                        "part of the `hostname` step",
                    );
                } else if get("hostname").is_none() && get("fqdn").is_none() {
                    note(
                        builder,
                        item,
                        Outcome::Mapped,
                        "nothing to do without a host name",
                    );
                }
            }
            "apt" | "yum_repos" | "package_update" => {
                if get("packages").is_none() && !matches!(*key, "package_update") {
                    packages(builder, items);
                } else if *key == "package_update" && get("packages").is_none() {
                    note(
                        builder,
                        item,
                        Outcome::Changed,
                        "bootplan refreshes package indexes only when it has something to install",
                    );
                }
            }
            "ssh_authorized_keys" => note(
                builder,
                item,
                Outcome::Unsupported,
                "these keys go to the distribution's default user, which bootplan does not create: list them under a `user` step's ssh_authorized_keys",
            ),
            _ => {}
        }
    }
    if !deferred_done {
        deferred_files(builder, items);
    }
    for script in scripts {
        user_script(builder, script);
    }
    for item in items.iter().filter(|i| !ORDER.contains(&i.key.as_str())) {
        let (outcome, message) = if CLOUD_INIT_ONLY.contains(&item.key.as_str()) {
            (
                Outcome::Mapped,
                "tunes cloud-init itself: nothing to carry over".to_string(),
            )
        } else {
            (Outcome::Unsupported, unsupported_hint(&item.key))
        };
        note(builder, item, outcome, &message);
    }
}

/// What to do about a module bootplan does not map.
fn unsupported_hint(key: &str) -> String {
    let hint = match key {
        "mounts" | "swap" | "disk_setup" | "fs_setup" | "growpart" | "resize_rootfs" => {
            "disks and mounts are not a bootplan step kind: use a `run` step (or the image's fstab)"
        }
        "ca_certs" | "ca-certs" => {
            "write each certificate with a `file` step and run update-ca-certificates (or update-ca-trust) in a `run` step"
        }
        "snap" | "apt_pipelining" | "apk_repos" | "zypper" => {
            "configure the package manager with `file` and `run` steps"
        }
        "ssh_keys" => "host private keys in user data: deliver them as secrets with `to_file`",
        "password" => {
            "the default user's password, in plain text: give a `user` step a password_hash, from a secret"
        }
        "ssh_import_id" => "fetch the keys at image build time and list them under a `user` step",
        "chef" | "puppet" | "salt_minion" | "ansible" | "mcollective" | "landscape" => {
            "install and start the agent with `packages`, `file` and `service` steps"
        }
        _ => "not a cloud-init module bootplan maps: carry it over with `file` and `run` steps",
    };
    format!("`{key}` is not mapped; {hint}")
}

/// `item` became the one step `name`; the report says how.
fn mapped_to(
    builder: &mut Builder,
    item: &Item,
    name: &str,
    step: IndexMap<String, Value>,
    outcome: Outcome,
    message: &str,
) {
    let step = builder.step(name, step);
    builder.entry(entry(item, outcome, message.to_string(), vec![step]));
}

fn note(builder: &mut Builder, item: &Item, outcome: Outcome, message: &str) {
    builder.entry(entry(item, outcome, message.to_string(), Vec::new()));
}

fn entry(item: &Item, outcome: Outcome, note: String, steps: Vec<String>) -> Entry {
    Entry {
        key: item.key.clone(),
        origin: item.origin.clone(),
        line: item.line,
        column: item.column,
        outcome,
        note,
        steps,
    }
}

fn entry_for_part(part: &Part, key: &str, outcome: Outcome, note: String) -> Entry {
    Entry {
        key: key.into(),
        origin: part.origin.clone(),
        line: None,
        column: None,
        outcome,
        note,
        steps: Vec::new(),
    }
}

fn body(pairs: Vec<(&str, Value)>) -> IndexMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Text that bootplan renders as a template (argv, scripts, paths), kept
/// literal: cloud-init never rendered it.
fn literal(text: &str) -> String {
    if text.contains("{{") || text.contains("{%") || text.contains("{#") {
        format!("{{% raw %}}{text}{{% endraw %}}")
    } else {
        text.to_string()
    }
}

/// `bootcmd` / `runcmd`: one step per entry, a string through the shell,
/// a list as argv.
fn commands(builder: &mut Builder, item: &Item, name: &str, frequency: &str) {
    let Some(list) = item.value.as_array() else {
        note(
            builder,
            item,
            Outcome::Unsupported,
            "expected a list of commands",
        );
        return;
    };
    let mut steps = Vec::new();
    for (i, command) in list.iter().enumerate() {
        let step = match command {
            Value::String(script) => body(vec![
                ("shell", Value::from(literal(script))),
                ("frequency", Value::from(frequency)),
            ]),
            Value::Array(argv) => {
                let argv: Vec<String> = argv.iter().map(|a| literal(&scalar(a))).collect();
                if argv.is_empty() {
                    continue;
                }
                body(vec![
                    ("run", Value::from(argv)),
                    ("frequency", Value::from(frequency)),
                ])
            }
            Value::Null => continue,
            other => body(vec![
                ("shell", Value::from(literal(&scalar(other)))),
                ("frequency", Value::from(frequency)),
            ]),
        };
        steps.push(builder.step(&format!("{name}-{}", i + 1), step));
    }
    let change = if name == "runcmd" {
        "each command is its own step, in order, and a failing one fails the run; cloud-init ran them as one script in which only the last command's exit status counted"
    } else {
        "each command is its own step, run on every boot, and a failing one fails the run; cloud-init ignored their exit status"
    };
    builder.entry(entry(item, Outcome::Changed, change.into(), steps));
}

/// A YAML scalar as cloud-init would stringify it.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `write_files`, the entries without `defer` (or, with `deferred`, those with it).
fn write_files(builder: &mut Builder, item: &Item, deferred: bool) {
    let Some(list) = item.value.as_array() else {
        if !deferred {
            note(
                builder,
                item,
                Outcome::Unsupported,
                "expected a list of files",
            );
        }
        return;
    };
    let mut steps = Vec::new();
    let mut problems = Vec::new();
    for (i, file) in list.iter().enumerate() {
        // A file owned by an account is written after the accounts exist
        // (cloud-init wrote it first and could not give it its owner).
        let owned = file
            .get("owner")
            .and_then(Value::as_str)
            .is_some_and(|o| !o.is_empty() && o != "root" && o != "root:root");
        let is_deferred = owned || file.get("defer").and_then(Value::as_bool).unwrap_or(false);
        if is_deferred != deferred {
            continue;
        }
        match write_file(file) {
            Ok((name, step)) => steps.push(builder.step(&name, step)),
            Err(why) => problems.push(format!("entry {}: {why}", i + 1)),
        }
    }
    if deferred && steps.is_empty() && problems.is_empty() {
        return;
    }
    let key = if deferred {
        "write_files (defer: true)"
    } else {
        "write_files"
    };
    let (outcome, note) = if problems.is_empty() {
        (
            Outcome::Mapped,
            if deferred {
                "written after the accounts and packages: deferred files, and files owned by an account (cloud-init wrote those before the account existed)"
                    .to_string()
            } else {
                String::new()
            },
        )
    } else {
        (Outcome::Unsupported, problems.join("; "))
    };
    builder.entry(Entry {
        key: key.into(),
        ..entry(item, outcome, note, steps)
    });
}

fn deferred_files(builder: &mut Builder, items: &[Item]) {
    if let Some(item) = items.iter().find(|i| i.key == "write_files") {
        write_files(builder, item, true);
    }
}

/// One `write_files` entry: a `file` step, or a shell step for `append`.
fn write_file(file: &Value) -> Result<(String, IndexMap<String, Value>), String> {
    let path = file
        .get("path")
        .and_then(Value::as_str)
        .ok_or("no `path`")?
        .to_string();
    if file.get("source").is_some() {
        return Err(format!(
            "{path}: `source` (a URL) is not fetched; use a download step with a digest"
        ));
    }
    let binary = file.get("content__binary");
    let declared = file
        .get("encoding")
        .and_then(Value::as_str)
        .unwrap_or("text/plain");
    // `!!binary` is base64 on top of what `encoding` says.
    let encoding = match (binary, declared) {
        (Some(_), "gz" | "gzip") => "gz+b64",
        (Some(_), _) => "b64",
        (None, declared) => declared,
    };
    let raw = scalar(
        binary
            .or_else(|| file.get("content"))
            .unwrap_or(&Value::Null),
    );
    let bytes = decode(&raw, encoding).map_err(|why| format!("{path}: {why}"))?;
    let content = String::from_utf8(bytes)
        .map_err(|_| format!("{path}: binary content cannot be a `file` step's text; use a download step with a data: URL"))?;
    let mode = permissions(file.get("permissions")).map_err(|why| format!("{path}: {why}"))?;
    let owner = file
        .get("owner")
        .and_then(Value::as_str)
        .filter(|o| *o != "root:root" && *o != "root")
        .map(String::from);
    let name = format!("file-{}", path.rsplit('/').next().unwrap_or("file"));
    if file.get("append").and_then(Value::as_bool).unwrap_or(false) {
        let script = format!(
            "printf '%s' {} >> {}",
            shell_quote(&content),
            shell_quote(&path)
        );
        return Ok((
            name,
            body(vec![
                ("shell", Value::from(literal(&script))),
                ("frequency", Value::from("per-instance")),
            ]),
        ));
    }
    let mut spec = serde_json::Map::new();
    spec.insert("path".into(), Value::from(literal(&path)));
    spec.insert("content".into(), Value::from(content));
    spec.insert("mode".into(), Value::from(mode));
    if let Some(owner) = owner {
        spec.insert("owner".into(), Value::from(owner));
    }
    Ok((name, body(vec![("file", Value::Object(spec))])))
}

fn decode(raw: &str, encoding: &str) -> Result<Vec<u8>, String> {
    let b64 = |text: &str| {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| format!("the base64 content cannot be decoded: {e}"))
    };
    let gunzip = |bytes: Vec<u8>| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .take(16 * 1024 * 1024)
            .read_to_end(&mut out)
            .map_err(|e| format!("the gzip content cannot be read: {e}"))?;
        Ok::<_, String>(out)
    };
    match encoding.to_ascii_lowercase().as_str() {
        "b64" | "base64" => b64(raw),
        "gz" | "gzip" => gunzip(raw.as_bytes().to_vec()),
        "gz+b64" | "gz+base64" | "gzip+b64" | "gzip+base64" => gunzip(b64(raw)?),
        "text/plain" => Ok(raw.as_bytes().to_vec()),
        other => Err(format!("unknown encoding `{other}`")),
    }
}

/// cloud-init's `permissions`: an octal string, or an integer (YAML 1.1
/// reads `0644` as octal; a YAML 1.2 reader gives 644, read here as the
/// octal digits it was written with).
fn permissions(value: Option<&Value>) -> Result<String, String> {
    let text = match value {
        None | Some(Value::Null) => return Ok("0644".into()),
        Some(Value::String(s)) => s.trim().trim_start_matches("0o").to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("permissions `{other}` are not a mode")),
    };
    let bits =
        u32::from_str_radix(&text, 8).map_err(|_| format!("permissions `{text}` are not octal"))?;
    if bits > 0o7777 {
        return Err(format!("permissions `{text}` are not a mode"));
    }
    Ok(format!("{bits:04o}"))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn hostname(builder: &mut Builder, items: &[Item]) {
    let get = |key: &str| items.iter().find(|i| i.key == key);
    let Some(anchor) = get("hostname").or_else(|| get("fqdn")) else {
        return;
    };
    if get("preserve_hostname").is_some_and(|i| i.value.as_bool() == Some(true)) {
        note(
            builder,
            anchor,
            Outcome::Mapped,
            "preserve_hostname: true: the host name is left alone, as cloud-init does",
        );
        return;
    }
    let fqdn = get("fqdn").and_then(|i| i.value.as_str()).map(String::from);
    let name = get("hostname")
        .and_then(|i| i.value.as_str())
        .map(String::from)
        .or_else(|| {
            fqdn.as_ref()
                .map(|f| f.split('.').next().unwrap_or(f).to_string())
        });
    let Some(name) = name else {
        note(
            builder,
            anchor,
            Outcome::Unsupported,
            "the host name is not a string",
        );
        return;
    };
    let manage = get("manage_etc_hosts").map(|i| &i.value);
    let hosts = matches!(manage, Some(Value::Bool(true)) | Some(Value::String(_)));
    let mut spec = serde_json::Map::new();
    spec.insert("name".into(), Value::from(name));
    if let Some(fqdn) = fqdn {
        spec.insert("fqdn".into(), Value::from(fqdn));
    }
    spec.insert("hosts".into(), Value::from(hosts));
    let step = builder.step("hostname", body(vec![("hostname", Value::Object(spec))]));
    let (outcome, message) = match manage {
        Some(Value::String(s)) if s == "localhost" => (
            Outcome::Changed,
            "manage_etc_hosts: localhost: bootplan writes the host's own entry to /etc/hosts (127.0.1.1), not cloud-init's localhost form".to_string(),
        ),
        Some(Value::String(s)) if s == "template" => (
            Outcome::Changed,
            "manage_etc_hosts: template: bootplan manages one /etc/hosts entry; cloud-init rewrote the whole file from its template".to_string(),
        ),
        _ => (Outcome::Mapped, String::new()),
    };
    builder.entry(entry(anchor, outcome, message, vec![step]));
}

/// `groups`: a list of names or `{name: [members]}`, or a mapping.
fn groups(builder: &mut Builder, item: &Item) {
    let mut names: Vec<(String, Vec<String>)> = Vec::new();
    match &item.value {
        Value::Array(list) => {
            for g in list {
                match g {
                    Value::String(name) => names.push((name.clone(), Vec::new())),
                    Value::Object(map) => {
                        for (name, members) in map {
                            names.push((name.clone(), string_list(members)));
                        }
                    }
                    _ => {}
                }
            }
        }
        Value::Object(map) => {
            for (name, members) in map {
                names.push((name.clone(), string_list(members)));
            }
        }
        Value::String(s) => names.extend(s.split(',').map(|n| (n.trim().to_string(), Vec::new()))),
        _ => {}
    }
    let mut steps = Vec::new();
    let mut with_members = Vec::new();
    for (name, members) in names.into_iter().filter(|(n, _)| !n.is_empty()) {
        if !members.is_empty() {
            with_members.push(format!("{name} ({})", members.join(", ")));
        }
        steps.push(builder.step(
            &format!("group-{name}"),
            body(vec![("group", json!({ "name": name }))]),
        ));
    }
    let (outcome, message) = if with_members.is_empty() {
        (Outcome::Mapped, String::new())
    } else {
        (
            Outcome::Changed,
            format!(
                "members are not added by a `group` step: list the group in each member's `user` step ({})",
                with_members.join("; ")
            ),
        )
    };
    builder.entry(entry(item, outcome, message, steps));
}

/// A list, or a comma-separated string, as strings.
fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(scalar).filter(|s| !s.is_empty()).collect(),
        Value::String(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// `users`: one `user` step per account; `default` is reported.
fn users(builder: &mut Builder, item: &Item, chpasswd: Option<&Item>) {
    let list = match &item.value {
        Value::Array(list) => list.clone(),
        Value::String(s) => s.split(',').map(|n| Value::from(n.trim())).collect(),
        Value::Object(_) => vec![item.value.clone()],
        _ => Vec::new(),
    };
    let hashes = chpasswd_hashes(chpasswd);
    let mut steps = Vec::new();
    let mut changes = Vec::new();
    for user in &list {
        let user = match user {
            Value::String(name) if name == "default" => {
                changes.push("`default` (the distribution's default user) is created by cloud-init from its system configuration, not by bootplan: add a `user` step for it".to_string());
                continue;
            }
            Value::String(name) => json!({ "name": name }),
            other => other.clone(),
        };
        match user_step(&user, &hashes, &mut changes) {
            Some((name, step)) => steps.push(builder.step(&format!("user-{name}"), step)),
            None => changes.push("an entry without a `name` was skipped".into()),
        }
    }
    let outcome = if changes.is_empty() {
        Outcome::Mapped
    } else {
        Outcome::Changed
    };
    builder.entry(entry(item, outcome, changes.join("; "), steps));
}

fn user_step(
    user: &Value,
    hashes: &IndexMap<String, String>,
    changes: &mut Vec<String>,
) -> Option<(String, IndexMap<String, Value>)> {
    let name = user.get("name").and_then(Value::as_str)?.to_string();
    let mut spec = serde_json::Map::new();
    spec.insert("name".into(), Value::from(name.clone()));
    let text = |key: &str| user.get(key).map(scalar).filter(|s| !s.is_empty());
    if let Some(uid) = text("uid").and_then(|u| u.parse::<u32>().ok()) {
        spec.insert("uid".into(), Value::from(uid));
    }
    for (from, to) in [
        ("primary_group", "group"),
        ("shell", "shell"),
        ("homedir", "home"),
        ("gecos", "comment"),
    ] {
        if let Some(v) = text(from) {
            spec.insert(to.into(), Value::from(v));
        }
    }
    if let Some(groups) = user.get("groups") {
        spec.insert("groups".into(), Value::from(string_list(groups)));
    }
    if user.get("system").and_then(Value::as_bool) == Some(true) {
        spec.insert("system".into(), Value::from(true));
    }
    if user.get("no_create_home").and_then(Value::as_bool) == Some(true) {
        spec.insert("create_home".into(), Value::from(false));
    }
    let hash = text("hashed_passwd")
        .or_else(|| text("passwd"))
        .or_else(|| hashes.get(&name).cloned());
    if let Some(hash) = hash {
        spec.insert("password_hash".into(), Value::from(hash));
    }
    if text("plain_text_passwd").is_some() {
        changes.push(format!("{name}: plain_text_passwd is not carried over (a password in the plan is readable by whoever reads the plan): give a hash, from a secret"));
    }
    if user.get("lock_passwd").and_then(Value::as_bool) == Some(false)
        && !spec.contains_key("password_hash")
    {
        changes.push(format!(
            "{name}: lock_passwd: false without a hash: the password stays locked"
        ));
    }
    match user.get("sudo") {
        Some(Value::Bool(false)) | Some(Value::Null) | None => {}
        Some(rules) => {
            spec.insert("sudo".into(), Value::from(string_list_keep_commas(rules)));
            changes.push(format!(
                "{name}: the sudo rules go to /etc/sudoers.d/bootplan-{name} (checked by visudo before they land), not to cloud-init's /etc/sudoers.d/90-cloud-init-users"
            ));
        }
    }
    if let Some(keys) = user.get("ssh_authorized_keys") {
        spec.insert(
            "ssh_authorized_keys".into(),
            Value::from(string_list_keep_commas(keys)),
        );
        let home = text("homedir").unwrap_or_else(|| format!("/home/{name}"));
        changes.push(format!(
            "{name}: the keys in {home}/.ssh/authorized_keys sit between bootplan's BEGIN/END marker lines (rewritten on every run; keys added by hand outside them are kept), where cloud-init wrote the keys alone"
        ));
    }
    for unsupported in [
        "ssh_import_id",
        "expiredate",
        "inactive",
        "selinux_user",
        "snapuser",
        "ssh_redirect_user",
        "doas",
    ] {
        if user.get(unsupported).is_some() {
            changes.push(format!("{name}: `{unsupported}` is not carried over"));
        }
    }
    Some((name, body(vec![("user", Value::Object(spec))])))
}

/// A list of strings that may themselves hold commas (sudo rules, keys).
fn string_list_keep_commas(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(scalar).filter(|s| !s.is_empty()).collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// `chpasswd` hashes by user name (`$…` values, or `type: hash`).
fn chpasswd_hashes(item: Option<&Item>) -> IndexMap<String, String> {
    let mut found = IndexMap::new();
    let Some(item) = item else { return found };
    for (name, password, kind) in chpasswd_entries(&item.value) {
        if kind == "hash" || (kind.is_empty() && password.starts_with('$')) {
            found.insert(name, password);
        }
    }
    found
}

/// (name, password, type) of each `chpasswd` entry, in its list, string
/// (`name:password` lines) or `users` forms.
fn chpasswd_entries(value: &Value) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    if let Some(users) = value.get("users").and_then(Value::as_array) {
        for u in users {
            let get = |k: &str| u.get(k).map(scalar).unwrap_or_default();
            found.push((get("name"), get("password"), get("type")));
        }
    }
    let lines: Vec<String> = match value.get("list") {
        Some(Value::String(s)) => s.lines().map(String::from).collect(),
        Some(Value::Array(items)) => items.iter().map(scalar).collect(),
        _ => Vec::new(),
    };
    for line in lines {
        if let Some((name, password)) = line.split_once(':') {
            found.push((name.trim().into(), password.trim().into(), String::new()));
        }
    }
    found
}

fn chpasswd(builder: &mut Builder, item: &Item, users: Option<&Item>) {
    let declared: Vec<String> = users
        .and_then(|u| u.value.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|u| u.get("name").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut steps = Vec::new();
    let mut problems = Vec::new();
    for (name, password, kind) in chpasswd_entries(&item.value) {
        let hashed = kind == "hash" || (kind.is_empty() && password.starts_with('$'));
        if !hashed {
            problems.push(format!(
                "{name}: a {} password is not carried over: give a hash, from a secret",
                if password == "R" || password == "RANDOM" {
                    "random"
                } else {
                    "plain-text"
                }
            ));
            continue;
        }
        if !declared.contains(&name) {
            steps.push(builder.step(
                &format!("password-{name}"),
                body(vec![(
                    "user",
                    json!({ "name": name, "password_hash": password }),
                )]),
            ));
        }
    }
    if item.value.get("expire").and_then(Value::as_bool) != Some(false) && !steps.is_empty() {
        problems.push("passwords are not expired (cloud-init's `expire` default forces a change at first login)".into());
    }
    let outcome = if problems.is_empty() {
        Outcome::Mapped
    } else {
        Outcome::Changed
    };
    let mut message = problems.join("; ");
    if steps.is_empty() && message.is_empty() {
        message = if chpasswd_entries(&item.value).is_empty() {
            "no passwords listed: nothing to do".into()
        } else {
            "the hashes go to the users' own `user` steps".into()
        };
    }
    builder.entry(entry(item, outcome, message, steps));
}

fn sshd_dropin(builder: &mut Builder, item: &Item, name: &str, line: &str, why: &str) {
    let step = builder.step(
        name,
        body(vec![(
            "file",
            json!({ "path": format!("/etc/ssh/sshd_config.d/50-bootplan-{name}.conf"), "content": format!("{line}\n"), "mode": "0644" }),
        )]),
    );
    builder.entry(entry(item, Outcome::Changed, why.into(), vec![step]));
}

fn ssh_pwauth(builder: &mut Builder, item: &Item) {
    let allow = match &item.value {
        Value::Bool(b) => *b,
        Value::String(s) if s == "unchanged" => {
            note(builder, item, Outcome::Mapped, "unchanged: nothing to do");
            return;
        }
        Value::String(s) => matches!(s.as_str(), "yes" | "true" | "True"),
        _ => false,
    };
    sshd_dropin(
        builder,
        item,
        "ssh-pwauth",
        &format!(
            "PasswordAuthentication {}",
            if allow { "yes" } else { "no" }
        ),
        "written as an sshd_config.d drop-in, read when sshd next starts; cloud-init edited sshd_config and restarted sshd",
    );
}

fn disable_root(builder: &mut Builder, item: &Item) {
    if item.value.as_bool() == Some(false) {
        note(
            builder,
            item,
            Outcome::Mapped,
            "nothing to do: bootplan leaves root's keys alone",
        );
        return;
    }
    sshd_dropin(
        builder,
        item,
        "disable-root",
        "PermitRootLogin no",
        "root logins are refused by sshd (a drop-in); cloud-init instead put a refusing command in front of root's authorized keys",
    );
}

fn host_keys(builder: &mut Builder, items: &[Item], key: &str) {
    let get = |k: &str| items.iter().find(|i| i.key == k);
    // Both keys make one step, reported at the first.
    if key == "ssh_genkeytypes" && get("ssh_deletekeys").is_some() {
        return;
    }
    let Some(item) = get(key) else { return };
    if get("ssh_deletekeys").is_some_and(|i| i.value.as_bool() == Some(false)) {
        note(
            builder,
            item,
            Outcome::Mapped,
            "host keys are kept, as with ssh_deletekeys: false",
        );
        return;
    }
    let mut spec = serde_json::Map::new();
    spec.insert("regenerate".into(), Value::from("per-instance"));
    if let Some(types) = get("ssh_genkeytypes") {
        let wanted: Vec<String> = string_list(&types.value)
            .into_iter()
            .filter(|t| matches!(t.as_str(), "rsa" | "ecdsa" | "ed25519"))
            .collect();
        spec.insert("types".into(), Value::from(wanted));
    }
    mapped_to(
        builder,
        item,
        "ssh-host-keys",
        body(vec![("ssh_host_keys", Value::Object(spec))]),
        Outcome::Changed,
        "host keys are made again when the instance changes (a cloned disk), not on every first boot of the image",
    );
}

fn locale(builder: &mut Builder, item: &Item) {
    let Some(locale) = item.value.as_str() else {
        note(
            builder,
            item,
            Outcome::Unsupported,
            "expected a locale name",
        );
        return;
    };
    mapped_to(
        builder,
        item,
        "locale",
        body(vec![(
            "file",
            json!({ "path": "/etc/default/locale", "content": format!("LANG={locale}\n"), "mode": "0644" }),
        )]),
        Outcome::Changed,
        "LANG is set in /etc/default/locale; the locale is not generated (add a `run` step with locale-gen if the image lacks it)",
    );
}

fn timezone(builder: &mut Builder, item: &Item) {
    let Some(zone) = item.value.as_str() else {
        note(
            builder,
            item,
            Outcome::Unsupported,
            "expected a time zone name",
        );
        return;
    };
    let script = format!(
        "test -e /usr/share/zoneinfo/{zone} && ln -sf /usr/share/zoneinfo/{zone} /etc/localtime && echo {zone} > /etc/timezone",
        zone = shell_quote(zone)
    );
    mapped_to(
        builder,
        item,
        "timezone",
        body(vec![("shell", Value::from(literal(&script)))]),
        Outcome::Changed,
        "/etc/localtime and /etc/timezone are set directly; running services keep their time zone until restarted",
    );
}

fn ntp(builder: &mut Builder, item: &Item) {
    if item.value.get("enabled").and_then(Value::as_bool) == Some(false) {
        note(
            builder,
            item,
            Outcome::Mapped,
            "enabled: false: nothing to do",
        );
        return;
    }
    let mut servers = item
        .value
        .get("servers")
        .map(string_list)
        .unwrap_or_default();
    servers.extend(item.value.get("pools").map(string_list).unwrap_or_default());
    if servers.is_empty() {
        note(
            builder,
            item,
            Outcome::Changed,
            "no servers or pools: the image's time service keeps its defaults",
        );
        return;
    }
    mapped_to(
        builder,
        item,
        "ntp",
        body(vec![(
            "file",
            json!({ "path": "/etc/systemd/timesyncd.conf.d/50-bootplan.conf", "content": format!("[Time]\nNTP={}\n", servers.join(" ")), "mode": "0644" }),
        )]),
        Outcome::Changed,
        "servers are written for systemd-timesyncd only; cloud-init chose between chrony, ntp and timesyncd and restarted it",
    );
}

fn package_upgrade(builder: &mut Builder, item: &Item) {
    if item.value.as_bool() != Some(true) {
        note(builder, item, Outcome::Mapped, "false: nothing to do");
        return;
    }
    let script = "if command -v apt-get >/dev/null; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get -y upgrade; elif command -v dnf >/dev/null; then dnf -y upgrade; elif command -v zypper >/dev/null; then zypper --non-interactive update; elif command -v apk >/dev/null; then apk upgrade; fi";
    mapped_to(
        builder,
        item,
        "package-upgrade",
        body(vec![
            ("shell", Value::from(script)),
            ("frequency", Value::from("per-instance")),
        ]),
        Outcome::Changed,
        "a `shell` step runs the package manager's own upgrade",
    );
}

/// `packages` with `package_update`, `apt` sources and `yum_repos`: one step.
fn packages(builder: &mut Builder, items: &[Item]) {
    let get = |k: &str| items.iter().find(|i| i.key == k);
    let mut install = Vec::new();
    let mut problems: Vec<(String, String)> = Vec::new();
    if let Some(item) = get("packages") {
        for p in item.value.as_array().into_iter().flatten() {
            match p {
                Value::String(name) => install.push(name.clone()),
                Value::Array(pair) if pair.len() == 2 => {
                    install.push(format!("{}={}", scalar(&pair[0]), scalar(&pair[1])));
                }
                other => problems.push(("packages".into(), format!("`{other}` is not a package"))),
            }
        }
    }
    let mut repos = Vec::new();
    if let Some(apt) = get("apt") {
        repos.extend(apt_repos(&apt.value, &mut problems));
    }
    if let Some(yum) = get("yum_repos") {
        repos.extend(yum_repos(&yum.value, &mut problems));
    }
    let update = get("package_update").is_some_and(|i| i.value.as_bool() == Some(true));
    let mut spec = serde_json::Map::new();
    if !install.is_empty() {
        spec.insert("install".into(), Value::from(install));
    }
    if !repos.is_empty() {
        spec.insert("repos".into(), Value::from(repos));
    }
    if update {
        spec.insert("update".into(), Value::from(true));
    }
    let steps = if spec.contains_key("install") || spec.contains_key("repos") {
        vec![builder.step("packages", body(vec![("packages", Value::Object(spec))]))]
    } else {
        Vec::new()
    };
    for key in ["apt", "yum_repos", "package_update", "packages"] {
        let Some(item) = get(key) else { continue };
        let mine: Vec<String> = problems
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, p)| p.clone())
            .collect();
        let (outcome, message) = if !mine.is_empty() {
            (Outcome::Changed, mine.join("; "))
        } else if key == "package_update" {
            (
                Outcome::Changed,
                "bootplan refreshes package indexes only when it has something to install".into(),
            )
        } else if key == "packages" {
            (
                Outcome::Mapped,
                "installed in one transaction; already installed packages cost one query".into(),
            )
        } else {
            (Outcome::Mapped, String::new())
        };
        builder.entry(entry(item, outcome, message, steps.clone()));
    }
}

/// `apt.sources` entries as repositories; the rest of `apt` is reported.
fn apt_repos(apt: &Value, problems: &mut Vec<(String, String)>) -> Vec<Value> {
    let mut repos = Vec::new();
    if let Some(map) = apt.as_object() {
        for key in map.keys().filter(|k| *k != "sources") {
            problems.push(("apt".into(), format!("apt.{key} is not carried over")));
        }
    }
    let Some(sources) = apt.get("sources").and_then(Value::as_object) else {
        return repos;
    };
    for (name, source) in sources {
        let line = source
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if line.starts_with("ppa:") || line.is_empty() {
            problems.push((
                "apt".into(),
                format!("source {name}: `{line}` (a PPA, or a key alone) is not carried over"),
            ));
            continue;
        }
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"deb") {
            words.remove(0);
        }
        if words.first().is_some_and(|w| w.starts_with('[')) {
            while !words.is_empty() && !words[0].ends_with(']') {
                words.remove(0);
            }
            if !words.is_empty() {
                words.remove(0);
            }
        }
        let (Some(uri), Some(suite)) = (words.first(), words.get(1)) else {
            problems.push((
                "apt".into(),
                format!("source {name}: `{line}` is not `deb URI SUITE COMPONENTS`"),
            ));
            continue;
        };
        if suite.contains('$') || uri.contains('$') {
            problems.push(("apt".into(), format!("source {name}: `{line}` uses cloud-init's $RELEASE/$MIRROR: write the suite and URI out")));
            continue;
        }
        let mut repo = serde_json::Map::new();
        repo.insert(
            "name".into(),
            Value::from(super::slug(name.trim_end_matches(".list"))),
        );
        repo.insert("uri".into(), Value::from(*uri));
        repo.insert("suite".into(), Value::from(*suite));
        repo.insert(
            "components".into(),
            Value::from(words[2..].iter().map(|w| w.to_string()).collect::<Vec<_>>()),
        );
        match source.get("key").and_then(Value::as_str) {
            Some(key) => {
                repo.insert("key".into(), Value::from(key));
            }
            None if source.get("keyid").is_some() => problems.push((
                "apt".into(),
                format!("source {name}: a key by id from a key server is not fetched: put the armored key in `key`"),
            )),
            None => {}
        }
        repos.push(Value::Object(repo));
    }
    repos
}

fn yum_repos(value: &Value, problems: &mut Vec<(String, String)>) -> Vec<Value> {
    let mut repos = Vec::new();
    for (id, repo) in value.as_object().into_iter().flatten() {
        let Some(uri) = repo.get("baseurl").and_then(Value::as_str) else {
            problems.push((
                "yum_repos".into(),
                format!(
                    "{id}: only `baseurl` repositories are carried over (not mirrorlist/metalink)"
                ),
            ));
            continue;
        };
        if uri.contains('$') {
            problems.push((
                "yum_repos".into(),
                format!(
                    "{id}: `{uri}` uses dnf variables ($releasever, $basearch): write them out"
                ),
            ));
            continue;
        }
        if repo
            .get("enabled")
            .is_some_and(|e| matches!(e, Value::Bool(false)) || e == "0")
        {
            problems.push((
                "yum_repos".into(),
                format!("{id}: a disabled repository is not written"),
            ));
            continue;
        }
        let mut spec = serde_json::Map::new();
        spec.insert("name".into(), Value::from(super::slug(id)));
        spec.insert("uri".into(), Value::from(uri));
        match repo.get("gpgkey").and_then(Value::as_str) {
            Some(key) if key.contains("BEGIN PGP PUBLIC KEY") => {
                spec.insert("key".into(), Value::from(key));
            }
            Some(url) => problems.push((
                "yum_repos".into(),
                format!("{id}: the key at {url} is not fetched: put the armored key in `key`"),
            )),
            None => {}
        }
        repos.push(Value::Object(spec));
    }
    repos
}

fn reboot_if_required(builder: &mut Builder, item: &Item) {
    if item.value.as_bool() != Some(true) {
        note(builder, item, Outcome::Mapped, "false: nothing to do");
        return;
    }
    mapped_to(
        builder,
        item,
        "reboot-if-required",
        body(vec![
            (
                "shell",
                Value::from("if [ -f /var/run/reboot-required ]; then systemctl reboot; fi"),
            ),
            ("frequency", Value::from("per-instance")),
        ]),
        Outcome::Changed,
        "a `shell` step reboots when /var/run/reboot-required exists (Debian and Ubuntu), right after the packages",
    );
}

fn phone_home(builder: &mut Builder, item: &Item) {
    let Some(url) = item.value.get("url").and_then(Value::as_str) else {
        note(builder, item, Outcome::Unsupported, "no `url`");
        return;
    };
    if url.contains("$INSTANCE_ID") {
        note(
            builder,
            item,
            Outcome::Unsupported,
            "the URL uses $INSTANCE_ID: bootplan's report URL is fixed; the instance id is in the posted status",
        );
        return;
    }
    let mut report = serde_json::Map::new();
    report.insert("webhook".into(), Value::from(url));
    if let Some(tries) = item.value.get("tries").and_then(Value::as_u64) {
        report.insert("attempts".into(), Value::from(tries.max(1)));
    }
    builder.report = Some(Value::Object(report));
    note(
        builder,
        item,
        Outcome::Changed,
        "the plan's `report:` posts bootplan's status JSON on every outcome, not cloud-init's form fields (`post:`), and only once the run ends",
    );
}

fn final_message(builder: &mut Builder, item: &Item) {
    let message = scalar(&item.value);
    let step = builder.step(
        "final-message",
        body(vec![
            (
                "run",
                Value::from(vec!["echo".to_string(), literal(&message)]),
            ),
            ("frequency", Value::from("always")),
        ]),
    );
    let placeholders = ["$UPTIME", "$TIMESTAMP", "$DATASOURCE", "$VERSION"]
        .iter()
        .filter(|p| message.contains(*p))
        .copied()
        .collect::<Vec<_>>();
    let note_text = if placeholders.is_empty() {
        "logged as the last step's output".to_string()
    } else {
        format!(
            "logged as the last step's output; {} are printed as written, not filled in",
            placeholders.join(", ")
        )
    };
    builder.entry(entry(item, Outcome::Changed, note_text, vec![step]));
}

fn power_state(builder: &mut Builder, item: &Item) {
    let mode = item.value.get("mode").and_then(Value::as_str).unwrap_or("");
    let flag = match mode {
        "reboot" => "-r",
        "poweroff" => "-P",
        "halt" => "-H",
        _ => {
            note(
                builder,
                item,
                Outcome::Unsupported,
                "mode is none of reboot, poweroff, halt",
            );
            return;
        }
    };
    let delay = match item.value.get("delay") {
        None | Some(Value::Null) => "now".to_string(),
        Some(Value::String(s)) if s == "now" => "now".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => format!("+{n}"),
        Some(_) => "now".into(),
    };
    let mut argv = vec!["shutdown".to_string(), flag.to_string(), delay];
    if let Some(message) = item.value.get("message").and_then(Value::as_str) {
        argv.push(literal(message));
    }
    let step = builder.step(
        "power-state",
        body(vec![
            ("run", Value::from(argv)),
            ("frequency", Value::from("per-instance")),
        ]),
    );
    let mut changes =
        vec!["runs as the last step; cloud-init waited for its own end first".to_string()];
    if item.value.get("condition").is_some() {
        changes.push("`condition` is not carried over: put it in a `when:` or the command".into());
    }
    builder.entry(entry(
        item,
        Outcome::Changed,
        changes.join("; "),
        vec![step],
    ));
}

/// A boot hook: run on every boot, first.
pub fn boothook(builder: &mut Builder, part: &Part) {
    let path = format!(
        "/var/lib/bootplan/boothooks/{}",
        super::slug(part.filename.as_deref().unwrap_or("boothook"))
    );
    let script = part.text.split_once('\n').map_or("", |(_, rest)| rest);
    let file = builder.step(
        "boothook-file",
        body(vec![(
            "file",
            json!({ "path": path, "content": format!("#!/bin/sh\n{script}"), "mode": "0700" }),
        )]),
    );
    let run = builder.step(
        "boothook",
        body(vec![
            ("run", Value::from(vec![path])),
            ("frequency", Value::from("always")),
        ]),
    );
    builder.entry(entry_with_steps(
        part,
        "cloud-boothook",
        Outcome::Changed,
        "runs on every boot as the plan's first steps; cloud-init ran it before the network was up and gave it INSTANCE_ID",
        vec![file, run],
    ));
}

/// A user script (`#!` part): written and run once per instance.
fn user_script(builder: &mut Builder, part: &Part) {
    let name = super::slug(part.filename.as_deref().unwrap_or("script"));
    let path = format!("/var/lib/bootplan/scripts/{name}");
    let content = match &part.kind {
        PartKind::Jinja(_) => match translate_jinja(&part.text) {
            Ok(text) => text,
            Err(why) => {
                builder.entry(entry_for_part(part, "script", Outcome::Unsupported, why));
                return;
            }
        },
        _ => part.text.clone(),
    };
    let is_template = matches!(part.kind, PartKind::Jinja(_));
    let file_body = if is_template {
        body(vec![(
            "template",
            json!({ "dest": path, "inline": content, "mode": "0700" }),
        )])
    } else {
        body(vec![(
            "file",
            json!({ "path": path, "content": content, "mode": "0700" }),
        )])
    };
    let file = builder.step(&format!("script-{name}-file"), file_body);
    let run = builder.step(
        &format!("script-{name}"),
        body(vec![
            ("run", Value::from(vec![path])),
            ("frequency", Value::from("per-instance")),
        ]),
    );
    builder.entry(entry_with_steps(
        part,
        "script",
        Outcome::Changed,
        "run once per instance after the cloud-config's commands, and a failing script fails the run; cloud-init logged the failure and went on",
        vec![file, run],
    ));
}

fn entry_with_steps(
    part: &Part,
    key: &str,
    outcome: Outcome,
    note: &str,
    steps: Vec<String>,
) -> Entry {
    Entry {
        steps,
        ..entry_for_part(part, key, outcome, note.to_string())
    }
}

/// cloud-init's jinja variables, as bootplan facts.
const JINJA_FACTS: &[(&str, &str)] = &[
    ("v1.instance_id", "facts.instance_id"),
    ("v1.local_hostname", "facts.hostname"),
    ("v1.region", "facts.region"),
    ("v1.availability_zone", "facts.zone"),
    ("v1.cloud_name", "facts.cloud"),
    ("v1.platform", "facts.cloud"),
    ("ds.meta_data.instance_id", "facts.instance_id"),
    ("ds.meta_data.local_hostname", "facts.hostname"),
];

/// A jinja part with cloud-init's variables turned into facts; refused
/// when it uses anything else (`{% … %}` blocks, other variables).
fn translate_jinja(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    let mut unknown = Vec::new();
    if text.contains("{%") {
        return Err("jinja `{% … %}` blocks are not translated: render the template with the values it needs first".into());
    }
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("an unclosed `{{`".into());
        };
        let expr = after[..end].trim();
        let path = expr
            .replace("[\"", ".")
            .replace("\"]", "")
            .replace("['", ".")
            .replace("']", "")
            .replace('-', "_");
        match JINJA_FACTS.iter().find(|(from, _)| *from == path) {
            Some((_, to)) => out.push_str(&format!("{{{{ {to} }}}}")),
            None => unknown.push(expr.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "jinja variables bootplan has no fact for: {} (known: {})",
            unknown.join(", "),
            JINJA_FACTS
                .iter()
                .map(|(f, _)| *f)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// `content: !!binary |` (YAML's base64 binary) read as base64 text under
/// another key, so the file entry knows to decode it.
fn binary_as_base64(text: &str) -> String {
    text.lines()
        .map(|line| line.replacen("content: !!binary", "content__binary:", 1))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Commands and files keep `${NAME}` (shell); elsewhere, and as
/// `${a.b}` anywhere, it is a template's placeholder.
fn placeholders(item: &Item) -> Option<String> {
    let text = item.value.to_string();
    let shell_like = matches!(item.key.as_str(), "runcmd" | "bootcmd" | "write_files");
    let mut found: Vec<String> = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let inner = &after[..end];
        if !inner.is_empty() && (!shell_like || inner.contains('.') || inner.contains('(')) {
            let shown = format!("${{{inner}}}");
            if !found.contains(&shown) {
                found.push(shown);
            }
        }
        rest = &after[end + 1..];
    }
    if found.is_empty() {
        return None;
    }
    let more = found.len().saturating_sub(3);
    let mut shown = found.into_iter().take(3).collect::<Vec<_>>().join(", ");
    if more > 0 {
        shown.push_str(&format!(" and {more} more"));
    }
    Some(shown)
}

/// A line that is nothing but `${…}`: a template inserts YAML there.
fn inserted_block(text: &str) -> Option<String> {
    text.lines().enumerate().find_map(|(i, line)| {
        let t = line.trim();
        (t.starts_with("${") && t.ends_with('}')).then(|| format!("`{t}` (line {})", i + 1))
    })
}

/// Terraform `templatefile` directives left in the text (`%{ if … }`):
/// not YAML, and not something cloud-init would run.
fn terraform_directive(text: &str) -> Option<String> {
    let (number, line) = text.lines().enumerate().find(|(_, l)| {
        l.contains("%{")
            && (l.contains("if ")
                || l.contains("for ")
                || l.contains("endif")
                || l.contains("endfor")
                || l.contains("else"))
    })?;
    Some(format!(
        "line {}: `{}` is a Terraform template directive: render the template (terraform's templatefile) and import the result",
        number + 1,
        line.trim()
    ))
}
