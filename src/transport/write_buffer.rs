//! The queue of bytes a transport could not send yet.
//!
//! Chunks are kept as they were written (an immutable `bytes` is held, not
//! copied) and sent with one vectored send per writable event; the head chunk
//! remembers how much of it already went out.

use std::collections::VecDeque;
use std::io::IoSlice;

/// At most this many chunks per vectored send (Linux's IOV_MAX is 1024;
/// more than a few dozen buys nothing but a longer walk).
pub const MAX_IOV: usize = 64;

pub struct WriteBuffer<C> {
    chunks: VecDeque<C>,
    /// Bytes of the head chunk already sent.
    head_sent: usize,
    /// Bytes still to send, over all chunks.
    len: usize,
}

impl<C: AsRef<[u8]>> Default for WriteBuffer<C> {
    fn default() -> Self {
        WriteBuffer { chunks: VecDeque::new(), head_sent: 0, len: 0 }
    }
}

impl<C: AsRef<[u8]>> WriteBuffer<C> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue `chunk`, of which the first `sent` bytes already went out.
    pub fn push(&mut self, chunk: C, sent: usize) {
        let n = chunk.as_ref().len();
        if sent >= n {
            return;
        }
        // Only a chunk that becomes the head can have been partly sent:
        // writes try the socket only while nothing is queued.
        debug_assert!(sent == 0 || self.chunks.is_empty(), "only the head chunk may be partly sent");
        if self.chunks.is_empty() {
            self.head_sent = sent;
        }
        self.len += n - sent;
        self.chunks.push_back(chunk);
    }

    /// Drop everything queued (abort, fatal errors); the chunks are returned
    /// so the caller can release them where that is safe.
    pub fn take(&mut self) -> VecDeque<C> {
        self.len = 0;
        self.head_sent = 0;
        std::mem::take(&mut self.chunks)
    }

    /// The unsent bytes as slices for a vectored send, at most [`MAX_IOV`].
    pub fn io_slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) {
        out.clear();
        for (i, chunk) in self.chunks.iter().take(MAX_IOV).enumerate() {
            let bytes = chunk.as_ref();
            out.push(IoSlice::new(if i == 0 { &bytes[self.head_sent..] } else { bytes }));
        }
    }

    /// `n` bytes were sent: drop the chunks they finished, returned to the
    /// caller for releasing.
    pub fn consume(&mut self, mut n: usize) -> Vec<C> {
        let mut done = Vec::new();
        self.len -= n.min(self.len);
        while let Some(head) = self.chunks.front() {
            let left = head.as_ref().len() - self.head_sent;
            if n < left {
                self.head_sent += n;
                break;
            }
            n -= left;
            self.head_sent = 0;
            done.extend(self.chunks.pop_front());
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(b: &WriteBuffer<Vec<u8>>) -> Vec<u8> {
        let mut v = Vec::new();
        b.io_slices(&mut v);
        v.iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn partial_sends_keep_order_and_length() {
        let mut b = WriteBuffer::default();
        b.push(b"hello".to_vec(), 2);
        b.push(b" world".to_vec(), 0);
        assert_eq!(b.len(), 9);
        assert_eq!(flat(&b), b"llo world");
        assert_eq!(b.consume(4).len(), 1);
        assert_eq!(flat(&b), b"world");
        assert_eq!(b.len(), 5);
        assert_eq!(b.consume(5).len(), 1);
        assert!(b.is_empty());
        assert_eq!(flat(&b), b"");
    }

    #[test]
    fn fully_sent_and_empty_chunks_are_not_queued() {
        let mut b = WriteBuffer::default();
        b.push(b"abc".to_vec(), 3);
        b.push(Vec::new(), 0);
        assert!(b.is_empty());
        assert_eq!(b.take().len(), 0);
    }

    #[test]
    fn io_slices_are_capped() {
        let mut b = WriteBuffer::default();
        for _ in 0..MAX_IOV + 10 {
            b.push(vec![1u8], 0);
        }
        let mut v = Vec::new();
        b.io_slices(&mut v);
        assert_eq!(v.len(), MAX_IOV);
        assert_eq!(b.len(), MAX_IOV + 10);
        b.take();
        assert!(b.is_empty());
    }
}
