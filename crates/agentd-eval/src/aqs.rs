//! AQS, the Answer Quality Score of the end-to-end evaluation (defined in `docs/eval.md`).
//!
//! Three components in `[0, 1]`, measured for every question, and an optional fourth:
//!
//! - **correctness**: token F1 of the answer against the gold answer ([`crate::qa::f1`]);
//! - **grounding**: of the gold-labelled documents the answer cites (directly or through the
//!   evidence items it cites), the share that are gold: precision of the citations (0 when the
//!   answer cites no document);
//! - **completeness**: the share of the gold documents the answer cites: recall of the
//!   citations (1 when the question has no gold documents);
//! - **judge** (optional): a 0..1 score an LLM judge gives with [`judge_messages`]'s rubric.
//!
//! AQS is their weighted mean with [`AqsWeights`] (defaults 0.5 / 0.25 / 0.25, and 0.25 for
//! the judge when there is one: weights are renormalised over the components present). A
//! question without an answer scores 0 on every component except completeness of a question
//! without gold documents.

use std::collections::BTreeSet;

use agentd_llm::Message;
use serde::{Deserialize, Serialize};

/// The weights of AQS's components (renormalised over the components present).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AqsWeights {
    /// Weight of correctness (F1).
    pub correctness: f64,
    /// Weight of grounding (citation precision).
    pub grounding: f64,
    /// Weight of completeness (citation recall).
    pub completeness: f64,
    /// Weight of the LLM judge's score, when there is one.
    pub judge: f64,
}

impl Default for AqsWeights {
    fn default() -> Self {
        AqsWeights {
            correctness: 0.5,
            grounding: 0.25,
            completeness: 0.25,
            judge: 0.25,
        }
    }
}

/// One answer's AQS and its components.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AqsScore {
    /// F1 of the answer.
    pub correctness: f64,
    /// Share of the cited documents that are gold.
    pub grounding: f64,
    /// Share of the gold documents that are cited.
    pub completeness: f64,
    /// The judge's score (`None`: no judge, or its reply had no usable score).
    pub judge: Option<f64>,
    /// The weighted mean.
    pub aqs: f64,
}

impl AqsWeights {
    /// Scores one answer: `f1` its correctness, `cited` and `gold` the documents (any ids,
    /// duplicates ignored) it cites and that support the gold answer, `judge` the judge's
    /// score if any.
    pub fn score<T: Ord>(
        &self,
        f1: f64,
        cited: impl IntoIterator<Item = T>,
        gold: impl IntoIterator<Item = T>,
        judge: Option<f64>,
    ) -> AqsScore {
        let cited: BTreeSet<T> = cited.into_iter().collect();
        let gold: BTreeSet<T> = gold.into_iter().collect();
        let hits = cited.intersection(&gold).count();
        let grounding = if cited.is_empty() {
            0.0
        } else {
            hits as f64 / cited.len() as f64
        };
        let completeness = if gold.is_empty() {
            1.0
        } else {
            hits as f64 / gold.len() as f64
        };
        let correctness = clamp01(f1);
        let judge = judge.map(clamp01);
        let mut num = self.correctness * correctness
            + self.grounding * grounding
            + self.completeness * completeness;
        let mut den = self.correctness + self.grounding + self.completeness;
        if let Some(j) = judge {
            num += self.judge * j;
            den += self.judge;
        }
        let aqs = if den > 0.0 { clamp01(num / den) } else { 0.0 };
        AqsScore {
            correctness,
            grounding,
            completeness,
            judge,
            aqs,
        }
    }

    /// Checks that the weights are finite, non-negative and not all zero.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            self.correctness,
            self.grounding,
            self.completeness,
            self.judge,
        ];
        if all.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(format!("AQS weights must be finite and >= 0: {self:?}"));
        }
        if self.correctness + self.grounding + self.completeness <= 0.0 {
            return Err("AQS weights of correctness, grounding and completeness are all 0".into());
        }
        Ok(())
    }
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// The judge's rubric: the question, the gold answer and the answer to grade; the judge is
/// asked for one number between 0 and 1.
pub fn judge_messages(question: &str, gold: &str, answer: &str) -> Vec<Message> {
    vec![
        Message::system(
            "You grade answers to questions. Compare the answer with the reference answer. \
             Score 1 if it means the same as the reference, 0.5 if it is partly right or \
             right but imprecise, 0 if it is wrong, empty or off-topic. Reply with the score \
             only: a number between 0 and 1.",
        ),
        Message::user(format!(
            "Question: {question}\nReference answer: {gold}\nAnswer to grade: {answer}\n\nScore:"
        )),
    ]
}

