//! Requests decoded without the bulk of their node.
//!
//! Envoy puts its whole `Node` into every request of a stream, ACKs included: with its 516
//! extensions that is about 61 KB (Envoy 1.40 from PyPI, measured in `envoy_conformance`),
//! which prost decodes in about 240 µs on the project's 2-core machines, some 16 times what
//! pushing a rotation to that stream costs. trust-sds reads nothing of the node but its
//! `id`. So the node field is cut out of the bytes before prost decodes the rest, and only
//! the node's `id` is decoded; a request carries a `Node` with just that `id`.
//!
//! This walks the protobuf wire format one level deep, skipping length-delimited fields by
//! their length. Bytes it cannot walk are left to prost whole, so malformed input gets
//! prost's error; inside the node only its own fields are walked, so a node malformed
//! deeper down (in an extension, say) is not looked at.
//! For every input prost decodes, the result equals prost's with the node reduced to its
//! `id` (`trust_sds::fuzzing::grpc_frames` checks it).

use std::ops::Range;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::encoding::decode_varint;
use prost::{DecodeError, Message};

/// A discovery request message that carries a node.
pub trait Request: Message + Default {
    /// The field number of its `node`.
    const NODE_FIELD: u32;
    fn set_node(&mut self, node: Node);
}

impl Request for DiscoveryRequest {
    const NODE_FIELD: u32 = 2;
    fn set_node(&mut self, node: Node) {
        self.node = Some(node);
    }
}

impl Request for DeltaDiscoveryRequest {
    const NODE_FIELD: u32 = 1;
    fn set_node(&mut self, node: Node) {
        self.node = Some(node);
    }
}

/// `Node.id`'s field number.
const NODE_ID_FIELD: u32 = 1;
const LENGTH_DELIMITED: u64 = 2;

/// Decodes `bytes` as `T`, with the node reduced to its `id`.
pub fn decode<T: Request>(bytes: &[u8]) -> Result<T, DecodeError> {
    let Some((rest, id)) = without_node(bytes, T::NODE_FIELD) else {
        return T::decode(bytes);
    };
    let mut request = T::decode(rest.as_slice())?;
    request.set_node(Node {
        id,
        ..Default::default()
    });
    Ok(request)
}

/// The message's bytes without its node field, and the node's `id`; `None` when there is
/// no node, or when the bytes cannot be walked (prost then decodes them whole).
fn without_node(bytes: &[u8], node_field: u32) -> Option<(Vec<u8>, String)> {
    let mut rest = Vec::new();
    let mut id = None;
    let mut kept = 0;
    let mut found = false;
    for field in Fields::new(bytes) {
        let field = field?;
        if field.number != node_field {
            continue;
        }
        if field.wire_type != LENGTH_DELIMITED {
            return None;
        }
        found = true;
        rest.extend_from_slice(&bytes[kept..field.entry.start]);
        kept = field.entry.end;
        let node = &bytes[field.payload];
        for inner in Fields::new(node) {
            let inner = inner?;
            if inner.number == NODE_ID_FIELD {
                if inner.wire_type != LENGTH_DELIMITED {
                    return None;
                }
                // A message field given more than once is merged: the last `id` wins.
                id = Some(std::str::from_utf8(&node[inner.payload]).ok()?);
            }
        }
    }
    if !found {
        return None;
    }
    rest.extend_from_slice(&bytes[kept..]);
    Some((rest, id.unwrap_or_default().to_owned()))
}

/// One field of a message, as positions in its bytes.
struct Field {
    number: u32,
    wire_type: u64,
    /// Key and value.
    entry: Range<usize>,
    /// The value (of a length-delimited field: without its length).
    payload: Range<usize>,
}

/// The fields of a message, one level deep; a `None` item means the bytes cannot be
/// walked (a bad key or length, a group, bytes cut short) and ends the walk.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn field(&self) -> Option<Field> {
        let start = self.at;
        let mut buf = &self.bytes[start..];
        let key = decode_varint(&mut buf).ok()?;
        let number = u32::try_from(key >> 3).ok().filter(|&n| n > 0)?;
        let wire_type = key & 7;
        let offset = |buf: &[u8]| self.bytes.len() - buf.len();
        let (payload, len) = match wire_type {
            0 => {
                let at = offset(buf);
                decode_varint(&mut buf).ok()?;
                (at, offset(buf) - at)
            }
            1 => (offset(buf), 8),
            LENGTH_DELIMITED => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                (offset(buf), len)
            }
            5 => (offset(buf), 4),
            _ => return None,
        };
        let end = payload
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())?;
        Some(Field {
            number,
            wire_type,
            entry: start..end,
            payload: payload..end,
        })
    }
}

