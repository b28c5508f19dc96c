//! `--listen unix:PATH` and `unix:@NAME`: Unix stream listeners.
//!
//! A socket file is the one listening address that outlives its server, so three rules:
//! - **Never clobber.** A file already at PATH is removed only when it is a socket nobody
//!   answers on (a crashed server's leftover). A live server, a regular file, a symlink or a
//!   directory is an error.
//! - **Never a looser moment.** `bind` creates the file with the umask's permissions. So it
//!   is bound inside a fresh directory only echod can enter, given `--unix-mode` there, and
//!   only then linked in at PATH: the file is never reachable with other rights.
//! - **Clean up only your own.** At exit echod removes the file it created, and only if PATH
//!   still is that file (same device and inode), not one another process put there since.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use log::{debug, info};
use mio::net::UnixListener;
use socket2::{Domain, SockAddr, Socket, Type};

use super::{BindOptions, ListenError};

/// Binds `unix:PATH` with `--unix-mode` rights; the returned guard removes the file later.
pub(super) fn bind_path(
    path: &Path,
    options: &BindOptions,
) -> Result<(UnixListener, SocketFile), ListenError> {
    let error = |source| ListenError::new(format!("unix:{}", path.display()), source);
    remove_if_stale(path).map_err(error)?;
    let listener = bind_privately_then_link(path, options).map_err(error)?;
    let meta = fs::symlink_metadata(path).map_err(error)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        device: meta.dev(),
        inode: meta.ino(),
    };
    Ok((listener, file))
}

/// Binds `unix:@NAME` in Linux's abstract namespace: no file, no permissions (any process
/// in the same network namespace may connect), gone when the socket closes.
pub(super) fn bind_abstract(
    name: &str,
    options: &BindOptions,
) -> Result<UnixListener, ListenError> {
    let error = |source| ListenError::new(format!("unix:@{name}"), source);
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        return Err(error(io::Error::new(
            io::ErrorKind::Unsupported,
            "abstract socket names exist only on Linux; use unix:PATH",
        )));
    }
    // An abstract address is the name behind a leading NUL byte.
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(name.as_bytes());
    let address =
        SockAddr::unix(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes))
            .map_err(error)?;
    listen_at(&address, options).map_err(error)
}

/// socket → bind → listen, non-blocking, handed to mio.
fn listen_at(address: &SockAddr, options: &BindOptions) -> io::Result<UnixListener> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(address)?;
    socket.listen(i32::try_from(options.backlog).unwrap_or(i32::MAX))?;
    Ok(UnixListener::from_std(socket.into()))
}

/// Removes a leftover socket file nobody listens on; refuses anything else at `path`.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; echod will not remove it",
        ));
    }
    // A non-blocking connect answers at once: refused means nobody is listening; anything
    // that is not an error (even a full backlog, EAGAIN) means somebody is.
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            info!(
                "removing stale socket {} (nobody listens on it)",
                path.display()
            );
            fs::remove_file(path)
        }
        Err(err) if err.kind() != io::ErrorKind::WouldBlock => Err(err),
        _ => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening on this socket",
        )),
    }
}

/// Tells apart the private directories of several binds in one process.
static PRIVATE_DIRS: AtomicUsize = AtomicUsize::new(0);

/// Binds in a directory only this user can enter, sets the socket's rights there, then
/// hard-links it in at `path` (which fails, rather than replaces, if something appeared
/// there meanwhile).
fn bind_privately_then_link(path: &Path, options: &BindOptions) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let private = PrivateDir::create(parent.join(format!(
        ".echod-{}-{}",
        std::process::id(),
        PRIVATE_DIRS.fetch_add(1, Ordering::Relaxed)
    )))
    .map_err(|err| {
        // Name the directory: a missing or read-only one is the usual mistake.
        io::Error::new(err.kind(), format!("directory {}: {err}", parent.display()))
    })?;
    let inside = private.0.join("s");
    let listener = listen_at(&SockAddr::unix(&inside)?, options)?;
    fs::set_permissions(&inside, fs::Permissions::from_mode(options.unix_mode))?;
    fs::hard_link(&inside, path)?;
    Ok(listener)
}

/// A directory with mode 0700, removed (with the name bound inside it) when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(path: PathBuf) -> io::Result<PrivateDir> {
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0.join("s"));
        let _ = fs::remove_dir(&self.0);
    }
}

/// The socket file echod created at a `unix:PATH`; removed when the listener is dropped.
#[derive(Debug)]
pub(super) struct SocketFile {
    path: PathBuf,
    /// Device and inode at creation: the file at `path` is removed only if it is still ours.
    device: u64,
    inode: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.device && meta.ino() == self.inode => {
                match fs::remove_file(&self.path) {
                    Ok(()) => debug!("removed socket file {}", self.path.display()),
                    Err(err) => debug!("cannot remove {}: {err}", self.path.display()),
                }
            }
            _ => debug!(
                "{} is no longer the socket echod created: left alone",
                self.path.display()
            ),
        }
    }
}
