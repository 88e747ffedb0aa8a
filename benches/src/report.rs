//! The reports' Markdown tables, and the formats of their cells.
//!
//! The book includes the committed output of the benches
//! (`benches/results/*.txt`) by line ranges, and CI checks that those are
//! whole tables: a change here changes what the book shows.

use std::fmt::Display;

use crate::Sample;

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: `---`.
    Left,
    /// Figures: `---:`.
    Right,
}

/// A Markdown table's columns: prints its header, and its rows one by one.
///
/// # Examples
///
/// ```
/// use benches::{Align, Table};
///
/// let table = Table::new(&[("process", Align::Left), ("USS KiB", Align::Right), ("target", Align::Left)]);
/// assert_eq!(table.head(), "| process | USS KiB | target |\n|---|---:|---|");
/// assert_eq!(table.row(&[&"worker", &40, &""]), "| worker | 40 |  |");
/// assert_eq!(table.row(&[&"template", &132]), "| template | 132 | |");
/// ```
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
}

// ===== impl Table =====

impl Table {
    /// A table of these columns: each a heading and an alignment.
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
        }
    }

    /// The table of processes' memory (KiB, see [`Mem`](crate::proc::Mem)),
    /// its first column headed `what`: the process, USS, PSS, RSS, target.
    pub fn memory(what: &'static str) -> Table {
        Table::new(&[
            (what, Align::Left),
            ("USS KiB", Align::Right),
            ("PSS KiB", Align::Right),
            ("RSS KiB", Align::Right),
            ("target", Align::Left),
        ])
    }

    /// The header: the headings' line and the alignments' line.
    pub fn head(&self) -> String {
        let headings: Vec<&str> = self.columns.iter().map(|(name, _)| *name).collect();
        let rule: String = self
            .columns
            .iter()
            .map(|(_, align)| match align {
                Align::Left => "---|",
                Align::Right => "---:|",
            })
            .collect();
        format!("| {} |\n|{rule}", headings.join(" | "))
    }

    /// One row. A cell that prints nothing shows as `|  |`; cells left out
    /// at the end of the row show as `| |`.
    ///
    /// # Panics
    ///
    /// If there are more cells than columns.
    pub fn row(&self, cells: &[&dyn Display]) -> String {
        assert!(
            cells.len() <= self.columns.len(),
            "{} cells for {} columns",
            cells.len(),
            self.columns.len()
        );
        let mut line = String::from("|");
        for cell in cells {
            line += &format!(" {cell} |");
        }
        for _ in cells.len()..self.columns.len() {
            line += " |";
        }
        line
    }
}

// ===== cells =====

/// A ratio with two decimals, or three when it is small.
pub fn ratio(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.3}")
    } else {
        format!("{x:.2}")
    }
}

/// "met" or "MISSED".
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The slowest and the fastest round's rates: `min–max`.
pub fn spread<const N: usize>(sample: &Sample<N>) -> String {
    format!("{:.0}–{:.0}", sample.min(), sample.max())
}

/// Figures of parties, as `a + b + c` with `decimals` decimals, `–` for
/// one not measured.
pub fn terms(values: &[Option<f64>], decimals: usize) -> String {
    let terms: Vec<String> = values
        .iter()
        .map(|v| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}")))
        .collect();
    terms.join(" + ")
}

/// Figures of parties and their total, as `a + b + c = total` (see
/// [`terms`]).
pub fn sum(values: &[Option<f64>], decimals: usize) -> String {
    let total: f64 = values.iter().flatten().sum();
    format!("{} = {total:.decimals$}", terms(values, decimals))
}
