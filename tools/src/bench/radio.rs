//! `cairn-bench radio`: what Cairn costs on a LoRa channel, measured on the real protocol code.
//!
//! Two radios (Alice's and Bob's) share one [`Channel`] in virtual time: every radio hears
//! every other, frames collide when they overlap, a radio that transmits hears nothing. Each
//! radio runs what `cairn run --serial PATH --radio rnode` runs, minus the serial port and
//! the clock: one [`FrameLink`] (beacons, Noise hop sessions, ARQ, pacing, duty cycle), a
//! store ([`MemStore`]), one [`SyncSession`] per peer in reach, and the application side of
//! the node's core: Alice seals texts for Bob with the node's sealing and payload format
//! (real identities, paired with the node's pairing state machine, real [`PairKeys`]); Bob
//! opens what is delivered with his keys and acknowledges it, which publishes the receipt.
//!
//! ## What mirrors what
//!
//! The daemon's glue (`node/src/daemon/radio.rs`, `link.rs`, `shared.rs`, `core.rs`) is tied
//! to tokio and to the node's LMDB-backed `Shared`, so it cannot run in virtual time; [`Node`]
//! repeats it step for step: `PeerUp` starts a session (initiator iff the link was, MTU
//! `frame_payload().max(MIN_MTU)`, 60 min stall timeout, the node's compactor) and wakes the
//! node's links (`link_up`); sync frames go into the link in passes of 8 while
//! `wants_messages`; link messages go to `handle_frame`; a session that fails is retried
//! after 10 s; the core pushes a new message to its recipient and a receipt to its sender;
//! every store change is logged with the peer that already has it, and on the next pass each
//! session takes its pushes and runs a round only for changes its peer lacks.
//! [`DeliveryMode::Direct`] is that node, as committed; [`DeliveryMode::Reconcile`] is the
//! node before direct delivery (every store change starts a round on every link), for
//! comparison. The core's work (sealing, opening, receipts) happens at once in virtual time,
//! where the daemon's core task would take a moment.
//!
//! ## The event loop
//!
//! Time is in milliseconds since power-on (the sync sessions see it as a Unix time from
//! [`EPOCH_MS`]); the channel counts microseconds, and every transmission starts on a whole
//! millisecond, as the link paces itself in milliseconds. At each instant: channel deliveries
//! go to `handle_frame`, timers that are due fire, link events and sync output are handled,
//! and the firmware takes the link's next frame when it is ready (one frame at a time, as
//! RNode's flow control allows). By default the firmware listens before it talks, as RNode
//! does (and `cairn-vradio` models): a busy channel means waiting for it to clear plus 0-15
//! CSMA slots. Then time jumps to the earliest deadline anyone asked for.
//!
//! A link that reports a deadline already past (something due that must wait for the
//! channel or the duty cycle) would make the daemon wake again and again until it can go;
//! here such a link is looked at again at the earliest instant it could transmit anything
//! (after its own frame, after its duty cycle frees room for its smallest frame, computed
//! on a copy of its budget fed the same records, else a millisecond later), and
//! `stale_deadline_wakeups` counts those wake-ups.
//!
//! ## Determinism
//!
//! Identities, pairing, link addresses and slots, session salts and the channel all draw
//! from the seed; nothing reads a clock. The same seed gives the same JSON.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use anyhow::{bail, Context};
use cairn_firmware_bridge::channel::{
    Channel, ChannelConfig, ChannelEvent, Delivery as Heard, Link, Topology,
};
use cairn_firmware_bridge::lora::{airtime_us, DutyCycle, DutyCycleConfig};
use cairn_firmware_bridge::rnode_device::RnodePhy;
use cairn_firmware_bridge::{LoraParams, Medium};
use cairn_node::contact::{DisplayName, Pairing};
use cairn_node::direct::{
    Direct, DirectContact, COPY_BUDGET, DIRECT_HEADER_LEN, KIND_TEXT, MESSAGE_LIFETIME_SECS,
    PAYLOAD_V1, SHORT_TEXT,
};
use cairn_node::home::Config;
use cairn_node::identity::Identity;
use cairn_node::seal::{period_of, MailboxKey, PairKeys, SealedHeader};
use cairn_sync::codec;
use cairn_sync::envelope::{Envelope, Item, ItemId, Priority};
use cairn_sync::policy::NodePolicy;
use cairn_sync::session::{self, Role, SessionConfig, SyncEvent, SyncSession};
use cairn_sync::store::{MemStore, Store, WriteBatch, WriteOp};
use cairn_sync::time::Timestamp;
use cairn_sync::wire::{Message, MIN_MTU};
use cairn_transports::hop::{NetworkKey, DATAGRAM_HEADER_LEN, TAG_LEN};
use cairn_transports::link::arq::ARQ_HEADER_LEN;
use cairn_transports::link::frame::{Addr, LinkFrame, BEACON_LEN, TRANSPORT_OVERHEAD};
use cairn_transports::link::{FrameLink, LinkConfig, LinkEvent, LinkStats, FRAME_OVERHEAD};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rand_core_06::SeedableRng as _;
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Texts sent one at a time in the steady-state run.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Texts Alice queues at once in the throughput run (0 skips it).
    #[arg(long, default_value_t = 2000)]
    pub flood: usize,
    /// Virtual hours the throughput run lasts; the last full hour is reported.
    #[arg(long, default_value_t = 3)]
    pub hours: u64,
    /// Bytes of every text (UTF-8).
    #[arg(long, default_value_t = 100)]
    pub text_len: usize,
    /// Spreading factors to measure at (125 kHz, CR 4/5, EU868 g1), comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [7u8, 12])]
    pub sf: Vec<u8>,
    /// How messages travel: `direct` (the node now: pushed to a peer in reach, texts
    /// compacted) or `reconcile` (reconciliation rounds only, the node before direct delivery).
    #[arg(long, default_value = "direct")]
    pub delivery: DeliveryMode,
    /// Skip the steady-state run with the other delivery, which the figures are compared with.
    #[arg(long)]
    pub no_compare: bool,
    /// Seed of everything random: identities, pairing, link addresses and slots, salts.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print every frame on air, and what the nodes saw, on stderr.
    #[arg(long)]
    pub trace: bool,
    /// Model a firmware that transmits the moment it gets a frame, without RNode's carrier
    /// sense and random back-off.
    #[arg(long)]
    pub no_csma: bool,
    /// Print JSON (the only output mode; accepted for symmetry with other benchmarks).
    #[arg(long)]
    pub json: bool,
}

/// How a node gets a message to a peer it is linked to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// As the node does now: new messages and receipts are pushed to the peer they concern
    /// (`SyncSession::push`), texts to their recipient in compact form (`cairn_node::direct`);
    /// a store change starts a round only with peers that lack it.
    Direct,
    /// Reconciliation rounds only, started by every store change on every link: what the
    /// node did before direct delivery.
    Reconcile,
}

impl DeliveryMode {
    fn other(self) -> Self {
        match self {
            Self::Direct => Self::Reconcile,
            Self::Reconcile => Self::Direct,
        }
    }
}

/// One measurement at one set of radio parameters.
#[derive(Clone, Debug)]
pub struct Settings {
    pub params: LoraParams,
    pub delivery: DeliveryMode,
    /// Texts in the steady-state run.
    pub messages: usize,
    /// Texts queued at once in the throughput run; 0 skips it.
    pub flood: usize,
    /// Hours the throughput run lasts.
    pub hours: u64,
    pub text_len: usize,
    pub seed: u64,
    /// Print every frame and event on stderr.
    pub trace: bool,
    /// The firmware listens before it talks (RNode's CSMA).
    pub csma: bool,
}

impl Settings {
    /// The default run at `params`.
    #[must_use]
    pub fn new(params: LoraParams) -> Self {
        Self {
            params,
            delivery: DeliveryMode::Direct,
            messages: 20,
            flood: 2000,
            hours: 3,
            text_len: 100,
            seed: 1,
            trace: false,
            csma: true,
        }
    }
}

/// Virtual power-on: 2026-11-02T00:00:00Z, so the sessions and seals see a plausible date
/// and a day's worth of virtual time stays within one key period.
pub const EPOCH_MS: u64 = 1_793_577_600_000;

/// Largest frame Cairn puts on a radio (the daemon's `MAX_RADIO_FRAME`).
const MAX_FRAME: usize = 255;
/// The daemon's sync frames per pass into a peer's stream (`SYNC_FRAMES_PER_PASS`).
const SYNC_FRAMES_PER_PASS: usize = 8;
/// The daemon's wait before a failed session is tried again (`STANDBY_RETRY_MS`).
const STANDBY_RETRY_MS: u64 = 10_000;
/// The daemon's stall timeout of sync sessions on a radio.
const RADIO_STALL_MS: u64 = 60 * 60_000;
/// Frames the core seals and stores per transaction (`Core::seal_queued`'s batch).
const SEAL_BATCH: usize = 512;
/// Random CSMA back-off of the firmware, in slots (`cairn-vradio`'s RNode model).
const CSMA_WINDOWS: u64 = 16;
/// Changes a node remembers for sessions that have not looked yet (`shared::MAX_CHANGES`).
const MAX_CHANGES: usize = 4096;
/// Pushes waiting per peer in `Shared`; past this the oldest are left to reconciliation.
const MAX_PUSHES_PER_PEER: usize = 1024;

/// LXMF's figures, measured elsewhere (not by this benchmark), for scale.
const LXMF_OVERHEAD_BYTES: u64 = 111;
const LXMF_WIRE_BYTES_PER_100B: u64 = 290;
/// The issue's target for the bytes around a text in its frame.
const TARGET_OVERHEAD_BYTES: u64 = 32;

/// Runs every spreading factor asked for and returns the one JSON object.
///
/// # Errors
///
/// A run that does not finish (a message never delivered, a session that never comes up),
/// or a setup step of the node (identities, pairing, sealing) that fails.
pub fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let mut all_ok = true;
    let mut within_budget = true;
    let mut by_sf = serde_json::Map::new();
    let mut meshtastic = serde_json::Value::Null;
    for &sf in &args.sf {
        if !(7..=12).contains(&sf) {
            bail!("--sf {sf}: LoRa spreading factors run from 7 to 12");
        }
        let params = LoraParams {
            spreading_factor: sf,
            ..LoraParams::sf7()
        };
        let settings = Settings {
            params,
            delivery: args.delivery,
            messages: args.messages,
            flood: args.flood,
            hours: args.hours,
            text_len: args.text_len,
            seed: args.seed,
            trace: args.trace,
            csma: !args.no_csma,
        };
        let report = measure(&settings)?;
        if meshtastic.is_null() {
            meshtastic = through_meshtastic(&report.steady_state);
        }
        all_ok &= report.ok;
        within_budget &= report.duty_cycle.within_budget;
        let mut value = serde_json::to_value(&report)?;
        if !args.no_compare && args.messages > 0 {
            let other = Settings {
                delivery: args.delivery.other(),
                flood: 0,
                ..settings.clone()
            };
            let compared = measure(&other)?;
            all_ok &= compared.ok;
            if let serde_json::Value::Object(map) = &mut value {
                map.insert(
                    format!("steady_state_with_{}_delivery", other.delivery.name()),
                    serde_json::to_value(&compared.steady_state)?,
                );
            }
        }
        by_sf.insert(format!("sf{sf}"), value);
    }
    let mut out = serde_json::Map::new();
    out.insert("benchmark".into(), "radio".into());
    out.insert("ok".into(), all_ok.into());
    out.insert("duty_cycle_within_budget".into(), within_budget.into());
    out.insert("seed".into(), args.seed.into());
    out.insert("text_bytes".into(), args.text_len.into());
    out.insert("delivery".into(), serde_json::to_value(args.delivery)?);
    out.insert(
        "model".into(),
        serde_json::json!({
            "radios": 2,
            "topology": "all hear all, -90 dBm, no random loss, no capture effect",
            "lora": "125 kHz, CR 4/5, 8-symbol preamble, explicit header, CRC on",
            "firmware": if args.no_csma {
                "one frame at a time, sent the moment the link hands it over"
            } else {
                "one frame at a time; listens before talking: a busy channel means waiting for it to clear plus 0-15 CSMA slots (RNode)"
            },
            "duty_cycle": "1% over a sliding hour (36 s), enforced by the link",
            "max_frame_bytes": MAX_FRAME,
            "stores": "MemStore",
            "core_latency": "none: sealing, opening and receipts happen in the instant their trigger does",
        }),
    );
    out.insert("target_overhead_bytes".into(), TARGET_OVERHEAD_BYTES.into());
    out.insert("text_through_meshtastic".into(), meshtastic);
    out.insert(
        "references_measured_elsewhere".into(),
        serde_json::json!({
            "lxmf_overhead_bytes": LXMF_OVERHEAD_BYTES,
            "lxmf_wire_bytes_per_100b_message": LXMF_WIRE_BYTES_PER_100B,
            "note": "LXMF figures are reference constants from its documentation and the issue, not measured here",
        }),
    );
    for (sf, report) in by_sf {
        out.insert(sf, report);
    }
    Ok(serde_json::Value::Object(out))
}

