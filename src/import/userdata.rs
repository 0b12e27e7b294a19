//! User data as cloud-init receives it, split into parts: gzip is undone,
//! MIME multipart is taken apart (nested, base64 or plain bodies), and
//! each part is told by its MIME type or its first line, as cloud-init's
//! "user data handlers" tell them.

use std::io::Read;

use base64::Engine as _;

/// Most bytes user data may expand to (the clouds cap it at 16–64 KiB
/// compressed; this bounds a hostile gzip).
const MAX_EXPANDED: u64 = 16 * 1024 * 1024;
/// Deepest nesting of multipart bodies and archives.
const MAX_DEPTH: usize = 8;

/// What one part is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartKind {
    /// `#cloud-config` YAML (with or without the header).
    CloudConfig,
    /// `## template: jinja` then a part of another kind.
    Jinja(Box<PartKind>),
    /// A script with a `#!` line, run once per instance.
    Script,
    /// `#cloud-boothook`: a script run on every boot, early.
    Boothook,
    /// `#include`: URLs of more user data.
    Include,
    /// `#cloud-config-archive`: a YAML list of parts.
    Archive,
    /// `#bootplan` or `text/x-bootplan`: a bootplan plan.
    Bootplan,
    /// Anything else (the MIME type, or "unknown").
    Other(String),
}

impl PartKind {
    pub fn describe(&self) -> String {
        match self {
            PartKind::CloudConfig => "cloud-config".into(),
            PartKind::Jinja(inner) => format!("jinja template of {}", inner.describe()),
            PartKind::Script => "script".into(),
            PartKind::Boothook => "cloud-boothook".into(),
            PartKind::Include => "#include".into(),
            PartKind::Archive => "cloud-config-archive".into(),
            PartKind::Bootplan => "bootplan plan".into(),
            PartKind::Other(t) => t.clone(),
        }
    }
}

/// One part of the user data.
#[derive(Debug, Clone)]
pub struct Part {
    pub kind: PartKind,
    /// The text, without a `## template: jinja` line.
    pub text: String,
    /// Where it came from: `part 2 (setup.sh)`, or empty for a single part.
    pub origin: String,
    /// The part's file name (MIME `filename`), when it has one.
    pub filename: Option<String>,
}

/// Why user data cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error("the gzip data cannot be read: {0}")]
    Gzip(String),
    #[error("the user data expands to more than {} MiB", MAX_EXPANDED / 1024 / 1024)]
    TooLarge,
    #[error("{origin}: {message}")]
    Mime { origin: String, message: String },
}

/// Splits user data into its parts.
pub fn parts(bytes: &[u8]) -> Result<Vec<Part>, UserDataError> {
    let mut found = Vec::new();
    split(bytes, "", 0, None, &mut found)?;
    Ok(found)
}

fn split(
    bytes: &[u8],
    origin: &str,
    depth: usize,
    mime: Option<(&str, Option<String>)>,
    found: &mut Vec<Part>,
) -> Result<(), UserDataError> {
    if depth > MAX_DEPTH {
        return Err(UserDataError::Mime {
            origin: origin.into(),
            message: format!("nested more than {MAX_DEPTH} levels deep"),
        });
    }
    let bytes = gunzip_if_gzip(bytes)?;
    // Windows line ends (common in MIME user data) are read as cloud-init does.
    let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
    if mime.is_none() && looks_like_mime(&text) {
        return split_mime(&text, origin, depth, found);
    }
    let (content_type, filename) = match mime {
        Some((t, f)) => (Some(t), f),
        None => (None, None),
    };
    let kind = classify(&text, content_type);
    let text = match &kind {
        PartKind::Jinja(_) => text
            .split_once('\n')
            .map_or("", |(_, rest)| rest)
            .to_string(),
        _ => text,
    };
    if kind == PartKind::Archive {
        return split_archive(&text, origin, depth, found);
    }
    found.push(Part {
        kind,
        text,
        origin: origin.to_string(),
        filename,
    });
    Ok(())
}

fn gunzip_if_gzip(bytes: &[u8]) -> Result<Vec<u8>, UserDataError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_EXPANDED + 1)
        .read_to_end(&mut out)
        .map_err(|e| UserDataError::Gzip(e.to_string()))?;
    if out.len() as u64 > MAX_EXPANDED {
        return Err(UserDataError::TooLarge);
    }
    Ok(out)
}

/// A MIME message starts with headers, one of them a Content-Type.
fn looks_like_mime(text: &str) -> bool {
    let head = text.split("\n\n").next().unwrap_or("");
    head.lines()
        .any(|l| l.to_ascii_lowercase().starts_with("content-type:"))
        && head
            .lines()
            .all(|l| l.trim().is_empty() || l.contains(':') || l.starts_with([' ', '\t']))
}

