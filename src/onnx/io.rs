//! Reading and writing ONNX models: memory-mapped, external data resolved, written atomically.
//!
//! The whole `ModelProto` is decoded with prost from the newest `onnx-ml.proto`, so every field the
//! schema knows survives a round trip. Weight bytes are never copied on the way in: `raw_data` is
//! a `Bytes` slice of the mapped `.onnx` file, and external tensors become slices of their mapped
//! `.data` file. Rewritten weights stay slices of those maps ([`RowSlice`]) until written; writing
//! copies them into the output one buffer at a time and hands the pages of the input back to the
//! kernel as it goes, so resident memory follows a buffer, not the model.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use memmap2::{Mmap, UncheckedAdvice};
use prost::Message;

use super::proto::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto, TensorProto};
use super::tensor::RowSlice;
use crate::error::{Error, Result};

/// The newest default-domain opset whose operators the rules were written against.
pub const MAX_OPSET: i64 = 28;

/// Tensors smaller than this stay inside the `.onnx` file when writing external data, as
/// `onnx.save_model` does.
const EXTERNAL_THRESHOLD: usize = 1024;

/// External tensors of at least this many bytes start at a multiple of [`ALIGNMENT`], so that
/// onnxruntime can memory-map them (its own writer's threshold).
const ALIGN_FROM: usize = 1 << 20;

/// The allocation granularity on Windows (64 KiB), a multiple of the page size everywhere else.
const ALIGNMENT: usize = 64 << 10;

/// A loaded model: the complete protobuf, with every tensor's bytes reachable through `raw_data`.
pub struct Model {
    pub proto: ModelProto,
    pub path: PathBuf,
    /// Whether any tensor was stored outside the `.onnx` file; the output follows the input.
    pub had_external_data: bool,
    maps: Vec<Arc<Mmap>>,
    /// Initializers whose bytes are a slice still to be copied, by name.
    pending: HashMap<String, RowSlice>,
}

struct MapOwner(Arc<Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Every live mapping of an input file, so that code holding only a tensor's bytes (a weight
/// scan) can give their pages back without knowing which model they came from.
static MAPPED: Mutex<Vec<Weak<Mmap>>> = Mutex::new(Vec::new());

fn map(path: &Path) -> std::io::Result<Arc<Mmap>> {
    let file = File::open(path)?;
    // SAFETY: the map is read-only; like every tool that maps its input, we rely on nobody
    // truncating the model while it is being read.
    let map = Arc::new(unsafe { Mmap::map(&file)? });
    let mut mapped = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    mapped.retain(|m| m.strong_count() > 0);
    mapped.push(Arc::downgrade(&map));
    Ok(map)
}

/// Tells the kernel it may drop the pages behind `data` if they come from a mapped input file
/// (bytes anywhere else are left alone). Only an optimisation: the pages are read again from
/// the page cache or disk if touched later.
pub(crate) fn release_pages(data: &[u8]) {
    with_mapping(data, |m, offset| {
        // SAFETY: the mapping is read-only and file-backed; dropped pages are re-read from the
        // file, so no data is lost.
        let _ = unsafe { m.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, data.len()) };
    })
}

/// Maps the pages behind `data`, if they come from a mapped input file, in one call: one large
/// read when the model is on disk, rather than a fault per 64 KB.
fn prefetch_pages(data: &[u8]) {
    #[cfg(target_os = "linux")]
    with_mapping(data, |m, offset| {
        let _ = m.advise_range(memmap2::Advice::PopulateRead, offset, data.len());
    })
}

fn with_mapping(data: &[u8], f: impl FnOnce(&Mmap, usize)) {
    if data.is_empty() {
        return;
    }
    let ptr = data.as_ptr() as usize;
    let mapped = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = mapped.iter().filter_map(Weak::upgrade).find(|m| {
        let start = m.as_ptr() as usize;
        ptr >= start && ptr + data.len() <= start + m.len()
    }) {
        f(&m, ptr - m.as_ptr() as usize)
    }
}

