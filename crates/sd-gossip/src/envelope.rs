//! Checks an opened packet's plaintext before chitchat's codec sees it.
//!
//! chitchat 0.13 keeps the decoding of its envelopes private, and its UDP socket drops what it
//! cannot decode without telling anyone, so [`crate::sealed`] cannot learn from the codec that
//! a plaintext was refused: it could only wait. [`check_envelope`] therefore decodes the
//! plaintext itself, following chitchat 0.13's wire format (`message_serialize.rs`,
//! `digest.rs`, `delta.rs`, `serialize.rs`) and using chitchat's own public
//! [`Deserializable`] implementations for its primitives (integers, strings, node ids), so that
//! a plaintext it accepts is one chitchat decodes (the `gossip_plaintext` fuzz target checks
//! this against chitchat's own socket). On top of that it refuses what chitchat would accept
//! but should not be handed:
//!
//! - **trailing bytes** after the message (chitchat ignores them; chitchat never sends any);
//! - **a delta lowering a node's max version below one of its own key versions** (a
//!   `SetMaxVersion` op after a key-value of a higher version): chitchat 0.13 applies such a
//!   delta and then fails `assert!(node_delta.max_version >= self.max_version)` in
//!   `NodeState::apply_delta`, which kills its server task and with it the node's gossip.
//!   chitchat itself never emits it (it sets a max version only for a node without key-values);
//! - **a version above [`MAX_VERSION`] for the receiver's own node**: chitchat 0.13 applies a
//!   delta about any node, the receiver's own included, and the receiver's next change of its
//!   own state computes `max_version + 1`, which overflows (a panic in the caller of
//!   [`crate::Membership::set_key`] and the like) once a forged delta set it to `u64::MAX`.
//!   Versions count the changes of one node, so the receiver's own never come near, and peers
//!   never hold a newer version of it than itself. (Bounding the versions of every node instead
//!   would let a forged delta that raises some node's versions to the bound make that node's
//!   own later, honest deltas refused by everyone.)
//! - **a compressed stream inflating to more than [`MAX_INFLATED_LEN`]** in total: chitchat
//!   bounds each block to 64 KiB but not their number, so one 64 KB datagram of tiny zstd frames
//!   would make it allocate hundreds of MB. sd's own messages (JSON metadata and hints, in
//!   datagrams of at most 64 KB) inflate to a few times their size.
//!
//! The node ids a digest lists are returned ([`Checked`]) to be counted against the receiver's
//! own digest ([`crate::sealed::DigestBudget`]). What a key holder can still do with
//! well-formed messages is described in [`crate`]'s docs.

use std::collections::HashSet;

use chitchat::{ChitchatId, Deserializable};

use crate::{Error, Result};

/// chitchat 0.13's magic number, the first two bytes (LE) of every message.
const MAGIC_NUMBER: u16 = 45_139;
/// chitchat decompresses each block of a stream into a buffer of this size.
const MAX_BLOCK_LEN: usize = u16::MAX as usize;
/// The most a message's compressed streams may inflate to, all blocks together.
pub const MAX_INFLATED_LEN: usize = 4 << 20;
/// The highest key version or max version a delta may carry for the receiver's own node: 2^62,
/// a count of changes of one node none reaches (a million a second for 146 000 years), far
/// enough from `u64::MAX` for chitchat's `max_version + 1` never to overflow.
pub const MAX_VERSION: u64 = 1 << 62;

/// Message types (the fourth byte).
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
const BAD_CLUSTER: u8 = 3;

/// Protocol versions (the third byte): how a digest is encoded.
const V0: u8 = 0;
const V1: u8 = 1;

/// Block types of a compressed stream.
const NO_MORE_BLOCKS: u8 = 0;
const COMPRESSED: u8 = 1;
const UNCOMPRESSED: u8 = 2;

/// Delta op tags.
const OP_NODE: u8 = 0;
const OP_KEY_VALUE: u8 = 1;
const OP_SET_MAX_VERSION: u8 = 2;

fn refuse<T>(reason: &'static str) -> Result<T> {
    Err(Error::BadEnvelope(reason))
}

/// Reads one of chitchat's primitives with chitchat's own decoder.
fn read<T: Deserializable>(buf: &mut &[u8], what: &'static str) -> Result<T> {
    T::deserialize(buf).map_err(|_| Error::BadEnvelope(what))
}

