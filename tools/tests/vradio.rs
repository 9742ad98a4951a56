//! `cairn-vradio` end to end: the real binary, real pseudo-terminals, hosts speaking to it
//! byte for byte as Reticulum's RNodeInterface does.
//!
//! What a user of the virtual radio relies on: a host finds an RNode and configures it the
//! way it would a real one; a frame sent on one port arrives on the ports in range, preceded
//! by its signal figures, and not on the ports out of range; a node that restarts (closes and
//! reopens its port) finds a freshly booted radio and carries on; the process stops cleanly
//! with its statistics on stdin's end or SIGTERM.
//!
//! Every wait has a deadline, and the child is killed when a test ends, however it ends.

// Helpers shared by the tests below are not `#[test]` functions, which clippy's
// `allow-unwrap-in-tests` does not cover; a failed unwrap here is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_firmware_bridge::kiss::{
    encode, Decoder, Frame, RadioState, RnodeCommand, FEND, RNODE_DETECT_RESPONSE,
};
use serial2::SerialPort;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `cairn-vradio`, killed on drop.
struct VRadio {
    child: Child,
    lines: mpsc::Receiver<String>,
    radios: Vec<String>,
    _dir: tempfile::TempDir,
}

impl VRadio {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-vradio"))
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut vradio = Self {
            child,
            lines,
            radios: Vec::new(),
            _dir: dir,
        };
        let ready = vradio.line(START_TIMEOUT);
        assert_eq!(ready["ready"], true, "{ready}");
        vradio.radios = ready["radios"]
            .as_array()
            .unwrap()
            .iter()
            .map(|path| path.as_str().unwrap().to_owned())
            .collect();
        vradio
    }

    /// The next JSON line on stdout.
    fn line(&self, timeout: Duration) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(timeout)
            .expect("cairn-vradio printed nothing in time");
        serde_json::from_str(&line).unwrap()
    }

    fn open(&self, radio: usize) -> Host {
        Host::open(&self.radios[radio])
    }

    /// Waits for the statistics line and a clean exit.
    fn stopped(&mut self) -> serde_json::Value {
        let stats = self.line(STOP_TIMEOUT);
        assert_eq!(stats["stopped"], true, "{stats}");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "cairn-vradio exited with {status}");
                return stats;
            }
            assert!(Instant::now() < deadline, "cairn-vradio did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VRadio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host end of one radio's port.
struct Host {
    port: SerialPort,
    decoder: Decoder,
}

impl Host {
    fn open(path: &str) -> Self {
        let mut port = SerialPort::open(path, 115_200).unwrap();
        port.set_read_timeout(Duration::from_millis(20)).unwrap();
        Self {
            port,
            decoder: Decoder::default(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.port.write_all(bytes).unwrap();
    }

    fn send(&mut self, commands: &[RnodeCommand]) {
        let bytes: Vec<u8> = commands
            .iter()
            .flat_map(|command| encode(&command.to_frame()))
            .collect();
        self.write(&bytes);
    }

    /// The next frame before `deadline`, if any.
    fn next_frame(&mut self, deadline: Instant) -> Option<Frame> {
        let mut buffer = [0u8; 512];
        loop {
            if let Some(frame) = self.decoder.next_frame() {
                return Some(frame.unwrap());
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.port.read(&mut buffer) {
                Ok(n) => self.decoder.push(&buffer[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
                Err(error) => panic!("reading the port: {error}"),
            }
        }
    }

    /// Frames up to and including the first that `wanted` accepts.
    fn expect(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut seen = Vec::new();
        while let Some(frame) = self.next_frame(deadline) {
            let done = wanted(&frame);
            seen.push(frame);
            if done {
                return seen;
            }
        }
        panic!("no {what} within {ANSWER_TIMEOUT:?}; got {seen:?}");
    }

    /// Every frame that arrives within `quiet`.
    fn frames_within(&mut self, quiet: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + quiet;
        std::iter::from_fn(|| self.next_frame(deadline)).collect()
    }

    /// What Reticulum's RNodeInterface does on opening the port: detect, then configure
    /// frequency, bandwidth, TX power, spreading factor, coding rate, and turn the radio on,
    /// checking every echo.
    fn rnode_handshake(&mut self) {
        // RNodeInterface.detect(), byte for byte: the frames share their FENDs.
        self.write(&[
            FEND, 0x08, 0x73, FEND, 0x50, 0x00, FEND, 0x48, 0x00, FEND, 0x49, 0x00, FEND,
        ]);
        self.expect("detect response", |frame| {
            *frame == RnodeCommand::Detect(RNODE_DETECT_RESPONSE).to_frame()
        });
        let version = self.expect("firmware version", |frame| frame.type_byte == 0x50);
        let version = &version.last().unwrap().payload;
        assert_eq!(version.len(), 2);
        assert!(
            (version[0], version[1]) >= (1, 52),
            "Reticulum needs firmware 1.52 or later, got {version:?}"
        );

        let settings = [
            RnodeCommand::Frequency(868_100_000),
            RnodeCommand::Bandwidth(125_000),
            RnodeCommand::TxPower(14),
            RnodeCommand::SpreadingFactor(7),
            RnodeCommand::CodingRate(5),
        ];
        self.send(&settings);
        for setting in &settings {
            let echo = setting.to_frame();
            let seen = self.expect("setting echo", |frame| frame.type_byte == echo.type_byte);
            assert_eq!(seen.last(), Some(&echo), "the device changed a setting");
        }
        self.send(&[RnodeCommand::RadioState(RadioState::On)]);
        let on = RnodeCommand::RadioState(RadioState::On).to_frame();
        self.expect("radio on", |frame| *frame == on);
    }

    /// Waits for a data frame; returns it with the frames that came before it.
    fn expect_data(&mut self) -> (Vec<u8>, Vec<Frame>) {
        let mut frames = self.expect("data frame", |frame| frame.type_byte == 0x00);
        let data = frames.pop().unwrap().payload;
        (data, frames)
    }
}

/// RNode, line topology 0 - 1 - 2: handshake, delivery in range, silence out of range,
/// a host that restarts, and a clean stop when stdin ends.
#[test]
fn rnode_ports_carry_frames_to_radios_in_range_only() {
    let mut vradio = VRadio::start(&[
        "--radios",
        "3",
        "--topology",
        "line",
        "--firmware",
        "rnode",
        "--time-scale",
        "10",
        "--seed",
        "1",
    ]);
    assert_eq!(vradio.radios.len(), 3);
    assert!(vradio.radios[2].ends_with("radio2"));

    let mut hosts: Vec<Host> = (0..3).map(|radio| vradio.open(radio)).collect();
    for host in &mut hosts {
        host.rnode_handshake();
    }

    // Radio 0 speaks: radio 1 (its neighbour) hears it, with RSSI and SNR first.
    hosts[0].send(&[RnodeCommand::Data(b"hello from radio0 \xC0\xDB".to_vec())]);
    let (data, before) = hosts[1].expect_data();
    assert_eq!(data, b"hello from radio0 \xC0\xDB");
    let stats: Vec<u8> = before.iter().map(|frame| frame.type_byte).collect();
    assert!(
        stats.ends_with(&[0x23, 0x24]),
        "RSSI and SNR come right before the frame: {before:?}"
    );
    assert_eq!(before[before.len() - 2].payload, [157 - 90]);
    // Radio 0 is told it may send the next frame.
    hosts[0].expect("READY after the transmission", |frame| {
        *frame == RnodeCommand::Ready(vec![0x01]).to_frame()
    });
    // Radio 2 is two hops away: nothing arrives, long after the frame ended.
    let heard = hosts[2].frames_within(Duration::from_millis(500));
    assert!(
        heard.iter().all(|frame| frame.type_byte != 0x00),
        "radio 2 heard radio 0: {heard:?}"
    );

    // Radio 1 (in the middle) reaches both ends: radio 2 works, it was only out of range.
    hosts[1].send(&[RnodeCommand::Data(b"from the middle".to_vec())]);
    assert_eq!(hosts[0].expect_data().0, b"from the middle");
    assert_eq!(hosts[2].expect_data().0, b"from the middle");

    // Node 0 restarts: closes its port and opens it again. It finds a freshly booted RNode
    // (radio off: a frame is refused) and configures it again.
    drop(hosts.remove(0));
    std::thread::sleep(Duration::from_millis(200));
    let mut host0 = vradio.open(0);
    host0.send(&[RnodeCommand::Data(b"too early".to_vec())]);
    host0.expect("TX failed while the radio is off", |frame| {
        *frame == RnodeCommand::Error(0x02).to_frame()
    });
    host0.rnode_handshake();
    host0.send(&[RnodeCommand::Data(b"back again".to_vec())]);
    assert_eq!(hosts[0].expect_data().0, b"back again");

    // End of stdin: statistics, exit 0.
    drop(vradio.child.stdin.take());
    let stats = vradio.stopped();
    let radios = stats["radios"].as_array().unwrap();
    let count = |radio: usize, field: &str| radios[radio][field].as_u64().unwrap();
    assert_eq!(count(0, "frames_sent"), 2);
    assert_eq!(count(1, "frames_sent"), 1);
    assert_eq!(count(2, "frames_sent"), 0);
    assert_eq!(count(1, "frames_delivered"), 2);
    assert_eq!(
        count(2, "frames_delivered"),
        1,
        "radio 2 hears only radio 1"
    );
    assert!(count(0, "airtime_us") > 0);
    assert_eq!(count(1, "lost_to_collision"), 0);
}

/// Plain KISS TNC, everyone in range: data frames only, no signal reports; SIGTERM stops it.
#[test]
fn kiss_ports_exchange_data_frames_and_sigterm_stops_cleanly() {
    let mut vradio = VRadio::start(&[
        "--radios",
        "2",
        "--topology",
        "all",
        "--firmware",
        "kiss",
        "--time-scale",
        "10",
        "--params",
        "sf12",
    ]);
    let mut a = vradio.open(0);
    let mut b = vradio.open(1);
    // The virtual radio notices a newly opened port within 20 ms; until it has, what the
    // radio hears for that port is dropped, as on a serial port nobody has open. So send
    // again until the frame gets through (once, normally).
    let mut attempts = 0;
    let (data, before) = loop {
        attempts += 1;
        a.write(&encode(&Frame::data(0, b"kiss hello".to_vec())));
        // SF12: about 1 s on air, 0.1 s at ten times real time.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut before = Vec::new();
        let data = loop {
            match b.next_frame(deadline) {
                Some(frame) if frame.type_byte == 0x00 => break Some(frame.payload),
                Some(frame) => before.push(frame),
                None => break None,
            }
        };
        if let Some(data) = data {
            break (data, before);
        }
        assert!(attempts < 5, "no frame got through in {attempts} tries");
    };
    assert_eq!(data, b"kiss hello");
    assert!(before.is_empty(), "a KISS TNC sends only data: {before:?}");

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(vradio.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let stats = vradio.stopped();
    assert_eq!(stats["radios"][0]["frames_sent"], attempts);
    assert_eq!(stats["radios"][1]["frames_delivered"], attempts);
    assert!(stats["radios"][0]["airtime_us"].as_u64().unwrap() > 900_000 * attempts);
}

/// `--duty-cycle`: a radio refuses what would exceed its share of the hour, as regulated
/// firmware does, and says so in its statistics.
#[test]
fn a_radio_refuses_frames_past_its_duty_cycle() {
    // 1% of an hour is 36 s; a 200-byte frame at SF12 takes over 7 s, so at most 4 fit.
    let mut vradio = VRadio::start(&[
        "--radios",
        "2",
        "--firmware",
        "kiss",
        "--time-scale",
        "20",
        "--params",
        "sf12",
        "--duty-cycle",
        "1",
    ]);
    let mut a = vradio.open(0);
    let mut b = vradio.open(1);
    let mut written = 0u64;
    // Until the radio has noticed both ports (see the KISS test above), then a backlog.
    for _ in 0..3 {
        a.write(&encode(&Frame::data(0, vec![1; 200])));
        written += 1;
        if b.next_frame(Instant::now() + Duration::from_secs(1))
            .is_some()
        {
            break;
        }
    }
    for _ in 0..8 {
        a.write(&encode(&Frame::data(0, vec![2; 200])));
        written += 1;
    }
    while b
        .next_frame(Instant::now() + Duration::from_secs(2))
        .is_some()
    {}
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(vradio.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let stats = vradio.stopped();
    let sent = stats["radios"][0]["frames_sent"].as_u64().unwrap();
    let refused = stats["radios"][0]["refused_duty_cycle"].as_u64().unwrap();
    assert_eq!(sent + refused, written, "{stats}");
    assert!(sent <= 4 && refused >= written - 4, "{stats}");
    assert!(stats["radios"][0]["airtime_us"].as_u64().unwrap() <= 36_000_000);
}
