//! How an error reaches a person: its message, then each cause's, joined by `": "`.
//!
//! Every error type of routestate says in its own message only what failed and with which
//! input, and keeps its cause as `#[source]` (never in the message too, so nothing prints
//! twice). Logs, Events, statuses and the CLI print the whole chain with [`ErrorChain::chain`].

use std::{error::Error, fmt};

/// An error and its causes, displayed as `error: cause: cause's cause`.
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            // Some libraries' errors (kube's among them) embed their cause in their message
            // too: a cause already printed is not printed again.
            let text = e.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            cause = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`Chain`] for every error: `tracing::warn!(error = %e.chain(), …)`, `format!("{}", e.chain())`.
pub trait ErrorChain {
    /// The error with its causes.
    fn chain(&self) -> Chain<'_>;
}

impl<E: Error + 'static> ErrorChain for E {
    fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

impl ErrorChain for dyn Error + Send + Sync + 'static {
    fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}")]
    struct Outer(&'static str, #[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Inner;

    /// An error that prints its cause in its own message as well.
    #[derive(Debug, thiserror::Error)]
    #[error("loading: {0}")]
    struct Embeds(#[source] Outer);

    #[test]
    fn every_cause_is_printed_once_in_order() {
        let e = Outer("config.yaml", Inner);
        assert_eq!(e.chain().to_string(), "reading config.yaml: connection refused");
        assert_eq!(Inner.chain().to_string(), "connection refused");
        let repeated = Outer("x", Inner);
        let embeds = Embeds(repeated);
        assert_eq!(embeds.chain().to_string(), "loading: reading x: connection refused");
        let boxed: Box<dyn Error + Send + Sync> = Box::new(e);
        assert_eq!(boxed.chain().to_string(), "reading config.yaml: connection refused");
    }
}
