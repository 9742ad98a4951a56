//! The `cairn` command line: argument parsing and one function per command.
//!
//! Output on stdout is for people and scripts (`--json` prints one object per line); hints
//! and warnings go to stderr. Every error is one `error: ...` line on stderr and exit code 1;
//! usage errors are clap's (exit code 2).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use cairn_firmware_bridge::{LoraParams, RadioKind};
use cairn_node::app::{AppDb, Direction, MessageRecord, MAX_TEXT_BYTES};
use cairn_node::contact::{
    AddOutcome, Contact, ContactBook, ContactCode, DisplayName, QrTheme, Verification,
};
use cairn_node::daemon::RunArgs;
use cairn_node::home::{Config, Home};
use cairn_node::identity::{
    safety_code, Identity, IdentityError, IdentityFileInfo, IdentityPublicKey, KdfParams,
    Protection,
};
use cairn_node::seal::{period_of, PairKeys};

/// Environment variable holding the identity's passphrase.
const PASSPHRASE_VAR: &str = "CAIRN_PASSPHRASE";

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: an offline-first mesh messenger",
    long_about = "Cairn: an offline-first mesh messenger.\n\n\
        Messages travel from device to device (LAN, serial radios) and are carried by other \
        nodes until they reach their recipient, end-to-end sealed.\n\n\
        Start with `cairn init --name NAME`, share the contact code it prints, add your \
        contacts' codes with `cairn contacts add NAME CODE`, then `cairn send` and \
        `cairn run`.\n\n\
        Exit codes: 0 success, 1 error (one `error: ...` line on stderr), 2 usage error.",
    after_help = "Environment:\n  \
        CAIRN_HOME        home directory when --home is not given\n  \
        CAIRN_PASSPHRASE  passphrase of the identity: set it at `init` to seal the identity,\n                    \
        then for `run` and every command that reads contacts or messages\n  \
        RUST_LOG          log filter for stderr (default: info for run/demo, warn otherwise)"
)]
pub struct Cli {
    /// Home directory of the node [default: $CAIRN_HOME, else the platform data directory,
    /// e.g. ~/.local/share/cairn]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create this node: identity, configuration, and print the contact code to share
    #[command(
        long_about = "Create this node in its home directory (mode 0700): a new \
        identity, and a configuration with the display name and the team network key.\n\n\
        The identity is sealed with a passphrase only if CAIRN_PASSPHRASE is set. An existing \
        identity is never overwritten. Prints the fingerprint, then the contact code on the \
        last line."
    )]
    Init(InitArgs),
    /// Show this node's name, fingerprint and contact code (on the last line)
    Id(IdArgs),
    /// Add and list contacts
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Pair with someone in person: a contact verified in person, with forward secrecy
    #[command(long_about = "Pair with someone in person.\n\n\
        Prints your pairing code (first line of output), then reads theirs from standard \
        input: each of you types (or scans) the other's code. The two devices then talk over \
        the LAN (yours listens on --listen; the one whose code sorts first dials the other), \
        or with --serial and --radio over a radio or cable (no network needed: the frames \
        carry a session only your two codes name, and are resent until the other side has \
        them), and check that the keys they exchange match the codes, so a tampered code is \
        detected. The contact is stored as verified in person, under NAME.")]
    Pair(PairArgs),
    /// Queue a message to a contact; prints its id
    #[command(
        long_about = "Queue a message to a contact; prints the message id.\n\n\
        Works whether or not `cairn run` is active and whether or not the contact is \
        reachable: the running node seals and sends queued messages."
    )]
    Send(SendArgs),
    /// List messages, oldest first
    #[command(long_about = "List messages, oldest first.\n\n\
        With --json, one object per line: id, direction (outgoing | incoming), from, to \
        (contact names; \"me\" for this node), peer_fingerprint, text, sent_at, \
        received_at, status (queued | relayed | delivered | received) and envelope (64 hex \
        digits or null). Times are Unix seconds (UTC), null when unknown: sent_at is when \
        the message was written (for incoming ones, the sender's clock), received_at when \
        this node received it.")]
    Messages(MessagesArgs),
    /// Show whether the node is running, its figures, and the queued messages
    Status(StatusArgs),
    /// Run the node until interrupted (Ctrl-C or SIGTERM)
    #[command(long_about = "Run the node until interrupted (Ctrl-C or SIGTERM).\n\n\
        With no transport named the LAN is used. Naming any transport (--lan, --serial, \
        --ble) uses just those; the LAN options (--interface, --listen, --peer) turn on \
        the LAN.\n\n\
        Serial bearers: --serial PATH[:BAUD] --radio KIND, repeatable, paired in order. \
        KIND is raw (a cable to another Cairn device), kiss (a KISS TNC), rnode (an RNode, \
        configured with --frequency, --bandwidth, --sf, --cr and --tx-power) or meshtastic \
        (a stock Meshtastic device, which keeps its own LoRa preset). Every radio of a team \
        must use the same LoRa settings.")]
    Run(RunCli),
    /// Talk to a radio on a serial port
    #[command(subcommand)]
    Radio(RadioCommand),
    /// Run a three-node demonstration on this machine
    Demo,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Your display name, as your contacts will see it (at most 64 bytes)
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Team secret: only nodes with the same secret can link. Without it, the default
    /// network. Use `-` to read it from the first line of stdin (keeps it out of the
    /// process list)
    #[arg(long, value_name = "SECRET")]
    pub network: Option<String>,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// Also draw the contact code as a QR code (before the code)
    #[arg(long)]
    pub qr: bool,
}