/// What a stock Meshtastic device adds on air to a text that went out as one frame: the
/// firmware's 16-byte packet header and the `Data` message wrapping our frame (port, payload,
/// the bitfield the firmware sets), at LongFast, the default preset. Null when the text took
/// more than one frame.
fn through_meshtastic(steady: &SteadyReport) -> serde_json::Value {
    use cairn_firmware_bridge::meshtastic::{long_fast_eu868, on_air_len};
    if steady.messages == 0 || steady.frames_per_message != 1.0 {
        return serde_json::Value::Null;
    }
    let frame = steady.bytes_on_air_per_message.round() as usize;
    let on_air = on_air_len(frame);
    serde_json::json!({
        "frame_bytes": frame,
        "on_air_bytes": on_air,
        "meshtastic_overhead_bytes": on_air - frame,
        "airtime_ms_long_fast": airtime_us(&long_fast_eu868(), on_air) as f64 / 1e3,
        "note": "computed from the firmware's packet layout (as the emulated device builds it), not measured on a device",
    })
}

impl DeliveryMode {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Reconcile => "reconcile",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reports

/// Everything measured at one set of radio parameters.
#[derive(Clone, Debug, Serialize)]
pub struct SfReport {
    pub spreading_factor: u8,
    pub bandwidth_hz: u32,
    /// Airtime of one bare LoRa packet of `text_len` bytes, ms.
    pub airtime_ms_bare_text_packet: f64,
    /// Airtime of a largest (255-byte) frame, ms.
    pub airtime_ms_max_frame: f64,
    pub setup: SetupReport,
    pub steady_state: SteadyReport,
    pub throughput: Option<ThroughputReport>,
    /// Every airtime figure of every radio over every run here, against the 36 s budget.
    pub duty_cycle: DutyReport,
    /// Every steady-state message delivered exactly once with its receipt back, and no
    /// message delivered twice in the throughput run. (The duty cycle is judged apart, in
    /// [`DutyReport::within_budget`].)
    pub ok: bool,
}

/// From power-on until the sessions are up and the first sync round has completed.
#[derive(Clone, Debug, Serialize)]
pub struct SetupReport {
    pub bytes_on_air: u64,
    pub airtime_ms: f64,
    pub frames: usize,
    pub virtual_ms: u64,
    /// Bytes by kind of frame and sync message, per radio.
    pub bytes_by_kind: Vec<Entry>,
    /// The same, until both sessions are idle and nothing but beacons is heard (the store
    /// change that `link_up` announces runs a second round).
    pub until_idle: Totals,
    pub until_idle_bytes_by_kind: Vec<Entry>,
    /// Each side's `Hello`, field by field (the initiator's opens round 0 with a summary).
    pub hello_fields: Vec<Entry>,
}

/// Frames, bytes and airtime of a stretch of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub frames: usize,
    pub bytes_on_air: u64,
    pub airtime_ms: f64,
    pub virtual_ms: u64,
}

/// A named share of bytes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Entry {
    pub what: String,
    pub bytes: f64,
}

/// One text at a time over an idle link.
#[derive(Clone, Debug, Serialize)]
pub struct SteadyReport {
    pub delivery: DeliveryMode,
    pub messages: usize,
    pub delivered_once: usize,
    pub receipts_back: usize,
    /// Averages per message, all frames of both radios (beacons included, see below).
    pub bytes_on_air_per_message: f64,
    pub bytes_on_air_incl_receipt: f64,
    /// Until both sessions are idle again (trailing acknowledgements and rounds).
    pub bytes_on_air_until_idle: f64,
    pub airtime_ms_per_message: f64,
    pub airtime_ms_incl_receipt: f64,
    pub airtime_ms_until_idle: f64,
    pub frames_per_message: f64,
    pub frames_incl_receipt: f64,
    pub frames_until_idle: f64,
    /// Beacon bytes inside the windows above, per message (periodic, not caused by it).
    pub beacon_bytes_per_message_until_idle: f64,
    pub latency_ms_to_delivery: f64,
    pub latency_ms_to_receipt: f64,
    /// Bytes on air of the frame(s) that carried the text, minus the text.
    pub message_frame_overhead_bytes: Option<f64>,
    pub message_frame_overhead_min_max: [i64; 2],
    /// The same without other sync messages that shared those frames (a round's `Open`,
    /// `Done`...): the bytes around the text alone.
    pub message_frame_overhead_excluding_other_messages: Option<f64>,
    /// Where those bytes go, layer by layer (first message; computed from the frames heard).
    pub message_frame_breakdown: Vec<Entry>,
    /// The same for the frame(s) that carried the receipt back to Alice.
    pub receipt_frame_bytes: Option<f64>,
    pub receipt_frame_breakdown: Vec<Entry>,
    /// Every byte from originate until idle, per message, by direction and kind.
    pub bytes_by_kind_until_idle: Vec<Entry>,
    /// The frames of the first message, in order.
    pub first_message_frames: Vec<FrameNote>,
    /// Between messages the run waits until every radio has used at most a quarter of its
    /// duty-cycle budget, so that no message waits for the duty cycle.
    pub duty_cycle_waits_in_windows: u64,
    pub arq_retransmissions: u64,
    pub frames_lost_to_collision: u64,
    pub frames_lost_to_half_duplex: u64,
    pub sync_sessions_ended: u64,
    pub stale_deadline_wakeups: u64,
}

/// One frame on air, for the reader.
#[derive(Clone, Debug, Serialize)]
pub struct FrameNote {
    pub at_ms: u64,
    pub from: String,
    pub bytes: usize,
    pub airtime_ms: f64,
    pub kind: String,
    /// Sync frames this frame completed at the receiver, message by message.
    pub carries: Vec<String>,
}

/// Alice queues many texts at once; the duty cycle decides.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    pub queued: usize,
    pub hours: u64,
    /// Delivered to Bob in the last full hour.
    pub messages_per_hour: usize,
    pub delivered_per_hour: Vec<usize>,
    pub receipts_per_hour: Vec<usize>,
    pub delivered_total: usize,
    pub duplicate_deliveries: usize,
    /// floor(36 s / airtime of a bare LoRa packet of the text's length): the most such
    /// payloads one radio could ever send in an hour at 1%.
    pub physical_bound_per_hour: u64,
    pub ratio_to_bound: f64,
    /// Airtime each radio used in the last hour, s (the budget is 36 s).
    pub airtime_s_last_hour: BTreeMap<String, f64>,
    pub bytes_on_air_last_hour: BTreeMap<String, u64>,
    /// Bytes in the last hour by direction and kind.
    pub bytes_by_kind_last_hour: Vec<Entry>,
    pub sync_sessions_ended: u64,
    pub session_end_reasons: Vec<String>,
    pub arq_retransmissions: u64,
    pub frames_lost_to_collision: u64,
    pub frames_lost_to_half_duplex: u64,
    pub duty_cycle_waits: u64,
    pub stale_deadline_wakeups: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DutyReport {
    pub budget_s_per_hour: f64,
    /// Most airtime any radio used within any sliding hour, s, per radio, by when its
    /// frames went on air.
    pub max_airtime_s_any_hour: BTreeMap<String, f64>,
    /// The same by when the link handed each frame to the firmware, which is when the
    /// link counts it against its budget (a firmware that listens before talking sends
    /// later).
    pub max_airtime_s_any_hour_by_handover: BTreeMap<String, f64>,
    pub within_budget: bool,
    pub channel_refusals: u64,
}

/// Measures the steady state, the throughput (if `flood > 0`) and the setup cost.
///
/// # Errors
///
/// As [`run`].
pub fn measure(settings: &Settings) -> anyhow::Result<SfReport> {
    let budget = DutyCycleConfig::default().max_airtime_us;
    let mut duty = DutyReport {
        budget_s_per_hour: budget as f64 / 1e6,
        within_budget: true,
        ..DutyReport::default()
    };

    // Setup and steady state on one world.
    let mut world = World::new(settings)?;
    let setup = world.measure_setup()?;
    let steady = world.measure_steady()?;
    world.check_duty(&mut duty);
    if settings.trace {
        world.dump("setup and steady state");
    }

    let throughput = if settings.flood > 0 {
        let mut flood_world = World::new(settings)?;
        let report = flood_world.measure_throughput()?;
        flood_world.check_duty(&mut duty);
        if settings.trace {
            flood_world.dump("throughput");
        }
        Some(report)
    } else {
        None
    };

    let ok = steady.delivered_once == settings.messages
        && steady.receipts_back == settings.messages
        && throughput
            .as_ref()
            .is_none_or(|t| t.duplicate_deliveries == 0);
    Ok(SfReport {
        spreading_factor: settings.params.spreading_factor,
        bandwidth_hz: settings.params.bandwidth_hz,
        airtime_ms_bare_text_packet: airtime_us(&settings.params, settings.text_len) as f64 / 1e3,
        airtime_ms_max_frame: airtime_us(&settings.params, MAX_FRAME) as f64 / 1e3,
        setup,
        steady_state: steady,
        throughput,
        duty_cycle: duty,
        ok,
    })
}

// ---------------------------------------------------------------------------------------
// The world: a channel, radios, and what happened.

/// What a transmission was, as its sender's link counted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxKind {
    Beacon,
    Handshake(u8),
    /// ARQ data, first try.
    Data,
    Retransmission,
    /// ARQ acknowledgement only.
    Ack,
    Other,
}

impl TxKind {
    fn name(self) -> String {
        match self {
            Self::Beacon => "beacon".into(),
            Self::Handshake(n) => format!("hop handshake {n}"),
            Self::Data => "data".into(),
            Self::Retransmission => "arq retransmission".into(),
            Self::Ack => "arq ack".into(),
            Self::Other => "other".into(),
        }
    }
}