/// About how many bytes of a mapped input a scan holds resident at once.
const WINDOW: usize = 16 << 20;

/// Visits `rows` (sorted) of row-major `data` with rows of `row_bytes`, in groups spanning about
/// 16 MB: each group's pages are mapped in one call before `visit` reads them and given back
/// after, so a scan neither faults page by page nor keeps the model resident.
pub(crate) fn in_windows(data: &[u8], row_bytes: usize, rows: &[usize], mut visit: impl FnMut(&[usize])) {
    let mut start = 0;
    while start < rows.len() {
        let first = rows[start];
        let end = start + rows[start..].iter().take_while(|&&r| (r + 1 - first) * row_bytes <= WINDOW).count().max(1);
        let span = &data[(first * row_bytes).min(data.len())..((rows[end - 1] + 1) * row_bytes).min(data.len())];
        prefetch_pages(span);
        visit(&rows[start..end]);
        release_pages(span);
        start = end;
    }
}

fn bytes_of(map: &Arc<Mmap>) -> Bytes {
    Bytes::from_owner(MapOwner(map.clone()))
}

impl Model {
    pub fn load(path: &Path) -> Result<Model> {
        let read_err = |source| Error::Read { path: path.to_path_buf(), source };
        let map = map(path).map_err(read_err)?;
        if map.is_empty() {
            return Err(Error::Decode { path: path.to_path_buf(), why: "the file is empty".into() });
        }
        let proto = ModelProto::decode(bytes_of(&map))
            .map_err(|e| Error::Decode { path: path.to_path_buf(), why: e.to_string() })?;
        if proto.graph.is_none() {
            return Err(Error::Decode { path: path.to_path_buf(), why: "it has no graph".into() });
        }
        for op in &proto.opset_import {
            let domain = op.domain.clone().unwrap_or_default();
            let version = op.version.unwrap_or(0);
            if (domain.is_empty() || domain == "ai.onnx") && version > MAX_OPSET {
                return Err(Error::UnknownOpset { path: path.to_path_buf(), domain, version, max: MAX_OPSET });
            }
        }
        let mut model = Model {
            proto,
            path: path.to_path_buf(),
            had_external_data: false,
            maps: vec![map],
            pending: HashMap::new(),
        };
        model.resolve_external_data()?;
        Ok(model)
    }

