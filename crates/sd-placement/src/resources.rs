//! Resources: what a node offers and a component reserves.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of vCPUs and memory: a node's capacity or free capacity, or what a component
/// reserves (the sum of `vcpus` and `memory` of its domains).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Resources {
    /// Nothing: fits on every node.
    pub const ZERO: Resources = Resources {
        vcpus: 0,
        memory_mib: 0,
    };

    /// `vcpus` vCPUs and `memory_mib` MiB.
    pub const fn new(vcpus: u32, memory_mib: u64) -> Self {
        Resources { vcpus, memory_mib }
    }

    /// Whether this is nothing at all.
    pub const fn is_zero(self) -> bool {
        self.vcpus == 0 && self.memory_mib == 0
    }

    /// Whether this amount fits in `free`, in every dimension. Zero always fits.
    pub const fn fits_in(self, free: Resources) -> bool {
        self.vcpus <= free.vcpus && self.memory_mib <= free.memory_mib
    }

    /// `self - other` per dimension, stopping at zero.
    #[must_use]
    pub const fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
        }
    }

    /// `self + other` per dimension, stopping at the largest value.
    #[must_use]
    pub const fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
        }
    }

    /// The amount as a demand, naming only what is asked for: "4 vCPUs and 2048 MiB",
    /// "512 MiB", "nothing".
    pub fn demand(self) -> String {
        match (self.vcpus, self.memory_mib) {
            (0, 0) => "nothing".to_owned(),
            (vcpus, 0) => vcpus_text(vcpus),
            (0, memory) => format!("{memory} MiB"),
            (vcpus, memory) => format!("{} and {memory} MiB", vcpus_text(vcpus)),
        }
    }
}

fn vcpus_text(vcpus: u32) -> String {
    if vcpus == 1 {
        "1 vCPU".to_owned()
    } else {
        format!("{vcpus} vCPUs")
    }
}

/// "2 vCPUs, 4096 MiB".
impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {} MiB", vcpus_text(self.vcpus), self.memory_mib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_fits_everywhere() {
        assert!(Resources::ZERO.fits_in(Resources::ZERO));
        assert!(Resources::ZERO.is_zero());
        assert!(Resources::new(0, 0).fits_in(Resources::new(3, 0)));
    }

    #[test]
    fn fits_in_every_dimension() {
        let free = Resources::new(2, 1024);
        assert!(Resources::new(2, 1024).fits_in(free));
        assert!(!Resources::new(3, 1).fits_in(free));
        assert!(!Resources::new(1, 1025).fits_in(free));
    }

    #[test]
    fn arithmetic_saturates() {
        let a = Resources::new(1, 10);
        assert_eq!(a.saturating_sub(Resources::new(2, 5)), Resources::new(0, 5));
        assert_eq!(
            Resources::new(u32::MAX, 1).saturating_add(a),
            Resources::new(u32::MAX, 11)
        );
    }

    #[test]
    fn texts() {
        assert_eq!(Resources::new(2, 4096).to_string(), "2 vCPUs, 4096 MiB");
        assert_eq!(Resources::new(1, 0).to_string(), "1 vCPU, 0 MiB");
        assert_eq!(Resources::new(4, 2048).demand(), "4 vCPUs and 2048 MiB");
        assert_eq!(Resources::new(0, 512).demand(), "512 MiB");
        assert_eq!(Resources::new(1, 0).demand(), "1 vCPU");
        assert_eq!(Resources::ZERO.demand(), "nothing");
    }
}
