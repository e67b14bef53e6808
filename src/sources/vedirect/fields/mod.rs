//! VE.Direct fields: labels → typed values in SI units ([`labels`]), a
//! cycle's blocks merged into one snapshot ([`merger`], [`snapshot`]), the
//! snapshot → reading-table row mapping, and what the codes mean
//! ([`catalog`]).

pub mod catalog;
pub mod labels;
pub mod merger;
pub mod snapshot;

/// Any bytes as any label's value, through the codec and the snapshot.
#[cfg(test)]
mod odd_values;

pub use catalog::{product_name, table_of_product};
pub use labels::Typed;
pub use merger::Merger;
pub use snapshot::Snapshot;

/// What the tests of these modules share.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::sources::vedirect::codec::{
        Frame, TextBlock, VeDirectCodec, decode_all, encode_block,
    };

    pub(crate) fn block(fields: &[(&str, &str)]) -> TextBlock {
        match decode_all(&mut VeDirectCodec::new(), &encode_block(fields)).remove(0) {
            Frame::Block(b) => b,
            Frame::Hex(_) => unreachable!(),
        }
    }
}
