//! `serve`'s flags, built from the settings table
//! ([`crate::config::settings`]): each row becomes a flag with its
//! environment variable, default and help, so a setting is named once.
//! What was given becomes two [`Layer`]s, one from the command line and one
//! from the environment, for [`Loader`] (defaults are the table's own).

use clap::builder::ValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use crate::config::Loader;
use crate::config::settings::{Kind, Layer, Origin, Setting};

/// The id of `--check-config` (the one flag that is not a setting).
const CHECK_CONFIG: &str = "check_config";

/// What `serve` was given.
#[derive(Clone, Debug, Default)]
pub struct ServeArgs {
    /// Settings from the environment.
    pub env: Layer,
    /// Settings from the command line.
    pub command_line: Layer,
    /// `--check-config`: validate, print a summary, exit.
    pub check_config: bool,
}

impl ServeArgs {
    /// The loader of these settings (and of the config file they name).
    pub fn loader(&self) -> Loader {
        Loader::new(self.env.clone(), self.command_line.clone())
    }
}

/// A value parser that checks one value as the configuration will read it,
/// so that a value that cannot be read is a usage error (exit code 2), with
/// the table's own message.
fn checked(setting: Setting) -> ValueParser {
    ValueParser::new(move |s: &str| -> Result<String, String> {
        Layer::default()
            .set_strs(setting, &[s.to_owned()], Origin::CommandLine(setting))
            .map(|()| s.to_owned())
            .map_err(|e| e.problem)
    })
}

/// The flag of one setting.
fn flag(setting: Setting) -> Arg {
    let meta = setting.meta();
    let arg = Arg::new(meta.key).long(meta.flag).env(meta.env).help(meta.help).hide_env_values(meta.secret);
    match meta.kind {
        Kind::Switch => arg.action(ArgAction::SetTrue),
        Kind::One | Kind::List => {
            let arg = arg.value_name(meta.value_name).value_parser(checked(setting));
            let arg = match meta.default {
                Some(default) => arg.default_value(default),
                None => arg,
            };
            if meta.kind == Kind::List {
                arg.action(ArgAction::Append).value_delimiter(',')
            } else {
                arg.action(ArgAction::Set)
            }
        }
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let flags = Setting::ALL.iter().copied().filter(|s| !s.meta().flag.is_empty()).map(flag);
        cmd.args(flags).arg(
            Arg::new(CHECK_CONFIG)
                .long("check-config")
                .action(ArgAction::SetTrue)
                .help("Validate the configuration (flags, config file, key and TLS files), print a summary and exit: 0 if it is valid, 64 if not. Nothing is bound and no issuer is contacted."),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut out = ServeArgs { check_config: m.get_flag(CHECK_CONFIG), ..ServeArgs::default() };
        for &setting in Setting::ALL {
            let meta = setting.meta();
            if meta.flag.is_empty() {
                continue;
            }
            let (layer, origin) = match m.value_source(meta.key) {
                Some(ValueSource::CommandLine) => (&mut out.command_line, Origin::CommandLine(setting)),
                Some(ValueSource::EnvVariable) => (&mut out.env, Origin::Env(setting)),
                // Defaults are the table's (Layer::defaults), not clap's.
                _ => continue,
            };
            let values: Vec<String> = match meta.kind {
                Kind::Switch => vec![m.get_flag(meta.key).to_string()],
                Kind::One | Kind::List => m.get_many::<String>(meta.key).into_iter().flatten().cloned().collect(),
            };
            layer
                .set_strs(setting, &values, origin)
                .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")))?;
        }
        Ok(out)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// Parses `serve` arguments (without the program and subcommand names), as
/// the binary would, environment included: for tests and tools.
pub fn parse<I, T>(args: I) -> Result<ServeArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cmd = ServeArgs::augment_args(Command::new("serve").no_binary_name(true));
    ServeArgs::from_arg_matches(&cmd.try_get_matches_from(args)?)
}

#[cfg(test)]
mod tests;
