//! Configuration errors with `file:line:column` positions, and the collector that
//! turns byte spans of the TOML text into those positions.

use std::fmt;
use std::ops::Range;

/// One problem in a configuration file, located at the offending key or value.
///
/// `line` and `column` are 1-based; `column` counts characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file name (or origin name for definitions received over the backbone).
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What would have been accepted, when that can be said briefly.
    pub expected: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        match &self.expected {
            Some(expected) => write!(f, " (expected {expected})"),
            None => Ok(()),
        }
    }
}

/// Every error found in one configuration, in file order. Never empty when returned as
/// an `Err`. Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A single error not tied to a position in the text (e.g. an unreadable file).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message: message.into(),
            expected: None,
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Collects errors while a configuration is read and compiled, converting byte spans
/// into positions lazily (errors are rare; valid files pay nothing).
pub(crate) struct Diag<'t> {
    file: String,
    text: &'t str,
    errors: Vec<(usize, String, Option<String>)>,
    /// Names of elements that failed to deserialize, so references to them are not
    /// reported a second time as "unknown".
    broken: std::collections::BTreeSet<String>,
}

impl<'t> Diag<'t> {
    pub(crate) fn new(file: &str, text: &'t str) -> Self {
        Diag {
            file: file.to_owned(),
            text,
            errors: Vec::new(),
            broken: Default::default(),
        }
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub(crate) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push((span.start, message.into(), None));
    }

    pub(crate) fn expect(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        expected: impl Into<String>,
    ) {
        self.errors
            .push((span.start, message.into(), Some(expected.into())));
    }

    /// The span of byte `offset` inside the string value at `span`, when the raw text
    /// of the literal is exactly `value` between its quotes (no escapes); the start of
    /// the value otherwise.
    pub(crate) fn inside(&self, span: &Range<usize>, value: &str, offset: usize) -> Range<usize> {
        let raw = self.text.get(span.clone()).unwrap_or("");
        let exact = raw.len() == value.len() + 2 && raw.get(1..raw.len() - 1) == Some(value);
        if exact {
            let pos = span.start + 1 + offset;
            pos..pos
        } else {
            span.clone()
        }
    }

    /// Reports a problem found at an offset inside the string value at `span`.
    pub(crate) fn problem(
        &mut self,
        span: &Range<usize>,
        value: &str,
        p: crate::template::Problem,
    ) {
        let at = self.inside(span, value, p.offset);
        self.errors.push((at.start, p.message, p.expected));
    }

    /// 1-based line of a span's start, for "first defined at line N" messages.
    pub(crate) fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    /// Converts a TOML parse or deserialization error, splitting serde's
    /// "..., expected ..." into message and expectation.
    pub(crate) fn toml(&mut self, err: &toml::de::Error) {
        let pos = err.span().map_or(0, |s| s.start);
        let text = err.message().trim().replace('\n', " ");
        let (message, expected) = match text.split_once(", expected ") {
            Some((m, e)) => (m.to_owned(), Some(e.to_owned())),
            None => (text, None),
        };
        self.errors.push((pos, message, expected));
    }

    pub(crate) fn mark_broken(&mut self, name: String) {
        self.broken.insert(name);
    }

    pub(crate) fn is_broken(&self, name: &str) -> bool {
        self.broken.contains(name)
    }

    /// The collected errors sorted by position, or `Ok(())` when there are none.
    pub(crate) fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let mut raw = self.errors;
        raw.sort_by_key(|e| e.0);
        let mut errors: Vec<ConfigError> = raw
            .into_iter()
            .map(|(pos, message, expected)| {
                let (line, column) = line_col(self.text, pos);
                ConfigError {
                    file: self.file.clone(),
                    line,
                    column,
                    message,
                    expected,
                }
            })
            .collect();
        errors.dedup();
        Err(ConfigErrors(errors))
    }
}

/// 1-based line and character column of byte `pos` in `text`.
pub(crate) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 3));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn display_one_error_per_line() {
        let e = |line, expected: Option<&str>| ConfigError {
            file: "f.toml".into(),
            line,
            column: 2,
            message: "bad".into(),
            expected: expected.map(str::to_owned),
        };
        let errs = ConfigErrors(vec![e(1, None), e(3, Some("a number"))]);
        assert_eq!(
            errs.to_string(),
            "f.toml:1:2: bad\nf.toml:3:2: bad (expected a number)"
        );
    }
}
