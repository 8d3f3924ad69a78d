// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The hardware contract has one set of constants: `docs/hardware.md`
//! (rows `| \`ODPRNIC_NAME\` | value |`), `device/src/hw.rs`
//! (`pub const NAME: TYPE = VALUE;`) and `guest-driver/kernel/odp_rnic_hw.h`
//! (`#define ODPRNIC_NAME value`) must name the same constants with the same
//! values. A missing file is a failure, not a skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("device/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "contract: cannot read {} ({e}); the contract lives in docs/hardware.md, \
             device/src/hw.rs and guest-driver/kernel/odp_rnic_hw.h, and all three must exist",
            p.display()
        )
    })
}

/// Parses an integer literal: decimal or 0x-hex, with C suffixes, `_`
/// separators and surrounding parentheses tolerated.
fn int(s: &str) -> Option<u64> {
    let s = s
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .trim();
    let s = s.trim_end_matches(['u', 'U', 'l', 'L']);
    let s = s.replace('_', "");
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

type Table = BTreeMap<String, (u64, usize)>;

fn insert(t: &mut Table, what: &str, name: &str, value: &str, line: usize) {
    let v = int(value).unwrap_or_else(|| {
        panic!(
            "contract: {what} line {line}: `{name}` has a value that is not an integer: `{value}`"
        )
    });
    if let Some((old, l)) = t.insert(name.to_string(), (v, line)) {
        panic!("contract: {what}: `{name}` defined twice (lines {l} and {line}, values {old:#x} and {v:#x})");
    }
}

fn doc() -> Table {
    let mut t = Table::new();
    for (i, line) in read("docs/hardware.md").lines().enumerate() {
        let Some(rest) = line.strip_prefix("| `ODPRNIC_") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once("` |") else {
            continue;
        };
        let value = rest.split('|').next().unwrap_or("").trim();
        insert(&mut t, "docs/hardware.md", name, value, i + 1);
    }
    t
}

fn rust() -> Table {
    let mut t = Table::new();
    for (i, line) in read("device/src/hw.rs").lines().enumerate() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let (name, rest) = rest.split_once(':').expect("pub const NAME: TYPE = VALUE;");
        let (_, value) = rest.split_once('=').expect("pub const NAME: TYPE = VALUE;");
        let value = value.trim().trim_end_matches(';');
        insert(&mut t, "device/src/hw.rs", name.trim(), value, i + 1);
    }
    t
}

fn header() -> Table {
    let mut t = Table::new();
    let text = read("guest-driver/kernel/odp_rnic_hw.h");
    for (i, line) in text.lines().enumerate() {
        let mut w = line.split_whitespace();
        if w.next() != Some("#define") {
            continue;
        }
        let Some(name) = w.next().and_then(|n| n.strip_prefix("ODPRNIC_")) else {
            continue;
        };
        // function-like macros and value-less guards are not constants
        if name.contains('(') {
            continue;
        }
        let value: Vec<&str> = w
            .take_while(|x| !x.starts_with("/*") && !x.starts_with("//"))
            .collect();
        if value.is_empty() {
            continue;
        }
        insert(
            &mut t,
            "guest-driver/kernel/odp_rnic_hw.h",
            name,
            &value.join(" "),
            i + 1,
        );
    }
    t
}

fn compare(a_name: &str, a: &Table, b_name: &str, b: &Table) -> Vec<String> {
    let mut errs = Vec::new();
    for (k, (v, line)) in a {
        match b.get(k) {
            None => errs.push(format!(
                "ODPRNIC_{k} ({a_name}:{line}) is missing from {b_name}"
            )),
            Some((w, l2)) if w != v => errs.push(format!(
                "ODPRNIC_{k} differs: {a_name}:{line} says {v:#x}, {b_name}:{l2} says {w:#x}"
            )),
            _ => {}
        }
    }
    for (k, (_, line)) in b {
        if !a.contains_key(k) {
            errs.push(format!(
                "ODPRNIC_{k} ({b_name}:{line}) is missing from {a_name}"
            ));
        }
    }
    errs
}

#[test]
fn document_has_the_constants() {
    let d = doc();
    assert!(
        d.len() > 50,
        "docs/hardware.md: only {} constants parsed",
        d.len()
    );
    assert_eq!(d["MAGIC"].0, 0x5250_444f);
}

#[test]
fn rust_matches_document() {
    let errs = compare("docs/hardware.md", &doc(), "device/src/hw.rs", &rust());
    assert!(
        errs.is_empty(),
        "contract mismatch:\n  {}",
        errs.join("\n  ")
    );
}

#[test]
fn c_header_matches_document() {
    let errs = compare(
        "docs/hardware.md",
        &doc(),
        "guest-driver/kernel/odp_rnic_hw.h",
        &header(),
    );
    assert!(
        errs.is_empty(),
        "contract mismatch:\n  {}",
        errs.join("\n  ")
    );
}

#[test]
fn literal_parsing() {
    assert_eq!(int("0x1f"), Some(31));
    assert_eq!(int("(4096U)"), Some(4096));
    assert_eq!(int("262144"), Some(262_144));
    assert_eq!(int("0xfff000UL"), Some(0xfff000));
    assert_eq!(int("1 << 3"), None);
}