/// What [`check_envelope`] read in a message it accepted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The node ids a SYN's or SYN-ACK's digest lists, duplicates included: chitchat adds
    /// those it does not know to its own state, and so to its own digest (see
    /// [`crate::sealed::DigestBudget`]).
    pub digest_ids: Vec<ChitchatId>,
}

/// Checks that `plaintext` is one chitchat 0.13 message, whole, that chitchat decodes and can
/// process (see the module's docs), when received by the node `local` (if known). Pure, and
/// never panics whatever the bytes.
pub fn check_envelope(plaintext: &[u8], local: Option<&ChitchatId>) -> Result<Checked> {
    let mut checked = Checked::default();
    let mut buf = plaintext;
    let magic: u16 = read(&mut buf, "too short for a chitchat header")?;
    if magic != MAGIC_NUMBER {
        return refuse("not a chitchat message (magic number)");
    }
    let version: u8 = read(&mut buf, "too short for a chitchat header")?;
    if version != V0 && version != V1 {
        return refuse("unknown chitchat protocol version");
    }
    let message_type: u8 = read(&mut buf, "no message type")?;
    match message_type {
        SYN => {
            checked.digest_ids = check_digest(version, &mut buf)?;
            let _cluster_id: String = read(&mut buf, "bad cluster id")?;
        }
        SYN_ACK => {
            checked.digest_ids = check_digest(version, &mut buf)?;
            check_delta(&mut buf, local)?;
        }
        ACK => check_delta(&mut buf, local)?,
        BAD_CLUSTER => {}
        _ => return refuse("unknown message type"),
    }
    if !buf.is_empty() {
        return refuse("trailing bytes after the message");
    }
    Ok(checked)
}

fn check_node_digest(buf: &mut &[u8]) -> Result<ChitchatId> {
    let id: ChitchatId = read(buf, "bad node id in a digest")?;
    // Heartbeat, last GC version, max version.
    for _ in 0..3 {
        let _: u64 = read(buf, "truncated node digest")?;
    }
    Ok(id)
}

fn check_digest(version: u8, buf: &mut &[u8]) -> Result<Vec<ChitchatId>> {
    let mut ids = Vec::new();
    if version == V0 {
        let count: u16 = read(buf, "truncated digest")?;
        for _ in 0..count {
            ids.push(check_node_digest(buf)?);
        }
        return Ok(ids);
    }
    let entries = inflate_stream(buf)?;
    let mut entries = entries.as_slice();
    while !entries.is_empty() {
        ids.push(check_node_digest(&mut entries)?);
    }
    Ok(ids)
}

/// A node's delta as far as it was read: what chitchat's `DeltaBuilder` checks, and the max
/// version chitchat will compare the node's state against.
struct NodeOps {
    max_version: u64,
    /// Whether the node is the receiver itself.
    local: bool,
}

fn check_delta(buf: &mut &[u8], local: Option<&ChitchatId>) -> Result<()> {
    let ops = inflate_stream(buf)?;
    let mut ops = ops.as_slice();
    let mut nodes: HashSet<ChitchatId> = HashSet::new();
    let mut current: Option<NodeOps> = None;
    while !ops.is_empty() {
        let tag: u8 = read(&mut ops, "truncated delta op")?;
        match tag {
            OP_NODE => {
                let id: ChitchatId = read(&mut ops, "bad node id in a delta")?;
                let _last_gc_version: u64 = read(&mut ops, "truncated delta node op")?;
                let _from_version_excluded: u64 = read(&mut ops, "truncated delta node op")?;
                let is_local = local == Some(&id);
                if !nodes.insert(id) {
                    return refuse("a node twice in one delta");
                }
                current = Some(NodeOps {
                    max_version: 0,
                    local: is_local,
                });
            }
            OP_KEY_VALUE => {
                let _key: String = read(&mut ops, "bad key in a delta")?;
                let _value: String = read(&mut ops, "bad value in a delta")?;
                let version: u64 = read(&mut ops, "truncated key-value op")?;
                let status: u8 = read(&mut ops, "truncated key-value op")?;
                if status > 2 {
                    return refuse("unknown deletion status");
                }
                let Some(node) = current.as_mut() else {
                    return refuse("a key-value op before any node op");
                };
                if version <= node.max_version {
                    return refuse("key-value versions not increasing");
                }
                if node.local && version > MAX_VERSION {
                    return refuse("a key version of this very node beyond the limit");
                }
                node.max_version = version;
            }
            OP_SET_MAX_VERSION => {
                let max_version: u64 = read(&mut ops, "truncated set-max-version op")?;
                let Some(node) = current.as_mut() else {
                    return refuse("a set-max-version op before any node op");
                };
                // chitchat would accept it, then panic applying it.
                if max_version < node.max_version {
                    return refuse("a max version below the node's key versions");
                }
                if node.local && max_version > MAX_VERSION {
                    return refuse("a max version of this very node beyond the limit");
                }
                node.max_version = max_version;
            }
            _ => return refuse("unknown delta op"),
        }
    }
    Ok(())
}

