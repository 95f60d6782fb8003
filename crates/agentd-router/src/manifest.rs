//! Manifests: the record of a routing decision. Every candidate the router considered appears
//! with its score components, its token cost, how it was found, and whether it was selected or
//! rejected and why. A manifest is what makes a pack explainable and replayable.

use agentd_memory::{ItemId, Kind};
use serde::{Deserialize, Serialize};

/// The score of a candidate, component by component (each component in `[0, 1]` before
/// weighting; `total` is the weighted sum, `redundancy` the similarity to the most similar item
/// selected before it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreBreakdown {
    /// Role relevance.
    pub role: f32,
    /// Stage priority of the kind.
    pub stage: f32,
    /// Query relevance.
    pub query: f32,
    /// Recency.
    pub recency: f32,
    /// Importance (confidence).
    pub importance: f32,
    /// Bridge relevance through links.
    pub bridge: f32,
    /// Highest similarity to an item selected before this one.
    pub redundancy: f32,
    /// Weighted sum of the components, before the redundancy penalty.
    pub total: f32,
    /// `total` minus the redundancy penalty at the time the item was judged.
    pub marginal: f32,
}

/// Why a candidate was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The item's readers exclude the role (a hard rule no policy can override).
    NotReadable,
    /// The role does not read items of this kind.
    KindNotRead,
    /// A newer version of the item's key exists.
    Superseded,
    /// Larger than the whole budget and not allowed to be cut.
    Oversized,
    /// Nearly identical to an item already selected.
    Redundant,
    /// Scored below the policy's threshold.
    LowScore,
    /// Did not fit in what was left of the budget.
    Budget,
}

/// What happened to a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// In the pack; `rank` is the order of selection (0 first).
    Selected {
        /// Order of selection.
        rank: u32,
        /// Whether the content was cut at a sentence boundary to fit.
        truncated: bool,
    },
    /// Left out.
    Rejected {
        /// Why.
        reason: Reason,
    },
}

impl Decision {
    /// Whether the candidate was selected.
    pub fn is_selected(&self) -> bool {
        matches!(self, Decision::Selected { .. })
    }
}

/// How a candidate was found (several sources may apply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sources(pub u8);

impl Sources {
    /// A hit of the query search.
    pub const QUERY: Sources = Sources(1);
    /// A hit of the role-profile search.
    pub const ROLE: Sources = Sources(2);
    /// Among the most recent items.
    pub const RECENT: Sources = Sources(4);
    /// Of a kind the stage prioritises.
    pub const STAGE: Sources = Sources(8);
    /// Reached through a link from a strong candidate.
    pub const LINK: Sources = Sources(16);
    /// Listed by a baseline policy (every item, or by recency).
    pub const LISTING: Sources = Sources(32);

    /// Adds sources.
    pub fn add(&mut self, other: Sources) {
        self.0 |= other.0;
    }

    /// Whether `other` is among the sources.
    pub fn has(self, other: Sources) -> bool {
        self.0 & other.0 != 0
    }

    /// Names of the sources, for display.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Sources::QUERY, "query"),
            (Sources::ROLE, "role"),
            (Sources::RECENT, "recent"),
            (Sources::STAGE, "stage"),
            (Sources::LINK, "link"),
            (Sources::LISTING, "listing"),
        ]
        .into_iter()
        .filter(|(s, _)| self.has(*s))
        .map(|(_, n)| n)
        .collect()
    }
}

/// One considered candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The item.
    pub id: ItemId,
    /// Its kind.
    pub kind: Kind,
    /// Tokens it costs in the prompt (content plus layout), after any cut.
    pub tokens: u32,
    /// How it was found.
    pub sources: Sources,
    /// Its score (all zero for items the role may not read: they are not scored).
    pub score: ScoreBreakdown,
    /// Selected or rejected, and why.
    #[serde(flatten)]
    pub decision: Decision,
}

/// The record of one routing decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Policy that routed.
    pub policy: String,
    /// Reading role.
    pub role: String,
    /// Stage.
    pub stage: String,
    /// Query text.
    pub query: String,
    /// Round.
    pub round: u32,
    /// Budget given.
    pub budget: u32,
    /// Tokens used by the pack.
    pub tokens_used: u32,
    /// Memory as of this sequence number (the store's newest at routing time).
    pub as_of_seq: Option<u64>,
    /// Every candidate, in the order the router considered them (write order); sort by
    /// `score.total` for a ranking.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Ids of the selected items, in selection order.
    pub fn selected(&self) -> Vec<ItemId> {
        let mut sel: Vec<(u32, ItemId)> = self
            .entries
            .iter()
            .filter_map(|e| match e.decision {
                Decision::Selected { rank, .. } => Some((rank, e.id)),
                Decision::Rejected { .. } => None,
            })
            .collect();
        sel.sort_unstable();
        sel.into_iter().map(|(_, id)| id).collect()
    }

    /// How many candidates were rejected for `reason`.
    pub fn rejected(&self, reason: Reason) -> usize {
        self.entries
            .iter()
            .filter(|e| e.decision == Decision::Rejected { reason })
            .count()
    }
}