    /// The default-domain opset.
    fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
            .and_then(|o| o.version)
            .unwrap_or(MAX_OPSET)
    }

    /// The graph's index, built for the model's default-domain opset.
    pub fn ir(&self) -> Result<crate::ir::Ir> {
        self.ir_of(self.graph())
    }

    /// Weights computed from weights (`Split`, `Transpose`) stored as weights, and the tied
    /// tables among them where `tie` (see `onnx/fold.rs`).
    pub(crate) fn fold_constants(&mut self, tie: bool) -> Vec<super::fold::Tie> {
        let opset = self.opset();
        super::fold::constants(self.graph_mut(), opset, tie)
    }

    /// The index of another graph of this model (the same opset), such as a folded copy.
    pub(crate) fn ir_of(&self, graph: &super::proto::GraphProto) -> Result<crate::ir::Ir> {
        crate::ir::Ir::build(graph, self.opset()).map_err(|why| Error::Invalid { path: self.path.clone(), why })
    }

    /// Bytes of the model file and every data file it reads.
    pub fn disk_bytes(&self) -> u64 {
        self.maps.iter().map(|m| m.len() as u64).sum()
    }

    pub fn graph(&self) -> &super::proto::GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }

    pub fn graph_mut(&mut self) -> &mut super::proto::GraphProto {
        self.proto.graph.as_mut().expect("checked at load")
    }

    /// Replaces every external reference by a slice of the mapped data file, so the rest of the
    /// tool sees one kind of tensor.
    fn resolve_external_data(&mut self) -> Result<()> {
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut files: HashMap<String, Arc<Mmap>> = HashMap::new();
        let graph = self.proto.graph.as_mut().expect("checked at load");
        for t in graph.initializer.iter_mut() {
            if t.data_location != Some(DataLocation::External as i32) {
                continue;
            }
            self.had_external_data = true;
            let name = t.name.clone().unwrap_or_default();
            let key =
                |k: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).and_then(|e| e.value.clone());
            let location = key("location").ok_or_else(|| Error::ExternalData {
                tensor: name.clone(),
                path: dir.clone(),
                why: "its external_data has no 'location'".into(),
            })?;
            let path = dir.join(&location);
            if Path::new(&location)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
            {
                return Err(Error::ExternalData {
                    tensor: name,
                    path,
                    why: "its location must be a relative path inside the model's folder".into(),
                });
            }
            let ext_err = |why: String| Error::ExternalData { tensor: name.clone(), path: path.clone(), why };
            // A symlink beside the model may point anywhere; the data must really be there.
            let folder = if dir.as_os_str().is_empty() { Path::new(".") } else { dir.as_path() };
            if let (Ok(real), Ok(folder)) = (std::fs::canonicalize(&path), std::fs::canonicalize(folder)) {
                if !real.starts_with(&folder) {
                    return Err(ext_err(format!(
                        "it resolves to {}, outside the model's folder (a symlink?): copy the data beside the model",
                        real.display()
                    )));
                }
            }
            let parse = |k: &str| {
                key(k).map(|v| v.parse::<usize>().map_err(|e| ext_err(format!("bad {k} '{v}': {e}")))).transpose()
            };
            let offset = parse("offset")?.unwrap_or(0);
            let length = parse("length")?;
            let map = match files.get(&location) {
                Some(m) => m.clone(),
                None => {
                    let m = map(&path).map_err(|e| ext_err(e.to_string()))?;
                    files.insert(location.clone(), m.clone());
                    self.maps.push(m.clone());
                    m
                }
            };
            let end = length.map_or(map.len(), |l| offset + l);
            if end > map.len() || offset > end {
                return Err(ext_err(format!("bytes {offset}..{end} lie past its end ({} bytes)", map.len())));
            }
            t.raw_data = Some(bytes_of(&map).slice(offset..end));
            t.data_location = None;
            t.external_data.clear();
        }
        Ok(())
    }

    /// Initializers whose bytes are to be these slices when written (from a rewrite).
    pub(crate) fn defer(&mut self, slices: HashMap<String, RowSlice>) {
        self.pending.extend(slices);
    }

    /// Copies every slice still pending into its tensor, so that `proto` is complete. Writing
    /// does not need this: it copies slices straight into the output.
    pub fn materialize(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for t in self.graph_mut().initializer.iter_mut() {
            pack(&pending, t);
        }
    }

    /// The slice an initializer's bytes are still to be copied from, if any.
    fn slice_of(&self, t: &TensorProto) -> Option<&RowSlice> {
        t.name.as_ref().and_then(|n| self.pending.get(n))
    }

    /// Bytes of an initializer's raw data, pending or not.
    fn stored_len(&self, t: &TensorProto) -> usize {
        self.slice_of(t).map_or_else(|| t.raw_data.as_ref().map_or(0, |r| r.len()), RowSlice::len)
    }

    /// Bytes the model takes encoded inline (pending slices included).
    pub fn encoded_len(&self) -> usize {
        self.proto.encoded_len() + self.pending.values().map(|s| s.len() + 10).sum::<usize>()
    }

    /// Writes the model to `path` (and `<file name>.data` beside it when `external`).
    /// Not atomic on its own: see [`write_atomically`].
    pub fn write(&self, path: &Path, external: bool) -> Result<()> {
        self.write_with_progress(path, external, &mut |_| {})
    }

    /// [`Model::write`], reporting bytes and tensors written after each external tensor.
    pub fn write_with_progress(
        &self,
        path: &Path,
        external: bool,
        progress: &mut dyn FnMut(crate::Progress),
    ) -> Result<()> {
        let write_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Write { path: p, source }
        };
        let external = external || self.encoded_len() > i32::MAX as usize;
        let mut out = self.proto.clone();
        let graph = out.graph.as_mut().expect("checked at load");
        if external {
            let data_path = data_file(path);
            let location = data_path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let mut data = BufWriter::with_capacity(1 << 20, File::create(&data_path).map_err(write_err(&data_path))?);
            let sizes = || graph.initializer.iter().map(|t| self.stored_len(t)).filter(|&l| l >= EXTERNAL_THRESHOLD);
            let (total, of) = (sizes().map(|l| l as u64).sum(), sizes().count());
            let mut items = 0;
            let mut offset = 0usize;
            for t in graph.initializer.iter_mut() {
                let len = self.stored_len(t);
                if len < EXTERNAL_THRESHOLD {
                    pack(&self.pending, t);
                    continue;
                }
                if len >= ALIGN_FROM && !offset.is_multiple_of(ALIGNMENT) {
                    let pad = ALIGNMENT - offset % ALIGNMENT;
                    data.write_all(&[0u8; ALIGNMENT][..pad]).map_err(write_err(&data_path))?;
                    offset += pad;
                }
                match self.slice_of(t) {
                    Some(slice) => {
                        slice.write_to(&mut data).map_err(write_err(&data_path))?;
                        release_pages(slice.source());
                    }
                    None => {
                        let raw = t.raw_data.take().unwrap_or_default();
                        data.write_all(&raw).map_err(write_err(&data_path))?;
                        release_pages(&raw);
                    }
                }
                #[cfg(test)]
                fail_point::hit(&data_path)?;
                set_external(t, &location, offset, len);
                offset += len;
                items += 1;
                progress(crate::Progress::Bytes { done: offset as u64, total, items, of, unit: "tensors" });
            }
            data.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()).map_err(write_err(&data_path))?;
        } else {
            graph.initializer.iter_mut().for_each(|t| pack(&self.pending, t));
        }
        let file = File::create(path).map_err(write_err(path))?;
        // Encoded straight into the file: an inline model is never held a second time in memory.
        let mut sink = FileSink { file, buf: Vec::with_capacity(SINK_CAPACITY), error: None };
        out.encode(&mut sink).expect("a file sink never runs out of space");
        sink.flush().and_then(|f| f.sync_all()).map_err(write_err(path))?;
        Ok(())
    }
}

