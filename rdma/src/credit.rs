//! Credit-based flow control for a connection's control channel.
//!
//! An RDMA Send consumes one receive buffer the peer posted beforehand; a Send with no posted
//! buffer is rejected by the NIC (receiver-not-ready), which stalls the whole queue pair. So a
//! sender may only send as many messages as the receiver has buffers for: one *credit* per buffer.
//!
//! - The receiver ([`CreditGrantor`]) reserves `reserved` buffers for the peer; that number is the
//!   initial credit exchanged in the handshake. When it has processed messages and re-posted their
//!   buffers it returns them as credits, batched: a grant goes out once at least `high_water`
//!   buffers are waiting (Lustre o2iblnd's rule, so a busy receiver does not send one grant per
//!   message), or for free on any response it sends anyway ([`CreditGrantor::piggyback`]).
//! - The sender ([`CreditLedger`]) counts what it has sent and what it has been granted, and sends
//!   only while `sent_total < granted_total`. A message without credit waits in the caller's queue;
//!   nothing here spins or sleeps.
//!
//! Grants are *cumulative*: each carries the total number of credits granted since the connection
//! started, not an increment. The sender keeps the maximum it has seen, so a lost grant is covered
//! by the next one, and a duplicated or reordered grant changes nothing. Totals are `u64`: at a
//! billion messages a second they last five centuries.

use thiserror::Error;

/// Flow-control errors: invalid settings, or a peer that broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CreditError {
    /// A connection needs at least one receive buffer.
    #[error("no receive buffers reserved")]
    NoBuffers,
    /// The high-water mark must be between 1 and the buffers reserved, or returns could pile up
    /// below it forever and the sender would stall.
    #[error("high-water mark {high_water} is not within 1..={reserved}")]
    BadHighWater {
        /// The mark asked for.
        high_water: u32,
        /// The buffers reserved.
        reserved: u32,
    },
    /// The peer sent a message beyond the credits it was granted (a protocol violation: there is
    /// no buffer for it).
    #[error("peer overran its credits: {granted} granted, message {received} received")]
    Overrun {
        /// Total credits granted so far.
        granted: u64,
        /// Number of the offending message (1-based).
        received: u64,
    },
    /// More buffers released than messages received and not yet released (a local bug).
    #[error("released {released} buffers but only {outstanding} are outstanding")]
    ReleaseBeyondReceived {
        /// Buffers being released.
        released: u32,
        /// Messages received and not yet released.
        outstanding: u64,
    },
    /// A grant larger than any correct receiver can issue: a receiver never grants more than its
    /// reserved buffers beyond what it has received, and it cannot have received more than was
    /// sent.
    #[error("grant total {total} exceeds sent {sent} + window {window}")]
    GrantBeyondWindow {
        /// The cumulative grant received.
        total: u64,
        /// Messages sent so far.
        sent: u64,
        /// The credits negotiated at the handshake.
        window: u32,
    },
}

/// The receiver's side: the buffers reserved for one peer, and the cumulative grants it issues.
///
/// Invariant: `total_granted = reserved + processed_total - pending`, so the peer can never have
/// more than `reserved` messages in flight or unprocessed.
#[derive(Debug, Clone)]
pub struct CreditGrantor {
    reserved: u32,
    high_water: u32,
    total_granted: u64,
    received_total: u64,
    processed_total: u64,
    /// Buffers processed and re-posted but not yet granted back.
    pending: u32,
}

impl CreditGrantor {
    /// A grantor for `reserved` receive buffers that returns them in batches of at least
    /// `high_water`. The initial grant is `reserved` (sent in the handshake).
    pub fn new(reserved: u32, high_water: u32) -> Result<Self, CreditError> {
        if reserved == 0 {
            return Err(CreditError::NoBuffers);
        }
        if high_water == 0 || high_water > reserved {
            return Err(CreditError::BadHighWater { high_water, reserved });
        }
        Ok(Self {
            reserved,
            high_water,
            total_granted: u64::from(reserved),
            received_total: 0,
            processed_total: 0,
            pending: 0,
        })
    }

