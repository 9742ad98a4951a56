//! The simulator's inputs: contact and message traces, from CSV files or generated.
//!
//! Times are kept in whole milliseconds from the start of the trace so that every later
//! computation (event ordering, the oracle, latencies) is exact integer arithmetic and
//! therefore reproducible bit for bit across machines.

use std::path::Path;

/// Largest node index a trace may name. Bounds the per-node tables the simulator allocates
/// from a file someone handed us.
pub const MAX_NODES: usize = 100_000;

/// Largest number of rows read from one file: a bound on memory, far above any real trace.
pub const MAX_ROWS: usize = 10_000_000;

/// Largest message a trace may ask for. Envelope bodies are capped by the protocol
/// (`cairn_sync::envelope::MAX_BODY_LEN`); the simulator checks that again when it builds them.
pub const MAX_MESSAGE_BYTES: u64 = cairn_sync::envelope::MAX_BODY_LEN as u64;

/// Longest time a trace may span (one year): keeps all millisecond sums far from overflow.
pub const MAX_TRACE_MS: u64 = 366 * 24 * 3600 * 1000;

/// An interval during which two nodes can exchange bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    pub start_ms: u64,
    pub end_ms: u64,
    /// The lower index of the pair.
    pub a: usize,
    /// The higher index of the pair.
    pub b: usize,
    /// One-direction capacity of the link; each direction gets this much (full duplex).
    pub bytes_per_s: u64,
}

/// A message a user writes at `created_ms` on node `from` for node `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub created_ms: u64,
    /// The trace's own name for the message (for reports); unique within a trace.
    pub name: String,
    pub from: usize,
    pub to: usize,
    pub size_bytes: u64,
    pub ttl_s: u64,
}

impl Message {
    /// The moment carriers drop the message and a delivery stops counting.
    pub fn expires_ms(&self) -> u64 {
        self.created_ms
            .saturating_add(self.ttl_s.saturating_mul(1000))
    }
}

/// Contacts and messages of one run, validated and sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Number of nodes (one more than the highest index named anywhere).
    pub nodes: usize,
    /// Sorted by (start, a, b, end, rate): the order the simulator opens them in.
    pub contacts: Vec<Contact>,
    /// Sorted by (created, original row): the order users write them in.
    pub messages: Vec<Message>,
}

/// Why a trace was refused. Every variant names the row so a person can fix the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file} line {line}: expected {expected} comma-separated fields, found {found}")]
    FieldCount {
        file: &'static str,
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("{file} line {line}: field `{field}` is not a valid value: {value:?}")]
    BadField {
        file: &'static str,
        line: usize,
        field: &'static str,
        value: String,
    },
    #[error("{file} line {line}: {reason}")]
    Invalid {
        file: &'static str,
        line: usize,
        reason: String,
    },
    #[error("{file}: more than {MAX_ROWS} rows")]
    TooManyRows { file: &'static str },
    #[error("message name {0:?} appears twice")]
    DuplicateMessage(String),
}

