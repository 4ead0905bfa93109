//! Which partitions move when the shard count changes: as few as keep every shard within
//! one partition of the others. Shrinking empties the highest shards (so Kubernetes removes
//! whole StatefulSets from the end); growing fills the new ones from the fullest.

use super::{Move, Phase, Placement};

/// The moves that take `placement`'s owners to `shards` balanced shards, fewest first
/// decided: a shard keeps what its quota allows, the rest goes to shards under theirs.
pub fn plan_moves(placement: &Placement, shards: u32) -> Vec<Move> {
    let partitions = placement.owners.len() as u32;
    let shards = shards.clamp(1, partitions.max(1));
    let mut owned: Vec<Vec<u32>> = vec![Vec::new(); shards as usize];
    let mut surplus: Vec<(u32, u32)> = Vec::new();
    for (partition, owner) in placement.owners.iter().enumerate() {
        match owned.get_mut(*owner as usize) {
            Some(list) => list.push(partition as u32),
            None => surplus.push((partition as u32, *owner)),
        }
    }
    // Quotas: ⌊P/M⌋ each, one more for the `P mod M` shards holding most already.
    let base = partitions / shards;
    let extra = partitions % shards;
    let mut by_size: Vec<u32> = (0..shards).collect();
    by_size.sort_by_key(|shard| (std::cmp::Reverse(owned[*shard as usize].len()), *shard));
    let mut quota = vec![base; shards as usize];
    for shard in by_size.into_iter().take(extra as usize) {
        quota[shard as usize] += 1;
    }
    for shard in 0..shards {
        let list = &mut owned[shard as usize];
        while list.len() as u32 > quota[shard as usize] {
            if let Some(partition) = list.pop() {
                surplus.push((partition, shard));
            }
        }
    }
    surplus.sort();
    let mut moves = Vec::new();
    let mut surplus = surplus.into_iter();
    for shard in 0..shards {
        while (owned[shard as usize].len() as u32) < quota[shard as usize] {
            let Some((partition, from)) = surplus.next() else {
                break;
            };
            owned[shard as usize].push(partition);
            moves.push(Move {
                partition,
                from,
                to: shard,
                phase: Phase::Planned,
            });
        }
    }
    moves
}
