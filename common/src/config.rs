//! What both services' configurations share: value parsers for clap arguments, secrets that
//! come only from the environment or from files, the `healthcheck` subcommand, and parsing
//! that turns every configuration mistake into one clear message and exit status 2.
use std::{ffi::OsString, path::Path, time::Duration};

use clap::{ArgMatches, CommandFactory, FromArgMatches, error::ErrorKind, parser::ValueSource};
use secrecy::SecretString;

/// The subcommands both binaries have.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Exits 0 when the service listening on --listen is ready, for container health checks
    /// (no curl or grpcurl needed in the image).
    Healthcheck,
}

/// "300ms", "5s", "2h", "7d".
pub fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("{e} (write durations like 300ms, 5s, 2h, 7d)"))
}

/// A count that must be at least 1.
pub fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("must be a whole number".into()),
    }
}

/// A secret given directly (an environment variable; see [`parse`] for why never a flag).
/// Never fails: a failing parser's message would quote the value.
pub fn secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.trim().to_owned()))
}

/// A secret read from the file at this path (a `*_FILE` setting). Errors name the path, never
/// the content.
pub fn secret_file(path: &str) -> Result<SecretString, String> {
    match std::fs::read_to_string(Path::new(path)) {
        Ok(s) if s.trim().is_empty() => Err("the file is empty".into()),
        Ok(s) => Ok(SecretString::from(s.trim().to_owned())),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

/// A PEM file's text (certificates are not secret; their keys go through [`secret_file`]).
pub fn pem_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    if !text.contains("-----BEGIN ") {
        return Err("it holds no PEM block (-----BEGIN …)".into());
    }
    Ok(text)
}

/// An address ("10.0.0.5") or a network ("172.16.0.0/12").
pub fn ip_net(value: &str) -> Result<ipnet::IpNet, String> {
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| "neither an IP address nor a network like 10.0.0.0/8".into())
}

/// Whether `address` is in one of `networks` (an IPv4-mapped IPv6 address counts as IPv4).
pub fn within(networks: &[ipnet::IpNet], address: std::net::IpAddr) -> bool {
    let address = address.to_canonical();
    networks.iter().any(|net| net.contains(&address))
}

/// A configuration error in clap's form, so that it is reported like every other one.
pub fn invalid(message: impl std::fmt::Display) -> clap::Error {
    clap::Error::raw(ErrorKind::ValueValidation, format!("{message}\n"))
}

/// Parses `C` from `args` (program name first), as a binary does: flags, then `WEAPP_*`
/// variables, then defaults. The arguments named in `secrets` may only come from the
/// environment: a value on the command line shows in `ps` and in shell history.
pub fn parse<C, I, T>(args: I, secrets: &[&str]) -> Result<C, clap::Error>
where
    C: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = C::command().try_get_matches_from(args)?;
    refuse_secrets_on_command_line(&matches, secrets)?;
    C::from_arg_matches(&matches)
}

/// A service binary's command line: the checks clap cannot make alone, and the arguments that
/// may only come from the environment. Both binaries parse through it, and so do the tests.
pub trait ServiceCli: CommandFactory + FromArgMatches + Sized {
    /// The binary's name, as the first word of its command line.
    const NAME: &'static str;

    /// Arguments that may only come from the environment (or their `*_FILE` twins).
    const ENV_ONLY: &'static [&'static str] = &[];

    /// What the service runs with.
    type Settings;

    fn into_settings(self) -> Self::Settings;

    /// Whether a subcommand was given: then the service's settings are not checked.
    fn has_subcommand(&self) -> bool;

    /// Checks that need several settings at once.
    fn check(&self) -> Result<(), String>;

    /// Parses `args` (program name first) and checks them.
    fn parse_checked<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli: Self = parse(args, Self::ENV_ONLY)?;
        if !cli.has_subcommand() {
            cli.check().map_err(invalid)?;
        }
        Ok(cli)
    }

    /// Settings from flags exactly as the binary parses them (flags, then `WEAPP_*`
    /// variables, then defaults); `args` leaves out the program name.
    fn settings_from<I, T>(args: I) -> Result<Self::Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args =
            std::iter::once(OsString::from(Self::NAME)).chain(args.into_iter().map(Into::into));
        Self::parse_checked(args).map(Self::into_settings)
    }

    /// This process's command line and environment; on a mistake, prints it and exits with
    /// status 2.
    fn parse_env() -> Self {
        Self::parse_checked(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }
}

/// The defaults written on `A`'s arguments, environment ignored: for code that needs "the
/// settings as shipped" without a command line (tests, `Default` impls).
pub fn defaults<A: clap::Args>() -> Result<A, clap::Error> {
    #[derive(clap::Parser)]
    struct Only<A: clap::Args> {
        #[command(flatten)]
        settings: A,
    }
    let command = Only::<A>::command().mut_args(|arg| arg.env(None));
    command
        .try_get_matches_from(["defaults"])
        .and_then(|matches| Only::<A>::from_arg_matches(&matches))
        .map(|only| only.settings)
}

fn refuse_secrets_on_command_line(matches: &ArgMatches, ids: &[&str]) -> Result<(), clap::Error> {
    for id in ids {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            let name = format!("WEAPP_{}", id.to_ascii_uppercase());
            return Err(invalid(format!(
                "secrets are not taken from the command line (it shows in `ps`): set {name} or \
                 {name}_FILE instead"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Demo {
        #[arg(long, env = "WEAPP_DEMO_SECRET_VALUE", hide = true, value_parser = secret)]
        demo_secret_value: Option<SecretString>,
        #[arg(long, env = "WEAPP_DEMO_SECRET_VALUE_FILE", value_parser = secret_file)]
        demo_secret_value_file: Option<SecretString>,
        #[arg(long, default_value = "1s", value_parser = duration)]
        wait: Duration,
    }

    #[test]
    fn secrets_never_come_from_flags_and_errors_never_quote_them() {
        let err = parse::<Demo, _, _>(
            ["demo", "--demo-secret-value", "hunter2"],
            &["demo_secret_value"],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("WEAPP_DEMO_SECRET_VALUE_FILE"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "hunter2\n").unwrap();
        let demo: Demo = parse(
            ["demo", "--demo-secret-value-file", path.to_str().unwrap()],
            &["demo_secret_value"],
        )
        .unwrap();
        use secrecy::ExposeSecret as _;
        assert_eq!(
            demo.demo_secret_value_file.unwrap().expose_secret(),
            "hunter2"
        );
        std::fs::write(&path, " \n").unwrap();
        let err = parse::<Demo, _, _>(
            ["demo", "--demo-secret-value-file", path.to_str().unwrap()],
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn durations_and_counts_say_what_is_wrong() {
        assert_eq!(duration("300ms"), Ok(Duration::from_millis(300)));
        assert!(duration("soon").unwrap_err().contains("300ms"));
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").is_err() && positive("-1").is_err());
    }
}
