//! `cairn-vradio`: virtual LoRa radios on pseudo-terminals, sharing one simulated channel.
//!
//! ```text
//! cairn-vradio --radios 3 --topology line --firmware rnode --dir /tmp/vr
//! cairn-vradio --radios 2 --topology all --firmware kiss --dir /tmp/vr --loss 0.1 --seed 7 \
//!     --time-scale 10 --params sf12
//! ```
//!
//! Each radio is a pseudo-terminal whose slave end is linked as `DIR/radio0`, `DIR/radio1`,
//! ...: a node opens it as it would open `/dev/ttyUSB0` with a real radio on it. Behind each
//! port runs the device side of the chosen firmware (an RNode that must be configured by its
//! host, a plain KISS TNC on `--params`, or a stock Meshtastic device on its LongFast preset,
//! radio N being node `0x7ad1_0000 + N`), and behind all of them one
//! [`cairn_firmware_bridge::channel::Channel`]: airtime really elapses (divided by
//! `--time-scale`), half duplex, collisions and `--loss` apply, and a radio hears only the
//! radios the topology lets it hear (`all`: everyone; `line`: 0-1-2-..., neighbours only).
//! With `--duty-cycle PERCENT`, each radio refuses a frame that would take it past that share
//! of any (virtual) hour, as firmware that enforces the EU868 limits does.
//!
//! Protocol on stdout, one JSON object per line:
//!
//! * when every port is ready: `{"ready":true,"radios":["DIR/radio0","DIR/radio1",...]}`;
//! * on SIGTERM, SIGINT or end of stdin (unless `--no-stdin`), the channel's statistics,
//!   then exit 0: `{"stopped":true,"virtual_ms":...,"radios":[{"radio":0,"path":...,
//!   "frames_sent":...,"airtime_us":...,"frames_delivered":...,"lost_to_collision":...,
//!   "lost_to_half_duplex":...,"lost_at_random":...,"refused_duty_cycle":...},...]}`.
//!
//! Human-readable notes (a host connected, a frame sent) go to stderr.
//!
//! A host may close its port and open it again (a node restarts): the pseudo-terminal stays,
//! and the device behind it restarts as a USB radio does when its port is opened (an RNode
//! then waits to be configured again). While no host has the port open, what the device
//! would write to it is dropped.
//!
//! Before transmitting, a radio listens (carrier sense): if it hears the channel busy it waits
//! for it to clear plus a random number (0-15) of CSMA slots, the slot being RNode's
//! (twelve symbols, 24-100 ms). Serial baud rates are not simulated: bytes cross the ports at
//! pseudo-terminal speed.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcflush, tcgetattr, tcsetattr, FlushArg, SetArg};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use cairn_firmware_bridge::channel::{
    Channel, ChannelConfig, ChannelEvent, Link, RadioStats, Topology,
};
use cairn_firmware_bridge::lora::{airtime_us, DutyCycle, DutyCycleConfig};
use cairn_firmware_bridge::meshtastic::MeshtasticDevice;
use cairn_firmware_bridge::rnode_device::{
    KissTncDevice, RnodeDevice, RnodeDeviceConfig, RnodePhy,
};
use cairn_firmware_bridge::{DeviceSide, LoraParams, RadioKind};

/// Builds a fresh device side for radio `index`, as the radio is when it boots (and when a
/// host reopens it). The index gives each radio its own identity where the firmware has one.
type DeviceFactory = fn(usize, LoraParams) -> Box<dyn DeviceSide>;

/// The device side each `--firmware` runs. Adding a firmware is one arm here (then drop it
/// from the `None` arm).
fn device_factory(kind: RadioKind) -> Option<DeviceFactory> {
    match kind {
        RadioKind::Rnode => Some(|_, _| Box::new(RnodeDevice::new(RnodeDeviceConfig::default()))),
        RadioKind::Kiss => Some(|_, params| Box::new(KissTncDevice::new(params))),
        // A stock device on LongFast (its own preset: `--params` is for KISS TNCs), with a
        // node number of its own, as two real boards never share one.
        RadioKind::Meshtastic => Some(|index, _| Box::new(MeshtasticDevice::new(node_num(index)))),
        RadioKind::Raw => None,
    }
}

