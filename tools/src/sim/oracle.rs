//! The oracle: how well *any* router could do on a trace.
//!
//! An earliest-arrival flood with unlimited buffers: every node that holds a message hands it
//! to every node it meets. Bandwidth is unlimited too except that one message occupies a hop
//! for `size / bytes_per_s`, and that hop must end inside the contact window. No router
//! delivers more, or sooner, so the simulator reports its own figures next to these.
//!
//! Per message this is Dijkstra over nodes with time as the distance: arrival times are
//! monotone along a contact (leaving later never arrives earlier, the FIFO property), which
//! is what makes the greedy choice correct.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::trace::{Message, Trace};

/// Where and when the flood delivers one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OracleArrival {
    /// When the destination first holds the message, if it does before the message expires.
    pub delivered_ms: Option<u64>,
    /// Contacts on that earliest path.
    pub hops: u32,
}

/// Contacts of each node, sorted by start, for the per-message searches.
#[derive(Debug)]
pub struct Oracle<'t> {
    trace: &'t Trace,
    by_node: Vec<Vec<usize>>,
}

impl<'t> Oracle<'t> {
    pub fn new(trace: &'t Trace) -> Self {
        let mut by_node = vec![Vec::new(); trace.nodes];
        // `trace.contacts` is sorted by start, so each list is too.
        for (i, c) in trace.contacts.iter().enumerate() {
            by_node[c.a].push(i);
            by_node[c.b].push(i);
        }
        Oracle { trace, by_node }
    }

    /// The earliest time each node can hold `message` (`None`: never before it expires).
    pub fn arrival_times(&self, message: &Message) -> Vec<Option<(u64, u32)>> {
        let n = self.trace.nodes;
        let mut best: Vec<Option<(u64, u32)>> = vec![None; n];
        let mut done = vec![false; n];
        let mut heap = BinaryHeap::new();
        let deadline = message.expires_ms();
        best[message.from] = Some((message.created_ms, 0));
        heap.push(Reverse((message.created_ms, 0u32, message.from)));
        while let Some(Reverse((t, hops, u))) = heap.pop() {
            if done[u] {
                continue;
            }
            done[u] = true;
            for &ci in &self.by_node[u] {
                let c = &self.trace.contacts[ci];
                if c.end_ms < t {
                    continue;
                }
                let v = if c.a == u { c.b } else { c.a };
                if done[v] {
                    continue;
                }
                let depart = t.max(c.start_ms);
                let arrive = depart.saturating_add(transfer_ms(message.size_bytes, c.bytes_per_s));
                if arrive > c.end_ms || arrive > deadline {
                    continue;
                }
                let better = match best[v] {
                    None => true,
                    Some((bt, bh)) => (arrive, hops + 1) < (bt, bh),
                };
                if better {
                    best[v] = Some((arrive, hops + 1));
                    heap.push(Reverse((arrive, hops + 1, v)));
                }
            }
        }
        best
    }

    /// The flood's delivery of `message` to its destination.
    pub fn deliver(&self, message: &Message) -> OracleArrival {
        match self.arrival_times(message)[message.to] {
            Some((t, hops)) => OracleArrival {
                delivered_ms: Some(t),
                hops,
            },
            None => OracleArrival {
                delivered_ms: None,
                hops: 0,
            },
        }
    }

    /// [`Oracle::deliver`] for every message of the trace, in trace order.
    pub fn deliver_all(&self) -> Vec<OracleArrival> {
        self.trace
            .messages
            .iter()
            .map(|m| self.deliver(m))
            .collect()
    }
}

/// Time one message occupies a hop, in whole milliseconds rounded up (a transfer that needs
/// 4.1 ms is not finished after 4).
pub fn transfer_ms(size_bytes: u64, bytes_per_s: u64) -> u64 {
    (size_bytes.saturating_mul(1000)).div_ceil(bytes_per_s.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::trace::{Contact, Message};

    fn contact(start_s: u64, end_s: u64, a: usize, b: usize, rate: u64) -> Contact {
        Contact {
            start_ms: start_s * 1000,
            end_ms: end_s * 1000,
            a,
            b,
            bytes_per_s: rate,
        }
    }

    fn message(created_s: u64, from: usize, to: usize, size: u64, ttl_s: u64) -> Message {
        Message {
            created_ms: created_s * 1000,
            name: format!("m{created_s}-{from}-{to}"),
            from,
            to,
            size_bytes: size,
            ttl_s,
        }
    }

    /// 0 meets 1 during [10 s, 20 s] at 100 B/s, 1 meets 2 during [15 s, 30 s] at 50 B/s.
    fn tiny() -> Trace {
        Trace::new(
            vec![contact(10, 20, 0, 1, 100), contact(15, 30, 1, 2, 50)],
            vec![
                // Created before the first contact: 0→1 at 10 + 2 = 12 s, then 1→2 starts at
                // 15 (contact start) and takes 4 s: 19 s, over 2 hops.
                message(0, 0, 2, 200, 3600),
                // Created at 17: 0→1 ends at 19; 1→2 from 19 to 23.
                message(17, 0, 2, 200, 3600),
                // Created at 19: 0→1 would end at 21, after the contact closed at 20.
                message(19, 0, 2, 200, 3600),
                // Contacts are symmetric: 2→1 at 15..19, 1→0 at 19..21 > 20: never.
                message(0, 2, 0, 200, 3600),
                // TTL 15 s: reaching node 2 at 19 s is past the expiry at 16 s.
                message(1, 0, 2, 200, 15),
            ],
        )
        .unwrap()
    }

    #[test]
    fn hand_computed_arrivals_on_two_contacts() {
        let trace = tiny();
        let oracle = Oracle::new(&trace);
        let all = oracle.deliver_all();
        let by_name = |name: &str| {
            let i = trace.messages.iter().position(|m| m.name == name).unwrap();
            all[i].clone()
        };
        assert_eq!(
            by_name("m0-0-2"),
            OracleArrival {
                delivered_ms: Some(19_000),
                hops: 2
            }
        );
        assert_eq!(by_name("m17-0-2").delivered_ms, Some(23_000));
        assert_eq!(by_name("m19-0-2").delivered_ms, None);
        assert_eq!(by_name("m0-2-0").delivered_ms, None);
        // The intermediate node still gets the reverse message at 19 s.
        let reverse = trace.messages.iter().find(|m| m.name == "m0-2-0").unwrap();
        assert_eq!(oracle.arrival_times(reverse)[1], Some((19_000, 1)));
        let short = trace.messages.iter().find(|m| m.ttl_s == 15).unwrap();
        assert_eq!(oracle.deliver(short).delivered_ms, None);
    }

    #[test]
    fn faster_parallel_contact_wins() {
        // Two radios between the same pair: the slow one alone misses the window.
        let trace = Trace::new(
            vec![contact(0, 5, 0, 1, 100), contact(0, 5, 0, 1, 10_000)],
            vec![message(0, 0, 1, 1000, 60)],
        )
        .unwrap();
        let got = Oracle::new(&trace).deliver(&trace.messages[0]);
        assert_eq!(got.delivered_ms, Some(100));
    }

    #[test]
    fn transfer_time_rounds_up() {
        assert_eq!(transfer_ms(1000, 250_000), 4);
        assert_eq!(transfer_ms(1001, 250_000), 5);
        assert_eq!(transfer_ms(1, 1), 1000);
    }
}