#[derive(Subcommand, Debug)]
pub enum ContactsCommand {
    /// Add a contact from their contact code; prints the safety code to compare
    #[command(
        long_about = "Add a contact from their contact code (`cairn1:...`), under \
        a name you choose (unique, ignoring case). Prints the safety code: compare it with \
        your contact, in person or on a call; it is the same on both devices."
    )]
    Add(AddArgs),
    /// List contacts: name, verification state, fingerprint
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct PairArgs {
    /// The name you will use for this contact
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to listen for the other device (its code tells it where)
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// Pair over the radio (or cable) on this serial port instead of the network, e.g.
    /// /dev/ttyUSB0:115200; needs --radio
    #[arg(long, value_name = "PATH[:BAUD]", value_parser = parse_serial, requires = "radio")]
    pub serial: Option<String>,
    /// What speaks on the --serial port: raw, kiss, rnode or meshtastic
    #[arg(long, value_name = "KIND", requires = "serial")]
    pub radio: Option<RadioKind>,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// How long to wait for the other device, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub wait: u64,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The name you will use for this contact (e.g. in `cairn send NAME ...`)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Their contact code; spaces and line breaks inside it are ignored
    #[arg(value_name = "CODE", required = true, num_args = 1..)]
    pub code: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// One JSON object per line: name, display_name, fingerprint, identity, verification
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The contact's name (see `cairn contacts list`)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The message (at most 4096 bytes of UTF-8)
    #[arg(value_name = "TEXT", allow_hyphen_values = true)]
    pub text: String,
}

#[derive(Args, Debug)]
pub struct MessagesArgs {
    /// One JSON object per line (fields: see `cairn messages --help`)
    #[arg(long)]
    pub json: bool,
    /// Only messages with this contact
    #[arg(long, value_name = "NAME")]
    pub with: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// One JSON object: running, pid, updated_at, peers_seen, links_up, store_items,
    /// store_bytes, carried (null when not running), queued, relayed, delivered, received
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Default)]
pub struct RunCli {
    /// Use the LAN (the default when no transport is named)
    #[arg(long)]
    pub lan: bool,
    /// Limit LAN discovery to this network interface (repeatable)
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Address to listen on for LAN links, e.g. 0.0.0.0:7420
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A LAN peer to connect to, for networks that block multicast (repeatable)
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<SocketAddr>,
    /// A serial link, e.g. /dev/ttyUSB0:115200 (repeatable; default baud rate 115200)
    #[arg(long = "serial", value_name = "PATH[:BAUD]", value_parser = parse_serial)]
    pub serial: Vec<String>,
    /// What speaks on each --serial, in order: raw (a direct cable), kiss, rnode or
    /// meshtastic. One --radio for several --serial applies to all of them
    #[arg(long = "radio", value_name = "KIND", requires = "serial")]
    pub radio: Vec<RadioKind>,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Use Bluetooth LE
    #[arg(long)]
    pub ble: bool,
}

impl RunCli {
    /// The daemon's arguments: with no transport named, the LAN; LAN options turn it on.
    pub fn to_run_args(&self) -> RunArgs {
        let lan_options =
            !self.interfaces.is_empty() || self.listen.is_some() || !self.peers.is_empty();
        let other_transport = !self.serial.is_empty() || self.ble;
        RunArgs {
            lan: self.lan || lan_options || !other_transport,
            interfaces: self.interfaces.clone(),
            listen: self.listen,
            peers: self.peers.clone(),
            serial: self.serial.clone(),
            radio: self.radio.clone(),
            lora: self.lora.params(),
            ble: self.ble,
        }
    }
}

