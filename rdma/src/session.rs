//! The out-of-band exchange of [`Handshake`]s over a byte stream (TCP), with the credit and
//! session-epoch rules applied.
//!
//! ```text
//!   initiator                                   acceptor
//!     ── Handshake{epoch, credits proposed} ──▶   decode; epoch strictly newer than the last
//!                                                 accepted from this peer? else close, no answer
//!     ◀── Handshake{credits = min(proposed, max)} ── record the epoch
//!   check credits ≤ proposed
//! ```
//!
//! Both ends then connect their queue pairs with what they learned. The provider-specific part
//! (for the soft provider over TCP: handing the same stream to [`SoftLink::tcp`]) is the caller's.
//!
//! [`SoftLink::tcp`]: crate::soft::SoftLink::tcp

use std::io::{self, Read, Write};

use thiserror::Error;

use crate::handshake::{check_accepted_credits, negotiate_credits, EpochError, Handshake, HandshakeError, PeerEpochs};

/// Why a handshake exchange failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The stream failed or closed (a refused initiator sees the acceptor close).
    #[error("handshake I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer's handshake is malformed or its credits break the rule.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The peer's epoch is stale or a duplicate.
    #[error(transparent)]
    Epoch(#[from] EpochError),
}

fn read_handshake(stream: &mut impl Read) -> Result<Handshake, SessionError> {
    let mut buf = [0u8; Handshake::LEN];
    stream.read_exact(&mut buf)?;
    Ok(Handshake::decode(&buf)?)
}

/// The initiator's side: sends `ours` (with the credits it proposes), returns the acceptor's
/// answer once its credits are checked.
pub fn initiate(stream: &mut (impl Read + Write), ours: &Handshake) -> Result<Handshake, SessionError> {
    stream.write_all(&ours.encode())?;
    stream.flush()?;
    let theirs = read_handshake(stream)?;
    check_accepted_credits(ours.credits, theirs.credits)?;
    Ok(theirs)
}

/// The acceptor's side: reads the initiator's handshake, refuses a stale or duplicate epoch (by
/// returning without answering: the caller drops the stream), answers with `ours` carrying the
/// negotiated credits (at most `ours.credits`), and records the epoch. Returns the initiator's
/// handshake and the negotiated credits.
pub fn accept(
    stream: &mut (impl Read + Write),
    ours: &Handshake,
    epochs: &mut PeerEpochs,
) -> Result<(Handshake, u32), SessionError> {
    let theirs = read_handshake(stream)?;
    epochs.check(&theirs)?;
    let credits = negotiate_credits(theirs.credits, ours.credits)?;
    let answer = Handshake { credits, ..*ours };
    stream.write_all(&answer.encode())?;
    stream.flush()?;
    epochs.accept(&theirs)?;
    Ok((theirs, credits))
}

/// The acceptor's side without I/O, for callers that read and write the stream themselves (an
/// async runtime): takes the initiator's [`Handshake::LEN`] bytes, applies the same rules as
/// [`accept`] and returns the initiator's handshake, the negotiated credits and the answer to
/// send. The epoch is recorded before the answer is sent: a caller that fails to send it has used
/// the epoch up, so the initiator must retry with a newer one (which it does anyway).
pub fn accept_bytes(
    theirs: &[u8],
    ours: &Handshake,
    epochs: &mut PeerEpochs,
) -> Result<(Handshake, u32, [u8; Handshake::LEN]), SessionError> {
    let theirs = Handshake::decode(theirs)?;
    epochs.check(&theirs)?;
    let credits = negotiate_credits(theirs.credits, ours.credits)?;
    let answer = Handshake { credits, ..*ours };
    epochs.accept(&theirs)?;
    Ok((theirs, credits, answer.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Mtu, RegionDesc, VERSION};
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    fn hello(node_id: u64, epoch: u64, credits: u32) -> Handshake {
        Handshake {
            version: VERSION,
            node_id,
            shard_id: 0,
            epoch,
            qp_num: 1,
            psn: 0,
            gid: [0; 16],
            lid: 0,
            mtu: Mtu::Mtu4096,
            recv_ring: RegionDesc::default(),
            pool: RegionDesc::default(),
            credits,
        }
    }

    #[test]
    fn accept_bytes_applies_the_same_rules_without_io() {
        let mut epochs = PeerEpochs::new();
        let ours = hello(1, 0, 16);
        let (theirs, credits, answer) = accept_bytes(&hello(2, 5, 64).encode(), &ours, &mut epochs).unwrap();
        assert_eq!((theirs.node_id, theirs.epoch, credits), (2, 5, 16));
        assert_eq!(Handshake::decode(&answer).unwrap(), Handshake { credits: 16, ..ours });
        assert!(matches!(
            accept_bytes(&hello(2, 5, 8).encode(), &ours, &mut epochs),
            Err(SessionError::Epoch(EpochError::Duplicate(5)))
        ));
        assert!(matches!(
            accept_bytes(&hello(2, 6, 8).encode()[..50], &ours, &mut epochs),
            Err(SessionError::Handshake(_))
        ));
        assert_eq!(accept_bytes(&hello(2, 6, 8).encode(), &ours, &mut epochs).unwrap().1, 8);
    }

    #[test]
    fn credits_are_negotiated_down_and_stale_epochs_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = thread::spawn(move || {
            let mut epochs = PeerEpochs::new();
            let mut results = Vec::new();
            for _ in 0..3 {
                let (mut stream, _) = listener.accept().unwrap();
                results.push(accept(&mut stream, &hello(1, 0, 16), &mut epochs).map(|(h, c)| (h.epoch, c)));
            }
            results
        });
        let connect = |epoch, credits| {
            let mut stream = TcpStream::connect(addr).unwrap();
            initiate(&mut stream, &hello(2, epoch, credits))
        };
        assert_eq!(connect(5, 64).unwrap().credits, 16, "lowered to the acceptor's maximum");
        assert!(
            matches!(connect(5, 8), Err(SessionError::Io(_))),
            "a replayed epoch gets no answer"
        );
        assert_eq!(connect(6, 8).unwrap().credits, 8);
        let results = acceptor.join().unwrap();
        assert_eq!(results[0].as_ref().unwrap(), &(5, 16));
        assert!(matches!(results[1], Err(SessionError::Epoch(EpochError::Duplicate(5)))));
        assert_eq!(results[2].as_ref().unwrap(), &(6, 8));
    }
}
