//! Benchmark: VE.Direct decoding throughput over the real captures, from bytes
//! to typed snapshots and reading rows (checksums, HEX frames, field typing,
//! block merging), through the byte-slice path and through the tokio
//! `Decoder` the source uses. Prints MB/s.
//!
//! Run: `cargo bench --bench vedirect_decode` (MB to decode: env MEGABYTES, default 128).

use std::time::Instant;

use bytes::BytesMut;
use chrono::Utc;
use tokio_util::codec::Decoder;
use victron_poller::sources::vedirect::codec::{Frame, VeDirectCodec};
use victron_poller::sources::vedirect::fields::Merger;

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vedirect");
    let mut capture = Vec::new();
    for name in ["bvm702.dump", "bluesolar_1.23.dump", "smartsolar_1.39.dump"] {
        capture.extend(std::fs::read(format!("{dir}/{name}")).expect("capture"));
    }
    let megabytes: usize = std::env::var("MEGABYTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(128);
    let repeats = (megabytes << 20) / capture.len() + 1;
    let input: Vec<u8> = capture
        .iter()
        .copied()
        .cycle()
        .take(capture.len() * repeats)
        .collect();
    let now = Utc::now();

    // Each device's stream goes to its own merger; here one merger per run
    // sees all three captures in turn, which costs the same.
    let run = |chunked: bool| {
        let mut codec = VeDirectCodec::new();
        let mut merger = Merger::new();
        let mut snapshots = 0u64;
        let mut columns = 0usize;
        let mut on_frame = |frame: Frame| {
            if let Frame::Block(block) = frame {
                for back in (0..merger.push(&block, now)).rev() {
                    snapshots += 1;
                    let snapshot = merger.recent(back).expect("just completed");
                    if let Some(table) = snapshot.table() {
                        columns += snapshot.columns(table).len();
                    }
                }
            }
        };
        let start = Instant::now();
        if chunked {
            let mut buffer = BytesMut::with_capacity(8192);
            for chunk in input.chunks(8192) {
                buffer.extend_from_slice(chunk);
                while let Some(frame) = codec.decode(&mut buffer).expect("decoding never fails") {
                    on_frame(frame);
                }
            }
        } else {
            victron_poller::sources::vedirect::codec::decode_each(&mut codec, &input, on_frame);
        }
        let elapsed = start.elapsed();
        (elapsed, codec.stats(), snapshots, columns)
    };

    println!(
        "VE.Direct decoding benchmark: {:.1} MB ({} × {} capture bytes)",
        input.len() as f64 / 1e6,
        repeats,
        capture.len()
    );
    let start = Instant::now();
    let mut codec = VeDirectCodec::new();
    let mut blocks = 0u64;
    victron_poller::sources::vedirect::codec::decode_each(&mut codec, &input, |frame| {
        blocks += u64::from(matches!(frame, Frame::Block(_)));
    });
    println!(
        "  checksummed blocks only (no typing) {:>7.1} MB/s   {blocks} blocks",
        input.len() as f64 / 1e6 / start.elapsed().as_secs_f64()
    );
    for (label, chunked) in [("byte slice     ", false), ("tokio Decoder  ", true)] {
        let _ = run(chunked); // warm-up
        let (elapsed, stats, snapshots, columns) = run(chunked);
        println!(
            "  {label} {:>7.1} MB/s   {} valid blocks, {} dropped, {} HEX frames, {} snapshots, {} columns",
            input.len() as f64 / 1e6 / elapsed.as_secs_f64(),
            stats.blocks_valid,
            stats.blocks_invalid,
            stats.hex_valid,
            snapshots,
            columns
        );
    }
}
