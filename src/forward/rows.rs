//! A batch's rows as the writers need them: grouped by reading table, and
//! the columns some row of a table has.

use crate::reading::Reading;
use crate::reading::{ColumnKind, ReadingTable};

/// The batch's rows grouped by reading table, in a fixed table order.
pub(super) fn by_table<'a>(
    rows: &'a [&'a Reading],
) -> impl Iterator<Item = (ReadingTable, Vec<&'a Reading>)> + 'a {
    ReadingTable::ALL.into_iter().filter_map(move |table| {
        let of_table: Vec<&Reading> = rows.iter().copied().filter(|r| r.table == table).collect();
        (!of_table.is_empty()).then_some((table, of_table))
    })
}

/// The columns some row of the batch has: fewer to send and to parse.
pub(super) fn present_columns(
    table: ReadingTable,
    rows: &[&Reading],
) -> Vec<(&'static str, ColumnKind)> {
    table
        .columns()
        .iter()
        .copied()
        .filter(|(column, _)| rows.iter().any(|r| r.get(column).is_some()))
        .collect()
}
