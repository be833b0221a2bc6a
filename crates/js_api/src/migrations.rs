//! Live migration as JavaScript sees it: the JSON shapes `manager.migrate()` and
//! `GuestMemoryBuilder.migrateFrom()` resolve with, the answer of the caller's `pause`, and the
//! errors a Node stream's owner feeds into a channel transport (so that the value the stream
//! failed with, or the value `pause` threw, becomes the `cause` of `ERR_MIGRATION_ABORTED`).

use crate::hooks::JsHookFailure;
use crate::json::BigInt;
use crate::JsError;
use membacking::migration::MigratedManager;
use membacking::migration::MigrationInfo;
use membacking::migration::PauseError;
use membacking::migration::MAX_ROUNDS_LIMIT;
use serde::Serialize;
use std::io;

/// `MigrationInfo`: what a migration did, as the source saw it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationInfoView {
    rounds: u32,
    bytes_per_round: Vec<BigInt>,
    bytes: BigInt,
    stream_bytes: BigInt,
    downtime_ms: f64,
    converged: bool,
    bandwidth_bytes_per_sec: f64,
}

impl From<&MigrationInfo> for MigrationInfoView {
    fn from(info: &MigrationInfo) -> Self {
        MigrationInfoView {
            rounds: info.rounds,
            bytes_per_round: info.bytes_per_round.iter().copied().map(BigInt).collect(),
            bytes: BigInt(info.bytes),
            stream_bytes: BigInt(info.stream_bytes),
            downtime_ms: info.downtime_ms,
            converged: info.converged,
            bandwidth_bytes_per_sec: info.bandwidth_bytes_per_sec,
        }
    }
}

/// `MigratedFrom`: what the destination received (the payload crosses separately, as bytes).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigratedInfoView {
    id: String,
    rounds: u32,
    bytes_per_round: Vec<BigInt>,
    bytes: BigInt,
}

impl From<&MigratedManager> for MigratedInfoView {
    fn from(migrated: &MigratedManager) -> Self {
        MigratedInfoView {
            id: migrated.manifest.id.clone(),
            rounds: migrated.rounds,
            bytes_per_round: migrated
                .bytes_per_round
                .iter()
                .copied()
                .map(BigInt)
                .collect(),
            bytes: BigInt(migrated.bytes),
        }
    }
}

/// `options.maxRounds` as the core takes it (a `u32`): a larger value is refused with the
/// core's rule rather than cut.
pub fn max_rounds(value: u64) -> Result<u32, JsError> {
    u32::try_from(value).map_err(|_| {
        JsError::arg_value(format!(
            "maxRounds {value} is not between 1 and {MAX_ROUNDS_LIMIT}: pass the number of rounds to send while the guest runs"
        ))
    })
}

/// The error a Node stream failed with, for the channel transport: its message, and the token
/// under which the TypeScript layer keeps the stream's own error value (it becomes the cause
/// of the migration's `ERR_MIGRATION_ABORTED`).
pub fn stream_error(message: &str, cause_token: Option<u32>) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        JsHookFailure::new(message, cause_token),
    )
}

/// What the caller's `pause` settled with: resolved with an optional payload (the vCPU state
/// to carry in the final round), or rejected (its value kept under `cause_token`).
#[derive(Debug)]
pub enum PauseAnswer {
    /// `pause` resolved.
    Paused(Option<Vec<u8>>),
    /// `pause` threw or rejected.
    Failed {
        /// The thrown value's message.
        message: String,
        /// The token of the thrown value.
        cause_token: Option<u32>,
    },
}

