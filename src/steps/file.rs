//! `file` steps: write literal content atomically with a mode and owner.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{StepAction, StepContext, StepError, StepInputs};
use crate::fsutil;
use crate::plan::FileSpec;

pub struct FileAction<'a> {
    pub spec: &'a FileSpec,
}

impl StepAction for FileAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        _cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let path = inputs.path(&self.spec.path, "file.path", ctx)?;
        write_file(
            &path,
            self.spec.content.as_bytes(),
            self.spec.mode,
            self.spec.owner.as_deref(),
        )
    }
}

/// Writes `bytes` atomically; with `owner`, the temp file's owner is not set
/// before the rename, so the file is set to `owner` right after it lands.
pub fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<&str>,
) -> Result<(), StepError> {
    fsutil::write_atomic(path, bytes, mode)?;
    if let Some(owner) = owner {
        set_owner(path, owner)?;
    }
    Ok(())
}

/// Sets `user` or `user:group` on `path`.
fn set_owner(path: &Path, owner: &str) -> Result<(), StepError> {
    let err = |message: String| StepError::Owner {
        owner: owner.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let (user_name, group_name) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let user = nix::unistd::User::from_name(user_name)
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err(format!("no user named `{user_name}`")))?;
    let gid = match group_name {
        Some(name) => {
            nix::unistd::Group::from_name(name)
                .map_err(|e| err(e.to_string()))?
                .ok_or_else(|| err(format!("no group named `{name}`")))?
                .gid
        }
        None => user.gid,
    };
    nix::unistd::chown(path, Some(user.uid), Some(gid)).map_err(|e| {
        let hint = if e == nix::errno::Errno::EPERM {
            " (setting an owner needs root)"
        } else {
            ""
        };
        err(format!("{e}{hint}"))
    })
}
