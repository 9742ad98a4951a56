//! An idealised replay of a contact trace: what a routing *rule* can achieve, apart from the
//! protocol that carries it out.
//!
//! Each message is followed on its own. Transfers are instant and free, buffers unlimited; a
//! node that receives a copy while other contacts of its are open may pass it on at once. What
//! is left is the rule: who gets a copy, when, and how many. The simulator runs the real
//! engines; this runs a rule in milliseconds, so that ideas can be tried on a whole trace
//! before any is built. For the protocol's own rule ([`Rule::SprayFocus`], which calls the
//! decisions in [`cairn_sync::policy`]) it lands within a few percent of `cairn-sim`.
//!
//! Some rules here use knowledge no node has ([`Rule::Future`] sees the trace ahead). They are
//! labelled as such and bound what better prediction could buy.

use std::collections::{HashMap, HashSet};

use cairn_sync::policy::Sociability;
use serde::Serialize;

use super::trace::Trace;

/// How copies move under one idea of routing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// The protocol's rule: spray by busyness, then move last copies to busier peers.
    SprayFocus { copies: u32 },
    /// Binary spray-and-wait: last copies wait for the destination.
    SprayWait { copies: u32 },
    /// Spray, then move last copies to whoever met the destination more recently, within
    /// `window_s` (the classic focus utility).
    Recency { copies: u32, window_s: u32 },
    /// Spray-focus, plus one extra copy that follows recent encounters with the destination.
    Hunter { copies: u32, window_s: u32 },
    /// Spray-focus whose budget doubles every `double_s` while undelivered, up to `max`.
    Growing {
        copies: u32,
        double_s: u32,
        max: u32,
    },
    /// Delegation forwarding (Erramilli et al., 2008) on busyness: a copy is replicated to a
    /// peer busier than any holder of that copy has seen.
    Delegation,
    /// Every holder copies to everyone it meets for `hold_s`, then drops the copy and refuses
    /// it again: a wave that never holds all nodes at once.
    Wave { hold_s: u32 },
    /// **Knows the future.** Spray-focus whose last copies move to whoever meets the
    /// destination more often in the next `horizon_s`.
    Future { copies: u32, horizon_s: u32 },
}

impl Rule {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Rule::SprayFocus { copies } => format!("spray-focus L={copies}"),
            Rule::SprayWait { copies } => format!("spray-wait L={copies}"),
            Rule::Recency { copies, window_s } => format!("recency L={copies} window={window_s}s"),
            Rule::Hunter { copies, window_s } => {
                format!("spray-focus+hunter L={copies} window={window_s}s")
            }
            Rule::Growing {
                copies,
                double_s,
                max,
            } => format!("growing L={copies} doubling={double_s}s max={max}"),
            Rule::Delegation => "delegation (busyness)".to_string(),
            Rule::Wave { hold_s } => format!("wave hold={hold_s}s"),
            Rule::Future { copies, horizon_s } => {
                format!("FUTURE-KNOWING L={copies} horizon={horizon_s}s")
            }
        }
    }
}

/// What a rule achieved on a trace.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    pub rule: String,
    pub messages: usize,
    pub delivery_ratio: f64,
    pub latency_mean_s: f64,
    pub latency_p50_s: f64,
    /// Most nodes holding a message at one instant before delivery (its sender included),
    /// averaged over messages: the simulator's `copies_peak_mean`.
    pub copies_peak_mean: f64,
    pub copies_peak_max: u32,
    pub transfers_per_delivered: f64,
}

/// The trace, indexed for the questions rules ask.
#[derive(Debug)]
pub struct Replay<'t> {
    trace: &'t Trace,
    /// Contacts of each node, by start.
    by_node: Vec<Vec<usize>>,
    /// Starts of the contacts of each pair (lower index first).
    pair_starts: HashMap<(usize, usize), Vec<u64>>,
}

/// One message's state while it is followed.
struct Copies {
    /// Holder → its share of the budget (1.0 at the sender). 0 marks the sender's passive copy.
    share: HashMap<usize, f64>,
    /// Per holder: the best quality its copy has seen (delegation) or when it got it (wave).
    mark: HashMap<usize, f64>,
    /// Where the extra copy of [`Rule::Hunter`] is.
    hunter: Option<usize>,
    transfers: u64,
    peak: u32,
}

