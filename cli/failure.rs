//! How a command fails: the exit status it gives, and the error with its chain of causes.

use std::error::Error;
use std::fmt::Display;

pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

pub enum Failure {
    /// Invalid input or arguments: nothing was written (exit 2).
    Input(BoxError),
    /// The store or engine failed (exit 1).
    Runtime(BoxError),
    /// `verify`: the store or log is damaged (exit 1).
    Damaged(BoxError),
    /// Done, but the answer is "no" (audit: the bills differ; exit 1).
    Differs,
}

/// What the command was doing when `source` failed.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct Context {
    context: String,
    #[source]
    source: BoxError,
}

fn with(context: impl Display, source: impl Into<BoxError>) -> BoxError {
    Box::new(Context { context: context.to_string(), source: source.into() })
}

/// Bad input, while doing `context`.
pub fn input<E: Into<BoxError>>(context: impl Display) -> impl FnOnce(E) -> Failure {
    move |e| Failure::Input(with(context, e))
}

/// A failure of the store or engine, while doing `context`.
pub fn runtime<E: Into<BoxError>>(context: impl Display) -> impl FnOnce(E) -> Failure {
    move |e| Failure::Runtime(with(context, e))
}

/// Damage found by `verify`, in `context`.
pub fn damaged<E: Into<BoxError>>(context: impl Display) -> impl FnOnce(E) -> Failure {
    move |e| Failure::Damaged(with(context, e))
}

/// The error and each of its causes, one a line:
/// `error: …` then `  caused by: …` for every source in turn.
pub fn report(prefix: &str, error: &(dyn Error + 'static)) -> String {
    let mut out = format!("error: {prefix}{error}");
    let mut cause = error.source();
    while let Some(e) = cause {
        out.push_str(&format!("\n  caused by: {e}"));
        cause = e.source();
    }
    out
}

/// The error and its causes on one line (`a: b: c`), for a JSON answer.
pub use poolbill_store::one_line;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_every_cause_in_order() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = with("reading x.json", with("opening the store", io));
        assert_eq!(report("", error.as_ref()), "error: reading x.json\n  caused by: opening the store\n  caused by: no such file");
        assert_eq!(one_line(error.as_ref()), "reading x.json: opening the store: no such file");
        let plain: BoxError = "just this".into();
        assert_eq!(report("DAMAGED: ", plain.as_ref()), "error: DAMAGED: just this");
    }
}
