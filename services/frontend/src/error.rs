//! Kinesis errors as the wire carries them: an HTTP status and a JSON body
//! `{"__type": "<ExceptionName>", "message": "..."}`.

use freshet_errors::ErrorCode;
use freshet_types::StreamArn;
use http::StatusCode;

/// One Kinesis error response: a code from Freshet's one error table
/// (`freshet_errors`), which decides its exception name and HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisError {
    pub code: ErrorCode,
    pub message: String,
}

pub type KinesisResult<T> = Result<T, KinesisError>;

/// What a client is told of any failure inside Freshet; the detail is in
/// the logs, under the request's id.
pub const INTERNAL_FAILURE_MESSAGE: &str = "Internal service failure.";

impl KinesisError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> KinesisError {
        KinesisError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status the client gets.
    pub fn http_status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The exception name (`__type`) the client gets.
    pub fn exception(&self) -> &'static str {
        self.code.exception()
    }

    pub fn validation(message: impl Into<String>) -> KinesisError {
        KinesisError::new(ErrorCode::Validation, message)
    }

    pub fn serialization(message: impl Into<String>) -> KinesisError {
        KinesisError::new(ErrorCode::Serialization, message)
    }

    pub fn invalid_argument(message: impl Into<String>) -> KinesisError {
        KinesisError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn resource_not_found(message: impl Into<String>) -> KinesisError {
        KinesisError::new(ErrorCode::ResourceNotFound, message)
    }

    pub fn stream_not_found(stream: &StreamArn) -> KinesisError {
        KinesisError::resource_not_found(format!(
            "Stream {} under account {} not found.",
            stream.stream_name, stream.account_id
        ))
    }

    pub fn internal(message: impl Into<String>) -> KinesisError {
        KinesisError::new(ErrorCode::Internal, message)
    }

    /// An operation of the Kinesis API that Freshet does not serve yet.
    pub fn not_implemented(operation: &str) -> KinesisError {
        KinesisError::new(
            ErrorCode::NotImplemented,
            format!("Freshet does not implement {operation} yet"),
        )
    }

    /// An error from an internal service, by the code it carries. A
    /// server-side failure's message (worker ids, epochs, paths) is logged,
    /// never shown: the client gets a generic one.
    pub fn from_status(status: &tonic::Status) -> KinesisError {
        let code = ErrorCode::of_status(status);
        let message = status.message().to_owned();
        if code.http_status() >= 500 {
            tracing::warn!(%code, %message, "internal service call failed");
            return KinesisError::new(code, INTERNAL_FAILURE_MESSAGE);
        }
        KinesisError::new(code, message)
    }
}

/// Collects constraint violations into Kinesis's ValidationException text:
/// `N validation error(s) detected: Value '...' at 'field' failed to satisfy constraint: ...`.
#[derive(Debug, Default)]
pub struct Violations {
    messages: Vec<String>,
}

impl Violations {
    pub fn add(&mut self, value: Option<&str>, field: &str, constraint: &str) {
        let value = match value {
            Some(value) => format!("'{value}'"),
            None => "null".to_owned(),
        };
        self.messages.push(format!(
            "Value {value} at '{field}' failed to satisfy constraint: {constraint}"
        ));
    }

    pub fn check_length(&mut self, value: Option<&str>, field: &str, min: usize, max: usize) {
        if let Some(text) = value {
            let length = text.chars().count();
            if length < min {
                self.add(
                    value,
                    field,
                    &format!("Member must have length greater than or equal to {min}"),
                );
            } else if length > max {
                self.add(
                    value,
                    field,
                    &format!("Member must have length less than or equal to {max}"),
                );
            }
        }
    }

    pub fn check_range(&mut self, value: Option<i64>, field: &str, min: i64, max: i64) {
        if let Some(number) = value {
            let text = number.to_string();
            if number < min {
                self.add(
                    Some(&text),
                    field,
                    &format!("Member must have value greater than or equal to {min}"),
                );
            } else if number > max {
                self.add(
                    Some(&text),
                    field,
                    &format!("Member must have value less than or equal to {max}"),
                );
            }
        }
    }

    pub fn check_required<T: ?Sized>(&mut self, value: Option<&T>, field: &str) {
        if value.is_none() {
            self.add(None, field, "Member must not be null");
        }
    }

    pub fn check_stream_name(&mut self, value: Option<&str>, field: &str) {
        self.check_length(value, field, 1, 128);
        if let Some(name) = value {
            // Characters, as the length check counts them: a name of 128
            // non-ASCII characters still fails the pattern.
            if !name.is_empty()
                && name.chars().count() <= 128
                && !freshet_types::is_valid_stream_name(name)
            {
                self.add(
                    value,
                    field,
                    "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
                );
            }
        }
    }

    pub fn into_result(self) -> KinesisResult<()> {
        if self.messages.is_empty() {
            return Ok(());
        }
        let count = self.messages.len();
        let noun = if count == 1 { "error" } else { "errors" };
        Err(KinesisError::validation(format!(
            "{count} validation {noun} detected: {}",
            self.messages.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_of_non_ascii_characters_within_the_length_fails_the_pattern() {
        // 100 characters, 200 bytes: the length passes, the pattern not.
        let name = "é".repeat(100);
        let mut violations = Violations::default();
        violations.check_stream_name(Some(&name), "streamName");
        let error = violations.into_result().expect_err("refused");
        assert_eq!(error.exception(), "ValidationException");
        assert!(
            error.message.contains("regular expression pattern"),
            "{}",
            error.message
        );
    }

    #[test]
    fn violations_read_like_kinesis() {
        let mut violations = Violations::default();
        violations.check_stream_name(Some("bad name"), "streamName");
        violations.check_range(Some(0), "shardCount", 1, 100_000);
        let error = violations.into_result().unwrap_err();
        assert_eq!(error.exception(), "ValidationException");
        assert_eq!(
            error.message,
            "2 validation errors detected: Value 'bad name' at 'streamName' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+; Value '0' at 'shardCount' \
             failed to satisfy constraint: Member must have value greater than or equal to 1"
        );
    }
}
