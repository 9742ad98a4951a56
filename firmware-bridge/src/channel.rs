//! A shared LoRa channel: who hears whom, how long each frame occupies the air, and which
//! frames are lost to collisions, to half duplex, or at random.
//!
//! One model serves two drivers. `cairn-vradio` runs it in real time behind pseudo-terminals,
//! so that real nodes talk through virtual radios; the simulator and benchmarks run it in
//! virtual time in-process. Both need the same physics, and both need it reproducible, so the
//! channel is a pure, deterministic state machine: time is passed in (`now_us`), randomness
//! comes from a seeded ChaCha RNG, and the same calls with the same seed give the same
//! events, byte for byte.
//!
//! The model, and why it is this simple:
//!
//! * **Reachability** is a matrix of directed links ([`Topology`]); each link carries the
//!   RSSI and SNR a receiver reports. Propagation delay (microseconds over kilometres) is
//!   negligible next to airtime (milliseconds to seconds) and is ignored.
//! * **Airtime** comes from the sender's [`LoraParams`] ([`crate::lora::airtime_us`]). A frame
//!   is heard by a radio whose own parameters match the sender's frequency, bandwidth and
//!   spreading factor; a radio that is off ([`Channel::set_params`] with `None`) hears nothing.
//! * **Half duplex**: a radio cannot start a transmission while its previous one is on air,
//!   and it hears nothing of a frame if it was transmitting at any moment during it.
//! * **Collisions**: a frame is lost at a receiver if another transmission on the same
//!   frequency, audible at that receiver, overlapped it in time. By default there is no
//!   capture effect (both frames are lost, the pessimistic case LoRa MACs are designed for);
//!   [`ChannelConfig::capture_threshold_db`] lets a frame survive interferers it beats by
//!   that many dB at the receiver, a first approximation of what SX127x receivers do.
//! * **Random loss**: each delivery that survived the above is dropped with probability
//!   [`ChannelConfig::loss`], independently, drawn from the seeded RNG in event order.
//!
//! Deliveries and the end of each transmission come out of [`Channel::poll`] at the
//! transmission's end time; [`Channel::next_event_us`] says when that is. Memory is bounded
//! by the radios: at most one transmission per radio is on air, and finished ones are kept
//! only while a frame still on air could overlap them.
//!
//! ```
//! use cairn_firmware_bridge::channel::{Channel, ChannelConfig, ChannelEvent, Link, Topology};
//! use cairn_firmware_bridge::LoraParams;
//!
//! let topology = Topology::line(3, Link::default()); // 0 - 1 - 2
//! let mut channel = Channel::new(topology, LoraParams::sf7(), ChannelConfig::default());
//! let end = channel.transmit(0, 0, b"hello").expect("radio 0 is idle");
//! assert_eq!(channel.next_event_us(), Some(end));
//! assert!(channel.poll(end - 1).is_none()); // still on air
//!
//! let events: Vec<_> = std::iter::from_fn(|| channel.poll(end)).collect();
//! assert!(matches!(events[0], ChannelEvent::Transmitted { radio: 0, .. }));
//! assert!(matches!(&events[1], ChannelEvent::Delivered(d) if d.to == 1 && d.frame == b"hello"));
//! assert_eq!(events.len(), 2); // radio 2 is out of range of radio 0
//! ```

use std::collections::VecDeque;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::lora::airtime_us;
use crate::LoraParams;

/// Largest payload one LoRa packet carries.
pub const MAX_LORA_PAYLOAD: usize = 255;

/// What a receiver measures on a link: the figures it reports with each frame heard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Received signal strength, dBm.
    pub rssi_dbm: i16,
    /// Signal-to-noise ratio, dB (negative below the noise floor, as LoRa allows).
    pub snr_db: f32,
}

impl Default for Link {
    /// A solid but unremarkable link: -90 dBm, 7.5 dB SNR.
    fn default() -> Self {
        Self {
            rssi_dbm: -90,
            snr_db: 7.5,
        }
    }
}

/// Who hears whom: a directed link, or none, for every ordered pair of radios.
///
/// Radios are numbered `0..radios`. Links are directed because real ones are not always
/// symmetric (a stronger transmitter, a deaf receiver); the helpers build symmetric ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    radios: usize,
    /// `links[from * radios + to]`.
    links: Vec<Option<Link>>,
}

impl Topology {
    /// `radios` radios that hear no one.
    #[must_use]
    pub fn isolated(radios: usize) -> Self {
        Self {
            radios,
            links: vec![None; radios.saturating_mul(radios)],
        }
    }

