//! The one place where storage errors become Kafka error codes.

use kafka_protocol::ResponseError;
use sediment_log::LogError;

/// Kafka error code and a message for a storage error.
pub fn log_error_code(e: &LogError) -> ResponseError {
    use ResponseError as K;
    match e {
        LogError::InvalidBatch(_) | LogError::Corrupt { .. } => K::CorruptMessage,
        LogError::MessageTooLarge { .. } => K::MessageTooLarge,
        LogError::OffsetOutOfRange { .. } => K::OffsetOutOfRange,
        LogError::DuplicateSequence => K::DuplicateSequenceNumber,
        LogError::OutOfOrderSequence { .. } => K::OutOfOrderSequenceNumber,
        LogError::InvalidProducerEpoch { .. } => K::InvalidProducerEpoch,
        LogError::InvalidConfig { .. } => K::InvalidConfig,
        LogError::InvalidTopic { .. } => K::InvalidTopicException,
        LogError::InvalidPartitions { .. } => K::InvalidPartitions,
        LogError::TopicExists { .. } => K::TopicAlreadyExists,
        LogError::UnknownTopic { .. } => K::UnknownTopicOrPartition,
        LogError::Timeout => K::RequestTimedOut,
        LogError::ShuttingDown => K::NotLeaderOrFollower,
        _ => K::KafkaStorageError,
    }
}

pub fn code(e: &LogError) -> i16 {
    log_error_code(e).code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sediment_log::batch::BatchError;

    #[test]
    fn storage_errors_map_to_kafka_codes() {
        assert_eq!(
            code(&LogError::InvalidBatch(BatchError::CrcMismatch {
                stored: 1,
                computed: 2
            })),
            2
        );
        assert_eq!(code(&LogError::UnknownTopic { name: "x".into() }), 3);
        assert_eq!(
            code(&LogError::OffsetOutOfRange {
                offset: 1,
                start: 2,
                end: 3
            }),
            1
        );
        assert_eq!(
            code(&LogError::Io {
                path: "/x".into(),
                source: std::io::Error::other("disk full")
            }),
            56
        );
    }
}
