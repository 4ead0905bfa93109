//! Which ready steps start now: highest priority first, then submission order (the
//! workflow's, then the step's place in it), under a global cap on running steps and a cap
//! per agent role.

use std::collections::HashMap;

/// Concurrency caps from `[scheduler]`.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_running: usize,
    pub max_running_per_role: usize,
}

/// A ready step that may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Submission order of its workflow.
    pub workflow_sequence: u64,
    /// Its place in the workflow's steps.
    pub position: usize,
    pub priority: i32,
    pub role: i32,
}

/// The candidates to start, in start order, given what runs already.
pub fn pick_steps(
    mut candidates: Vec<Candidate>,
    running_total: usize,
    running_per_role: &HashMap<i32, usize>,
    caps: Caps,
) -> Vec<Candidate> {
    candidates.sort_by_key(|candidate| {
        (
            std::cmp::Reverse(candidate.priority),
            candidate.workflow_sequence,
            candidate.position,
        )
    });
    let mut per_role = running_per_role.clone();
    let mut total = running_total;
    let mut chosen = Vec::new();
    for candidate in candidates {
        if total >= caps.max_running {
            break;
        }
        let role_running = per_role.entry(candidate.role).or_insert(0);
        if *role_running >= caps.max_running_per_role {
            continue;
        }
        *role_running += 1;
        total += 1;
        chosen.push(candidate);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(workflow_sequence: u64, position: usize, priority: i32, role: i32) -> Candidate {
        Candidate {
            workflow_sequence,
            position,
            priority,
            role,
        }
    }

    #[test]
    fn priority_then_submission_order_under_both_caps() {
        let caps = Caps {
            max_running: 3,
            max_running_per_role: 2,
        };
        let candidates = vec![
            candidate(2, 0, 0, 1),
            candidate(1, 1, 0, 1),
            candidate(1, 0, 5, 1),
            candidate(1, 2, 5, 1),
            candidate(3, 0, 0, 2),
        ];
        let chosen = pick_steps(candidates, 0, &HashMap::new(), caps);
        let order: Vec<(u64, usize)> = chosen
            .iter()
            .map(|picked| (picked.workflow_sequence, picked.position))
            .collect();
        // Role 1 is capped at 2: the two priority-5 steps; then role 2's step.
        assert_eq!(order, [(1, 0), (1, 2), (3, 0)]);
        let busy = HashMap::from([(2, 1)]);
        let chosen = pick_steps(vec![candidate(1, 0, 0, 1)], 3, &busy, caps);
        assert!(chosen.is_empty(), "global cap reached");
    }
}
