//! Concurrent readers decode in parallel, even when rayon's pool has one worker.
//!
//! Its own test binary, so that it can make the global pool single-threaded
//! (like `RAYON_NUM_THREADS=1`). A test codec's decompression waits until two
//! different threads are decoding at once: if reads were funnelled through the
//! pool's one worker, the second thread would never arrive and the wait would
//! time out.

use deathtensors_plugins as _;

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use deathtensors::reader::DtReader;
use deathtensors::registry::{Codec, Plugin};
use deathtensors::writer::WriteOptions;
use deathtensors_integration_tests::{tensor, write_valid};
use serde_json::Map;

/// Threads seen decoding, and whether one of them gave up waiting for a second.
static DECODERS: Mutex<(Option<HashSet<ThreadId>>, bool)> = Mutex::new((None, false));
static ARRIVED: Condvar = Condvar::new();

/// Stores a chunk of one repeated byte as that byte; decoding waits for a second decoding thread.
struct RendezvousCodec;

impl Plugin for RendezvousCodec {
    fn id(&self) -> &'static str {
        "test-rendezvous"
    }
    fn summary(&self) -> &'static str {
        "test codec: one byte per chunk, decoding waits for a second thread"
    }
}

impl Codec for RendezvousCodec {
    fn default_level(&self) -> i32 {
        0
    }

    fn compress(&self, raw: &[u8], _level: i32) -> Result<Vec<u8>, String> {
        match raw.first() {
            Some(&b) if raw.iter().all(|&x| x == b) => Ok(vec![b]),
            _ => Err("the test codec only stores runs of one byte".into()),
        }
    }

    fn decompress_into(&self, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
        let mut state = DECODERS.lock().map_err(|e| e.to_string())?;
        state
            .0
            .get_or_insert_with(HashSet::new)
            .insert(std::thread::current().id());
        ARRIVED.notify_all();
        let (mut state, timeout) = ARRIVED
            .wait_timeout_while(state, Duration::from_secs(20), |s| {
                s.0.as_ref().map_or(0, HashSet::len) < 2
            })
            .map_err(|e| e.to_string())?;
        if timeout.timed_out() {
            state.1 = true;
        }
        out.fill(stored[0]);
        Ok(())
    }
}

deathtensors::register_codec!(RendezvousCodec);

#[test]
fn two_threads_decode_at_once_with_a_one_worker_pool() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("first use of the global pool");
    assert_eq!(rayon::current_num_threads(), 1);

    let ones = vec![1u8; 4096];
    let twos = vec![2u8; 4096];
    let tensors = [
        tensor("ones", "U8", &[4096], &ones),
        tensor("twos", "U8", &[4096], &twos),
    ];
    let options = WriteOptions {
        codec: Some("test-rendezvous".into()),
        chunk_bytes: 1024, // four chunks per tensor
        ..WriteOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_valid(dir.path(), "rendezvous", &tensors, &Map::new(), &options);
    let reader = DtReader::open(&path).unwrap();
    assert_eq!(reader.tensor("ones").unwrap().chunks.as_ref().map(Vec::len), Some(4));

    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| reader.read_tensor("ones").unwrap());
        let b = s.spawn(|| reader.read_tensor("twos").unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(&a[..], &ones[..]);
    assert_eq!(&b[..], &twos[..]);
    let state = DECODERS.lock().unwrap();
    assert_eq!(
        state.0.as_ref().map(HashSet::len),
        Some(2),
        "decoding ran on one thread"
    );
    assert!(
        !state.1,
        "a decoding thread waited 20 s for the other: reads were serialised"
    );
}