/// Reads a compressed stream (chitchat's `deserialize_stream`) and returns its inflated bytes.
fn inflate_stream(buf: &mut &[u8]) -> Result<Vec<u8>> {
    let mut inflated = Vec::new();
    let mut block = vec![0u8; MAX_BLOCK_LEN];
    loop {
        let block_type: u8 = read(buf, "truncated stream")?;
        match block_type {
            NO_MORE_BLOCKS => return Ok(inflated),
            COMPRESSED | UNCOMPRESSED => {
                let len: u16 = read(buf, "truncated stream block")?;
                let len = usize::from(len);
                let Some(bytes) = buf.get(..len) else {
                    return refuse("truncated stream block");
                };
                let plain = if block_type == COMPRESSED {
                    // The very call chitchat makes, into a buffer of the same size.
                    let Ok(plain_len) = zstd::bulk::decompress_to_buffer(bytes, &mut block[..])
                    else {
                        return refuse("a stream block that does not decompress");
                    };
                    &block[..plain_len]
                } else {
                    bytes
                };
                if inflated.len() + plain.len() > MAX_INFLATED_LEN {
                    return refuse("a stream inflating beyond the limit");
                }
                inflated.extend_from_slice(plain);
                *buf = &buf[len..];
            }
            _ => return refuse("unknown stream block type"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(plaintext: &[u8]) -> Result<Checked> {
        check_envelope(plaintext, Some(&local()))
    }

    fn local() -> ChitchatId {
        ChitchatId::new("me", 1, "127.0.0.1:9000".parse().expect("address"))
    }

    fn header(version: u8, message_type: u8) -> Vec<u8> {
        let mut message = MAGIC_NUMBER.to_le_bytes().to_vec();
        message.extend_from_slice(&[version, message_type]);
        message
    }

    fn put_str(buf: &mut Vec<u8>, text: &str) {
        buf.extend_from_slice(&(text.len() as u16).to_le_bytes());
        buf.extend_from_slice(text.as_bytes());
    }

    fn put_id(buf: &mut Vec<u8>, name: &str) {
        put_str(buf, name);
        buf.extend_from_slice(&1u64.to_le_bytes());
        buf.extend_from_slice(&[4, 127, 0, 0, 1]);
        buf.extend_from_slice(&9000u16.to_le_bytes());
    }

    fn uncompressed(ops: &[u8]) -> Vec<u8> {
        let mut stream = vec![UNCOMPRESSED];
        stream.extend_from_slice(&(ops.len() as u16).to_le_bytes());
        stream.extend_from_slice(ops);
        stream.push(NO_MORE_BLOCKS);
        stream
    }

    fn node_op(name: &str) -> Vec<u8> {
        let mut op = vec![OP_NODE];
        put_id(&mut op, name);
        op.extend_from_slice(&[0; 16]);
        op
    }

    fn kv_op(version: u64) -> Vec<u8> {
        let mut op = vec![OP_KEY_VALUE];
        put_str(&mut op, "key");
        put_str(&mut op, "value");
        op.extend_from_slice(&version.to_le_bytes());
        op.push(0);
        op
    }

    fn set_max_op(version: u64) -> Vec<u8> {
        let mut op = vec![OP_SET_MAX_VERSION];
        op.extend_from_slice(&version.to_le_bytes());
        op
    }

    fn ack(ops: &[Vec<u8>]) -> Vec<u8> {
        let mut message = header(V0, ACK);
        message.extend_from_slice(&uncompressed(&ops.concat()));
        message
    }

    #[test]
    fn messages_chitchat_sends_are_accepted() {
        assert!(check(&header(V0, BAD_CLUSTER)).is_ok());
        let mut syn = header(V0, SYN);
        syn.extend_from_slice(&1u16.to_le_bytes());
        put_id(&mut syn, "n0");
        syn.extend_from_slice(&[0; 24]);
        put_str(&mut syn, "lab");
        let checked = check(&syn).expect("syn");
        assert_eq!(checked.digest_ids.len(), 1);
        assert_eq!(&*checked.digest_ids[0].node_id, "n0");
        check(&ack(&[])).expect("empty ack");
        let ops = [
            node_op("n0"),
            kv_op(1),
            kv_op(2),
            node_op("n1"),
            set_max_op(7),
        ];
        check(&ack(&ops)).expect("ack");
        // The same ops in a zstd block, and a V1 (compressed) digest.
        let compressed = zstd::bulk::compress(&ops.concat(), 0).expect("compress");
        let mut message = header(V1, SYN_ACK);
        let mut digest_entry = Vec::new();
        put_id(&mut digest_entry, "n0");
        digest_entry.extend_from_slice(&[0; 24]);
        message.extend_from_slice(&uncompressed(&digest_entry));
        message.push(COMPRESSED);
        message.extend_from_slice(&(compressed.len() as u16).to_le_bytes());
        message.extend_from_slice(&compressed);
        message.push(NO_MORE_BLOCKS);
        check(&message).expect("syn-ack");
    }

    #[test]
    fn what_chitchat_refuses_is_refused() {
        assert!(check(&[]).is_err());
        assert!(check(&MAGIC_NUMBER.to_le_bytes()).is_err());
        assert!(check(&header(2, ACK)).is_err());
        assert!(check(&header(V0, 4)).is_err());
        assert!(check(&header(V0, ACK)).is_err());
        let mut truncated = header(V0, SYN);
        truncated.extend_from_slice(&2u16.to_le_bytes());
        put_id(&mut truncated, "n0");
        assert!(check(&truncated).is_err());
        assert!(check(&ack(&[kv_op(1)])).is_err());
        assert!(check(&ack(&[node_op("a"), kv_op(2), kv_op(2)])).is_err());
        assert!(check(&ack(&[node_op("a"), node_op("a")])).is_err());
        let mut bad_block = header(V0, ACK);
        bad_block.extend_from_slice(&[COMPRESSED, 3, 0, 1, 2, 3, NO_MORE_BLOCKS]);
        assert!(check(&bad_block).is_err());
    }

    #[test]
    fn what_chitchat_should_not_be_handed_is_refused() {
        let mut trailing = header(V0, BAD_CLUSTER);
        trailing.push(0);
        assert!(check(&trailing).is_err());
        assert!(matches!(
            check(&ack(&[node_op("a"), kv_op(100), set_max_op(5)])),
            Err(Error::BadEnvelope(reason)) if reason.contains("max version")
        ));
        // Raising the max version past the keys is what chitchat may do; fine.
        check(&ack(&[node_op("a"), kv_op(5), set_max_op(100)])).expect("raise");
        // Versions beyond the limit only matter for the receiver's own node.
        check(&ack(&[node_op("me"), kv_op(MAX_VERSION)])).expect("at the limit");
        assert!(check(&ack(&[node_op("me"), kv_op(MAX_VERSION + 1)])).is_err());
        assert!(check(&ack(&[node_op("me"), set_max_op(u64::MAX)])).is_err());
        check(&ack(&[node_op("a"), set_max_op(u64::MAX)])).expect("another node");
        check_envelope(&ack(&[node_op("me"), set_max_op(u64::MAX)]), None).expect("unknown");
        let zeros = zstd::bulk::compress(&[0u8; MAX_BLOCK_LEN], 19).expect("compress");
        let mut bomb = header(V0, ACK);
        for _ in 0..=MAX_INFLATED_LEN / MAX_BLOCK_LEN {
            bomb.push(COMPRESSED);
            bomb.extend_from_slice(&(zeros.len() as u16).to_le_bytes());
            bomb.extend_from_slice(&zeros);
        }
        bomb.push(NO_MORE_BLOCKS);
        assert!(matches!(
            check(&bomb),
            Err(Error::BadEnvelope(reason)) if reason.contains("inflating")
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut accepted = 0;
        for round in 0..50_000 {
            let len = rng.usize(..300);
            let mut bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
            if round % 2 == 0 && bytes.len() >= 4 {
                bytes[..2].copy_from_slice(&MAGIC_NUMBER.to_le_bytes());
                bytes[2] = rng.u8(0..2);
                bytes[3] = rng.u8(0..4);
            }
            if check(&bytes).is_ok() {
                accepted += 1;
            }
        }
        // Only the few that happen to be whole messages (a bare BAD_CLUSTER, say).
        assert!(accepted < 1_000, "{accepted}");
    }
}