    /// The buffers reserved for the peer: the credits to offer in the handshake.
    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    /// Records one message arriving, consuming one buffer. An error means the peer sent without
    /// credit; the connection should be torn down.
    pub fn on_receive(&mut self) -> Result<(), CreditError> {
        if self.received_total >= self.total_granted {
            return Err(CreditError::Overrun {
                granted: self.total_granted,
                received: self.received_total + 1,
            });
        }
        self.received_total += 1;
        Ok(())
    }

    /// Records `n` messages processed and their buffers re-posted. Returns the new cumulative grant
    /// to send when the returns waiting reach the high-water mark, `None` while they are batched.
    pub fn release(&mut self, n: u32) -> Result<Option<u64>, CreditError> {
        let outstanding = self.outstanding();
        if u64::from(n) > outstanding {
            return Err(CreditError::ReleaseBeyondReceived {
                released: n,
                outstanding,
            });
        }
        self.processed_total += u64::from(n);
        // pending + outstanding <= reserved, so this cannot overflow.
        self.pending += n;
        if self.pending >= self.high_water {
            Ok(Some(self.flush()))
        } else {
            Ok(None)
        }
    }

    /// The cumulative grant to put on a response the receiver sends anyway: returns every waiting
    /// buffer, below the high-water mark too, since the ride is free.
    pub fn piggyback(&mut self) -> u64 {
        self.flush()
    }

    /// The latest cumulative grant, without returning waiting buffers: to send again when the last
    /// grant may have been lost (keepalive, retransmission timer).
    pub fn current_grant(&self) -> u64 {
        self.total_granted
    }

    /// Messages received and not yet released.
    pub fn outstanding(&self) -> u64 {
        self.received_total - self.processed_total
    }

    /// Buffers released but not yet granted back.
    pub fn pending_returns(&self) -> u32 {
        self.pending
    }

    /// Total messages received.
    pub fn received_total(&self) -> u64 {
        self.received_total
    }

    /// Total messages released.
    pub fn processed_total(&self) -> u64 {
        self.processed_total
    }

    fn flush(&mut self) -> u64 {
        self.total_granted += u64::from(self.pending);
        self.pending = 0;
        self.total_granted
    }
}

/// The sender's side: credits granted and messages sent, both cumulative.
#[derive(Debug, Clone)]
pub struct CreditLedger {
    window: u32,
    granted_total: u64,
    sent_total: u64,
}

impl CreditLedger {
    /// A ledger starting with the `credits` negotiated in the handshake.
    pub fn new(credits: u32) -> Self {
        Self {
            window: credits,
            granted_total: u64::from(credits),
            sent_total: 0,
        }
    }

    /// Takes `n` credits if that many are available; otherwise takes none and returns `false`
    /// (the caller queues the messages until a grant arrives).
    pub fn try_consume(&mut self, n: u32) -> bool {
        if u64::from(n) > self.available() {
            return false;
        }
        self.sent_total += u64::from(n);
        true
    }

    /// Credits available now.
    pub fn available(&self) -> u64 {
        self.granted_total - self.sent_total
    }

