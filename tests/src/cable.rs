//! A serial cable between two processes, made of two pseudo-terminals and a relay thread
//! that the test controls: it can inject noise, cut the cable (bytes stop flowing), and
//! unplug it (both ports vanish, as a USB adapter pulled out, and come back later).
//!
//! ```text
//!  node A opens DIR/cable-a ─ pty A ─┐ relay ┌─ pty B ─ DIR/cable-b opened by node B
//!                                    └──────┘
//!                       noise, cuts and unplugging happen here
//! ```
//!
//! Each end is a symlink to the pty's slave, like `socat pty,link=...`. A pty does not pace
//! by baud rate, so the cable is as fast as the relay; the relay can also slow it down to a
//! given byte rate, which is what makes "cut in the middle of a message" a reliable event.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

/// What the relay does to the bytes it carries.
#[derive(Debug, Default)]
struct Faults {
    /// Bytes to insert into the A→B direction at the next chance.
    noise_to_b: Vec<u8>,
    /// Bytes to insert into the B→A direction at the next chance.
    noise_to_a: Vec<u8>,
    /// Flip one bit in every n-th byte (0: never).
    flip_every: u64,
    /// Drop everything (a cut cable, ports still present).
    cut: bool,
}

struct Pty {
    master: File,
    /// Kept open so the master never sees a hangup when a node closes and reopens its end.
    _slave: OwnedFd,
    slave_path: PathBuf,
}

fn pty() -> Pty {
    let pair = openpty(None, None).unwrap();
    let mut termios = tcgetattr(pair.slave.as_fd()).unwrap();
    cfmakeraw(&mut termios);
    tcsetattr(pair.slave.as_fd(), SetArg::TCSANOW, &termios).unwrap();
    let slave_path = nix::unistd::ttyname(pair.slave.as_fd()).unwrap();
    // A node that is down does not read its end: the relay drops what does not fit rather
    // than block (a cable to a device that is off).
    let flags = fcntl(pair.master.as_fd(), FcntlArg::F_GETFL).unwrap();
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(pair.master.as_fd(), FcntlArg::F_SETFL(flags)).unwrap();
    Pty {
        master: File::from(pair.master),
        _slave: pair.slave,
        slave_path,
    }
}

/// A two-ended serial cable under test control.
pub struct Cable {
    /// Path node A opens.
    pub a: PathBuf,
    /// Path node B opens.
    pub b: PathBuf,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    relay: Option<JoinHandle<()>>,
    /// Bytes carried each way so far (A→B, B→A).
    carried: Arc<[AtomicU64; 2]>,
    bytes_per_s: Option<u64>,
}

impl Cable {
    /// A cable with ends `dir/cable-a` and `dir/cable-b`; `bytes_per_s` slows it to a serial
    /// line's pace (None: as fast as the relay runs).
    pub fn new(dir: &Path, bytes_per_s: Option<u64>) -> Cable {
        let mut cable = Cable {
            a: dir.join("cable-a"),
            b: dir.join("cable-b"),
            faults: Arc::default(),
            stop: Arc::default(),
            relay: None,
            carried: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
            bytes_per_s,
        };
        cable.plug_in();
        cable
    }

    /// Bytes carried A→B and B→A so far.
    pub fn carried(&self) -> (u64, u64) {
        (
            self.carried[0].load(Ordering::Relaxed),
            self.carried[1].load(Ordering::Relaxed),
        )
    }

    /// Inserts garbage into both directions.
    pub fn inject_noise(&self, bytes: &[u8]) {
        let mut faults = self.faults.lock().unwrap();
        faults.noise_to_a.extend_from_slice(bytes);
        faults.noise_to_b.extend_from_slice(bytes);
    }

    /// Flips a bit in every `n`-th byte from now on (0 stops it).
    pub fn flip_bits_every(&self, n: u64) {
        self.faults.lock().unwrap().flip_every = n;
    }

    /// Cuts the cable: bytes in flight and after are lost until [`Cable::mend`].
    pub fn cut(&self) {
        self.faults.lock().unwrap().cut = true;
    }

    /// Joins the cable again.
    pub fn mend(&self) {
        self.faults.lock().unwrap().cut = false;
    }

    /// Pulls the cable out: both ports vanish (reads fail, the paths are gone).
    pub fn unplug(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(relay) = self.relay.take() {
            relay.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.a);
        let _ = std::fs::remove_file(&self.b);
    }

    /// Plugs the cable (back) in: new ports behind the same paths.
    pub fn plug_in(&mut self) {
        assert!(self.relay.is_none(), "already plugged in");
        let (a, b) = (pty(), pty());
        let _ = std::fs::remove_file(&self.a);
        let _ = std::fs::remove_file(&self.b);
        std::os::unix::fs::symlink(&a.slave_path, &self.a).unwrap();
        std::os::unix::fs::symlink(&b.slave_path, &self.b).unwrap();
        self.stop = Arc::default();
        let stop = self.stop.clone();
        let faults = self.faults.clone();
        let carried = self.carried.clone();
        let pace = self.bytes_per_s;
        self.relay = Some(std::thread::spawn(move || {
            relay(a, b, &faults, &stop, &carried, pace)
        }));
    }
}

impl std::fmt::Debug for Cable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cable")
            .field("a", &self.a)
            .field("b", &self.b)
            .field("carried", &self.carried())
            .finish_non_exhaustive()
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.unplug();
    }
}

fn relay(
    mut a: Pty,
    mut b: Pty,
    faults: &Mutex<Faults>,
    stop: &AtomicBool,
    carried: &[AtomicU64; 2],
    bytes_per_s: Option<u64>,
) {
    let started = Instant::now();
    let mut sent_total = 0u64;
    let mut counter = 0u64;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let (ready_a, ready_b) = {
            let mut fds = [
                PollFd::new(a.master.as_fd(), PollFlags::POLLIN),
                PollFd::new(b.master.as_fd(), PollFlags::POLLIN),
            ];
            if poll(&mut fds, PollTimeout::from(20u8)).unwrap_or(0) == 0 {
                (false, false)
            } else {
                let readable =
                    |fd: &PollFd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
                (readable(&fds[0]), readable(&fds[1]))
            }
        };
        for (from_a, ready) in [(true, ready_a), (false, ready_b)] {
            let mut noise = {
                let mut f = faults.lock().unwrap();
                std::mem::take(if from_a {
                    &mut f.noise_to_b
                } else {
                    &mut f.noise_to_a
                })
            };
            let n = if ready {
                let source = if from_a { &mut a.master } else { &mut b.master };
                // A read that fails (EIO while a node has its end closed) is retried later.
                source.read(&mut buf).unwrap_or(0)
            } else {
                0
            };
            if n == 0 && noise.is_empty() {
                continue;
            }
            let (cut, flip_every) = {
                let f = faults.lock().unwrap();
                (f.cut, f.flip_every)
            };
            let mut bytes = buf[..n].to_vec();
            if flip_every > 0 {
                for byte in &mut bytes {
                    counter += 1;
                    if counter % flip_every == 0 {
                        *byte ^= 1 << (counter % 8);
                    }
                }
            }
            noise.extend_from_slice(&bytes);
            if cut {
                continue;
            }
            if let Some(rate) = bytes_per_s {
                sent_total += noise.len() as u64;
                let due = Duration::from_secs_f64(sent_total as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let sink = if from_a { &mut b.master } else { &mut a.master };
            let _ = sink.write_all(&noise);
            carried[usize::from(!from_a)].fetch_add(noise.len() as u64, Ordering::Relaxed);
        }
    }
}
