//! Sliding replay window for datagram counters (the IPsec/WireGuard technique, RFC 6479).
//!
//! Datagrams may arrive late, out of order or twice. The window remembers the highest counter
//! accepted and which of the [`WINDOW_BITS`] counters below it were seen: a counter seen before,
//! or older than the window, is refused; anything newer is accepted. The check happens before
//! decryption (cheap refusal) and the mark only after the frame authenticated, so forged
//! datagrams cannot move the window.

/// How far behind the newest frame a late frame may still be accepted.
pub const WINDOW_BITS: u32 = 128;

#[derive(Debug, Clone, Default)]
pub(crate) struct ReplayWindow {
    /// Highest counter accepted so far, `None` before the first.
    highest: Option<u32>,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    /// Would `counter` be new? (No state change.)
    pub(crate) fn check(&self, counter: u32) -> bool {
        match self.highest {
            None => true,
            Some(h) if counter > h => true,
            Some(h) => {
                let behind = h - counter;
                behind < WINDOW_BITS && self.seen & (1u128 << behind) == 0
            }
        }
    }

    /// Records an authenticated `counter` (which passed [`check`](Self::check)).
    pub(crate) fn mark(&mut self, counter: u32) {
        match self.highest {
            None => {
                self.highest = Some(counter);
                self.seen = 1;
            }
            Some(h) if counter > h => {
                let ahead = counter - h;
                self.seen = if ahead >= WINDOW_BITS {
                    0
                } else {
                    self.seen << ahead
                };
                self.seen |= 1;
                self.highest = Some(counter);
            }
            Some(h) => {
                let behind = h - counter;
                if behind < WINDOW_BITS {
                    self.seen |= 1u128 << behind;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, c: u32) -> bool {
        let ok = w.check(c);
        if ok {
            w.mark(c);
        }
        ok
    }

    #[test]
    fn duplicates_and_too_old_refused_reorder_accepted_once() {
        let mut w = ReplayWindow::default();
        assert!(accept(&mut w, 5));
        assert!(!accept(&mut w, 5));
        assert!(accept(&mut w, 3));
        assert!(!accept(&mut w, 3));
        assert!(accept(&mut w, 4));
        assert!(accept(&mut w, 0));
        assert!(accept(&mut w, 200));
        assert!(!accept(&mut w, 200 - WINDOW_BITS));
        assert!(accept(&mut w, 200 - WINDOW_BITS + 1));
        assert!(!accept(&mut w, 5));
        assert!(accept(&mut w, 1000));
        assert!(accept(&mut w, 999));
        assert!(!accept(&mut w, 999));
    }

    #[test]
    fn check_does_not_mark() {
        let mut w = ReplayWindow::default();
        assert!(w.check(1));
        assert!(w.check(1));
        w.mark(1);
        assert!(!w.check(1));
    }
}