impl PauseAnswer {
    /// The core's pause result. A dropped answer (the JavaScript side went away before
    /// `pause` settled) is a failure too.
    pub fn into_result(answer: Option<Self>) -> Result<Option<Vec<u8>>, PauseError> {
        match answer {
            Some(PauseAnswer::Paused(payload)) => Ok(payload),
            Some(PauseAnswer::Failed {
                message,
                cause_token,
            }) => Err(Box::new(JsHookFailure::new(
                format!("pause failed: {message}"),
                cause_token,
            ))),
            None => Err(Box::new(JsHookFailure::new(
                "pause never settled: its JavaScript environment went away",
                None,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorClass;
    use crate::errors::ErrorCode;
    use crate::json::to_json;
    use crate::ToJsError;
    use membacking::migration::MigrationError;
    use membacking::migration::MigrationPhase;

    fn value<T: Serialize>(view: &T) -> serde_json::Value {
        serde_json::from_str(&to_json(view)).unwrap()
    }

    #[test]
    fn migration_info_has_bigint_bytes_and_number_figures() {
        let info = MigrationInfo {
            rounds: 3,
            bytes_per_round: vec![0x10_0000, 0x2000, 0x1000],
            bytes: 0x10_3000,
            stream_bytes: 0x10_4000,
            downtime_ms: 2.5,
            converged: true,
            bandwidth_bytes_per_sec: 1e9,
        };
        assert_eq!(
            value(&MigrationInfoView::from(&info)),
            serde_json::json!({
                "rounds": 3,
                "bytesPerRound": [{"$bigint": "0x100000"}, {"$bigint": "0x2000"}, {"$bigint": "0x1000"}],
                "bytes": {"$bigint": "0x103000"},
                "streamBytes": {"$bigint": "0x104000"},
                "downtimeMs": 2.5,
                "converged": true,
                "bandwidthBytesPerSec": 1e9,
            })
        );
    }

    #[test]
    fn a_failed_stream_is_aborted_with_the_streams_own_value_as_cause() {
        let error = MigrationError::Aborted {
            phase: MigrationPhase::Rounds,
            cause: stream_error("read ECONNRESET", Some(7)),
        }
        .to_js_error();
        assert_eq!(
            error.kind(),
            (
                ErrorClass::MigrationError,
                Some(ErrorCode::MigrationAborted)
            )
        );
        assert_eq!(error.cause_token, Some(7));
        assert_eq!(error.fields.phase, Some("rounds"));
        assert!(
            error.message.contains("read ECONNRESET"),
            "{}",
            error.message
        );
        // Through the channel transport's shared failure, as a migration reports it.
        let (mut transport, end) = membacking::migration::channel_transport(16);
        end.incoming.fail(stream_error("socket closed", Some(9)));
        let cause = io::Read::read(&mut transport.reader, &mut [0; 4]).unwrap_err();
        let error = MigrationError::Aborted {
            phase: MigrationPhase::Handshake,
            cause,
        }
        .to_js_error();
        assert_eq!(error.cause_token, Some(9));
        // Without a token the stream's message is a plain cause.
        let error = MigrationError::Aborted {
            phase: MigrationPhase::Final,
            cause: stream_error("closed", None),
        }
        .to_js_error();
        assert_eq!(error.cause_token, None);
        assert_eq!(
            error.cause.map(|cause| cause.message).as_deref(),
            Some("closed")
        );
    }

    #[test]
    fn pause_answers_become_the_cores_result_and_a_failure_keeps_its_token() {
        assert_eq!(
            PauseAnswer::into_result(Some(PauseAnswer::Paused(Some(vec![1, 2])))).unwrap(),
            Some(vec![1, 2])
        );
        assert_eq!(
            PauseAnswer::into_result(Some(PauseAnswer::Paused(None))).unwrap(),
            None
        );
        let failed = PauseAnswer::into_result(Some(PauseAnswer::Failed {
            message: "vCPU stuck".into(),
            cause_token: Some(4),
        }))
        .unwrap_err();
        let error = MigrationError::Pause { source: failed }.to_js_error();
        assert_eq!(
            error.kind(),
            (
                ErrorClass::MigrationError,
                Some(ErrorCode::MigrationAborted)
            )
        );
        assert_eq!(error.cause_token, Some(4));
        assert!(error.message.contains("vCPU stuck"), "{}", error.message);
        let gone = PauseAnswer::into_result(None).unwrap_err();
        assert!(gone.to_string().contains("never settled"));
    }

    #[test]
    fn max_rounds_beyond_u32_is_refused_not_cut() {
        assert_eq!(max_rounds(16).unwrap(), 16);
        let error = max_rounds(1 << 32).unwrap_err();
        assert_eq!(
            error.kind(),
            (ErrorClass::RangeError, Some(ErrorCode::InvalidArgValue))
        );
        assert!(error.message.contains("4294967296"), "{}", error.message);
    }

    #[test]
    fn protocol_and_downtime_errors_carry_their_figures() {
        let error = MigrationError::Protocol {
            what: "bad checksum".into(),
            offset: 0x40,
            detected_by: membacking::migration::Side::Destination,
        }
        .to_js_error();
        let json = value(&error);
        assert_eq!(json["code"], "ERR_MIGRATION_PROTOCOL");
        assert_eq!(json["fields"]["detectedBy"], "destination");
        assert_eq!(
            json["fields"]["offset"],
            serde_json::json!({"$bigint": "0x40"})
        );
        assert_eq!(json["fields"]["what"], "bad checksum");
        let error = MigrationError::Downtime {
            rounds: 4,
            remainder_bytes: 0x20_0000,
            bandwidth_bytes_per_sec: 1e6,
            predicted_ms: 2097.152,
            max_downtime_ms: 5,
        }
        .to_js_error();
        let json = value(&error);
        assert_eq!(json["code"], "ERR_MIGRATION_DOWNTIME");
        assert_eq!(
            json["fields"],
            serde_json::json!({
                "rounds": 4,
                "remainderBytes": {"$bigint": "0x200000"},
                "bandwidthBytesPerSec": 1e6,
                "predictedMs": 2097.152,
                "maxDowntimeMs": 5,
            })
        );
    }
}