/// Meshtastic node number of radio `index`: `0x7ad1_0000 + index`, clear of the broadcast
/// address and of the sender the devices report for frames heard on the air.
fn node_num(index: usize) -> u32 {
    // At most 256 radios (`--radios`), so the sum stays far from both.
    MESHTASTIC_NODE_BASE + u32::try_from(index).unwrap_or(0)
}

/// First Meshtastic node number handed out (radio0's).
const MESHTASTIC_NODE_BASE: u32 = 0x7ad1_0000;

#[derive(Parser, Debug)]
#[command(
    name = "cairn-vradio",
    about = "Virtual LoRa radios on pseudo-terminals over one simulated channel"
)]
struct Cli {
    /// Number of radios (pseudo-terminals).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    radios: u16,
    /// Who hears whom: all (everyone) or line (0-1-2-..., neighbours only).
    #[arg(long, value_enum, default_value_t = TopologyArg::All)]
    topology: TopologyArg,
    /// Firmware each radio speaks to its host: rnode, kiss or meshtastic (LongFast).
    #[arg(long, default_value_t = RadioKind::Rnode)]
    firmware: RadioKind,
    /// Directory for the links DIR/radio0, DIR/radio1, ... (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Probability that a frame which survived collisions is lost anyway, per receiver.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of random loss and CSMA backoff.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How much faster than real time airtime elapses (10: a 1 s frame takes 100 ms).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Radio parameters of a KISS TNC (an RNode's host chooses its own): sf7 or sf12.
    #[arg(long, value_enum, default_value_t = ParamsArg::Sf7)]
    params: ParamsArg,
    /// Regulatory duty cycle each radio enforces, in percent of any hour (EU868 g1: 1).
    /// A frame that would exceed it is refused and counted, as regulated firmware does.
    /// Off if unset.
    #[arg(long, value_name = "PERCENT")]
    duty_cycle: Option<f64>,
    /// Capture effect: a frame survives overlapping ones this many dB weaker (off if unset).
    #[arg(long)]
    capture_db: Option<f32>,
    /// Keep running when stdin ends (stop only on SIGTERM/SIGINT).
    #[arg(long)]
    no_stdin: bool,
    /// Log every frame to stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TopologyArg {
    All,
    Line,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ParamsArg {
    Sf7,
    Sf12,
}

/// What a port's reader thread reports.
#[derive(Debug)]
enum PtyEvent {
    /// A host opened the port.
    Connected(usize),
    /// The last host closed it.
    Disconnected(usize),
    /// The host wrote these bytes.
    Bytes(usize, Vec<u8>),
}

/// Most bytes kept for a host that does not read; past it, whole new frames are dropped as a
/// serial buffer overflows.
const MAX_UNWRITTEN: usize = 64 * 1024;
/// How often (real time) a port with no host is checked for one.
const HOST_CHECK: Duration = Duration::from_millis(20);
/// How soon (real time) writing to a full port is tried again.
const WRITE_RETRY: Duration = Duration::from_millis(5);
/// RNode's contention window: 0 to 15 slots (Config.h `CSMA_CW_PER_BAND_WINDOWS`).
const CSMA_WINDOWS: u64 = 16;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.duty_cycle.is_some_and(|p| !(0.1..=100.0).contains(&p)) {
        bail!("--duty-cycle is a percentage between 0.1 and 100");
    }
    if !(0.0..=1.0).contains(&cli.loss) {
        bail!("--loss must be a probability in [0, 1], got {}", cli.loss);
    }
    if !(cli.time_scale.is_finite() && cli.time_scale > 0.0) {
        bail!(
            "--time-scale must be a positive number, got {}",
            cli.time_scale
        );
    }
    let factory = device_factory(cli.firmware).with_context(|| {
        format!(
            "cairn-vradio has no {} device side: use --firmware rnode, kiss or meshtastic",
            cli.firmware
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stats = runtime.block_on(run(&cli, factory))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(&stats)?)?;
    stdout.flush()?;
    // Reader threads are parked in poll(2) on ports that stay open: leave without joining.
    std::process::exit(0);
}

#[derive(Serialize)]
struct ReadyLine {
    ready: bool,
    radios: Vec<String>,
}

#[derive(Serialize)]
struct StatsLine {
    stopped: bool,
    virtual_ms: u64,
    radios: Vec<RadioReport>,
}

#[derive(Serialize)]
struct RadioReport {
    radio: usize,
    path: String,
    frames_sent: u64,
    airtime_us: u64,
    frames_delivered: u64,
    lost_to_collision: u64,
    lost_to_half_duplex: u64,
    lost_at_random: u64,
    /// Frames the radio refused because they would exceed `--duty-cycle`.
    refused_duty_cycle: u64,
}

async fn run(cli: &Cli, factory: DeviceFactory) -> anyhow::Result<StatsLine> {
    let count = usize::from(cli.radios);
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("creating {}", cli.dir.display()))?;

    let params = match cli.params {
        ParamsArg::Sf7 => LoraParams::sf7(),
        ParamsArg::Sf12 => LoraParams::sf12(),
    };
    let topology = match cli.topology {
        TopologyArg::All => Topology::all_hear_all(count, Link::default()),
        TopologyArg::Line => Topology::line(count, Link::default()),
    };
    let config = ChannelConfig {
        seed: cli.seed,
        loss: cli.loss,
        capture_threshold_db: cli.capture_db,
    };

    let (events_tx, mut events_rx) = mpsc::channel::<PtyEvent>(256);
    let mut radios = Vec::with_capacity(count);
    let mut links = Vec::with_capacity(count);
    for index in 0..count {
        let link = cli.dir.join(format!("radio{index}"));
        let master = Arc::new(open_port(&link)?);
        let reader_master = Arc::clone(&master);
        let reader_events = events_tx.clone();
        std::thread::Builder::new()
            .name(format!("radio{index}"))
            .spawn(move || read_port(index, &reader_master, &reader_events))
            .context("starting a port reader thread")?;
        let mut radio = Radio::new(factory(index, params), master);
        radio.duty = cli.duty_cycle.map(|percent| {
            // Virtual ms: a `--time-scale` run keeps the same budget per virtual hour.
            DutyCycle::new(DutyCycleConfig::with_permille(
                (percent * 10.0).round() as u32,
                3_600_000,
            ))
        });
        radios.push(radio);
        links.push(link);
    }
    drop(events_tx);

    let mut air = Air {
        channel: Channel::new(topology, params, config),
        radios,
        factory,
        params,
        rng: ChaCha8Rng::seed_from_u64(cli.seed ^ 0x5EED_C5A4),
        write_retry_us: (WRITE_RETRY.as_secs_f64() * cli.time_scale * 1e6) as u64,
        verbose: cli.verbose,
    };
    // Radios that are off (an unconfigured RNode) hear nothing until their host turns them on.
    for index in 0..count {
        air.sync_params(index);
    }

    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let (stdin_closed_tx, mut stdin_closed) = mpsc::channel::<()>(1);
    if !cli.no_stdin {
        std::thread::Builder::new()
            .name("stdin".to_owned())
            .spawn(move || {
                let mut sink = [0u8; 512];
                let mut stdin = std::io::stdin().lock();
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                let _ = stdin_closed_tx.blocking_send(());
            })
            .context("starting the stdin watcher")?;
    } else {
        // Never fires: keep the sender alive for the whole run.
        std::mem::forget(stdin_closed_tx);
    }

    let clock = Clock::new(cli.time_scale);
    let ready = ReadyLine {
        ready: true,
        radios: links
            .iter()
            .map(|link| link.display().to_string())
            .collect(),
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", serde_json::to_string(&ready)?)?;
        stdout.flush()?;
    }

    loop {
        let now_us = clock.now_us();
        air.step(now_us);
        let wake = clock.deadline(now_us, air.next_wake_us(now_us));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            event = events_rx.recv() => match event {
                Some(event) => air.handle_port(clock.now_us(), event),
                None => bail!("every port reader stopped"),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = stdin_closed.recv() => break,
        }
    }

    for link in &links {
        let _ = std::fs::remove_file(link);
    }
    let virtual_ms = clock.now_us() / 1_000;
    let reports = air
        .channel
        .all_stats()
        .iter()
        .zip(&links)
        .enumerate()
        .map(|(radio, (stats, link))| {
            report(radio, link, stats, air.radios[radio].refused_duty_cycle)
        })
        .collect();
    Ok(StatsLine {
        stopped: true,
        virtual_ms,
        radios: reports,
    })
}

fn report(radio: usize, link: &Path, stats: &RadioStats, refused: u64) -> RadioReport {
    RadioReport {
        radio,
        path: link.display().to_string(),
        frames_sent: stats.frames_sent,
        airtime_us: stats.airtime_us,
        frames_delivered: stats.frames_delivered,
        lost_to_collision: stats.lost_to_collision,
        lost_to_half_duplex: stats.lost_to_half_duplex,
        lost_at_random: stats.lost_at_random,
        refused_duty_cycle: refused,
    }
}

/// Opens a pseudo-terminal in raw mode, links its slave end at `link`, and returns the
/// master. The slave is closed again: the port is the host's to open.
fn open_port(link: &Path) -> anyhow::Result<OwnedFd> {
    let pty = openpty(None, None).context("opening a pseudo-terminal")?;
    let mut termios = tcgetattr(&pty.slave).context("reading the terminal settings")?;
    // Raw: no echo, no line editing, no CR/LF translation; the settings outlive this open.
    cfmakeraw(&mut termios);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).context("making the terminal raw")?;
    let slave_path = nix::unistd::ttyname(&pty.slave).context("naming the terminal")?;
    // Writes from the main loop must never block on a host that does not read.
    fcntl(&pty.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .context("making the terminal non-blocking")?;

    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(link)
            .with_context(|| format!("replacing the old link {}", link.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a link: choose another --dir",
            link.display()
        ),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&slave_path, link)
        .with_context(|| format!("linking {} to {}", link.display(), slave_path.display()))?;
    drop(pty.slave);
    Ok(pty.master)
}

/// A port's reader thread: reports hosts coming and going, and the bytes they write.
///
/// While no host has the slave open, the master polls as hung up; that is checked every
/// [`HOST_CHECK`] instead of waited on, since a hung-up descriptor is always "ready".
fn read_port(index: usize, master: &OwnedFd, events: &mpsc::Sender<PtyEvent>) {
    let mut connected = false;
    let mut buffer = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        let timeout = if connected {
            PollTimeout::NONE
        } else {
            PollTimeout::from(20u8)
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        let mut hung_up = revents.contains(PollFlags::POLLHUP);
        let readable = revents.contains(PollFlags::POLLIN);
        if !connected {
            if hung_up && !readable {
                std::thread::sleep(HOST_CHECK);
                continue;
            }
            connected = true;
            if events.blocking_send(PtyEvent::Connected(index)).is_err() {
                return;
            }
        }
        if readable {
            match nix::unistd::read(master, &mut buffer) {
                Ok(0) => hung_up = true,
                Ok(n) => {
                    let bytes = buffer[..n].to_vec();
                    if events.blocking_send(PtyEvent::Bytes(index, bytes)).is_err() {
                        return;
                    }
                    hung_up = false; // read what is left before believing a hangup
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => hung_up = true, // EIO: the last host closed the port
            }
        }
        if hung_up {
            connected = false;
            if events.blocking_send(PtyEvent::Disconnected(index)).is_err() {
                return;
            }
        }
    }
}

/// Virtual time: real time since start, times the time scale.
struct Clock {
    start: tokio::time::Instant,
    scale: f64,
}

impl Clock {
    fn new(scale: f64) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            scale,
        }
    }

