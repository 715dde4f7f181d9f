//! The delivery report: for each served resource, how many subscribers hold its current
//! version (ACKed, or claimed on reconnect), how many rejected it (NACK, with the first
//! rejection's node and `error_detail`) and how many have not answered yet. Computed when
//! asked (admin views, a scrape, a NACK) from what each stream recorded on its requests,
//! so pushes pay nothing for it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::clients::ClientInfo;

/// One resource's delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The version served now.
    #[serde(serialize_with = "as_str")]
    pub version: Arc<str>,
    /// Streams subscribed to it (by name or wildcard).
    pub subscribers: usize,
    /// Subscribers that hold the current version.
    pub acked: usize,
    /// Subscribers that rejected the current version.
    pub rejected: usize,
    /// Subscribers that have neither: sent and not answered yet (or a NACK of an older
    /// version, or not sent at all: a slow reader).
    pub pending: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_rejection: Option<FirstRejection>,
    #[serde(skip)]
    first_seq: Option<u64>,
}

fn as_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// The earliest NACK of the current version.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FirstRejection {
    /// The subscriber's node id (empty if it sent none).
    pub node: String,
    /// Its `error_detail` message.
    pub message: String,
}

/// A rejected current version, as the status writer adds it to a condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub version: Arc<str>,
    /// e.g. `1 of 3 subscribers rejected version 0123456789abcdef: <reason>`.
    pub summary: String,
}

/// Resource name -> its rejected current version.
pub type Rejections = BTreeMap<String, Rejection>;

impl Delivery {
    pub fn new(version: &Arc<str>) -> Self {
        Self {
            version: version.clone(),
            ..Self::default()
        }
    }

    /// Counts one subscriber of `name`.
    pub fn count(&mut self, client: &ClientInfo, name: &str) {
        self.subscribers += 1;
        let delivered = client.delivery.get(name);
        if delivered.and_then(|d| d.held.as_ref()) == Some(&self.version) {
            self.acked += 1;
            return;
        }
        match delivered.and_then(|d| d.rejected.as_ref()) {
            Some(r) if r.version == self.version => {
                self.rejected += 1;
                if self.first_seq.is_none_or(|seq| r.seq < seq) {
                    self.first_seq = Some(r.seq);
                    self.first_rejection = Some(FirstRejection {
                        node: client.node.clone(),
                        message: r.message.clone(),
                    });
                }
            }
            _ => self.pending += 1,
        }
    }

    /// The sentence a condition gains while the current version is rejected.
    pub fn summary(&self) -> Option<String> {
        let first = self
            .first_rejection
            .as_ref()
            .filter(|_| self.rejected > 0)?;
        Some(format!(
            "{} of {} subscribers rejected version {}: {}",
            self.rejected, self.subscribers, self.version, first.message
        ))
    }
}

/// The delivery of every served resource (`versions`: name -> current version).
pub fn report<'a>(
    clients: &[ClientInfo],
    versions: impl IntoIterator<Item = (&'a Arc<str>, &'a Arc<str>)>,
) -> BTreeMap<Arc<str>, Delivery> {
    let mut out: BTreeMap<Arc<str>, Delivery> = versions
        .into_iter()
        .map(|(name, version)| (name.clone(), Delivery::new(version)))
        .collect();
    for client in clients {
        if client.wildcard {
            for (name, delivery) in out.iter_mut() {
                delivery.count(client, name);
            }
        } else {
            for name in &client.names {
                if let Some(delivery) = out.get_mut(name.as_str()) {
                    delivery.count(client, name);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sds::clients::{Delivered, Rejected};

    fn client(
        node: &str,
        name: &str,
        held: Option<&str>,
        rejected: Option<(&str, u64)>,
    ) -> ClientInfo {
        let mut info = ClientInfo {
            node: node.into(),
            names: vec![name.into()],
            ..ClientInfo::default()
        };
        info.delivery.insert(
            name.into(),
            Delivered {
                held: held.map(Arc::from),
                rejected: rejected.map(|(v, seq)| Rejected {
                    version: v.into(),
                    message: format!("{node} cannot parse {v}"),
                    seq,
                }),
            },
        );
        info
    }

    #[test]
    fn counts_held_rejected_and_pending_subscribers_of_the_current_version() {
        let (name, v2): (Arc<str>, Arc<str>) = ("ns/a".into(), "v2".into());
        let clients = [
            client("envoy-1", "ns/a", Some("v2"), None),
            client("broker-late", "ns/a", Some("v2"), Some(("v2", 9))),
            client("broker-1", "ns/a", Some("v1"), Some(("v2", 7))),
            client("broker-2", "ns/a", Some("v1"), Some(("v2", 3))),
            client("old-nack", "ns/a", Some("v1"), Some(("v1", 1))),
            client("other", "ns/b", Some("v2"), None),
        ];
        let report = report(&clients, [(&name, &v2)]);
        let d = &report["ns/a"];
        assert_eq!(
            (d.subscribers, d.acked, d.rejected, d.pending),
            (5, 2, 2, 1),
            "a held version wins over a NACK of it; a NACK of an old version is pending"
        );
        assert_eq!(
            d.first_rejection,
            Some(FirstRejection {
                node: "broker-2".into(),
                message: "broker-2 cannot parse v2".into()
            })
        );
        assert_eq!(
            d.summary().as_deref(),
            Some("2 of 5 subscribers rejected version v2: broker-2 cannot parse v2")
        );
    }

    #[test]
    fn no_rejection_no_summary_and_wildcards_count_everywhere() {
        let (a, b, v): (Arc<str>, Arc<str>, Arc<str>) = ("ns/a".into(), "ns/b".into(), "v".into());
        let mut wildcard = ClientInfo {
            wildcard: true,
            ..ClientInfo::default()
        };
        wildcard.delivery.insert(
            a.clone(),
            Delivered {
                held: Some(v.clone()),
                rejected: None,
            },
        );
        let report = report(&[wildcard], [(&a, &v), (&b, &v)]);
        assert_eq!((report["ns/a"].acked, report["ns/b"].pending), (1, 1));
        assert_eq!(report["ns/a"].summary(), None);
    }
}