/// Reads a score in `[0, 1]` from a judge's reply, tolerating what small models write:
/// `0.5`, `{"score": 0.5}`, `Score: 1`, `8/10`, `80%`, `7 out of 10`. Anything else (no
/// number, a number out of range, prose only) is `None`.
pub fn parse_judge_score(reply: &str) -> Option<f64> {
    let text = reply.trim();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let n = v
            .get("score")
            .and_then(serde_json::Value::as_f64)
            .or_else(|| v.as_f64());
        // A JSON reply without a score (other fields' numbers are not scores) is garbage.
        return n.filter(|n| (0.0..=1.0).contains(n));
    }
    let (value, rest) = first_number(text)?;
    let rest = rest.trim_start();
    let scaled = if let Some(after) = rest.strip_prefix('/') {
        let (den, _) = first_number(after)?;
        (den > 0.0).then(|| value / den)?
    } else if let Some(after) = rest.strip_prefix("out of") {
        let (den, _) = first_number(after)?;
        (den > 0.0).then(|| value / den)?
    } else if rest.starts_with('%') {
        value / 100.0
    } else {
        value
    };
    (scaled.is_finite() && (0.0..=1.0).contains(&scaled)).then_some(scaled)
}

/// The first decimal number in `s` and the text after it (`None` if it is negative).
fn first_number(s: &str) -> Option<(f64, &str)> {
    let bytes = s.as_bytes();
    let start = bytes.iter().enumerate().position(|(i, b)| {
        b.is_ascii_digit() || (*b == b'.' && bytes.get(i + 1).is_some_and(|c| c.is_ascii_digit()))
    })?;
    if start > 0 && bytes[start - 1] == b'-' {
        // A negative number is never a score.
        return None;
    }
    let mut end = start;
    let mut dot = false;
    while end < bytes.len() {
        match bytes[end] {
            b'0'..=b'9' => end += 1,
            b'.' if !dot && bytes.get(end + 1).is_some_and(|c| c.is_ascii_digit()) => {
                dot = true;
                end += 1;
            }
            _ => break,
        }
    }
    s[start..end].parse().ok().map(|n| (n, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_and_weighted_mean() {
        let w = AqsWeights::default();
        // Perfect answer citing exactly the two gold documents.
        let s = w.score(1.0, [3, 7], [3, 7], None);
        assert_eq!((s.grounding, s.completeness, s.aqs), (1.0, 1.0, 1.0));
        // Half right, cites one gold and one distractor.
        let s = w.score(0.5, [3, 9], [3, 7], None);
        assert_eq!((s.grounding, s.completeness), (0.5, 0.5));
        assert!((s.aqs - 0.5).abs() < 1e-12);
        // Duplicates are ignored.
        let s = w.score(0.0, [3, 3, 3], [3, 7], None);
        assert_eq!((s.grounding, s.completeness), (1.0, 0.5));
        assert!((s.aqs - (0.25 + 0.125)).abs() < 1e-12);
        // No citations: no grounding, no completeness.
        let s = w.score(1.0, Vec::<u32>::new(), vec![1, 2], None);
        assert_eq!((s.grounding, s.completeness, s.aqs), (0.0, 0.0, 0.5));
        // No gold documents: nothing to miss.
        let s = w.score(0.0, Vec::<u32>::new(), Vec::new(), None);
        assert_eq!(s.completeness, 1.0);
    }

    #[test]
    fn the_judge_joins_with_its_weight() {
        let w = AqsWeights::default();
        let s = w.score(1.0, [1], [1], Some(0.0));
        // (0.5 + 0.25 + 0.25 + 0) / 1.25
        assert!((s.aqs - 0.8).abs() < 1e-12);
        let s = w.score(0.0, [2], [1], Some(1.0));
        assert!((s.aqs - 0.2).abs() < 1e-12);
        // Out-of-range inputs are clamped, NaN is 0.
        let s = w.score(f64::NAN, [1], [1], Some(7.0));
        assert_eq!((s.correctness, s.judge), (0.0, Some(1.0)));
    }

    #[test]
    fn weights_are_checked() {
        assert!(AqsWeights::default().validate().is_ok());
        let bad = AqsWeights {
            grounding: -1.0,
            ..AqsWeights::default()
        };
        assert!(bad.validate().is_err());
        let zero = AqsWeights {
            correctness: 0.0,
            grounding: 0.0,
            completeness: 0.0,
            judge: 1.0,
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn judge_replies_are_read_tolerantly() {
        assert_eq!(parse_judge_score("1"), Some(1.0));
        assert_eq!(parse_judge_score(" 0.5\n"), Some(0.5));
        assert_eq!(parse_judge_score(".75"), Some(0.75));
        assert_eq!(parse_judge_score("{\"score\": 0.25}"), Some(0.25));
        assert_eq!(parse_judge_score("Score: 1.0 (correct)"), Some(1.0));
        assert_eq!(parse_judge_score("8/10"), Some(0.8));
        assert_eq!(parse_judge_score("I'd say 7 out of 10."), Some(0.7));
        assert_eq!(parse_judge_score("80%"), Some(0.8));
        // Garbage: no number, out of range, broken fractions, JSON without a score.
        for garbage in [
            "",
            "correct",
            "The answer is wrong.",
            "5",
            "-1",
            "3/0",
            "12/10",
            "{\"verdict\": \"yes\"}",
            "{\"items\": [{\"confidence\": 0.5}]}",
            "\u{0}\u{ffff}",
        ] {
            assert_eq!(parse_judge_score(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn the_rubric_names_question_reference_and_answer() {
        let m = judge_messages("Q?", "Gold", "Pred");
        assert_eq!(m.len(), 2);
        assert!(m[1].content.contains("Q?") && m[1].content.contains("Gold"));
        assert!(m[1].content.contains("Pred"));
    }
}
