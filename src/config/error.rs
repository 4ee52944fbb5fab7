//! [`ConfigError`]: what every configuration layer and the validation
//! return. It imports nothing, so that any module may name it without
//! depending on the rest of the configuration.

/// A configuration problem: one line that names the setting at fault (a
/// flag such as `--issuer`, or `file:line: key` for the config file) and
/// the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct ConfigError {
    /// Where the value at fault was given: a flag (`--clock-skew`), an
    /// environment variable, or `file:line: key`.
    pub flag: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl ConfigError {
    /// A problem with the setting named `flag`.
    pub fn new(flag: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { flag: flag.into(), problem: problem.into() }
    }
}
