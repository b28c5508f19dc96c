//! Idle and stall timeouts at O(1) per event, with no allocation and no scan.
//!
//! Each timeout keeps an intrusive doubly-linked list threaded through a slab: the links
//! live inside each entry, which says where through the [`Linked`] trait (so this file
//! knows nothing of connections). A connection is moved to the back of a list
//! whenever its clock restarts, and the loop stamps every move with the same `now` it read
//! once per turn, so each list stays sorted oldest-first without ever being sorted. The
//! only deadline that matters is at the front; it becomes `poll`'s timeout.
//!
//! - **idle**: every connection; restarted whenever the client sends data or the
//!   connection catches up. Expired only if nothing is owed (otherwise *stall* rules).
//! - **stall**: only connections that owe output; restarted whenever a write makes progress.
//! - **handshake**: connections whose protocol (TLS) is still shaking hands; left when it is
//!   done, never restarted.

use std::time::Instant;

use slab::Slab;

/// An entry of a slab that the lists thread through: it carries its own [`Links`].
pub(crate) trait Linked {
    fn links(&mut self) -> &mut Links;
}

/// One list's link in one connection. Neighbours are slab keys stored as `u32`: keys stay
/// below the number of open sockets, which Linux caps under 2^30 (`fs.nr_open`), and every
/// connection is 32 bytes smaller for it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Link {
    prev: Option<u32>,
    next: Option<u32>,
    /// When this connection's clock last restarted; `None` while not in the list.
    since: Option<Instant>,
}

/// A connection's places in both lists.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Links {
    pub(crate) idle: Link,
    pub(crate) stall: Link,
    pub(crate) handshake: Link,
}

/// Which of the two lists an operation is about.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Which {
    Idle,
    Stall,
    Handshake,
}

fn link(entry: &mut impl Linked, which: Which) -> &mut Link {
    let links = entry.links();
    match which {
        Which::Idle => &mut links.idle,
        Which::Stall => &mut links.stall,
        Which::Handshake => &mut links.handshake,
    }
}

/// The ends of one intrusive list, oldest at `head`.
#[derive(Debug)]
pub(crate) struct DeadlineList {
    which: Which,
    head: Option<u32>,
    tail: Option<u32>,
}

impl DeadlineList {
    pub(crate) fn new(which: Which) -> Self {
        DeadlineList {
            which,
            head: None,
            tail: None,
        }
    }

    /// Restarts `key`'s clock at `now`: out of its place, onto the back.
    pub(crate) fn touch(&mut self, slab: &mut Slab<impl Linked>, key: usize, now: Instant) {
        self.remove(slab, key);
        let old_tail = self.tail;
        let this = Some(key as u32);
        *link(&mut slab[key], self.which) = Link {
            prev: old_tail,
            next: None,
            since: Some(now),
        };
        match old_tail {
            Some(tail) => link(&mut slab[tail as usize], self.which).next = this,
            None => self.head = this,
        }
        self.tail = this;
    }

    /// Takes `key` out of the list, if it is in it.
    pub(crate) fn remove(&mut self, slab: &mut Slab<impl Linked>, key: usize) {
        let Link { prev, next, since } = *link(&mut slab[key], self.which);
        if since.is_none() {
            return;
        }
        match prev {
            Some(prev) => link(&mut slab[prev as usize], self.which).next = next,
            None => self.head = next,
        }
        match next {
            Some(next) => link(&mut slab[next as usize], self.which).prev = prev,
            None => self.tail = prev,
        }
        *link(&mut slab[key], self.which) = Link::default();
    }

    /// The connection whose clock restarted longest ago, and when.
    pub(crate) fn oldest(&self, slab: &mut Slab<impl Linked>) -> Option<(usize, Instant)> {
        let key = self.head? as usize;
        let since = link(&mut slab[key], self.which).since?;
        Some((key, since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The smallest thing a list can thread through.
    #[derive(Default)]
    struct Entry(Links);

    impl Linked for Entry {
        fn links(&mut self) -> &mut Links {
            &mut self.0
        }
    }

    fn slab_of(n: usize) -> Slab<Entry> {
        (0..n).map(|key| (key, Entry::default())).collect()
    }

    /// Keys from oldest to newest, by walking the links.
    fn order(list: &DeadlineList, slab: &mut Slab<Entry>) -> Vec<usize> {
        let mut keys = Vec::new();
        let mut at = list.head;
        while let Some(key) = at {
            keys.push(key as usize);
            at = link(&mut slab[key as usize], list.which).next;
        }
        keys
    }

    #[test]
    fn touch_moves_to_the_back_and_remove_unlinks_from_anywhere() {
        let mut slab = slab_of(4);
        let t0 = Instant::now();
        let mut list = DeadlineList::new(Which::Idle);
        for key in 0..4 {
            list.touch(&mut slab, key, t0 + Duration::from_millis(key as u64));
        }
        assert_eq!(order(&list, &mut slab), [0, 1, 2, 3]);
        list.touch(&mut slab, 1, t0 + Duration::from_millis(10)); // from the middle
        list.touch(&mut slab, 0, t0 + Duration::from_millis(11)); // from the head
        assert_eq!(order(&list, &mut slab), [2, 3, 1, 0]);
        assert_eq!(
            list.oldest(&mut slab),
            Some((2, t0 + Duration::from_millis(2)))
        );
        list.remove(&mut slab, 0); // the tail
        list.remove(&mut slab, 3); // the middle
        list.remove(&mut slab, 3); // again: a no-op
        assert_eq!(order(&list, &mut slab), [2, 1]);
        list.remove(&mut slab, 2);
        list.remove(&mut slab, 1);
        assert_eq!(list.oldest(&mut slab), None);
        assert_eq!((list.head, list.tail), (None, None));
    }

    #[test]
    fn the_two_lists_are_independent() {
        let mut slab = slab_of(2);
        let now = Instant::now();
        let mut idle = DeadlineList::new(Which::Idle);
        let mut stall = DeadlineList::new(Which::Stall);
        idle.touch(&mut slab, 0, now);
        idle.touch(&mut slab, 1, now);
        stall.touch(&mut slab, 1, now);
        idle.remove(&mut slab, 1);
        assert_eq!(order(&idle, &mut slab), [0]);
        assert_eq!(order(&stall, &mut slab), [1]);
    }
}