/// LoRa settings for radios whose host sets them (RNode). Meshtastic devices keep their own
/// preset; a cable has none. Every radio in a team must use the same ones.
#[derive(Args, Debug, Clone, Copy)]
pub struct LoraArgs {
    /// Carrier frequency in Hz (check what your country allows)
    #[arg(long = "frequency", value_name = "HZ", default_value_t = LoraParams::sf7().frequency_hz)]
    pub frequency_hz: u32,
    /// LoRa bandwidth in Hz
    #[arg(long = "bandwidth", value_name = "HZ", default_value_t = 125_000)]
    pub bandwidth_hz: u32,
    /// LoRa spreading factor, 7 (fast, short range) to 12 (slow, long range)
    #[arg(long = "sf", value_name = "N", default_value_t = 7, value_parser = clap::value_parser!(u8).range(5..=12))]
    pub spreading_factor: u8,
    /// LoRa coding rate denominator, 5 to 8 (4/5 to 4/8)
    #[arg(long = "cr", value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u8).range(5..=8))]
    pub coding_rate: u8,
    /// Transmit power in dBm
    #[arg(long = "tx-power", value_name = "DBM", default_value_t = 14)]
    pub tx_power_dbm: u8,
}

impl Default for LoraArgs {
    fn default() -> Self {
        let p = LoraParams::sf7();
        Self {
            frequency_hz: p.frequency_hz,
            bandwidth_hz: p.bandwidth_hz,
            spreading_factor: p.spreading_factor,
            coding_rate: p.coding_rate,
            tx_power_dbm: p.tx_power_dbm,
        }
    }
}