    /// Every radio hears every other over `link`: a room, a hill top.
    #[must_use]
    pub fn all_hear_all(radios: usize, link: Link) -> Self {
        let mut topology = Self::isolated(radios);
        for from in 0..radios {
            for to in 0..radios {
                if from != to {
                    topology.links[from * radios + to] = Some(link);
                }
            }
        }
        topology
    }

    /// A chain 0 - 1 - 2 - ...: each radio hears only its neighbours, so anything from one
    /// end reaches the other only if the radios between relay it.
    #[must_use]
    pub fn line(radios: usize, link: Link) -> Self {
        let mut topology = Self::isolated(radios);
        for from in 1..radios {
            topology.links[(from - 1) * radios + from] = Some(link);
            topology.links[from * radios + from - 1] = Some(link);
        }
        topology
    }

    /// Number of radios.
    #[must_use]
    pub fn radios(&self) -> usize {
        self.radios
    }

    /// The link on which `to` hears `from`, if it does.
    #[must_use]
    pub fn link(&self, from: usize, to: usize) -> Option<Link> {
        if from >= self.radios || to >= self.radios || from == to {
            return None;
        }
        self.links[from * self.radios + to]
    }

    /// Sets (or, with `None`, cuts) the link on which `to` hears `from`, one direction only.
    ///
    /// # Errors
    ///
    /// [`ChannelError::UnknownRadio`] for a radio outside the topology, or a radio linked to
    /// itself (it cannot hear its own frame: half duplex).
    pub fn set_link(
        &mut self,
        from: usize,
        to: usize,
        link: Option<Link>,
    ) -> Result<(), ChannelError> {
        for radio in [from, to] {
            self.check(radio)?;
        }
        if from == to {
            return Err(ChannelError::UnknownRadio {
                radio: to,
                radios: self.radios,
            });
        }
        self.links[from * self.radios + to] = link;
        Ok(())
    }

    /// Links `a` and `b` both ways with the same figures.
    ///
    /// # Errors
    ///
    /// As [`Topology::set_link`].
    pub fn connect(&mut self, a: usize, b: usize, link: Link) -> Result<(), ChannelError> {
        self.set_link(a, b, Some(link))?;
        self.set_link(b, a, Some(link))
    }

    fn check(&self, radio: usize) -> Result<(), ChannelError> {
        if radio < self.radios {
            Ok(())
        } else {
            Err(ChannelError::UnknownRadio {
                radio,
                radios: self.radios,
            })
        }
    }
}

/// How lossy the channel is beyond collisions and half duplex.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelConfig {
    /// Seed of the RNG behind random loss: the same seed and calls give the same losses.
    pub seed: u64,
    /// Probability in `0.0..=1.0` that a delivery that survived collisions is lost anyway
    /// (fading, a burst of noise, a receiver busy elsewhere).
    pub loss: f64,
    /// With `Some(dB)`, a frame survives overlapping transmissions that all arrive at least
    /// this much weaker at the receiver (capture effect; about 6 dB for SX127x). `None`: any
    /// audible overlap destroys the frame.
    pub capture_threshold_db: Option<f32>,
}

impl Default for ChannelConfig {
    /// No random loss, no capture effect, seed 0.
    fn default() -> Self {
        Self {
            seed: 0,
            loss: 0.0,
            capture_threshold_db: None,
        }
    }
}

/// Why the channel refused a transmission or a setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// No such radio.
    #[error("radio {radio} does not exist: the channel has radios 0 to {radios} (exclusive)")]
    UnknownRadio {
        /// The index asked for.
        radio: usize,
        /// How many radios there are.
        radios: usize,
    },
    /// The radio is off (no parameters): it can neither send nor hear.
    #[error("radio {radio} is off")]
    RadioOff {
        /// The radio.
        radio: usize,
    },
    /// Half duplex: the radio's previous frame is still on air.
    #[error("radio {radio} is still transmitting until {until_us} µs")]
    AlreadyTransmitting {
        /// The radio.
        radio: usize,
        /// When its current transmission ends.
        until_us: u64,
    },
    /// More than one LoRa packet carries.
    #[error("a {len}-byte frame does not fit in one LoRa packet (at most {max} bytes)")]
    FrameTooLarge {
        /// Bytes asked to send.
        len: usize,
        /// [`MAX_LORA_PAYLOAD`].
        max: usize,
    },
    /// A transmission was asked to start before a time the channel already moved past; the
    /// caller's clock went backwards, and collisions could no longer be judged.
    #[error("time went backwards: {now_us} µs is before {latest_us} µs")]
    TimeWentBackwards {
        /// The time given.
        now_us: u64,
        /// The latest time the channel had seen.
        latest_us: u64,
    },
}

