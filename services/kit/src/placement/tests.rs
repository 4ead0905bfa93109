use super::*;

fn placement(shards: u32) -> Placement {
    Placement::initial(Partitioning::new(shards, None).unwrap())
}

fn apply(placement: &Placement, moves: &[Move]) -> Placement {
    placement.next(|next| {
        for moving in moves {
            next.owners[moving.partition as usize] = moving.to;
        }
    })
}

fn counts(placement: &Placement, shards: u32) -> Vec<usize> {
    (0..shards)
        .map(|shard| placement.owned_by(shard).len())
        .collect()
}

#[test]
fn the_default_gives_at_least_sixteen_partitions_in_whole_blocks() {
    assert_eq!(Partitioning::new(2, None).unwrap().count(), 16);
    assert_eq!(Partitioning::new(3, None).unwrap().count(), 18);
    assert_eq!(Partitioning::new(40, None).unwrap().count(), 40);
    assert!(Partitioning::new(3, Some(20)).is_err());
    assert!(Partitioning::new(0, None).is_err());
}

#[test]
fn a_partition_lies_in_the_block_of_the_shard_that_held_the_id_before_partitions() {
    let partitioning = Partitioning::new(3, Some(24)).unwrap();
    let mut seen = vec![0u32; 24];
    for number in 0..6000 {
        let id = format!("doc-{number}");
        let partition = partitioning.partition_of(&id);
        let legacy_shard = jump_consistent_hash(xxh3_64(id.as_bytes()), 3);
        assert_eq!(partitioning.initial_owner(partition), legacy_shard);
        seen[partition as usize] += 1;
    }
    for count in seen {
        assert!((150..350).contains(&count), "{count}");
    }
}

#[test]
fn growing_and_shrinking_keeps_shards_balanced_with_the_fewest_moves() {
    let start = placement(2);
    let grow = plan_moves(&start, 3);
    // 16 over 3 shards: 6, 5, 5; each old shard gives up what is over its quota.
    assert_eq!(grow.len(), 5);
    assert!(grow.iter().all(|moving| moving.to == 2));
    let three = apply(&start, &grow);
    let mut sizes = counts(&three, 3);
    sizes.sort();
    assert_eq!(sizes, [5, 5, 6]);
    let five = apply(&three, &plan_moves(&three, 5));
    let mut sizes = counts(&five, 5);
    sizes.sort();
    assert_eq!(sizes, [3, 3, 3, 3, 4]);
    // Shrinking drains the highest shards only.
    let shrink = plan_moves(&five, 2);
    assert!(shrink
        .iter()
        .all(|moving| moving.from >= 2 && moving.to < 2));
    let two = apply(&five, &shrink);
    assert_eq!(counts(&two, 2), [8, 8]);
    assert!(plan_moves(&two, 2).is_empty());
}

#[test]
fn writers_and_readers_follow_the_phases_of_a_move() {
    let start = placement(2);
    let moving = Move {
        partition: 3,
        from: 0,
        to: 2,
        phase: Phase::Planned,
    };
    let planned = start.next(|next| next.moves.push(moving));
    assert_eq!(planned.writers(3), [0]);
    assert_eq!(planned.writers_since(3), 1);
    assert!(!planned.kept_at(2, 3));
    let importing = planned.next(|next| next.moves[0].phase = Phase::Importing);
    assert_eq!(importing.writers(3), [0, 2]);
    assert_eq!(importing.writers_since(3), importing.epoch);
    assert!(importing.kept_at(2, 3) && !importing.readable_at(2, 3));
    let cut_over = importing.next(|next| {
        next.owners[3] = 2;
        next.moves[0].phase = Phase::Dropping;
    });
    assert_eq!(cut_over.writers(3), [2]);
    assert!(cut_over.readable_at(2, 3) && cut_over.readable_at(0, 3));
    assert_eq!(cut_over.writers_since(3), cut_over.epoch);
    let done = cut_over.next(|next| next.moves.clear());
    assert!(!done.kept_at(0, 3) && done.readable_at(2, 3));
    assert_eq!(done.writers_since(3), cut_over.epoch);
    assert_eq!(done.serving_shards(), [0, 1, 2]);
}