impl Copies {
    fn holds(&self, node: usize) -> bool {
        self.share.contains_key(&node) || self.hunter == Some(node)
    }
    fn holders(&self) -> u32 {
        let extra = self.hunter.is_some_and(|h| !self.share.contains_key(&h));
        self.share.len() as u32 + u32::from(extra)
    }
}

/// What one meeting did.
#[derive(PartialEq)]
enum Step {
    Nothing,
    /// The peer now holds a copy (and may pass it on over its open contacts).
    Gave,
    Delivered,
}

impl<'t> Replay<'t> {
    pub fn new(trace: &'t Trace) -> Self {
        let mut by_node = vec![Vec::new(); trace.nodes];
        let mut pair_starts: HashMap<(usize, usize), Vec<u64>> = HashMap::new();
        for (i, c) in trace.contacts.iter().enumerate() {
            by_node[c.a].push(i);
            by_node[c.b].push(i);
            pair_starts.entry((c.a, c.b)).or_default().push(c.start_ms);
        }
        Replay {
            trace,
            by_node,
            pair_starts,
        }
    }

    /// Distinct peers `node` met in the hour before `t`, not counting `except`: the
    /// protocol's `activity`.
    fn activity(&self, node: usize, t: u64, except: usize) -> u32 {
        let list = &self.by_node[node];
        let end = list.partition_point(|&i| self.trace.contacts[i].start_ms < t);
        let since = t.saturating_sub(cairn_sync::policy::ACTIVITY_WINDOW_SECS * 1000);
        let mut seen = HashSet::new();
        for &i in list[..end].iter().rev() {
            let c = &self.trace.contacts[i];
            if c.start_ms < since {
                break;
            }
            let other = if c.a == node { c.b } else { c.a };
            if other != except {
                seen.insert(other);
            }
        }
        seen.len() as u32
    }

    fn starts(&self, x: usize, y: usize) -> &[u64] {
        self.pair_starts
            .get(&(x.min(y), x.max(y)))
            .map_or(&[], Vec::as_slice)
    }

    /// When `node` last met `dest` before `t`.
    fn last_met(&self, node: usize, dest: usize, t: u64) -> Option<u64> {
        let s = self.starts(node, dest);
        let i = s.partition_point(|&x| x < t);
        i.checked_sub(1).map(|i| s[i])
    }

    /// Meetings of `node` and `dest` starting in `[from, to)`.
    fn meetings(&self, node: usize, dest: usize, from: u64, to: u64) -> usize {
        let s = self.starts(node, dest);
        s.partition_point(|&x| x < to) - s.partition_point(|&x| x < from)
    }

    /// Follows every message of the trace under `rule`.
    pub fn run(&self, rule: Rule) -> ReplayReport {
        let mut latencies = Vec::new();
        let mut peaks = Vec::new();
        let mut transfers = 0;
        for m in 0..self.trace.messages.len() {
            let (delivered, copies) = self.follow(m, rule);
            if let Some(t) = delivered {
                latencies.push((t - self.trace.messages[m].created_ms) as f64 / 1000.0);
            }
            peaks.push(copies.peak);
            transfers += copies.transfers;
        }
        let n = self.trace.messages.len();
        let delivered = latencies.len();
        latencies.sort_by(f64::total_cmp);
        ReplayReport {
            rule: rule.name(),
            messages: n,
            delivery_ratio: delivered as f64 / n.max(1) as f64,
            latency_mean_s: latencies.iter().sum::<f64>() / delivered.max(1) as f64,
            latency_p50_s: latencies.get(delivered / 2).copied().unwrap_or(0.0),
            copies_peak_mean: peaks.iter().map(|&p| f64::from(p)).sum::<f64>() / n.max(1) as f64,
            copies_peak_max: peaks.iter().copied().max().unwrap_or(0),
            transfers_per_delivered: transfers as f64 / delivered.max(1) as f64,
        }
    }

    /// When each message of the trace reaches its destination under `rule`, in trace order.
    pub fn delivered_at(&self, rule: Rule) -> Vec<Option<u64>> {
        (0..self.trace.messages.len())
            .map(|m| self.follow(m, rule).0)
            .collect()
    }