/// Tells a part by its MIME type, else by its first line.
pub fn classify(text: &str, content_type: Option<&str>) -> PartKind {
    let first = text.lines().next().unwrap_or("").trim_end();
    let lowered = first.to_ascii_lowercase();
    if lowered.starts_with("## template:") && lowered.contains("jinja") {
        let rest = text.split_once('\n').map_or("", |(_, r)| r);
        return PartKind::Jinja(Box::new(classify(rest, content_type)));
    }
    match content_type.map(str::to_ascii_lowercase).as_deref() {
        Some("text/cloud-config") => return PartKind::CloudConfig,
        Some("text/x-shellscript") => return PartKind::Script,
        Some("text/cloud-boothook") => return PartKind::Boothook,
        Some("text/x-include-url") => return PartKind::Include,
        Some("text/cloud-config-archive") => return PartKind::Archive,
        Some("text/x-bootplan") => return PartKind::Bootplan,
        Some("text/jinja2") => {
            return PartKind::Jinja(Box::new(classify(text, None)));
        }
        _ => {}
    }
    if first.starts_with("#cloud-config-archive") {
        PartKind::Archive
    } else if first.starts_with("#cloud-config") {
        PartKind::CloudConfig
    } else if first.starts_with("#cloud-boothook") {
        PartKind::Boothook
    } else if first.starts_with("#include") {
        PartKind::Include
    } else if first.starts_with("#bootplan") {
        PartKind::Bootplan
    } else if first.starts_with("#!") {
        PartKind::Script
    } else if let Some(t) = content_type {
        PartKind::Other(t.to_string())
    } else {
        // cloud-init itself would ignore it; a YAML mapping is most likely
        // cloud-config without its header.
        PartKind::CloudConfig
    }
}

fn split_mime(
    text: &str,
    origin: &str,
    depth: usize,
    found: &mut Vec<Part>,
) -> Result<(), UserDataError> {
    let (head, body) = split_head(text);
    let headers = parse_headers(head);
    let content_type = header(&headers, "content-type").unwrap_or_default();
    let (mime_type, params) = parse_content_type(&content_type);
    let fail = |message: String| UserDataError::Mime {
        origin: if origin.is_empty() {
            "user data".into()
        } else {
            origin.into()
        },
        message,
    };
    if !mime_type.starts_with("multipart/") {
        let filename = filename(&headers, &params);
        let decoded = decode_body(body, &headers).map_err(fail)?;
        return split(
            &decoded,
            origin,
            depth + 1,
            Some((&mime_type, filename)),
            found,
        );
    }
    let boundary = params
        .iter()
        .find(|(k, _)| k == "boundary")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| fail("a multipart message without a boundary".into()))?;
    let delimiter = format!("--{boundary}");
    let mut sections = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare == delimiter || bare == format!("{delimiter}--") {
            if let Some(section) = current.take() {
                sections.push(section.concat());
            }
            if bare.ends_with("--") && bare != delimiter {
                break;
            }
            current = Some(Vec::new());
        } else if let Some(section) = current.as_mut() {
            section.push(line);
        }
    }
    if let Some(section) = current.take() {
        sections.push(section.concat());
    }
    for (i, section) in sections.iter().enumerate() {
        let (part_head, part_body) = split_head(section);
        let part_headers = parse_headers(part_head);
        let part_type =
            header(&part_headers, "content-type").unwrap_or_else(|| "text/plain".into());
        let (part_mime, part_params) = parse_content_type(&part_type);
        let name = filename(&part_headers, &part_params);
        let here = match (&name, origin.is_empty()) {
            (Some(n), true) => format!("part {} ({n})", i + 1),
            (None, true) => format!("part {}", i + 1),
            (Some(n), false) => format!("{origin}, part {} ({n})", i + 1),
            (None, false) => format!("{origin}, part {}", i + 1),
        };
        if part_mime.starts_with("multipart/") {
            split_mime(section, &here, depth + 1, found)?;
            continue;
        }
        let decoded = decode_body(part_body, &part_headers).map_err(|m| UserDataError::Mime {
            origin: here.clone(),
            message: m,
        })?;
        split(&decoded, &here, depth + 1, Some((&part_mime, name)), found)?;
    }
    Ok(())
}

