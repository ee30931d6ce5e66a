//! Freshet's one table of error codes: every failure a service reports has
//! an [`ErrorCode`], mapped here once to the gRPC status services exchange
//! and once to the Kinesis exception name and HTTP status a client sees.
//!
//! A status built with [`ErrorCode::status`] carries its code by name in
//! the `freshet-error` metadata entry, so the receiver reads back exactly
//! the code that was sent ([`ErrorCode::of_status`]) even where two codes
//! share a gRPC code. A status without it (tonic's own: a refused
//! connection, a deadline) is read by its gRPC code alone.
//!
//! Two codes carry the write path's contract between the frontend, the
//! coalescer and the storage workers:
//! - [`ErrorCode::NotWritten`]: refused before anything was written (a
//!   stale epoch, a worker that does not lead or does not know the
//!   placement yet, a closing shard). Safe to route again and retry.
//! - [`ErrorCode::MaybeWritten`]: failed after the records may have reached
//!   disk. Never simply retried: unacknowledged is not absent. The
//!   frontend's coalescer resolves it by sending the append again under
//!   its idempotency key (`services/frontend/src/coalescer.rs`); only an
//!   outcome still unknown after that reaches the client.
//!
//! A write that succeeded is written with a known outcome: its answer
//! carries where each record landed (or, for a throttled suffix, that
//! those records were not written).

use tonic::Code;

/// The metadata entry a status carries its code in.
pub const METADATA_KEY: &str = "freshet-error";

/// What went wrong, as every Freshet service names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // The caller's request is wrong.
    /// A value is out of range or inconsistent with the stream.
    InvalidArgument,
    /// The request breaks the API model's constraints (length, pattern).
    Validation,
    /// The body cannot be read (bad JSON, bad base64, CBOR).
    Serialization,
    /// The stream, shard or worker named does not exist.
    ResourceNotFound,
    /// The resource is not in a state that allows the call.
    ResourceInUse,
    /// An account or control-plane limit (shard quota, call rate).
    LimitExceeded,
    /// A shard's read or write throughput is spent.
    ProvisionedThroughputExceeded,
    /// A shard iterator older than five minutes.
    ExpiredIterator,
    /// A pagination token that has expired.
    ExpiredNextToken,
    /// The request set DryRun and would have succeeded.
    DryRun,
    /// `X-Amz-Target` names no Kinesis operation.
    UnknownOperation,
    /// The caller may not act on the resource.
    AccessDenied,
    /// The request names no operation (not a POST): the front door's 403.
    OperationNotDetermined,
    /// The Authorization header is malformed.
    IncompleteSignature,
    /// No credentials at all.
    MissingAuthenticationToken,
    /// An access key Freshet does not know (or a session token).
    UnrecognizedClient,
    /// The signature does not match, is out of date, or is scoped to
    /// another region or service.
    InvalidSignature,
    /// The request body is larger than its operation allows.
    RequestTooLarge,
    /// The request body did not arrive in time.
    RequestTimeout,

    // Freshet's own outcomes.
    /// Refused before anything was written: route again and retry.
    NotWritten,
    /// Failed after the write may have reached disk: not retried.
    MaybeWritten,
    /// A guarded metadata update lost a race: read again and retry.
    Conflict,
    /// A dependency (Postgres, a worker, the timer) cannot be reached now.
    Unavailable,
    /// A Kinesis operation Freshet does not serve yet.
    NotImplemented,
    /// Anything else: a bug or a failing disk.
    Internal,
}