    /// One message: when it was delivered, and what its copies did.
    fn follow(&self, m: usize, rule: Rule) -> (Option<u64>, Copies) {
        let msg = &self.trace.messages[m];
        let mut st = Copies {
            share: HashMap::from([(msg.from, 1.0)]),
            mark: HashMap::from([(msg.from, self.quality(rule, msg.from, msg.created_ms))]),
            hunter: matches!(rule, Rule::Hunter { .. }).then_some(msg.from),
            transfers: 0,
            peak: 1,
        };
        let contacts = &self.trace.contacts;
        let mut next = contacts.partition_point(|c| c.start_ms < msg.created_ms);
        // Nodes that just got a copy, to pass on over contacts already open.
        let mut fresh = vec![(msg.created_ms, msg.from)];
        loop {
            while let Some((t, node)) = fresh.pop() {
                let list = &self.by_node[node];
                let end = list.partition_point(|&i| contacts[i].start_ms <= t);
                for &i in &list[..end] {
                    let c = &contacts[i];
                    if c.end_ms <= t || !self.active(&st, rule, node, t) {
                        continue;
                    }
                    let peer = if c.a == node { c.b } else { c.a };
                    match self.meet(m, rule, &mut st, t, node, peer) {
                        Step::Delivered => return (Some(t), st),
                        Step::Gave => fresh.push((t, peer)),
                        Step::Nothing => {}
                    }
                }
            }
            let Some(c) = contacts.get(next) else {
                return (None, st);
            };
            next += 1;
            if c.start_ms > msg.expires_ms() {
                return (None, st);
            }
            for (holder, peer) in [(c.a, c.b), (c.b, c.a)] {
                if self.active(&st, rule, holder, c.start_ms) && !st.holds(peer) {
                    match self.meet(m, rule, &mut st, c.start_ms, holder, peer) {
                        Step::Delivered => return (Some(c.start_ms), st),
                        Step::Gave => fresh.push((c.start_ms, peer)),
                        Step::Nothing => {}
                    }
                    break;
                }
            }
        }
    }

    /// Whether `node` still acts on its copy at `t`.
    fn active(&self, st: &Copies, rule: Rule, node: usize, t: u64) -> bool {
        match rule {
            Rule::Wave { hold_s } => st
                .mark
                .get(&node)
                .is_some_and(|&got| (t as f64) < got + f64::from(hold_s) * 1000.0),
            _ => st.holds(node),
        }
    }

    /// A quality that [`Rule::Delegation`] and [`Rule::Wave`] remember per holder.
    fn quality(&self, rule: Rule, node: usize, t: u64) -> f64 {
        match rule {
            Rule::Delegation => f64::from(self.activity(node, t, usize::MAX)),
            Rule::Wave { .. } => t as f64,
            _ => 0.0,
        }
    }

    /// `holder` meets `peer` at `t`.
    fn meet(
        &self,
        m: usize,
        rule: Rule,
        st: &mut Copies,
        t: u64,
        holder: usize,
        peer: usize,
    ) -> Step {
        let msg = &self.trace.messages[m];
        if st.holds(peer) {
            return Step::Nothing;
        }
        if peer == msg.to {
            st.transfers += 1;
            return Step::Delivered;
        }
        let step = match rule {
            Rule::Delegation => {
                let q = self.quality(rule, peer, t);
                if q > st.mark[&holder] {
                    st.mark.insert(holder, q);
                    self.give(st, peer, 1.0, q)
                } else {
                    Step::Nothing
                }
            }
            // A node that dropped its copy still counts as holding it here: it refuses it.
            Rule::Wave { .. } => self.give(st, peer, 1.0, t as f64),
            _ => self.budgeted(m, rule, st, t, holder, peer),
        };
        st.peak = st.peak.max(match rule {
            Rule::Wave { .. } => st
                .share
                .keys()
                .filter(|&&n| n == msg.from || self.active(st, rule, n, t))
                .count() as u32,
            _ => st.holders(),
        });
        step
    }

    fn give(&self, st: &mut Copies, peer: usize, share: f64, mark: f64) -> Step {
        st.share.insert(peer, share);
        st.mark.insert(peer, mark);
        st.transfers += 1;
        Step::Gave
    }