    fn now_us(&self) -> u64 {
        (self.start.elapsed().as_secs_f64() * self.scale * 1e6) as u64
    }

    /// The real instant at which virtual time reaches `wake_us` (`now_us` being now).
    fn deadline(&self, now_us: u64, wake_us: u64) -> tokio::time::Instant {
        let ahead_s = wake_us.saturating_sub(now_us) as f64 / 1e6 / self.scale;
        // An hour is "no deadline": the loop wakes for port events and signals anyway.
        let ahead = Duration::try_from_secs_f64(ahead_s.min(3_600.0)).unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + ahead
    }
}

/// One radio: its device side, its port, and what waits for the air or the host.
struct Radio {
    device: Box<dyn DeviceSide>,
    master: Arc<OwnedFd>,
    /// A host has the port open.
    connected: bool,
    /// Bytes for the host the port could not take yet.
    unwritten: VecDeque<u8>,
    /// A frame taken from the device, waiting for the channel to be clear.
    pending: Option<Vec<u8>>,
    /// Earliest virtual time to try `pending` again (CSMA backoff).
    retry_at_us: u64,
    /// Bumped each time the device is replaced, so that the end of a transmission the old
    /// device started is not reported to the new one.
    generation: u64,
    /// Generation of the device whose frame is on air.
    on_air: Option<u64>,
    /// Airtime in the last hour, when `--duty-cycle` is set (in virtual ms).
    duty: Option<DutyCycle>,
    /// Frames refused for the duty cycle.
    refused_duty_cycle: u64,
}

