//! `info`, `list`, `verify` and `stats` of a sharded checkpoint: given its
//! index (a `.json` path) or its base path (`big.deathtensors` when only the
//! shards and `big.deathtensors.index.json` exist), they read the index and
//! then each shard, as `deathtensors.open_sharded` does. Shards are visited
//! one at a time, so a checkpoint of any number of shards holds one file open.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use deathtensors::reader::{hex, DtReader};
use deathtensors::sharded::{in_shard, ShardedIndex};
use deathtensors::stats::TensorStats;
use deathtensors::Error;
use serde_json::{json, Value};

use crate::{human, info_json, pretty, progress, shown, tensor_row, write_stats, write_table};

/// Call `f` with each shard of `index` holding one of `wanted` (every shard
/// when `None`), its tensors and its open reader, one shard at a time.
fn each_shard(
    index: &ShardedIndex,
    wanted: Option<&[&str]>,
    mut f: impl FnMut(&str, &[&str], &DtReader) -> Result<(), Error>,
) -> Result<(), Error> {
    for (shard, tensors) in index.by_shard() {
        if wanted.is_some_and(|w| !tensors.iter().any(|t| w.contains(t))) {
            continue;
        }
        let r = index.open_shard(shard, &tensors)?;
        f(shard, &tensors, &r)?;
    }
    Ok(())
}

/// `deathtensors info` of a checkpoint.
pub(crate) fn info(path: &Path, as_json: bool) -> Result<String, Error> {
    let index = ShardedIndex::of_checkpoint(path)?;
    let mut shard_infos = Vec::new();
    let mut shard_rows = Vec::new();
    let mut tensor_rows: HashMap<String, Vec<String>> = HashMap::new();
    let mut on_disk = 0;
    each_shard(&index, None, |shard, tensors, r| {
        on_disk = u64::saturating_add(on_disk, r.file_len());
        if as_json {
            let mut v = info_json(r);
            v["shard"] = json!(shard);
            shard_infos.push(v);
            return Ok(());
        }
        shard_rows.push(vec![
            shown(shard).into_owned(),
            tensors.len().to_string(),
            human(r.file_len()),
            r.codec().map_or("none", |c| c.id()).to_owned(),
            r.checksum().map_or("none", |c| c.id()).to_owned(),
        ]);
        for t in tensors {
            let mut row = tensor_row(r.tensor(t)?);
            row.push(shown(shard).into_owned());
            tensor_rows.insert((*t).to_owned(), row);
        }
        Ok(())
    })?;
    if as_json {
        return Ok(pretty(&json!({
            "path": index.path().to_string_lossy(),
            "sharded": true,
            "total_size": index.total_size(),
            "metadata": index.global_metadata().cloned().unwrap_or_default(),
            "weight_map": index.to_json()["weight_map"],
            "shards": shard_infos,
        })));
    }
    let mut s = String::new();
    let _ = writeln!(s, "checkpoint: {}", index.path().display());
    let data = index
        .total_size()
        .map_or_else(String::new, |t| format!(" ({} of tensor data)", human(t)));
    let _ = writeln!(
        s,
        "size:       {} in {} shard(s){data}",
        human(on_disk),
        shard_rows.len()
    );
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
    write_table(
        &mut s,
        "  ",
        &["shard", "tensors", "size", "codec", "checksum"],
        &shard_rows,
    );
    let _ = writeln!(s, "tensor table:");
    let rows: Vec<Vec<String>> = index
        .weight_map()
        .iter()
        .filter_map(|(t, _)| tensor_rows.remove(t))
        .collect();
    write_table(
        &mut s,
        "  ",
        &["name", "dtype", "shape", "size", "stored", "shard"],
        &rows,
    );
    Ok(s)
}

/// `deathtensors list` of a checkpoint: the index's tensors, in saved order.
pub(crate) fn list(path: &Path, as_json: bool) -> Result<String, Error> {
    let index = ShardedIndex::of_checkpoint(path)?;
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
/// of the index present in its shard (and no other), and `total_size` (when the index has
/// one) equal to their bytes, as `ShardedReader.verify` checks. The first
/// failure is the error.
pub(crate) fn verify(path: &Path, as_json: bool) -> Result<String, Error> {
    let index = ShardedIndex::of_checkpoint(path)?;
    // For the progress bar only: a shard that is missing fails when it is opened.
    let total = index
        .by_shard()
        .iter()
        .filter_map(|(shard, _)| std::fs::metadata(index.shard_path(shard)).ok())
        .map(|m| m.len())
        .fold(0, u64::saturating_add);
    let pb = progress::bar(total, "verify");
    let mut done = 0;
    let mut held = 0u64;
    let mut rows = Vec::new();
    let verified = each_shard(&index, None, |shard, tensors, r| {
        in_shard(shard, || {
            r.verify_with_progress(&|n| {
                if let Some(pb) = &pb {
                    pb.set_position(done + n);
                }
            })
        })?;
        done = u64::saturating_add(done, r.file_len());
        held = held.saturating_add(ShardedIndex::stored_nbytes(r, tensors)?);
        let algorithm = r.checksum().map(|c| c.id()).unwrap_or_default();
        rows.push((
            shard.to_owned(),
            algorithm,
            hex(&in_shard(shard, || r.stored_digest())?),
        ));
        Ok(())
    });
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    verified?;
    if let Some(declared) = index.total_size().filter(|&d| d != held) {
        return Err(Error::InvalidIndex {
            path: index.path().to_owned(),
            reason: format!("it says total_size={declared} but its tensors hold {held} bytes"),
        });
    }
    if as_json {
        let shards: Vec<Value> = rows
            .iter()
            .map(|(name, algorithm, digest)| json!({"shard": name, "algorithm": algorithm, "digest": digest}))
            .collect();
        return Ok(pretty(
            &json!({"path": index.path().to_string_lossy(), "ok": true, "shards": shards}),
        ));
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

/// `deathtensors stats` of a checkpoint: rows in index order, or in the
/// order of `names` when given (then only the shards holding them are opened).
pub(crate) fn stats(path: &Path, names: &[String], as_json: bool) -> Result<String, Error> {
    let index = ShardedIndex::of_checkpoint(path)?;
    let wanted: Vec<&str> = if names.is_empty() {
        index.weight_map().iter().map(|(t, _)| t.as_str()).collect()
    } else {
        let listed: std::collections::HashSet<&str> = index.weight_map().iter().map(|(t, _)| t.as_str()).collect();
        if let Some(unknown) = names.iter().find(|n| !listed.contains(n.as_str())) {
            return Err(Error::TensorNotFound(unknown.clone()).in_file(index.path()));
        }
        names.iter().map(String::as_str).collect()
    };
    let mut got: HashMap<String, TensorStats> = HashMap::new();
    let only = (!names.is_empty()).then_some(&wanted[..]);
    each_shard(&index, only, |shard, tensors, r| {
        for t in tensors.iter().filter(|t| only.is_none_or(|w| w.contains(t))) {
            let row = in_shard(shard, || deathtensors::stats::tensor_stats(r, t))?;
            got.insert((*t).to_owned(), row);
        }
        Ok(())
    })?;
    let rows: Vec<TensorStats> = wanted.iter().filter_map(|t| got.get(*t).cloned()).collect();
    if as_json {
        return Ok(pretty(&serde_json::to_value(&rows).unwrap_or_default()));
    }
    let mut s = String::new();
    write_stats(&mut s, &rows);
    Ok(s)
}
