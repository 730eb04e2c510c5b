//! Where objects go inside a spill file, how a chunk of the file image is assembled, and which
//! blocks may be punched out once objects die. Pure arithmetic and copies, no I/O, so all of it
//! is tested with plain values.

use std::ops::Range;

use super::buf::ALIGN;

/// Block size for alignment and hole punching (bytes).
pub(super) const BLOCK: u64 = ALIGN as u64;

/// Objects at least this large start on a block boundary, so their restore reads no foreign block
/// at the front and their free punches out every block they fill. The padding costs at most
/// 1/16 of such an object; smaller objects are packed back to back, padding-free.
pub(super) const ALIGN_THRESHOLD: u64 = 64 * 1024;

pub(super) fn round_down(x: u64, to: u64) -> u64 {
    x - x % to
}

pub(super) fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The placement of one batch's objects in its file.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Layout {
    /// Start of each object, in batch order.
    pub(super) offsets: Vec<u64>,
    /// File length: the end of the last object rounded up to a whole block, so that the tail can
    /// be written (and read) with O_DIRECT.
    pub(super) file_len: u64,
}

pub(super) fn pack(lens: impl IntoIterator<Item = u64>) -> Layout {
    let mut cursor = 0u64;
    let offsets = lens
        .into_iter()
        .map(|len| {
            if len >= ALIGN_THRESHOLD {
                cursor = round_up(cursor, BLOCK);
            }
            let at = cursor;
            cursor += len;
            at
        })
        .collect();
    Layout {
        offsets,
        file_len: round_up(cursor, BLOCK),
    }
}

/// Assembles the file image chunk by chunk (in increasing offset order) from the objects, taking
/// each object's crc32c as its bytes pass through, while they are hot in the cache.
pub(super) struct Packer<'a> {
    objects: &'a [&'a [u8]],
    offsets: &'a [u64],
    /// First object not yet fully copied.
    next: usize,
    crcs: Vec<u32>,
    #[cfg(debug_assertions)]
    filled_to: u64,
}

impl<'a> Packer<'a> {
    pub(super) fn new(objects: &'a [&'a [u8]], offsets: &'a [u64]) -> Self {
        debug_assert_eq!(objects.len(), offsets.len());
        Self {
            objects,
            offsets,
            next: 0,
            crcs: vec![0; objects.len()],
            #[cfg(debug_assertions)]
            filled_to: 0,
        }
    }

    /// Fills `buf` with the file bytes `[start, start + buf.len())`; gaps and the tail are zeroed
    /// so that no stale staging data reaches the disk. Chunks must be filled in order.
    pub(super) fn fill(&mut self, start: u64, buf: &mut [u8]) {
        #[cfg(debug_assertions)]
        {
            debug_assert_eq!(start, self.filled_to, "chunks filled out of order");
            self.filled_to = start + buf.len() as u64;
        }
        let end = start + buf.len() as u64;
        let mut pos = start;
        while pos < end {
            let at = (pos - start) as usize;
            // Objects already fully copied (and empty ones) are behind us.
            while self.next < self.objects.len()
                && self.offsets[self.next] + self.objects[self.next].len() as u64 <= pos
            {
                self.next += 1;
            }
            let Some(&obj_start) = self.offsets.get(self.next) else {
                buf[at..].fill(0);
                return;
            };
            if obj_start > pos {
                let gap_end = obj_start.min(end);
                buf[at..(gap_end - start) as usize].fill(0);
                pos = gap_end;
                continue;
            }
            let obj = self.objects[self.next];
            let from = (pos - obj_start) as usize;
            let to = ((obj_start + obj.len() as u64).min(end) - obj_start) as usize;
            let dst = &mut buf[at..at + (to - from)];
            dst.copy_from_slice(&obj[from..to]);
            self.crcs[self.next] = crc32c::crc32c_append(self.crcs[self.next], dst);
            pos += (to - from) as u64;
        }
    }

    /// The crc32c of every object; valid once the whole file has been filled.
    pub(super) fn into_crcs(self) -> Vec<u32> {
        self.crcs
    }
}

/// The objects of one spill file and which of them are still live.
///
/// Only non-empty objects are recorded: an empty object occupies no bytes, needs no read, and so
/// never keeps a file alive.
#[derive(Debug)]
pub(super) struct FileObjects {
    /// `(offset, len)` of each object, sorted by offset (the order they were packed in).
    objects: Vec<(u64, u64)>,
    live: Vec<bool>,
    live_count: usize,
    file_len: u64,
}