/// A sync frame a transmission completed at its receiver, and the transmissions whose bytes
/// it came in (this one, and earlier ones that completed nothing since the last one did).
#[derive(Clone, Debug)]
struct Completed {
    frame: Vec<u8>,
    carriers: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Tx {
    radio: usize,
    /// When the link handed the frame to the firmware (and counted it against its budget).
    handed_ms: u64,
    start_ms: u64,
    len: usize,
    airtime_us: u64,
    kind: TxKind,
    completed: Vec<Completed>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NoteKind {
    Received { id: ItemId, text: String },
    Receipt { id: ItemId },
    RoundComplete,
    SessionEnded { reason: String },
}

/// Something the application side saw, and where the transmission log stood.
#[derive(Clone, Debug)]
struct Note {
    at_ms: u64,
    node: usize,
    log_len: usize,
    kind: NoteKind,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    stale_wakeups: u64,
    channel_refusals: u64,
    sessions_ended: u64,
}

/// What every node's step may touch besides the node itself.
struct Env {
    now: u64,
    channel: Channel,
    log: Vec<Tx>,
    notes: Vec<Note>,
    session_rng: ChaCha8Rng,
    counters: Counters,
    delivery: DeliveryMode,
    /// End of the last transmission that was not a beacon, ms.
    last_activity_ms: u64,
    /// Quiet this long after the last non-beacon frame means the link is idle.
    quiet_ms: u64,
    /// An extra wake-up the run asked for.
    alarm: Option<u64>,
    /// The firmware's CSMA slot, µs; `None`: it transmits without listening first.
    csma_slot_us: Option<u64>,
    csma_rng: ChaCha8Rng,
}

impl Env {
    fn timestamp(&self) -> Timestamp {
        Timestamp::from_millis(EPOCH_MS + self.now)
    }

    fn note(&mut self, node: usize, kind: NoteKind) {
        self.notes.push(Note {
            at_ms: self.now,
            node,
            log_len: self.log.len(),
            kind,
        });
    }
}

/// A frame handed to the firmware, waiting for the channel.
struct Held {
    frame: Vec<u8>,
    kind: TxKind,
    handed_ms: u64,
    retry_at_ms: u64,
}

/// A contact's keys as the core holds them.
struct ContactKeys {
    identity: [u8; 32],
    keys: PairKeys,
    mailbox: MailboxKey,
}

/// A peer in reach with a sync session over the link (the daemon's `RadioPeer`).
struct RadioPeer {
    identity: [u8; 32],
    initiator: bool,
    sync: Option<SyncSession>,
    standby_until: Option<u64>,
    /// Where this session stands in the node's change log.
    change_cursor: u64,
}

/// A change to a node's store, and which peer already has it (`shared::Change`): a session
/// with that peer skips the round the change would otherwise start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Change {
    /// The item came from this peer.
    from: Option<[u8; 32]>,
    /// The item was pushed to this peer directly.
    pushed_to: Option<[u8; 32]>,
}

impl Change {
    fn concerns(&self, peer: &[u8; 32]) -> bool {
        self.from.as_ref() != Some(peer) && self.pushed_to.as_ref() != Some(peer)
    }
}

/// Recent changes, numbered (`shared::ChangeLog`).
#[derive(Debug, Default)]
struct ChangeLog {
    next: u64,
    records: VecDeque<Change>,
}

impl ChangeLog {
    fn record(&mut self, change: Change) {
        self.next += 1;
        self.records.push_back(change);
        if self.records.len() > MAX_CHANGES {
            self.records.pop_front();
        }
    }

    /// `Shared::needs_round`: whether the changes since `cursor` need a round with `peer`.
    fn needs_round(&self, peer: &[u8; 32], cursor: &mut u64) -> bool {
        let first = self.next - self.records.len() as u64;
        let since = std::mem::replace(cursor, self.next);
        if since < first {
            return true;
        }
        self.records
            .iter()
            .skip((since - first) as usize)
            .any(|c| c.concerns(peer))
    }
}

/// One radio and the node behind it.
struct Node {
    index: usize,
    name: &'static str,
    identity: [u8; 32],
    own_mailbox: MailboxKey,
    contacts: Vec<ContactKeys>,
    today: u64,
    policy: NodePolicy,
    direct: Option<Arc<Direct>>,
    link: FrameLink,
    store: MemStore,
    peers: BTreeMap<Addr, RadioPeer>,
    /// Items the core asked to push to a peer (`Shared::push_to`).
    pushes: BTreeMap<[u8; 32], Vec<ItemId>>,
    /// The node's change log (direct delivery).
    changes: ChangeLog,
    /// The daemon's watch channel was bumped: on the next pass every session takes its
    /// pushes and judges the changes (direct delivery).
    woken: bool,
    /// The store changed: every session runs a round (the node before direct delivery).
    notify_all: bool,
    link_events: VecDeque<LinkEvent>,
    /// A copy of the link's duty-cycle budget, fed the same records.
    duty: Option<DutyCycle>,
    tx_end_ms: u64,
    last_tx: Option<usize>,
    /// A frame the firmware holds until the channel is clear.
    held: Option<Held>,
    /// What the frame the link holds back (for the channel or the duty cycle) is: its
    /// counters moved when it was framed, not when it goes.
    staged_kind: Option<TxKind>,
    /// Data frames heard since the last sync frame completed here.
    pending_rx: Vec<usize>,
    discarded: u64,
}

/// `Shared::push_to`: queues `id` for whichever session reaches `peer`; false when the
/// queue is full (then only reconciliation carries it).
fn push_to(pushes: &mut BTreeMap<[u8; 32], Vec<ItemId>>, peer: [u8; 32], id: ItemId) -> bool {
    let queue = pushes.entry(peer).or_default();
    if queue.len() >= MAX_PUSHES_PER_PEER {
        return false;
    }
    queue.push(id);
    true
}

/// `take_pushes`: hands the pushes waiting for the session's peer to the session.
fn take_pushes(
    pushes: &mut BTreeMap<[u8; 32], Vec<ItemId>>,
    peer: &[u8; 32],
    sync: &mut SyncSession,
) {
    for id in pushes.remove(peer).unwrap_or_default() {
        sync.push(id);
    }
}

impl Node {
    /// The daemon's per-iteration work at `env.now`. Returns whether anything happened that
    /// may let someone else act.
    fn service(&mut self, env: &mut Env) -> anyhow::Result<bool> {
        let now = env.now;
        let mut progress = false;
        self.roll_day(env);
        // The daemon's `changed` branch: pushes first, then a round if a change concerns
        // the peer.
        if self.woken || self.notify_all {
            let all = std::mem::take(&mut self.notify_all);
            self.woken = false;
            progress = true;
            let direct = env.delivery == DeliveryMode::Direct;
            for peer in self.peers.values_mut() {
                if let Some(sync) = peer.sync.as_mut() {
                    if direct {
                        take_pushes(&mut self.pushes, &peer.identity, sync);
                    }
                    if all
                        || (direct
                            && self
                                .changes
                                .needs_round(&peer.identity, &mut peer.change_cursor))
                    {
                        sync.notify_store_changed();
                    }
                }
            }
        }
        // Timers.
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            self.link.handle_timeout(now);
        }
        let addrs: Vec<Addr> = self.peers.keys().copied().collect();
        for &addr in &addrs {
            let Some(sync) = self.peers.get_mut(&addr).and_then(|p| p.sync.as_mut()) else {
                continue;
            };
            if sync.poll_timeout().is_some_and(|t| t <= env.timestamp()) {
                if let Err(error) = sync.handle_timeout(env.timestamp()) {
                    self.end_sync(env, addr, &format!("sync: {error}"))?;
                    progress = true;
                }
            }
        }
        // Link events.
        while let Some(event) = self.link.poll_event() {
            self.link_events.push_back(event);
        }
        while let Some(event) = self.link_events.pop_front() {
            progress = true;
            self.handle_link_event(env, event)?;
        }
        // Sessions on standby.
        let addrs: Vec<Addr> = self.peers.keys().copied().collect();
        for addr in addrs {
            if self
                .peers
                .get(&addr)
                .and_then(|p| p.standby_until)
                .is_some_and(|t| now >= t)
            {
                self.try_start(env, addr)?;
                progress = true;
            }
        }
        progress |= self.pump(env)?;
        progress |= self.transmit(env);
        Ok(progress)
    }

    /// A new day: the core rolls every contact's keys and asks for the new tags.
    fn roll_day(&mut self, env: &Env) {
        let today = period_of(env.timestamp().as_secs());
        if today == self.today {
            return;
        }
        self.today = today;
        for contact in &mut self.contacts {
            contact.keys.advance(today);
        }
        self.policy.scopes = self.own_mailbox.tags_around(today);
        if let Some(direct) = &self.direct {
            direct.set_contacts(self.direct_contacts());
        }
    }

    fn direct_contacts(&self) -> Vec<([u8; 32], DirectContact)> {
        self.contacts
            .iter()
            .map(|c| {
                (
                    c.identity,
                    DirectContact {
                        keys: c.keys.clone(),
                        mailbox: c.mailbox.clone(),
                    },
                )
            })
            .collect()
    }

    fn handle_link_event(&mut self, env: &mut Env, event: LinkEvent) -> anyhow::Result<()> {
        match event {
            LinkEvent::PeerUp {
                addr,
                peer,
                initiator,
            } => {
                if self.peers.contains_key(&addr) {
                    self.end_sync(env, addr, "replaced by a new session")?;
                }
                self.peers.insert(
                    addr,
                    RadioPeer {
                        identity: peer.identity,
                        initiator,
                        sync: None,
                        standby_until: None,
                        change_cursor: 0,
                    },
                );
                self.try_start(env, addr)?;
            }
            LinkEvent::Message { addr, message } => {
                let Some(mut sync) = self.peers.get_mut(&addr).and_then(|p| p.sync.take()) else {
                    return Ok(());
                };
                let result = sync.handle_frame(env.timestamp(), &message, &mut self.store);
                self.forward(env, &mut sync)?;
                if let Some(peer) = self.peers.get_mut(&addr) {
                    peer.sync = Some(sync);
                }
                if let Err(error) = result {
                    self.end_sync(env, addr, &format!("sync: {error}"))?;
                }
            }
            LinkEvent::PeerDown { addr, reason } => {
                self.end_sync(env, addr, &reason)?;
                self.peers.remove(&addr);
            }
        }
        Ok(())
    }

    /// The daemon's `try_start` and `start_sync`.
    fn try_start(&mut self, env: &mut Env, addr: Addr) -> anyhow::Result<()> {
        let Some(credential) = self.link.peers().find(|(a, _)| *a == addr).map(|(_, c)| *c) else {
            return Ok(());
        };
        if credential.identity == self.identity {
            if let Some(peer) = self.peers.get_mut(&addr) {
                peer.standby_until = Some(env.now + STANDBY_RETRY_MS);
            }
            return Ok(());
        }
        // `Shared::link_up` wakes every link (before direct delivery: a store change).
        self.changed(env, Vec::new());
        let Some(peer) = self.peers.get_mut(&addr) else {
            return Ok(());
        };
        let mtu = self.link.frame_payload().max(MIN_MTU);
        let mut config = SessionConfig {
            stall_timeout_ms: RADIO_STALL_MS,
            ..SessionConfig::new(mtu, self.policy.clone())
        };
        if env.delivery == DeliveryMode::Direct {
            if let Some(direct) = &self.direct {
                config.compactor = Some(direct.clone());
            }
        }
        let role = if peer.initiator {
            Role::Initiator
        } else {
            Role::Responder
        };
        match SyncSession::new(
            config,
            role,
            credential.identity.to_vec(),
            env.session_rng.next_u64(),
            env.timestamp(),
        ) {
            Ok(mut sync) => {
                if env.delivery == DeliveryMode::Direct {
                    take_pushes(&mut self.pushes, &peer.identity, &mut sync);
                }
                // Round 0 covers every change before this instant.
                peer.change_cursor = self.changes.next;
                peer.sync = Some(sync);
                peer.standby_until = None;
            }
            Err(_) => peer.standby_until = Some(env.now + STANDBY_RETRY_MS),
        }
        Ok(())
    }

    /// The daemon's `end_sync`: the session ends, the link to the peer stays.
    fn end_sync(&mut self, env: &mut Env, addr: Addr, reason: &str) -> anyhow::Result<()> {
        let Some(mut sync) = self.peers.get_mut(&addr).and_then(|p| p.sync.take()) else {
            return Ok(());
        };
        self.forward(env, &mut sync)?;
        if let Some(peer) = self.peers.get_mut(&addr) {
            peer.standby_until = Some(env.now + STANDBY_RETRY_MS);
            // Pushes that did not go out wait for the next session with this peer.
            let identity = peer.identity;
            for id in sync.take_unsent_pushes() {
                let _ = push_to(&mut self.pushes, identity, id);
            }
        }
        env.counters.sessions_ended += 1;
        env.note(
            self.index,
            NoteKind::SessionEnded {
                reason: reason.to_string(),
            },
        );
        Ok(())
    }

