//! Cluster queries (asked of every peer, answered by each) and address books (unicast
//! transports: where each member was heard from).

use super::*;
use crate::message::Msg;

impl Endpoint {
    /// Sends a cluster query; answers arrive as [`Event::Reply`] with the returned id.
    pub fn query(&mut self, now: Instant, query: Query) -> u64 {
        self.advance_wall(now);
        let id = self.next_query;
        self.next_query += 1;
        self.send_msg(&Msg::Query { id, query });
        id
    }

    /// A peer's query: answered to it alone, if its answer budget pays.
    pub(super) fn on_query(
        &mut self,
        now: Instant,
        from: NodeId,
        id: u64,
        query: &Query,
        app: &mut dyn AppState,
    ) {
        let body = app.answer(query);
        let reply = Msg::Reply { to: from, id, body }.encode();
        if self.pay(now, from, self.wire_size(reply.len())) {
            self.queue(reply.into(), None, Destination::Node(from));
        }
    }

    /// Sends this node's address book to the cluster (unicast transports): where each member
    /// was heard from. Truncated to [`crate::message::MAX_ADDRESSES`] pairs. The core
    /// does not interpret addresses; peers' books arrive as [`Event::Addresses`].
    pub fn announce_addresses(&mut self, now: Instant, mut addrs: Vec<(NodeId, SocketAddr)>) {
        if self.left {
            return;
        }
        self.advance_wall(now);
        addrs.truncate(crate::message::MAX_ADDRESSES);
        self.send_msg(&Msg::Addresses { addrs });
    }

    /// A peer's address book, handed to the transport as [`Event::Addresses`].
    pub(super) fn on_addresses(&mut self, from: NodeId, mut addrs: Vec<(NodeId, SocketAddr)>) {
        addrs.truncate(crate::message::MAX_ADDRESSES);
        self.events.push_back(Event::Addresses { from, addrs });
    }
}

#[cfg(test)]
// Tests start their explicit time from the real clock (proto/clippy.toml forbids it elsewhere).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn a_query_is_answered_by_the_peer_to_the_asker_alone() {
        let t0 = Instant::now();
        let (mut a, mut b, mut app_a, mut app_b) = joined_pair(t0);
        let id = a.query(t0, Query::Metrics { cache: None });
        let id2 = a.query(t0, Query::Metrics { cache: None });
        assert_ne!(id, id2);
        deliver(&mut a, &mut b, &mut app_b, t0);
        let mut buf = Vec::new();
        let mut replies = 0;
        while let Some(t) = b.poll_transmit(t0, &mut buf) {
            assert_eq!(t.destination, Destination::Node(a.id()));
            a.handle_datagram(t0, &buf, &mut app_a);
            replies += 1;
        }
        assert_eq!(replies, 2);
        let got: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
        assert!(got.contains(&Event::Reply {
            id,
            from: b.id(),
            body: app_b.answer(&Query::Metrics { cache: None }),
        }));
    }

    #[test]
    fn address_books_are_truncated_and_passed_on() {
        let t0 = Instant::now();
        let (mut a, mut b, _, mut app_b) = joined_pair(t0);
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let book: Vec<(NodeId, SocketAddr)> = (0..1000).map(|i| (NodeId(i + 10), addr)).collect();
        a.announce_addresses(t0, book);
        deliver(&mut a, &mut b, &mut app_b, t0);
        match b.poll_event() {
            Some(Event::Addresses { from, addrs }) => {
                assert_eq!(from, a.id());
                assert_eq!(addrs.len(), crate::message::MAX_ADDRESSES);
            }
            other => panic!("expected an address book, got {other:?}"),
        }
    }
}
