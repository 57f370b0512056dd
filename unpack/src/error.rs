use std::io;

/// Why a tree was not written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input breaks a rule; the message names the entry and the rule.
    #[error("{0}")]
    Refused(String),
    /// The file system failed while doing `what`.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub(crate) fn errno(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> Error {
        let what = what.into();
        move |e| Error::Io {
            what,
            source: e.into(),
        }
    }
}