    /// Sync output into each peer's stream, a bounded batch at a time, while it wants more.
    fn pump(&mut self, env: &mut Env) -> anyhow::Result<bool> {
        let mut progress = false;
        let addrs: Vec<Addr> = self.peers.keys().copied().collect();
        for addr in addrs {
            while self.link.wants_messages(addr) {
                let Some(mut sync) = self.peers.get_mut(&addr).and_then(|p| p.sync.take()) else {
                    break;
                };
                let mut moved = 0;
                let mut failure = None;
                while moved < SYNC_FRAMES_PER_PASS {
                    match sync.poll_transmit(env.timestamp(), &mut self.store) {
                        Ok(Some(frame)) => {
                            if let Err(error) = self.link.send(addr, &frame) {
                                failure = Some(format!("link: {error}"));
                                break;
                            }
                            moved += 1;
                        }
                        Ok(None) => break,
                        Err(error) => {
                            failure = Some(format!("sync: {error}"));
                            break;
                        }
                    }
                }
                self.forward(env, &mut sync)?;
                if let Some(peer) = self.peers.get_mut(&addr) {
                    peer.sync = Some(sync);
                }
                progress |= moved > 0;
                if let Some(reason) = failure {
                    self.end_sync(env, addr, &reason)?;
                    break;
                }
                if moved < SYNC_FRAMES_PER_PASS {
                    break;
                }
            }
        }
        Ok(progress)
    }

    /// Frames the link may send now go on air.
    fn transmit(&mut self, env: &mut Env) -> bool {
        let now_us = env.now * 1_000;
        let mut sent = false;
        while !env.channel.is_transmitting(self.index, now_us) {
            // The firmware takes a frame only when it is ready: when its last one is on
            // air and done (RNode's flow control).
            if self.held.is_none() {
                let before = self.link.stats();
                let frame = self.link.poll_transmit(env.now);
                let counted = arq_kind(&before, &self.link.stats());
                let Some(frame) = frame else {
                    if counted.is_some() {
                        self.staged_kind = counted;
                    }
                    break;
                };
                let kind = classify(&frame, counted.or(self.staged_kind.take()));
                let airtime = self.link.config().airtime_us(frame.len());
                if let Some(duty) = self.duty.as_mut() {
                    duty.record(env.now, airtime);
                }
                self.held = Some(Held {
                    frame,
                    kind,
                    handed_ms: env.now,
                    retry_at_ms: env.now,
                });
            }
            let Some(held) = self.held.as_mut() else {
                break;
            };
            if env.now < held.retry_at_ms {
                break;
            }
            // Listen before talk, as RNode firmware does: a busy channel means waiting for
            // it to clear plus 0-15 CSMA slots.
            if let (Some(slot_us), Some(quiet_us)) = (
                env.csma_slot_us,
                env.channel.busy_until_us(self.index, now_us),
            ) {
                let windows = env.csma_rng.next_u64() % CSMA_WINDOWS;
                held.retry_at_ms = (quiet_us + slot_us * windows)
                    .div_ceil(1_000)
                    .max(env.now + 1);
                break;
            }
            let Some(Held {
                frame,
                kind,
                handed_ms,
                ..
            }) = self.held.take()
            else {
                break;
            };
            match env.channel.transmit(now_us, self.index, &frame) {
                Ok(end_us) => {
                    self.tx_end_ms = end_us.div_ceil(1_000);
                    if kind != TxKind::Beacon {
                        env.last_activity_ms = env.last_activity_ms.max(self.tx_end_ms);
                    }
                    self.last_tx = Some(env.log.len());
                    env.log.push(Tx {
                        radio: self.index,
                        handed_ms,
                        start_ms: env.now,
                        len: frame.len(),
                        airtime_us: end_us - now_us,
                        kind,
                        completed: Vec::new(),
                    });
                    sent = true;
                }
                Err(_) => env.counters.channel_refusals += 1,
            }
        }
        sent
    }

    /// A frame heard: into the link, and which sync frames it completed.
    fn deliver(&mut self, env: &mut Env, tx: Option<usize>, delivery: &Heard) {
        self.link.handle_frame(env.now, &delivery.frame);
        let mut completed_any = false;
        while let Some(event) = self.link.poll_event() {
            if let (LinkEvent::Message { message, .. }, Some(t)) = (&event, tx) {
                let carriers = if completed_any {
                    vec![t]
                } else {
                    let mut carriers = std::mem::take(&mut self.pending_rx);
                    carriers.push(t);
                    carriers
                };
                env.log[t].completed.push(Completed {
                    frame: message.clone(),
                    carriers,
                });
                completed_any = true;
            }
            self.link_events.push_back(event);
        }
        if let (false, Some(t)) = (completed_any, tx) {
            if env.log[t].kind == TxKind::Data {
                self.pending_rx.push(t);
            }
        }
    }

    /// The daemon's `forward_events` and the core's `handle_all`, at once.
    fn forward(&mut self, env: &mut Env, sync: &mut SyncSession) -> anyhow::Result<()> {
        // Items from this peer are news to every other peer, not to this one; a delivery or
        // a copy handed over only wakes the links.
        let from = <[u8; 32]>::try_from(sync.peer_key()).ok();
        let mut delivered = Vec::new();
        let mut stored = 0;
        let mut wake = false;
        while let Some(event) = sync.poll_event() {
            match event {
                SyncEvent::ItemStored { .. } => stored += 1,
                SyncEvent::HandedOver { .. } => wake = true,
                SyncEvent::Delivered { id } => {
                    wake = true;
                    delivered.push(id);
                }
                SyncEvent::ReceiptForOwn { id } => env.note(self.index, NoteKind::Receipt { id }),
                SyncEvent::RoundComplete { .. } => env.note(self.index, NoteKind::RoundComplete),
                _ => {}
            }
        }
        if stored > 0 {
            let change = Change {
                from,
                pushed_to: None,
            };
            self.changed(env, vec![change; stored]);
        } else if wake {
            self.changed(env, Vec::new());
        }
        if !delivered.is_empty() {
            self.open_delivered(env, &delivered)?;
        }
        Ok(())
    }

    /// `Shared::changed` (or, with no change, `Shared::wake`). Before direct delivery every
    /// one of these was a store change that started a round on every link.
    fn changed(&mut self, env: &Env, changes: Vec<Change>) {
        match env.delivery {
            DeliveryMode::Direct => {
                for change in changes {
                    self.changes.record(change);
                }
                self.woken = true;
            }
            DeliveryMode::Reconcile => self.notify_all = true,
        }
    }

    /// The core's `open_delivered`: open with the contacts' keys, record, acknowledge, and
    /// (direct delivery) push each receipt to its sender.
    fn open_delivered(&mut self, env: &mut Env, ids: &[ItemId]) -> anyhow::Result<()> {
        let mut acks = Vec::new();
        let mut senders = Vec::new();
        let mut discards = WriteBatch::new();
        for id in ids {
            let Some(entry) = self.store.inbox_entry(id)? else {
                continue;
            };
            let Ok(Item::Envelope(envelope)) = Item::decode(&entry.encoded) else {
                discards.push(WriteOp::AckInbox(*id));
                continue;
            };
            let header = SealedHeader::of(&envelope);
            let opened = self.contacts.iter().find_map(|c| {
                c.keys
                    .open(&header, &envelope.receipt_lock, &envelope.body)
                    .ok()
                    .map(|opened| (c.identity, opened))
            });
            let Some((from, opened)) = opened else {
                discards.push(WriteOp::AckInbox(*id));
                continue;
            };
            let Some(text) = text_of(&opened.plaintext) else {
                discards.push(WriteOp::AckInbox(*id));
                continue;
            };
            env.note(self.index, NoteKind::Received { id: *id, text });
            acks.push((*id, opened.proof));
            senders.push(from);
        }
        if !acks.is_empty() {
            let receipts = session::acknowledge_all(&mut self.store, &acks, env.timestamp())?;
            // Each receipt goes straight back to the message's sender.
            let mut changes = Vec::new();
            for (receipt, from) in receipts.into_iter().zip(senders) {
                if let Ok(receipt) = receipt {
                    let pushed = env.delivery != DeliveryMode::Direct
                        || push_to(&mut self.pushes, from, receipt);
                    changes.push(Change {
                        from: None,
                        pushed_to: pushed.then_some(from),
                    });
                }
            }
            self.changed(env, changes);
        }
        if !discards.is_empty() {
            self.discarded += 1;
            self.store.commit(discards)?;
        }
        if env.delivery == DeliveryMode::Reconcile {
            self.changed(env, Vec::new());
        }
        Ok(())
    }

    /// Seals texts for `to` and stores them, as the core does with what `cairn send` queued.
    fn originate(
        &mut self,
        env: &mut Env,
        to: [u8; 32],
        texts: &[String],
    ) -> anyhow::Result<Vec<(ItemId, Envelope)>> {
        self.roll_day(env);
        let now_secs = env.timestamp().as_secs();
        let (keys, mailbox) = self
            .contacts
            .iter()
            .find(|c| c.identity == to)
            .map(|c| (c.keys.clone(), c.mailbox.clone()))
            .context("the recipient is not a contact")?;
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(SEAL_BATCH) {
            let envelopes = batch
                .iter()
                .map(|text| seal_text(&keys, &mailbox, text, now_secs))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let ids =
                session::originate_all(&mut self.store, &self.policy, &envelopes, env.timestamp())?;
            // A recipient linked right now gets its messages pushed; a round with it would
            // find nothing more, while carriers still need one. One the queue had no room for
            // is left to a round.
            let changes: Vec<Change> = ids
                .iter()
                .map(|&id| {
                    let pushed =
                        env.delivery != DeliveryMode::Direct || push_to(&mut self.pushes, to, id);
                    Change {
                        from: None,
                        pushed_to: pushed.then_some(to),
                    }
                })
                .collect();
            self.changed(env, changes);
            out.extend(ids.into_iter().zip(envelopes));
        }
        Ok(out)
    }

    /// Whether the earliest instant this link could transmit anything lies ahead: after its
    /// own frame, and after its duty cycle frees room for its smallest frame.
    fn blocked_until(&self, now: u64) -> u64 {
        let duty = self.duty.as_ref().map_or(now, |duty| {
            duty.earliest(now, self.link.config().airtime_us(BEACON_LEN))
        });
        (now + 1).max(self.tx_end_ms).max(duty)
    }

    fn is_idle(&self) -> bool {
        !self.woken
            && !self.notify_all
            && !self.peers.is_empty()
            && self.link_events.is_empty()
            && self.peers.iter().all(|(addr, peer)| {
                peer.sync.as_ref().is_some_and(SyncSession::is_idle)
                    && self.link.backlog(*addr) == 0
            })
    }
}

/// What the link's ARQ counters say it just framed, if anything.
fn arq_kind(before: &LinkStats, after: &LinkStats) -> Option<TxKind> {
    if after.arq.retransmissions > before.arq.retransmissions {
        Some(TxKind::Retransmission)
    } else if after.arq.data_frames > before.arq.data_frames {
        Some(TxKind::Data)
    } else if after.arq.ack_frames > before.arq.ack_frames {
        Some(TxKind::Ack)
    } else {
        None
    }
}

/// What a frame the link handed out is; `arq` is what its ARQ counters said when it was
/// framed.
fn classify(frame: &[u8], arq: Option<TxKind>) -> TxKind {
    match LinkFrame::parse(frame) {
        Ok(LinkFrame::Beacon { .. }) => TxKind::Beacon,
        Ok(LinkFrame::Handshake { datagram, .. }) => {
            TxKind::Handshake(datagram.first().copied().unwrap_or(0))
        }
        Ok(LinkFrame::Transport { .. }) => arq.unwrap_or(TxKind::Other),
        Err(_) => TxKind::Other,
    }
}

