//! Hands out ports from `supervisor.port_range` to spinlets.

use spinforge_state::config::PortRange;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    state: Mutex<Allocation>,
}

#[derive(Debug)]
struct Allocation {
    in_use: BTreeSet<u16>,
    /// Where the next search starts, so that a just-freed port is not handed out again at once
    /// (a client may still hold a connection to the process that had it).
    next: u16,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            state: Mutex::new(Allocation {
                in_use: BTreeSet::new(),
                next: range.first(),
            }),
        }
    }

    /// A port in the range that nobody else listens on, or `None` when all are taken.
    pub fn allocate(&self) -> Option<u16> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let len = self.range.len();
        for i in 0..len {
            let offset = (u32::from(s.next - self.range.first()) + i) % len;
            let port = self.range.first() + offset as u16;
            if s.in_use.contains(&port) {
                continue;
            }
            // Something outside SpinForge may hold it: check by binding.
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            s.in_use.insert(port);
            s.next = if port == self.range.last() {
                self.range.first()
            } else {
                port + 1
            };
            return Some(port);
        }
        None
    }

    /// Marks `port` as taken by a spinlet this supervisor adopted.
    pub fn claim(&self, port: u16) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_use
            .insert(port);
    }

    pub fn release(&self, port: u16) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_use
            .remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_ports_and_skips_busy_ones() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let busy_port = busy.local_addr().expect("addr").port();
        let range = PortRange::new(busy_port, busy_port.saturating_add(9)).expect("range");
        let ports = PortAllocator::new(range);
        let a = ports.allocate().expect("a port");
        let b = ports.allocate().expect("another port");
        assert_ne!(a, busy_port);
        assert_ne!(a, b);
        ports.release(a);
        let c = ports.allocate().expect("a third port");
        assert_ne!(c, a, "a freed port is not reused at once");
    }
}
