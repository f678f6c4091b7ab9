//! The wire codec: the only place that knows messages are bincode.
//!
//! A message is `[version: u16 LE][bincode body]`; on the wire it travels as a frame,
//! `[length: u32 LE][message]`. Every decode is bounded by [`MAX_MESSAGE`], and a frame's
//! length is checked before anything is allocated for it.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// The version of the wire protocol; peers with another version are refused. 2: name claims,
/// live reconfiguration and cluster events.
pub const PROTOCOL_VERSION: u16 = 2;

/// The largest message accepted or sent, in bytes (16 MiB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix of a frame.
pub const FRAME_HEADER: usize = 4;

const VERSION_BYTES: usize = 2;

fn bincode_config() -> Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE>> {
    config::standard().with_limit::<MAX_MESSAGE>()
}

/// Encodes `value` as a message (version and body, no length prefix).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut message = PROTOCOL_VERSION.to_le_bytes().to_vec();
    bincode::serde::encode_into_std_write(value, &mut message, bincode_config())
        .map_err(|error| Error::Encode(error.to_string()))?;
    check_size(message.len())?;
    Ok(message)
}

/// Encodes `value` as a whole frame: length prefix, version and body.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut frame = vec![0; FRAME_HEADER];
    frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bincode::serde::encode_into_std_write(value, &mut frame, bincode_config())
        .map_err(|error| Error::Encode(error.to_string()))?;
    let length = frame.len() - FRAME_HEADER;
    check_size(length)?;
    // check_size bounds length to 16 MiB, which fits a u32.
    let prefix = u32::try_from(length).map_err(|_| too_large(length))?;
    frame[..FRAME_HEADER].copy_from_slice(&prefix.to_le_bytes());
    Ok(frame)
}

/// Reads a frame's length prefix, refusing lengths above [`MAX_MESSAGE`].
pub fn frame_length(header: [u8; FRAME_HEADER]) -> Result<usize> {
    let length = u32::from_le_bytes(header) as usize;
    check_size(length)?;
    Ok(length)
}

/// Decodes a message made by [`encode`] (or a frame's content after its length prefix).
pub fn decode<T: DeserializeOwned>(message: &[u8]) -> Result<T> {
    check_size(message.len())?;
    let Some((version, body)) = message.split_first_chunk::<VERSION_BYTES>() else {
        return Err(Error::Decode(format!(
            "message of {} bytes is shorter than its version header",
            message.len()
        )));
    };
    let theirs = u16::from_le_bytes(*version);
    if theirs != PROTOCOL_VERSION {
        return Err(Error::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    let (value, read) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|error| Error::Decode(error.to_string()))?;
    if read != body.len() {
        return Err(Error::Decode(format!(
            "{} trailing bytes after the message",
            body.len() - read
        )));
    }
    Ok(value)
}

fn check_size(size: usize) -> Result<()> {
    if size > MAX_MESSAGE {
        return Err(too_large(size));
    }
    Ok(())
}

fn too_large(size: usize) -> Error {
    Error::FrameTooLarge {
        size,
        limit: MAX_MESSAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "web".into(),
            values: vec![1, 2, 300_000],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).expect("encode");
        assert_eq!(decode::<Sample>(&bytes).expect("decode"), sample());
    }

    #[test]
    fn frame_is_length_prefixed_message() {
        let frame = encode_frame(&sample()).expect("frame");
        let header: [u8; 4] = frame[..4].try_into().expect("header");
        assert_eq!(frame_length(header).expect("length"), frame.len() - 4);
        assert_eq!(decode::<Sample>(&frame[4..]).expect("decode"), sample());
    }

    #[test]
    fn other_version_names_both_versions() {
        let mut bytes = encode(&sample()).expect("encode");
        bytes[..2].copy_from_slice(&99u16.to_le_bytes());
        let error = decode::<Sample>(&bytes).expect_err("must refuse");
        assert!(matches!(
            error,
            Error::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 99
            }
        ));
        let message = error.to_string();
        assert!(message.contains("99") && message.contains(&PROTOCOL_VERSION.to_string()));
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocation() {
        let header = ((MAX_MESSAGE + 1) as u32).to_le_bytes();
        assert!(matches!(
            frame_length(header),
            Err(Error::FrameTooLarge { .. })
        ));
        assert!(frame_length((MAX_MESSAGE as u32).to_le_bytes()).is_ok());
    }

    #[test]
    fn oversized_values_are_not_encoded() {
        let big = vec![0u8; MAX_MESSAGE + 1];
        assert!(matches!(encode(&big), Err(Error::FrameTooLarge { .. })));
        assert!(matches!(
            encode_frame(&big),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn a_huge_inner_length_does_not_allocate() {
        // A body claiming a 2^60-element vector must fail on the limit, not try to allocate.
        let mut bytes = PROTOCOL_VERSION.to_le_bytes().to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(decode::<Sample>(&[]).is_err());
        assert!(decode::<Sample>(&[1]).is_err());
        let bytes = encode(&sample()).expect("encode");
        assert!(decode::<Sample>(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<Sample>(&long).is_err());
    }
}
