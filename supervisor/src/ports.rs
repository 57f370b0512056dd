//! Hands out ports from `supervisor.port_range` to spinlets.

use spinforge_state::config::PortRange;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

#[derive(Debug)]
pub struct PortAllocator {
    state: Mutex<Allocation>,
}

#[derive(Debug)]
struct Allocation {
    /// `supervisor.port_range`; a reload may change it ([`PortAllocator::set_range`]).
    range: PortRange,
    in_use: BTreeSet<u16>,
    /// Where the next search starts, so that a just-freed port is not handed out again at once
    /// (a client may still hold a connection to the process that had it).
    next: u16,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> Self {
        Self {
            state: Mutex::new(Allocation {
                range,
                in_use: BTreeSet::new(),
                next: range.first(),
            }),
        }
    }

    /// A port in the range that nobody else listens on, or `None` when all are taken.
    pub fn allocate(&self) -> Option<u16> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let range = s.range;
        let len = range.len();
        for i in 0..len {
            let offset = (u32::from(s.next.saturating_sub(range.first())) + i) % len;
            let port = range.first() + offset as u16;
            if s.in_use.contains(&port) {
                continue;
            }
            // Something outside SpinForge may hold it: check by binding.
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            s.in_use.insert(port);
            s.next = if port == range.last() {
                range.first()
            } else {
                port + 1
            };
            return Some(port);
        }
        None
    }

    /// A new range (a reload): spinlets started from now on get ports from it; running ones
    /// keep theirs (outside it or not) until they stop.
    pub fn set_range(&self, range: PortRange) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.range != range {
            s.range = range;
            s.next = range.first();
        }
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

    #[test]
    fn a_new_range_applies_to_the_next_port() {
        let ports = PortAllocator::new(PortRange::new(41000, 41019).expect("range"));
        let a = ports.allocate().expect("a port");
        assert!((41000..=41019).contains(&a));
        ports.set_range(PortRange::new(42000, 42019).expect("range"));
        let b = ports.allocate().expect("a port");
        assert!((42000..=42019).contains(&b), "{b}");
        ports.release(a); // a port of the old range goes back without harm
    }
}
