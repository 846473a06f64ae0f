//! Writes joulo-gateway's manual pages and shell completions from the command
//! line's own definition (`joulo_gateway::cli`), so they cannot drift from
//! `--help`. The packages run it (deploy/build-deb.sh); it is not part of the
//! gateway binary.
//!
//!   cargo run --example generate -- man --out DIR     # one page per command
//!   cargo run --example generate -- bash|zsh|fish [--out FILE]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use joulo_gateway::Cli;

/// The generator's own command line.
#[derive(Parser)]
struct Args {
    /// What to write.
    #[arg(value_enum)]
    what: Generated,
    /// Where to write it (a folder for `man`, which writes one page per
    /// command); standard output without.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    generate(args.what, args.out.as_deref())
}

/// What `generate` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Generated {
    /// joulo-gateway(1) and a page per subcommand (roff).
    Man,
    /// Completions for bash.
    Bash,
    /// Completions for zsh.
    Zsh,
    /// Completions for fish.
    Fish,
}

/// What joulo-gateway(1) adds to the sections made from the command line: the
/// files an installed gateway reads, and where to read on.
const MAN_FILES_AND_SEE_ALSO: &str = r#".SH FILES
.TP
\fI/etc/joulo\-gateway/gateway.toml\fR
The configuration, as the Debian package installs it (a conffile). Every key,
its default and what it does is in
\fI/usr/share/doc/joulo\-gateway/examples/gateway.toml\fR.
.TP
\fI/etc/joulo\-gateway/joulo_token\fR
The Joulo API token, on one line: root's, mode 600. The systemd unit passes it
to the service as the credential \fBjoulo_token\fR, a copy taken at start, so
after changing it run \fBsystemctl restart joulo\-gateway\fR.
.TP
\fI/usr/lib/systemd/system/joulo\-gateway.service\fR
The hardened unit. \fBsystemctl reload joulo\-gateway\fR re-reads the
configuration; change the unit with \fBsystemctl edit joulo\-gateway\fR.
.SH "SEE ALSO"
\fBjoulo\-gateway\-run\fR(1), \fBjoulo\-gateway\-check\fR(1),
\fBjoulo\-gateway\-gen\-key\fR(1), \fBjoulo\-gateway\-healthcheck\fR(1),
\fBjoulo\-gateway\-demo\fR(1), \fBsystemd.exec\fR(5), \fBsystemd\-creds\fR(1)
.PP
\fI/usr/share/doc/joulo\-gateway/README.md\fR
"#;

/// Writes the manual pages or completions from the command line's definition.
fn generate(what: Generated, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut command = Cli::command();
    command.build();
    let shell = match what {
        Generated::Man => {
            let pages = std::iter::once(command.clone()).chain(
                command
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(|sub| {
                        let name = format!("joulo-gateway-{}", sub.get_name());
                        sub.clone().name(name).version(env!("CARGO_PKG_VERSION"))
                    }),
            );
            for page in pages {
                let mut roff = Vec::new();
                clap_mangen::Man::new(page.clone()).render(&mut roff)?;
                if page.get_name() == command.get_name() {
                    roff.extend_from_slice(MAN_FILES_AND_SEE_ALSO.as_bytes());
                }
                match out {
                    Some(dir) => {
                        let file = dir.join(format!("{}.1", page.get_name()));
                        std::fs::write(&file, roff)
                            .with_context(|| format!("cannot write {}", file.display()))?;
                    }
                    None => std::io::stdout().write_all(&roff)?,
                }
            }
            return Ok(());
        }
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "joulo-gateway", &mut script);
    if shell == clap_complete::Shell::Bash {
        // clap_complete spells a hyphenated program's subcommands one way where
        // it sets `cmd` and another in the `case` on it (clap-rs/clap#6421),
        // so no subcommand's options would complete.
        let text = String::from_utf8(script)?;
        script = text
            .replace("joulo__subcmd__gateway__", "joulo__gateway__")
            .into_bytes();
    }
    match out {
        Some(file) => std::fs::write(file, script)
            .with_context(|| format!("cannot write {}", file.display()))?,
        None => std::io::stdout().write_all(&script)?,
    }
    Ok(())
}
