//! `info`, `list`, `verify` and `stats` of a sharded checkpoint: given its
//! index (`big.deathtensors.index.json`) or its base path (`big.deathtensors`
//! when only the shards and the index exist), they read the index and then
//! each shard, as `deathtensors.open_sharded` does.

use std::fmt::Write as _;
use std::path::Path;

use deathtensors::reader::hex;
use deathtensors::sharded::{in_shard, resolve_index, Checkpoint, ShardedIndex, MAX_INDEX_BYTES};
use deathtensors::stats::TensorStats;
use deathtensors::Error;
use serde_json::{json, Value};

use crate::{human, info_json, pretty, progress, shown, tensor_row, write_stats, write_table};

/// The checked index of the checkpoint `path` names.
fn index(path: &Path) -> Result<ShardedIndex, Error> {
    ShardedIndex::read_deathtensors(resolve_index(path)?, MAX_INDEX_BYTES)
}

/// `deathtensors info` of a checkpoint.
pub(crate) fn info(path: &Path, as_json: bool) -> Result<String, Error> {
    let cp = Checkpoint::open(index(path)?)?;
    let (index, shards) = (cp.index(), cp.shards());
    if as_json {
        let shard_infos: Vec<Value> = shards
            .iter()
            .map(|(name, r)| {
                let mut v = info_json(r);
                v["shard"] = json!(name);
                v
            })
            .collect();
        return Ok(pretty(&json!({
            "path": index.path(),
            "sharded": true,
            "total_size": index.total_size(),
            "metadata": index.global_metadata().cloned().unwrap_or_default(),
            "weight_map": index.to_json()["weight_map"],
            "shards": shard_infos,
        })));
    }
    let mut s = String::new();
    let on_disk: u64 = shards.iter().map(|(_, r)| r.file_len()).sum();
    let _ = writeln!(s, "checkpoint: {}", index.path().display());
    let data = index
        .total_size()
        .map_or_else(String::new, |t| format!(" ({} of tensor data)", human(t)));
    let _ = writeln!(s, "size:       {} in {} shard(s){data}", human(on_disk), shards.len());
    let _ = writeln!(
        s,
        "format:     deathtensors v{}, sharded",
        deathtensors::format::VERSION
    );
    if let Some(m) = index.global_metadata().filter(|m| !m.is_empty()) {
        let _ = writeln!(s, "metadata:   {}", Value::Object(m.clone()));
    }
    let _ = writeln!(s, "tensors:    {}", index.weight_map().len());
    let _ = writeln!(s, "shards:");
    let counts: std::collections::HashMap<&str, usize> =
        index.by_shard().into_iter().map(|(s, t)| (s, t.len())).collect();
    let shard_rows: Vec<Vec<String>> = shards
        .iter()
        .map(|(name, r)| {
            let count = counts.get(name.as_str()).copied().unwrap_or(0);
            vec![
                shown(name).into_owned(),
                count.to_string(),
                human(r.file_len()),
                r.codec().map_or("none", |c| c.id()).to_owned(),
                r.checksum().map_or("none", |c| c.id()).to_owned(),
            ]
        })
        .collect();
    write_table(&mut s, &["shard", "tensors", "size", "codec", "checksum"], &shard_rows);
    let _ = writeln!(s, "tensor table:");
    let rows: Vec<Vec<String>> = index
        .weight_map()
        .iter()
        .filter_map(|(tensor, _)| {
            let (shard, r) = cp.shard(tensor).ok()?;
            let mut row = tensor_row(r.tensor(tensor).ok()?);
            row.push(shown(shard).into_owned());
            Some(row)
        })
        .collect();
    write_table(&mut s, &["name", "dtype", "shape", "size", "stored", "shard"], &rows);
    Ok(s)
}

/// `deathtensors list` of a checkpoint: the index's tensors, in saved order.
pub(crate) fn list(path: &Path, as_json: bool) -> Result<String, Error> {
    let index = index(path)?;
    let names: Vec<&str> = index.weight_map().iter().map(|(t, _)| t.as_str()).collect();
    if as_json {
        return Ok(pretty(&json!(names)));
    }
    let mut s = String::new();
    for name in names {
        let _ = writeln!(s, "{}", shown(name));
    }
    Ok(s)
}

/// `deathtensors verify` of a checkpoint: every shard's footer, every tensor
/// of the index present in its shard, and `total_size` (when the index has
/// one) equal to their bytes, as `ShardedReader.verify` checks. The first
/// failure is the error.
pub(crate) fn verify(path: &Path, as_json: bool) -> Result<String, Error> {
    let cp = Checkpoint::open(index(path)?)?;
    let (index, shards) = (cp.index(), cp.shards());
    let total = shards.iter().map(|(_, r)| r.file_len()).sum();
    let pb = progress::bar(total, "verify");
    let mut done = 0;
    let mut rows = Vec::with_capacity(shards.len());
    for (name, r) in shards {
        let verified = in_shard(name, || {
            r.verify_with_progress(&|n| {
                if let Some(pb) = &pb {
                    pb.set_position(done + n);
                }
            })?;
            Ok((
                r.checksum().map(|c| c.id()).unwrap_or_default(),
                hex(&r.stored_digest()?),
            ))
        });
        done += r.file_len();
        match verified {
            Ok((algorithm, digest)) => rows.push((name.as_str(), algorithm, digest)),
            Err(e) => {
                if let Some(pb) = &pb {
                    pb.finish_and_clear();
                }
                return Err(e);
            }
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if let Some(declared) = index.total_size() {
        let held: u64 = index
            .weight_map()
            .iter()
            .filter_map(|(t, _)| cp.shard(t).ok()?.1.tensor(t).ok().map(|info| info.nbytes))
            .sum();
        if held != declared {
            return Err(Error::InvalidIndex {
                path: index.path().to_owned(),
                reason: format!("it says total_size={declared} but its tensors hold {held} bytes"),
            });
        }
    }
    if as_json {
        let shards: Vec<Value> = rows
            .iter()
            .map(|(name, algorithm, digest)| json!({"shard": name, "algorithm": algorithm, "digest": digest}))
            .collect();
        return Ok(pretty(&json!({"path": index.path(), "ok": true, "shards": shards})));
    }
    let mut s = String::new();
    for (name, algorithm, digest) in &rows {
        let _ = writeln!(s, "OK  {}  {algorithm}:{digest}", shown(name));
    }
    let _ = writeln!(
        s,
        "OK  {}  ({} shards, {} tensors)",
        index.path().display(),
        rows.len(),
        index.weight_map().len()
    );
    Ok(s)
}

/// `deathtensors stats` of a checkpoint: rows in index order (only `names`
/// when given).
pub(crate) fn stats(path: &Path, names: &[String], as_json: bool) -> Result<String, Error> {
    let index = index(path)?;
    let wanted: Vec<String> = if names.is_empty() {
        index.weight_map().iter().map(|(t, _)| t.clone()).collect()
    } else {
        names.to_vec()
    };
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    // Only the shards that hold the tensors asked for.
    let cp = Checkpoint::open_holding(index, &wanted)?;
    let rows = wanted
        .iter()
        .map(|tensor| {
            let (shard, r) = cp.shard(tensor)?;
            in_shard(shard, || deathtensors::stats::tensor_stats(r, tensor))
        })
        .collect::<Result<Vec<TensorStats>, Error>>()?;
    if as_json {
        return Ok(pretty(&serde_json::to_value(&rows).unwrap_or_default()));
    }
    let mut s = String::new();
    write_stats(&mut s, &rows);
    Ok(s)
}