impl Trace {
    /// Builds a trace from already-parsed parts: normalises pair order, sorts, and checks
    /// every invariant the simulator relies on (so generators get the same checks as files).
    pub fn new(mut contacts: Vec<Contact>, mut messages: Vec<Message>) -> Result<Self, TraceError> {
        let mut nodes = 0usize;
        for (i, c) in contacts.iter_mut().enumerate() {
            if c.a > c.b {
                std::mem::swap(&mut c.a, &mut c.b);
            }
            let line = i + 2;
            check_contact(c, line)?;
            nodes = nodes.max(c.b + 1);
        }
        for (i, m) in messages.iter().enumerate() {
            let line = i + 2;
            check_message(m, line)?;
            nodes = nodes.max(m.from.max(m.to) + 1);
        }
        contacts.sort_by(|x, y| {
            (x.start_ms, x.a, x.b, x.end_ms, x.bytes_per_s).cmp(&(
                y.start_ms,
                y.a,
                y.b,
                y.end_ms,
                y.bytes_per_s,
            ))
        });
        // Stable sort: equal creation times keep file order.
        messages.sort_by_key(|m| m.created_ms);
        let mut names: Vec<&str> = messages.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(TraceError::DuplicateMessage(w[0].to_owned()));
        }
        Ok(Trace {
            nodes,
            contacts,
            messages,
        })
    }

    /// Reads `contacts.csv` (`start_s,end_s,node_a,node_b,bytes_per_s`) and
    /// `messages.csv` (`created_s,msg_id,from,to,size_bytes,ttl_s`), each with a header row.
    pub fn from_files(contacts: &Path, messages: &Path) -> Result<Self, TraceError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TraceError::Io {
                path: p.display().to_string(),
                source,
            })
        };
        Self::from_csv(&read(contacts)?, &read(messages)?)
    }

    /// Parses the two CSV texts (see [`Trace::from_files`]).
    pub fn from_csv(contacts_csv: &str, messages_csv: &str) -> Result<Self, TraceError> {
        const CF: &str = "contacts";
        const MF: &str = "messages";
        let mut contacts = Vec::new();
        for (line, fields) in rows(contacts_csv, CF, 5)? {
            contacts.push(Contact {
                start_ms: seconds_to_ms(fields[0], CF, line, "start_s")?,
                end_ms: seconds_to_ms(fields[1], CF, line, "end_s")?,
                a: node_index(fields[2], CF, line, "node_a")?,
                b: node_index(fields[3], CF, line, "node_b")?,
                bytes_per_s: integer(fields[4], CF, line, "bytes_per_s")?,
            });
        }
        let mut messages = Vec::new();
        for (line, fields) in rows(messages_csv, MF, 6)? {
            messages.push(Message {
                created_ms: seconds_to_ms(fields[0], MF, line, "created_s")?,
                name: fields[1].to_owned(),
                from: node_index(fields[2], MF, line, "from")?,
                to: node_index(fields[3], MF, line, "to")?,
                size_bytes: integer(fields[4], MF, line, "size_bytes")?,
                ttl_s: integer(fields[5], MF, line, "ttl_s")?,
            });
        }
        Self::new(contacts, messages)
    }

    /// End of the trace: the last contact end. Nothing can move after it, so the simulator
    /// stops there.
    pub fn horizon_ms(&self) -> u64 {
        self.contacts.iter().map(|c| c.end_ms).max().unwrap_or(0)
    }
}

fn check_contact(c: &Contact, line: usize) -> Result<(), TraceError> {
    let invalid = |reason: String| TraceError::Invalid {
        file: "contacts",
        line,
        reason,
    };
    if c.a == c.b {
        return Err(invalid(format!("node {} in contact with itself", c.a)));
    }
    if c.b >= MAX_NODES {
        return Err(invalid(format!("node index {} above {MAX_NODES}", c.b)));
    }
    if c.end_ms < c.start_ms {
        return Err(invalid("contact ends before it starts".into()));
    }
    if c.end_ms > MAX_TRACE_MS {
        return Err(invalid(
            "contact ends more than a year after the start".into(),
        ));
    }
    if c.bytes_per_s == 0 {
        return Err(invalid("bytes_per_s is 0".into()));
    }
    Ok(())
}

fn check_message(m: &Message, line: usize) -> Result<(), TraceError> {
    let invalid = |reason: String| TraceError::Invalid {
        file: "messages",
        line,
        reason,
    };
    if m.from == m.to {
        return Err(invalid(format!(
            "message {} sent to its own sender",
            m.name
        )));
    }
    if m.from.max(m.to) >= MAX_NODES {
        return Err(invalid(format!("node index above {MAX_NODES}")));
    }
    if m.size_bytes == 0 || m.size_bytes > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "size_bytes {} outside 1..={MAX_MESSAGE_BYTES}",
            m.size_bytes
        )));
    }
    if m.ttl_s == 0 {
        return Err(invalid("ttl_s is 0".into()));
    }
    if m.created_ms > MAX_TRACE_MS {
        return Err(invalid("created more than a year after the start".into()));
    }
    if m.name.is_empty() {
        return Err(invalid("empty msg_id".into()));
    }
    Ok(())
}

/// Data rows with their 1-based line numbers; skips the header and blank lines.
fn rows<'a>(
    text: &'a str,
    file: &'static str,
    expected: usize,
) -> Result<Vec<(usize, Vec<&'a str>)>, TraceError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if i == 0 || raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        if out.len() >= MAX_ROWS {
            return Err(TraceError::TooManyRows { file });
        }
        let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
        if fields.len() != expected {
            return Err(TraceError::FieldCount {
                file,
                line,
                expected,
                found: fields.len(),
            });
        }
        out.push((line, fields));
    }
    Ok(out)
}

