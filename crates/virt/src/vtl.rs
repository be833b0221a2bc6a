//! Virtual trust levels.

use std::fmt;

/// A virtual trust level. The numeric values are the architectural ones.
#[derive(Debug, Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Vtl {
    /// The normal guest level.
    Vtl0 = 0,
    /// The secure-kernel level.
    Vtl1 = 1,
    /// The paravisor level; a VTL2 partition can also see VTL0 memory through the alias map.
    Vtl2 = 2,
}

/// A number that is not a valid [`Vtl`].
#[derive(Debug, Copy, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VTL {0}")]
pub struct InvalidVtl(pub u8);

impl From<Vtl> for u8 {
    fn from(vtl: Vtl) -> Self {
        vtl as u8
    }
}

impl TryFrom<u8> for Vtl {
    type Error = InvalidVtl;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Vtl::Vtl0),
            1 => Ok(Vtl::Vtl1),
            2 => Ok(Vtl::Vtl2),
            other => Err(InvalidVtl(other)),
        }
    }
}

impl fmt::Display for Vtl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VTL{}", *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_values_round_trip() {
        for (number, vtl) in [(0u8, Vtl::Vtl0), (1, Vtl::Vtl1), (2, Vtl::Vtl2)] {
            assert_eq!(u8::from(vtl), number);
            assert_eq!(Vtl::try_from(number), Ok(vtl));
        }
        assert_eq!(Vtl::try_from(3), Err(InvalidVtl(3)));
        assert_eq!(InvalidVtl(7).to_string(), "invalid VTL 7");
        assert_eq!(Vtl::Vtl2.to_string(), "VTL2");
    }
}
