//! Built-in scenarios: contact and message traces generated from a seed.
//!
//! Each generator is a pure function of (seed, nodes, hours): the same arguments give the
//! same [`Trace`] on every machine. Mobility and workload draw from separate random streams
//! so that, say, a longer run keeps the first hours' movements unchanged.

use std::fmt;
use std::str::FromStr;

use super::rng::SimRng;
use super::trace::{Contact, Message, Trace, TraceError};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// Which built-in world to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A team moving between a few camps over a day: dense LAN contacts inside a camp, thin
    /// slow radio contacts between camps. The case Cairn is built for.
    FieldTeam,
    /// Nodes walking in a 1 km square (random waypoint), short-range radio contacts.
    RandomWaypoint,
    /// Nodes on a ring where only neighbours ever meet: every message needs many carriers.
    Ring,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [
        Scenario::FieldTeam,
        Scenario::RandomWaypoint,
        Scenario::Ring,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::FieldTeam => "field-team",
            Scenario::RandomWaypoint => "random-waypoint",
            Scenario::Ring => "ring",
        }
    }

    pub fn default_nodes(self) -> usize {
        match self {
            Scenario::FieldTeam => 20,
            Scenario::RandomWaypoint => 30,
            Scenario::Ring => 12,
        }
    }

    pub fn default_hours(self) -> f64 {
        match self {
            Scenario::FieldTeam => 24.0,
            Scenario::RandomWaypoint => 2.0,
            Scenario::Ring => 6.0,
        }
    }

    /// Generates the trace. `nodes`/`hours` override the scenario's defaults.
    pub fn generate(
        self,
        seed: u64,
        nodes: Option<usize>,
        hours: Option<f64>,
    ) -> Result<Trace, ScenarioError> {
        let nodes = nodes.unwrap_or(self.default_nodes());
        let hours = hours.unwrap_or(self.default_hours());
        let min_nodes = if self == Scenario::Ring { 3 } else { 2 };
        if !(min_nodes..=MAX_SCENARIO_NODES).contains(&nodes) {
            return Err(ScenarioError::Nodes {
                scenario: self.name(),
                min: min_nodes,
                got: nodes,
            });
        }
        if !(hours.is_finite() && hours > 0.0 && hours <= MAX_SCENARIO_HOURS) {
            return Err(ScenarioError::Hours(hours));
        }
        let horizon_ms = (hours * HOUR_MS as f64).round() as u64;
        let (contacts, messages) = match self {
            Scenario::FieldTeam => field_team(seed, nodes, horizon_ms),
            Scenario::RandomWaypoint => random_waypoint(seed, nodes, horizon_ms),
            Scenario::Ring => ring(seed, nodes, horizon_ms),
        };
        Ok(Trace::new(contacts, messages)?)
    }
}