/// The envelope that carries `text`, sealed exactly as the node's core seals a queued text
/// (`Core::seal_queued`: payload format and kind bytes, the week's lifetime, the copy
/// budget, High priority for short texts, the recipient's tag of the day the keys are at).
fn seal_text(
    keys: &PairKeys,
    recipient: &MailboxKey,
    text: &str,
    now_secs: u64,
) -> anyhow::Result<Envelope> {
    let header = SealedHeader {
        created_at_secs: now_secs,
        lifetime_secs: MESSAGE_LIFETIME_SECS,
        scope: recipient.tag(keys.today()),
        priority: if text.len() <= SHORT_TEXT {
            Priority::High
        } else {
            Priority::Normal
        },
        copy_budget: COPY_BUDGET,
    };
    let mut plaintext = Vec::with_capacity(2 + text.len());
    plaintext.extend_from_slice(&[PAYLOAD_V1, KIND_TEXT]);
    plaintext.extend_from_slice(text.as_bytes());
    Ok(header.envelope(keys.seal(&header, &plaintext)?))
}

/// The text an opened plaintext carries, read as the core reads it.
fn text_of(plaintext: &[u8]) -> Option<String> {
    match plaintext.split_first_chunk::<2>() {
        Some(([PAYLOAD_V1, KIND_TEXT], text)) => Some(String::from_utf8_lossy(text).into_owned()),
        _ => None,
    }
}

/// Text number `k`, `len` bytes of ASCII, different for every `k`.
fn text_for(k: usize, len: usize) -> String {
    const FILLER: &str = "the quick brown fox jumps over the lazy dog; ";
    let mut text = format!("message {k:05} from alice to bob: ");
    while text.len() < len {
        text.push_str(FILLER);
    }
    text.truncate(len);
    text
}

struct World {
    env: Env,
    nodes: Vec<Node>,
    settings: Settings,
}

const ALICE: usize = 0;
const BOB: usize = 1;

impl World {
    /// Alice and Bob, paired in person, their radios switched on at time 0.
    fn new(settings: &Settings) -> anyhow::Result<Self> {
        let mut key_rng = rand_chacha_03::ChaCha20Rng::seed_from_u64(settings.seed);
        let alice = Identity::generate(&mut key_rng);
        let bob = Identity::generate(&mut key_rng);
        let today = period_of(EPOCH_MS / 1_000);
        let (alice_keys, bob_keys) = pair(&alice, &bob, today, &mut key_rng)?;
        let network_key = NetworkKey(Config::network_key_for(Some("cairn-bench radio")));

        let mut seeds = ChaCha8Rng::seed_from_u64(settings.seed ^ 0x7261_6469_6f21);
        let mut nodes = Vec::new();
        for (index, (name, identity, contact)) in
            [("alice", &alice, alice_keys), ("bob", &bob, bob_keys)]
                .into_iter()
                .enumerate()
        {
            let config = LinkConfig::new(
                identity.hop_keys()?,
                network_key.clone(),
                Medium::Radio(Some(settings.params)),
                MAX_FRAME,
            );
            let duty = config.duty_cycle.map(DutyCycle::new);
            let mut seed = [0u8; 32];
            seeds.fill_bytes(&mut seed);
            let link = FrameLink::new(config, 0, seed)?;
            let own_mailbox = identity.mailbox_key();
            let mut node = Node {
                index,
                name,
                identity: *identity.public_key().as_bytes(),
                own_mailbox: own_mailbox.clone(),
                contacts: vec![contact],
                today,
                // `Core::policy_for`.
                policy: NodePolicy {
                    scopes: own_mailbox.tags_around(today),
                    ..NodePolicy::default()
                },
                direct: None,
                link,
                store: MemStore::new(),
                peers: BTreeMap::new(),
                pushes: BTreeMap::new(),
                changes: ChangeLog::default(),
                woken: false,
                notify_all: false,
                link_events: VecDeque::new(),
                duty,
                tx_end_ms: 0,
                last_tx: None,
                held: None,
                staged_kind: None,
                pending_rx: Vec::new(),
                discarded: 0,
            };
            if settings.delivery == DeliveryMode::Direct {
                let direct = Direct::new(own_mailbox);
                direct.set_contacts(node.direct_contacts());
                node.direct = Some(Arc::new(direct));
            }
            nodes.push(node);
        }
        let channel_config = ChannelConfig {
            seed: settings.seed,
            ..ChannelConfig::default()
        };
        let channel = Channel::new(
            Topology::all_hear_all(nodes.len(), Link::default()),
            settings.params,
            channel_config,
        );
        let frame_ms = airtime_us(&settings.params, MAX_FRAME) / 1_000;
        Ok(Self {
            env: Env {
                now: 0,
                channel,
                log: Vec::new(),
                notes: Vec::new(),
                session_rng: ChaCha8Rng::seed_from_u64(seeds.next_u64()),
                counters: Counters::default(),
                delivery: settings.delivery,
                last_activity_ms: 0,
                quiet_ms: 10 * frame_ms + 5_000,
                alarm: None,
                csma_slot_us: settings.csma.then(|| {
                    let p = settings.params;
                    u64::from(
                        RnodePhy::new(p.bandwidth_hz, p.spreading_factor, p.coding_rate)
                            .csma_slot_ms,
                    ) * 1_000
                }),
                csma_rng: ChaCha8Rng::seed_from_u64(seeds.next_u64()),
            },
            nodes,
            settings: settings.clone(),
        })
    }

    /// Everything due at the current instant, until nobody has anything more to do.
    fn process_now(&mut self) -> anyhow::Result<()> {
        for _ in 0..100_000 {
            let mut progress = false;
            let now_us = self.env.now * 1_000;
            while let Some(event) = self.env.channel.poll(now_us) {
                progress = true;
                if let ChannelEvent::Delivered(delivery) = event {
                    let tx = self.nodes.get(delivery.from).and_then(|n| n.last_tx);
                    if let Some(node) = self.nodes.get_mut(delivery.to) {
                        node.deliver(&mut self.env, tx, &delivery);
                    }
                }
            }
            for node in &mut self.nodes {
                progress |= node.service(&mut self.env)?;
            }
            if !progress {
                return Ok(());
            }
        }
        bail!(
            "the radios kept acting at {} ms without time passing",
            self.env.now
        )
    }

    /// The earliest instant anyone asked to be woken at, after now.
    fn next_wake(&mut self) -> u64 {
        let now = self.env.now;
        let mut next = u64::MAX;
        if let Some(us) = self.env.channel.next_event_us() {
            next = next.min(us.div_ceil(1_000).max(now + 1));
        }
        for node in &self.nodes {
            if let Some(t) = node.link.poll_timeout() {
                let t = if t > now {
                    t
                } else {
                    self.env.counters.stale_wakeups += 1;
                    node.blocked_until(now)
                };
                next = next.min(t);
            }
            if let Some(held) = &node.held {
                next = next.min(held.retry_at_ms.max(now + 1));
            }
            for peer in node.peers.values() {
                if let Some(t) = peer.sync.as_ref().and_then(SyncSession::poll_timeout) {
                    next = next.min(t.as_millis().saturating_sub(EPOCH_MS).max(now + 1));
                }
                if let Some(t) = peer.standby_until {
                    next = next.min(t.max(now + 1));
                }
            }
        }
        let quiet_at = self.env.last_activity_ms + self.env.quiet_ms;
        if quiet_at > now {
            next = next.min(quiet_at);
        }
        if let Some(alarm) = self.env.alarm.filter(|&a| a > now) {
            next = next.min(alarm);
        }
        next
    }

    /// Runs until `done` holds (true) or `limit` ms passes (false).
    fn run_until(
        &mut self,
        limit: u64,
        mut done: impl FnMut(&World) -> bool,
    ) -> anyhow::Result<bool> {
        loop {
            self.process_now()?;
            if done(self) {
                return Ok(true);
            }
            let next = self.next_wake();
            if next > limit {
                if self.env.now < limit {
                    self.env.now = limit;
                    self.process_now()?;
                }
                return Ok(done(self));
            }
            self.env.now = next;
        }
    }

    /// Both sessions idle, nothing queued, and nothing but beacons heard for a while.
    fn settled(&self) -> bool {
        self.nodes.iter().all(Node::is_idle)
            && self.env.now >= self.env.last_activity_ms + self.env.quiet_ms
    }

    fn run_until_settled(&mut self, step: &str) -> anyhow::Result<()> {
        let limit = self.env.now + 24 * 3_600_000;
        if !self.run_until(limit, World::settled)? {
            bail!(
                "{step}: the link did not settle within a day of virtual time (at {} ms; sessions: {})",
                self.env.now,
                self.describe()
            );
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let sessions: Vec<String> = n
                    .peers
                    .iter()
                    .map(|(a, p)| {
                        format!(
                            "{a}: backlog {} {}",
                            n.link.backlog(*a),
                            p.sync
                                .as_ref()
                                .map_or("no session".into(), SyncSession::describe)
                        )
                    })
                    .collect();
                format!("{} [{}]", n.name, sessions.join("; "))
            })
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// Waits until every radio has used at most a quarter of its duty-cycle budget.
    fn wait_for_budget(&mut self) -> anyhow::Result<()> {
        let budget = DutyCycleConfig::default().max_airtime_us;
        for _ in 0..1_000 {
            let now = self.env.now;
            let at = self
                .nodes
                .iter()
                .filter_map(|n| n.duty.as_ref())
                .map(|d| d.earliest(now, budget * 3 / 4))
                .max()
                .unwrap_or(now);
            if at <= now {
                return Ok(());
            }
            self.env.alarm = Some(at);
            self.run_until(at, |_| false)?;
        }
        bail!("the duty-cycle budget never came back")
    }

    fn measure_setup(&mut self) -> anyhow::Result<SetupReport> {
        let first_round = |w: &World| {
            [ALICE, BOB].iter().all(|&i| {
                w.env
                    .notes
                    .iter()
                    .any(|n| n.node == i && n.kind == NoteKind::RoundComplete)
            })
        };
        if !self.run_until(24 * 3_600_000, first_round)? {
            bail!(
                "setup: no sync round completed within a day of virtual time ({})",
                self.describe()
            );
        }
        let setup_end = self.env.log.len();
        let setup_ms = self.env.now;
        self.run_until_settled("setup")?;
        let idle_end = self.env.log.len();
        let totals = self.totals(0..setup_end, setup_ms);
        let mut hello_fields = Vec::new();
        for tx in &self.env.log[..setup_end] {
            let from = self.nodes.get(tx.radio).map_or("?", |n| n.name);
            for done in &tx.completed {
                for (message, bytes) in split_messages(&done.frame) {
                    if let Message::Hello(hello) = &message {
                        for e in hello_fields_of(hello, bytes.len()) {
                            add(&mut hello_fields, &format!("{from}: {}", e.what), e.bytes);
                        }
                    }
                }
            }
        }
        Ok(SetupReport {
            bytes_on_air: totals.bytes_on_air,
            airtime_ms: totals.airtime_ms,
            frames: totals.frames,
            virtual_ms: setup_ms,
            bytes_by_kind: per(self.bytes_by_kind(0..setup_end, &[]), 1.0),
            until_idle: self.totals(0..idle_end, self.env.now),
            until_idle_bytes_by_kind: per(self.bytes_by_kind(0..idle_end, &[]), 1.0),
            hello_fields: per(hello_fields, 1.0),
        })
    }