impl Radio {
    fn new(device: Box<dyn DeviceSide>, master: Arc<OwnedFd>) -> Self {
        Self {
            device,
            master,
            connected: false,
            unwritten: VecDeque::new(),
            pending: None,
            retry_at_us: 0,
            generation: 0,
            on_air: None,
            duty: None,
            refused_duty_cycle: 0,
        }
    }
}

/// The radios and the channel they share.
struct Air {
    channel: Channel,
    radios: Vec<Radio>,
    factory: DeviceFactory,
    params: LoraParams,
    rng: ChaCha8Rng,
    /// [`WRITE_RETRY`] in virtual time.
    write_retry_us: u64,
    verbose: bool,
}

impl Air {
    fn handle_port(&mut self, now_us: u64, event: PtyEvent) {
        match event {
            PtyEvent::Connected(index) => {
                eprintln!("cairn-vradio: radio{index}: host connected");
                let radio = &mut self.radios[index];
                // Drop what was written for a previous host and never read.
                let _ = tcflush(radio.master.as_fd(), FlushArg::TCOFLUSH);
                radio.device = (self.factory)(index, self.params);
                radio.generation += 1;
                radio.pending = None;
                radio.unwritten.clear();
                radio.connected = true;
                self.sync_params(index);
            }
            PtyEvent::Disconnected(index) => {
                eprintln!("cairn-vradio: radio{index}: host disconnected");
                let radio = &mut self.radios[index];
                radio.connected = false;
                radio.unwritten.clear();
            }
            PtyEvent::Bytes(index, bytes) => {
                self.radios[index]
                    .device
                    .handle_host(now_us / 1_000, &bytes);
                self.sync_params(index);
            }
        }
    }