/// How one code is carried between services and shown to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The code's name on the wire between services.
    pub name: &'static str,
    pub grpc: Code,
    /// The `__type` a Kinesis client sees.
    pub exception: &'static str,
    pub http_status: u16,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidArgument,
        ErrorCode::Validation,
        ErrorCode::Serialization,
        ErrorCode::ResourceNotFound,
        ErrorCode::ResourceInUse,
        ErrorCode::LimitExceeded,
        ErrorCode::ProvisionedThroughputExceeded,
        ErrorCode::ExpiredIterator,
        ErrorCode::ExpiredNextToken,
        ErrorCode::DryRun,
        ErrorCode::UnknownOperation,
        ErrorCode::AccessDenied,
        ErrorCode::OperationNotDetermined,
        ErrorCode::IncompleteSignature,
        ErrorCode::MissingAuthenticationToken,
        ErrorCode::UnrecognizedClient,
        ErrorCode::InvalidSignature,
        ErrorCode::RequestTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::Conflict,
        ErrorCode::NotWritten,
        ErrorCode::Internal,
        ErrorCode::MaybeWritten,
        ErrorCode::Unavailable,
        ErrorCode::NotImplemented,
    ];

    /// The table: one row per code.
    pub const fn mapping(self) -> Mapping {
        use ErrorCode::*;
        let (name, grpc, exception, http_status) = match self {
            InvalidArgument => (
                "InvalidArgument",
                Code::InvalidArgument,
                "InvalidArgumentException",
                400,
            ),
            Validation => (
                "Validation",
                Code::InvalidArgument,
                "ValidationException",
                400,
            ),
            Serialization => (
                "Serialization",
                Code::InvalidArgument,
                "SerializationException",
                400,
            ),
            ResourceNotFound => (
                "ResourceNotFound",
                Code::NotFound,
                "ResourceNotFoundException",
                400,
            ),
            ResourceInUse => (
                "ResourceInUse",
                Code::FailedPrecondition,
                "ResourceInUseException",
                400,
            ),
            LimitExceeded => (
                "LimitExceeded",
                Code::ResourceExhausted,
                "LimitExceededException",
                400,
            ),
            ProvisionedThroughputExceeded => (
                "ProvisionedThroughputExceeded",
                Code::ResourceExhausted,
                "ProvisionedThroughputExceededException",
                400,
            ),
            ExpiredIterator => (
                "ExpiredIterator",
                Code::OutOfRange,
                "ExpiredIteratorException",
                400,
            ),
            ExpiredNextToken => (
                "ExpiredNextToken",
                Code::OutOfRange,
                "ExpiredNextTokenException",
                400,
            ),
            DryRun => (
                "DryRun",
                Code::FailedPrecondition,
                "DryRunOperationException",
                400,
            ),
            UnknownOperation => (
                "UnknownOperation",
                Code::Unimplemented,
                "UnknownOperationException",
                400,
            ),
            AccessDenied => (
                "AccessDenied",
                Code::PermissionDenied,
                "AccessDeniedException",
                400,
            ),
            OperationNotDetermined => (
                "OperationNotDetermined",
                Code::PermissionDenied,
                "AccessDeniedException",
                403,
            ),
            IncompleteSignature => (
                "IncompleteSignature",
                Code::Unauthenticated,
                "IncompleteSignatureException",
                400,
            ),
            MissingAuthenticationToken => (
                "MissingAuthenticationToken",
                Code::Unauthenticated,
                "MissingAuthenticationTokenException",
                400,
            ),
            UnrecognizedClient => (
                "UnrecognizedClient",
                Code::Unauthenticated,
                "UnrecognizedClientException",
                400,
            ),
            InvalidSignature => (
                "InvalidSignature",
                Code::Unauthenticated,
                "InvalidSignatureException",
                400,
            ),
            RequestTooLarge => (
                "RequestTooLarge",
                Code::InvalidArgument,
                "RequestEntityTooLargeException",
                413,
            ),
            RequestTimeout => (
                "RequestTimeout",
                Code::InvalidArgument,
                "RequestTimeoutException",
                408,
            ),
            Conflict => ("Conflict", Code::Aborted, "InternalFailure", 500),
            NotWritten => (
                "NotWritten",
                Code::FailedPrecondition,
                "InternalFailure",
                500,
            ),
            MaybeWritten => ("MaybeWritten", Code::Internal, "InternalFailure", 500),
            Unavailable => ("Unavailable", Code::Unavailable, "InternalFailure", 500),
            NotImplemented => ("NotImplemented", Code::Unimplemented, "NotImplemented", 501),
            Internal => ("Internal", Code::Internal, "InternalFailure", 500),
        };
        Mapping {
            name,
            grpc,
            exception,
            http_status,
        }
    }

    /// The Kinesis exception name (`__type`).
    pub const fn exception(self) -> &'static str {
        self.mapping().exception
    }

    /// The HTTP status a Kinesis client gets.
    pub const fn http_status(self) -> u16 {
        self.mapping().http_status
    }

    /// The gRPC code services exchange.
    pub const fn grpc_code(self) -> Code {
        self.mapping().grpc
    }

    /// Whether nothing was changed, so the same call may simply be sent
    /// again (after routing again, for a write).
    pub const fn is_safe_to_retry(self) -> bool {
        matches!(self, ErrorCode::NotWritten | ErrorCode::Conflict)
    }

    /// The code named `name` on the wire.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.mapping().name == name)
    }

    /// What a status without Freshet's metadata means: one made by tonic
    /// itself (a refused connection, a passed deadline, an oversized
    /// message) or by a peer that predates the table. The codes services
    /// used for the caller's mistakes keep their meaning; a call cut off
    /// midway may have been carried out; anything else is internal.
    pub fn from_grpc_code(grpc: Code) -> ErrorCode {
        match grpc {
            Code::InvalidArgument => ErrorCode::InvalidArgument,
            Code::NotFound => ErrorCode::ResourceNotFound,
            Code::AlreadyExists | Code::FailedPrecondition => ErrorCode::ResourceInUse,
            Code::ResourceExhausted => ErrorCode::LimitExceeded,
            Code::Aborted => ErrorCode::Conflict,
            Code::Unavailable => ErrorCode::Unavailable,
            Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::DataLoss => {
                ErrorCode::MaybeWritten
            }
            _ => ErrorCode::Internal,
        }
    }

    /// A gRPC status carrying this code.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code(), message);
        status.metadata_mut().insert(
            METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(self.mapping().name),
        );
        status
    }

    /// The code a status carries (see the crate docs).
    pub fn of_status(status: &tonic::Status) -> ErrorCode {
        status
            .metadata()
            .get(METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(ErrorCode::from_name)
            .unwrap_or_else(|| ErrorCode::from_grpc_code(status.code()))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mapping().name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table, as a reader of the Kinesis docs would check it.
    #[test]
    fn every_code_maps_to_its_grpc_code_and_kinesis_exception() {
        use ErrorCode::*;
        let table: &[(ErrorCode, Code, &str, u16)] = &[
            (
                InvalidArgument,
                Code::InvalidArgument,
                "InvalidArgumentException",
                400,
            ),
            (
                Validation,
                Code::InvalidArgument,
                "ValidationException",
                400,
            ),
            (
                Serialization,
                Code::InvalidArgument,
                "SerializationException",
                400,
            ),
            (
                ResourceNotFound,
                Code::NotFound,
                "ResourceNotFoundException",
                400,
            ),
            (
                ResourceInUse,
                Code::FailedPrecondition,
                "ResourceInUseException",
                400,
            ),
            (
                LimitExceeded,
                Code::ResourceExhausted,
                "LimitExceededException",
                400,
            ),
            (
                ProvisionedThroughputExceeded,
                Code::ResourceExhausted,
                "ProvisionedThroughputExceededException",
                400,
            ),
            (
                ExpiredIterator,
                Code::OutOfRange,
                "ExpiredIteratorException",
                400,
            ),
            (
                ExpiredNextToken,
                Code::OutOfRange,
                "ExpiredNextTokenException",
                400,
            ),
            (
                DryRun,
                Code::FailedPrecondition,
                "DryRunOperationException",
                400,
            ),
            (
                UnknownOperation,
                Code::Unimplemented,
                "UnknownOperationException",
                400,
            ),
            (
                AccessDenied,
                Code::PermissionDenied,
                "AccessDeniedException",
                400,
            ),
            (
                OperationNotDetermined,
                Code::PermissionDenied,
                "AccessDeniedException",
                403,
            ),
            (
                IncompleteSignature,
                Code::Unauthenticated,
                "IncompleteSignatureException",
                400,
            ),
            (
                MissingAuthenticationToken,
                Code::Unauthenticated,
                "MissingAuthenticationTokenException",
                400,
            ),
            (
                UnrecognizedClient,
                Code::Unauthenticated,
                "UnrecognizedClientException",
                400,
            ),
            (
                InvalidSignature,
                Code::Unauthenticated,
                "InvalidSignatureException",
                400,
            ),
            (
                RequestTooLarge,
                Code::InvalidArgument,
                "RequestEntityTooLargeException",
                413,
            ),
            (
                RequestTimeout,
                Code::InvalidArgument,
                "RequestTimeoutException",
                408,
            ),
            (Conflict, Code::Aborted, "InternalFailure", 500),
            (NotWritten, Code::FailedPrecondition, "InternalFailure", 500),
            (Internal, Code::Internal, "InternalFailure", 500),
            (MaybeWritten, Code::Internal, "InternalFailure", 500),
            (Unavailable, Code::Unavailable, "InternalFailure", 500),
            (NotImplemented, Code::Unimplemented, "NotImplemented", 501),
        ];
        assert_eq!(
            table.len(),
            ErrorCode::ALL.len(),
            "a code is missing from this test"
        );
        for &(code, grpc, exception, http_status) in table {
            assert_eq!(code.grpc_code(), grpc, "{code}");
            assert_eq!(code.exception(), exception, "{code}");
            assert_eq!(code.http_status(), http_status, "{code}");
        }
    }

    #[test]
    fn every_code_survives_a_trip_through_a_grpc_status() {
        for &code in ErrorCode::ALL {
            let status = code.status("message");
            assert_eq!(status.code(), code.grpc_code());
            assert_eq!(ErrorCode::of_status(&status), code, "{code}");
            assert_eq!(ErrorCode::from_name(code.mapping().name), Some(code));
        }
    }

    #[test]
    fn a_status_without_a_code_is_read_by_its_grpc_code() {
        let read = |grpc| ErrorCode::of_status(&tonic::Status::new(grpc, "x"));
        assert_eq!(read(Code::NotFound), ErrorCode::ResourceNotFound);
        assert_eq!(read(Code::FailedPrecondition), ErrorCode::ResourceInUse);
        assert_eq!(read(Code::AlreadyExists), ErrorCode::ResourceInUse);
        assert_eq!(read(Code::ResourceExhausted), ErrorCode::LimitExceeded);
        assert_eq!(read(Code::Unavailable), ErrorCode::Unavailable);
        assert_eq!(read(Code::Aborted), ErrorCode::Conflict);
        // A call cut off midway may have been carried out.
        assert_eq!(read(Code::DeadlineExceeded), ErrorCode::MaybeWritten);
        assert_eq!(read(Code::Cancelled), ErrorCode::MaybeWritten);
        assert_eq!(read(Code::Internal), ErrorCode::Internal);
        // tonic's own, never the client's fault: an oversized message, a
        // method a peer does not serve.
        assert_eq!(read(Code::OutOfRange), ErrorCode::Internal);
        assert_eq!(read(Code::Unimplemented), ErrorCode::Internal);
        assert_eq!(read(Code::PermissionDenied), ErrorCode::Internal);
        assert_eq!(read(Code::Unauthenticated), ErrorCode::Internal);
        assert_eq!(read(Code::InvalidArgument), ErrorCode::InvalidArgument);
    }

    #[test]
    fn only_refusals_that_changed_nothing_are_safe_to_retry() {
        let safe: Vec<ErrorCode> = ErrorCode::ALL
            .iter()
            .copied()
            .filter(|code| code.is_safe_to_retry())
            .collect();
        assert_eq!(safe, [ErrorCode::Conflict, ErrorCode::NotWritten]);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.mapping().name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
