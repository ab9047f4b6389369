//! Opening a file allocates a bounded multiple of its header's size: the
//! header is parsed straight into its Rust types (no intermediate JSON value
//! tree), so a header of many tensors and chunks, hostile or not, costs well
//! under twenty times its text.
//!
//! A test binary of its own: its global allocator counts the bytes live at
//! once, which other tests running beside it would disturb.

use deathtensors::format::Header;
use deathtensors::reader::DtReader;
use deathtensors_integration_tests::{opts, peak_of, tensor, write_valid, Counting};
use serde_json::Map;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A compressed, filtered header of `n` tensors, the way the writer lays it out.
fn many_tensor_header(n: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 8];
    let names: Vec<String> = (0..n).map(|i| format!("model.layers.{i}.mlp.weight")).collect();
    let tensors: Vec<_> = names.iter().map(|name| tensor(name, "BF16", &[4], &data)).collect();
    let path = write_valid(dir.path(), "many.dt", &tensors, &Map::new(), &opts(Some("zstd"), None));
    let reader = DtReader::open(&path).unwrap();
    let text = serde_json::to_vec(&reader.layout().header).unwrap();
    (dir, path, text)
}

#[test]
fn parsing_and_opening_cost_a_few_times_the_header() {
    let (_dir, path, text) = many_tensor_header(20_000);
    assert!(text.len() > 2_000_000, "header of {} bytes", text.len());
    let (parse_peak, header) = peak_of(|| Header::parse(&text).unwrap());
    assert_eq!(header.tensors.len(), 20_000);
    drop(header);
    // Through a serde_json::Value tree this took 16.9x the text; typed, with the
    // rarely present layout and filter boxed, 6.9x.
    assert!(
        parse_peak < 9 * text.len(),
        "parsing a {} byte header peaked at {parse_peak} bytes",
        text.len()
    );
    let (open_peak, reader) = peak_of(|| DtReader::open(&path).unwrap());
    assert_eq!(reader.layout().tensors.len(), 20_000);
    // The open keeps the parsed header and the validated tensors side by side:
    // 18.6x before, 13.4x now.
    assert!(
        open_peak < 16 * text.len(),
        "opening a file with a {} byte header peaked at {open_peak} bytes",
        text.len()
    );
}
