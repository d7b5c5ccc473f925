//! A binary min-heap of timers keyed by deadline that pops in exactly the
//! order CPython's `heapq` does for `TimerHandle`s.
//!
//! The standard loop keeps its timers in a `heapq` list ordered by `when`
//! alone, so timers with equal deadlines come out in heap order, not FIFO.
//! Mirroring `heapq`'s sift algorithms (and its `heapify`) step by step keeps
//! ferroloop's callback order identical to the standard loop's, ties included.

/// A deadline as Python compares it: the float the loop schedules by and,
/// for an int deadline a float cannot hold exactly (beyond ±2**53), its exact
/// value, which decides between deadlines whose floats are equal (asyncio
/// keeps `call_at(int)` deadlines as ints and compares them exactly).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub secs: f64,
    pub big_int: Option<i128>,
}

impl Deadline {
    pub fn float(secs: f64) -> Self {
        Deadline { secs, big_int: None }
    }

    /// Whether the floats decide (they differ, or neither is a big int).
    #[inline]
    fn floats_decide(&self, other: &Deadline) -> bool {
        self.big_int.is_none() && other.big_int.is_none() || self.secs != other.secs
    }

    /// The exact value, for a deadline whose float equals a big int's: a
    /// float that large is a whole number.
    fn exact(&self) -> i128 {
        self.big_int.unwrap_or(self.secs as i128)
    }
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Deadline) -> bool {
        if self.floats_decide(other) {
            return self.secs == other.secs;
        }
        self.exact() == other.exact()
    }
}

/// Python's order: NaN is unordered, so `<` and `>` are false for it.
impl PartialOrd for Deadline {
    #[inline]
    fn partial_cmp(&self, other: &Deadline) -> Option<std::cmp::Ordering> {
        if self.floats_decide(other) {
            return self.secs.partial_cmp(&other.secs);
        }
        Some(self.exact().cmp(&other.exact()))
    }
}

/// One scheduled timer: its deadline and whatever the loop stores with it.
pub struct Entry<T> {
    pub when: Deadline,
    pub item: T,
}

pub struct TimerHeap<T> {
    heap: Vec<Entry<T>>,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap { heap: Vec::new() }
    }
}

impl<T> TimerHeap<T> {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn peek(&self) -> Option<&Entry<T>> {
        self.heap.first()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        self.heap.iter()
    }

    /// `heapq.heappush`
    pub fn push(&mut self, when: Deadline, item: T) {
        self.heap.push(Entry { when, item });
        let last = self.heap.len() - 1;
        self.sift_down(0, last);
    }

    /// `heapq.heappop`
    pub fn pop(&mut self) -> Option<Entry<T>> {
        let last = self.heap.pop()?;
        if self.heap.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut self.heap[0], last);
        self.sift_up(0);
        Some(top)
    }

    /// Keep the entries for which `keep` is true, then `heapq.heapify` them,
    /// as the standard loop does when too many timers are cancelled.
    /// Returns the removed entries so the caller can drop them outside any lock.
    pub fn retain_and_heapify(&mut self, mut keep: impl FnMut(&Entry<T>) -> bool) -> Vec<Entry<T>> {
        let (kept, removed): (Vec<_>, Vec<_>) = self.heap.drain(..).partition(|e| keep(e));
        self.heap = kept;
        let n = self.heap.len();
        for i in (0..n / 2).rev() {
            self.sift_up(i);
        }
        removed
    }

    /// Remove everything (for `close()`); the caller drops the entries.
    pub fn take_all(&mut self) -> Vec<Entry<T>> {
        std::mem::take(&mut self.heap)
    }

    /// `heapq._siftdown`: move the item at `pos` up towards `start`.
    fn sift_down(&mut self, start: usize, mut pos: usize) {
        while pos > start {
            let parent = (pos - 1) >> 1;
            if self.heap[pos].when < self.heap[parent].when {
                self.heap.swap(pos, parent);
                pos = parent;
            } else {
                break;
            }
        }
    }

    /// `heapq._siftup`: bubble the smaller child up to a leaf, then sift down.
    /// (`!(a < b)` as heapq writes it: NaN deadlines sort as heapq sorts them)
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn sift_up(&mut self, mut pos: usize) {
        let end = self.heap.len();
        let start = pos;
        let mut child = 2 * pos + 1;
        while child < end {
            let right = child + 1;
            if right < end && !(self.heap[child].when < self.heap[right].when) {
                child = right;
            }
            self.heap.swap(pos, child);
            pos = child;
            child = 2 * pos + 1;
        }
        self.sift_down(start, pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_pop_in_heapq_order() {
        // Reference: pushing 10 equal keys into heapq pops them in this order.
        let mut h = TimerHeap::default();
        for i in 0..10 {
            h.push(Deadline::float(1.0), i);
        }
        let order: Vec<i32> = std::iter::from_fn(|| h.pop().map(|e| e.item)).collect();
        assert_eq!(order, vec![0, 2, 6, 9, 8, 5, 7, 4, 1, 3]);
    }

    #[test]
    fn heapify_ties_match_heapq() {
        // Reference: heapq.heapify of 10 equal keys, then popping, gives this.
        let mut h = TimerHeap::default();
        for i in 0..10 {
            h.heap.push(Entry { when: Deadline::float(1.0), item: i });
        }
        assert!(h.retain_and_heapify(|_| true).is_empty());
        let order: Vec<i32> = std::iter::from_fn(|| h.pop().map(|e| e.item)).collect();
        assert_eq!(order, vec![6, 2, 0, 1, 3, 5, 7, 4, 9, 8]);
    }

    #[test]
    fn pops_sorted_by_deadline() {
        let mut h = TimerHeap::default();
        let mut seed = 12345u64;
        for i in 0..1000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            h.push(Deadline::float((seed >> 40) as f64 / 1000.0), i);
        }
        let mut last = f64::MIN;
        while let Some(e) = h.pop() {
            assert!(e.when.secs >= last);
            last = e.when.secs;
        }
    }

    #[test]
    fn retain_keeps_heap_property() {
        let mut h = TimerHeap::default();
        for i in 0..200 {
            h.push(Deadline::float(((i * 37) % 101) as f64), i);
        }
        let removed = h.retain_and_heapify(|e| e.item % 3 != 0);
        assert_eq!(removed.len(), 67);
        let mut last = f64::MIN;
        while let Some(e) = h.pop() {
            assert!(e.item % 3 != 0);
            assert!(e.when.secs >= last);
            last = e.when.secs;
        }
    }

    #[test]
    fn big_int_deadlines_compare_exactly() {
        // -(2**60) - 1 and -(2**60) round to the same float; Python orders
        // them, and the float -(2**60) equals the second.
        let base = -(1i128 << 60);
        let at = |v: i128| Deadline { secs: v as f64, big_int: Some(v) };
        let mut h = TimerHeap::default();
        h.push(at(base), "base");
        h.push(at(base - 1), "base-1");
        h.push(Deadline::float(base as f64), "float base");
        assert!(at(base - 1) < at(base) && !(at(base) < at(base - 1)));
        assert!(at(base) == Deadline::float(base as f64) && at(base - 1) != Deadline::float(base as f64));
        assert!(Deadline::float(f64::NAN) != Deadline::float(f64::NAN));
        let order: Vec<&str> = std::iter::from_fn(|| h.pop().map(|e| e.item)).collect();
        assert_eq!(order, vec!["base-1", "base", "float base"]);
    }
}