/// Copies the slice `t`'s bytes are pending from, if any, into `t`.
fn pack(pending: &HashMap<String, RowSlice>, t: &mut TensorProto) {
    if let Some(slice) = t.name.as_ref().and_then(|n| pending.get(n)) {
        t.raw_data = Some(slice.to_vec().into());
    }
}

/// A test's way to make writing fail after a chosen number of tensors, to prove that a failure
/// anywhere leaves no output.
#[cfg(test)]
pub(crate) mod fail_point {
    use std::cell::Cell;
    use std::path::Path;

    thread_local! {
        /// Tensors left before the write fails (none: never).
        pub static AFTER: Cell<Option<usize>> = const { Cell::new(None) };
    }

    pub fn hit(path: &Path) -> crate::Result<()> {
        AFTER.with(|a| match a.get() {
            Some(0) => {
                Err(crate::Error::Write { path: path.to_path_buf(), source: std::io::Error::other("injected failure") })
            }
            Some(n) => {
                a.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        })
    }
}

const SINK_CAPACITY: usize = 1 << 20;

/// A `BufMut` that streams what prost encodes into a file through a 1 MB buffer. I/O errors are
/// kept and reported by [`FileSink::flush`], since `BufMut` cannot fail.
struct FileSink {
    file: File,
    buf: Vec<u8>,
    error: Option<std::io::Error>,
}

impl FileSink {
    fn drain(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.file.write_all(&self.buf) {
                self.error = Some(e);
            }
        }
        self.buf.clear();
    }