impl FileObjects {
    pub(super) fn new(objects: Vec<(u64, u64)>, file_len: u64) -> Self {
        debug_assert!(objects.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        let n = objects.len();
        Self {
            objects,
            live: vec![true; n],
            live_count: n,
            file_len,
        }
    }

    pub(super) fn live_count(&self) -> usize {
        self.live_count
    }

    /// Index of the live object exactly at `offset` with length `len`, if there is one.
    pub(super) fn find_live(&self, offset: u64, len: u64) -> Option<usize> {
        let idx = self
            .objects
            .binary_search_by_key(&offset, |&(o, _)| o)
            .ok()?;
        (self.objects[idx].1 == len && self.live[idx]).then_some(idx)
    }

    /// Marks object `idx` dead and returns the block-aligned range that no live object touches any
    /// more because of this death: every block the object fills alone, plus its first and last
    /// blocks when the neighbours sharing them are dead too (so packed small objects get their
    /// blocks back as well, not only when the whole file goes). Empty when nothing can be punched.
    pub(super) fn kill(&mut self, idx: usize) -> Range<u64> {
        debug_assert!(self.live[idx]);
        self.live[idx] = false;
        self.live_count -= 1;
        let (start, len) = self.objects[idx];
        let end = start + len;

        let mut lo = round_up(start, BLOCK);
        let first_block = round_down(start, BLOCK);
        if lo != start {
            // Objects before `idx` that reach into the first block must all be dead.
            let shared_live = self.objects[..idx]
                .iter()
                .zip(&self.live[..idx])
                .rev()
                .take_while(|((o, l), _)| o + l > first_block)
                .any(|(_, &live)| live);
            if !shared_live {
                lo = first_block;
            }
        }

        let mut hi = round_down(end, BLOCK);
        if hi != end {
            let last_block_end = (hi + BLOCK).min(self.file_len);
            let shared_live = self.objects[idx + 1..]
                .iter()
                .zip(&self.live[idx + 1..])
                .take_while(|((o, _), _)| *o < last_block_end)
                .any(|(_, &live)| live);
            if !shared_live {
                hi = last_block_end;
            }
        }
        lo..hi.max(lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_objects_pack_large_ones_align() {
        let l = pack([10, 0, 100_000, 5, ALIGN_THRESHOLD - 1, 1]);
        assert_eq!(
            l.offsets,
            vec![0, 10, 4096, 104_096, 104_101, 104_101 + 65_535]
        );
        assert_eq!(l.file_len, round_up(104_101 + 65_536, BLOCK));
        assert_eq!(pack([]).file_len, 0);
        assert_eq!(pack([0, 0]).file_len, 0);
    }

    #[test]
    fn packer_reassembles_the_file_image_across_chunk_boundaries() {
        let a: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let b = vec![0xAB; 70_000];
        let c = vec![7u8; 3];
        let objects: Vec<&[u8]> = vec![&a, &[], &b, &c];
        let layout = pack(objects.iter().map(|o| o.len() as u64));
        let mut image = vec![0xFFu8; layout.file_len as usize];
        let mut packer = Packer::new(&objects, &layout.offsets);
        for chunk_start in (0..layout.file_len).step_by(3 * 4096) {
            let chunk_end = (chunk_start + 3 * 4096).min(layout.file_len);
            packer.fill(
                chunk_start,
                &mut image[chunk_start as usize..chunk_end as usize],
            );
        }
        let crcs = packer.into_crcs();
        for (i, obj) in objects.iter().enumerate() {
            let at = layout.offsets[i] as usize;
            assert_eq!(&image[at..at + obj.len()], *obj);
            assert_eq!(crcs[i], crc32c::crc32c(obj));
        }
        // The gap before the aligned object and the tail are zero.
        assert!(image[5000..8192].iter().all(|&x| x == 0));
        let tail = layout.offsets[3] as usize + 3;
        assert!(image[tail..].iter().all(|&x| x == 0));
    }

    #[test]
    fn kill_punches_whole_blocks_and_shared_blocks_once_all_their_objects_die() {
        // Three small objects sharing blocks: [0,3000) [3000,6000) [6000,9000); file_len 12288.
        let mut f = FileObjects::new(vec![(0, 3000), (3000, 3000), (6000, 3000)], 12_288);
        assert_eq!(f.find_live(3000, 3000), Some(1));
        assert_eq!(f.find_live(3000, 2999), None);
        assert!(f.kill(1).is_empty());
        assert_eq!(f.find_live(3000, 3000), None);
        // Object 0 dies: block 0 is now free; block 1 still holds live object 2.
        assert_eq!(f.kill(0), 0..4096);
        // Object 2 dies: blocks 1 and 2 (tail padding included) are free.
        assert_eq!(f.kill(2), 4096..12_288);
        assert_eq!(f.live_count(), 0);
    }

    #[test]
    fn kill_of_a_large_object_punches_its_interior() {
        let mut f = FileObjects::new(vec![(0, 100), (4096, 100_000), (104_096, 10)], 106_496);
        // Object 1 ends mid-block 25, shared with live object 2; starts aligned.
        assert_eq!(f.kill(1), 4096..round_down(104_096, BLOCK));
    }
}
