#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A revocable MR on an FS-DAX file versus truncate: see revocable.py."""

import os
import sys

import revocable

if __name__ == "__main__":
    # 6.1's fsdax WARNs once (dax_insert_entry -> dax_associate_entry,
    # WARN_ON_ONCE(page->mapping)) when the registration's pin faults in a
    # page of an extent that XFS reflink shares with a file mapped before
    # (odp/dax-odp.py's copies); 6.2 counts such shared pages instead
    # ("fsdax: introduce page->share for fsdax in reflink mode").
    if tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2]) < (6, 2):
        print("# expect-kernel-warning: WARNING: .* at fs/dax\\.c:[0-9]+ dax_insert_entry",
              flush=True)
    sys.exit(revocable.main("dax"))
