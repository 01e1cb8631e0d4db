//! The commands both binaries share (`up`, `check`, `status`, `genkey`, `pubkey`), so that
//! `suidao-client` and `suidao-server` stay thin: parse, load, hand to the engine.

use crate::config::Config;
use crate::{engine, status};
use clap::Subcommand;
use rand_core::OsRng;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use suidao_proto::keys::{self, KeyError, PrivateKey};
use zeroize::Zeroizing;

#[derive(Subcommand, Debug)]
pub enum Common {
    /// Bring the interface up and run in the foreground until SIGINT or SIGTERM, then remove
    /// everything that was added (addresses, routes, the control socket).
    Up {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration and print what `up` would do: interface, addresses, MTU,
    /// routes, peers. Changes nothing.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show running interfaces: peers, latest handshakes, transfer, drops by reason.
    Status {
        /// Interface name (default: every interface with a control socket).
        name: Option<String>,
        /// Take the interface name from this configuration file.
        #[arg(short, long, value_name = "FILE", conflicts_with = "name")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config of a running interface and apply the difference: peers added,
    /// removed or changed take effect, the sessions of unchanged peers go on (as SIGHUP does).
    Reload {
        /// Interface name (default: the only interface up).
        name: Option<String>,
        /// Take the interface name from this configuration file.
        #[arg(short, long, value_name = "FILE", conflicts_with = "name")]
        config: Option<PathBuf>,
    },
    /// Turn a wg-quick .conf into a suidao TOML config (printed, or written with -o).
    Import {
        /// The wg-quick file (its name, less .conf, becomes the interface name).
        file: PathBuf,
        /// Write the TOML here (mode 600: it holds the private key).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print a suidao config as a wg-quick .conf (it holds the private key).
    Export {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Print a new pre-shared key (base64), like `wg genpsk`.
    Genpsk,
    /// Read a private key on standard input and print its public key, like `wg pubkey`.
    Pubkey,
}

/// Logs to standard error; the level comes from RUST_LOG (default `info`). Colour only when
/// standard error is a terminal and NO_COLOR is not set. A log line that cannot be written (the
/// reader of a pipe went away) is dropped: logging never takes the process down (the
/// subscriber's own error report would `eprintln!`, which panics on a broken pipe).
pub fn init_logging() {
    init_logging_or("info")
}

/// As `init_logging`, with `default` (an EnvFilter directive) when RUST_LOG is not set.
pub fn init_logging_or(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .log_internal_errors(false)
        .try_init();
}

/// Whether to colour: on a terminal, unless NO_COLOR is set to anything but the empty string
/// (no-color.org).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The configuration keys, for the man page (the README has the same table, longer).
const CONFIG_KEYS: &[(&str, &str)] = &[
    (
        "[interface] name",
        "The TUN interface name, at most 15 characters.",
    ),
    (
        "private_key, private_key_file",
        "The interface's private key (base64), inline or in a file only its owner may read.",
    ),
    ("listen_port", "UDP port; default random, fine for clients."),
    (
        "address",
        "Tunnel addresses with their prefix, IPv4 and IPv6, as a list.",
    ),
    (
        "mtu",
        "Tunnel MTU; default 1420 (a 1500-byte underlay less 80 bytes of IPv6, UDP and WireGuard).",
    ),
    (
        "workers",
        "Data-path workers, 1-64; default one per two CPUs, at most 8.",
    ),
    (
        "hairpin",
        "Relay packets between peers inside suidao; default true.",
    ),
    (
        "table",
        "Where the peers' routes go: \"auto\" (the main table; a default route makes a full tunnel), \"off\", \"main\" or a table number.",
    ),
    (
        "fwmark",
        "A mark on suidao's own UDP packets (SO_MARK), as wg-quick's FwMark.",
    ),
    (
        "dns",
        "Name servers (addresses) and search domains (names) while the interface is up, set as wg-quick sets them: through resolvconf, else resolvectl.",
    ),
    (
        "public_endpoint",
        "host:port clients use to reach this server (written by add-client).",
    ),
    (
        "pre_up, post_up, pre_down, post_down",
        "Shell commands run around up and its teardown, as root; %i is the interface name.",
    ),
    ("[[peer]] name", "A label for logs and status."),
    ("public_key", "The peer's public key."),
    (
        "preshared_key, preshared_key_file",
        "Optional pre-shared key (Noise psk2).",
    ),
    (
        "endpoint",
        "host:port; a host name is resolved by up, and again while the peer's handshakes fail.",
    ),
    (
        "allowed_ips",
        "The peer's addresses (cryptokey routing); each becomes a route through the tunnel.",
    ),
    (
        "persistent_keepalive",
        "Seconds between keepalives, to hold a NAT mapping open.",
    ),
];

fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// One man page for the whole program: clap_mangen's page, but with every command described
/// in it (clap_mangen's own section points to one page per command, which nobody installs)
/// and a CONFIGURATION section.
fn man_page(cmd: clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let program = cmd.get_name().to_string();
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
        writeln!(
            out,
            ".SS \"{} {}\"",
            roff_escape(&program),
            roff_escape(sub.get_name())
        )?;
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            writeln!(out, "{}", roff_escape(&about.to_string()))?;
        }
        for arg in sub.get_arguments().filter(|a| a.get_id() != "help") {
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| format!(" \\fI{}\\fR", roff_escape(v)))
                .unwrap_or_default();
            let name = match (arg.get_short(), arg.get_long()) {
                (Some(s), Some(l)) => {
                    format!("\\fB\\-{s}\\fR, \\fB\\-\\-{}\\fR{value}", roff_escape(l))
                }
                (None, Some(l)) => format!("\\fB\\-\\-{}\\fR{value}", roff_escape(l)),
                (Some(s), None) => format!("\\fB\\-{s}\\fR{value}"),
                (None, None) => format!(
                    "\\fI{}\\fR",
                    roff_escape(&arg.get_id().to_string().to_uppercase())
                ),
            };
            writeln!(out, ".TP\n{name}")?;
            if let Some(help) = arg.get_long_help().or(arg.get_help()) {
                writeln!(out, "{}", roff_escape(&help.to_string()))?;
            }
        }
    }
    writeln!(out, ".SH CONFIGURATION")?;
    writeln!(
        out,
        "A TOML file shaped like wg\\-quick's; unknown keys are an error."
    )?;
    for (key, meaning) in CONFIG_KEYS {
        writeln!(
            out,
            ".TP\n\\fB{}\\fR\n{}",
            roff_escape(key),
            roff_escape(meaning)
        )?;
    }
    man.render_version_section(out)
}

/// clap_complete's bash script names the state after a subcommand in two ways when the
/// program's name has a hyphen: its dispatcher writes `suidao__server__subcmd__up`, its case
/// labels `suidao__subcmd__server__subcmd__up`, so no option is ever offered after a
/// subcommand. The labels are brought in line with the dispatcher.
fn mend_bash_completion(script: &str, program: &str) -> String {
    let label = format!("{}__subcmd__", program.replace('-', "__subcmd__"));
    let dispatched = format!("{}__subcmd__", program.replace('-', "__"));
    script.replace(&label, &dispatched)
}

/// A key about to go into a file that others can read (`genkey > file` under a 022 umask):
/// say so, as `wg genkey` does.
fn warn_if_stdout_is_open_to_others() {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata("/proc/self/fd/1") {
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            say("Warning: writing to world accessible file.\nConsider setting the umask to 077 and trying again.");
        }
    }
}

