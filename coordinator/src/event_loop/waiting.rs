//! Requests the event loop holds open: workers long-polling for a task, and
//! the ranks of a gang gathering for their rendezvous.

use std::collections::VecDeque;
use std::time::Instant;

use atelier_proto::{Assignment, Gang, GangSecret, LeaseRef, RendezvousOffer, WorkerId};

use crate::state::gang::gather;
use crate::state::Now;

use super::{defer, Deferred, EventLoop, Reply};

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) worker_id: WorkerId,
    pub(super) deadline: Instant,
    pub(super) reply: Reply<Option<Assignment>>,
}

/// The ranks of one train job that have offered themselves so far.
#[derive(Default)]
pub(super) struct Gathering {
    pub(super) offers: std::collections::BTreeMap<usize, (LeaseRef, RendezvousOffer)>,
    pub(super) waiting: Vec<(Instant, Reply<Option<Gang>>)>,
}

impl EventLoop {
    pub(super) fn rendezvous(
        &mut self,
        lease: LeaseRef,
        offer: RendezvousOffer,
        deadline: Instant,
        reply: Reply<Option<Gang>>,
        deferred: &mut Vec<Deferred>,
    ) {
        let member = match self.state.gang_member(&lease) {
            Ok(member) => member,
            Err(e) => return deferred.push(defer(reply, Err(e))),
        };
        let state = &self.state;
        let gathering = self.gatherings.entry(member.job_id.clone()).or_default();
        gathering.offers.insert(member.rank, (lease, offer));
        // Offers of an earlier attempt of the gang no longer count.
        gathering
            .offers
            .retain(|_, (lease, _)| state.is_current(lease));
        gathering.waiting.push((deadline, reply));
        if gathering.offers.len() < member.world_size {
            return;
        }
        let offers: Vec<_> = gathering.offers.values().cloned().collect();
        // Each generation of the gang gets a secret of its own, which its
        // ranks' ring connections carry.
        let gang = gather(&offers, GangSecret(rand::random()));
        tracing::info!(job = %member.job_id, ranks = offers.len(), session = gang.session, "gang assembled");
        for (_, reply) in std::mem::take(&mut gathering.waiting) {
            deferred.push(defer(reply, Ok(Some(gang.clone()))));
        }
        self.gatherings.remove(&member.job_id);
    }

    /// Answers "not yet" to ranks whose wait is over.
    pub(super) fn expire_gatherings(&mut self, now: Now, deferred: &mut Vec<Deferred>) {
        for gathering in self.gatherings.values_mut() {
            let (over, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut gathering.waiting)
                .into_iter()
                .filter(|(_, reply)| !reply.is_closed())
                .partition(|(deadline, _)| *deadline <= now.at);
            gathering.waiting = kept;
            for (_, reply) in over {
                deferred.push(defer(reply, Ok(None)));
            }
        }
        let state = &self.state;
        self.gatherings.retain(|_, g| {
            g.offers.retain(|_, (lease, _)| state.is_current(lease));
            !g.offers.is_empty() || !g.waiting.is_empty()
        });
    }

    /// Starts waiting gangs on the workers now waiting for work.
    pub(super) fn serve_gangs(&mut self, now: Now, deferred: &mut Vec<Deferred>) {
        while self.state.has_waiting_gangs() {
            self.waiters.retain(|w| !w.reply.is_closed());
            let mut idle: Vec<WorkerId> = Vec::new();
            for waiter in &self.waiters {
                if !idle.contains(&waiter.worker_id) {
                    idle.push(waiter.worker_id.clone());
                }
            }
            let Some(placed) = self.state.place_gang(&idle, now) else {
                break;
            };
            for (worker_id, assignment) in placed {
                if let Some(position) = self.waiters.iter().position(|w| w.worker_id == worker_id) {
                    if let Some(waiter) = self.waiters.remove(position) {
                        deferred.push(defer(waiter.reply, Ok(Some(assignment))));
                    }
                }
            }
        }
    }

    /// Hands queued tasks to waiting workers. A lane held for a gang keeps
    /// waiting without holding up the lanes behind it.
    pub(super) fn serve_waiters(&mut self, now: Now, deferred: &mut Vec<Deferred>) {
        self.serve_gangs(now, deferred);
        if !self.state.has_queued_work() {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.waiters.len());
        while let Some(waiter) = self.waiters.pop_front() {
            if waiter.reply.is_closed() {
                continue;
            }
            if !self.state.has_queued_work() {
                kept.push_back(waiter);
                continue;
            }
            match self.state.lease(&waiter.worker_id, now) {
                Ok(None) => kept.push_back(waiter),
                other => deferred.push(defer(waiter.reply, other)),
            }
        }
        self.waiters = kept;
    }

    /// Answers "no work" to waiters whose wait is over, and drops those gone.
    pub(super) fn expire_waiters(&mut self, now: Now, deferred: &mut Vec<Deferred>) {
        let mut kept = VecDeque::with_capacity(self.waiters.len());
        for waiter in self.waiters.drain(..) {
            if waiter.reply.is_closed() {
                continue;
            }
            if waiter.deadline <= now.at {
                deferred.push(defer(waiter.reply, Ok(None)));
            } else {
                kept.push_back(waiter);
            }
        }
        self.waiters = kept;
    }
}