impl LoraArgs {
    pub fn params(&self) -> LoraParams {
        LoraParams {
            frequency_hz: self.frequency_hz,
            bandwidth_hz: self.bandwidth_hz,
            spreading_factor: self.spreading_factor,
            coding_rate: self.coding_rate,
            tx_power_dbm: self.tx_power_dbm,
            ..LoraParams::sf7()
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RadioCommand {
    /// Ask the device on a serial port what it is and print what its firmware reports
    #[command(long_about = "Ask the device on a serial port what it is.\n\n\
        Opens the port, runs the firmware handshake (configuring an RNode with the LoRa \
        settings given), prints what the firmware reports, and exits. Exit code 1 if the \
        device does not answer within --wait seconds.")]
    Info(RadioInfoArgs),
}

#[derive(Args, Debug)]
pub struct RadioInfoArgs {
    /// The serial port, e.g. /dev/ttyUSB0:115200
    #[arg(value_name = "PATH[:BAUD]", value_parser = parse_serial)]
    pub port: String,
    /// What speaks on the port: raw, kiss, rnode or meshtastic
    #[arg(long, value_name = "KIND")]
    pub radio: RadioKind,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// How long to wait for the device, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub wait: u64,
}

fn parse_serial(value: &str) -> Result<String, String> {
    let (path, baud) = match value.rsplit_once(':') {
        Some((path, baud)) => (path, Some(baud)),
        None => (value, None),
    };
    if path.is_empty() {
        return Err("expected PATH or PATH:BAUD, e.g. /dev/ttyUSB0:115200".into());
    }
    if let Some(baud) = baud {
        match baud.parse::<u32>() {
            Ok(rate) if rate > 0 => {}
            _ => return Err(format!("{baud:?} is not a baud rate (e.g. 115200)")),
        }
    }
    Ok(value.to_owned())
}

/// Default log level of a command when `RUST_LOG` is not set. The demo tells its own story
/// on stdout; its nodes' logs would drown it (`RUST_LOG=info cairn demo` shows them).
pub fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::Run(_) => "info",
        _ => "warn",
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    if let Command::Demo = cli.command {
        return cairn_node::daemon::demo();
    }
    let home = Home::resolve(cli.home)?;
    let mut out = io::stdout().lock();
    match cli.command {
        Command::Init(args) => init(&home, &args, &mut out)?,
        Command::Id(args) => id(&home, &args, &mut out)?,
        Command::Contacts(ContactsCommand::Add(args)) => contacts_add(&home, &args, &mut out)?,
        Command::Contacts(ContactsCommand::List(args)) => contacts_list(&home, &args, &mut out)?,
        Command::Send(args) => send(&home, &args, &mut out)?,
        Command::Pair(args) => pair(&home, &args, &mut out)?,
        Command::Messages(args) => messages(&home, &args, &mut out)?,
        Command::Status(args) => status(&home, &args, &mut out)?,
        Command::Run(args) => {
            drop(out);
            return cairn_node::daemon::run(home.path(), args.to_run_args());
        }
        Command::Radio(RadioCommand::Info(args)) => radio_info(&args, &mut out)?,
        Command::Demo => unreachable!("handled above"),
    }
    out.flush()?;
    Ok(())
}

fn radio_info(args: &RadioInfoArgs, out: &mut impl Write) -> Result<()> {
    let info = cairn_node::daemon::radio_info(
        &args.port,
        args.radio,
        args.lora.params(),
        std::time::Duration::from_secs(args.wait),
    )?;
    writeln!(out, "firmware: {}", info.firmware)?;
    writeln!(out, "kind: {}", args.radio)?;
    writeln!(out, "max frame: {} bytes", info.max_frame)?;
    if let Some(lora) = info.lora {
        writeln!(
            out,
            "lora: {:.3} MHz, {} kHz, SF{}, CR 4/{}, {} dBm",
            f64::from(lora.frequency_hz) / 1e6,
            lora.bandwidth_hz / 1000,
            lora.spreading_factor,
            lora.coding_rate,
            lora.tx_power_dbm
        )?;
    }
    for (name, value) in &info.details {
        writeln!(out, "{name}: {value}")?;
    }
    Ok(())
}

fn init(home: &Home, args: &InitArgs, out: &mut impl Write) -> Result<()> {
    let name = DisplayName::new(&args.name).context("--name refused")?;
    let network_secret = match args.network.as_deref() {
        Some("-") => Some(read_secret_line()?),
        Some("") => bail!("--network needs a secret (or leave it out for the default network)"),
        other => other.map(str::to_owned),
    };
    let passphrase = passphrase_from_env()?;
    let protection = match passphrase.as_ref().map(|p| p.as_str()) {
        Some(passphrase) => Protection::Passphrase {
            passphrase,
            params: KdfParams::default(),
        },
        None => Protection::None,
    };
    let mut rng = rand_core_06::OsRng;
    let identity = Identity::generate(&mut rng);
    identity.save_new(home.path(), &protection, &mut rng)?;
    let config = Config {
        display_name: name.as_str().to_owned(),
        network_key: Config::network_key_for(network_secret.as_deref()),
    };
    home.save_config(&config)?;
    let code = ContactCode::new(&identity, name, Vec::new())?;
    writeln!(
        out,
        "created {} in {}{}",
        config.display_name,
        home.path().display(),
        if passphrase.is_some() {
            " (identity sealed with CAIRN_PASSPHRASE)"
        } else {
            ""
        }
    )?;
    writeln!(out, "network: {}", network_label(network_secret.is_some()))?;
    writeln!(out, "fingerprint: {}", identity.public_key().fingerprint())?;
    writeln!(out, "contact code (share it with your contacts):")?;
    writeln!(out, "{}", code.encode())?;
    Ok(())
}

fn network_label(team: bool) -> &'static str {
    if team {
        "team network (from --network)"
    } else {
        "default network"
    }
}

fn id(home: &Home, args: &IdArgs, out: &mut impl Write) -> Result<()> {
    let identity = load_identity(home)?;
    let config = home.load_config()?;
    let name = DisplayName::new(&config.display_name)
        .with_context(|| format!("the display name in {}", home.config_path().display()))?;
    let code = ContactCode::new(&identity, name, Vec::new())?;
    writeln!(out, "name: {}", config.display_name)?;
    writeln!(out, "fingerprint: {}", identity.public_key().fingerprint())?;
    if args.qr {
        write!(out, "{}", code.render_qr(QrTheme::DarkTerminal)?)?;
        writeln!(out)?;
    }
    writeln!(out, "{}", code.encode())?;
    Ok(())
}

/// Starts a pairing, shows our pairing code (first line of output) and reads theirs.
fn exchange_codes(
    identity: &Identity,
    config: &Config,
    hints: Vec<cairn_node::contact::ReachabilityHint>,
    out: &mut impl Write,
) -> Result<(cairn_node::contact::Pairing, ContactCode)> {
    let pairing = cairn_node::contact::Pairing::start(
        identity,
        DisplayName::new(&config.display_name)?,
        hints,
        &mut rand_core_06::OsRng,
    )?;
    writeln!(out, "{}", pairing.code().encode())?;
    writeln!(out, "type or paste the other device's pairing code:")?;
    out.flush()?;
    let mut line = String::new();
    io::stdin().read_line(&mut line)?;
    Ok((pairing, ContactCode::decode(line.trim())?))
}

/// The pairing over TCP: our code names where we listen; the lower commitment dials.
fn pair_by_tcp(
    identity: &Identity,
    config: &Config,
    args: &PairArgs,
    out: &mut impl Write,
) -> Result<cairn_node::contact::PairedContact> {
    use cairn_node::contact::ReachabilityHint;
    use std::net::{TcpListener, TcpStream};

    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut local = listener.local_addr()?;
    if local.ip().is_unspecified() {
        // Listening everywhere: tell the other device the address of the interface this
        // machine would use to reach the LAN (a UDP connect only picks a route; nothing is
        // sent).
        let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
        if probe.connect("192.0.2.1:9").is_ok() {
            local.set_ip(probe.local_addr()?.ip());
        }
    }
    let hint = ReachabilityHint::new(&local.to_string())?;
    let (mut pairing, theirs) = exchange_codes(identity, config, vec![hint], out)?;
    let wait = std::time::Duration::from_secs(args.wait);
    let peer_addr: SocketAddr = theirs
        .hints()
        .first()
        .and_then(|h| h.as_str().parse().ok())
        .context("their pairing code says nowhere to reach them")?;
    let ours_first = pairing.code().commitment().map(|c| *c.as_bytes())
        < theirs.commitment().map(|c| *c.as_bytes());
    pairing.handle_scanned_code(theirs)?;
    let mut stream = if ours_first {
        TcpStream::connect_timeout(&peer_addr, wait)
            .with_context(|| format!("cannot reach the other device at {peer_addr}"))?
    } else {
        listener.set_nonblocking(false)?;
        let (stream, _) = listener.accept()?;
        stream
    };
    stream.set_read_timeout(Some(wait))?;
    let paired = loop {
        while let Some(message) = pairing.poll_transmit() {
            let len = u16::try_from(message.len()).context("pairing message too long")?;
            stream.write_all(&len.to_be_bytes())?;
            stream.write_all(&message)?;
        }
        if let Some(paired) = pairing.take_paired() {
            break paired;
        }
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .context("the other device went away before pairing finished")?;
        let len = usize::from(u16::from_be_bytes(len));
        if len > 1024 {
            bail!("the other device sent an oversized pairing message");
        }
        let mut message = vec![0u8; len];
        stream.read_exact(&mut message)?;
        pairing.handle_message(&message)?;
    };
    // Let the peer read our last confirmation before the connection closes.
    let _ = stream.flush();
    Ok(paired)
}

/// The pairing over a radio (or a cable): no address in the code; the frames carry a session
/// both codes name.
fn pair_by_radio(
    identity: &Identity,
    config: &Config,
    args: &PairArgs,
    port: &str,
    kind: RadioKind,
    out: &mut impl Write,
) -> Result<cairn_node::contact::PairedContact> {
    use cairn_node::pair_link::PairLink;

    let (mut pairing, theirs) = exchange_codes(identity, config, Vec::new(), out)?;
    let (Some(ours), Some(their_commitment)) = (pairing.code().commitment(), theirs.commitment())
    else {
        bail!("that is a contact code, not a pairing code: ask for the code `cairn pair` shows");
    };
    let session = PairLink::session_of(ours.as_bytes(), their_commitment.as_bytes());
    pairing.handle_scanned_code(theirs)?;
    writeln!(out, "pairing over {port}...")?;
    out.flush()?;
    cairn_node::daemon::pair_over_radio(
        port,
        kind,
        args.lora.params(),
        &mut pairing,
        session,
        std::time::Duration::from_secs(args.wait),
    )
}

fn pair(home: &Home, args: &PairArgs, out: &mut impl Write) -> Result<()> {
    DisplayName::new(&args.name).context("contact name refused")?;
    let identity = load_identity(home)?;
    let config = home.load_config()?;
    let paired = match (&args.serial, args.radio) {
        (Some(port), Some(kind)) => pair_by_radio(&identity, &config, args, port, kind, out)?,
        _ => pair_by_tcp(&identity, &config, args, out)?,
    };
    let peer = paired.contact.identity();
    let db = AppDb::open(home.path(), &identity)?;
    let mut book = ContactBook::open(home.path(), &identity)?;
    if let Some(other) = find_by_name(&db, &book, &args.name)? {
        if other.identity() != peer {
            bail!(
                "the name {:?} is already used by another contact; choose another name",
                args.name
            );
        }
    }
    if let AddOutcome::DeviceKeyChanged { .. } = book.add(paired.contact)? {
        bail!(
            "{:?} is already a contact with another device key; nothing was changed",
            args.name
        );
    }
    let keys = PairKeys::new(
        paired.root_secret.expose(),
        identity.public_key().as_bytes(),
        peer.as_bytes(),
        period_of(now_secs()?),
    );
    book.set_pair_keys(&peer, &keys)?;
    book.mark_verified(&peer, Verification::VerifiedInPerson)?;
    db.set_contact_name(peer, &args.name)?;
    writeln!(
        out,
        "paired with {}: verified in person (fingerprint {})",
        args.name,
        peer.fingerprint()
    )?;
    Ok(())
}

fn contacts_add(home: &Home, args: &AddArgs, out: &mut impl Write) -> Result<()> {
    let code = ContactCode::decode(&args.code.join(""))?;
    DisplayName::new(&args.name).context("contact name refused")?;
    let identity = load_identity(home)?;
    let mut book = ContactBook::open(home.path(), &identity)?;
    let db = AppDb::open(home.path(), &identity)?;
    let theirs = code.identity();
    if theirs == identity.public_key() {
        bail!("that is your own contact code; share it with others instead of adding it");
    }

    // Names are unique: refuse one another contact already goes by.
    if let Some(other) = find_by_name(&db, &book, &args.name)? {
        if other.identity() != theirs {
            bail!(
                "the name {:?} is already used by another contact (fingerprint {}); choose \
                 another name",
                args.name,
                other.identity().fingerprint()
            );
        }
    }
    if let Some(known) = book.get(&theirs) {
        let current = contact_name(&db, known)?;
        if current.to_lowercase() != args.name.to_lowercase() {
            bail!(
                "this person is already your contact {current:?} (fingerprint {})",
                theirs.fingerprint()
            );
        }
    }

    let outcome = book.add(Contact::from_code(&code))?;
    if let AddOutcome::DeviceKeyChanged { .. } = outcome {
        bail!(
            "{:?} is already a contact with another device key (a new phone, or someone who \
             has their identity key); nothing was changed: check with them in person",
            args.name
        );
    }
    let contact = book
        .get(&theirs)
        .cloned()
        .context("the contact book lost the contact it just added")?;
    // Keys from the static root until the two pair in person; never replace keys already
    // there (they may be from pairing, and they have rolled forward).
    if contact.pair_keys().is_none() {
        let root = contact.static_root(&identity).context(
            "this contact code's device key cannot make a shared secret; ask for a new code",
        )?;
        let keys = PairKeys::new(
            root.expose(),
            identity.public_key().as_bytes(),
            theirs.as_bytes(),
            period_of(now_secs()?),
        );
        book.set_pair_keys(&theirs, &keys)?;
    }
    db.set_contact_name(theirs, &args.name)?;

    let verb = match outcome {
        AddOutcome::Added => "added",
        AddOutcome::Updated => "updated",
        _ => "already have",
    };
    writeln!(
        out,
        "{verb} {} (calls themselves {:?}; fingerprint {})",
        args.name,
        code.display_name().as_str(),
        theirs.fingerprint()
    )?;
    writeln!(
        out,
        "safety code: {}",
        safety_code(&identity.public_key(), &theirs)
    )?;
    writeln!(
        out,
        "compare it with {} in person or on a call: it is the same on both devices",
        args.name
    )?;
    Ok(())
}

fn contacts_list(home: &Home, args: &ListArgs, out: &mut impl Write) -> Result<()> {
    let identity = load_identity(home)?;
    let book = ContactBook::open(home.path(), &identity)?;
    let db = AppDb::open(home.path(), &identity)?;
    let mut rows = Vec::new();
    for contact in book.list() {
        rows.push((contact_name(&db, contact)?, contact));
    }
    rows.sort_by_cached_key(|(name, _)| name.to_lowercase());
    if rows.is_empty() && !args.json {
        eprintln!("no contacts yet; add one with `cairn contacts add NAME CODE`");
    }
    for (name, contact) in rows {
        let verification = verification_label(contact.verification());
        let fingerprint = contact.identity().fingerprint().to_string();
        if args.json {
            let line = json!({
                "name": name,
                "display_name": contact.display_name().as_str(),
                "fingerprint": fingerprint,
                "identity": hex::encode(contact.identity().as_bytes()),
                "verification": verification,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{name:<20} {verification:<24} {fingerprint}")?;
        }
    }
    Ok(())
}

fn send(home: &Home, args: &SendArgs, out: &mut impl Write) -> Result<()> {
    if args.text.is_empty() {
        bail!("the message is empty");
    }
    if args.text.len() > MAX_TEXT_BYTES {
        bail!(
            "the message is {} bytes long; the most is {MAX_TEXT_BYTES} bytes: split it",
            args.text.len()
        );
    }
    let identity = load_identity(home)?;
    let book = ContactBook::open(home.path(), &identity)?;
    let db = AppDb::open(home.path(), &identity)?;
    let contact = resolve_contact(&db, &book, &args.name)?;
    let id = db.queue(contact.identity(), &args.text, now_secs()?)?;
    writeln!(out, "{id}")?;
    Ok(())
}

fn messages(home: &Home, args: &MessagesArgs, out: &mut impl Write) -> Result<()> {
    let identity = load_identity(home)?;
    let book = ContactBook::open(home.path(), &identity)?;
    let db = AppDb::open(home.path(), &identity)?;
    let with = match &args.with {
        Some(name) => Some(resolve_contact(&db, &book, name)?.identity()),
        None => None,
    };
    let records = db.messages(with.as_ref())?;
    let names = PeerNames::new(&db, &book)?;
    for record in &records {
        let peer = names.name(&record.peer);
        let (from, to) = match record.direction {
            Direction::Outgoing => ("me", peer.as_str()),
            Direction::Incoming => (peer.as_str(), "me"),
        };
        if args.json {
            let line = json!({
                "id": record.id,
                "direction": record.direction.as_str(),
                "from": from,
                "to": to,
                "peer_fingerprint": record.peer.fingerprint().to_string(),
                "text": record.text,
                "sent_at": record.sent_at,
                "received_at": record.received_at,
                "status": record.status.as_str(),
                "envelope": record.envelope.map(|e| e.to_hex()),
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", human_message(record, from, to))?;
        }
    }
    Ok(())
}

fn human_message(record: &MessageRecord, from: &str, to: &str) -> String {
    let time = match record.direction {
        Direction::Outgoing => record.sent_at,
        Direction::Incoming => record.received_at.or(record.sent_at),
    };
    let time = time.map_or_else(|| "-".to_owned(), rfc3339);
    format!(
        "#{} {time} {from} -> {to} [{}] {}",
        record.id,
        record.status,
        printable(&record.text)
    )
}

fn status(home: &Home, args: &StatusArgs, out: &mut impl Write) -> Result<()> {
    // Counts are not sealed: `status` works without the passphrase.
    own_public_key(home)?;
    let db = AppDb::open_counts_only(home.path())?;
    let counts = db.counts()?;
    let now = now_secs()?;
    let live = home.live_status(now)?;
    if args.json {
        let figure = |f: fn(&cairn_node::home::DaemonStatus) -> u64| live.as_ref().map(f);
        let line = json!({
            "running": live.is_some(),
            "pid": live.as_ref().map(|s| s.pid),
            "updated_at": live.as_ref().map(|s| s.updated_at),
            "peers_seen": figure(|s| s.peers_seen),
            "links_up": figure(|s| s.links_up),
            "store_items": figure(|s| s.store_items),
            "store_bytes": figure(|s| s.store_bytes),
            "carried": figure(|s| s.carried),
            "queued": counts.queued,
            "relayed": counts.relayed,
            "delivered": counts.delivered,
            "received": counts.received,
        });
        writeln!(out, "{line}")?;
        return Ok(());
    }
    match &live {
        Some(s) => {
            writeln!(
                out,
                "node: running (pid {}, updated {} s ago)",
                s.pid,
                now.saturating_sub(s.updated_at)
            )?;
            writeln!(out, "peers seen: {}", s.peers_seen)?;
            writeln!(out, "links up: {}", s.links_up)?;
            writeln!(
                out,
                "store: {} items, {} bytes",
                s.store_items, s.store_bytes
            )?;
            writeln!(out, "carried for others: {}", s.carried)?;
        }
        None => writeln!(out, "node: not running (start it with `cairn run`)")?,
    }
    writeln!(
        out,
        "messages: {} queued, {} relayed, {} delivered, {} received",
        counts.queued, counts.relayed, counts.delivered, counts.received
    )?;
    Ok(())
}

/// The contact a name means: the local name the user gave (ignoring case), else a contact
/// without a local name whose own display name matches (contacts paired by the daemon).
fn find_by_name(db: &AppDb, book: &ContactBook, name: &str) -> Result<Option<Contact>> {
    if let Some(identity) = db.contact_by_name(name)? {
        return Ok(book.get(&identity).cloned());
    }
    let named: Vec<IdentityPublicKey> = db.contact_names()?.into_iter().map(|(id, _)| id).collect();
    let mut matches = book.list().into_iter().filter(|c| {
        !named.contains(&c.identity())
            && c.display_name().as_str().to_lowercase() == name.to_lowercase()
    });
    match (matches.next(), matches.next()) {
        (Some(only), None) => Ok(Some(only.clone())),
        (Some(_), Some(_)) => {
            bail!("several contacts call themselves {name:?}; name them with `cairn contacts add`")
        }
        (None, _) => Ok(None),
    }
}

fn resolve_contact(db: &AppDb, book: &ContactBook, name: &str) -> Result<Contact> {
    match find_by_name(db, book, name)? {
        Some(contact) => Ok(contact),
        None => bail!(
            "no contact named {name:?}; add one with `cairn contacts add {} CODE` (see \
             `cairn contacts list`)",
            shell_word(name)
        ),
    }
}

/// The name shown for a contact: the local one, else the one in their code.
fn contact_name(db: &AppDb, contact: &Contact) -> Result<String> {
    Ok(db
        .contact_name(&contact.identity())?
        .unwrap_or_else(|| contact.display_name().as_str().to_owned()))
}

/// Names of every peer, looked up once per listing.
struct PeerNames {
    names: std::collections::HashMap<IdentityPublicKey, String>,
}

impl PeerNames {
    fn new(db: &AppDb, book: &ContactBook) -> Result<Self> {
        let mut names = std::collections::HashMap::new();
        for contact in book.list() {
            names.insert(contact.identity(), contact_name(db, contact)?);
        }
        Ok(Self { names })
    }

    /// A removed contact is shown by fingerprint.
    fn name(&self, peer: &IdentityPublicKey) -> String {
        self.names
            .get(peer)
            .cloned()
            .unwrap_or_else(|| format!("unknown ({})", peer.fingerprint()))
    }
}

fn verification_label(verification: Verification) -> &'static str {
    match verification {
        Verification::Unverified => "unverified",
        Verification::VerifiedBySafetyCode => "verified-by-safety-code",
        Verification::VerifiedInPerson => "verified-in-person",
        // A state added by a newer library: say so rather than guess.
        _ => "unknown",
    }
}

/// This node's public identity, read without the passphrase.
fn own_public_key(home: &Home) -> Result<IdentityPublicKey> {
    match IdentityFileInfo::read(home.path()) {
        Ok(info) => Ok(info.identity),
        Err(IdentityError::NotFound { .. }) => Err(not_initialised(home)),
        Err(e) => Err(e.into()),
    }
}

fn load_identity(home: &Home) -> Result<Identity> {
    let passphrase = passphrase_from_env()?;
    match Identity::load(home.path(), passphrase.as_ref().map(|p| p.as_str())) {
        Ok(identity) => Ok(identity),
        Err(IdentityError::NotFound { .. }) => Err(not_initialised(home)),
        Err(IdentityError::PassphraseRequired) => {
            bail!("this identity is protected by a passphrase; set {PASSPHRASE_VAR} to unlock it")
        }
        Err(IdentityError::WrongPassphrase) => {
            bail!("wrong passphrase (from {PASSPHRASE_VAR})")
        }
        Err(e) => Err(e.into()),
    }
}

fn not_initialised(home: &Home) -> anyhow::Error {
    anyhow::anyhow!(
        "no identity in {}: run `cairn init --name NAME` first (or pass --home)",
        home.path().display()
    )
}

fn passphrase_from_env() -> Result<Option<zeroize::Zeroizing<String>>> {
    match std::env::var(PASSPHRASE_VAR) {
        Ok(value) if value.is_empty() => bail!(
            "{PASSPHRASE_VAR} is set but empty; an empty passphrase protects nothing: unset it \
             or set a passphrase"
        ),
        Ok(value) => Ok(Some(zeroize::Zeroizing::new(value))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{PASSPHRASE_VAR} is not valid UTF-8"),
    }
}

/// The first line of stdin, without its line ending.
fn read_secret_line() -> Result<String> {
    let mut bytes = Vec::new();
    io::stdin()
        .lock()
        .take(4096)
        .read_to_end(&mut bytes)
        .context("could not read the network secret from stdin")?;
    let text = String::from_utf8(bytes).context("the network secret is not UTF-8")?;
    let line = text.lines().next().unwrap_or_default().to_owned();
    if line.is_empty() {
        bail!("no network secret on stdin");
    }
    Ok(line)
}

fn now_secs() -> Result<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .context("the system clock is set before 1970; fix the date")
}

/// `text` with control characters escaped, so a message cannot drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A name quoted for a shell command line, when it needs it.
fn shell_word(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_alphanumeric() || "-_.@".contains(c))
    {
        name.to_owned()
    } else {
        format!("'{}'", name.replace('\'', r"'\''"))
    }
}

/// Unix seconds as RFC 3339 UTC, e.g. `2026-05-01T10:00:00Z`.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["cairn", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(run) => run.to_run_args(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn no_transport_named_means_lan() {
        assert_eq!(
            run_args(&[]),
            RunArgs {
                lan: true,
                ..RunArgs::default()
            }
        );
    }

    #[test]
    fn naming_a_transport_turns_on_just_those() {
        let args = run_args(&["--serial", "/dev/ttyUSB0:115200", "--radio", "meshtastic"]);
        assert!(!args.lan);
        assert_eq!(args.serial, vec!["/dev/ttyUSB0:115200".to_owned()]);
        assert_eq!(args.radio, vec![RadioKind::Meshtastic]);
        let args = run_args(&["--ble"]);
        assert!(!args.lan && args.ble);
        let args = run_args(&["--ble", "--lan"]);
        assert!(args.lan && args.ble);
    }

    #[test]
    fn lan_options_turn_on_the_lan() {
        let args = run_args(&[
            "--serial",
            "/dev/ttyACM0",
            "--peer",
            "192.168.1.20:7420",
            "--peer",
            "[::1]:7420",
            "--interface",
            "wlan0",
            "--listen",
            "0.0.0.0:7420",
        ]);
        assert!(args.lan);
        assert_eq!(args.peers.len(), 2);
        assert_eq!(args.interfaces, vec!["wlan0".to_owned()]);
        assert_eq!(args.listen, Some("0.0.0.0:7420".parse().unwrap()));
    }

    #[test]
    fn bad_run_arguments_are_usage_errors() {
        for argv in [
            vec!["cairn", "run", "--peer", "not-an-address"],
            vec!["cairn", "run", "--serial", "/dev/ttyUSB0:fast"],
            vec!["cairn", "run", "--serial", ":9600"],
            vec!["cairn", "run", "--radio", "meshtastic"],
            vec!["cairn", "run", "--serial", "/dev/ttyS0", "--radio", "lora"],
            vec![
                "cairn",
                "run",
                "--serial",
                "/dev/ttyS0",
                "--radio",
                "rnode",
                "--sf",
                "13",
            ],
        ] {
            let err = Cli::try_parse_from(&argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_780_000_000), "2026-05-28T20:26:40Z");
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(printable("grüße ⛰"), "grüße ⛰");
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("bob"), "bob");
        assert_eq!(shell_word("Anna Maria"), "'Anna Maria'");
        assert_eq!(shell_word("O'Neil"), r"'O'\''Neil'");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
