//! Reading files an admin points the gateway at (the token, the LAN certificate
//! and key, the upstream CA, the config itself): regular files only, bounded,
//! never blocking. A FIFO would hang a reload forever and `/dev/zero` would
//! never end, so neither is ever read.
//!
//! About 400 lines before its unit tests, which are long because each rule
//! on a secret's mode, owner and file system is tested on real files.

use std::io::{self, Read};
use std::path::Path;

use secrecy::zeroize::Zeroizing;

/// Why a file was not read. Never carries any of its contents: the caller names
/// the file and what it was for.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening, inspecting or reading failed: missing, a permission, an I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Something that is not a regular file: reading it could block or never end.
    #[error("it is {kind}, not a regular file")]
    NotRegular {
        /// What it is instead, with its article ("a FIFO (named pipe)").
        kind: &'static str,
    },
    /// A secret that others could read or change: mode or owner too open.
    #[error("{problem}")]
    Exposed {
        /// What is wrong and the command that fixes it.
        problem: String,
    },
    /// Longer than anything this file should hold.
    #[error("it is larger than {limit} bytes, the most accepted for this file")]
    TooLarge {
        /// The most bytes accepted.
        limit: u64,
    },
}

/// Reads the regular file at `path` (symbolic links followed: the target is
/// what is checked), refusing anything else and anything longer than `limit`
/// bytes. At most `limit + 1` bytes are ever read, and the buffer is zeroized
/// when dropped, as are any it outgrew, since the file may be a secret.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let (file, size_hint) = open_regular(path)?;
    read_bounded(file, size_hint, limit)
}

/// Writes `contents` to `path`, creating it readable and writable by its owner
/// only (0600 on Unix) from the start, so there is no moment at which another
/// user could open it. An existing file keeps its mode.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// Who may get at a secrets file besides the gateway, ssh's standard for a
/// private key: nobody. Group or other permission bits, or an owner that is
/// neither the gateway's user nor root, are exposure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exposure {
    /// What is wrong and the command that fixes it.
    pub problem: String,
}

/// Reads a secrets file like [`read_regular`], and also checks, on the file
/// opened (a symbolic link's target), that only the gateway's user or root
/// owns it and nobody else may read or write it. A file failing that is
/// refused, unless `platform_protected` (a secrets mount the platform itself
/// guards, such as systemd credentials or Docker secrets): then it is read and
/// its [`Exposure`] returned for a warning, except when others may read it
/// and it does not lie on a memory file system (see [`platform_mount_refuses`]).
pub(crate) fn read_private(
    path: &Path,
    limit: u64,
    platform_protected: bool,
) -> Result<(Zeroizing<Vec<u8>>, Option<Exposure>), FileError> {
    let (file, size_hint) = open_regular(path)?;
    // Someone who can replace the file, or a link on the way to it, can make
    // the gateway read their choice: the folders count as much as the file.
    if let Some(problem) = writable_folder(path) {
        return Err(FileError::Exposed { problem });
    }
    let (owner, mode) = exposure(&file)?;
    // A foreign owner is refused even in a platform mount; a loose mode there
    // is the platform's own choice (Swarm mounts secrets 0444) and only warned.
    if let Some(problem) = owner {
        return Err(FileError::Exposed { problem });
    }
    if let Some(problem) = &mode
        && !platform_protected
    {
        return Err(FileError::Exposed {
            problem: problem.clone(),
        });
    }
    if platform_protected && let Some(problem) = platform_mount_exposure(&file)? {
        return Err(FileError::Exposed { problem });
    }
    let exposure = mode.map(|problem| Exposure { problem });
    Ok((read_bounded(file, size_hint, limit)?, exposure))
}

/// `statfs` magic of tmpfs (Linux `TMPFS_MAGIC`).
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// `statfs` magic of ramfs (Linux `RAMFS_MAGIC`).
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// Whether a secret in a platform secrets mount, with permission bits `mode`
/// and lying on a file system of `statfs` type `fs_magic` (`None`: unknown),
/// is refused. A loose mode is the platform's own choice only on the memory
/// file system it made for its secrets (Swarm's and systemd's are tmpfs,
/// 0444 in Swarm): a file others can read anywhere else is a host file
/// bind-mounted in (Compose's `secrets: file:`), and its mode is what every
/// local user of the host gets. Group bits alone stay a warning: the group
/// is the platform's, not every user's.
fn platform_mount_refuses(mode: u32, fs_magic: Option<u64>) -> bool {
    let memory = fs_magic.is_some_and(|m| m == TMPFS_MAGIC || m == RAMFS_MAGIC);
    mode & 0o004 != 0 && !memory
}

