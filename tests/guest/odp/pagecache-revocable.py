#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A revocable MR on a page-cache file versus truncate: see revocable.py."""

import sys

import revocable

if __name__ == "__main__":
    sys.exit(revocable.main("pagecache"))
