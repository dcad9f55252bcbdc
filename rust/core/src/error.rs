//! The crate's error types.

use std::fmt;

/// One configuration problem: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Key path such as `rules[2].window` (empty for a YAML syntax error).
    pub path: String,
    /// 1-based line in the YAML text (0 when unknown).
    pub line: u64,
    /// What is wrong, with the offending value.
    pub message: String,
    /// Which document, when a configuration is assembled from several (e.g. `rules file`).
    pub source: Option<String>,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(src) = &self.source {
            write!(f, "{src}: ")?;
        }
        match (self.path.is_empty(), self.line) {
            (true, 0) => write!(f, "{}", self.message),
            (true, l) => write!(f, "line {l}: {}", self.message),
            (false, 0) => write!(f, "{}: {}", self.path, self.message),
            (false, l) => write!(f, "line {l}: {}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub(crate) problems: Vec<ConfigProblem>,
}

impl ConfigError {
    pub(crate) fn new(problems: Vec<ConfigProblem>) -> Self {
        Self { problems }
    }

    /// The problems, in document order of discovery.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A snapshot could not be read.
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
    /// A snapshot was taken with a configuration that does not fit this one.
    #[error("snapshot does not match the configuration: {0}")]
    SnapshotMismatch(String),
    /// Imported trees do not fit the configuration.
    #[error("invalid trees: {0}")]
    Trees(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