/// The refusal, with the fix, of the opened `file` in a platform mount, if
/// [`platform_mount_refuses`] it.
#[cfg(unix)]
fn platform_mount_exposure(file: &std::fs::File) -> Result<Option<String>, FileError> {
    let mode = rustix::fs::fstat(file).map_err(io::Error::from)?.st_mode & 0o7777;
    #[cfg(target_os = "linux")]
    let fs_magic = rustix::fs::fstatfs(file)
        .ok()
        // Signed or not depending on the platform: the magic is 32 bits.
        .map(|s| (s.f_type as u64) & 0xffff_ffff);
    #[cfg(not(target_os = "linux"))]
    let fs_magic = None;
    Ok(platform_mount_refuses(mode, fs_magic).then(|| {
        format!(
            "it is readable by others (mode {mode:04o}) and is not on the memory file system a \
             platform makes for its secrets: it is a host file mounted in (Docker Compose \
             `secrets: file:`), readable by every user of the host; on the host, give the file \
             to the container's user and make it private: \
             `chown 65532:65532 FILE && chmod 600 FILE` (see docs/operations.md, Docker)"
        )
    }))
}

#[cfg(not(unix))]
fn platform_mount_exposure(_file: &std::fs::File) -> Result<Option<String>, FileError> {
    Ok(None)
}

/// Whether `path` leads to a file in a secrets mount the platform itself
/// guards: the systemd credentials directory (`$CREDENTIALS_DIRECTORY`, which
/// must be absolute) or Docker's `/run/secrets`. Decided on where the path
/// really leads (links and `..` resolved), never on how it is spelt.
pub(crate) fn platform_protected(path: &Path) -> bool {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(std::path::PathBuf::from)
        .filter(|dir| dir.is_absolute() && dir != Path::new("/"));
    under_platform_mount(path, credentials.as_deref())
}

/// [`platform_protected`] with the credentials directory given.
pub(crate) fn under_platform_mount(path: &Path, credentials: Option<&Path>) -> bool {
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    let under = |dir: &Path| {
        std::fs::canonicalize(dir).is_ok_and(|dir| dir != Path::new("/") && real.starts_with(dir))
    };
    credentials.is_some_and(under) || under(Path::new("/run/secrets"))
}

