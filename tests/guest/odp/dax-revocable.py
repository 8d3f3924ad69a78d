#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A revocable MR on an FS-DAX file versus truncate: see revocable.py."""

import sys

import revocable

if __name__ == "__main__":
    sys.exit(revocable.main("dax"))
