//! Open-loop pacing: waiting until a request's scheduled send time.
//!
//! tokio's timer has a 1 ms resolution: a task sleeping until a time wakes at the next
//! millisecond tick after it, so up to 1 ms late, and in an open loop that delay is counted as
//! latency. Three ways to wait ([`Pacing`]):
//!
//! - `timer` (default): a Linux `timerfd` per connection, armed for the remaining time less
//!   50 µs and awaited through tokio's reactor, then a short spin to the exact time. On time to a
//!   few µs on a quiet machine, and the CPU stays idle until the last 50 µs.
//! - `spin`: tokio sleep until 2 ms before the time, then yield in a loop. As precise as the
//!   reactor allows, but keeps the bench thread busy, which on a small machine takes a core from
//!   the server.
//! - `sleep`: tokio sleep only; cheapest, up to ~1 ms late.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

use crate::config::Pacing;

/// `spin`: how long before the send time the spinning starts.
const SPIN_WINDOW: Duration = Duration::from_millis(2);
/// `timer`: the timer is set this much early, and the rest is spun, to absorb the wake-up delay
/// of the timer, the reactor and the scheduler (tens of µs on a busy machine).
const TIMER_EARLY: Duration = Duration::from_micros(50);

/// A `timerfd` as tokio's `AsyncFd` needs it (nix's `TimerFd` is `AsFd` only).
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Waits until send times, one per connection.
pub struct Pacer {
    pacing: Pacing,
    timer: Option<AsyncFd<Timer>>,
}

impl Pacer {
    /// A pacer; `timer` falls back to `spin` if a timerfd cannot be made.
    pub fn new(pacing: Pacing) -> Pacer {
        let timer = match pacing {
            Pacing::Timer => TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .ok()
            .and_then(|fd| register(Timer(fd))),
            Pacing::Spin | Pacing::Sleep => None,
        };
        let pacing = if pacing == Pacing::Timer && timer.is_none() {
            Pacing::Spin
        } else {
            pacing
        };
        Pacer { pacing, timer }
    }

    /// Returns at `due` or just after it.
    pub async fn until(&self, due: Instant) {
        match (&self.timer, self.pacing) {
            (Some(timer), _) => {
                if let Some(early) = due.checked_sub(TIMER_EARLY) {
                    // On an error, spinning all the way is still correct.
                    let _ = timer_wait(timer, early).await;
                }
                spin_until(due).await;
            }
            (None, Pacing::Sleep) => tokio::time::sleep_until(due.into()).await,
            (None, _) => spin_until(due).await,
        }
    }
}

/// For a thread that blocks instead of awaiting (the rdma loop, `load::rdma`): how long before a
/// send time it stops blocking and spins (yielding) the rest of the way. `timer` and `spin` keep
/// their precision this way; `sleep` does not spin.
pub fn blocking_margin(pacing: Pacing) -> Duration {
    match pacing {
        Pacing::Timer => TIMER_EARLY,
        Pacing::Spin => SPIN_WINDOW,
        Pacing::Sleep => Duration::ZERO,
    }
}

/// Registers the timer with the reactor.
///
/// `AsyncFd::new` is deprecated in favour of the `unsafe` `AsyncFd::register`, because a
/// registered `AsRawFd` value could close its descriptor while tokio still watches it. Here the
/// `AsyncFd` owns the `Timer`, which owns the descriptor (`TimerFd` holds an `OwnedFd`), so the
/// descriptor outlives the registration; the safe, deprecated constructor keeps `unsafe` out of
/// this crate (the project confines it to `engine` and `rdma`).
#[allow(deprecated)]
fn register(timer: Timer) -> Option<AsyncFd<Timer>> {
    AsyncFd::new(timer).ok()
}

async fn timer_wait(timer: &AsyncFd<Timer>, due: Instant) -> io::Result<()> {
    let left = due.saturating_duration_since(Instant::now());
    if left.is_zero() {
        // A zero expiration would disarm the timer.
        return Ok(());
    }
    timer.get_ref().0.set(
        Expiration::OneShot(TimeSpec::from_duration(left)),
        TimerSetTimeFlags::empty(),
    )?;
    loop {
        let mut ready = timer.readable().await?;
        // Reading the expiration count rearms readiness; EAGAIN (not expired yet) makes
        // `try_io` clear the readiness and wait again.
        let read = ready.try_io(|timer| {
            let mut expirations = [0u8; 8];
            nix::unistd::read(timer.as_raw_fd(), &mut expirations).map_err(io::Error::from)
        });
        if let Ok(result) = read {
            return result.map(drop);
        }
    }
}

async fn spin_until(due: Instant) {
    if let Some(early) = due.checked_sub(SPIN_WINDOW) {
        if early > Instant::now() {
            tokio::time::sleep_until(early.into()).await;
        }
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pacing returns no earlier than asked (how late is not asserted).
    #[test]
    fn never_early() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for pacing in [Pacing::Timer, Pacing::Spin, Pacing::Sleep] {
                let pacer = Pacer::new(pacing);
                for micros in [0u64, 50, 300, 1500] {
                    let due = Instant::now() + Duration::from_micros(micros);
                    pacer.until(due).await;
                    assert!(Instant::now() >= due, "{pacing:?} {micros} µs");
                }
                // A time already past returns at once.
                pacer.until(Instant::now() - Duration::from_millis(1)).await;
            }
        });
    }
}
