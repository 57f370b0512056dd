//! What the supervisor's integration tests share: a supervisor running on a config, stopped at
//! the end (or at once, should a test end early).

#![allow(dead_code)]

use spinforge_state::Store;
use spinforge_state::config::Config;
use spinforge_state::stop::{DropGuard, Stop, StopSignal};
use spinforge_supervisor::Supervisor;
use spinforge_supervisor::control::SupervisorHandle;
use std::path::Path;
use std::time::Duration;

pub struct Running {
    pub handle: SupervisorHandle,
    stop: StopSignal,
    /// Stops the supervisor at once should the test end early.
    _stop_on_drop: DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// A supervisor on `yaml` (written to `dir/spinforge.yaml`) and `store`.
    pub async fn start(dir: &Path, yaml: &str, store: Store) -> Running {
        let path = dir.join("spinforge.yaml");
        std::fs::write(&path, yaml).expect("config");
        let config = Config::parse(yaml, &path).expect("valid config");
        let sup = Supervisor::start(&config, store)
            .await
            .expect("supervisor starts");
        let handle = sup.handle();
        let stop = StopSignal::new();
        let task = tokio::spawn(sup.run(stop.clone()));
        Running {
            handle,
            _stop_on_drop: stop.stop_on_drop(),
            stop,
            task,
        }
    }

    /// Waits until it has returned (after a detach, say).
    pub async fn exited(self) {
        let _ = self.task.await;
    }

    /// Stops it, giving its spinlets 3 s.
    pub async fn shutdown(self) {
        self.stop.send(Stop::at(
            tokio::time::Instant::now() + Duration::from_secs(3),
        ));
        let _ = self.task.await;
    }
}