    /// Tells the channel what the device's radio is tuned to (or that it is off).
    fn sync_params(&mut self, index: usize) {
        let params = self.radios[index].device.lora_params();
        let _ = self.channel.set_params(index, params);
    }

    /// Everything due at `now_us`: ends of transmissions, deliveries, new transmissions,
    /// bytes for the hosts.
    fn step(&mut self, now_us: u64) {
        while let Some(event) = self.channel.poll(now_us) {
            match event {
                ChannelEvent::Transmitted { radio, .. } => {
                    let radio = &mut self.radios[radio];
                    if radio.on_air.take() == Some(radio.generation) {
                        radio.device.handle_transmitted();
                    }
                }
                ChannelEvent::Delivered(delivery) => {
                    if self.verbose {
                        eprintln!(
                            "cairn-vradio: radio{} heard {} bytes from radio{}",
                            delivery.to,
                            delivery.frame.len(),
                            delivery.from
                        );
                    }
                    self.radios[delivery.to].device.handle_received(
                        &delivery.frame,
                        delivery.rssi_dbm,
                        delivery.snr_db,
                    );
                }
            }
        }
        for index in 0..self.radios.len() {
            self.sync_params(index);
            self.try_transmit(index, now_us);
            self.flush_host(index);
        }
    }

    /// Puts the radio's next frame on air if the channel is clear; otherwise backs off.
    fn try_transmit(&mut self, index: usize, now_us: u64) {
        if self.channel.is_transmitting(index, now_us) {
            return;
        }
        let radio = &mut self.radios[index];
        if radio.pending.is_none() {
            radio.pending = radio.device.poll_transmit();
            radio.retry_at_us = now_us;
        }
        let Some(frame) = radio.pending.as_ref() else {
            return;
        };
        if now_us < radio.retry_at_us {
            return;
        }
        if let Some(quiet_us) = self.channel.busy_until_us(index, now_us) {
            let slot_us = radio.device.lora_params().map_or(24_000, |params| {
                let phy = RnodePhy::new(
                    params.bandwidth_hz,
                    params.spreading_factor,
                    params.coding_rate,
                );
                u64::from(phy.csma_slot_ms) * 1_000
            });
            let windows = self.rng.next_u64() % CSMA_WINDOWS;
            radio.retry_at_us = quiet_us.saturating_add(slot_us * windows);
            return;
        }
        if let Some(duty) = radio.duty.as_mut() {
            let airtime_us = self
                .channel
                .params(index)
                .map_or(0, |params| airtime_us(&params, frame.len()));
            if duty.earliest(now_us / 1_000, airtime_us) > now_us / 1_000 {
                radio.refused_duty_cycle += 1;
                if self.verbose {
                    eprintln!(
                        "cairn-vradio: radio{index}: frame refused, it would exceed the duty cycle"
                    );
                }
                radio.device.handle_transmitted();
                radio.pending = None;
                // The device may have more queued: each is refused (or sent) in turn.
                return self.try_transmit(index, now_us);
            }
            duty.record(now_us / 1_000, airtime_us);
        }
        match self.channel.transmit(now_us, index, frame) {
            Ok(end_us) => {
                if self.verbose {
                    eprintln!(
                        "cairn-vradio: radio{index} sends {} bytes, on air {} µs",
                        frame.len(),
                        end_us - now_us
                    );
                }
                radio.on_air = Some(radio.generation);
            }
            Err(error) => {
                eprintln!("cairn-vradio: radio{index}: frame dropped: {error}");
                // The device waits for the end of its transmission: give it that.
                radio.device.handle_transmitted();
            }
        }
        radio.pending = None;
    }

