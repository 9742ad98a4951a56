//! Tries routing rules on a contact trace in an idealised replay (see
//! `cairn_tools::sim::replay`): instant transfers, unlimited buffers, one message at a time.
//!
//! ```text
//! cargo run --release -p cairn-tools --example routing_replay -- \
//!     ../shared/traces/helsinki/contacts.csv ../shared/traces/helsinki/messages_v2.csv
//! ```
//!
//! Prints one JSON object per rule. Rules marked FUTURE-KNOWING use the trace ahead of time:
//! they bound what better prediction could buy, and no node can run them.

use std::path::PathBuf;

use anyhow::Context;
use cairn_tools::sim::replay::{Replay, Rule};
use cairn_tools::sim::Trace;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(contacts), Some(messages)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: routing_replay CONTACTS.csv MESSAGES.csv");
    };
    let trace = Trace::from_files(&contacts, &messages).context("reading the trace")?;
    let replay = Replay::new(&trace);
    let mut rules = Vec::new();
    for copies in [6, 8, 9, 16, 32] {
        rules.push(Rule::SprayFocus { copies });
    }
    rules.extend([
        Rule::SprayWait { copies: 8 },
        Rule::Recency {
            copies: 8,
            window_s: 300,
        },
        Rule::Recency {
            copies: 8,
            window_s: 1800,
        },
        Rule::Hunter {
            copies: 8,
            window_s: 900,
        },
        Rule::Growing {
            copies: 6,
            double_s: 1200,
            max: 16,
        },
        Rule::Growing {
            copies: 6,
            double_s: 600,
            max: 32,
        },
        Rule::Delegation,
        Rule::Wave { hold_s: 300 },
        Rule::Wave { hold_s: 600 },
        Rule::Future {
            copies: 8,
            horizon_s: 900,
        },
        Rule::Future {
            copies: 2,
            horizon_s: 1800,
        },
    ]);
    for rule in rules {
        println!("{}", serde_json::to_string(&replay.run(rule))?);
    }
    Ok(())
}