/// Holds the file a platform copied a secret from (systemd's
/// `LoadCredential=` source) to the same standard as the secret itself, as far
/// as it can be seen from inside the service: no group or other permission
/// bits, and no folder on the way others may write. Its owner is not judged (a
/// user namespace shows root as nobody), nor is a source that cannot be seen
/// (gone since the copy, or in a folder closed to the service).
pub(crate) fn check_source_private(path: &Path) -> Result<(), FileError> {
    #[cfg(unix)]
    {
        let Ok(stat) = rustix::fs::stat(path) else {
            return Ok(());
        };
        if let Some(problem) = loose_mode(stat.st_mode & 0o7777) {
            return Err(FileError::Exposed { problem });
        }
        if let Some(problem) = writable_folder(path) {
            return Err(FileError::Exposed { problem });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Refuses a file others could change: `path` must not be writable by group or
/// others (the config, a CA file: not secret, but whoever can edit them can
/// send the token elsewhere), nor lie in a folder they can write to.
pub(crate) fn check_not_writable_by_others(path: &Path) -> Result<(), FileError> {
    if let Some(problem) = writable_folder(path) {
        return Err(FileError::Exposed { problem });
    }
    #[cfg(unix)]
    {
        let stat = rustix::fs::stat(path).map_err(io::Error::from)?;
        let mode = stat.st_mode & 0o7777;
        let me = rustix::process::geteuid().as_raw();
        if mode & 0o022 != 0 {
            return Err(FileError::Exposed {
                problem: format!(
                    "it is writable by group or others (mode {mode:04o}), who could change where the \
                     gateway sends its token or who may use it; run `chmod go-w` on it"
                ),
            });
        }
        if stat.st_uid != me && stat.st_uid != 0 {
            return Err(FileError::Exposed {
                problem: format!(
                    "it belongs to uid {}, neither the gateway's user (uid {me}) nor root, who \
                     could change where the gateway sends its token or who may use it",
                    stat.st_uid
                ),
            });
        }
    }
    Ok(())
}

/// The first folder on the way to `path` (its own folders, and those of the
/// file a link leads to) that group or others may write to without the sticky
/// bit, as ssh checks a key's folders: there anyone could swap the file or a
/// link for their own. `None` when there is none.
#[cfg(unix)]
fn writable_folder(path: &Path) -> Option<String> {
    let absolute = std::path::absolute(path).ok()?;
    let resolved = std::fs::canonicalize(path).ok();
    let folders = absolute
        .ancestors()
        .skip(1)
        .chain(resolved.iter().flat_map(|r| r.ancestors().skip(1)));
    for folder in folders {
        let Ok(stat) = rustix::fs::stat(folder) else {
            continue;
        };
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Some(format!(
                "the folder {} is writable by group or others (mode {mode:04o}), who could \
                 replace the file; run `chmod go-w {}`",
                folder.display(),
                folder.display()
            ));
        }
    }
    None
}

#[cfg(not(unix))]
fn writable_folder(_path: &Path) -> Option<String> {
    None
}

/// The opened file's problems: a foreign owner, and a mode open to group or
/// others, each with the command that fixes it.
#[cfg(unix)]
fn exposure(file: &std::fs::File) -> Result<(Option<String>, Option<String>), FileError> {
    let stat = rustix::fs::fstat(file).map_err(io::Error::from)?;
    let mode = stat.st_mode & 0o7777;
    let owner = stat.st_uid;
    let me = rustix::process::geteuid().as_raw();
    let owner = (owner != me && owner != 0).then(|| {
        format!(
            "it belongs to uid {owner}, neither the user running this (uid {me}) nor root; \
             run `chown` on it to the user that runs the gateway"
        )
    });
    Ok((owner, loose_mode(mode)))
}

/// What is wrong with a secret's permission bits, and the fix: any bit for
/// group or others.
#[cfg(unix)]
fn loose_mode(mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "it is readable or writable by group or others (mode {mode:04o}); \
             run `chmod 600` on it, as ssh requires of a private key"
        )
    })
}

/// Without Unix permissions there is nothing to check.
#[cfg(not(unix))]
fn exposure(_file: &std::fs::File) -> Result<(Option<String>, Option<String>), FileError> {
    Ok((None, None))
}

/// Opens `path` for reading once it is known to be a regular file; returns it
/// with its size when opened, a hint for the buffer.
#[cfg(unix)]
fn open_regular(path: &Path) -> Result<(std::fs::File, u64), FileError> {
    use rustix::fs::{Mode, OFlags};

    // Looked at before opening, so a device is never even opened (opening one
    // can have effects of its own), and a socket, which cannot be opened at
    // all, is named as such rather than as "no such device or address".
    check_kind(&rustix::fs::stat(path).map_err(io::Error::from)?)?;
    // O_NONBLOCK: should a FIFO take the file's place after the check, opening
    // and reading it return at once instead of waiting for a writer. Regular
    // files ignore the flag. O_NOCTTY: a terminal put there does not become
    // the gateway's controlling terminal.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    // What was opened is what counts; the path may have changed since `stat`.
    let opened = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    check_kind(&opened)?;
    let size = u64::try_from(opened.st_size).unwrap_or(0);
    Ok((std::fs::File::from(fd), size))
}

/// Refuses every kind of file but a regular one, naming the kind.
#[cfg(unix)]
fn check_kind(stat: &rustix::fs::Stat) -> Result<(), FileError> {
    use rustix::fs::FileType;

    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => return Ok(()),
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        // Not after following links, but named all the same.
        FileType::Symlink => "a symbolic link",
        FileType::Unknown => "of an unknown kind",
    };
    Err(FileError::NotRegular { kind })
}

/// Without `O_NONBLOCK` and `fstat` from rustix: the kind is checked on the
/// opened file, which is as good except that a FIFO's open waits for a writer.
#[cfg(not(unix))]
fn open_regular(path: &Path) -> Result<(std::fs::File, u64), FileError> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(FileError::NotRegular {
            kind: "a directory",
        });
    }
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            kind: "a special file",
        });
    }
    Ok((file, meta.len()))
}