/// A frame heard by one radio.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The radio that heard it.
    pub to: usize,
    /// The radio that sent it.
    pub from: usize,
    /// The frame, exactly as sent.
    pub frame: Vec<u8>,
    /// Received signal strength at `to`, dBm.
    pub rssi_dbm: i16,
    /// Signal-to-noise ratio at `to`, dB.
    pub snr_db: f32,
    /// When the last symbol arrived (the transmission's end), µs.
    pub at_us: u64,
}

/// What [`Channel::poll`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelEvent {
    /// A transmission ended: the sender may transmit again (an RNode then tells its host it
    /// is ready for the next frame).
    Transmitted {
        /// The sender.
        radio: usize,
        /// When the transmission started, µs.
        start_us: u64,
        /// When it ended, µs.
        end_us: u64,
    },
    /// A frame arrived intact at a radio.
    Delivered(Delivery),
}

/// Counters for one radio. Losses are counted at the radio that would have heard the frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RadioStats {
    /// Frames this radio transmitted.
    pub frames_sent: u64,
    /// Airtime of those frames, µs.
    pub airtime_us: u64,
    /// Frames this radio heard intact.
    pub frames_delivered: u64,
    /// Frames this radio would have heard, lost to an overlapping transmission.
    pub lost_to_collision: u64,
    /// Frames this radio would have heard, missed because it was transmitting itself.
    pub lost_to_half_duplex: u64,
    /// Frames that survived collisions and half duplex, lost to random loss.
    pub lost_at_random: u64,
}

#[derive(Debug, Clone)]
struct Transmission {
    /// Transmit order, to break ties between transmissions ending together.
    seq: u64,
    sender: usize,
    params: LoraParams,
    start_us: u64,
    end_us: u64,
    frame: Vec<u8>,
    /// Its events have been handed out; it stays only as a possible interferer.
    finished: bool,
}

impl Transmission {
    fn overlaps(&self, other: &Transmission) -> bool {
        self.start_us < other.end_us && other.start_us < self.end_us
    }

    fn on_air_at(&self, now_us: u64) -> bool {
        self.start_us <= now_us && now_us < self.end_us
    }
}

/// The shared channel. See the [module documentation](self) for the model.
#[derive(Debug, Clone)]
pub struct Channel {
    topology: Topology,
    config: ChannelConfig,
    /// Each radio's parameters; `None` while it is off.
    params: Vec<Option<LoraParams>>,
    stats: Vec<RadioStats>,
    rng: ChaCha8Rng,
    /// Transmissions on air, and finished ones that may still overlap one on air or a future
    /// one; in start order.
    transmissions: Vec<Transmission>,
    /// Events computed and not yet handed out.
    ready: VecDeque<ChannelEvent>,
    /// The latest `now_us` seen: no transmission may start before it.
    latest_us: u64,
    next_seq: u64,
}

impl Channel {
    /// A channel over `topology` where every radio is on with `params`.
    #[must_use]
    pub fn new(topology: Topology, params: LoraParams, config: ChannelConfig) -> Self {
        let radios = topology.radios();
        Self {
            topology,
            config,
            params: vec![Some(params); radios],
            stats: vec![RadioStats::default(); radios],
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            transmissions: Vec::new(),
            ready: VecDeque::new(),
            latest_us: 0,
            next_seq: 0,
        }
    }

    /// Number of radios.
    #[must_use]
    pub fn radios(&self) -> usize {
        self.topology.radios()
    }

    /// Who hears whom.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The settings this channel was built with.
    #[must_use]
    pub fn config(&self) -> ChannelConfig {
        self.config
    }

    /// A radio's parameters, or `None` while it is off (or does not exist).
    #[must_use]
    pub fn params(&self, radio: usize) -> Option<LoraParams> {
        self.params.get(radio).copied().flatten()
    }

    /// Retunes a radio, or turns it off with `None`. A frame already on air keeps the
    /// parameters it was sent with; a receiver is judged by its parameters when the frame
    /// ends (a radio that retuned or switched off meanwhile does not get it).
    ///
    /// # Errors
    ///
    /// [`ChannelError::UnknownRadio`].
    pub fn set_params(
        &mut self,
        radio: usize,
        params: Option<LoraParams>,
    ) -> Result<(), ChannelError> {
        self.topology.check(radio)?;
        self.params[radio] = params;
        Ok(())
    }

