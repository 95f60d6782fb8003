//! Answer metrics: exact match and token F1 with the standard SQuAD normalisation.
//!
//! The normalisation is the one of the official SQuAD v1.1 (and HotpotQA) evaluation scripts:
//! lowercase, remove ASCII punctuation, remove the articles `a`, `an` and `the` (whole words),
//! collapse whitespace. F1 is over the multiset of normalised tokens. Nothing else is done (no
//! stemming, no number words, no HotpotQA yes/no special case), so the figures compare with
//! published ones.
//!
//! ```
//! use agentd_eval::qa::{exact_match, f1, normalize_answer};
//! assert_eq!(normalize_answer("The  Eiffel-Tower!"), "eiffeltower");
//! assert!(exact_match("the Seine", "Seine"));
//! assert!((f1("river Seine", "the Seine") - 2.0 / 3.0).abs() < 1e-12);
//! ```

use std::collections::HashMap;

/// Normalises an answer: lowercase, strip ASCII punctuation, drop the articles a/an/the,
/// collapse whitespace (SQuAD's `normalize_answer`).
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the normalised prediction equals the normalised gold answer.
pub fn exact_match(prediction: &str, gold: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(gold)
}

/// Token F1 between the normalised prediction and gold answer, in `[0, 1]`. Two empty answers
/// score 1; one empty answer scores 0.
pub fn f1(prediction: &str, gold: &str) -> f64 {
    let pred = normalize_answer(prediction);
    let gold = normalize_answer(gold);
    let pred: Vec<&str> = pred.split_whitespace().collect();
    let gold: Vec<&str> = gold.split_whitespace().collect();
    if pred.is_empty() || gold.is_empty() {
        return if pred.is_empty() && gold.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &gold {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &pred {
        if let Some(n) = counts.get_mut(t)
            && *n > 0
        {
            *n -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_squad() {
        assert_eq!(normalize_answer("  The Beatles. "), "beatles");
        assert_eq!(normalize_answer("A tale of an apple"), "tale of apple");
        // Articles are whole words only.
        assert_eq!(normalize_answer("Theatre and anthem"), "theatre and anthem");
        // Punctuation is removed, not replaced by a space (as in SQuAD).
        assert_eq!(normalize_answer("U.S.A."), "usa");
        assert_eq!(normalize_answer("rock'n'roll,\tjazz"), "rocknroll jazz");
        // Non-ASCII letters stay; case folds.
        assert_eq!(normalize_answer("Ångström"), "ångström");
        assert_eq!(normalize_answer(""), "");
        assert_eq!(normalize_answer("the a an"), "");
    }

    #[test]
    fn exact_match_is_on_normalised_text() {
        assert!(exact_match("The Seine.", "seine"));
        assert!(exact_match("1,988", "1988"));
        assert!(!exact_match("Seine river", "Seine"));
        assert!(exact_match("", "the"));
    }

    #[test]
    fn f1_counts_shared_tokens_with_multiplicity() {
        assert_eq!(f1("Seine", "the Seine"), 1.0);
        assert_eq!(f1("Loire", "Seine"), 0.0);
        // pred 3 tokens, gold 2, 2 shared: p = 2/3, r = 1 → 0.8
        assert!((f1("river seine paris", "seine river") - 0.8).abs() < 1e-12);
        // Repeated tokens count once per occurrence in gold.
        assert!((f1("new new new", "new york") - 0.4).abs() < 1e-12);
        assert_eq!(f1("", ""), 1.0);
        assert_eq!(f1("", "Seine"), 0.0);
        assert_eq!(f1("the", "Seine"), 0.0);
    }
}
