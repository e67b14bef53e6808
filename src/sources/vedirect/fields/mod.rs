//! VE.Direct fields: labels → typed values in SI units ([`labels`]), a
//! cycle's blocks merged into one snapshot ([`merger`], [`snapshot`]), the
//! snapshot → reading-table row mapping, and what the codes mean
//! ([`catalog`]).

pub(crate) mod catalog;
pub(crate) mod labels;
pub(crate) mod merger;
pub(crate) mod snapshot;

/// Any bytes as any label's value, through the codec and the snapshot.
#[cfg(test)]
mod odd_values;

pub(crate) use catalog::product_name;
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