/// Reads `file` to its end, or to one byte past `limit` to tell that it is too
/// long. The buffer starts at the size the file had when opened; should it
/// grow meanwhile, the contents move to a larger zeroizing buffer and the old
/// one is wiped, where `Vec`'s own growth would leave a copy in freed memory.
fn read_bounded(
    mut file: impl Read,
    size_hint: u64,
    limit: u64,
) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let ceiling = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    // One byte over the expected size, so the read that finds the end has room.
    let start = usize::try_from(size_hint.saturating_add(1))
        .unwrap_or(usize::MAX)
        .clamp(1, ceiling);
    let mut buffer = Zeroizing::new(vec![0u8; start]);
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            if filled >= ceiling {
                return Err(FileError::TooLarge { limit });
            }
            let size = buffer.len().saturating_mul(2).max(4096).min(ceiling);
            let mut larger = Zeroizing::new(vec![0u8; size]);
            larger[..filled].copy_from_slice(&buffer[..filled]);
            buffer = larger;
        }
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Zeroizing a `Vec` wipes its whole capacity, the cut-off tail included.
    buffer.truncate(filled);
    Ok(buffer)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Runs `read_regular` on another thread and fails the test if it does not
    /// return promptly: the point of the module is that nothing blocks.
    fn read_promptly(path: &Path, limit: u64) -> Result<Zeroizing<Vec<u8>>, FileError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(read_regular(&path, limit));
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("read_regular returned within 5 s")
    }

    fn kind_of(result: Result<Zeroizing<Vec<u8>>, FileError>) -> &'static str {
        match result {
            Err(FileError::NotRegular { kind }) => kind,
            other => panic!("expected a refusal by kind, got {other:?}"),
        }
    }

    #[test]
    fn a_regular_file_is_read_whole_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(&read_promptly(&path, 10).unwrap()[..], b"0123456789");
        assert_eq!(&read_promptly(&path, 1 << 20).unwrap()[..], b"0123456789");
        std::fs::write(&path, b"").unwrap();
        assert!(read_promptly(&path, 10).unwrap().is_empty());
    }

    #[test]
    fn a_file_past_the_limit_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"01234567890").unwrap();
        let err = read_promptly(&path, 10).unwrap_err();
        assert!(matches!(err, FileError::TooLarge { limit: 10 }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("10 bytes") && !text.contains("0123"),
            "{text}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &path, rustix::fs::Mode::from(0o600)).unwrap();
        let err = read_promptly(&path, 64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "it is a FIFO (named pipe), not a regular file"
        );
    }

    #[test]
    fn devices_directories_and_sockets_are_refused() {
        assert_eq!(
            kind_of(read_promptly(Path::new("/dev/zero"), 64)),
            "a character device"
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kind_of(read_promptly(dir.path(), 64)), "a directory");
        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(kind_of(read_promptly(&socket, 64)), "a socket");
    }

    #[test]
    fn symlinks_are_followed_and_their_target_checked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"pem").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(&read_promptly(&link, 64).unwrap()[..], b"pem");
        let to_zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &to_zero).unwrap();
        assert_eq!(kind_of(read_promptly(&to_zero, 64)), "a character device");
    }

    #[test]
    fn secrets_are_held_to_ssh_standard_unless_the_platform_guards_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret").unwrap();
        for (mode, refused) in [
            (0o600, false),
            (0o400, false),
            (0o640, true),
            (0o604, true),
            (0o620, true),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match read_private(&path, 64, false) {
                Ok((bytes, None)) => assert!(!refused && &bytes[..] == b"s3cret", "{mode:o}"),
                Err(FileError::Exposed { problem }) => {
                    assert!(refused, "{mode:o}");
                    assert!(
                        problem.contains("chmod 600") && problem.contains(&format!("{mode:04o}")),
                        "{problem}"
                    );
                    assert!(!problem.contains("s3cret"));
                }
                other => panic!("{mode:o}: {other:?}"),
            }
            // A platform-guarded mount: read, with the exposure for a
            // warning, unless others can read it off a memory file system.
            let on_memory = rustix::fs::statfs(dir.path()).is_ok_and(|s| {
                [TMPFS_MAGIC, RAMFS_MAGIC].contains(&((s.f_type as u64) & 0xffff_ffff))
            });
            match read_private(&path, 64, true) {
                Ok((bytes, exposure)) => {
                    assert!(on_memory || mode & 0o004 == 0, "{mode:o}");
                    assert_eq!(&bytes[..], b"s3cret");
                    assert_eq!(exposure.is_some(), refused, "{mode:o}");
                }
                Err(FileError::Exposed { problem }) => {
                    assert!(!on_memory && mode & 0o004 != 0, "{mode:o}: {problem}");
                    assert!(problem.contains("chmod 600") && problem.contains("65532"));
                }
                Err(e) => panic!("{mode:o}: {e}"),
            }
        }
        // A link to a loose file is judged by the file, not the link.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            read_private(&link, 64, false),
            Err(FileError::Exposed { .. })
        ));
        // Another owner (only root can hand a file to someone else).
        if rustix::process::geteuid().is_root() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(12345), None).unwrap();
            let Err(FileError::Exposed { problem }) = read_private(&path, 64, false) else {
                panic!("a file of uid 12345 must be refused");
            };
            assert!(
                problem.contains("uid 12345") && problem.contains("chown"),
                "{problem}"
            );
            // Not even in a platform mount.
            assert!(read_private(&path, 64, true).is_err());
        }
    }

    #[test]
    fn a_platform_secret_others_can_read_is_refused_off_a_memory_file_system() {
        const EXT4: u64 = 0xef53;
        const OVERLAY: u64 = 0x794c_7630;
        // Swarm's 0444 on its tmpfs, systemd's credentials on ramfs/tmpfs.
        assert!(!platform_mount_refuses(0o444, Some(TMPFS_MAGIC)));
        assert!(!platform_mount_refuses(0o444, Some(RAMFS_MAGIC)));
        // Compose bind-mounts the host file: its 0644 is every host user's.
        assert!(platform_mount_refuses(0o644, Some(EXT4)));
        assert!(platform_mount_refuses(0o444, Some(OVERLAY)));
        assert!(platform_mount_refuses(0o604, None), "unknown: refused");
        // Private to others: group bits stay a warning, wherever it lies.
        for fs in [Some(EXT4), Some(TMPFS_MAGIC), None] {
            assert!(!platform_mount_refuses(0o640, fs));
            assert!(!platform_mount_refuses(0o600, fs));
        }
        // A real tmpfs, where the machine has one (/dev/shm usually is).
        let on_tmpfs = |p: &Path| {
            rustix::fs::statfs(p).is_ok_and(|s| (s.f_type as u64) & 0xffff_ffff == TMPFS_MAGIC)
        };
        if on_tmpfs(Path::new("/dev/shm")) {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir_in("/dev/shm").unwrap();
            let path = dir.path().join("secret");
            std::fs::write(&path, "s3cret").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
            let (_, exposure) = read_private(&path, 64, true).unwrap();
            assert!(exposure.is_some(), "read, with a warning");
        }
    }

    #[test]
    fn a_private_file_in_a_folder_others_can_write_is_refused_unless_sticky() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let path = shared.join("secret");
        write_private(&path, "s3cret").unwrap();
        assert!(read_private(&path, 64, false).is_ok());
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let Err(FileError::Exposed { problem }) = read_private(&path, 64, false) else {
            panic!("anyone could swap the file in a 0777 folder");
        };
        assert!(
            problem.contains("chmod go-w") && problem.contains("0777"),
            "{problem}"
        );
        // A link from a safe folder into it is judged by where it leads.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_private(&link, 64, false).is_err());
        // Sticky, like /tmp: others cannot replace what is not theirs.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(read_private(&path, 64, false).is_ok());
        // The config and CA files: writable by others is refused.
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, "").unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_not_writable_by_others(&config).is_ok());
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(check_not_writable_by_others(&config).is_err());
    }

    #[test]
    fn missing_files_give_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_promptly(&dir.path().join("missing"), 64).unwrap_err();
        assert!(
            matches!(&err, FileError::Io(e) if e.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
    }

    #[test]
    fn a_file_longer_than_it_was_when_opened_is_still_bounded() {
        // The size hint says 3 bytes; the reader has far more.
        let long = std::io::repeat(b'x');
        let started = Instant::now();
        let err = read_bounded(long, 3, 100_000).unwrap_err();
        assert!(matches!(err, FileError::TooLarge { limit: 100_000 }));
        assert!(started.elapsed() < Duration::from_secs(5));
        let grown = read_bounded(&b"abcdefghij"[..], 3, 10).unwrap();
        assert_eq!(&grown[..], b"abcdefghij");
    }
}
