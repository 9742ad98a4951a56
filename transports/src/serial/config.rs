//! `--serial PATH[:BAUD]`: which port, at what speed.

use std::path::PathBuf;
use std::str::FromStr;

/// The baud rate when none is given: what RNode firmware, most USB-serial adapters and
/// Meshtastic's serial API use.
pub const DEFAULT_BAUD: u32 = 115_200;

/// Which serial port to open and at what speed (`--serial PATH[:BAUD]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialConfig {
    /// The device: `/dev/ttyUSB0`, `/dev/serial/by-id/...`, a pty link.
    pub path: PathBuf,
    /// Bits per second. A pseudo-terminal accepts any value and ignores it.
    pub baud: u32,
}

impl SerialConfig {
    /// A port at [`DEFAULT_BAUD`].
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            baud: DEFAULT_BAUD,
        }
    }
}

impl std::fmt::Display for SerialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.baud)
    }
}

/// Why `PATH[:BAUD]` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SerialConfigError {
    /// Nothing before the baud rate (or nothing at all).
    #[error("serial port {spec:?} names no device: expected PATH or PATH:BAUD, e.g. /dev/ttyUSB0:115200")]
    MissingPath {
        /// What was given.
        spec: String,
    },
    /// A ':' with nothing after it.
    #[error("serial port {spec:?} ends with ':' but gives no baud rate: write PATH or PATH:BAUD, e.g. {path}:115200")]
    MissingBaud {
        /// What was given.
        spec: String,
        /// The path part.
        path: String,
    },
    /// What follows the last ':' looks like a baud rate but is not a usable one.
    #[error("serial port {spec:?}: baud rate {baud:?} {problem} (if ':' is part of the device path, add the baud rate: {spec}:115200)")]
    BadBaud {
        /// What was given.
        spec: String,
        /// The text after the last ':'.
        baud: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl FromStr for SerialConfig {
    type Err = SerialConfigError;

    /// Reads `PATH` or `PATH:BAUD`.
    ///
    /// Device paths may themselves contain ':' (`/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0`),
    /// so only what follows the *last* ':' can be a baud rate, and only when it looks like
    /// one: letters and digits alone. Anything with '.', '-', '/' or '_' in it is part of the
    /// path. A path that contains ':' followed by something baud-like can always be given
    /// with an explicit baud rate: `PATH:115200`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (path, baud) = match spec.rsplit_once(':') {
            Some((path, baud)) if looks_like_baud(baud) => (path, Some(baud)),
            _ => (spec, None),
        };
        if path.is_empty() {
            return Err(SerialConfigError::MissingPath {
                spec: spec.to_owned(),
            });
        }
        let Some(baud) = baud else {
            return Ok(Self::new(path));
        };
        if baud.is_empty() {
            return Err(SerialConfigError::MissingBaud {
                spec: spec.to_owned(),
                path: path.to_owned(),
            });
        }
        let bad = |problem| SerialConfigError::BadBaud {
            spec: spec.to_owned(),
            baud: baud.to_owned(),
            problem,
        };
        if !baud.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(bad("is not a whole number of bits per second"));
        }
        match baud.parse::<u32>() {
            Ok(0) => Err(bad("must be more than 0")),
            Ok(baud) => Ok(Self {
                path: PathBuf::from(path),
                baud,
            }),
            Err(_) => Err(bad("is too large")),
        }
    }
}

/// Whether the text after the last ':' is meant as a baud rate: empty (a forgotten one) or
/// only ASCII letters and digits (`57600`, but also a mistyped `57k6` or `fast`, which
/// deserve an error rather than a "no such device").
fn looks_like_baud(text: &str) -> bool {
    text.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<SerialConfig, SerialConfigError> {
        spec.parse()
    }

    #[test]
    fn path_alone_gets_the_default_baud() {
        assert_eq!(
            parse("/dev/ttyUSB0"),
            Ok(SerialConfig {
                path: "/dev/ttyUSB0".into(),
                baud: 115_200
            })
        );
    }

    #[test]
    fn path_and_baud() {
        assert_eq!(
            parse("/dev/ttyUSB0:57600"),
            Ok(SerialConfig {
                path: "/dev/ttyUSB0".into(),
                baud: 57_600
            })
        );
        assert_eq!(parse("COM3:9600").map(|c| c.baud), Ok(9_600));
    }

    #[test]
    fn colons_inside_a_path_stay_in_the_path() {
        let by_path = "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0";
        assert_eq!(parse(by_path).map(|c| c.path), Ok(by_path.into()));
        assert_eq!(
            parse(&format!("{by_path}:9600")),
            Ok(SerialConfig {
                path: by_path.into(),
                baud: 9_600
            })
        );
        // A path whose last part looks like a baud rate needs the baud rate spelled out.
        assert_eq!(
            parse("/tmp/odd:name:115200"),
            Ok(SerialConfig {
                path: "/tmp/odd:name".into(),
                baud: 115_200
            })
        );
    }

    #[test]
    fn bad_baud_rates_say_what_is_wrong() {
        let text = |spec: &str| parse(spec).map_err(|e| e.to_string()).unwrap_err();
        assert!(text("/dev/ttyUSB0:57k6").contains("not a whole number"));
        assert!(text("/dev/ttyUSB0:0").contains("more than 0"));
        assert!(text("/dev/ttyUSB0:99999999999").contains("too large"));
        assert!(text("/dev/ttyUSB0:").contains("gives no baud rate"));
        assert!(text(":115200").contains("names no device"));
        assert!(text("").contains("names no device"));
        assert!(text("/dev/ttyUSB0:fast").contains("/dev/ttyUSB0:fast:115200"));
    }

    #[test]
    fn display_round_trips() {
        let config = SerialConfig {
            path: "/dev/ttyACM0".into(),
            baud: 230_400,
        };
        assert_eq!(parse(&config.to_string()), Ok(config));
    }
}