impl Iterator for Fields<'_> {
    type Item = Option<Field>;

    fn next(&mut self) -> Option<Option<Field>> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let field = self.field();
        self.at = field.as_ref().map_or(self.bytes.len(), |f| f.entry.end);
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node shaped like Envoy's: an id, a cluster, and hundreds of extensions.
    fn envoy_like_node(id: &str) -> Node {
        crate::fuzzing::envoy_like_node(id, 516)
    }

    fn trimmed(node: &Node) -> Node {
        Node {
            id: node.id.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn node_field_numbers_are_the_messages_own() {
        let node = Some(Node::default());
        let sotw = DiscoveryRequest {
            node: node.clone(),
            ..Default::default()
        };
        let delta = DeltaDiscoveryRequest {
            node,
            ..Default::default()
        };
        // Only the node is set: the first key is the node's.
        let first = |bytes: Vec<u8>| Fields::new(&bytes).next().flatten().map(|f| f.number);
        assert_eq!(
            first(sotw.encode_to_vec()),
            Some(DiscoveryRequest::NODE_FIELD)
        );
        assert_eq!(
            first(delta.encode_to_vec()),
            Some(DeltaDiscoveryRequest::NODE_FIELD)
        );
    }

    #[test]
    fn a_request_keeps_everything_but_the_node_beyond_its_id() {
        let node = envoy_like_node("router~10.0.0.1~gw-1.ns~ns.svc.cluster.local");
        let sotw = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(node.clone()),
            resource_names: vec!["team/a".into(), "team/b".into()],
            type_url: crate::sds::SECRET_TYPE_URL.into(),
            response_nonce: "7".into(),
            ..Default::default()
        };
        let bytes = sotw.encode_to_vec();
        assert!(bytes.len() > 30_000, "{} bytes", bytes.len());
        let decoded: DiscoveryRequest = decode(&bytes).unwrap();
        assert_eq!(
            decoded,
            DiscoveryRequest {
                node: Some(trimmed(&node)),
                ..sotw
            }
        );

        let delta = DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: crate::sds::SECRET_TYPE_URL.into(),
            resource_names_subscribe: vec!["team/a".into()],
            response_nonce: "3".into(),
            ..Default::default()
        };
        let decoded: DeltaDiscoveryRequest = decode(&delta.encode_to_vec()).unwrap();
        assert_eq!(
            decoded,
            DeltaDiscoveryRequest {
                node: Some(trimmed(&node)),
                ..delta
            }
        );
    }

    #[test]
    fn a_node_given_twice_is_merged_as_prost_merges_it() {
        let first = DiscoveryRequest {
            node: Some(envoy_like_node("first")),
            response_nonce: "1".into(),
            ..Default::default()
        };
        let no_id = DiscoveryRequest {
            node: Some(Node {
                cluster: "c".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let second = DiscoveryRequest {
            node: Some(Node {
                id: "second".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (parts, id) in [
            (vec![&first, &second], "second"),
            (vec![&second, &first], "first"),
            (vec![&first, &no_id], "first"),
        ] {
            let bytes: Vec<u8> = parts.iter().flat_map(|p| p.encode_to_vec()).collect();
            let full = DiscoveryRequest::decode(bytes.as_slice()).unwrap();
            let slim: DiscoveryRequest = decode(&bytes).unwrap();
            assert_eq!(slim.node.as_ref().map(|n| n.id.as_str()), Some(id));
            assert_eq!(slim.node, full.node.as_ref().map(trimmed));
            assert_eq!(slim.response_nonce, full.response_nonce);
        }
    }

    #[test]
    fn requests_without_a_node_and_broken_bytes_are_prosts_to_judge() {
        let plain = DiscoveryRequest {
            response_nonce: "1".into(),
            ..Default::default()
        };
        let decoded: DiscoveryRequest = decode(&plain.encode_to_vec()).unwrap();
        assert_eq!(decoded, plain);
        for broken in [
            &[0xff][..],
            &[0x12, 0x05, 0x0a],
            &[0x12, 0x02, 0x0a, 0x01],
            &[0x13],
        ] {
            assert_eq!(
                decode::<DiscoveryRequest>(broken).is_ok(),
                DiscoveryRequest::decode(broken).is_ok(),
                "{broken:?}"
            );
        }
        // An id that is not UTF-8 is refused as prost refuses it.
        let bad_id = [0x12, 0x03, 0x0a, 0x01, 0xff];
        assert!(decode::<DiscoveryRequest>(&bad_id).is_err());
    }
}
