//! In-process discovery: a member set held in memory, for `quarry up` (every role in one
//! process) and for clusters wired by hand with addresses on the command line.

use tokio::sync::watch;

use super::{Discovery, Member, MemberSet};
use crate::error::KitError;

/// Members registered in this process, plus any given up front.
pub struct StaticDiscovery {
    shards: u32,
    members: watch::Sender<MemberSet>,
}

impl StaticDiscovery {
    pub fn new(shards: u32, initial: Vec<Member>) -> Self {
        let (members, _) = watch::channel(MemberSet::new(initial));
        Self { shards, members }
    }
}

#[async_trait::async_trait]
impl Discovery for StaticDiscovery {
    async fn register(&self, member: Member) -> Result<(), KitError> {
        self.members.send_modify(|set| {
            let mut members: Vec<Member> = set
                .all()
                .iter()
                .filter(|existing| existing.node_id != member.node_id)
                .cloned()
                .collect();
            members.push(member);
            *set = MemberSet::new(members);
        });
        Ok(())
    }

    async fn update(&self, member: Member) -> Result<(), KitError> {
        self.members.send_if_modified(|set| {
            let Some(position) = set
                .all()
                .iter()
                .position(|existing| existing.node_id == member.node_id)
            else {
                return false;
            };
            let mut members = set.all().to_vec();
            members[position] = member;
            *set = MemberSet::new(members);
            true
        });
        Ok(())
    }

    async fn deregister(&self, node_id: &str) -> Result<(), KitError> {
        self.members.send_modify(|set| {
            let members = set
                .all()
                .iter()
                .filter(|existing| existing.node_id != node_id)
                .cloned()
                .collect();
            *set = MemberSet::new(members);
        });
        Ok(())
    }

    fn watch(&self) -> watch::Receiver<MemberSet> {
        self.members.subscribe()
    }

    fn shard_count(&self) -> u32 {
        self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Role;

    fn retriever(node_id: &str, shard: u32, ready: bool) -> Member {
        Member {
            node_id: node_id.to_string(),
            role: Role::Retriever,
            address: format!("http://127.0.0.1:1{shard}"),
            shard,
            replica: 0,
            version: "test".to_string(),
            ready,
            recovering: false,
            internal_tls: Default::default(),
        }
    }

    #[tokio::test]
    async fn watchers_see_registrations_and_departures() {
        let discovery = StaticDiscovery::new(2, vec![retriever("a", 0, true)]);
        let mut watcher = discovery.watch();
        discovery.register(retriever("b", 1, true)).await.unwrap();
        watcher.changed().await.unwrap();
        assert_eq!(watcher.borrow_and_update().shard_replicas(1).count(), 1);
        discovery.deregister("a").await.unwrap();
        watcher.changed().await.unwrap();
        let set = watcher.borrow_and_update().clone();
        assert_eq!(set.shard_replicas(0).count(), 0);
        assert_eq!(set.all().len(), 1);
    }

    #[tokio::test]
    async fn re_registering_replaces_and_not_ready_members_are_not_served() {
        let discovery = StaticDiscovery::new(1, vec![retriever("a", 0, true)]);
        discovery.register(retriever("a", 0, false)).await.unwrap();
        let set = discovery.watch().borrow().clone();
        assert_eq!(set.all().len(), 1);
        assert_eq!(set.shard_replicas(0).count(), 0);
    }
}