    /// Counters of one radio (all zero for a radio that does not exist).
    #[must_use]
    pub fn stats(&self, radio: usize) -> RadioStats {
        self.stats.get(radio).copied().unwrap_or_default()
    }

    /// Counters of every radio, by index.
    #[must_use]
    pub fn all_stats(&self) -> &[RadioStats] {
        &self.stats
    }

    /// Puts `frame` on air from `radio` at `now_us`; returns when the transmission ends.
    ///
    /// # Errors
    ///
    /// The radio does not exist or is off, is still transmitting (half duplex), the frame is
    /// longer than one LoRa packet, or `now_us` is earlier than a time already seen.
    pub fn transmit(
        &mut self,
        now_us: u64,
        radio: usize,
        frame: &[u8],
    ) -> Result<u64, ChannelError> {
        self.topology.check(radio)?;
        if now_us < self.latest_us {
            return Err(ChannelError::TimeWentBackwards {
                now_us,
                latest_us: self.latest_us,
            });
        }
        let params = self.params[radio].ok_or(ChannelError::RadioOff { radio })?;
        if frame.len() > MAX_LORA_PAYLOAD {
            return Err(ChannelError::FrameTooLarge {
                len: frame.len(),
                max: MAX_LORA_PAYLOAD,
            });
        }
        if let Some(until_us) = self.transmitting_until(radio, now_us) {
            return Err(ChannelError::AlreadyTransmitting { radio, until_us });
        }
        self.latest_us = now_us;
        let airtime = airtime_us(&params, frame.len());
        let end_us = now_us.saturating_add(airtime);
        self.transmissions.push(Transmission {
            seq: self.next_seq,
            sender: radio,
            params,
            start_us: now_us,
            end_us,
            frame: frame.to_vec(),
            finished: false,
        });
        self.next_seq += 1;
        let stats = &mut self.stats[radio];
        stats.frames_sent += 1;
        stats.airtime_us = stats.airtime_us.saturating_add(airtime);
        Ok(end_us)
    }

    /// Whether `radio` is transmitting at `now_us`.
    #[must_use]
    pub fn is_transmitting(&self, radio: usize, now_us: u64) -> bool {
        self.transmitting_until(radio, now_us).is_some()
    }

    /// Carrier sense: whether `radio` finds the channel busy at `now_us`, because it is
    /// transmitting itself or hears a transmission on its frequency in progress. A radio
    /// that is off senses nothing.
    #[must_use]
    pub fn is_busy(&self, radio: usize, now_us: u64) -> bool {
        self.busy_until_us(radio, now_us).is_some()
    }

    /// When the channel, as `radio` senses it at `now_us`, falls quiet again (assuming no one
    /// else starts meanwhile); `None` if it is quiet now.
    #[must_use]
    pub fn busy_until_us(&self, radio: usize, now_us: u64) -> Option<u64> {
        let own = self.transmitting_until(radio, now_us);
        let Some(listening) = self.params(radio) else {
            return own;
        };
        let heard = self
            .transmissions
            .iter()
            .filter(|t| t.on_air_at(now_us) && self.interferes_at(t, radio, &listening))
            .map(|t| t.end_us)
            .max();
        own.max(heard)
    }

    /// When [`Channel::poll`] has something next: the earliest end of a transmission on air,
    /// or now-ish if events are already waiting.
    #[must_use]
    pub fn next_event_us(&self) -> Option<u64> {
        if !self.ready.is_empty() {
            return Some(self.latest_us);
        }
        self.transmissions
            .iter()
            .filter(|t| !t.finished)
            .map(|t| t.end_us)
            .min()
    }

