//! Property tests of packing: the budget is never exceeded, readers are never violated, the
//! result is deterministic, a larger budget never lowers the total score, and `full` selects a
//! superset of `rcr`.

use agentd_memory::tokens::ApproxTokenCounter;
use agentd_memory::vector::QuantizedVector;
use agentd_memory::{ItemId, Kind, MemoryItem, Producer, Readers, Timestamp};
use agentd_router::{
    Candidate, ContextPack, Policy, RoleProfile, ScoringContext, Sources, StageProfile, Weights,
    pack,
};
use proptest::prelude::*;

const KINDS: [Kind; 5] = [
    Kind::Fact,
    Kind::Evidence,
    Kind::Document,
    Kind::Plan,
    Kind::Answer,
];
const ROLES: [&str; 3] = ["answerer", "critic", "planner"];

#[derive(Clone, Debug)]
struct Spec {
    kind: usize,
    words: usize,
    round: u32,
    confidence: f32,
    readers: Option<Vec<usize>>,
    superseded: bool,
    bm25: Option<f32>,
    vector: [f32; 4],
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    (
        0..KINDS.len(),
        1usize..120,
        0u32..4,
        0.0f32..=1.0,
        proptest::option::weighted(0.3, proptest::collection::vec(0..ROLES.len(), 0..3)),
        proptest::bool::weighted(0.1),
        proptest::option::of(0.0f32..10.0),
        proptest::array::uniform4(-1.0f32..1.0),
    )
        .prop_map(
            |(kind, words, round, confidence, readers, superseded, bm25, vector)| Spec {
                kind,
                words,
                round,
                confidence,
                readers,
                superseded,
                bm25,
                vector,
            },
        )
}

fn candidates(specs: &[Spec]) -> Vec<Candidate> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let content = (0..s.words)
                .map(|w| format!("w{}", (w * 7 + i) % 13))
                .collect::<Vec<_>>()
                .join(" ")
                + ".";
            let norm = s.vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            Candidate {
                item: MemoryItem {
                    id: ItemId::from_bytes([i as u8 + 1; 16]),
                    seq: i as u64 + 1,
                    namespace: "ns".into(),
                    kind: KINDS[s.kind].clone(),
                    tokens: agentd_memory::TokenCounter::count(&ApproxTokenCounter, &content),
                    content,
                    payload: None,
                    producer: Producer::new(ROLES[i % 3], "n", s.round),
                    stage: None,
                    tags: vec![],
                    key: None,
                    version: 1,
                    confidence: s.confidence,
                    created_at: Timestamp(0),
                    readers: match &s.readers {
                        None => Readers::All,
                        Some(r) => Readers::roles(r.iter().map(|i| ROLES[*i])),
                    },
                    superseded: s.superseded,
                },
                vector: Some(QuantizedVector::quantize(
                    &s.vector.iter().map(|x| x / norm).collect::<Vec<f32>>(),
                )),
                bm25: s.bm25,
                sources: Sources::QUERY,
            }
        })
        .collect()
}

fn route(specs: &[Spec], policy: Policy, budget: u32, weights: &Weights) -> ContextPack {
    let role = RoleProfile::new("answerer");
    let stage = StageProfile::new("answer").priority(Kind::Evidence, 0.9);
    let q = [0.5f32, 0.5, 0.5, 0.5];
    let ctx = ScoringContext {
        role: &role,
        stage: &stage,
        weights,
        round: 3,
        query: "query",
        query_vector: Some(&q),
        role_vector: None,
        counter: &ApproxTokenCounter,
        policy,
        as_of_seq: None,
    };
    pack(&candidates(specs), &ctx, budget)
}

fn total_score(pack: &ContextPack) -> f32 {
    pack.manifest
        .entries
        .iter()
        .filter(|e| e.decision.is_selected())
        .map(|e| e.score.total)
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn budget_and_readers_hold_under_every_policy(
        specs in proptest::collection::vec(arb_spec(), 0..40),
        budget in 0u32..3000,
    ) {
        for policy in [Policy::Rcr, Policy::Full, Policy::Static { k: 5 }, Policy::Recency] {
            let pack = route(&specs, policy, budget, &Weights::default());
            prop_assert!(pack.tokens_used <= budget, "{:?}: {} > {}", policy, pack.tokens_used, budget);
            let rendered = agentd_memory::TokenCounter::count(&ApproxTokenCounter, &pack.render());
            prop_assert!(pack.items.is_empty() || rendered <= pack.tokens_used,
                "{:?}: rendered {} tokens, accounted {}", policy, rendered, pack.tokens_used);
            for p in &pack.items {
                prop_assert!(p.item.readers.allows("answerer"), "{:?} leaked an unreadable item", policy);
                prop_assert!(!p.item.superseded);
            }
            prop_assert_eq!(pack.manifest.entries.len(), specs.len());
        }
    }

    #[test]
    fn routing_is_deterministic(specs in proptest::collection::vec(arb_spec(), 0..40), budget in 0u32..3000) {
        let a = route(&specs, Policy::Rcr, budget, &Weights::default());
        let b = route(&specs, Policy::Rcr, budget, &Weights::default());
        prop_assert_eq!(a, b);
    }

    #[test]
    fn a_larger_budget_never_lowers_the_total_score(
        specs in proptest::collection::vec(arb_spec(), 0..40),
        budget in 0u32..2000,
        extra in 0u32..2000,
    ) {
        // Without the redundancy penalty the objective is additive, and both the greedy and the
        // exact packer are monotone in the budget.
        let weights = Weights { redundancy: 0.0, duplicate_similarity: 2.0, ..Weights::default() };
        let small = route(&specs, Policy::Rcr, budget, &weights);
        let large = route(&specs, Policy::Rcr, budget + extra, &weights);
        prop_assert!(total_score(&large) + 1e-4 >= total_score(&small),
            "{} < {}", total_score(&large), total_score(&small));
    }

    #[test]
    fn full_selects_a_superset_of_rcr(specs in proptest::collection::vec(arb_spec(), 0..40), budget in 0u32..3000) {
        let rcr = route(&specs, Policy::Rcr, budget, &Weights::default());
        // Full context is cut only at the model's context limit: give it room for everything.
        let full = route(&specs, Policy::Full, 1_000_000, &Weights::default());
        let full_ids = full.manifest.selected();
        for id in rcr.manifest.selected() {
            prop_assert!(full_ids.contains(&id));
        }
    }
}
