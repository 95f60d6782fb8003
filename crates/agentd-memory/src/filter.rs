//! Filters shared by listing and by every kind of search.
//!
//! A [`Filter`] is a conjunction: an item passes when it satisfies every constraint that is set.
//! Empty lists mean "any". The store evaluates filters against an in-memory catalog, so the same
//! filter costs the same whether it narrows a listing, a BM25 search or a vector search.

use serde::{Deserialize, Serialize};

use crate::item::{Kind, MemoryItem};

/// Which items a listing or search may return.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// Namespaces to read (empty: all namespaces).
    pub namespaces: Vec<String>,
    /// Kinds to return (empty: any kind).
    pub kinds: Vec<Kind>,
    /// Stages to return (empty: any stage, including none).
    pub stages: Vec<String>,
    /// Inclusive range of producer rounds.
    pub rounds: Option<(u32, u32)>,
    /// Producing roles (empty: any).
    pub producer_roles: Vec<String>,
    /// Producing nodes (empty: any).
    pub producer_nodes: Vec<String>,
    /// Only items this role may read.
    pub reader: Option<String>,
    /// Only items carrying every one of these tags.
    pub tags: Vec<String>,
    /// Also return items superseded by a newer version of their key.
    pub include_superseded: bool,
    /// Only items written at or before this sequence number: the memory as it was then (used to
    /// replay a routing decision). Supersession is still judged against the present.
    pub max_seq: Option<u64>,
}

impl Filter {
    /// A filter over one namespace.
    pub fn namespace(ns: impl Into<String>) -> Self {
        Filter {
            namespaces: vec![ns.into()],
            ..Filter::default()
        }
    }

    /// Adds a namespace.
    pub fn and_namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespaces.push(ns.into());
        self
    }

    /// Restricts to these kinds.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = Kind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// Restricts to these stages.
    pub fn stages<S: Into<String>>(mut self, stages: impl IntoIterator<Item = S>) -> Self {
        self.stages = stages.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts to rounds `from..=to`.
    pub fn rounds(mut self, from: u32, to: u32) -> Self {
        self.rounds = Some((from, to));
        self
    }

    /// Restricts to items produced by these roles.
    pub fn producer_roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> Self {
        self.producer_roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts to items produced by these nodes.
    pub fn producer_nodes<S: Into<String>>(mut self, nodes: impl IntoIterator<Item = S>) -> Self {
        self.producer_nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts to items `role` may read.
    pub fn reader(mut self, role: impl Into<String>) -> Self {
        self.reader = Some(role.into());
        self
    }

    /// Requires a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Includes superseded versions.
    pub fn include_superseded(mut self, yes: bool) -> Self {
        self.include_superseded = yes;
        self
    }

    /// Only items with `seq <= max_seq`.
    pub fn as_of(mut self, max_seq: u64) -> Self {
        self.max_seq = Some(max_seq);
        self
    }

    /// Whether a stored item passes this filter. This is the reference semantics; the store's
    /// catalog evaluates the same conditions on interned fields.
    pub fn matches(&self, item: &MemoryItem) -> bool {
        (self.namespaces.is_empty() || self.namespaces.contains(&item.namespace))
            && (self.kinds.is_empty() || self.kinds.contains(&item.kind))
            && (self.stages.is_empty()
                || item.stage.as_ref().is_some_and(|s| self.stages.contains(s)))
            && self
                .rounds
                .is_none_or(|(a, b)| (a..=b).contains(&item.producer.round))
            && (self.producer_roles.is_empty() || self.producer_roles.contains(&item.producer.role))
            && (self.producer_nodes.is_empty() || self.producer_nodes.contains(&item.producer.node))
            && self.reader.as_ref().is_none_or(|r| item.readers.allows(r))
            && self.tags.iter().all(|t| item.tags.contains(t))
            && (self.include_superseded || !item.superseded)
            && self.max_seq.is_none_or(|m| item.seq <= m)
    }
}