    /// Writes what the device has for its host, as far as the port takes it.
    fn flush_host(&mut self, index: usize) {
        let radio = &mut self.radios[index];
        while let Some(bytes) = radio.device.poll_host() {
            if radio.connected && radio.unwritten.len() + bytes.len() <= MAX_UNWRITTEN {
                radio.unwritten.extend(bytes);
            }
        }
        while !radio.unwritten.is_empty() {
            let (head, _) = radio.unwritten.as_slices();
            match nix::unistd::write(radio.master.as_fd(), head) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(written) => {
                    radio.unwritten.drain(..written);
                }
                Err(Errno::EINTR) => {}
                Err(_) => {
                    // The host went away; its reader thread reports it.
                    radio.unwritten.clear();
                }
            }
        }
    }

    /// The next virtual time something is due.
    fn next_wake_us(&self, now_us: u64) -> u64 {
        let mut wake = self.channel.next_event_us().unwrap_or(u64::MAX);
        for (index, radio) in self.radios.iter().enumerate() {
            if radio.pending.is_some() && !self.channel.is_transmitting(index, now_us) {
                wake = wake.min(radio.retry_at_us);
            }
            if !radio.unwritten.is_empty() {
                wake = wake.min(now_us.saturating_add(self.write_retry_us));
            }
        }
        wake.max(now_us)
    }
}
