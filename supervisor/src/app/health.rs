//! Health checks of running spinlets: every `timing.check_every` each running spinlet of the
//! serving set is probed (within `timing.check_timeout`, concurrently); one that fails
//! `timing.check_failures` probes in a row is taken out of routing, drained, stopped and
//! replaced with backoff, while the others serve. A probe whose answer never comes counts as failed.
//!
//! (A starting spinlet's first healthy answer is awaited by the driver, within the app's
//! `health_check.timeout`; see [`super::effect::Effect::AwaitHealthy`].)

use super::effect::{Effect, Now};
use super::machine::{Fx, Machine};
use super::state::{AfterStop, Phase, Role};
use spinforge_state::records::SpinletState;

impl Machine {
    pub(super) fn check_health(&mut self, now: Now, fx: &mut Fx) {
        self.next_check = Some(now.at + self.timing.check_every);
        let due = now.at + self.timing.check_timeout + self.timing.slack;
        let path = self.config.health_check.path.clone();
        for s in &mut self.slots {
            if s.role != Role::Serving {
                continue;
            }
            if let Phase::Running {
                proc,
                probing: probing @ None,
                ..
            } = &mut s.phase
            {
                *probing = Some(due);
                fx.push(Effect::Probe {
                    id: s.id.clone(),
                    port: proc.port,
                    path: path.clone(),
                });
            }
        }
    }

    pub(super) fn probed(&mut self, id: &str, result: Result<(), String>, now: Now, fx: &mut Fx) {
        let failures = self.timing.check_failures;
        let path = self.config.health_check.path.clone();
        let Some(s) = self.slot_mut(id) else { return };
        let (
            Role::Serving,
            Phase::Running {
                failed_checks,
                probing,
                ..
            },
        ) = (s.role, &mut s.phase)
        else {
            return;
        };
        *probing = None;
        let why = match result {
            Ok(()) => {
                *failed_checks = 0;
                return;
            }
            Err(why) => why,
        };
        *failed_checks += 1;
        if *failed_checks < failures {
            return;
        }
        let reason = format!("failed {failures} health checks in a row ({why} at {path})");
        tracing::warn!(app = %self.name, spinlet = %id, %reason, "replacing an unhealthy spinlet");
        // Out of routing at once; what it still serves may finish (a busy spinlet can fail a
        // probe), and what hangs is cut at its drain's deadline.
        self.drain(
            id,
            AfterStop::Record(SpinletState::Crashed, Some(reason)),
            now,
            fx,
        );
        let at = self.backoff(now.at);
        self.retry_at(at);
    }
}
