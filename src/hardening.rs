//! What the process does to itself before it reads the token, so the token
//! cannot leave by a side door: no core file (`RLIMIT_CORE` 0, soft and hard)
//! and not dumpable (`PR_SET_DUMPABLE` 0), which also keeps other processes of
//! the same user from attaching with ptrace or reading its memory.

/// Forbids core dumps for this process and its children. Linux only; elsewhere
/// it does nothing.
#[cfg(target_os = "linux")]
pub fn forbid_core_dumps() -> std::io::Result<()> {
    use rustix::process::{
        DumpableBehavior, Resource, Rlimit, getrlimit, set_dumpable_behavior, setrlimit,
    };
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    // A seccomp filter (systemd's `~@resources`) may refuse setrlimit; then
    // the limit the service manager set (`LimitCORE=0`) is what counts.
    if let Err(e) = setrlimit(Resource::Core, zero)
        && getrlimit(Resource::Core) != zero
    {
        return Err(e.into());
    }
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Forbids core dumps for this process. Linux only; elsewhere it does nothing.
#[cfg(not(target_os = "linux"))]
pub fn forbid_core_dumps() -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn no_core_file_and_not_dumpable_read_back_from_the_kernel() {
        forbid_core_dumps().unwrap();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        let fields: Vec<&str> = core.split_whitespace().collect();
        // "Max core file size 0 0 bytes": soft and hard.
        assert_eq!(&fields[4..6], ["0", "0"], "{core}");
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
        // The hard limit cannot be raised again without privilege... and an
        // unprivileged attempt is refused rather than ignored.
        if !rustix::process::geteuid().is_root() {
            assert!(
                rustix::process::setrlimit(
                    rustix::process::Resource::Core,
                    rustix::process::Rlimit {
                        current: Some(1 << 20),
                        maximum: Some(1 << 20),
                    },
                )
                .is_err()
            );
        }
    }
}
