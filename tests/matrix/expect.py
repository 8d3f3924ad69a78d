# SPDX-License-Identifier: Apache-2.0 OR MIT
"""What the kernel sources say each cell of the matrix must show.

expected(kernel, backing, mode, event) -> (outcome, reason) or None when no
expectation is recorded for the cell (it is measured and shown, not judged);
REASONS[reason] says why, with the kernel source it comes from.

Outcomes (tests/matrix/cells.py decides which one a cell showed):
  refused:E    the registration fails with errno E (EOPNOTSUPP, EFAULT)
  coherent     a remote write after the event lands where the process and
               the file see it
  refused      a remote write after the event fails (remote access error)
  lost         a remote write after the event succeeds, but neither the
               mapping nor the file has the bytes: the device wrote into a
               page the kernel had already taken from the process or file
               (a long-term pin outliving the mapping)
  corrupt      a remote write after a reflink lands in the copy
"""

import re

# Why a cell must show what it must: the reasons, by key.
REASONS = {
    "dax-longterm": "mm/gup.c check_vma_flags(): FOLL_LONGTERM on an FS-DAX "
                    "VMA is -EOPNOTSUPP (every lab kernel)",
    "file-longterm": "mm/gup.c check_vma_flags() since 6.5: "
                     "writable_file_mapping_allowed() refuses a long-term "
                     "writable pin of a file mapping that needs dirty tracking "
                     "(a page-cache file on XFS): -EFAULT; shmem needs none",
    "untouched": "nothing happened to the pages",
    "orphan": "the pin keeps the old page while the kernel zaps it from the "
              "mapping (MADV_DONTNEED) or drops it from the file "
              "(truncate_inode_pages, punch hole); the process and the file "
              "then see a new page",
    "odp": "the mmu notifier invalidated the device's translations; the next "
           "access faults in the page the process and the file see now",
    "pagecache-cow": "a reflink CoW in the page cache keeps the page in memory "
                     "(writeback goes to the new block), so ODP stays coherent "
                     "whether or not a notifier fires",
    "revoke": "every notifier event revokes a revocable MR "
              "(docs/driver.md); later accesses fail",
    "fork-pinned": "mm/memory.c copy_present_page(): at fork a page that may "
                   "be DMA-pinned (folio_maybe_dma_pinned) is copied for the "
                   "child at once, so the parent keeps the pinned page and its "
                   "write breaks no CoW (since 5.11)",
    "fork-notifier": "fork write-protects the parent's private mappings under "
                     "an MMU_NOTIFY_PROTECTION_PAGE notifier "
                     "(copy_page_range()); the MR follows (ODP) or is revoked",
}


def kernel_at_least(kernel, major, minor):
    m = re.match(r"(\d+)\.(\d+)", kernel)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def expected(kernel, backing, mode, event):
    """(outcome, reason key) or None."""
    if mode == "pinned":
        if backing == "fsdax":
            return "refused:EOPNOTSUPP", "dax-longterm"
        if backing == "pagecache" and kernel_at_least(kernel, 6, 5):
            return "refused:EFAULT", "file-longterm"
        if event == "none":
            return "coherent", "untouched"
        if event in ("dontneed", "punch", "truncate"):
            return "lost", "orphan"
        if event == "fork":
            return "coherent", "fork-pinned"
        return None
    if event == "none":
        return "coherent", "untouched"
    if event == "fork":
        return ("refused" if mode == "revocable" else "coherent"), "fork-notifier"
    if mode in ("odp", "implicit"):
        if event == "reflink" and backing == "pagecache":
            return "coherent", "pagecache-cow"
        return "coherent", "odp"
    if mode == "revocable":
        if event == "reflink" and backing == "pagecache":
            return None  # whether a notifier fires depends on writeback state
        return "refused", "revoke"
    return None
