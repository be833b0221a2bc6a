//! Numbered slots: objects that native functions shared by many JavaScript objects find by a
//! plain number (the guest-memory fast paths take their memory's id as first argument).
//!
//! An id names a slot and the slot's generation, which changes every time the slot is emptied:
//! an id kept after its object was removed never reaches a later object stored in the same
//! slot (until the generation counter wraps, after 2^28 reuses of that one slot). Ids stay
//! below 2^52, so a JavaScript number carries them exactly.

/// Bits of an id that hold the slot index; at most 2^24 objects are stored at once.
const INDEX_BITS: u32 = 24;
/// Generations count modulo this (the rest of the 52 bits).
const GENERATIONS: u64 = 1 << 28;

/// Objects stored under ids, in reusable slots.
#[derive(Debug)]
pub struct Slots<T> {
    slots: Vec<Slot<T>>,
    /// Indexes of the empty slots.
    free: Vec<usize>,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u64,
    value: Option<T>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slots<T> {
    /// No slots.
    pub const fn new() -> Self {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Stores `value` and returns its id; `None` when 2^24 objects are stored already.
    pub fn insert(&mut self, value: T) -> Option<u64> {
        let index = match self.free.pop() {
            Some(index) => index,
            None if self.slots.len() < 1 << INDEX_BITS => {
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                self.slots.len() - 1
            }
            None => return None,
        };
        let slot = &mut self.slots[index];
        slot.value = Some(value);
        Some(slot.generation << INDEX_BITS | u64::try_from(index).ok()?)
    }

    /// The object stored under `id`, if it is still there.
    #[inline]
    pub fn get(&self, id: u64) -> Option<&T> {
        let (index, generation) = split(id)?;
        let slot = self.slots.get(index)?;
        (slot.generation == generation)
            .then_some(slot.value.as_ref())
            .flatten()
    }

    /// Takes the object stored under `id` out (`None` when it is not there); the id and every
    /// copy of it then name nothing.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let (index, generation) = split(id)?;
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = (slot.generation + 1) % GENERATIONS;
        self.free.push(index);
        Some(value)
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no object is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `(index, generation)` of an id; `None` for a number no id can be.
#[inline]
fn split(id: u64) -> Option<(usize, u64)> {
    let generation = id >> INDEX_BITS;
    let index = usize::try_from(id & ((1 << INDEX_BITS) - 1)).ok()?;
    (generation < GENERATIONS).then_some((index, generation))
}

/// An id as a JavaScript number carries it: a non-negative integer below 2^52, else `None`.
#[inline]
pub fn id_from_number(number: f64) -> Option<u64> {
    // Through i64 (one instruction each way on x86-64, unlike u64): `as` saturates and maps
    // NaN to 0, so the round trip is exact only for an integer in range.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the conversion back checks that nothing was lost"
    )]
    let id = number as i64;
    #[allow(clippy::cast_precision_loss, reason = "compared only when below 2^52")]
    let exact = id as f64 == number;
    u64::try_from(id)
        .ok()
        .filter(|&id| exact && id < GENERATIONS << INDEX_BITS)
}

/// An id as a JavaScript number (exact: ids are below 2^52).
#[inline]
pub fn id_to_number(id: u64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "ids are below 2^52")]
    let number = id as f64;
    number
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_find_their_objects_until_removed() {
        let mut slots = Slots::new();
        let a = slots.insert("a").unwrap();
        let b = slots.insert("b").unwrap();
        assert_ne!(a, b);
        assert_eq!((slots.get(a), slots.get(b)), (Some(&"a"), Some(&"b")));
        assert_eq!(slots.len(), 2);
        assert_eq!(slots.remove(a), Some("a"));
        assert_eq!(slots.get(a), None);
        assert_eq!(slots.remove(a), None, "a second remove finds nothing");
        assert_eq!(slots.get(b), Some(&"b"));
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_id() {
        let mut slots = Slots::new();
        let old = slots.insert(1).unwrap();
        slots.remove(old);
        let new = slots.insert(2).unwrap();
        assert_eq!(new & 0xff_ffff, old & 0xff_ffff, "the slot was reused");
        assert_ne!(new, old);
        assert_eq!(slots.get(old), None);
        assert_eq!(slots.remove(old), None);
        assert_eq!(slots.get(new), Some(&2));
    }

    #[test]
    fn generations_wrap_and_every_id_fits_a_javascript_number() {
        let mut slots = Slots::new();
        let first = slots.insert(0u32).unwrap();
        slots.remove(first);
        slots.slots[0].generation = GENERATIONS - 1;
        let id = slots.insert(1).unwrap();
        assert_eq!(id >> INDEX_BITS, GENERATIONS - 1);
        assert!(id < 1 << 52);
        assert_eq!(id_from_number(id_to_number(id)), Some(id));
        slots.remove(id);
        let wrapped = slots.insert(2).unwrap();
        assert_eq!(wrapped, 0, "generation 0 of slot 0 again");
        assert_eq!(slots.get(wrapped), Some(&2));
    }

    #[test]
    fn numbers_that_are_no_id_name_nothing() {
        let mut slots = Slots::new();
        slots.insert(()).unwrap();
        for number in [-1.0, 0.5, f64::NAN, f64::INFINITY, 2f64.powi(52), 1e300] {
            assert_eq!(id_from_number(number), None, "{number}");
        }
        assert_eq!(id_from_number(0.0), Some(0));
        assert_eq!(slots.get(1 << 60), None, "a generation beyond the counter");
        assert_eq!(slots.get(5), None, "an index beyond the slots");
        assert_eq!(slots.remove(5), None);
    }

    #[test]
    fn the_slot_count_is_bounded() {
        let mut slots = Slots::new();
        slots.slots = (0..1 << INDEX_BITS)
            .map(|_| Slot {
                generation: 0,
                value: Some(()),
            })
            .collect();
        assert_eq!(slots.insert(()), None, "2^24 objects are stored");
        slots.remove(7).unwrap();
        assert_eq!(slots.insert(()), Some(1 << INDEX_BITS | 7));
    }
}
