//! The loop's two control inputs, turned into [`Command`]s: requests from
//! [`ServerHandle`](crate::ServerHandle)s (queued on a channel, announced by the waker)
//! and signals (SIGINT, SIGTERM, SIGUSR1, SIGHUP, through signal-hook's pipe).
//!
//! Both are rare, so they may allocate; neither ever blocks the loop.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use log::warn;
use mio::{Interest, Registry, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use super::tokens::Owner;
use crate::handle::Request;
use crate::readiness::rearm_after_foreign_drain;
use crate::telemetry::stats::Stats;

/// What the loop is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Stop: gracefully the first time, at once the second. The word says who asked.
    Stop(&'static str),
    /// SIGUSR1: log a stats line (and refresh systemd's status).
    Report,
    /// SIGHUP: re-read the certificate files.
    Reload,
    /// A handle wants a copy of the counters, sent back on this channel.
    SendStats(Sender<Stats>),
}

/// Where commands come from.
pub(crate) struct Control {
    /// Requests queued by the handles.
    inbox: Receiver<Request>,
    /// The signals the loop handles, when it handles any (the binary does; an in-process
    /// test server leaves signals alone).
    signals: Option<Signals>,
    /// Keeps the waker registered for as long as the loop runs.
    _waker: Arc<Waker>,
}

impl Control {
    /// Registers the signal pipe (if `handle_signals`) under its token.
    pub(crate) fn new(
        inbox: Receiver<Request>,
        waker: Arc<Waker>,
        handle_signals: bool,
        registry: &Registry,
    ) -> io::Result<Control> {
        let signals = if handle_signals {
            let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP])?;
            registry.register(&mut signals, Owner::Signals.token(), Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        Ok(Control {
            inbox,
            signals,
            _waker: waker,
        })
    }

    /// The waker fired: whatever the handles have queued. A stop is acknowledged at once.
    pub(crate) fn requests(&mut self) -> Vec<Command> {
        let mut commands = Vec::new();
        while let Ok(request) = self.inbox.try_recv() {
            commands.push(match request {
                Request::Stats(reply_to) => Command::SendStats(reply_to),
                Request::Stop(ack) => {
                    // The asker may have given up waiting: nothing to do about that.
                    let _ = ack.send(());
                    Command::Stop("stop request")
                }
            });
        }
        commands
    }

    /// The signal pipe is readable: the signals that arrived, in order.
    pub(crate) fn signals(&mut self, registry: &Registry) -> Vec<Command> {
        let Some(signals) = self.signals.as_mut() else {
            return Vec::new();
        };
        let commands = signals
            .pending()
            .map(|signal| match signal {
                SIGUSR1 => Command::Report,
                SIGHUP => Command::Reload,
                SIGINT => Command::Stop("SIGINT"),
                _ => Command::Stop("SIGTERM"),
            })
            .collect();
        if let Err(err) = rearm_after_foreign_drain(registry, signals, Owner::Signals.token()) {
            warn!("cannot re-arm the signal pipe: {err}");
        }
        commands
    }
}