    /// The next event due at or before `now_us`: transmissions end in order of end time (then
    /// of transmit order), each reporting [`ChannelEvent::Transmitted`] followed by one
    /// [`ChannelEvent::Delivered`] per radio that heard it, in radio order.
    pub fn poll(&mut self, now_us: u64) -> Option<ChannelEvent> {
        self.latest_us = self.latest_us.max(now_us);
        if let Some(event) = self.ready.pop_front() {
            return Some(event);
        }
        let index = self
            .transmissions
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.finished && t.end_us <= now_us)
            .min_by_key(|(_, t)| (t.end_us, t.seq))
            .map(|(index, _)| index)?;
        self.finish(index);
        self.forget_old();
        self.ready.pop_front()
    }

    /// Transmissions remembered (on air, or finished and still a possible interferer): at
    /// most a few per radio.
    #[must_use]
    pub fn remembered(&self) -> usize {
        self.transmissions.len()
    }

    fn transmitting_until(&self, radio: usize, now_us: u64) -> Option<u64> {
        self.transmissions
            .iter()
            .find(|t| t.sender == radio && t.on_air_at(now_us))
            .map(|t| t.end_us)
    }

    /// Whether `t` is energy `radio`, tuned to `listening`, picks up: audible and on the same
    /// frequency. Different spreading factors still interfere here (LoRa's orthogonality
    /// between them is imperfect; treating them as colliding is the cautious choice).
    fn interferes_at(&self, t: &Transmission, radio: usize, listening: &LoraParams) -> bool {
        t.sender != radio
            && self.topology.link(t.sender, radio).is_some()
            && t.params.frequency_hz == listening.frequency_hz
    }

    /// Computes the events of the transmission at `index`, in radio order.
    fn finish(&mut self, index: usize) {
        self.transmissions[index].finished = true;
        let t = self.transmissions[index].clone();
        self.ready.push_back(ChannelEvent::Transmitted {
            radio: t.sender,
            start_us: t.start_us,
            end_us: t.end_us,
        });
        for to in 0..self.radios() {
            let Some(link) = self.topology.link(t.sender, to) else {
                continue;
            };
            let Some(listening) = self.params[to] else {
                continue; // off: hears nothing, loses nothing
            };
            if !same_modulation(&t.params, &listening) {
                continue; // tuned elsewhere: not a frame it could have decoded
            }
            let verdict = self.judge(&t, to, link);
            let stats = &mut self.stats[to];
            match verdict {
                Verdict::HalfDuplex => stats.lost_to_half_duplex += 1,
                Verdict::Collision => stats.lost_to_collision += 1,
                Verdict::Random => stats.lost_at_random += 1,
                Verdict::Heard => {
                    stats.frames_delivered += 1;
                    self.ready.push_back(ChannelEvent::Delivered(Delivery {
                        to,
                        from: t.sender,
                        frame: t.frame.clone(),
                        rssi_dbm: link.rssi_dbm,
                        snr_db: link.snr_db,
                        at_us: t.end_us,
                    }));
                }
            }
        }
    }

    fn judge(&mut self, t: &Transmission, to: usize, link: Link) -> Verdict {
        let others = self
            .transmissions
            .iter()
            .filter(|u| u.seq != t.seq && u.overlaps(t));
        let mut collided = false;
        for u in others {
            if u.sender == to {
                return Verdict::HalfDuplex;
            }
            if !collided {
                collided = self.destroys(u, t, to, link);
            }
        }
        if collided {
            return Verdict::Collision;
        }
        if self.random_loss() {
            return Verdict::Random;
        }
        Verdict::Heard
    }

    /// Whether interferer `u` destroys `t` at receiver `to`, which hears `t` over `link`.
    fn destroys(&self, u: &Transmission, t: &Transmission, to: usize, link: Link) -> bool {
        if u.params.frequency_hz != t.params.frequency_hz {
            return false;
        }
        let Some(interference) = self.topology.link(u.sender, to) else {
            return false;
        };
        match self.config.capture_threshold_db {
            None => true,
            Some(threshold) => {
                f32::from(link.rssi_dbm) - f32::from(interference.rssi_dbm) < threshold
            }
        }
    }

    fn random_loss(&mut self) -> bool {
        let loss = self.config.loss;
        if loss.is_nan() || loss <= 0.0 {
            return false;
        }
        if loss >= 1.0 {
            return true;
        }
        // loss * 2^64, compared against a uniform u64: exact to 2^-64.
        let threshold = (loss * 18_446_744_073_709_551_616.0) as u64;
        self.rng.next_u64() < threshold
    }

    /// Drops finished transmissions that can no longer overlap anything: ones that ended
    /// before every transmission still on air began, and before the latest time seen (no
    /// future transmission can start earlier than that).
    fn forget_old(&mut self) {
        let horizon = self
            .transmissions
            .iter()
            .filter(|t| !t.finished)
            .map(|t| t.start_us)
            .min()
            .unwrap_or(u64::MAX)
            .min(self.latest_us);
        self.transmissions
            .retain(|t| !t.finished || t.end_us > horizon);
    }
}

enum Verdict {
    Heard,
    HalfDuplex,
    Collision,
    Random,
}

