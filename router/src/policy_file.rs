//! Why a mounted policy file was not accepted (one error type for every kind, so the reload
//! path can report and keep the last good policy the same way for all of them).

/// A mounted policy file (or mount directory) that could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyFileError {
    /// The mount directory or a file could not be read.
    #[error("{path}: {message}")]
    Unreadable {
        /// The directory or file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A file is not UTF-8 text.
    #[error("{file}: not UTF-8")]
    NotUtf8 {
        /// The file.
        file: String,
    },
    /// A JSON file does not parse.
    #[error("{file}: invalid JSON: {message}")]
    InvalidJson {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// The file parses but its content is not what the kind needs.
    #[error("{file}: unexpected content: {message}")]
    Content {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl PolicyFileError {
    /// A content error in `file`.
    pub fn content(file: &str, message: impl std::fmt::Display) -> Self {
        PolicyFileError::Content {
            file: file.to_string(),
            message: message.to_string(),
        }
    }

    /// Parses `body` of `file` as JSON into `T`, saying whether the JSON or its shape is wrong.
    pub fn json<T: serde::de::DeserializeOwned>(file: &str, body: &[u8]) -> Result<T, Self> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| PolicyFileError::InvalidJson {
                file: file.to_string(),
                message: e.to_string(),
            })?;
        serde_json::from_value(v).map_err(|e| Self::content(file, e))
    }

    /// `body` of `file` as text.
    pub fn text<'a>(file: &str, body: &'a [u8]) -> Result<&'a str, Self> {
        std::str::from_utf8(body).map_err(|_| PolicyFileError::NotUtf8 {
            file: file.to_string(),
        })
    }
}