    /// The rules with a copy budget: spray while a holder has more than one copy, then move.
    fn budgeted(
        &self,
        m: usize,
        rule: Rule,
        st: &mut Copies,
        t: u64,
        holder: usize,
        peer: usize,
    ) -> Step {
        let msg = &self.trace.messages[m];
        let age_s = (t - msg.created_ms) as f64 / 1000.0;
        if let Rule::Hunter { window_s, .. } = rule {
            if st.hunter == Some(holder) && self.fresher(msg.to, t, holder, peer, window_s) {
                st.hunter = Some(peer);
                st.transfers += 1;
                return Step::Gave;
            }
        }
        let Some(&share) = st.share.get(&holder) else {
            return Step::Nothing;
        };
        let budget = match rule {
            Rule::SprayFocus { copies }
            | Rule::SprayWait { copies }
            | Rule::Recency { copies, .. }
            | Rule::Hunter { copies, .. }
            | Rule::Future { copies, .. } => f64::from(copies),
            Rule::Growing {
                copies,
                double_s,
                max,
            } => (f64::from(copies) * (age_s / f64::from(double_s)).exp2()).min(f64::from(max)),
            Rule::Delegation | Rule::Wave { .. } => unreachable!("not budgeted"),
        };
        // Whole copies this holder may hand out; the sender's passive copy has none.
        let copies = if share > 0.0 {
            ((share * budget + 1e-9).floor() as u32).clamp(1, 255) as u8
        } else {
            0
        };
        let sociability = Sociability {
            own: self.activity(holder, t, peer),
            peer: self.activity(peer, t, holder),
        };
        if copies > 1 {
            let grant = match rule {
                Rule::SprayWait { .. } => copies / 2,
                _ => sociability.spray_grant(copies),
            };
            let given = share * f64::from(grant) / f64::from(copies);
            st.share.insert(holder, share - given);
            return self.give(st, peer, given, 0.0);
        }
        if copies == 0 {
            return Step::Nothing;
        }
        let moves = match rule {
            Rule::SprayWait { .. } => false,
            Rule::Recency { window_s, .. } => self.fresher(msg.to, t, holder, peer, window_s),
            Rule::Future { horizon_s, .. } => {
                let until = t + u64::from(horizon_s) * 1000;
                self.meetings(peer, msg.to, t, until) > self.meetings(holder, msg.to, t, until)
            }
            _ => sociability.peer_is_busier(),
        };
        if !moves {
            return Step::Nothing;
        }
        if holder == msg.from {
            st.share.insert(holder, 0.0);
        } else {
            st.share.remove(&holder);
        }
        self.give(st, peer, share, 0.0)
    }

    /// Whether `peer` met `dest` within `window_s` and more recently than `holder` did.
    fn fresher(&self, dest: usize, t: u64, holder: usize, peer: usize, window_s: u32) -> bool {
        let Some(p) = self.last_met(peer, dest, t) else {
            return false;
        };
        let recent = t.saturating_sub(p) < u64::from(window_s) * 1000;
        recent && self.last_met(holder, dest, t).is_none_or(|h| p > h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::oracle::Oracle;
    use crate::sim::scenario::Scenario;

    /// A generated scenario with zero-length messages, so that transfers are instant for the
    /// oracle too.
    fn instant_trace() -> Trace {
        let mut trace = Scenario::RandomWaypoint
            .generate(7, Some(24), Some(2.0))
            .expect("scenario");
        for m in &mut trace.messages {
            m.size_bytes = 0;
        }
        trace
    }

    #[test]
    fn an_endless_wave_is_the_oracle_flood() {
        let trace = instant_trace();
        let replay = Replay::new(&trace);
        let flood = replay.delivered_at(Rule::Wave { hold_s: u32::MAX });
        let oracle = Oracle::new(&trace);
        let expected: Vec<Option<u64>> = trace
            .messages
            .iter()
            .map(|m| oracle.deliver(m).delivered_ms)
            .collect();
        assert!(expected.iter().filter(|d| d.is_some()).count() > trace.messages.len() / 2);
        assert_eq!(flood, expected);
    }

    #[test]
    fn budgets_bound_the_copies_and_cost_latency() {
        let trace = instant_trace();
        let replay = Replay::new(&trace);
        let few = replay.run(Rule::SprayFocus { copies: 4 });
        let many = replay.run(Rule::SprayFocus { copies: 16 });
        // The sender's passive copy, plus one more while the last copy is in flight.
        assert!(few.copies_peak_max <= 4 + 1, "{few:?}");
        assert!(many.copies_peak_max <= 16 + 1, "{many:?}");
        assert!(many.copies_peak_mean > few.copies_peak_mean);
        assert!(many.delivery_ratio >= few.delivery_ratio);
        assert!(many.latency_mean_s < few.latency_mean_s, "{few:?} {many:?}");
        let flood = replay.run(Rule::Wave { hold_s: u32::MAX });
        assert!(flood.latency_mean_s <= many.latency_mean_s);
    }
}
