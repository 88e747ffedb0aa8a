//! The reports' formats: the book includes committed outputs by line
//! ranges, so these must not drift.

use benches::{Align, Sample, Table, ratio, spread, sum, terms, verdict};
use std::time::Duration;

#[test]
fn table_head_and_rows() {
    let table = Table::new(&[
        ("measurement", Align::Left),
        ("ops/s (median)", Align::Right),
        ("target", Align::Left),
    ]);
    assert_eq!(
        table.head(),
        "| measurement | ops/s (median) | target |\n|---|---:|---|"
    );
    assert_eq!(
        table.row(&[&"raw fork", &4304, &"reference"]),
        "| raw fork | 4304 | reference |"
    );
    // An empty cell, and a cell left out.
    assert_eq!(table.row(&[&"x", &"", &""]), "| x |  |  |");
    assert_eq!(table.row(&[&"x", &1]), "| x | 1 | |");
}

#[test]
fn memory_table() {
    assert_eq!(
        Table::memory("process").head(),
        "| process | USS KiB | PSS KiB | RSS KiB | target |\n|---|---:|---:|---:|---|"
    );
}

#[test]
#[should_panic(expected = "3 cells for 2 columns")]
fn too_many_cells() {
    let table = Table::new(&[("a", Align::Left), ("b", Align::Left)]);
    table.row(&[&1, &2, &3]);
}

#[test]
fn cells() {
    assert_eq!(ratio(0.094), "0.094");
    assert_eq!(ratio(1.554), "1.55");
    assert_eq!((verdict(true), verdict(false)), ("met", "MISSED"));
    assert_eq!(
        sum(&[Some(132.4), None, Some(91.0)], 0),
        "132 + – + 91 = 223"
    );
    assert_eq!(sum(&[Some(15.67), Some(17.91)], 2), "15.67 + 17.91 = 33.58");
    assert_eq!(terms(&[Some(1.2), Some(1.199)], 2), "1.20 + 1.20");
    let mut sample = Sample::<2>::default();
    sample.push_round(4304, Duration::from_secs(1));
    sample.push_round(861, Duration::from_millis(200));
    assert_eq!(spread(&sample), "4304–4305");
}