    fn totals(&self, range: std::ops::Range<usize>, virtual_ms: u64) -> Totals {
        let txs = &self.env.log[range];
        Totals {
            frames: txs.len(),
            bytes_on_air: txs.iter().map(|t| t.len as u64).sum(),
            airtime_ms: r3(txs.iter().map(|t| t.airtime_us).sum::<u64>() as f64 / 1e3),
            virtual_ms,
        }
    }

    fn note_index(&self, from: usize, pred: impl Fn(&Note) -> bool) -> Option<&Note> {
        self.env.notes[from..].iter().find(|n| pred(n))
    }

    fn measure_steady(&mut self) -> anyhow::Result<SteadyReport> {
        let messages = self.settings.messages;
        let text_len = self.settings.text_len;
        let bob_identity = self.nodes[BOB].identity;
        let mut windows = Vec::new();
        let mut duty_waits_in_windows = 0;
        let retransmissions_before = self.retransmissions();
        let ended_before = self.env.counters.sessions_ended;
        let stale_before = self.env.counters.stale_wakeups;
        let losses_before = self.losses();
        for k in 0..messages {
            self.wait_for_budget()?;
            self.run_until_settled("between messages")?;
            let waits_at_start = self.duty_waits();
            let text = text_for(k, text_len);
            let notes_from = self.env.notes.len();
            let i0 = self.env.log.len();
            let t0 = self.env.now;
            let (id, envelope) = self.nodes[ALICE]
                .originate(&mut self.env, bob_identity, std::slice::from_ref(&text))?
                .into_iter()
                .next()
                .context("nothing was sealed")?;
            let received = |n: &Note| {
                n.node == BOB && matches!(&n.kind, NoteKind::Received { id: got, .. } if *got == id)
            };
            let receipt = |n: &Note| n.node == ALICE && n.kind == NoteKind::Receipt { id };
            let limit = t0 + 24 * 3_600_000;
            let delivered =
                self.run_until(limit, |w| w.note_index(notes_from, received).is_some())?;
            if !delivered {
                bail!(
                    "message {k} was not delivered within a day ({})",
                    self.describe()
                );
            }
            let tombstone = self.nodes[BOB]
                .store
                .get(&cairn_sync::envelope::Tombstone::id_for(&id))?
                .map(|s| s.encoded);
            let back = self.run_until(limit, |w| w.note_index(notes_from, receipt).is_some())?;
            if !back {
                bail!(
                    "the receipt of message {k} did not come back within a day ({})",
                    self.describe()
                );
            }
            self.run_until_settled("after a message")?;
            duty_waits_in_windows += self.duty_waits() - waits_at_start;
            let (Some(got), Some(came_back)) = (
                self.note_index(notes_from, received).cloned(),
                self.note_index(notes_from, receipt).cloned(),
            ) else {
                bail!("message {k}: lost track of its delivery");
            };
            windows.push(Window {
                start: i0,
                delivered: got.log_len,
                receipt: came_back.log_len,
                idle: self.env.log.len(),
                t0,
                delivered_ms: got.at_ms,
                receipt_ms: came_back.at_ms,
                envelope,
                text: text.into_bytes(),
                tombstone,
            });
        }

        // Exactly once, and the right text.
        let mut delivered_once = 0;
        let mut receipts_back = 0;
        for w in &windows {
            let id = w.envelope_id();
            let got: Vec<&Note> = self
                .env
                .notes
                .iter()
                .filter(|n| {
                    n.node == BOB && matches!(&n.kind, NoteKind::Received { id: g, .. } if *g == id)
                })
                .collect();
            if got.len() == 1
                && matches!(&got[0].kind, NoteKind::Received { text, .. } if text.as_bytes() == w.text)
            {
                delivered_once += 1;
            }
            let receipts = self
                .env
                .notes
                .iter()
                .filter(|n| n.node == ALICE && n.kind == NoteKind::Receipt { id })
                .count();
            if receipts == 1 {
                receipts_back += 1;
            }
        }

        let n = windows.len().max(1) as f64;
        let sum = |f: &dyn Fn(&Window) -> f64| r3(windows.iter().map(f).sum::<f64>() / n);
        let bytes =
            |r: std::ops::Range<usize>| self.env.log[r].iter().map(|t| t.len as f64).sum::<f64>();
        let airtime = |r: std::ops::Range<usize>| {
            self.env.log[r]
                .iter()
                .map(|t| t.airtime_us as f64)
                .sum::<f64>()
                / 1e3
        };
        let frames = |r: std::ops::Range<usize>| r.len() as f64;

        let mut overheads = Vec::new();
        let mut alone = Vec::new();
        let mut first_breakdown = Vec::new();
        let mut receipt_bytes = Vec::new();
        let mut first_receipt_breakdown = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let probe = Probe::envelope(&w.envelope, text_len);
            if let Some((carriers, breakdown)) =
                self.carried(w.start..w.delivered, ALICE, &probe, &w.text)
            {
                let on_air: usize = carriers.iter().map(|&t| self.env.log[t].len).sum();
                overheads.push(on_air as i64 - text_len as i64);
                let others: f64 = breakdown
                    .iter()
                    .filter(|e| e.what.ends_with(SAME_FRAME))
                    .map(|e| e.bytes)
                    .sum();
                alone.push(on_air as f64 - text_len as f64 - others);
                if i == 0 {
                    first_breakdown = breakdown;
                }
            }
            if let Some(encoded) = &w.tombstone {
                if let Some(probe) = Probe::tombstone(encoded) {
                    if let Some((carriers, breakdown)) =
                        self.carried(w.delivered..w.receipt, BOB, &probe, &[])
                    {
                        receipt_bytes.push(
                            carriers
                                .iter()
                                .map(|&t| self.env.log[t].len as f64)
                                .sum::<f64>(),
                        );
                        if i == 0 {
                            first_receipt_breakdown = breakdown;
                        }
                    }
                }
            }
        }
        let probes: Vec<(Probe, Vec<u8>)> = windows
            .iter()
            .map(|w| (Probe::envelope(&w.envelope, text_len), w.text.clone()))
            .chain(windows.iter().filter_map(|w| {
                w.tombstone
                    .as_deref()
                    .and_then(Probe::tombstone)
                    .map(|p| (p, Vec::new()))
            }))
            .collect();
        let mut by_kind: Vec<Entry> = Vec::new();
        for w in &windows {
            for e in self.bytes_by_kind(w.start..w.idle, &probes) {
                add(&mut by_kind, &e.what, e.bytes);
            }
        }
        let beacons = windows
            .iter()
            .map(|w| {
                self.env.log[w.start..w.idle]
                    .iter()
                    .filter(|t| t.kind == TxKind::Beacon)
                    .map(|t| t.len as f64)
                    .sum::<f64>()
            })
            .sum::<f64>()
            / n;
        let beacons = r3(beacons);
        let (lost_collision, lost_half_duplex) = self.losses();
        let first_message_frames = windows
            .first()
            .map(|w| self.frame_notes(w.start..w.idle, w.t0, &probes))
            .unwrap_or_default();
        Ok(SteadyReport {
            delivery: self.settings.delivery,
            messages,
            delivered_once,
            receipts_back,
            bytes_on_air_per_message: sum(&|w| bytes(w.start..w.delivered)),
            bytes_on_air_incl_receipt: sum(&|w| bytes(w.start..w.receipt)),
            bytes_on_air_until_idle: sum(&|w| bytes(w.start..w.idle)),
            airtime_ms_per_message: sum(&|w| airtime(w.start..w.delivered)),
            airtime_ms_incl_receipt: sum(&|w| airtime(w.start..w.receipt)),
            airtime_ms_until_idle: sum(&|w| airtime(w.start..w.idle)),
            frames_per_message: sum(&|w| frames(w.start..w.delivered)),
            frames_incl_receipt: sum(&|w| frames(w.start..w.receipt)),
            frames_until_idle: sum(&|w| frames(w.start..w.idle)),
            beacon_bytes_per_message_until_idle: beacons,
            latency_ms_to_delivery: sum(&|w| (w.delivered_ms - w.t0) as f64),
            latency_ms_to_receipt: sum(&|w| (w.receipt_ms - w.t0) as f64),
            message_frame_overhead_bytes: mean(
                &overheads.iter().map(|&o| o as f64).collect::<Vec<_>>(),
            ),
            message_frame_overhead_excluding_other_messages: mean(&alone),
            message_frame_overhead_min_max: [
                overheads.iter().copied().min().unwrap_or(0),
                overheads.iter().copied().max().unwrap_or(0),
            ],
            message_frame_breakdown: first_breakdown,
            receipt_frame_bytes: mean(&receipt_bytes),
            receipt_frame_breakdown: first_receipt_breakdown,
            bytes_by_kind_until_idle: per(by_kind, n),
            first_message_frames,
            duty_cycle_waits_in_windows: duty_waits_in_windows,
            arq_retransmissions: self.retransmissions() - retransmissions_before,
            frames_lost_to_collision: lost_collision - losses_before.0,
            frames_lost_to_half_duplex: lost_half_duplex - losses_before.1,
            sync_sessions_ended: self.env.counters.sessions_ended - ended_before,
            stale_deadline_wakeups: self.env.counters.stale_wakeups - stale_before,
        })
    }

    /// Frames lost to collisions and to half duplex so far, all radios.
    fn losses(&self) -> (u64, u64) {
        self.env
            .channel
            .all_stats()
            .iter()
            .fold((0, 0), |(c, h), s| {
                (c + s.lost_to_collision, h + s.lost_to_half_duplex)
            })
    }

    fn measure_throughput(&mut self) -> anyhow::Result<ThroughputReport> {
        let first_round = |w: &World| {
            [ALICE, BOB].iter().all(|&i| {
                w.env
                    .notes
                    .iter()
                    .any(|n| n.node == i && n.kind == NoteKind::RoundComplete)
            })
        };
        if !self.run_until(24 * 3_600_000, first_round)? {
            bail!(
                "throughput: the sessions never came up ({})",
                self.describe()
            );
        }
        self.run_until_settled("before the flood")?;
        let texts: Vec<String> = (0..self.settings.flood)
            .map(|k| text_for(k, self.settings.text_len))
            .collect();
        let bob_identity = self.nodes[BOB].identity;
        let notes_from = self.env.notes.len();
        let log_from = self.env.log.len();
        let ended_before = self.env.counters.sessions_ended;
        let stale_before = self.env.counters.stale_wakeups;
        let retransmissions_before = self.retransmissions();
        let waits_before = self.duty_waits();
        let losses_before = self.losses();
        let start = self.env.now;
        let sent = self.nodes[ALICE].originate(&mut self.env, bob_identity, &texts)?;
        let hours = self.settings.hours.max(1);
        let end = start + hours * 3_600_000;
        self.run_until(end, |_| false)?;

        let hour_of = |at: u64| ((at.saturating_sub(start)) / 3_600_000) as usize;
        let mut delivered_per_hour = vec![0; hours as usize];
        let mut receipts_per_hour = vec![0; hours as usize];
        let mut seen = std::collections::HashSet::new();
        let mut duplicates = 0;
        let ours: std::collections::HashMap<ItemId, &Envelope> =
            sent.iter().map(|(id, env)| (*id, env)).collect();
        let mut wrong_text = 0;
        let mut session_end_reasons = Vec::new();
        for note in &self.env.notes[notes_from..] {
            let hour = hour_of(note.at_ms);
            match &note.kind {
                NoteKind::Received { id, text } if note.node == BOB => {
                    if !seen.insert(*id) {
                        duplicates += 1;
                    }
                    if !ours.contains_key(id) || text.len() != self.settings.text_len {
                        wrong_text += 1;
                    }
                    if let Some(slot) = delivered_per_hour.get_mut(hour) {
                        *slot += 1;
                    }
                }
                NoteKind::Receipt { .. } if note.node == ALICE => {
                    if let Some(slot) = receipts_per_hour.get_mut(hour) {
                        *slot += 1;
                    }
                }
                NoteKind::SessionEnded { reason } if session_end_reasons.len() < 12 => {
                    session_end_reasons.push(format!(
                        "{} ms after the flood, {}: {reason}",
                        note.at_ms - start,
                        self.nodes[note.node].name
                    ));
                }
                _ => {}
            }
        }
        let last_start = end - 3_600_000;
        let last_hour: Vec<usize> = (log_from..self.env.log.len())
            .filter(|&i| self.env.log[i].start_ms >= last_start && self.env.log[i].start_ms < end)
            .collect();
        let mut airtime_s_last_hour = BTreeMap::new();
        let mut bytes_on_air_last_hour = BTreeMap::new();
        for node in &self.nodes {
            let mine = last_hour
                .iter()
                .map(|&i| &self.env.log[i])
                .filter(|t| t.radio == node.index);
            airtime_s_last_hour.insert(
                node.name.to_string(),
                r3(mine.clone().map(|t| t.airtime_us).sum::<u64>() as f64 / 1e6),
            );
            bytes_on_air_last_hour.insert(node.name.to_string(), mine.map(|t| t.len as u64).sum());
        }
        let range = last_hour.first().copied().unwrap_or(self.env.log.len())
            ..last_hour.last().map_or(self.env.log.len(), |&i| i + 1);
        let messages_per_hour = delivered_per_hour.last().copied().unwrap_or(0);
        let bound = DutyCycleConfig::default().max_airtime_us
            / airtime_us(&self.settings.params, self.settings.text_len).max(1);
        Ok(ThroughputReport {
            queued: sent.len(),
            hours,
            messages_per_hour,
            delivered_per_hour,
            receipts_per_hour,
            delivered_total: seen.len(),
            duplicate_deliveries: duplicates + wrong_text,
            physical_bound_per_hour: bound,
            ratio_to_bound: r3(messages_per_hour as f64 / bound.max(1) as f64),
            airtime_s_last_hour,
            bytes_on_air_last_hour,
            bytes_by_kind_last_hour: per(self.bytes_by_kind(range, &[]), 1.0),
            sync_sessions_ended: self.env.counters.sessions_ended - ended_before,
            session_end_reasons,
            arq_retransmissions: self.retransmissions() - retransmissions_before,
            frames_lost_to_collision: self.losses().0 - losses_before.0,
            frames_lost_to_half_duplex: self.losses().1 - losses_before.1,
            duty_cycle_waits: self.duty_waits() - waits_before,
            stale_deadline_wakeups: self.env.counters.stale_wakeups - stale_before,
        })
    }

    fn duty_waits(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.link.stats().duty_cycle_waits)
            .sum()
    }

    fn retransmissions(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.link.stats().arq.retransmissions)
            .sum()
    }

    /// Most airtime each radio used in any sliding hour: by when its transmissions started
    /// (what the regulation counts), and by when its link handed them to the firmware
    /// (what the link's own budget counts).
    fn check_duty(&self, report: &mut DutyReport) {
        let budget = DutyCycleConfig::default().max_airtime_us;
        for node in &self.nodes {
            let on_air = worst_hour(
                self.env
                    .log
                    .iter()
                    .filter(|t| t.radio == node.index)
                    .map(|t| (t.start_ms, t.airtime_us)),
            );
            let counted = worst_hour(
                self.env
                    .log
                    .iter()
                    .filter(|t| t.radio == node.index)
                    .map(|t| (t.handed_ms, t.airtime_us)),
            );
            for (map, worst) in [
                (&mut report.max_airtime_s_any_hour, on_air),
                (&mut report.max_airtime_s_any_hour_by_handover, counted),
            ] {
                let entry = map.entry(node.name.to_string()).or_insert(0.0);
                *entry = entry.max(r3(worst as f64 / 1e6));
            }
            report.within_budget &= on_air <= budget;
        }
        report.channel_refusals += self.env.counters.channel_refusals;
    }

    // -------------------------------------------------------------------------------
    // Where the bytes go

    /// The frames from `sender` in `range` that carried the item `probe` describes, and
    /// the breakdown of their bytes.
    fn carried(
        &self,
        range: std::ops::Range<usize>,
        sender: usize,
        probe: &Probe,
        text: &[u8],
    ) -> Option<(Vec<usize>, Vec<Entry>)> {
        for t in range {
            let tx = &self.env.log[t];
            if tx.radio != sender {
                continue;
            }
            for done in &tx.completed {
                let messages = split_messages(&done.frame);
                if !messages
                    .iter()
                    .any(|(_, bytes)| probe.find_in(bytes, text).is_some())
                {
                    continue;
                }
                let carriers = done.carriers.clone();
                return Some((carriers.clone(), self.breakdown(&carriers, probe, text)));
            }
        }
        None
    }

    /// The bytes of these frames, layer by layer.
    fn breakdown(&self, carriers: &[usize], probe: &Probe, text: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let n = carriers.len() as f64;
        let hop_header = DATAGRAM_HEADER_LEN as f64;
        add(
            &mut out,
            "link: sender address",
            TRANSPORT_OVERHEAD as f64 * n,
        );
        add(
            &mut out,
            "hop: type/key epoch byte + 24-bit frame counter",
            hop_header * n,
        );
        add(&mut out, "hop: Poly1305 tag", TAG_LEN as f64 * n);
        add(
            &mut out,
            "arq: header (seq, ack, flags)",
            ARQ_HEADER_LEN as f64 * n,
        );
        let total: usize = carriers.iter().map(|&t| self.env.log[t].len).sum();
        let mut accounted = (FRAME_OVERHEAD * carriers.len()) as f64;
        for &t in carriers {
            for done in &self.env.log[t].completed {
                if !done.carriers.iter().all(|c| carriers.contains(c)) {
                    continue;
                }
                for (message, bytes) in split_messages(&done.frame) {
                    accounted += bytes.len() as f64;
                    for e in describe_message(&message, &bytes, Some((probe, text))) {
                        add(&mut out, &e.what, e.bytes);
                    }
                }
            }
        }
        add(
            &mut out,
            "arq: stream framing (message length prefixes, SACK)",
            total as f64 - accounted,
        );
        per(out, 1.0)
    }

    /// Every byte in `range`, by direction and kind, times `scale`.
    fn bytes_by_kind(
        &self,
        range: std::ops::Range<usize>,
        probes: &[(Probe, Vec<u8>)],
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        for tx in &self.env.log[range] {
            let from = self.nodes.get(tx.radio).map_or("?", |n| n.name);
            let len = tx.len as f64;
            match tx.kind {
                TxKind::Data => {
                    add(
                        &mut out,
                        &format!("{from}: frame headers (link 2 + hop 20 + arq 2)"),
                        FRAME_OVERHEAD as f64,
                    );
                    let mut carried = 0.0;
                    for done in &tx.completed {
                        for (message, bytes) in split_messages(&done.frame) {
                            carried += bytes.len() as f64;
                            let what = summarize_message(&message, &bytes, probes);
                            add(
                                &mut out,
                                &format!("{from}: sync {what}"),
                                bytes.len() as f64,
                            );
                        }
                    }
                    add(
                        &mut out,
                        &format!("{from}: arq stream framing"),
                        tx.len.saturating_sub(FRAME_OVERHEAD) as f64 - carried,
                    );
                }
                kind => add(&mut out, &format!("{from}: {}", kind.name()), len),
            }
        }
        out
    }

    /// Every frame and note, in order, on stderr.
    fn dump(&self, label: &str) {
        let sf = self.settings.params.spreading_factor;
        eprintln!(
            "== SF{sf} {label} ({:?} delivery, seed {})",
            self.settings.delivery, self.settings.seed
        );
        let mut notes = self.env.notes.iter().peekable();
        for (i, note) in self
            .frame_notes(0..self.env.log.len(), 0, &[])
            .into_iter()
            .enumerate()
        {
            while let Some(n) = notes.next_if(|n| n.log_len <= i) {
                eprintln!(
                    "{:>12} ms  {:<5} {:?}",
                    n.at_ms, self.nodes[n.node].name, n.kind
                );
            }
            eprintln!(
                "{:>12} ms  {:<5} {:>3} B {:>9.3} ms  {:<20} {}",
                note.at_ms,
                note.from,
                note.bytes,
                note.airtime_ms,
                note.kind,
                note.carries.join(", ")
            );
        }
        for n in notes {
            eprintln!(
                "{:>12} ms  {:<5} {:?}",
                n.at_ms, self.nodes[n.node].name, n.kind
            );
        }
    }

    fn frame_notes(
        &self,
        range: std::ops::Range<usize>,
        t0: u64,
        probes: &[(Probe, Vec<u8>)],
    ) -> Vec<FrameNote> {
        self.env.log[range]
            .iter()
            .map(|tx| {
                let mut carries = Vec::new();
                for done in &tx.completed {
                    for (message, bytes) in split_messages(&done.frame) {
                        carries.push(format!(
                            "{} ({} B)",
                            summarize_message(&message, &bytes, probes),
                            bytes.len()
                        ));
                    }
                }
                if tx.kind == TxKind::Data && carries.is_empty() {
                    carries.push("part of a longer sync frame".into());
                }
                FrameNote {
                    at_ms: tx.start_ms - t0,
                    from: self.nodes.get(tx.radio).map_or("?", |n| n.name).to_string(),
                    bytes: tx.len,
                    airtime_ms: tx.airtime_us as f64 / 1e3,
                    kind: tx.kind.name(),
                    carries,
                }
            })
            .collect()
    }
}