    /// Applies a cumulative grant (from a grant message or a piggybacked response). Returns whether
    /// it raised the credits; an older or repeated total is ignored. A total no correct receiver can
    /// send is refused and changes nothing.
    pub fn apply_grant(&mut self, total: u64) -> Result<bool, CreditError> {
        if total > self.sent_total.saturating_add(u64::from(self.window)) {
            return Err(CreditError::GrantBeyondWindow {
                total,
                sent: self.sent_total,
                window: self.window,
            });
        }
        if total > self.granted_total {
            self.granted_total = total;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// The highest cumulative grant seen.
    pub fn granted_total(&self) -> u64 {
        self.granted_total
    }

    /// Messages sent so far.
    pub fn sent_total(&self) -> u64 {
        self.sent_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validates_settings() {
        assert_eq!(CreditGrantor::new(0, 1).unwrap_err(), CreditError::NoBuffers);
        assert_eq!(
            CreditGrantor::new(8, 0).unwrap_err(),
            CreditError::BadHighWater {
                high_water: 0,
                reserved: 8
            }
        );
        assert_eq!(
            CreditGrantor::new(8, 9).unwrap_err(),
            CreditError::BadHighWater {
                high_water: 9,
                reserved: 8
            }
        );
        assert!(CreditGrantor::new(8, 8).is_ok());
    }

    #[test]
    fn sender_stops_at_the_window() {
        let mut l = CreditLedger::new(4);
        assert_eq!(l.available(), 4);
        assert!(l.try_consume(3));
        assert!(!l.try_consume(2), "all or nothing");
        assert_eq!(l.available(), 1);
        assert!(l.try_consume(1));
        assert!(!l.try_consume(1));
        assert!(l.try_consume(0));
        assert_eq!(l.sent_total(), 4);
    }

    #[test]
    fn grants_are_cumulative_and_idempotent() {
        let mut l = CreditLedger::new(4);
        assert!(l.try_consume(4));
        assert_eq!(l.apply_grant(6), Ok(true));
        assert_eq!(l.available(), 2);
        assert_eq!(l.apply_grant(6), Ok(false), "duplicate");
        assert_eq!(l.apply_grant(5), Ok(false), "reordered, older");
        assert_eq!(l.available(), 2);
        // Grant 7 lost; 8 covers it.
        assert_eq!(l.apply_grant(8), Ok(true));
        assert_eq!(l.available(), 4);
        assert_eq!(l.granted_total(), 8);
    }

    #[test]
    fn impossible_grants_are_refused() {
        let mut l = CreditLedger::new(4);
        assert!(l.try_consume(1));
        assert_eq!(l.apply_grant(5), Ok(true));
        assert_eq!(
            l.apply_grant(6),
            Err(CreditError::GrantBeyondWindow {
                total: 6,
                sent: 1,
                window: 4
            })
        );
        assert_eq!(l.apply_grant(u64::MAX).map_err(|_| ()), Err(()));
        assert_eq!(l.granted_total(), 5);
    }

    #[test]
    fn receiver_batches_returns_at_the_high_water_mark() {
        let mut g = CreditGrantor::new(8, 3).unwrap();
        assert_eq!(g.current_grant(), 8);
        for _ in 0..5 {
            g.on_receive().unwrap();
        }
        assert_eq!(g.release(2), Ok(None));
        assert_eq!(g.pending_returns(), 2);
        assert_eq!(g.release(1), Ok(Some(11)));
        assert_eq!(g.pending_returns(), 0);
        assert_eq!(g.release(1), Ok(None));
        // A response carries the waiting return even below the mark.
        assert_eq!(g.piggyback(), 12);
        assert_eq!(g.piggyback(), 12, "nothing new to return");
        assert_eq!(g.current_grant(), 12);
        assert_eq!(g.outstanding(), 1);
    }

    #[test]
    fn receiver_detects_overrun_and_over_release() {
        let mut g = CreditGrantor::new(2, 1).unwrap();
        g.on_receive().unwrap();
        g.on_receive().unwrap();
        assert_eq!(
            g.on_receive(),
            Err(CreditError::Overrun {
                granted: 2,
                received: 3
            })
        );
        assert_eq!(g.received_total(), 2, "the overrun is not counted");
        assert_eq!(
            g.release(3),
            Err(CreditError::ReleaseBeyondReceived {
                released: 3,
                outstanding: 2
            })
        );
        assert_eq!(g.release(2), Ok(Some(4)));
        assert_eq!(
            g.release(1),
            Err(CreditError::ReleaseBeyondReceived {
                released: 1,
                outstanding: 0
            })
        );
        assert_eq!(g.processed_total(), 2);
    }

    #[test]
    fn a_full_round_trip() {
        let mut g = CreditGrantor::new(4, 2).unwrap();
        let mut l = CreditLedger::new(g.reserved());
        assert!(l.try_consume(4));
        for _ in 0..4 {
            g.on_receive().unwrap();
        }
        assert!(!l.try_consume(1));
        let grant = g.release(2).unwrap().unwrap();
        assert_eq!(l.apply_grant(grant), Ok(true));
        assert!(l.try_consume(2));
        assert!(!l.try_consume(1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The sender tries to send this many messages.
        Send(u32),
        /// The oldest message on the wire reaches the receiver (RC delivers in order).
        Deliver,
        /// The receiver processes up to this many messages.
        Process(u32),
        /// The receiver sends a response carrying a piggybacked grant.
        Respond,
        /// A grant in the network (chosen by index: any order) reaches the sender.
        DeliverGrant(usize),
        /// A grant in the network is duplicated.
        DuplicateGrant(usize),
        /// A grant in the network is lost.
        LoseGrant(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u32..=4).prop_map(Op::Send),
            Just(Op::Deliver),
            (1u32..=4).prop_map(Op::Process),
            Just(Op::Respond),
            any::<usize>().prop_map(Op::DeliverGrant),
            any::<usize>().prop_map(Op::DuplicateGrant),
            any::<usize>().prop_map(Op::LoseGrant),
        ]
    }

    proptest! {
        #[test]
        fn never_overruns_and_never_deadlocks(
            reserved in 1u32..=16,
            high_water_seed in any::<u32>(),
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let high_water = 1 + high_water_seed % reserved;
            let mut g = CreditGrantor::new(reserved, high_water).unwrap();
            let mut l = CreditLedger::new(g.reserved());
            let mut on_wire = 0u64;
            let mut grants: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Send(n) => {
                        let before = l.available();
                        if l.try_consume(n) {
                            on_wire += u64::from(n);
                        } else {
                            prop_assert!(before < u64::from(n));
                            prop_assert_eq!(l.available(), before);
                        }
                    }
                    Op::Deliver => {
                        if on_wire > 0 {
                            prop_assert_eq!(g.on_receive(), Ok(()));
                            on_wire -= 1;
                        }
                    }
                    Op::Process(n) => {
                        let n = n.min(u32::try_from(g.outstanding()).unwrap());
                        if n > 0 {
                            if let Some(total) = g.release(n).unwrap() {
                                grants.push(total);
                            }
                        }
                    }
                    Op::Respond => grants.push(g.piggyback()),
                    Op::DeliverGrant(i) => {
                        if !grants.is_empty() {
                            let total = grants.swap_remove(i % grants.len());
                            prop_assert!(l.apply_grant(total).is_ok());
                        }
                    }
                    Op::DuplicateGrant(i) => {
                        if !grants.is_empty() {
                            grants.push(grants[i % grants.len()]);
                        }
                    }
                    Op::LoseGrant(i) => {
                        if !grants.is_empty() {
                            grants.swap_remove(i % grants.len());
                        }
                    }
                }
                // Safety: messages sent and not yet processed fit in the reserved buffers.
                prop_assert!(l.sent_total() - g.processed_total() <= u64::from(reserved));
                prop_assert!(l.sent_total() <= l.granted_total());
                prop_assert_eq!(l.sent_total(), g.received_total() + on_wire);
                // Exactness: once the latest grant arrives, the sender may use every buffer that is
                // neither holding a message nor waiting to be returned.
                let mut eventually = l.clone();
                prop_assert!(eventually.apply_grant(g.current_grant()).is_ok());
                prop_assert_eq!(
                    eventually.available() + on_wire,
                    u64::from(reserved) - g.outstanding() - u64::from(g.pending_returns())
                );
            }
            // Liveness: the receiver drains everything; one grant then arrives (the others may all
            // have been lost). The sender must be able to send again.
            while on_wire > 0 {
                prop_assert_eq!(g.on_receive(), Ok(()));
                on_wire -= 1;
            }
            let outstanding = u32::try_from(g.outstanding()).unwrap();
            if outstanding > 0 {
                g.release(outstanding).unwrap();
            }
            prop_assert!(u64::from(g.pending_returns()) < u64::from(high_water));
            prop_assert!(l.apply_grant(g.current_grant()).is_ok());
            prop_assert!(l.available() > u64::from(reserved - high_water));
            prop_assert!(l.try_consume(1));
        }
    }
}
