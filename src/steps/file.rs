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

/// Writes `bytes` atomically. The owner is resolved first and set on the
/// temp file before any content is written, so a bad owner writes nothing
/// and a good one never shows the file with the wrong owner. No link at
/// the path is followed, nor one in a directory others can write.
pub fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<&str>,
) -> Result<(), StepError> {
    let ids = owner.map(|owner| resolve_owner(path, owner)).transpose()?;
    let options = fsutil::WriteOptions {
        owner: ids,
        ..fsutil::WriteOptions::new(mode)
    };
    fsutil::write_file(path, bytes, options).map_err(|err| match (owner, err) {
        (Some(owner), fsutil::FsError::Owner { source, .. }) => StepError::Owner {
            owner: owner.to_string(),
            path: path.to_path_buf(),
            message: format!("{source} (setting an owner needs root)"),
        },
        (_, err) => StepError::Fs(err),
    })
}

/// Looks up `user` or `user:group` as (uid, gid); the user's primary group
/// when no group is named.
pub(crate) fn resolve_owner(path: &Path, owner: &str) -> Result<(u32, u32), StepError> {
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
    Ok((user.uid.as_raw(), gid.as_raw()))
}