/// One steady-state message's stretch of the log.
struct Window {
    start: usize,
    delivered: usize,
    receipt: usize,
    idle: usize,
    t0: u64,
    delivered_ms: u64,
    receipt_ms: u64,
    envelope: Envelope,
    text: Vec<u8>,
    tombstone: Option<Vec<u8>>,
}

impl Window {
    fn envelope_id(&self) -> ItemId {
        Item::Envelope(self.envelope.clone()).id()
    }
}

/// Pairs Alice and Bob in person with the node's pairing state machine (as
/// `testbed::pair_in_person` does, with a seeded RNG and no homes on disk).
fn pair(
    alice: &Identity,
    bob: &Identity,
    today: u64,
    rng: &mut rand_chacha_03::ChaCha20Rng,
) -> anyhow::Result<(ContactKeys, ContactKeys)> {
    let mut at_a = Pairing::start(alice, DisplayName::new("Alice")?, vec![], rng)?;
    let mut at_b = Pairing::start(bob, DisplayName::new("Bob")?, vec![], rng)?;
    let (code_a, code_b) = (at_a.code().clone(), at_b.code().clone());
    at_a.handle_scanned_code(code_b)?;
    at_b.handle_scanned_code(code_a)?;
    for _ in 0..4 {
        while let Some(m) = at_a.poll_transmit() {
            at_b.handle_message(&m)?;
        }
        while let Some(m) = at_b.poll_transmit() {
            at_a.handle_message(&m)?;
        }
    }
    let mut sides = Vec::new();
    for (own, pairing) in [(alice, &mut at_a), (bob, &mut at_b)] {
        let paired = pairing.take_paired().context("pairing did not complete")?;
        let peer = paired.contact.identity();
        let keys = PairKeys::new(
            paired.root_secret.expose(),
            own.public_key().as_bytes(),
            peer.as_bytes(),
            today,
        );
        sides.push(ContactKeys {
            identity: *peer.as_bytes(),
            keys,
            mailbox: paired.contact.mailbox_key(),
        });
    }
    let bob_side = sides.pop().context("pairing lost a side")?;
    let alice_side = sides.pop().context("pairing lost a side")?;
    Ok((alice_side, bob_side))
}

/// Entries divided by `n`, rounded, without the empty ones.
fn per(entries: Vec<Entry>, n: f64) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|e| Entry {
            what: e.what,
            bytes: r3(e.bytes / n),
        })
        .filter(|e| e.bytes != 0.0)
        .collect()
}