/// A message for a person on standard error, which may be a closed pipe: never panics.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

pub fn fail(program: &str, msg: impl std::fmt::Display) -> ExitCode {
    say(&format!("{program}: {msg}"));
    ExitCode::FAILURE
}

/// The interface a command is about: by name, from a config, or the only one up.
fn interface_name(name: Option<String>, config: Option<PathBuf>) -> Result<String, String> {
    match (name, config) {
        (Some(n), _) => Ok(n),
        (None, Some(path)) => Config::load(&path)
            .map(|c| c.interface.name)
            .map_err(|e| e.to_string()),
        (None, None) => {
            let mut all = status::interfaces();
            match all.len() {
                1 => Ok(all.remove(0)),
                0 => Err("no interface is up".into()),
                _ => Err(format!(
                    "several interfaces are up ({}): name one",
                    all.join(", ")
                )),
            }
        }
    }
}

/// Runs a shared command. `command` builds the binary's whole clap command (for completions
/// and the man page).
pub fn run(program: &str, cmd: Common, command: fn() -> clap::Command) -> ExitCode {
    match cmd {
        Common::Reload { name, config } => {
            let meant = config
                .as_ref()
                .map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.clone()));
            let ifname = match interface_name(name, config) {
                Ok(n) => n,
                Err(e) => return fail(program, e),
            };
            let request = match meant {
                Some(p) => format!("suidao_reload=1\nconfig={}", p.display()),
                None => "suidao_reload=1".to_string(),
            };
            match crate::uapi::request(&ifname, &request) {
                Ok(pairs) => {
                    let msg = pairs
                        .iter()
                        .find(|(k, _)| k == "message")
                        .map(|(_, m)| m.as_str());
                    println!("{ifname}: {}", msg.unwrap_or("reloaded"));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(program, e),
            }
        }
        Common::Import { file, output } => {
            let name = file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("wg0")
                .to_string();
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => return fail(program, format!("{}: {e}", file.display())),
            };
            let toml = match crate::wgquick::import(&text, &name) {
                Ok(i) => {
                    for w in &i.warnings {
                        say(&format!("{}: {w}", file.display()));
                    }
                    i.toml
                }
                Err(e) => return fail(program, format!("{}: {e}", file.display())),
            };
            match output {
                None => {
                    print!("{toml}");
                    ExitCode::SUCCESS
                }
                Some(out) => match crate::provision::write_atomic(&out, &toml, 0o600) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(program, e),
                },
            }
        }
        Common::Export { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", crate::wgquick::export(&c));
                ExitCode::SUCCESS
            }
            Err(e) => fail(program, e),
        },
        Common::Completions { shell } => {
            let mut cmd = command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, program, &mut out);
            let mut text = String::from_utf8_lossy(&out).into_owned();
            if shell == clap_complete::Shell::Bash {
                text = mend_bash_completion(&text, program);
            }
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            ExitCode::SUCCESS
        }
        Common::Man => {
            let mut out = Vec::new();
            match man_page(command(), &mut out) {
                Ok(()) => {
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), &out);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(program, e),
            }
        }
        Common::Genkey | Common::Genpsk => {
            warn_if_stdout_is_open_to_others();
            let key = match cmd {
                Common::Genkey => PrivateKey::generate(&mut OsRng).to_base64(),
                _ => keys::PresharedKey::generate(&mut OsRng).to_base64(),
            };
            let _ = writeln!(std::io::stdout(), "{}", *key);
            ExitCode::SUCCESS
        }
        Common::Pubkey => match pubkey_text(std::io::stdin().lock()) {
            Ok(public) => {
                println!("{public}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(program, format!("pubkey: {e}")),
        },
        Common::Check { config } => match Config::load(&config) {
            Ok(mut c) => {
                for w in &c.warnings {
                    say(w);
                }
                // A name that does not resolve now may well at `up` (another network, a
                // resolver not yet up): a warning, not a refusal.
                for f in c.resolve() {
                    say(&format!(
                        "{}: warning: {f} (up resolves it again, and keeps trying)",
                        config.display()
                    ));
                }
                print!("{}", engine::describe(&c));
                ExitCode::SUCCESS
            }
            Err(e) => fail(program, e),
        },
        Common::Up { config } => {
            init_logging();
            let c = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(program, e),
            };
            for w in &c.warnings {
                tracing::warn!("{w}");
            }
            match engine::up(c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(program, e),
            }
        }
        Common::Status { name, config, json } => {
            let names = match (name, config) {
                (None, None) => status::interfaces(),
                (n, c) => match interface_name(n, c) {
                    Ok(n) => vec![n],
                    Err(e) => return fail(program, e),
                },
            };
            if names.is_empty() {
                return fail(program, "no interface is up");
            }
            let mut all = Vec::new();
            for n in &names {
                match status::query(n) {
                    Ok(v) => all.push(v),
                    Err(e) => return fail(program, e),
                }
            }
            if json {
                let v = if all.len() == 1 {
                    all.remove(0)
                } else {
                    serde_json::Value::Array(all)
                };
                println!("{}", status::json(&v));
            } else {
                let texts: Vec<String> = all.iter().map(status::render).collect();
                print!("{}", texts.join("\n"));
            }
            ExitCode::SUCCESS
        }
    }
}

/// `pubkey`: the public key for the base64 private key read from `input` (what `wg pubkey`
/// does with its standard input).
fn pubkey_text(mut input: impl std::io::Read) -> Result<String, KeyError> {
    let mut text = Zeroizing::new(String::new());
    input
        .read_to_string(&mut text)
        .map_err(|_| KeyError::Base64)?;
    let key: PrivateKey = text.parse()?;
    Ok(key.public_key().to_base64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubkey_text_is_wg_pubkey() {
        let key = PrivateKey::generate(&mut OsRng);
        let public = pubkey_text(format!("{}\n", *key.to_base64()).as_bytes()).unwrap();
        assert_eq!(public, key.public_key().to_base64());
        assert_eq!(pubkey_text(&b"nonsense"[..]), Err(KeyError::Length(6)));
        assert_eq!(pubkey_text(&b"no!"[..]), Err(KeyError::Base64));
    }

    /// Colour only on a terminal, and NO_COLOR (any non-empty value) turns it off.
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".into())));
        assert!(colour(true, Some("".into())));
    }
}