fn bad(file: &'static str, line: usize, field: &'static str, value: &str) -> TraceError {
    TraceError::BadField {
        file,
        line,
        field,
        value: value.chars().take(40).collect(),
    }
}

/// Decimal seconds (`12`, `0.1`, `43200.25`) to whole milliseconds, exactly: parsed as
/// digits, not through a float, so `0.3` is 300 ms on every machine.
fn seconds_to_ms(
    s: &str,
    file: &'static str,
    line: usize,
    field: &'static str,
) -> Result<u64, TraceError> {
    let (int_part, frac_part) = s.split_once('.').unwrap_or((s, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || int_part.len() > 12 || !all_digits(int_part) || !all_digits(frac_part)
    {
        return Err(bad(file, line, field, s));
    }
    let secs: u64 = int_part.parse().map_err(|_| bad(file, line, field, s))?;
    let mut ms = 0u64;
    for (i, digit) in frac_part.bytes().take(3).enumerate() {
        ms += u64::from(digit - b'0') * [100, 10, 1][i];
    }
    // Anything beyond milliseconds is rounded half up.
    if frac_part.as_bytes().get(3).is_some_and(|d| *d >= b'5') {
        ms += 1;
    }
    Ok(secs * 1000 + ms)
}

fn integer(
    s: &str,
    file: &'static str,
    line: usize,
    field: &'static str,
) -> Result<u64, TraceError> {
    // Some exporters write integers as `1000.0`.
    let digits = s.strip_suffix(".0").unwrap_or(s);
    digits.parse().map_err(|_| bad(file, line, field, s))
}

fn node_index(
    s: &str,
    file: &'static str,
    line: usize,
    field: &'static str,
) -> Result<usize, TraceError> {
    let n = integer(s, file, line, field)?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n < MAX_NODES)
        .ok_or_else(|| bad(file, line, field, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_seconds_exactly() {
        let ms = |s| seconds_to_ms(s, "t", 1, "f").unwrap();
        assert_eq!(ms("0.1"), 100);
        assert_eq!(ms("0.3"), 300);
        assert_eq!(ms("43200"), 43_200_000);
        assert_eq!(ms("1.2345"), 1235);
        assert!(seconds_to_ms("-1", "t", 1, "f").is_err());
        assert!(seconds_to_ms("1e3", "t", 1, "f").is_err());
        assert!(seconds_to_ms("", "t", 1, "f").is_err());
    }

    #[test]
    fn reads_both_files_and_normalises_pairs() {
        let t = Trace::from_csv(
            "start_s,end_s,node_a,node_b,bytes_per_s\n5,9,2,0,1000\n0.5,3,0,1,250000\n",
            "created_s,msg_id,from,to,size_bytes,ttl_s\n1.0,M1,0,2,1000,3600\n",
        )
        .unwrap();
        assert_eq!(t.nodes, 3);
        assert_eq!(t.contacts[0].start_ms, 500);
        assert_eq!((t.contacts[1].a, t.contacts[1].b), (0, 2));
        assert_eq!(t.messages[0].expires_ms(), 3_601_000);
    }

    #[test]
    fn refuses_bad_rows_with_their_line() {
        let err = Trace::from_csv("h\n1,2,0,1\n", "h\n").unwrap_err();
        assert!(
            matches!(err, TraceError::FieldCount { line: 2, .. }),
            "{err}"
        );
        let err = Trace::from_csv("h\n1,2,0,0,5\n", "h\n").unwrap_err();
        assert!(matches!(err, TraceError::Invalid { line: 2, .. }), "{err}");
        let err = Trace::from_csv("h\n", "h\n1,M,0,1,100,10\n2,M,1,0,100,10\n").unwrap_err();
        assert!(matches!(err, TraceError::DuplicateMessage(_)), "{err}");
        let err = Trace::from_csv("h\n1,2,0,99999999,5\n", "h\n").unwrap_err();
        assert!(matches!(err, TraceError::BadField { .. }), "{err}");
    }
}