/// Rounded to thousandths (and never -0).
fn r3(x: f64) -> f64 {
    let rounded = (x * 1_000.0).round() / 1_000.0;
    if rounded == 0.0 {
        0.0
    } else {
        rounded
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| r3(values.iter().sum::<f64>() / values.len() as f64))
}

fn add(entries: &mut Vec<Entry>, what: &str, bytes: f64) {
    match entries.iter_mut().find(|e| e.what == what) {
        Some(e) => e.bytes += bytes,
        None => entries.push(Entry {
            what: what.to_string(),
            bytes,
        }),
    }
}

/// A sync frame's messages with their bytes.
fn split_messages(frame: &[u8]) -> Vec<(Message, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        let Ok((message, used)) = codec::decode_prefix::<Message>(rest) else {
            break;
        };
        out.push((message, rest[..used].to_vec()));
        rest = &rest[used..];
    }
    out
}

/// `Recon(Symbols(..))` → "Recon/Symbols", `Done` → "Done".
fn message_kind(message: &Message) -> String {
    let debug = format!("{message:?}");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect()
    };
    let outer = ident(&debug);
    let inner = debug
        .get(outer.len()..)
        .and_then(|rest| rest.strip_prefix('('))
        .map(ident)
        .unwrap_or_default();
    let wrapper = matches!(inner.as_str(), "BoundedBytes" | "BoundedVec" | "Some");
    if wrapper
        || inner.is_empty()
        || inner == outer
        || !inner.starts_with(|c: char| c.is_ascii_uppercase())
    {
        outer
    } else {
        format!("{outer}/{inner}")
    }
}

/// A short name for a message, saying which item a chunk or push carries.
fn summarize_message(message: &Message, bytes: &[u8], probes: &[(Probe, Vec<u8>)]) -> String {
    let kind = message_kind(message);
    for (probe, text) in probes {
        if let Some(form) = probe.find_in(bytes, text) {
            return format!("{kind} ({} {})", probe.name, form.name());
        }
    }
    kind
}

/// How an item appears inside a message.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// Its whole canonical encoding, at this offset of the message.
    Whole(usize),
    /// A chunk of it.
    Chunk,
    /// Its text, at this offset (a compact form the recipient rebuilds the item from).
    Compact(usize),
}

impl Form {
    fn name(self) -> &'static str {
        match self {
            Self::Whole(_) => "whole",
            Self::Chunk => "chunk",
            Self::Compact(_) => "compact",
        }
    }
}

/// An item's canonical encoding and its fields, to recognise it in a message.
struct Probe {
    name: &'static str,
    encoded: Vec<u8>,
    fields: Vec<(&'static str, usize)>,
}

impl Probe {
    fn envelope(envelope: &Envelope, text_len: usize) -> Self {
        let encoded = Item::Envelope(envelope.clone()).encode();
        let body = envelope.body.len();
        let sealed_payload = body.saturating_sub(1 + TAG_LEN);
        let mut fields = vec![
            ("envelope: format tag", 1),
            (
                "envelope: created_at (varint)",
                codec::encoded_len(&envelope.created_at_secs),
            ),
            (
                "envelope: lifetime (varint)",
                codec::encoded_len(&envelope.lifetime_secs),
            ),
            ("envelope: recipient tag", envelope.scope.0.len()),
            ("envelope: priority + copy budget", 2),
            (
                "seal: receipt lock (= AEAD nonce)",
                envelope.receipt_lock.0.len(),
            ),
            (
                "envelope: body length (varint)",
                codec::encoded_len(&(body as u64)),
            ),
            ("seal: version/day byte", 1),
            (
                "payload: format + kind bytes",
                sealed_payload.saturating_sub(text_len),
            ),
            ("text", text_len.min(sealed_payload)),
            ("seal: Poly1305 tag", TAG_LEN),
        ];
        let sum: usize = fields.iter().map(|f| f.1).sum();
        if sum != encoded.len() {
            fields.push((
                "envelope: bytes this breakdown does not know",
                encoded.len().saturating_sub(sum),
            ));
        }
        Self {
            name: "text",
            encoded,
            fields,
        }
    }

    fn tombstone(encoded: &[u8]) -> Option<Self> {
        let Ok(Item::Tombstone(t)) = Item::decode(encoded) else {
            return None;
        };
        let mut fields = vec![
            ("receipt: format tag", 1),
            ("receipt: envelope id", t.target.0.len()),
            ("receipt: recipient tag", t.scope.0.len()),
            (
                "receipt: expires_at (varint)",
                codec::encoded_len(&t.expires_at_secs),
            ),
            ("receipt: proof", t.proof.0.len()),
        ];
        let sum: usize = fields.iter().map(|f| f.1).sum();
        if sum != encoded.len() {
            fields.push((
                "receipt: bytes this breakdown does not know",
                encoded.len().saturating_sub(sum),
            ));
        }
        Some(Self {
            name: "receipt",
            encoded: encoded.to_vec(),
            fields,
        })
    }

    /// Whether (and how) a message's bytes carry this item; `text` is the item's text, for
    /// a compact form.
    fn find_in(&self, message: &[u8], text: &[u8]) -> Option<Form> {
        if let Some(at) = find(message, &self.encoded) {
            return Some(Form::Whole(at));
        }
        if let Ok((Message::Chunk(chunk), _)) = codec::decode_prefix::<Message>(message) {
            let offset = chunk.offset as usize;
            let data = chunk.data.as_slice();
            if self.encoded.get(offset..offset + data.len()) == Some(data) && !data.is_empty() {
                return Some(Form::Chunk);
            }
        }
        if !text.is_empty() {
            if let Some(at) = find(message, text) {
                return Some(Form::Compact(at));
            }
        }
        None
    }
}

/// Most airtime within any sliding hour of `(start ms, airtime µs)` records in time order:
/// a record counts from its start until an hour later, as [`DutyCycle`] counts it.
fn worst_hour(records: impl Iterator<Item = (u64, u64)>) -> u64 {
    let mut records: Vec<(u64, u64)> = records.collect();
    records.sort_unstable();
    let mut worst = 0;
    let mut sum = 0;
    let mut from = 0;
    for &(start, airtime) in &records {
        sum += airtime;
        while records[from].0 + 3_600_000 <= start {
            sum -= records[from].1;
            from += 1;
        }
        worst = worst.max(sum);
    }
    worst
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Marks a breakdown entry for another sync message that shared the frames.
const SAME_FRAME: &str = " (another message in the same frame)";

/// A message's bytes, field by field where it carries the probed item.
fn describe_message(message: &Message, bytes: &[u8], probe: Option<(&Probe, &[u8])>) -> Vec<Entry> {
    let kind = message_kind(message);
    let mut out = Vec::new();
    let entry = |what: String, bytes: usize| Entry {
        what,
        bytes: bytes as f64,
    };
    let Some((probe, text)) = probe else {
        return vec![entry(
            format!("sync: {kind} message{SAME_FRAME}"),
            bytes.len(),
        )];
    };
    match probe.find_in(bytes, text) {
        None => out.push(entry(
            format!("sync: {kind} message{SAME_FRAME}"),
            bytes.len(),
        )),
        Some(Form::Whole(at)) => {
            if let Message::Chunk(chunk) = message {
                out.extend(chunk_header(chunk, bytes.len() - probe.encoded.len()));
            } else {
                out.push(entry(format!("sync: {kind} message tag + length"), at));
                let trailing = bytes.len() - at - probe.encoded.len();
                if trailing > 0 {
                    out.push(entry(format!("sync: {kind} trailing fields"), trailing));
                }
            }
            out.extend(
                probe
                    .fields
                    .iter()
                    .map(|(what, n)| entry((*what).to_string(), *n)),
            );
        }
        Some(Form::Chunk) => {
            if let Message::Chunk(chunk) = message {
                let data = chunk.data.as_slice().len();
                out.extend(chunk_header(chunk, bytes.len() - data));
                out.push(entry(
                    format!("{}: part of its bytes (chunk)", probe.name),
                    data,
                ));
            }
        }
        Some(Form::Compact(at)) => {
            let header = DIRECT_HEADER_LEN.min(at);
            out.push(entry(
                format!("sync: {kind} message tag + length"),
                at - header,
            ));
            out.push(entry(
                "direct: compact header (flags, created_at low 24 bits, id check byte)".into(),
                header,
            ));
            out.push(entry("text".into(), text.len()));
            let trailing = bytes.len() - at - text.len();
            if trailing > 0 {
                out.push(entry(format!("sync: {kind} trailing bytes"), trailing));
            }
        }
    }
    out
}

/// A `Hello` of `len` bytes, field by field.
fn hello_fields_of(hello: &cairn_sync::wire::Hello, len: usize) -> Vec<Entry> {
    let mut fields = vec![
        ("hello: version", codec::encoded_len(&hello.version)),
        (
            "hello: carries-for-others flag",
            codec::encoded_len(&hello.carries_for_others),
        ),
        (
            "hello: wanted scope tags (count + 8 B each)",
            codec::encoded_len(&hello.scopes),
        ),
        ("hello: activity count", codec::encoded_len(&hello.activity)),
    ];
    match &hello.open {
        None => fields.push(("hello: no round-0 open", 1)),
        Some(open) => {
            fields.push(("hello: round-0 open: option tag", 1));
            fields.push(("hello: round-0 open: salt", codec::encoded_len(&open.salt)));
            fields.extend(summary_fields(&open.summary));
        }
    }
    let known: usize = fields.iter().map(|f| f.1).sum();
    let mut out = vec![Entry {
        what: "sync: message tag (Hello)".into(),
        bytes: len.saturating_sub(known) as f64,
    }];
    out.extend(fields.into_iter().map(|(what, n)| Entry {
        what: what.to_string(),
        bytes: n as f64,
    }));
    out
}

/// A reconciliation summary's fields (the body of every round's `Open`), as the recon
/// codec writes them: the count as a varint, the digest and each sketch little-endian.
fn summary_fields(summary: &cairn_sync::recon::ReconMessage) -> Vec<(&'static str, usize)> {
    let total = codec::encoded_len(summary);
    match summary {
        cairn_sync::recon::ReconMessage::Summary(s) => {
            let count = codec::encoded_len(&s.count);
            let digest = codec::encoded_len(&s.digest.to_le_bytes());
            let sketches: usize = s
                .sketches
                .iter()
                .map(|k| codec::encoded_len(&k.to_le_bytes()))
                .sum();
            vec![
                (
                    "recon summary: message tag",
                    total.saturating_sub(count + digest + sketches),
                ),
                ("recon summary: item count (varint)", count),
                ("recon summary: digest (u64)", digest),
                ("recon summary: 16 tug-of-war sketches (u16 each)", sketches),
            ]
        }
        _ => vec![("recon: message", total)],
    }
}

/// A chunk's header, field by field: everything of `header_len` bytes but its data.
fn chunk_header(chunk: &cairn_sync::wire::Chunk, header_len: usize) -> Vec<Entry> {
    let fields = [
        ("sync: chunk short id", codec::encoded_len(&chunk.short)),
        (
            "sync: chunk copies + custody flag",
            codec::encoded_len(&chunk.copies) + codec::encoded_len(&chunk.custody),
        ),
        (
            "sync: chunk total length + offset (varints)",
            codec::encoded_len(&chunk.total_len) + codec::encoded_len(&chunk.offset),
        ),
        ("sync: chunk full-id option", codec::encoded_len(&chunk.id)),
        (
            "sync: chunk data length (varint)",
            codec::encoded_len(&(chunk.data.as_slice().len() as u64)),
        ),
    ];
    let known: usize = fields.iter().map(|f| f.1).sum();
    let mut out = vec![Entry {
        what: "sync: message tag (Chunk)".into(),
        bytes: header_len.saturating_sub(known) as f64,
    }];
    out.extend(fields.iter().map(|(what, n)| Entry {
        what: (*what).to_string(),
        bytes: *n as f64,
    }));
    out
}