/// Bounds that keep generation time and memory reasonable (random waypoint is O(n²·t)).
pub const MAX_SCENARIO_NODES: usize = 2000;
pub const MAX_SCENARIO_HOURS: f64 = 24.0 * 30.0;

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = ScenarioError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| ScenarioError::Unknown(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    #[error("unknown scenario {0:?}; choose field-team, random-waypoint or ring")]
    Unknown(String),
    #[error("{scenario} needs between {min} and {MAX_SCENARIO_NODES} nodes, got {got}")]
    Nodes {
        scenario: &'static str,
        min: usize,
        got: usize,
    },
    #[error("hours must be in (0, {MAX_SCENARIO_HOURS}], got {0}")]
    Hours(f64),
    #[error("generated trace is invalid (a generator bug): {0}")]
    Trace(#[from] TraceError),
}

/// Messages between uniformly random distinct pairs, one every `gap_ms` (drawn per message),
/// until `horizon_ms`.
fn workload(
    rng: &mut SimRng,
    nodes: usize,
    horizon_ms: u64,
    gap_ms: (u64, u64),
    size: (u64, u64),
    ttl_s: u64,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut t = rng.range(0, gap_ms.1);
    while t < horizon_ms {
        let from = rng.index(nodes);
        let to = (from + 1 + rng.index(nodes - 1)) % nodes;
        out.push(Message {
            created_ms: t,
            name: format!("M{}", out.len() + 1),
            from,
            to,
            size_bytes: rng.range(size.0, size.1),
            ttl_s,
        });
        t += rng.range(gap_ms.0, gap_ms.1);
    }
    out
}

/// One stay of a person at a camp.
#[derive(Clone, Copy, Debug)]
struct Stay {
    camp: usize,
    start_ms: u64,
    end_ms: u64,
}

const CAMPS: usize = 4;
const LAN_BYTES_PER_S: u64 = 1_000_000;
const RADIO_BYTES_PER_S: u64 = 1_000;

fn field_team(seed: u64, nodes: usize, horizon_ms: u64) -> (Vec<Contact>, Vec<Message>) {
    // Each person alternates: stay 30-180 min at a camp, walk 20-60 min to another camp.
    let stays: Vec<Vec<Stay>> = (0..nodes)
        .map(|p| {
            let mut rng = SimRng::derive(seed, "field-team/person", &[p as u64]);
            let mut camp = rng.index(CAMPS);
            let mut t = 0;
            let mut out = Vec::new();
            while t < horizon_ms {
                let end = (t + rng.range(30, 180) * MINUTE_MS).min(horizon_ms);
                out.push(Stay {
                    camp,
                    start_ms: t,
                    end_ms: end,
                });
                t = end + rng.range(20, 60) * MINUTE_MS;
                camp = (camp + 1 + rng.index(CAMPS - 1)) % CAMPS;
            }
            out
        })
        .collect();

    let mut contacts = Vec::new();
    // People in the same camp at the same time share its LAN.
    for a in 0..nodes {
        for b in a + 1..nodes {
            for sa in &stays[a] {
                for sb in &stays[b] {
                    let start = sa.start_ms.max(sb.start_ms);
                    let end = sa.end_ms.min(sb.end_ms);
                    if sa.camp == sb.camp && end > start {
                        contacts.push(Contact {
                            start_ms: start,
                            end_ms: end,
                            a,
                            b,
                            bytes_per_s: LAN_BYTES_PER_S,
                        });
                    }
                }
            }
        }
    }
    // Every 10-40 min someone at a camp calls someone at another camp over a slow radio for
    // 2-10 min (cut short when either leaves camp).
    let mut rng = SimRng::derive(seed, "field-team/radio", &[]);
    let at_camp = |p: usize, t: u64| stays[p].iter().find(|s| s.start_ms <= t && t < s.end_ms);
    let mut t = rng.range(10, 40) * MINUTE_MS;
    while t < horizon_ms {
        let caller = rng.index(nodes);
        if let Some(here) = at_camp(caller, t) {
            let others: Vec<(usize, &Stay)> = (0..nodes)
                .filter_map(|p| at_camp(p, t).map(|s| (p, s)))
                .filter(|(_, s)| s.camp != here.camp)
                .collect();
            if !others.is_empty() {
                let (callee, there) = others[rng.index(others.len())];
                let end = (t + rng.range(2, 10) * MINUTE_MS)
                    .min(here.end_ms)
                    .min(there.end_ms);
                if end > t {
                    contacts.push(Contact {
                        start_ms: t,
                        end_ms: end,
                        a: caller.min(callee),
                        b: caller.max(callee),
                        bytes_per_s: RADIO_BYTES_PER_S,
                    });
                }
            }
        }
        t += rng.range(10, 40) * MINUTE_MS;
    }
    let mut rng = SimRng::derive(seed, "field-team/messages", &[]);
    let messages = workload(
        &mut rng,
        nodes,
        horizon_ms,
        (2 * MINUTE_MS, 6 * MINUTE_MS),
        (100, 2000),
        12 * 3600,
    );
    (contacts, messages)
}

const RWP_SIDE_M: f64 = 1000.0;
const RWP_RANGE_M: f64 = 30.0;
const RWP_BYTES_PER_S: u64 = 250_000;

/// One walker of the random-waypoint model.
#[derive(Debug)]
struct Walker {
    rng: SimRng,
    x: f64,
    y: f64,
    target: (f64, f64),
    speed: f64,
    pause_left_s: f64,
}

impl Walker {
    fn new(seed: u64, index: usize) -> Self {
        let mut rng = SimRng::derive(seed, "random-waypoint/walker", &[index as u64]);
        let x = rng.uniform(0.0, RWP_SIDE_M);
        let y = rng.uniform(0.0, RWP_SIDE_M);
        let target = (rng.uniform(0.0, RWP_SIDE_M), rng.uniform(0.0, RWP_SIDE_M));
        let speed = rng.uniform(0.5, 1.5);
        Walker {
            rng,
            x,
            y,
            target,
            speed,
            pause_left_s: 0.0,
        }
    }

    /// Advances one second: walk toward the waypoint, pause 0-120 s on arrival, then pick
    /// the next waypoint and speed.
    fn step(&mut self) {
        let mut dt = 1.0;
        while dt > 0.0 {
            if self.pause_left_s > 0.0 {
                let p = self.pause_left_s.min(dt);
                self.pause_left_s -= p;
                dt -= p;
                if self.pause_left_s <= 0.0 {
                    self.target = (
                        self.rng.uniform(0.0, RWP_SIDE_M),
                        self.rng.uniform(0.0, RWP_SIDE_M),
                    );
                    self.speed = self.rng.uniform(0.5, 1.5);
                }
                continue;
            }
            let (dx, dy) = (self.target.0 - self.x, self.target.1 - self.y);
            let dist = (dx * dx + dy * dy).sqrt();
            let reach = self.speed * dt;
            if reach < dist {
                self.x += dx / dist * reach;
                self.y += dy / dist * reach;
                return;
            }
            self.x = self.target.0;
            self.y = self.target.1;
            dt -= if self.speed > 0.0 {
                dist / self.speed
            } else {
                dt
            };
            // A zero pause still picks a new waypoint on the next pass.
            self.pause_left_s = self.rng.uniform(0.0, 120.0).max(f64::MIN_POSITIVE);
        }
    }
}

fn random_waypoint(seed: u64, nodes: usize, horizon_ms: u64) -> (Vec<Contact>, Vec<Message>) {
    let mut walkers: Vec<Walker> = (0..nodes).map(|i| Walker::new(seed, i)).collect();
    // Contact start per pair (row-major upper triangle), `None` while out of range.
    let mut open: Vec<Option<u64>> = vec![None; nodes * nodes];
    let mut contacts = Vec::new();
    let seconds = horizon_ms / 1000;
    let range2 = RWP_RANGE_M * RWP_RANGE_M;
    for s in 0..=seconds {
        let t = s * 1000;
        for a in 0..nodes {
            for b in a + 1..nodes {
                let (dx, dy) = (walkers[a].x - walkers[b].x, walkers[a].y - walkers[b].y);
                let near = dx * dx + dy * dy <= range2 && s < seconds;
                let slot = &mut open[a * nodes + b];
                match (near, *slot) {
                    (true, None) => *slot = Some(t),
                    (false, Some(start)) => {
                        *slot = None;
                        contacts.push(Contact {
                            start_ms: start,
                            end_ms: t,
                            a,
                            b,
                            bytes_per_s: RWP_BYTES_PER_S,
                        });
                    }
                    _ => {}
                }
            }
        }
        for w in &mut walkers {
            w.step();
        }
    }
    let mut rng = SimRng::derive(seed, "random-waypoint/messages", &[]);
    let ttl_s = horizon_ms.div_ceil(1000).max(1);
    let messages = workload(
        &mut rng,
        nodes,
        horizon_ms,
        (30_000, 90_000),
        (100, 2000),
        ttl_s,
    );
    (contacts, messages)
}

const RING_PERIOD_MS: u64 = 15 * MINUTE_MS;
const RING_MEETING_MS: u64 = 60_000;
const RING_BYTES_PER_S: u64 = 250_000;

fn ring(seed: u64, nodes: usize, horizon_ms: u64) -> (Vec<Contact>, Vec<Message>) {
    let mut contacts = Vec::new();
    for i in 0..nodes {
        let j = (i + 1) % nodes;
        let mut rng = SimRng::derive(seed, "ring/pair", &[i as u64]);
        let mut t = rng.range(0, RING_PERIOD_MS - 1);
        while t < horizon_ms {
            contacts.push(Contact {
                start_ms: t,
                end_ms: (t + RING_MEETING_MS).min(horizon_ms),
                a: i.min(j),
                b: i.max(j),
                bytes_per_s: RING_BYTES_PER_S,
            });
            t += RING_PERIOD_MS;
        }
    }
    let mut rng = SimRng::derive(seed, "ring/messages", &[]);
    let ttl_s = horizon_ms.div_ceil(1000).max(1);
    let messages = workload(
        &mut rng,
        nodes,
        horizon_ms,
        (MINUTE_MS, 3 * MINUTE_MS),
        (100, 2000),
        ttl_s,
    );
    (contacts, messages)
}

/// Hops between two ring positions (the fewest carriers a message between them needs).
pub fn ring_distance(nodes: usize, a: usize, b: usize) -> usize {
    let d = a.abs_diff(b);
    d.min(nodes - d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_reproducible() {
        for sc in Scenario::ALL {
            let a = sc.generate(5, Some(8), Some(1.0)).unwrap();
            let b = sc.generate(5, Some(8), Some(1.0)).unwrap();
            assert_eq!(a, b, "{sc}");
            let c = sc.generate(6, Some(8), Some(1.0)).unwrap();
            assert_ne!(a, c, "{sc}: another seed should give another world");
            assert!(!a.messages.is_empty(), "{sc}");
        }
    }

    #[test]
    fn ring_only_neighbours_meet() {
        let t = Scenario::Ring.generate(1, Some(10), Some(2.0)).unwrap();
        assert!(!t.contacts.is_empty());
        for c in &t.contacts {
            assert_eq!(ring_distance(10, c.a, c.b), 1, "{c:?}");
        }
    }

    #[test]
    fn field_team_has_lan_and_radio_contacts() {
        let t = Scenario::FieldTeam.generate(3, None, None).unwrap();
        assert!(t.contacts.iter().any(|c| c.bytes_per_s == LAN_BYTES_PER_S));
        assert!(t
            .contacts
            .iter()
            .any(|c| c.bytes_per_s == RADIO_BYTES_PER_S));
        assert!(t
            .messages
            .iter()
            .all(|m| (100..=2000).contains(&m.size_bytes)));
    }

    #[test]
    fn random_waypoint_meets_within_range() {
        let t = Scenario::RandomWaypoint
            .generate(2, Some(20), Some(0.5))
            .unwrap();
        assert!(!t.contacts.is_empty());
        assert!(t.contacts.iter().all(|c| c.end_ms > c.start_ms));
    }

    #[test]
    fn refuses_bad_sizes() {
        assert!(Scenario::Ring.generate(1, Some(2), None).is_err());
        assert!(Scenario::Ring.generate(1, None, Some(0.0)).is_err());
        assert!("nope".parse::<Scenario>().is_err());
        assert_eq!("ring".parse::<Scenario>().unwrap(), Scenario::Ring);
    }
}
