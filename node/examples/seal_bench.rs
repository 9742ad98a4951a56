//! Seal and open rate for 256-byte message bodies, one core, as one JSON object.
//!
//! `cargo run --release -p cairn-node --example seal_bench [-- --n 200000]`

use std::time::Instant;

use cairn_node::seal::{
    MailboxKey, PairKeys, SealedHeader, PERIOD_SECS, RECEIPT_LOCK_LEN, SEAL_OVERHEAD,
};
use cairn_sync::envelope::Priority;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .skip_while(|a| a != "--n")
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(200_000);
    let day = 20_600;
    let (a, b) = ([0xA1; 32], [0xB0; 32]);
    let alice = PairKeys::new(&[9; 32], &a, &b, day);
    let bob = PairKeys::new(&[9; 32], &b, &a, day);
    let header = SealedHeader {
        created_at_secs: day * PERIOD_SECS,
        lifetime_secs: 86_400,
        scope: MailboxKey([1; 32]).tag(day),
        priority: Priority::Normal,
        copy_budget: 8,
    };
    let body = [0x5a_u8; 256];

    let started = Instant::now();
    let mut sealed = Vec::with_capacity(n);
    for i in 0..n {
        // Distinct texts, as real messages are (equal ones would seal alike).
        let mut text = body;
        text[..8].copy_from_slice(&(i as u64).to_le_bytes());
        sealed.push(alice.seal(&header, &text)?);
    }
    let seal_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut opened = 0usize;
    for s in &sealed {
        opened += bob.open(&header, &s.receipt_lock, &s.body)?.plaintext.len();
    }
    let open_s = started.elapsed().as_secs_f64();
    assert_eq!(opened, n * body.len());

    println!(
        "{{\"n\":{n},\"body_bytes\":256,\"overhead_bytes\":{},\
         \"seal_per_s\":{:.0},\"open_per_s\":{:.0},\"seal_plus_open_per_s\":{:.0}}}",
        SEAL_OVERHEAD + RECEIPT_LOCK_LEN,
        n as f64 / seal_s,
        n as f64 / open_s,
        n as f64 / (seal_s + open_s)
    );
    Ok(())
}