fn split_archive(
    text: &str,
    origin: &str,
    depth: usize,
    found: &mut Vec<Part>,
) -> Result<(), UserDataError> {
    let body = text.split_once('\n').map_or("", |(_, r)| r);
    let entries: Vec<serde_json::Value> =
        serde_saphyr::from_str(body).map_err(|e| UserDataError::Mime {
            origin: if origin.is_empty() {
                "cloud-config-archive".into()
            } else {
                origin.into()
            },
            message: format!("not a YAML list of parts: {e}"),
        })?;
    for (i, entry) in entries.iter().enumerate() {
        let here = format!(
            "{}archive entry {}",
            if origin.is_empty() {
                String::new()
            } else {
                format!("{origin}, ")
            },
            i + 1
        );
        let (content, mime) = match entry {
            // A bare string is a part of its own; without a header it is plain text.
            serde_json::Value::String(s) => (
                s.clone(),
                (!s.starts_with('#')).then(|| "text/plain".to_string()),
            ),
            serde_json::Value::Object(map) => (
                map.get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default()
                    .to_string(),
                map.get("type").and_then(|t| t.as_str()).map(String::from),
            ),
            _ => continue,
        };
        let filename = entry
            .get("filename")
            .and_then(|f| f.as_str())
            .map(String::from);
        match mime {
            Some(t) => split(
                content.as_bytes(),
                &here,
                depth + 1,
                Some((&t, filename)),
                found,
            )?,
            None => split(content.as_bytes(), &here, depth + 1, None, found)?,
        }
    }
    Ok(())
}

fn split_head(text: &str) -> (&str, &str) {
    for sep in ["\r\n\r\n", "\n\n"] {
        if let Some(i) = text.find(sep) {
            return (&text[..i], &text[i + sep.len()..]);
        }
    }
    (text, "")
}

/// Header lines, continuation lines folded in, names lowercased.
fn parse_headers(head: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    headers
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// `text/x-shellscript; charset="us-ascii"` → the type and its parameters.
fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = value.split(';');
    let mime = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = pieces
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect();
    (mime, params)
}

fn filename(headers: &[(String, String)], content_params: &[(String, String)]) -> Option<String> {
    let from_disposition = header(headers, "content-disposition").and_then(|d| {
        parse_content_type(&d)
            .1
            .into_iter()
            .find(|(k, _)| k == "filename")
            .map(|(_, v)| v)
    });
    from_disposition.or_else(|| {
        content_params
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.clone())
    })
}

fn decode_body(body: &str, headers: &[(String, String)]) -> Result<Vec<u8>, String> {
    match header(headers, "content-transfer-encoding")
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("base64") => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| format!("the base64 body cannot be decoded: {e}"))
        }
        Some("quoted-printable") => Ok(quoted_printable(body)),
        _ => Ok(body.as_bytes().to_vec()),
    }
}

/// RFC 2045 quoted-printable: `=XX` bytes and `=` soft line breaks.
fn quoted_printable(body: &str) -> Vec<u8> {
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let rest = &bytes[i + 1..];
            if rest.starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if rest.starts_with(b"\n") {
                i += 2;
                continue;
            }
            if rest.len() >= 2
                && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&rest[..2]), 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_message_gives_each_part_its_kind() {
        let text = "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n--XX\nContent-Type: text/cloud-config; charset=\"us-ascii\"\n\n#cloud-config\nhostname: a\n\n--XX\nContent-Type: text/x-shellscript\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"s.sh\"\n\nIyEvYmluL3NoCmVjaG8gaGkK\n--XX--\n";
        let found = parts(text.as_bytes()).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].kind, PartKind::CloudConfig);
        assert_eq!(found[1].kind, PartKind::Script);
        assert_eq!(found[1].text, "#!/bin/sh\necho hi\n");
        assert_eq!(found[1].origin, "part 2 (s.sh)");
    }

    #[test]
    fn gzip_jinja_and_headerless_yaml_are_recognised() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"## template: jinja\n#cloud-config\nhostname: {{ v1.instance_id }}\n")
            .unwrap();
        let found = parts(&gz.finish().unwrap()).unwrap();
        assert_eq!(
            found[0].kind,
            PartKind::Jinja(Box::new(PartKind::CloudConfig))
        );
        assert!(found[0].text.starts_with("#cloud-config"));
        assert_eq!(
            parts(b"packages: [jq]\n").unwrap()[0].kind,
            PartKind::CloudConfig
        );
        assert_eq!(
            parts(b"#!/bin/bash\ntrue\n").unwrap()[0].kind,
            PartKind::Script
        );
    }

    #[test]
    fn an_endless_gzip_is_refused() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..17 {
            gz.write_all(&zeros).unwrap();
        }
        assert!(matches!(
            parts(&gz.finish().unwrap()),
            Err(UserDataError::TooLarge)
        ));
    }
}
