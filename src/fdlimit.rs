//! The descriptor limit: one descriptor per client, so it caps the connection count.

use std::io;

use rlimit::Resource;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns `(before, after)`.
pub fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    let (before, _hard) = rlimit::getrlimit(Resource::NOFILE)?;
    let after = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok((before, after))
}

/// The `--max-connections` default for a descriptor limit: all of it but a small reserve.
pub fn default_max_connections(descriptor_limit: u64) -> usize {
    let usable = descriptor_limit
        .saturating_sub(crate::config::DESCRIPTOR_RESERVE)
        .max(1);
    usize::try_from(usable).unwrap_or(usize::MAX)
}
