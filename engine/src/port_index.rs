//! (protocol, port) → the doors with that step: one table load per packet decides
//! whether any door can see it.

use crate::doors::{DoorId, DoorState};
use sesame_capture::Proto;

/// A dense table over every (protocol, port), built once per door-set change.
pub(crate) struct PortIndex {
    /// Index into `lists` + 1 for each (protocol, port); 0 = no door.
    slots: Box<[u16]>,
    lists: Vec<Vec<DoorId>>,
}

impl PortIndex {
    pub(crate) fn new(doors: &[DoorState]) -> PortIndex {
        let mut index = PortIndex { slots: vec![0u16; 2 * 65536].into_boxed_slice(), lists: Vec::new() };
        for (id, door) in doors.iter().enumerate().filter(|(_, d)| d.enabled) {
            for step in &door.sequence {
                let slot = Self::slot(step.proto, step.port);
                if index.slots[slot] == 0 {
                    index.lists.push(Vec::new());
                    index.slots[slot] = index.lists.len() as u16;
                }
                let list = &mut index.lists[usize::from(index.slots[slot]) - 1];
                if !list.contains(&(id as DoorId)) {
                    list.push(id as DoorId);
                }
            }
        }
        index
    }

    fn slot(proto: Proto, port: u16) -> usize {
        usize::from(proto == Proto::Udp) << 16 | usize::from(port)
    }

    /// The enabled doors that have a step on this (protocol, port).
    pub(crate) fn doors(&self, proto: Proto, port: u16) -> &[DoorId] {
        match self.slots[Self::slot(proto, port)] {
            0 => &[],
            n => &self.lists[usize::from(n) - 1],
        }
    }

    fn ports(&self) -> impl Iterator<Item = (Proto, u16)> + '_ {
        self.slots.iter().enumerate().filter(|(_, &n)| n != 0).map(|(i, _)| {
            let proto = if i >> 16 == 1 { Proto::Udp } else { Proto::Tcp };
            (proto, i as u16)
        })
    }
}

impl std::fmt::Debug for PortIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ports()).finish()
    }
}