    fn flush(mut self) -> std::io::Result<File> {
        self.drain();
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(self.file),
        }
    }
}

// SAFETY: `chunk_mut` hands out the vector's spare capacity, and `advance_mut` only counts bytes
// the caller has initialised in it, as the trait requires.
unsafe impl bytes::BufMut for FileSink {
    fn remaining_mut(&self) -> usize {
        usize::MAX - self.buf.len()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity(), "advanced past the chunk");
        // SAFETY: the caller initialised `cnt` bytes of the chunk returned by `chunk_mut`.
        unsafe { self.buf.set_len(len) };
        if self.buf.len() == self.buf.capacity() {
            self.drain();
        }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.drain();
        }
        bytes::buf::UninitSlice::uninit(self.buf.spare_capacity_mut())
    }
}

/// Where the weights of a model written to `path` go when they are stored externally:
/// `<file name>.data` beside it.
pub fn data_file(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "model.onnx".into(), |n| n.to_string_lossy());
    path.with_file_name(format!("{name}.data"))
}

/// Bytes of a written model: the `.onnx` file and its `.data` file, if any.
pub fn file_bytes(path: &Path) -> u64 {
    let data = data_file(path);
    [path, data.as_path()].iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
}

fn set_external(t: &mut TensorProto, location: &str, offset: usize, length: usize) {
    let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    t.data_location = Some(DataLocation::External as i32);
    t.external_data = vec![
        entry("location", location.into()),
        entry("offset", offset.to_string()),
        entry("length", length.to_string()),
    ];
}

/// Writes the model into a private folder beside `path`, lets `check` inspect the written file
/// there, and only then moves it (and its data file) into place. Any failure leaves nothing at
/// `path`: no half-written model, no model that failed its check.
pub fn write_atomically(
    model: &Model,
    path: &Path,
    external: bool,
    progress: &mut dyn FnMut(crate::Progress),
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name =
        path.file_name().ok_or_else(|| Error::Usage(format!("output path {} has no file name", path.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".onnx-minimize-")
        .tempdir_in(&dir)
        .map_err(|source| Error::Write { path: dir.clone(), source })?;
    let staged = staging.path().join(name);
    model.write_with_progress(&staged, external, progress)?;
    check(&staged)?;
    let (staged_data, final_data) = (data_file(&staged), data_file(path));
    if staged_data.exists() {
        std::fs::rename(&staged_data, &final_data).map_err(|source| Error::Write { path: final_data, source })?;
    }
    std::fs::rename(&staged, path).map_err(|source| Error::Write { path: path.to_path_buf(), source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fails after any number of tensors leaves nothing behind, pending slices
    /// included.
    #[test]
    fn a_write_failing_at_any_tensor_leaves_no_output() {
        let (_, model, _) = crate::minimized_fixture("lenet300_pruned_dynamo_ext.onnx");
        assert!(!model.pending.is_empty(), "the fixture's weights are sliced");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.onnx");
        let external = model.graph().initializer.iter().filter(|t| model.stored_len(t) >= EXTERNAL_THRESHOLD);
        for fail_at in 0..external.count() {
            fail_point::AFTER.with(|a| a.set(Some(fail_at)));
            let err = write_atomically(&model, &out, true, &mut |_| {}, |_| Ok(()));
            assert!(err.is_err(), "failing after {fail_at} tensors");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "failing after {fail_at} tensors");
        }
        fail_point::AFTER.with(|a| a.set(None));
        write_atomically(&model, &out, true, &mut |_| {}, |_| Ok(())).unwrap();
        assert!(out.exists() && data_file(&out).exists());
    }
}
