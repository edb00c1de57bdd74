//! [`ApiError`]: every problem found in a request, each with its JSON path.

use std::fmt;

/// Problems an [`ApiError`] keeps; past this only a count is kept, so a job
/// with thousands of broken fields still yields a message of bounded size
/// (the same bound as the engine's `validate::PROBLEMS_MAX`).
pub const API_PROBLEMS_MAX: usize = caravan_engine::validate::PROBLEMS_MAX;

/// A request the API refuses: HTTP 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApiError {
    /// At most [`API_PROBLEMS_MAX`], in the order found, each `path: problem`
    /// (the path is empty for problems of the whole body).
    pub problems: Vec<String>,
    /// Problems found past [`API_PROBLEMS_MAX`] and not kept.
    pub omitted: usize,
}

impl ApiError {
    /// An error with one problem.
    pub fn one(path: &str, problem: impl fmt::Display) -> ApiError {
        let mut p = Problems::default();
        p.push(path, problem);
        ApiError { problems: p.list, omitted: 0 }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        caravan_engine::validate::write_problems(f, &self.problems, self.omitted)
    }
}

/// Collects problems while a request is converted.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    list: Vec<String>,
    omitted: usize,
}

impl Problems {
    pub(crate) fn push(&mut self, path: &str, problem: impl fmt::Display) {
        if self.list.len() < API_PROBLEMS_MAX {
            if path.is_empty() {
                self.list.push(problem.to_string());
            } else {
                self.list.push(format!("{path}: {problem}"));
            }
        } else {
            self.omitted += 1;
        }
    }

    /// Problems the engine's validation found, kept after the API's own.
    pub(crate) fn extend_validation(&mut self, error: caravan_engine::validate::ValidationError) {
        for problem in error.problems {
            self.push("", problem);
        }
        self.omitted += error.omitted;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn finish(self) -> Result<(), ApiError> {
        assert!(self.list.len() <= API_PROBLEMS_MAX);
        if self.list.is_empty() { Ok(()) } else { Err(ApiError { problems: self.list, omitted: self.omitted }) }
    }
}
