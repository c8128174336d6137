//! Method sets of routes: the standard methods as a bit mask, numbered as the request
//! metrics number them ([`crate::metrics::method_index`], the one table of both).

use crate::metrics::{method_index, METHODS};

/// The standard methods a route may name: [`METHODS`] without its `OTHER`.
const STANDARD: usize = METHODS.len() - 1;

/// A set of HTTP methods as a bit mask; an empty mask means every method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods(u16);

impl Methods {
    /// Every method.
    pub const ANY: Methods = Methods(0);

    /// Parse method names (case-insensitive).
    ///
    /// # Errors
    /// The first name that is not a standard method.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Methods, String> {
        let mut mask = 0u16;
        for name in names {
            let name = name.as_ref();
            let bit = METHODS[..STANDARD]
                .iter()
                .position(|m| m.eq_ignore_ascii_case(name))
                .ok_or_else(|| format!("unknown method `{name}`"))?;
            mask |= 1 << bit;
        }
        Ok(Methods(mask))
    }

    /// Whether `method` is in the set.
    pub fn allows(self, method: &http::Method) -> bool {
        if self.0 == 0 {
            return true;
        }
        let bit = method_index(method);
        bit < STANDARD && self.0 & (1 << bit) != 0
    }

    /// The names of the methods in the set (none for every method).
    pub fn names(self) -> Vec<&'static str> {
        METHODS[..STANDARD]
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// Whether some method is in both sets.
    pub(super) fn overlaps(self, other: Methods) -> bool {
        self.0 == 0 || other.0 == 0 || self.0 & other.0 != 0
    }
}