/// Whether a receiver tuned to `listening` can decode a frame sent with `sent`.
fn same_modulation(sent: &LoraParams, listening: &LoraParams) -> bool {
    sent.frequency_hz == listening.frequency_hz
        && sent.bandwidth_hz == listening.bandwidth_hz
        && sent.spreading_factor == listening.spreading_factor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(topology: Topology) -> Channel {
        Channel::new(topology, LoraParams::sf7(), ChannelConfig::default())
    }

    fn drain(channel: &mut Channel, now_us: u64) -> Vec<ChannelEvent> {
        std::iter::from_fn(|| channel.poll(now_us)).collect()
    }

    fn deliveries(events: &[ChannelEvent]) -> Vec<(usize, usize, Vec<u8>)> {
        events
            .iter()
            .filter_map(|event| match event {
                ChannelEvent::Delivered(d) => Some((d.from, d.to, d.frame.clone())),
                ChannelEvent::Transmitted { .. } => None,
            })
            .collect()
    }

    #[test]
    fn everyone_in_range_hears_a_lone_frame_at_its_end() {
        let mut channel = channel(Topology::all_hear_all(3, Link::default()));
        let end = channel.transmit(1_000, 0, b"hi").unwrap();
        assert_eq!(end, 1_000 + airtime_us(&LoraParams::sf7(), 2));
        assert!(channel.poll(end - 1).is_none());
        let events = drain(&mut channel, end);
        assert_eq!(
            events[0],
            ChannelEvent::Transmitted {
                radio: 0,
                start_us: 1_000,
                end_us: end
            }
        );
        assert_eq!(
            deliveries(&events),
            vec![(0, 1, b"hi".to_vec()), (0, 2, b"hi".to_vec())]
        );
        let ChannelEvent::Delivered(d) = &events[1] else {
            panic!("expected a delivery");
        };
        assert_eq!((d.rssi_dbm, d.snr_db, d.at_us), (-90, 7.5, end));
        assert_eq!(channel.stats(0).frames_sent, 1);
        assert_eq!(channel.stats(1).frames_delivered, 1);
        assert_eq!(channel.next_event_us(), None);
        assert_eq!(channel.remembered(), 0);
    }

    #[test]
    fn overlapping_frames_collide_at_a_receiver_that_hears_both() {
        let mut channel = channel(Topology::all_hear_all(3, Link::default()));
        let end_a = channel.transmit(0, 0, &[0xAA; 50]).unwrap();
        let end_b = channel.transmit(10_000, 1, &[0xBB; 50]).unwrap();
        let events = drain(&mut channel, end_a.max(end_b));
        // Radio 2 hears both and gets neither; radios 0 and 1 were each transmitting during
        // the other's frame, so they lose it to half duplex.
        assert!(deliveries(&events).is_empty());
        assert_eq!(channel.stats(2).lost_to_collision, 2);
        assert_eq!(channel.stats(0).lost_to_half_duplex, 1);
        assert_eq!(channel.stats(1).lost_to_half_duplex, 1);
    }

    #[test]
    fn frames_that_only_touch_do_not_collide() {
        let mut channel = channel(Topology::all_hear_all(3, Link::default()));
        let end_a = channel.transmit(0, 0, b"first").unwrap();
        let first = drain(&mut channel, end_a);
        let end_b = channel.transmit(end_a, 1, b"second").unwrap();
        let second = drain(&mut channel, end_b);
        assert_eq!(deliveries(&first).len(), 2);
        assert_eq!(deliveries(&second).len(), 2);
    }

    #[test]
    fn a_transmitting_radio_cannot_start_another_frame() {
        let mut channel = channel(Topology::all_hear_all(2, Link::default()));
        let end = channel.transmit(0, 0, b"one").unwrap();
        assert!(channel.is_transmitting(0, 1));
        assert_eq!(
            channel.transmit(1, 0, b"two"),
            Err(ChannelError::AlreadyTransmitting {
                radio: 0,
                until_us: end
            })
        );
        // Once its frame ended, it may.
        assert!(!channel.is_transmitting(0, end));
        assert!(channel.transmit(end, 0, b"two").is_ok());
    }

    #[test]
    fn half_duplex_a_radio_misses_what_arrives_while_it_transmits() {
        // 0 and 2 cannot hear each other (line 0-1-2), so there is no collision at 1's
        // neighbours... but 1 itself transmits while 0's frame is on air.
        let mut channel = channel(Topology::line(3, Link::default()));
        let long = channel.transmit(0, 0, &[1; 200]).unwrap();
        let short_end = channel.transmit(50_000, 1, b"x").unwrap();
        assert!(short_end < long);
        let events = drain(&mut channel, long);
        // 1's frame reaches 2 (2 hears only 1) and 0 (which is transmitting: lost).
        assert_eq!(deliveries(&events), vec![(1, 2, b"x".to_vec())]);
        assert_eq!(channel.stats(0).lost_to_half_duplex, 1);
        assert_eq!(channel.stats(1).lost_to_half_duplex, 1);
    }

    #[test]
    fn line_topology_hidden_terminals_collide_in_the_middle() {
        // 0 and 2 cannot hear each other: carrier sense does not help them, and their
        // frames destroy each other at 1. The classic hidden-terminal problem.
        let mut channel = channel(Topology::line(3, Link::default()));
        assert!(!channel.is_busy(2, 0));
        channel.transmit(0, 0, b"from zero").unwrap();
        assert!(!channel.is_busy(2, 1), "2 cannot hear 0");
        assert!(channel.is_busy(1, 1), "1 hears 0");
        channel.transmit(1, 2, b"from two").unwrap();
        let events = drain(&mut channel, u64::MAX);
        assert!(deliveries(&events).is_empty());
        assert_eq!(channel.stats(1).lost_to_collision, 2);
        assert_eq!(
            channel.stats(0),
            RadioStats {
                frames_sent: 1,
                airtime_us: airtime_us(&LoraParams::sf7(), 9),
                ..RadioStats::default()
            }
        );
    }

    #[test]
    fn line_topology_only_neighbours_hear() {
        let mut channel = channel(Topology::line(4, Link::default()));
        let end = channel.transmit(0, 1, b"mid").unwrap();
        let events = drain(&mut channel, end);
        assert_eq!(
            deliveries(&events),
            vec![(1, 0, b"mid".to_vec()), (1, 2, b"mid".to_vec())]
        );
        assert_eq!(channel.stats(3), RadioStats::default());
    }

    #[test]
    fn carrier_sense_reports_until_when() {
        let mut channel = channel(Topology::all_hear_all(2, Link::default()));
        let end = channel.transmit(0, 0, b"busy").unwrap();
        assert_eq!(channel.busy_until_us(1, 0), Some(end));
        assert_eq!(channel.busy_until_us(0, 0), Some(end), "own transmission");
        assert_eq!(channel.busy_until_us(1, end), None);
        channel.set_params(1, None).unwrap();
        assert!(!channel.is_busy(1, 0), "a radio that is off senses nothing");
    }

    #[test]
    fn radios_that_are_off_or_tuned_elsewhere_hear_nothing() {
        let mut channel = channel(Topology::all_hear_all(4, Link::default()));
        channel.set_params(1, None).unwrap();
        channel.set_params(2, Some(LoraParams::sf12())).unwrap();
        assert_eq!(
            channel.transmit(0, 1, b"x"),
            Err(ChannelError::RadioOff { radio: 1 })
        );
        let end = channel.transmit(0, 0, b"x").unwrap();
        let events = drain(&mut channel, end);
        assert_eq!(deliveries(&events), vec![(0, 3, b"x".to_vec())]);
        assert_eq!(channel.stats(1), RadioStats::default());
        assert_eq!(channel.stats(2), RadioStats::default());
    }

    #[test]
    fn a_different_spreading_factor_on_the_same_frequency_still_interferes() {
        let mut channel = channel(Topology::all_hear_all(3, Link::default()));
        channel.set_params(1, Some(LoraParams::sf12())).unwrap();
        channel.transmit(0, 0, b"sf7").unwrap();
        let end = channel.transmit(0, 1, b"sf12").unwrap();
        drain(&mut channel, end);
        assert_eq!(channel.stats(2).lost_to_collision, 1);
    }

    #[test]
    fn capture_lets_a_much_stronger_frame_through() {
        let mut topology = Topology::isolated(3);
        let strong = Link {
            rssi_dbm: -60,
            snr_db: 10.0,
        };
        let weak = Link {
            rssi_dbm: -100,
            snr_db: -5.0,
        };
        topology.set_link(0, 2, Some(strong)).unwrap();
        topology.set_link(1, 2, Some(weak)).unwrap();
        let config = ChannelConfig {
            capture_threshold_db: Some(6.0),
            ..ChannelConfig::default()
        };
        let mut channel = Channel::new(topology, LoraParams::sf7(), config);
        channel.transmit(0, 0, b"strong").unwrap();
        channel.transmit(100, 1, b"weak").unwrap();
        let events = drain(&mut channel, u64::MAX);
        assert_eq!(deliveries(&events), vec![(0, 2, b"strong".to_vec())]);
        assert_eq!(channel.stats(2).lost_to_collision, 1);
    }

    #[test]
    fn errors_are_typed() {
        let mut channel = channel(Topology::all_hear_all(2, Link::default()));
        assert_eq!(
            channel.transmit(0, 5, b"x"),
            Err(ChannelError::UnknownRadio {
                radio: 5,
                radios: 2
            })
        );
        assert_eq!(
            channel.transmit(0, 0, &[0; 256]),
            Err(ChannelError::FrameTooLarge { len: 256, max: 255 })
        );
        let _ = channel.poll(1_000);
        assert_eq!(
            channel.transmit(999, 0, b"x"),
            Err(ChannelError::TimeWentBackwards {
                now_us: 999,
                latest_us: 1_000
            })
        );
        assert!(channel.set_params(2, None).is_err());
        let mut topology = Topology::isolated(2);
        assert!(topology.set_link(0, 0, Some(Link::default())).is_err());
        assert!(topology.connect(0, 2, Link::default()).is_err());
    }

    /// A busy little scene: radios in a line transmitting at pseudo-random times.
    fn scene(seed: u64, loss: f64) -> (Vec<ChannelEvent>, Vec<RadioStats>) {
        let config = ChannelConfig {
            seed,
            loss,
            capture_threshold_db: None,
        };
        let mut channel = Channel::new(
            Topology::line(5, Link::default()),
            LoraParams::sf7(),
            config,
        );
        let mut events = Vec::new();
        let mut now = 0u64;
        for step in 0u64..400 {
            now += 7_000 + (step * 7_919) % 23_000;
            events.extend(std::iter::from_fn(|| channel.poll(now)));
            let radio = usize::try_from((step * 31) % 5).unwrap();
            if !channel.is_busy(radio, now) || step % 3 == 0 {
                let _ = channel.transmit(now, radio, &step.to_be_bytes());
            }
            // On air: at most one per radio; finished: only those that may still overlap.
            assert!(channel.remembered() <= 15, "memory stays bounded");
        }
        events.extend(std::iter::from_fn(|| channel.poll(u64::MAX)));
        (events, channel.all_stats().to_vec())
    }

    #[test]
    fn a_seed_reproduces_a_run_exactly() {
        let (events_a, stats_a) = scene(7, 0.2);
        let (events_b, stats_b) = scene(7, 0.2);
        assert_eq!(events_a, events_b);
        assert_eq!(stats_a, stats_b);
        let random: u64 = stats_a.iter().map(|s| s.lost_at_random).sum();
        let delivered: u64 = stats_a.iter().map(|s| s.frames_delivered).sum();
        assert!(
            random > 0 && delivered > random,
            "{random} lost of {delivered}"
        );
        // Another seed loses other frames; collisions and half duplex do not depend on it.
        let (events_c, stats_c) = scene(8, 0.2);
        assert_ne!(events_a, events_c);
        for (a, c) in stats_a.iter().zip(&stats_c) {
            assert_eq!(a.lost_to_half_duplex, c.lost_to_half_duplex);
            assert_eq!(
                a.frames_delivered + a.lost_at_random,
                c.frames_delivered + c.lost_at_random
            );
        }
    }

    #[test]
    fn every_frame_is_accounted_for() {
        let (events, stats) = scene(3, 0.1);
        let delivered = deliveries(&events).len() as u64;
        assert_eq!(
            delivered,
            stats.iter().map(|s| s.frames_delivered).sum::<u64>()
        );
        // In a line of 5, radios 0 and 4 have one neighbour, the rest two.
        let expected: u64 = stats
            .iter()
            .enumerate()
            .map(|(radio, s)| s.frames_sent * if radio == 0 || radio == 4 { 1 } else { 2 })
            .sum();
        let accounted: u64 = stats
            .iter()
            .map(|s| {
                s.frames_delivered + s.lost_to_collision + s.lost_to_half_duplex + s.lost_at_random
            })
            .sum();
        assert_eq!(accounted, expected);
    }

    #[test]
    fn certain_loss_loses_everything() {
        let config = ChannelConfig {
            loss: 1.0,
            ..ChannelConfig::default()
        };
        let mut channel = Channel::new(
            Topology::all_hear_all(2, Link::default()),
            LoraParams::sf7(),
            config,
        );
        let end = channel.transmit(0, 0, b"x").unwrap();
        assert!(deliveries(&drain(&mut channel, end)).is_empty());
        assert_eq!(channel.stats(1).lost_at_random, 1);
    }
}
