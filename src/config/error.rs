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
    /// A problem with the setting named `flag`. Control characters in
    /// either (a line break in a value quoted from the config file, say)
    /// are escaped, so that the error stays on one line.
    pub fn new(flag: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { flag: one_line(flag.into()), problem: one_line(problem.into()) }
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`).
fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ConfigError;

    /// Found by the config fuzz target: an issuer with a line break in its
    /// fragment was quoted verbatim, and the error spanned two lines.
    #[test]
    fn an_error_is_one_line_whatever_it_quotes() {
        let e = ConfigError::new(
            "config.toml:3: issuers[0].issuer",
            "\"https://a.example/#x\ny\r\u{1b}[31m\" is bad\tindeed",
        );
        let line = e.to_string();
        assert_eq!(
            line,
            "config.toml:3: issuers[0].issuer: \"https://a.example/#x\\ny\\r\\u{1b}[31m\" is bad\\tindeed"
        );
        assert!(!line.chars().any(char::is_control), "{line}");
        assert_eq!(ConfigError::new("--listen", "plain text").to_string(), "--listen: plain text");
    }
}
