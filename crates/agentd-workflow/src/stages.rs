//! Built-in stages: the phases most workflows go through, with priorities over item kinds.
//!
//! | stage    | priorities (kinds not listed: 0.2)                                           |
//! |----------|-------------------------------------------------------------------------------|
//! | `plan`   | task 1.0, plan 0.6, critique 0.6                                              |
//! | `gather` | document 1.0, evidence 0.9, subquestion 0.8, task 0.8, plan 0.7               |
//! | `reason` | evidence 1.0, fact 0.9, hypothesis 0.8, task 0.8, document 0.7, subquestion 0.7 |
//! | `answer` | evidence 1.0, fact 1.0, task 1.0, hypothesis 0.9, document 0.7, answer 0.6   |
//! | `review` | answer 1.0, evidence 0.8, fact 0.8, task 0.8, critique 0.6                    |
//!
//! Every built-in stage has `default_priority` 0.2 and `budget_multiplier` 1.0. A workflow's
//! `[stages.<name>]` table overrides the fields it gives (a given `priorities` table replaces
//! the built-in one as a whole) and declares new stages.

use agentd_memory::Kind;
use agentd_router::StageProfile;

/// Names of the built-in stages.
pub const BUILTIN_STAGES: [&str; 5] = ["plan", "gather", "reason", "answer", "review"];

/// The built-in stage of that name.
pub fn builtin_stage(name: &str) -> Option<StageProfile> {
    use Kind::*;
    let priorities: &[(Kind, f32)] = match name {
        "plan" => &[(Task, 1.0), (Plan, 0.6), (Critique, 0.6)],
        "gather" => &[
            (Document, 1.0),
            (Evidence, 0.9),
            (Subquestion, 0.8),
            (Task, 0.8),
            (Plan, 0.7),
        ],
        "reason" => &[
            (Evidence, 1.0),
            (Fact, 0.9),
            (Hypothesis, 0.8),
            (Task, 0.8),
            (Document, 0.7),
            (Subquestion, 0.7),
        ],
        "answer" => &[
            (Evidence, 1.0),
            (Fact, 1.0),
            (Task, 1.0),
            (Hypothesis, 0.9),
            (Document, 0.7),
            (Answer, 0.6),
        ],
        "review" => &[
            (Answer, 1.0),
            (Evidence, 0.8),
            (Fact, 0.8),
            (Task, 0.8),
            (Critique, 0.6),
        ],
        _ => return None,
    };
    let mut stage = StageProfile::new(name);
    for (kind, p) in priorities {
        stage = stage.priority(kind.clone(), *p);
    }
    Some(stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_stage_exists_with_priorities_in_range() {
        for name in BUILTIN_STAGES {
            let s = builtin_stage(name).unwrap();
            assert_eq!(s.name, name);
            assert!(!s.priorities.is_empty());
            assert!(s.priorities.values().all(|p| (0.0..=1.0).contains(p)));
        }
        assert!(builtin_stage("gahter").is_none());
        assert_eq!(
            builtin_stage("answer").unwrap().priority_of(&Kind::Fact),
            1.0
        );
    }
}
