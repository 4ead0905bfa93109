//! Small files written so that a crash leaves the old or the new content, never a mix:
//! written to a temporary beside it, fsynced, renamed over, the directory fsynced.

use std::io::Write;
use std::path::Path;

/// Replaces `path`'s content with `bytes`, durably and atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if let Some(directory) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::File::open(directory)?.sync_all()?;
    }
    Ok(())
}
