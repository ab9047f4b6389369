//! A repack that changes a file's codec decodes and encodes its tensors a
//! piece at a time: memory stays at a few chunks per thread, not a tensor,
//! with the source's footer verified beside it.
//!
//! A test binary of its own: its global allocator counts the bytes live at
//! once, which other tests running beside it would disturb.

use deathtensors::reader::DtReader;
use deathtensors::writer::{repack_file, RepackOptions};
use deathtensors_integration_tests::{opts, peak_of, tensor, write_valid, Counting};
use serde_json::Map;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;

#[test]
fn repacking_a_large_tensor_holds_a_few_chunks_per_thread() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(48 * MIB / 4) as u32)
        .flat_map(|i| ((i % 977) as f32 * 0.01).to_le_bytes())
        .collect();
    // A footer: the source is verified on a thread of its own beside the write.
    let mut options = opts(Some("zstd"), Some("sha256"));
    options.level = Some(1);
    let src = write_valid(
        dir.path(),
        "big.deathtensors",
        &[tensor("w", "F32", &[(data.len() / 4) as u64], &data)],
        &Map::new(),
        &options,
    );
    // Two threads: the writer reads four chunks (1 MiB each) a thread at a time.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for codec in [Some("lz4"), None] {
        let dst = dir.path().join("out.deathtensors");
        let repack = RepackOptions {
            codec: Some(codec.map(str::to_owned)),
            // No footer on the output: its hashing queue (a few pieces) is
            // not what this test measures.
            checksum: Some(None),
            durable: false,
            ..RepackOptions::default()
        };
        let (peak, result) = peak_of(|| pool.install(|| repack_file(&src, &dst, &repack)));
        result.unwrap();
        // Decoding the whole tensor first, as before, took 48 MiB and more.
        assert!(peak < 24 * MIB, "repacking 48 MiB to {codec:?} peaked at {peak} bytes");
        let out = DtReader::open(&dst).unwrap();
        assert_eq!(out.codec().map(|c| c.id()), codec);
        assert!(out.read_tensor("w").unwrap()[..] == data[..]);
        assert!(out.checksum().is_none());
    }
}
